"""Scaling study (`make bench-scaling`): classification latency vs parameter count, encoders vs decoders.

    python bench/scaling.py                       # ModernBERT family + Qwen2.5-0.5B, CPU: 7-11 min on 2 cores
    python bench/scaling.py --models qwen2.5-1.5b --batch_size 32

Every model is the published architecture with RANDOM weights (speed does not depend on the values): the
ModernBERT family from <shared>/models/ModernBERT-base's config with the sizes of the published members
(Ettin 17M/32M/68M, ModernBERT-base, ModernBERT-large), the Qwen2.5 family from
<shared>/models/Qwen2.5-0.5B's config (0.5B, 1.5B, 3B), each with a 113-label classification head. Inputs
are real CFPB complaints (synthetic ones without <shared>/data/cfpb: the report says which) tokenised by the
family's real tokenizer, cut to exactly `seq_len` tokens (no padding). It tests two claims: at equal parameter count an encoder and a decoder classify at about the same
speed, and the decoder/encoder cost ratio follows the non-embedding parameter ratio. It also reports each
model's achieved FLOP/s as a share of the measured fp32 GEMM peak, and (--onnx_model) whether ONNX Runtime
matches PyTorch on ModernBERT-base at batch 32 x 128 (when --mfu_model / --onnx_model keep their default,
modernbert-base, and it is not among --models, the report says that section was not run). Writes
scaling.{json,md,png} to --output_dir (--overwrite to replace an earlier run's); skips cleanly (exit 0)
without the shared folder. Runs on a GPU too (--device cuda).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from longtail.benchmark import UNSTABLE, gemm_drift

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.scaling")

# name -> (family, base folder in <shared>/models, config overrides with the published sizes)
MODELS = {
    "ettin-17m": ("encoder", "ModernBERT-base", dict(hidden_size=256, intermediate_size=384, num_hidden_layers=7, num_attention_heads=4)),
    "ettin-32m": ("encoder", "ModernBERT-base", dict(hidden_size=384, intermediate_size=576, num_hidden_layers=10, num_attention_heads=6)),
    "ettin-68m": ("encoder", "ModernBERT-base", dict(hidden_size=512, intermediate_size=768, num_hidden_layers=19, num_attention_heads=8)),
    "modernbert-base": ("encoder", "ModernBERT-base", {}),
    "modernbert-large": ("encoder", "ModernBERT-base", dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16)),
    "qwen2.5-0.5b": ("decoder", "Qwen2.5-0.5B", {}),
    "qwen2.5-1.5b": ("decoder", "Qwen2.5-0.5B", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)),
    "qwen2.5-3b": ("decoder", "Qwen2.5-0.5B", dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2)),
}  # fmt: skip
DEFAULT_MODELS = [
    "ettin-17m",
    "ettin-32m",
    "ettin-68m",
    "modernbert-base",
    "modernbert-large",
    "qwen2.5-0.5b",
]
# the model of the MFU and ONNX sections unless --mfu_model / --onnx_model say otherwise
SECTION_DEFAULT = "modernbert-base"
OUTPUTS = ("scaling.json", "scaling.md", "scaling.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared_dir", default=str(REPO.parent / "shared"))
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num_labels", type=int, default=113)
    p.add_argument("--device", default=None)
    p.add_argument("--gemm_size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="torch/ORT intra-op threads (default: torch's)")
    p.add_argument(
        "--mfu_model",
        default=None,
        help=f"also timed at --mfu_batch_size ('' = skip; default {SECTION_DEFAULT})",
    )
    p.add_argument("--mfu_batch_size", type=int, default=32)
    p.add_argument(
        "--onnx_model",
        default=None,
        help=f"also exported and timed in ONNX ('' = skip; default {SECTION_DEFAULT})",
    )
    p.add_argument("--onnx_batch_size", type=int, default=None, help="default: --mfu_batch_size")
    p.add_argument("--output_dir", default=str(REPO / "bench_results" / "scaling"))
    p.add_argument("--overwrite", action="store_true", help="replace scaling.{json,md,png} in --output_dir")
    p.add_argument("--model_dirs", nargs="*", default=None, help=argparse.SUPPRESS)  # tests: name=folder
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Refuse bad input before any work (parser.error: exit 2, one line naming the problem). Sets
    args.names (the models to run) and args.not_run (section -> why it will not be in the report)."""
    for name, low in (("batch_size", 1), ("seq_len", 1), ("repeats", 1), ("warmup", 0), ("num_labels", 2),
                      ("gemm_size", 1), ("mfu_batch_size", 0), ("onnx_batch_size", 1), ("threads", 1)):  # fmt: skip
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name} must be >= {low}, got {value}")
    from longtail.inference import torch_device_problem

    if args.device is not None and (problem := torch_device_problem(args.device, mps=False)):
        p.error(problem)  # else a traceback from inside torch at the first tensor moved there
    if args.model_dirs and any("=" not in x for x in args.model_dirs):
        p.error("--model_dirs takes name=folder pairs")
    dirs = dict(x.split("=", 1) for x in args.model_dirs) if args.model_dirs else {}
    args.names = list(dirs) or list(args.models)
    args.not_run = {}
    for option, section in (("mfu_model", "mfu"), ("onnx_model", "onnx")):
        chosen = getattr(args, option)
        if chosen is None:  # the default: a note in the report when the run leaves it out
            setattr(args, option, SECTION_DEFAULT)
            if SECTION_DEFAULT not in args.names:
                args.not_run[section] = (
                    f"not run: --{option} defaults to {SECTION_DEFAULT}, which is not among the models run "
                    f"({', '.join(args.names)})"
                )
        elif chosen and chosen not in args.names:
            p.error(
                f"--{option} {chosen} is not among the models run ({', '.join(args.names)}); "
                f"add it to --models or pass --{option} '' to skip that section"
            )
    if args.mfu_model and not args.mfu_batch_size:
        args.not_run.setdefault("mfu", "not run: --mfu_batch_size 0")
    if not dirs and not (Path(args.shared_dir) / "models").is_dir():
        return  # main() skips: nothing measured, nothing written
    # a base folder missing from the shared one was a traceback when its model's turn came, after the others'
    # minutes of timing, with nothing written
    for name in [] if dirs else args.names:
        folder = Path(args.shared_dir) / "models" / MODELS[name][1]
        if not (folder / "config.json").is_file():
            p.error(
                f"--models {name} is built from {folder}, which has no config.json: leave it out of --models"
            )
    out = Path(args.output_dir)
    from longtail.benchmark import earlier_results

    if problem := earlier_results(out, OUTPUTS, args.overwrite):
        p.error(problem)


