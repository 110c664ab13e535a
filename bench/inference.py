"""Inference benchmark (`make bench`): every variant of a trained classifier on the same rows, quality and cost.

    python bench/inference.py                                   # the demo model (make demo), its test split
    python bench/inference.py --model_dir RUN --data test.csv   # any classifier folder, any labelled file

Variants: PyTorch fp32; PyTorch fp16 / bf16 and bitsandbytes int8 / int4 (GPU only); ONNX fp32, ONNX
ORT-optimised and ONNX dynamic int8 (exported here with recipes/export_onnx.py's code). Each variant runs in
its own process (so its peak memory is its own) on the same rows, tokenised before any timing:
- batch --batch_size (32): rows sorted by length, dynamic padding; median of --repeats (5) timed passes
  -> ms/example, rows/s (the JSON keys say b32 / batch32 whatever the batch size; results.md says which);
- batch 1: p50 / p95 latency over `--latency_rows` rows (median of the timed repeats per row);
- peak memory (process RSS on CPU; CUDA max allocated after a reset on GPU), size on disk;
- model FLOP/s as a share of the machine's measured fp32 GEMM peak (forward FLOPs ~ 2 x non-embedding
  parameters x real tokens + attention);
- quality from longtail.metrics: accuracy, macro-F1 with its bootstrap CI, tail macro-F1, ECE (with the
  model's temperature), argmax agreement with PyTorch fp32.
A variant is "recommended" only within 0.5 point macro-F1 of fp32 and agreeing with fp32's predicted class on
at least 97 % of the rows: the fastest such one at that batch size.
Stability: each variant's batch pass also reports the spread of its timed repeats ((max - min) / median);
when a spread, or the drift of the GEMM peak remeasured across variants, exceeds 10 %, results.md warns
that the machine was unstable and that speed ratios within that spread are noise.
With the real CFPB data (../shared), it also measures what padding costs at max_length 512.
Writes results.json, results.md and pareto_latency.png / pareto_memory.png to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from longtail.benchmark import UNSTABLE, gemm_drift

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "outputs" / "demo" / "full_ft_encoder"
CFPB = REPO.parent / "shared" / "data" / "cfpb" / "complaints_dev.csv"
CFPB_TEXT = "Consumer complaint narrative"  # the export's text column (--padding_data's default file)
TORCH_VARIANTS = ("pytorch_fp32", "pytorch_fp16", "pytorch_bf16", "bnb_int8", "bnb_int4")
ONNX_VARIANTS = {"onnx_fp32": "fp32", "onnx_optimized": "optimized", "onnx_int8": "int8"}
VARIANTS = (*TORCH_VARIANTS, *ONNX_VARIANTS)
GPU_ONLY = ("pytorch_fp16", "pytorch_bf16", "bnb_int8", "bnb_int4")
RECOMMEND_WITHIN = 0.005  # macro-F1 (0.5 point) of PyTorch fp32
# ... and argmax agreement with it, the export's int8 gate: on a few hundred rows macro-F1 alone can tie by
# chance while a third of the predictions changed
RECOMMEND_MIN_AGREEMENT = 0.97
MIB = 1024**2
PLOTS = ("pareto_latency.png", "pareto_memory.png")
logger = logging.getLogger("bench.inference")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=str(DEFAULT_MODEL), help="trained classifier folder")
    p.add_argument("--data", default=None, help="labelled .csv/.jsonl (default: the run's own test split)")
    p.add_argument("--text_column", default=CFPB_TEXT)
    p.add_argument("--label_column", default="Issue")
    p.add_argument("--output_dir", default=str(REPO / "bench_results" / "inference"))
    p.add_argument("--overwrite", action="store_true", help="replace the results (and onnx/) in --output_dir")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max_rows", type=int, default=256, help="evaluation rows (a fixed random sample)")
    p.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="default: the run's max_length, else 128; within a learned position table (max_position_embeddings)",
    )
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--latency_rows", type=int, default=32, help="rows timed one at a time (batch 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (>= 5 for the reported numbers)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gemm_size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="torch/ORT intra-op threads (default: torch's)")
    p.add_argument("--bootstrap_resamples", type=int, default=1000, help="for the macro-F1 CI")
    p.add_argument("--padding_data", default=str(CFPB), help="real texts for the padding study ('' = skip)")
    p.add_argument("--padding_rows", type=int, default=96)
    p.add_argument("--padding_max_length", type=int, default=512)
    p.add_argument(
        "--in_process", action="store_true", help="no subprocess per variant (smoke runs; no memory)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny settings for tests: few rows, 2 repeats, small GEMM"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv=None, check_paths: bool = False):
    """The options; main also checks the paths (model folder, data, output folder) before any work."""
    p = build_parser()
    args = p.parse_args(argv)
    if not args.worker:  # a worker reads its settings from the spec the parent checked
        check_values(p, args)
        if check_paths:
            check_folders(p, args)
    if args.smoke:
        args.max_rows, args.latency_rows, args.repeats, args.warmup = min(args.max_rows, 48), 4, 2, 1
        args.gemm_size, args.padding_rows, args.bootstrap_resamples = 256, 16, 100
    return args


AT_LEAST = {"max_rows": 1, "max_length": 1, "batch_size": 1, "latency_rows": 1, "repeats": 1, "warmup": 0,
            "gemm_size": 1, "threads": 1, "bootstrap_resamples": 2, "padding_rows": 1, "padding_max_length": 1}  # fmt: skip


def check_values(parser: argparse.ArgumentParser, args) -> None:
    """Option values a run cannot use: one `parser.error` line (exit 2), before any work or folder."""
    for name, least in AT_LEAST.items():
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name} must be >= {least} (got {value})")
    twice = sorted({v for v in args.variants if args.variants.count(v) > 1})
    if twice:
        parser.error(f"--variants lists {', '.join(twice)} more than once")
    from longtail.inference import torch_device_problem

    if args.device is not None and (problem := torch_device_problem(args.device, mps=False)):
        parser.error(problem)


def check_folders(parser: argparse.ArgumentParser, args) -> None:
    """Paths a run cannot use (what main runs on): one `parser.error` line (exit 2), before any work or folder."""
    if args.data and not Path(args.data).is_file():
        parser.error(f"--data {args.data}: file not found")
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        parser.error(f"--model_dir {model_dir}: folder not found")
    from longtail.inference import onnx_files
    from longtail.predict import not_transformers

    if what := not_transformers(model_dir):
        parser.error(
            f"--model_dir {model_dir} is {what}: it has no PyTorch/ONNX variants to benchmark; "
            "pass a Transformers classifier folder"
        )
    # an export (a variant, or onnx/ with one per folder) has no PyTorch weights: it failed to load, and for onnx/
    # the advice read "pass one of its variants", which failed in turn
    exported = [
        *onnx_files(model_dir),
        *(f for d in model_dir.iterdir() if d.is_dir() for f in onnx_files(d)),
    ]
    if exported and not any(model_dir.glob("*.safetensors")):
        parser.error(
            f"--model_dir {model_dir} is an ONNX export ({exported[0].relative_to(model_dir)}): the bench times the "
            "PyTorch model and exports its ONNX variants from it; pass the run folder it was exported from"
        )
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        parser.error(f"--output_dir {out} is a file, not a folder")
    # the bench exports ONNX into <output_dir>/onnx with no quality gate: never into the model's own folder,
    # whose onnx/ (the gated export) is what `predict` serves
    model, target = model_dir.resolve(), out.resolve()
    if target in (model, model / "merged") or any(
        target.is_relative_to(model / d) for d in ("onnx", "merged/onnx")
    ):
        parser.error(
            f"--output_dir {out} would write the bench's ungated ONNX export into the model folder {model_dir} "
            "(replacing its onnx/ export, which `predict` serves): choose a folder outside it"
        )
    from longtail.benchmark import earlier_results

    # every file the run writes (results.md and the plots too: a folder holding only those, someone's notes or
    # a report copied out, was overwritten), and onnx/ without results.json (a run that stopped after its
    # export, or a folder not ours): each is replaced, so each needs --overwrite
    if problem := earlier_results(out, ("results.json", "results.md", *PLOTS, "onnx"), args.overwrite):
        parser.error(problem)


def check_max_length(parser: argparse.ArgumentParser, args, config) -> None:
    """longtail.inference.check_max_length on the model loaded (the resolved folder: an adapter's merged model, a
    probe's encoder), as a usage error: the ONNX variants are exported from that model, so it bounds them too.
    Unchecked, a row past a learned position table made every variant fail once timed."""
    from longtail.cli import UsageError
    from longtail.inference import check_max_length as within_positions

    if args.max_length is not None:
        try:
            within_positions(config, args.max_length, args.model_dir)
        except UsageError as err:
            parser.error(str(err))


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def evaluation_rows(args, label2id: dict) -> tuple[list[str], np.ndarray, dict]:
    """(texts, label ids, log) of the evaluation rows; every drop is counted. --data's labels are read as the run
    read its data (the merge map and taxonomy its run_config.json records), as `score` and the export's parity
    sample read them: raw, the old CFPB wordings of a run trained with a merge map were dropped as labels the
    model never saw (a tenth of the dev export), so the bench scored other rows than `score` would."""
    from longtail.cli import usage_exit
    from longtail.data import DataArguments, prepare_data, read_table, refuse_repeated
    from longtail.score import data_options, labelled_rows, recorded_data_options

    log: dict = {}
    if args.data:
        try:
            df = read_table(args.data)
        except ValueError as error:  # longtail.data.DataError: missing, empty or unreadable file
            raise usage_exit(f"--data {args.data}: {error}") from None
        missing = [c for c in (args.text_column, args.label_column) if c not in df.columns]
        if missing:
            raise usage_exit(f"{args.data} has no column {missing}; columns: {list(df.columns)}")
        try:
            refuse_repeated(df, (args.text_column, args.label_column), f"--data {args.data}")
            # the bench has no --label_merge_map / --label_taxonomy: the run's recorded ones, else none
            given = {"text_column": args.text_column, "label_column": args.label_column,
                     "label_merge_map": None, "label_taxonomy": None}  # fmt: skip
            if recorded_data_options(Path(args.model_dir)) is None:
                options = given
                read_with = "no merge map or taxonomy: the run records no data options (run_config.json), labels read as written"
            else:
                options, source = data_options([Path(args.model_dir)], given)
                read_with = (
                    f"merge map {options['label_merge_map'] or 'none'}, "
                    f"taxonomy {options['label_taxonomy'] or 'none'}: {source}"
                )
            df, counts = labelled_rows(lambda: df, args.data, options, None)  # unknown labels: counted below
        except ValueError as error:  # a merge map the run recorded that is not here, a nested value
            raise usage_exit(str(error)) from None
        log.update(
            source=Path(args.data).name,
            labels_read_with=read_with,
            labels_merged=counts["labels_merged"],
        )
        dropped = {k: v for k, v in counts.items() if k.startswith("dropped_")}
        rows = counts["rows_read"]
    else:
        config = Path(args.model_dir) / "run_config.json"
        if not config.is_file():
            raise usage_exit(f"{args.model_dir} has no run_config.json: pass --data with labelled rows")
        data_args = json.loads(config.read_text("utf-8"))["data"]
        fields = DataArguments.__dataclass_fields__
        data = prepare_data(DataArguments(**{k: v for k, v in data_args.items() if k in fields}))
        split = "test" if "test" in data.splits else "validation"
        df = data.splits[split][["text", "label"]]
        log["source"] = f"the run's {split} split ({data_args.get('dataset_name')})"
        dropped, rows = {"dropped_empty_text": 0}, len(df)
    empty = ~df["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))
    unknown = ~empty & ~df["label"].astype(str).isin(label2id)
    dropped["dropped_empty_text"] += int(empty.sum())
    log.update(rows=rows, **dropped, dropped_unknown_label=int(unknown.sum()))
    left_out = {k: v for k, v in log.items() if k.startswith("dropped_") and v}
    if left_out:
        logger.warning("Evaluation rows not scored: %s", left_out)
    df = df[~empty & ~unknown]
    if df.empty:
        raise usage_exit(
            f"no row left to score in {log['source']}: {log['rows']} rows, {log['dropped_empty_text']} without text, "
            f"{log['dropped_unknown_label']} with a label the model never saw (left out: {left_out}; its labels: "
            f"{', '.join(sorted(label2id)[:5])}{' ...' if len(label2id) > 5 else ''})"
        )
    if len(df) > args.max_rows:
        df = df.sample(args.max_rows, random_state=0)
    log["scored"] = len(df)
    return df["text"].astype(str).tolist(), df["label"].astype(str).map(label2id).to_numpy(), log


# ---------------------------------------------------------------------------------------------
# One variant (runs in a worker process)
# ---------------------------------------------------------------------------------------------


def variant_available(variant: str, device: str) -> str | None:
    """None when the variant can run here, else why not."""
    if variant in GPU_ONLY and not device.startswith("cuda"):
        return "needs a GPU"
    if variant == "pytorch_bf16" and device.startswith("cuda"):
        import torch

        if torch.cuda.get_device_capability()[0] < 8:
            return "bf16 is emulated below compute capability 8"
    if variant.startswith("bnb_"):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed"
    if variant in ONNX_VARIANTS and device.startswith("cuda"):
        from longtail.inference import ExecutionProviderError, ort_provider

        try:  # a CPU-only onnxruntime on a GPU machine would time the CPU: say so instead
            ort_provider(device)
        except ExecutionProviderError:
            import onnxruntime as ort

            return f"this onnxruntime has no CUDA provider ({', '.join(ort.get_available_providers())})"
    return None


def load_variant(variant: str, model_dir: str, onnx_dir: Path, device: str):
    """(backend, tokenizer, size on disk or in memory in bytes)."""
    import torch

    from longtail.inference import OrtBackend, TorchBackend, load_model_dir, load_tokenizer_dir, onnx_files

    if variant in ONNX_VARIANTS:
        folder = onnx_dir / ONNX_VARIANTS[variant]
        backend = OrtBackend(folder, device=device)
        return backend, load_tokenizer_dir(folder), sum(f.stat().st_size for f in onnx_files(folder))
    kwargs: dict = {}
    if variant == "pytorch_fp16":
        kwargs["dtype"] = torch.float16
    elif variant == "pytorch_bf16":
        kwargs["dtype"] = torch.bfloat16
    elif variant.startswith("bnb_"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if variant == "bnb_int8"
            else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        )
        kwargs["device_map"] = {"": device}
        # what bitsandbytes users load: the layers it does not quantise in half precision, as in fp16/bf16
        kwargs["dtype"] = torch.float16 if variant == "bnb_int8" else torch.bfloat16
    model, tokenizer, _ = load_model_dir(model_dir, device=device, **kwargs)
    return TorchBackend(model, device), tokenizer, int(model.get_memory_footprint())


def measure_variant(variant: str, spec: dict) -> tuple[dict, np.ndarray]:
    """Timings, memory and size of one variant, plus its logits over the evaluation rows (input order)."""
    import torch

    from longtail.benchmark import gemm_peak_gflops, peak_memory_bytes, reset_peak_memory, timed
    from longtail.inference import encode_batches, run_batches

    device = spec["device"]
    torch.set_num_threads(spec["threads"])
    base_rss = peak_memory_bytes("cpu")
    reset_peak_memory(device)
    started = time.perf_counter()
    backend, tokenizer, size = load_variant(variant, spec["model_dir"], Path(spec["onnx_dir"]), device)
    load_s = time.perf_counter() - started
    texts = spec["texts"]
    # tokenisation happens here, outside every timed region
    batches = encode_batches(tokenizer, texts, spec["batch_size"], spec["max_length"])
    singles = encode_batches(tokenizer, texts[: spec["latency_rows"]], 1, spec["max_length"])
    num_labels = spec["num_labels"]
    holder = {}

    def full_pass():
        holder["logits"] = run_batches(backend, batches, len(texts), num_labels)

    t32 = timed(full_pass, repeats=spec["repeats"], warmup=spec["warmup"], device=device)
    per_row = []
    for batch in singles:
        t = timed(
            lambda b=batch: backend.logits(b), repeats=spec["repeats"], warmup=spec["warmup"], device=device
        )
        per_row.append(t["median_s"])
    memory = peak_memory_bytes(device)
    # on a shared machine the peak drifts: measure it with this variant (right after its timings), compare with
    # that; after the memory is read, as its buffers (3 x 16 MiB at 2048) are the bench's, not the model's
    peak = gemm_peak_gflops(spec["gemm_size"], spec["repeats"], device)["gflops"]
    n = len(texts)
    result = {
        "variant": variant,
        "load_s": load_s,
        "batch32_pass_s": t32["median_s"],
        "batch32_runs_s": t32["runs_s"],
        "ms_per_example_b32": 1000 * t32["median_s"] / n,
        "throughput_rows_s": n / t32["median_s"],
        "latency_b1_p50_ms": 1000 * float(np.percentile(per_row, 50)),
        "latency_b1_p95_ms": 1000 * float(np.percentile(per_row, 95)),
        "padded_to_real_tokens": batches.padding_ratio,
        "real_tokens": batches.real_tokens,
        "size_bytes": size,
        "peak_memory_bytes": memory,
        "baseline_rss_bytes": base_rss,
        "memory_kind": "CUDA max allocated" if device.startswith("cuda") else "process peak RSS",
        "threads": torch.get_num_threads(),
        "gemm_gflops_at_run": peak,
    }
    return result, holder["logits"]


def run_worker(args) -> None:
    spec = json.loads(Path(args.worker).read_text("utf-8"))
    result, logits = measure_variant(spec["variant"], spec)
    np.save(spec["logits_path"], logits)
    Path(spec["result_path"]).write_text(json.dumps(result), "utf-8")


def run_variant(variant: str, spec: dict, workdir: Path, in_process: bool) -> tuple[dict, np.ndarray]:
    if in_process:
        result, logits = measure_variant(variant, spec)
        result["peak_memory_bytes"] = None  # one process for all variants: not attributable
        return result, logits
    spec = {**spec, "variant": variant, "logits_path": str(workdir / f"{variant}.npy"),
            "result_path": str(workdir / f"{variant}.json")}  # fmt: skip
    spec_path = workdir / f"{variant}_spec.json"
    spec_path.write_text(json.dumps(spec), "utf-8")
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(spec_path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(Path(spec["result_path"]).read_text("utf-8")), np.load(spec["logits_path"])


# ---------------------------------------------------------------------------------------------
# Padding study: fixed max_length padding vs dynamic padding (unsorted, sorted by length)
# ---------------------------------------------------------------------------------------------


def padding_study(args, model, tokenizer, device: str) -> dict | None:
    """The study on --padding_data ('' = None); {"skipped": why} when it cannot run, which results.md says (a
    study skipped was a log line only, its section silently absent)."""
    from longtail.benchmark import timed
    from longtail.data import read_table
    from longtail.inference import TorchBackend, encode_batches

    def skipped(why: str) -> dict:
        logger.warning("Padding study skipped: %s", why)
        return {"skipped": why}

    if not args.padding_data:
        return None
    path = Path(args.padding_data)
    # results.md names the file, never this machine's absolute path to it
    if not path.is_file():
        if path == CFPB:
            return skipped("the default --padding_data (../shared/data/cfpb/complaints_dev.csv) is absent")
        return skipped(f"--padding_data {path.name} not found")
    df = read_table(path)
    # --text_column names --data's column; the default file is a CFPB export: `make bench DATA=x TEXT_COLUMN=text`
    # looked for "text" in it and skipped the study
    column = next((c for c in (args.text_column, CFPB_TEXT) if c in df.columns), None)
    if column is None:
        return skipped(f"{path.name} has no column {args.text_column!r}")
    if column in df.attrs.get("repeated_columns", []):
        return skipped(f"{path.name} has more than one column named {column!r}")
    texts = df[column].dropna().astype(str)
    texts = texts[texts.str.strip() != ""]
    if texts.empty:
        return skipped(f"{path.name} has no text in column {column!r}")
    if len(texts) < args.padding_rows:
        logger.warning("Padding study: %s has %d texts, fewer than --padding_rows %d: using them all",
                       path, len(texts), args.padding_rows)  # fmt: skip
    texts = texts.sample(min(args.padding_rows, len(texts)), random_state=0).tolist()
    max_length = min(
        args.padding_max_length, tokenizer.model_max_length, model.config.max_position_embeddings
    )
    backend = TorchBackend(model, device)
    out = {
        "source": path.name,
        "column": column,
        "rows": len(texts),
        "max_length": max_length,
        "batch_size": args.batch_size,
    }
    settings = {
        "fixed_max_length": dict(sort_by_length=False, pad_to_max_length=True),
        "dynamic_unsorted": dict(sort_by_length=False),
        "dynamic_sorted": dict(sort_by_length=True),
    }
    for name, kw in settings.items():
        batches = encode_batches(tokenizer, texts, args.batch_size, max_length, **kw)
        t = timed(lambda b=batches: [backend.logits(x) for x in b], args.repeats, args.warmup, device)
        out[name] = {
            "padded_to_real_tokens": batches.padding_ratio,
            "pass_s": t["median_s"],
            "throughput_rows_s": len(texts) / t["median_s"],
        }
    lengths = batches.lengths
    out["real_length_mean"], out["real_length_p50"] = float(lengths.mean()), float(np.median(lengths))
    out["truncated_share"] = float((lengths >= max_length).mean())
    out["speedup_sorted_vs_fixed"] = out["fixed_max_length"]["pass_s"] / out["dynamic_sorted"]["pass_s"]
    out["speedup_sorted_vs_unsorted"] = out["dynamic_unsorted"]["pass_s"] / out["dynamic_sorted"]["pass_s"]
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

COLUMNS = [
    ("variant", "variant", "{}"),
    ("ms_per_example_b32", "ms/example (b32)", "{:.2f}"),
    ("throughput_rows_s", "rows/s (b32)", "{:.1f}"),
    ("batch32_spread", "spread of repeats (b32)", "{:.0%}"),
    ("latency_b1_p50_ms", "p50 ms (b1)", "{:.1f}"),
    ("latency_b1_p95_ms", "p95 ms (b1)", "{:.1f}"),
    ("speedup_vs_fp32", "speed-up vs fp32 (b32)", "{:.2f}x"),
    ("gemm_peak_share", "share of GEMM peak", "{:.0%}"),
    ("peak_memory_mib", "peak memory MiB", "{:.0f}"),
    ("size_mib", "size MiB", "{:.1f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro_f1_ci", "macro-F1 [95% CI]", "{}"),
    ("macro_f1_tail", "tail macro-F1", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("agreement_with_fp32", "argmax agreement", "{:.4f}"),
    ("verdict", "verdict", "{}"),
]


def fmt(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return pattern.format(value)


def windows_note(model_dir, tokenizer, texts, max_length: int) -> str | None:
    """A probe trained with --long_text windows is served in windows (predict); the bench times and scores
    one truncated window per text. Say so, with what a whole text costs in windows on these rows."""
    from longtail.inference import serving_defaults, text_windows

    if serving_defaults(model_dir)["long_text"] != "windows":
        return None
    per_text = len(text_windows(tokenizer, texts, max_length).owner) / max(len(texts), 1)
    return (
        f"This probe was trained on whole texts in {max_length}-token windows, which `predict` serves too; the "
        f"rows above time and score one truncated window per text. On these rows a text is {per_text:.2f} "
        f"windows, so serving it whole costs about {per_text:.2f}x the ms/example above, and its quality is "
        "the run's own test report, not the truncated column here."
    )


def markdown(report: dict) -> str:
    bs, rows = report.get("batch_size", 32), report["rows"]
    labels = (
        f" (labels read with {rows['labels_read_with']}; {rows['labels_merged']} merged)"
        if "labels_merged" in rows
        else ""
    )
    lines = [
        f"# Inference benchmark: {report['model']}",
        "",
        f"Machine: {report['machine_text']}.",
        f"Rows: {rows['scored']} from {rows['source']}{labels}, max_length {report['max_length']}, "
        f"batch {bs} sorted by length with dynamic padding (padded/real tokens "
        f"{report['padded_to_real_tokens']:.2f}); median of {report['repeats']} timed "
        f"pass{'es' if report['repeats'] != 1 else ''} after "
        f"{report['warmup']} warm-up (spread: (max - min) / median of those passes); tokenisation outside the "
        "timed region. Measured fp32 GEMM peak: "
        f"{report['gemm']['gflops']:.1f} GFLOP/s ({report['gemm']['size']}^3, {report['gemm']['threads']} threads); "
        "each variant's share is against the GEMM peak measured again right after its timings (a shared machine "
        "drifts), once its peak memory was read.",
        "",
        "| " + " | ".join(h.replace("(b32)", f"(b{bs})") for _, h, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in report["results"]:
        lines.append("| " + " | ".join(fmt(row.get(k), f) for k, _, f in COLUMNS) + " |")
    if report["skipped"]:
        lines += ["", "Not run here: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()) + "."]
    # what the memory column holds: on CPU a process's RSS, mostly Python, torch and ORT for a small model (it
    # said "peak memory MiB" only, as if it were the model's)
    if measured := [r for r in report["results"] if r.get("peak_memory_mib") is not None]:
        kind, base = measured[0]["memory_kind"], [r["baseline_rss_bytes"] / MIB for r in measured]
        lines += [
            "",
            f"Peak memory: the peak RSS of each variant's own process, the interpreter and libraries included "
            f"({min(base):.0f}-{max(base):.0f} MiB of it before the model loaded)."
            if kind == "process peak RSS"
            else f"Peak memory: {kind} in each variant's own process, reset before the model loaded.",
        ]
    lines += ["", report["recommendation"]]
    if report.get("stability", {}).get("warning"):
        lines += ["", report["stability"]["warning"]]
    if report.get("windows_note"):
        lines += ["", report["windows_note"]]
    pad = report.get("padding")
    if pad and pad.get("skipped"):
        lines += ["", f"Padding study not run: {pad['skipped']}."]
    elif pad:
        lines += [
            "",
            f"## Padding at max_length {pad['max_length']} (PyTorch fp32, batch {pad['batch_size']}; {pad['rows']} real "
            f"texts from {pad['source']}, mean length {pad['real_length_mean']:.0f} tokens, {pad['truncated_share']:.0%} "
            "truncated)",
            "",
            "| batching | padded/real tokens | s per pass | rows/s |",
            "|---|---|---|---|",
        ]
        for name in ("fixed_max_length", "dynamic_unsorted", "dynamic_sorted"):
            r = pad[name]
            lines.append(
                f"| {name} | {r['padded_to_real_tokens']:.2f} | {r['pass_s']:.2f} | {r['throughput_rows_s']:.1f} |"
            )
        lines += [
            "",
            f"Sorted dynamic padding vs fixed max_length: {pad['speedup_sorted_vs_fixed']:.2f}x throughput "
            f"(target >= 1.5x: {'met' if pad['speedup_sorted_vs_fixed'] >= 1.5 else 'NOT met'}).",
        ]
    return "\n".join(lines) + "\n"


def pareto_plots(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # an --overwrite rerun that draws fewer (--in_process: no memory plot) once left the earlier run's beside it
    for name in PLOTS:
        (out / name).unlink(missing_ok=True)
    for key, label, name in (
        (
            "ms_per_example_b32",
            f"ms per example (batch {report.get('batch_size', 32)})",
            "pareto_latency.png",
        ),
        ("peak_memory_mib", "peak memory (MiB)", "pareto_memory.png"),
    ):
        rows = [r for r in report["results"] if r.get(key) is not None]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.scatter(r[key], r["macro_f1"], s=40)
            ax.annotate(
                r["variant"], (r[key], r["macro_f1"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
            )
        ax.set_xlabel(label)
        ax.set_ylabel("macro-F1")
        ax.set_title(f"{report['model']}: macro-F1 vs {label.split(' (')[0]}", fontsize=9)
        fig.text(0.01, 0.01, report["machine_text"][:150], fontsize=5)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(name)
    return paths


def verdicts(results: list[dict], batch_size: int = 32) -> str:
    fp32 = next((r for r in results if r["variant"] == "pytorch_fp32"), None)
    if fp32 is None:
        return "No PyTorch fp32 reference: nothing recommended."
    for r in results:
        agreement = r.get("agreement_with_fp32")
        if fp32["macro_f1"] - r["macro_f1"] > RECOMMEND_WITHIN:
            r["verdict"] = "quality loss"
        elif agreement is not None and agreement < RECOMMEND_MIN_AGREEMENT:
            r["verdict"] = f"agreement < {RECOMMEND_MIN_AGREEMENT}"
        else:
            r["verdict"] = "within 0.5 pt"
    best = min((r for r in results if r["verdict"] == "within 0.5 pt"), key=lambda r: r["ms_per_example_b32"])
    best["verdict"] = "recommended"
    return (
        f"Recommended: **{best['variant']}** — the fastest at batch {batch_size} among the variants within 0.5 point "
        f"macro-F1 of PyTorch fp32 and agreeing with its predicted class on at least {RECOMMEND_MIN_AGREEMENT:.0%} "
        f"of the rows ({best['speedup_vs_fp32']:.2f}x fp32's speed on this machine)."
    )


def stability(results: list[dict], session_gflops: float) -> dict:
    """How much the machine moved during the run: the widest spread of a variant's timed batch passes and the
    drift of the GEMM peak remeasured with each variant (with the session's); a warning above UNSTABLE."""
    spreads = {r["variant"]: r["batch32_spread"] for r in results}
    peaks = [session_gflops, *(r["gemm_gflops_at_run"] for r in results)]
    drift = gemm_drift(peaks)
    worst = max(spreads, key=spreads.get) if spreads else None
    out = {
        "threshold": UNSTABLE,
        "max_batch32_spread": spreads[worst] if worst else None,
        "max_spread_variant": worst,
        "gemm_gflops_min": min(peaks),
        "gemm_gflops_max": max(peaks),
        "gemm_drift": drift,
    }
    out["unstable"] = bool((worst and spreads[worst] > UNSTABLE) or drift > UNSTABLE)
    out["warning"] = None
    if out["unstable"]:
        noise = max(spreads[worst] if worst else 0.0, drift)
        out["warning"] = (
            f"**Warning: the machine was unstable during this run** (threshold {UNSTABLE:.0%}): the timed "
            f"batch passes of {worst} spread {spreads[worst]:.0%} of their median, and the GEMM peak measured "
            f"with each variant moved between {min(peaks):.1f} and {max(peaks):.1f} GFLOP/s ({drift:.0%}). "
            f"Speed-ups, latencies and shares of the GEMM peak that differ by less than about {noise:.0%} are "
            "within noise, and so may be the recommended pick: rerun on a quiet machine before quoting them."
        )
    return out


def main(argv=None) -> dict:
    args = parse_args(argv, check_paths=True)
    if args.worker:
        run_worker(args)
        return {}
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING, force=True
    )
    logging.getLogger("longtail").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from longtail.benchmark import forward_flops, gemm_peak_gflops, non_embedding_parameters
    from longtail.calibration import load_temperature
    from longtail.cli import usage_exit
    from longtail.export import ExportArguments, export_onnx
    from longtail.inference import describe_machine, load_model_dir, machine_description, serving_defaults
    from longtail.metrics import assign_tiers, classification_metrics, softmax
    from longtail.runs import write_json

    out = Path(args.output_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the load average before the bench adds its own (loading the model, reading --data: a large export takes
    # minutes), as kd_step takes it
    machine = machine_description()
    # the model and the rows first: a folder or data problem is one line, before any timing or output folder
    try:
        model, tokenizer, resolved = load_model_dir(args.model_dir, device=device)
    except (OSError, ValueError) as error:
        first = next((x for x in str(error).splitlines() if x.strip()), type(error).__name__)
        raise usage_exit(f"cannot load --model_dir {args.model_dir}: {first}") from None
    check_max_length(build_parser(), args, model.config)  # its config is read here, with the model
    texts, labels, rows_log = evaluation_rows(args, model.config.label2id)
    # as `predict` serves it: the run's max_length (run_config.json), else the bench's 128
    serving = serving_defaults(args.model_dir)
    args.max_length = args.max_length or (serving["max_length"] if serving["source"] != "default" else 128)
    out.mkdir(parents=True, exist_ok=True)
    gemm = gemm_peak_gflops(args.gemm_size, max(args.repeats, 5), device)
    logger.info("fp32 GEMM peak: %.1f GFLOP/s", gemm["gflops"])
    temperature = load_temperature(args.model_dir)
    labels_json = Path(args.model_dir) / "labels.json"
    if labels_json.is_file():  # the run's training-frequency tiers
        tiers_by_name = json.loads(labels_json.read_text("utf-8"))["tiers"]
        tiers = {model.config.label2id[n]: t for n, t in tiers_by_name.items() if n in model.config.label2id}
    else:
        tiers = assign_tiers(dict(zip(*np.unique(labels, return_counts=True), strict=True)))
    params_ne = non_embedding_parameters(model)
    padding = padding_study(args, model, tokenizer, device)
    config = model.config
    del model

    skipped = {v: why for v in args.variants if (why := variant_available(v, device))}
    variants = [v for v in args.variants if v not in skipped]
    onnx_dir = out / "onnx"
    if not any(v in ONNX_VARIANTS for v in variants) and onnx_dir.is_dir():
        # --overwrite (checked) without an ONNX variant: an earlier run's export is not this report's
        shutil.rmtree(onnx_dir)
        logger.info("Removed the earlier run's %s (no ONNX variant measured in this run)", onnx_dir)
    if any(v in ONNX_VARIANTS for v in variants):
        export = export_onnx(ExportArguments(
            model_dir=args.model_dir, output_dir=str(onnx_dir), overwrite_output_dir=True, device=device,
            optimize="onnx_optimized" in variants, quantize="onnx_int8" in variants,
            min_int8_agreement=0.0, max_length=args.max_length,  # quality is measured below, on labelled rows
        ))  # fmt: skip
        for v, sub in ONNX_VARIANTS.items():
            status = export["variants"].get(sub, {}).get("status")
            # rejected here (the gate is off: quality is measured below) means an int8 whose compute ran off the
            # GPU asked for (export.check_node_placement): its folder is gone, and it is not a GPU model to time
            if v in variants and status in ("skipped", "rejected"):
                reason = export["variants"][sub]["reason"]
                skipped[v] = reason if status == "skipped" else f"rejected by the export: {reason}"
                variants.remove(v)
    spec = {
        "model_dir": str(resolved), "onnx_dir": str(onnx_dir), "device": device, "texts": texts,
        "max_length": args.max_length, "batch_size": args.batch_size, "latency_rows": args.latency_rows,
        "repeats": args.repeats, "warmup": args.warmup, "num_labels": config.num_labels,
        "threads": torch.get_num_threads(), "gemm_size": args.gemm_size,
    }  # fmt: skip
    results, logits = [], {}
    with tempfile.TemporaryDirectory() as work:
        for variant in list(variants):
            logger.info("Measuring %s", variant)
            try:
                result, logits[variant] = run_variant(variant, spec, Path(work), args.in_process)
            except RuntimeError as error:  # one variant that breaks (a kernel, a library) costs its row only
                last = next((x for x in reversed(str(error).strip().splitlines()) if x.strip()), "")
                logger.error("%s failed, reported as not run: %s", variant, last)
                skipped[variant] = f"failed: {last[:300]}"
                variants.remove(variant)
                continue
            results.append(result)

    flops = forward_flops(
        params_ne,
        config,
        [len(x) for x in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]],
    )
    reference = logits.get("pytorch_fp32")
    fp32_ms = next((r["ms_per_example_b32"] for r in results if r["variant"] == "pytorch_fp32"), None)
    for r in results:
        probs = softmax(logits[r["variant"]].astype(np.float64) / temperature)
        m = classification_metrics(labels, probs, tiers, n_resamples=args.bootstrap_resamples)
        r.update(
            {
                k: m[k]
                for k in (
                    "accuracy",
                    "macro_f1",
                    "macro_f1_ci_low",
                    "macro_f1_ci_high",
                    "macro_f1_tail",
                    "ece",
                )
            }
        )
        r["macro_f1_ci"] = f"{m['macro_f1']:.4f} [{m['macro_f1_ci_low']:.4f}, {m['macro_f1_ci_high']:.4f}]"
        r["agreement_with_fp32"] = (
            float((reference.argmax(1) == logits[r["variant"]].argmax(1)).mean())
            if reference is not None
            else None
        )
        r["speedup_vs_fp32"] = fp32_ms / r["ms_per_example_b32"] if fp32_ms else None
        r["model_gflops_per_s"] = flops / r["batch32_pass_s"] / 1e9
        r["gemm_peak_share"] = r["model_gflops_per_s"] / r["gemm_gflops_at_run"]
        r["peak_memory_mib"] = r["peak_memory_bytes"] / MIB if r["peak_memory_bytes"] else None
        r["size_mib"] = r["size_bytes"] / MIB
        runs = r["batch32_runs_s"]
        r["batch32_min_s"], r["batch32_max_s"] = min(runs), max(runs)
        r["batch32_spread"] = (max(runs) - min(runs)) / r["batch32_pass_s"]
    report = {
        "model": Path(args.model_dir).name if Path(args.model_dir).name != "model" else str(args.model_dir),
        "machine": machine,
        "machine_text": describe_machine(machine),
        "gemm": gemm,
        "rows": rows_log,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "temperature": temperature,
        "non_embedding_parameters": params_ne,
        "forward_gflops_all_rows": flops / 1e9,
        "padded_to_real_tokens": results[0]["padded_to_real_tokens"] if results else float("nan"),
        "skipped": skipped,
        "results": results,
        "padding": padding,
        "in_process": args.in_process,
        "smoke": args.smoke,
    }
    report["windows_note"] = windows_note(args.model_dir, tokenizer, texts, args.max_length)
    report["recommendation"] = verdicts(results, args.batch_size) if results else "Nothing measured."
    report["stability"] = stability(results, gemm["gflops"])
    report["plots"] = pareto_plots(report, out)
    write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown(report), "utf-8")
    print(markdown(report))
    if not results:  # the report stays for its reasons; a script or CI must not read this as a benchmark
        from longtail.cli import error_line

        raise SystemExit(
            error_line(f"no variant was measured ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
        )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
