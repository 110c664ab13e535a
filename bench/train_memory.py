"""Peak memory of one training step (forward + backward + optimizer step): full fine-tuning vs LoRA vs QLoRA.

    python bench/train_memory.py                       # Qwen2.5-0.5B architecture from ../shared
    python bench/train_memory.py --variants lora qlora --batch_size 8 --seq_len 128

The model is the Qwen2.5-0.5B architecture with random weights (its config.json from
<shared_dir>/models/Qwen2.5-0.5B, saved once as a bf16 checkpoint like the real one) and the real tokenizer
from that folder; a classification head over 113 labels; a batch of 8 texts x 128 tokens. Each variant
loads the model the way its recipe does (`longtail.training` / `longtail.adapters`), in a fresh subprocess:

- full     every parameter trained (recipes/full_ft_encoder.py applied to the decoder)
- lora     LoRA r 16 on q/k/v/o + the head (recipes/lora_decoder.py defaults, no gradient checkpointing)
- lora_gc  the same with non-reentrant gradient checkpointing (isolates what QLoRA's 4-bit base saves)
- qlora    4-bit NF4 base, double quantisation, gradient checkpointing, LoRA + fp32 head (qlora_decoder.py)

The optimizer is the one Trainer builds by default (AdamW, torch fused). Memory: on CPU the process's peak
resident set size (VmHWM over the whole process; also "baseline", the process before loading the model,
"load", the peak while loading, and "step", the peak of the training step alone: memory freed by the load is
handed back with malloc_trim and the high-water mark reset through /proc/self/clear_refs first); on GPU
torch.cuda.max_memory_allocated (load, and step after a reset). Writes bench_results/train_memory.{md,json}
(--overwrite to replace an earlier run's; nothing is written, exit 1, when every variant fails).
Skips cleanly (exit 0) when the shared folder is absent and no --model_dir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "lora", "lora_gc", "qlora")
DESCRIPTIONS = {
    "full": "full fine-tuning (fp32 weights, AdamW)",
    "lora": "LoRA r16 q/k/v/o + head",
    "lora_gc": "LoRA + gradient checkpointing",
    "qlora": "QLoRA: 4-bit NF4 base + LoRA + fp32 head, gradient checkpointing",
}
RESULT_PREFIX = "RESULT "
OUTPUTS = ("train_memory.json", "train_memory.md")
GIB = 1024**3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shared_dir", default=str(REPO.parent / "shared"), help="the shared folder (default ../shared)"
    )
    p.add_argument(
        "--model_dir", default=None, help="config + tokenizer folder (default <shared>/models/Qwen2.5-0.5B)"
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--num_labels", type=int, default=113)
    p.add_argument(
        "--steps", type=int, default=1, help="training steps per variant (the first allocates Adam)"
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per variant; the median is reported"
    )
    p.add_argument("--output_dir", default=str(REPO / "bench_results"))
    p.add_argument("--overwrite", action="store_true", help="replace train_memory.{md,json} in --output_dir")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per variant")
    p.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        default=65536,
        help="glibc MALLOC_MMAP_THRESHOLD_ for the workers (bytes; 0 keeps glibc's dynamic default, which keeps "
        "~1 GiB of freed activation buffers resident on this model and so measures the allocator, not the method)",
    )
    p.add_argument(
        "--_prepare", default=None, help=argparse.SUPPRESS
    )  # internal: write the random checkpoint
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    p.add_argument("--_checkpoint", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args._prepare or args._worker):
        check_args(p, args)
    return args


def model_folder(args) -> Path:
    return Path(args.model_dir or Path(args.shared_dir) / "models" / "Qwen2.5-0.5B")


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Refuse bad input before any work (parser.error: exit 2, one line naming the problem)."""
    for name, low in (("batch_size", 1), ("seq_len", 1), ("num_labels", 2), ("steps", 1), ("repeats", 1),
                      ("timeout", 1), ("malloc_mmap_threshold", 0)):  # fmt: skip
        if getattr(args, name) < low:
            p.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    model_dir = model_folder(args)
    if args.model_dir is not None and not model_dir.is_dir():
        p.error(f"--model_dir {model_dir} does not exist")
    if args.model_dir is not None and not (model_dir / "config.json").is_file():
        p.error(f"--model_dir {model_dir} has no config.json: not a transformers model folder")
    if not (model_dir / "config.json").is_file():
        return  # main() skips: no shared folder, nothing measured, nothing written
    out = Path(args.output_dir)
    from longtail.benchmark import earlier_results

    if problem := earlier_results(out, OUTPUTS, args.overwrite):
        p.error(problem)