def build(name: str, folder: Path, num_labels: int, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from longtail.inference import load_tokenizer_dir

    family, _, overrides = MODELS.get(name, ("encoder", None, {}))
    config = AutoConfig.from_pretrained(folder, num_labels=num_labels, **overrides)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and len(layer_types) != config.num_hidden_layers:
        # Qwen2's config lists a type per layer when it is built, before the override of num_hidden_layers
        # lands: rebuild the list the way Qwen2Config does, else the model indexes past its end
        config.layer_types = [
            "sliding_attention"
            if getattr(config, "use_sliding_window", False) and i >= getattr(config, "max_window_layers", 0)
            else "full_attention"
            for i in range(config.num_hidden_layers)
        ]
    if config.model_type == "modernbert":
        config.reference_compile = False
    tokenizer = load_tokenizer_dir(folder)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    # .float(): from_config keeps the config's dtype (Qwen2.5 ships bf16); every model is timed in fp32
    model = AutoModelForSequenceClassification.from_config(config).float().to(device).eval()
    return model, tokenizer, config.model_type


def real_inputs(tokenizer, texts: list[str], batch_size: int, seq_len: int):
    """A Batch of `batch_size` real texts, each exactly `seq_len` tokens long (no padding)."""
    from longtail.cli import usage_exit
    from longtail.inference import Batch

    ids = [x for x in tokenizer(texts, truncation=True, max_length=seq_len)["input_ids"] if len(x) == seq_len]
    if len(ids) < batch_size:
        raise usage_exit(
            f"only {len(ids)} of {len(texts)} texts reach {seq_len} tokens, fewer than the batch of "
            f"{batch_size}; lower --seq_len or the batch size"
        )
    input_ids = np.array(ids[:batch_size], dtype=np.int64)
    return Batch(np.arange(batch_size), {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})


def texts_for(shared: Path) -> tuple[list[str], str]:
    """400 real CFPB narratives from the shared folder, else synthetic complaints; and which, for the report (it
    said "real CFPB texts" whichever it timed)."""
    csv = shared / "data" / "cfpb" / "complaints_dev.csv"
    if csv.is_file():
        import pandas as pd

        col = pd.read_csv(csv, usecols=["Consumer complaint narrative"], dtype=str)[
            "Consumer complaint narrative"
        ]
        return col.dropna().sample(400, random_state=0).tolist(), f"real CFPB texts ({csv.name})"
    from longtail.synthetic import make_synthetic_complaints

    texts = [
        " ".join([t] * 20)
        for t in make_synthetic_complaints(200, seed=1)["Consumer complaint narrative"].dropna()
    ]
    # named from --shared_dir, not by this machine's absolute path (the report is shared)
    return texts, f"synthetic complaints (--shared_dir has no data/cfpb/{csv.name})"


def measure(model, batch, device, repeats, warmup) -> float:
    from longtail.benchmark import timed
    from longtail.inference import TorchBackend

    backend = TorchBackend(model, device)
    return timed(lambda: backend.logits(batch), repeats, warmup, device)["median_s"]


def onnx_check(name, folder, model, tokenizer, batch, args, device, gemm) -> dict:
    """PyTorch vs ONNX fp32 / optimised / int8 on one model at the same batch."""
    from longtail.benchmark import timed
    from longtail.export import ExportArguments, export_onnx
    from longtail.inference import OrtBackend

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "model")
        tokenizer.save_pretrained(Path(tmp) / "model")
        record = export_onnx(ExportArguments(model_dir=str(Path(tmp) / "model"), output_dir=str(Path(tmp) / "onnx"),
                                             device=device, min_int8_agreement=0.0, parity_rows=8))  # fmt: skip
        out = {
            "model": name,
            "batch": list(batch.inputs["input_ids"].shape),
            "pytorch_s": measure(model, batch, device, args.repeats, args.warmup),
        }
        for variant, entry in record["variants"].items():
            if entry.get("status") in ("skipped", "rejected"):
                continue
            backend = OrtBackend(Path(tmp) / "onnx" / variant, device=device)
            out[f"onnx_{variant}_s"] = timed(
                lambda b=backend: b.logits(batch), args.repeats, args.warmup, device
            )["median_s"]
            out[f"onnx_{variant}_max_abs_logit_diff"] = entry["max_abs_logit_diff"]
    best = min((k for k in out if k.startswith("onnx_") and k.endswith("_s")), key=out.get)
    out["best_onnx"], out["best_onnx_vs_pytorch"] = best[:-2], out["pytorch_s"] / out[best]
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    shared = Path(args.shared_dir)
    dirs = dict(x.split("=", 1) for x in args.model_dirs) if args.model_dirs else {}
    if not dirs and not (shared / "models").is_dir():
        print(
            f"skip: {shared / 'models'} is absent (the scaling study needs the real configs and tokenizers)"
        )
        return {}
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING, force=True
    )
    logger.setLevel(logging.INFO)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from longtail.benchmark import forward_flops, gemm_peak_gflops, non_embedding_parameters
    from longtail.inference import describe_machine, machine_description
    from longtail.runs import write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    gemm = gemm_peak_gflops(args.gemm_size, max(args.repeats, 5), device)
    logger.info("fp32 GEMM peak: %.1f GFLOP/s", gemm["gflops"])
    texts, source = texts_for(shared)
    names = args.names
    rows, mfu, onnx = [], None, None
    for name in names:
        folder = Path(dirs.get(name) or shared / "models" / MODELS[name][1])
        model, tokenizer, model_type = build(name, folder, args.num_labels, device)
        params = sum(p.numel() for p in model.parameters())
        ne = non_embedding_parameters(model)
        batch = real_inputs(tokenizer, texts, args.batch_size, args.seq_len)
        # on a shared machine the peak drifts: measure it again right before each model, compare with that
        peak = gemm_peak_gflops(args.gemm_size, args.repeats, device)["gflops"]
        seconds = measure(model, batch, device, args.repeats, args.warmup)
        flops = forward_flops(ne, model.config, [args.seq_len] * args.batch_size)
        row = {
            "model": name, "family": MODELS.get(name, ("encoder",))[0], "model_type": model_type,
            "parameters": params, "non_embedding_parameters": ne, "batch": args.batch_size, "seq_len": args.seq_len,
            "median_s": seconds, "ms_per_sequence": 1000 * seconds / args.batch_size,
            "gflops_per_s": flops / seconds / 1e9, "gemm_gflops_at_run": peak,
            "gemm_peak_share": flops / seconds / 1e9 / peak,
        }  # fmt: skip
        rows.append(row)
        logger.info("%s: %.1fM params (%.1fM non-embedding), %.1f ms/sequence, %.0f%% of GEMM peak", name,
                    params / 1e6, ne / 1e6, row["ms_per_sequence"], 100 * row["gemm_peak_share"])  # fmt: skip
        if name == args.mfu_model and args.mfu_batch_size:
            big = real_inputs(tokenizer, texts, args.mfu_batch_size, args.seq_len)
            peak = gemm_peak_gflops(args.gemm_size, args.repeats, device)["gflops"]
            s = measure(model, big, device, args.repeats, args.warmup)
            f = forward_flops(ne, model.config, [args.seq_len] * args.mfu_batch_size)
            mfu = {"model": name, "batch": args.mfu_batch_size, "seq_len": args.seq_len, "median_s": s,
                   "gflops_per_s": f / s / 1e9, "gemm_gflops_at_run": peak, "gemm_peak_share": f / s / 1e9 / peak}  # fmt: skip
        if name == args.onnx_model:
            size = args.onnx_batch_size or args.mfu_batch_size or args.batch_size
            big = real_inputs(tokenizer, texts, size, args.seq_len)
            onnx = onnx_check(name, folder, model, tokenizer, big, args, device, gemm)
        del model
    claims = test_claims(rows)
    report = {"machine": machine, "machine_text": describe_machine(machine), "device": device, "gemm": gemm,
              "repeats": args.repeats, "warmup": args.warmup, "texts": source, "results": rows, "claims": claims,
              "mfu": mfu, "onnx": onnx, "not_run": args.not_run}  # fmt: skip
    report["stability"] = stability(report)
    write_json(out / "scaling.json", report)
    (out / "scaling.md").write_text(markdown(report), "utf-8")
    plot(report, out / "scaling.png")
    print(markdown(report))
    return report