# ---------------------------------------------------------------------------------------------
# Subprocess side
# ---------------------------------------------------------------------------------------------


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_memory() -> None:
    """Hand memory freed while loading back to the OS (glibc keeps it otherwise), so that the step's
    high-water mark measures what the step holds, not allocator leftovers of the load."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the resident high-water mark (Linux >= 4.0)
        return True
    except OSError:
        return False


def prepare_checkpoint(model_dir: str, out: str) -> None:
    """A random-weight checkpoint of the architecture in `model_dir`, bf16 like the real one, + tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)


def batch_texts(n: int) -> list[str]:
    """Synthetic complaint narratives, long enough to fill the sequence length after truncation."""
    from longtail.synthetic import make_synthetic_complaints

    texts = [
        t for t in make_synthetic_complaints(20 * n, seed=0)["Consumer complaint narrative"].dropna() if t
    ]
    return [" ".join(texts[i::n]) for i in range(n)]


def run_variant(
    variant: str, checkpoint: str, batch_size: int, seq_len: int, num_labels: int, steps: int
) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from longtail.adapters import (
        AdapterArguments,
        QuantizationArguments,
        add_lora,
        load_quantized_classifier,
        trainable_parameters,
    )
    from longtail.benchmark import peak_memory_bytes
    from longtail.losses import long_tail_loss
    from longtail.training import ModelArguments, auto_precision, load_classifier, load_tokenizer

    cuda = torch.cuda.is_available()
    baseline = torch.cuda.memory_allocated() if cuda else _current_rss_bytes()  # interpreter + libraries
    model_args = ModelArguments(model_name_or_path=checkpoint)
    tokenizer = load_tokenizer(model_args)
    labels = [f"issue {i}" for i in range(num_labels)]
    gc = variant in ("lora_gc", "qlora")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, learning_rate=2e-4, weight_decay=0.01, report_to="none", gradient_checkpointing=gc
        )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if variant == "qlora":
        model = load_quantized_classifier(model_args, QuantizationArguments(), labels, tokenizer, args)
    else:
        model = load_classifier(model_args, labels, tokenizer)
        model = model.cuda() if cuda else model
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if variant != "full":
        model = add_lora(model, AdapterArguments())
    model.train()
    trainable, total = trainable_parameters(model)
    load_s = time.perf_counter() - started

    device = "cuda" if cuda else "cpu"
    batch = tokenizer(
        batch_texts(batch_size),
        truncation=True,
        max_length=seq_len,
        padding="max_length",
        return_tensors="pt",
    ).to(device)
    assert batch["input_ids"].shape == (batch_size, seq_len), batch["input_ids"].shape
    y = torch.randint(num_labels, (batch_size,), generator=torch.Generator().manual_seed(0)).to(device)
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = optimizer_cls([p for p in model.parameters() if p.requires_grad], **optimizer_kwargs)
    precision = auto_precision()
    autocast = torch.autocast(
        device,
        dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        enabled=cuda and precision != "no",
    )

    # CUDA max allocated, else this process's own resident high-water mark (VmHWM, what clear_refs resets; not
    # ru_maxrss, which across fork + exec keeps the parent's peak: a worker read its driver's or pytest's)
    load_peak = peak_memory_bytes(device)
    reset = True
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        _release_free_memory()
        reset = _reset_rss_peak()
    before_step = torch.cuda.memory_allocated() if cuda else _current_rss_bytes()
    started = time.perf_counter()
    for _ in range(steps):
        with autocast:
            logits = model(**batch).logits
        loss = long_tail_loss(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - started) / steps
    step_peak = peak_memory_bytes(device)
    return {
        "variant": variant,
        "description": DESCRIPTIONS[variant],
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM)",
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share_pct": round(100 * trainable / total, 4),
        "baseline_bytes": baseline,
        "load_peak_bytes": load_peak,
        "before_step_bytes": before_step,
        "step_peak_bytes": step_peak if reset else None,
        "peak_bytes": max(load_peak, step_peak),
        "loss": float(loss),
        "load_s": round(load_s, 1),
        "step_s": round(step_s, 1),
        "gradient_checkpointing": gc,
    }


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def _subprocess(argv: list[str], timeout: int, malloc_mmap_threshold: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if (
        malloc_mmap_threshold > 0
    ):  # a fixed threshold: buffers above it are mmapped and handed back when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
    return subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def run_worker(
    variant: str, checkpoint: str, common: list[str], timeout: int, malloc_mmap_threshold: int
) -> dict:
    """One variant in a fresh process; its result, or {"variant", "error"}."""
    try:
        done = _subprocess(
            ["--_worker", variant, "--_checkpoint", checkpoint, *common], timeout, malloc_mmap_threshold
        )
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {timeout} s"}
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"variant": variant, "error": f"failed (exit {done.returncode}): {tail[0][:200]}"}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def environment() -> dict:
    from longtail.inference import cpu_features
    from longtail.provenance import package_versions

    versions = package_versions()  # what run_config.json records, read once
    env = {
        "python": versions["python"],
        **{p: versions.get(p, "not installed") for p in ("torch", "transformers", "peft", "bitsandbytes")},
        **cpu_features(),  # CPU model and ISA flags, as the inference and scaling benches record them
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }
    return env


def _gib(x) -> str:
    return "—" if x is None else f"{x / GIB:.2f}"


def _spread(runs) -> str:
    return f" ({_gib(min(runs))}–{_gib(max(runs))})" if runs and len(runs) > 1 else ""


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _times(x) -> str:
    """A ratio as the report writes it: 0.25x, or a dash when it could not be measured (never "Nonex")."""
    return "—" if x is None else f"{x}x"


def summarise(results: list[dict]) -> dict:
    """Ratios of the process peaks, of the step-only peaks, and of the peaks above the interpreter baseline."""
    by = {r["variant"]: r for r in results if "peak_bytes" in r}
    for r in by.values():
        r["peak_above_baseline_bytes"] = r["peak_bytes"] - r["baseline_bytes"]
    ratios = {}
    for key in ("peak_bytes", "step_peak_bytes", "peak_above_baseline_bytes"):
        for a, b in (("qlora", "lora"), ("lora", "full"), ("qlora", "full"), ("qlora", "lora_gc")):
            if a in by and b in by:
                ratios[f"{a}_vs_{b}_{key}"] = _ratio(by[a][key], by[b][key])
    return ratios


def markdown(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    results = report["results"]
    by = {r["variant"]: r for r in results if "peak_bytes" in r}
    full, lora = by.get("full"), by.get("lora")
    measure = next((r["measure"] for r in results if "measure" in r), "?")
    lines = [
        "# Training-step peak memory: full fine-tuning vs LoRA vs QLoRA",
        "",
        f"Model: {s['architecture']} architecture, random weights, {s['num_labels']} labels; batch "
        f"{s['batch_size']} x {s['seq_len']} tokens; {s['steps']} step(s) of forward + backward + AdamW (fused). "
        f"Device: {env['device']}. Measure: {measure}, a fresh process per variant and run ({s['repeats']} "
        "run(s) each; the median run is shown, the range in brackets). *baseline*: the process "
        "before loading the model (interpreter + libraries); *load*: peak while loading; *step*: peak of the "
        "training step alone (high-water mark reset after loading); **peak**: the whole process. glibc "
        f"MALLOC_MMAP_THRESHOLD_: {s.get('malloc_mmap_threshold', '?')}.",
        "",
        "| variant | trainable params (share) | baseline GiB | load peak GiB | step peak GiB | **peak GiB** "
        "| peak − baseline GiB | peak vs full | peak vs LoRA | load s | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "peak_bytes" not in r:
            lines.append(f"| {r['variant']} | {r.get('error', 'skipped')} |" + "  |" * 9)
            continue
        lines.append(
            f"| {r['description']} | {r['trainable_params']:,} ({r['trainable_share_pct']:.3f} %) "
            f"| {_gib(r['baseline_bytes'])} | {_gib(r['load_peak_bytes'])} | {_gib(r['step_peak_bytes'])} "
            f"| **{_gib(r['peak_bytes'])}**{_spread(r.get('peak_bytes_runs'))} "
            f"| {_gib(r['peak_bytes'] - r['baseline_bytes'])} "
            f"| {_ratio(r['peak_bytes'], full['peak_bytes']) if full else '—'} "
            f"| {_ratio(r['peak_bytes'], lora['peak_bytes']) if lora else '—'} | {r['load_s']} | {r['step_s']} |"
        )
    ratios = report["ratios"]
    lines.append("")
    if "qlora_vs_lora_peak_bytes" in ratios:
        q, step = ratios["qlora_vs_lora_peak_bytes"], ratios.get("qlora_vs_lora_step_peak_bytes")

        def verdict(x):
            return "—" if x is None else ("met" if x <= 0.35 else "NOT met")

        lines.append(
            f"- QLoRA / LoRA: **{_times(step)}** training-step peak (the CPU analogue of CUDA max_memory_allocated "
            f"after loading; target <= 0.35x: {verdict(step)}); {_times(q)} whole-process peak, loading included "
            f"(target: {verdict(q)}); {_times(ratios.get('qlora_vs_lora_peak_above_baseline_bytes'))} above baseline."
        )
    if "qlora_vs_lora_gc_peak_bytes" in ratios:
        lines.append(
            f"- QLoRA / LoRA with gradient checkpointing: {_times(ratios['qlora_vs_lora_gc_peak_bytes'])} process peak; "
            f"{_times(ratios.get('qlora_vs_lora_gc_step_peak_bytes'))} step only (what the 4-bit base alone saves)."
        )
    if "lora_vs_full_peak_bytes" in ratios:
        lines.append(
            f"- LoRA / full fine-tuning: **{_times(ratios['lora_vs_full_peak_bytes'])}** process peak; "
            f"{_times(ratios.get('lora_vs_full_step_peak_bytes'))} step only; "
            f"{_times(ratios.get('lora_vs_full_peak_above_baseline_bytes'))} above baseline."
        )
    lines += [
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "device"),
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._prepare:
        prepare_checkpoint(args.model_dir, args._prepare)
        return 0
    if args._worker:
        result = run_variant(
            args._worker, args._checkpoint, args.batch_size, args.seq_len, args.num_labels, args.steps
        )
        print(RESULT_PREFIX + json.dumps(result))
        return 0

    model_dir = model_folder(args)
    if not (model_dir / "config.json").is_file():
        print(
            f"skip: {model_dir / 'config.json'} is absent (no shared folder at {args.shared_dir}); nothing measured"
        )
        return 0
    architecture = json.loads((model_dir / "config.json").read_text()).get("model_type", "?")
    name = model_dir.name
    out = Path(args.output_dir)
    common = ["--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len),
              "--num_labels", str(args.num_labels), "--steps", str(args.steps)]  # fmt: skip
    results = []
    env = environment()  # the load average at the start, as the other benches take it
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        checkpoint = str(Path(tmp) / "checkpoint")
        print(f"Writing a random-weight {name} checkpoint ...", flush=True)
        done = _subprocess(["--model_dir", str(model_dir), "--_prepare", checkpoint], args.timeout)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            return done.returncode
        for variant in args.variants:
            if variant == "qlora" and not _bitsandbytes_available():
                results.append({"variant": variant, "error": "skipped: bitsandbytes not available"})
                continue
            print(f"{variant}: {DESCRIPTIONS[variant]} ...", flush=True)
            runs = [
                run_worker(variant, checkpoint, common, args.timeout, args.malloc_mmap_threshold)
                for _ in range(args.repeats)
            ]
            ok = sorted((r for r in runs if "peak_bytes" in r), key=lambda r: r["peak_bytes"])
            if not ok:
                results.append(runs[-1])
                continue
            result = ok[(len(ok) - 1) // 2]  # the median run (the lower middle one for an even count)
            result["peak_bytes_runs"] = [r["peak_bytes"] for r in ok]
            result["step_peak_bytes_runs"] = [r["step_peak_bytes"] for r in ok]
            print(f"  peak {', '.join(_gib(r['peak_bytes']) for r in ok)} GiB", flush=True)
            results.append(result)
    report = {
        "settings": {
            "architecture": f"{name} ({architecture})",
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "num_labels": args.num_labels,
            "steps": args.steps,
            "repeats": args.repeats,
            "malloc_mmap_threshold": args.malloc_mmap_threshold or "glibc default (dynamic)",
        },
        "environment": {
            **env,
            "device": next((r["device"] for r in results if "device" in r), "?"),
        },
        "results": results,
        "command": "python bench/train_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report["ratios"] = summarise(results)
    if not any("peak_bytes" in r for r in results):  # nothing measured: keep any earlier report
        print(markdown(report))
        from longtail.cli import error_line

        print(error_line(f"every variant failed, nothing measured; {out} left unchanged"), file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "train_memory.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


if __name__ == "__main__":
    sys.exit(main())