def test_claims(rows: list[dict]) -> dict:
    """Per family, seconds per non-embedding GFLOP; the closest encoder/decoder pair by non-embedding
    parameters: their latency ratio vs their non-embedding and total parameter ratios."""
    enc = [r for r in rows if r["family"] == "encoder"]
    dec = [r for r in rows if r["family"] == "decoder"]
    out: dict = {}
    for fam, rs in (("encoder", enc), ("decoder", dec)):
        if rs:
            out[f"{fam}_ms_per_sequence_per_100m_non_embedding"] = [
                round(r["ms_per_sequence"] / (r["non_embedding_parameters"] / 1e8), 2) for r in rs
            ]
    pairs = []
    for d in dec:
        if enc:
            e = min(
                enc, key=lambda r: abs(np.log(r["non_embedding_parameters"] / d["non_embedding_parameters"]))
            )
            pairs.append({
                "decoder": d["model"], "encoder": e["model"],
                "latency_ratio": d["median_s"] / e["median_s"],
                "non_embedding_ratio": d["non_embedding_parameters"] / e["non_embedding_parameters"],
                "total_parameter_ratio": d["parameters"] / e["parameters"],
            })  # fmt: skip
    out["pairs"] = pairs
    return out


def stability(report: dict) -> dict:
    """How far the GEMM peak (the session's, and the one measured before each model and the MFU batch) moved in
    the run: scaling.md gave each share against its own peak and never said that the references disagreed."""
    peaks = [report["gemm"]["gflops"], *(r["gemm_gflops_at_run"] for r in report["results"])]
    peaks += [report["mfu"]["gemm_gflops_at_run"]] if report.get("mfu") else []
    drift = gemm_drift(peaks)
    return {"gemm_gflops_min": min(peaks), "gemm_gflops_max": max(peaks), "measured": len(peaks),
            "gemm_drift": drift, "threshold": UNSTABLE, "unstable": drift > UNSTABLE}  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        "# Scaling: classification latency vs parameters (random weights, real tokenizers)",
        "",
        f"Machine: {report['machine_text']}. Measured fp32 GEMM peak {report['gemm']['gflops']:.1f} GFLOP/s. "
        f"Median of {report['repeats']} timed forward pass{'es' if report['repeats'] != 1 else ''} after "
        f"{report['warmup']} warm-up, {report['texts']} "
        "cut to the exact length (no padding). Shares are against the GEMM peak measured right before each model.",
        "",
        "| model | family | params (M) | non-embedding (M) | batch x length | ms/sequence | GFLOP/s | share of GEMM peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} | {r['family']} | {r['parameters'] / 1e6:.1f} | {r['non_embedding_parameters'] / 1e6:.1f} | "
            f"{r['batch']} x {r['seq_len']} | {r['ms_per_sequence']:.1f} | {r['gflops_per_s']:.1f} | {r['gemm_peak_share']:.0%} |"
        )
    if stable := report.get("stability"):
        lines += [
            "",
            f"The GEMM peak, measured {stable['measured']} times in this run, moved between "
            f"{stable['gemm_gflops_min']:.1f} and {stable['gemm_gflops_max']:.1f} GFLOP/s ({stable['gemm_drift']:.0%})"
            + (
                f". **Warning: the machine was unstable during this run** (threshold {stable['threshold']:.0%}): "
                f"shares of the GEMM peak and latency ratios that differ by less than about {stable['gemm_drift']:.0%} "
                "are within noise; rerun on a quiet machine before quoting them."
                if stable["unstable"]
                else "."
            ),
        ]
    for p in report["claims"].get("pairs", []):
        lines += [
            "",
            f"{p['decoder']} vs {p['encoder']}: latency ratio {p['latency_ratio']:.2f}, non-embedding "
            f"parameter ratio {p['non_embedding_ratio']:.2f}, total parameter ratio {p['total_parameter_ratio']:.2f}.",
        ]
    if report.get("mfu"):
        m = report["mfu"]
        lines += [
            "",
            f"{m['model']} at batch {m['batch']} x {m['seq_len']}: {m['gflops_per_s']:.1f} GFLOP/s = "
            f"{m['gemm_peak_share']:.0%} of the GEMM peak (target >= 80%: {'met' if m['gemm_peak_share'] >= 0.8 else 'NOT met'}).",
        ]
    if report.get("onnx"):
        o = report["onnx"]
        times = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in o.items() if k.endswith("_s"))
        lines += [
            "",
            f"ONNX on {o['model']} at batch {o['batch'][0]} x {o['batch'][1]}: {times}; best ONNX "
            f"({o['best_onnx']}) = {o['best_onnx_vs_pytorch']:.2f}x PyTorch's speed (target >= 1.0: "
            f"{'met' if o['best_onnx_vs_pytorch'] >= 1.0 else 'NOT met'}).",
        ]
    for section, why in (report.get("not_run") or {}).items():
        title = {"mfu": "Share of the GEMM peak at a large batch", "onnx": "ONNX vs PyTorch"}.get(
            section, section
        )
        lines += ["", f"{title}: {why}."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, marker in (("encoder", "o"), ("decoder", "s")):
        rs = [r for r in report["results"] if r["family"] == fam]
        if rs:
            ax.plot([r["non_embedding_parameters"] / 1e6 for r in rs], [r["ms_per_sequence"] for r in rs],
                    marker=marker, label=fam)  # fmt: skip
            for r in rs:
                ax.annotate(
                    r["model"], (r["non_embedding_parameters"] / 1e6, r["ms_per_sequence"]), fontsize=7
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters (M)")
    ax.set_ylabel("ms per sequence")
    ax.legend()
    ax.set_title("Latency vs size (random weights)", fontsize=9)
    fig.text(0.01, 0.01, report["machine_text"][:150], fontsize=5)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
