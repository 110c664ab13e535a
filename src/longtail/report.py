"""Outputs every recipe writes into its `output_dir`, so that all arms report the same way.

`write_run_outputs` writes, for each scored split, `eval_results.json` / `test_results.json`, then
`per_class.csv`, `confusion.png`, `reliability.png`, `report.md` and a `README.md` model card.
The report leads with macro-F1 and its bootstrap CI, tier scores and the zero-F1 count, because on
a long-tail task accuracy mostly measures the head classes. Every text written passes through
`redact_secrets`, so a Hugging Face token in a command line never reaches a file.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import yaml

from longtail.calibration import apply_temperature, calibrate_run, load_temperature, log_probs, served_scores
from longtail.data import slice_masks
from longtail.metrics import (
    BOOTSTRAP_RESAMPLES,
    TIERS,
    assign_tiers,
    classification_metrics,
    expected_calibration_error,
    per_class_table,
    reliability_bins,
    slice_metrics,
)

matplotlib.use("Agg")  # headless: recipes run on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

DPI = 120
RESULTS_PREFIX = {"validation": "eval", "test": "test"}  # Trainer's naming: eval_results.json
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
# A token passed as an option value may not look like hf_...; hide the value of these options too.
TOKEN_OPTION_PATTERN = re.compile(r"""(--(?:hub_)?token[= ]+|(?:HF_TOKEN|HUGGING_FACE_HUB_TOKEN)=)[^\s'"]+""")
OUTPUT_FILES = {
    "eval_results.json": "validation metrics (with 95% bootstrap CIs) and slices",
    "test_results.json": "test metrics (with 95% bootstrap CIs) and slices",
    "per_class.csv": "precision / recall / F1 / support / train count per class and split",
    "confusion.png": "most confused (true → predicted) pairs",
    "reliability.png": "reliability diagram (confidence vs accuracy) with bin counts",
    "splits.json": "row ids per split (reproduce the split with --split_indices)",
    "temperature.json": "softmax temperature fitted on validation (used by prediction)",
    "report.md": "this report",
    "README.md": "model card",
}


@dataclass
class SplitResult:
    split: str  # "validation" or "test"
    y_true: np.ndarray  # int label ids
    probs: np.ndarray  # (n, num_classes) probabilities
    texts: pd.Series  # the texts (for slices)
    metrics: dict = field(default_factory=dict)  # filled by score_split
    row_ids: np.ndarray | None = None  # the data's row_id per row (for compare / ensembles)

    @property
    def y_pred(self) -> np.ndarray:
        return np.asarray(self.probs).argmax(axis=1)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def redact_secrets(text: str) -> str:
    text = TOKEN_PATTERN.sub("hf_<redacted>", text)
    return TOKEN_OPTION_PATTERN.sub(r"\1<redacted>", text)


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(redact_secrets(text), encoding="utf-8")
    return path


def _is_missing(x) -> bool:
    return x is None or (isinstance(x, float | np.floating) and math.isnan(x))


def _fmt(x, digits: int = 3) -> str:
    if _is_missing(x):
        return "—"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    return f"{x:.{digits}f}"


def _fmt_ci(m: Mapping, key: str) -> str:
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else ""
    return _fmt(m.get(key)) + ci


def _cell(x) -> str:
    """A markdown table cell: dicts/lists as compact JSON, pipes and newlines escaped."""
    s = json.dumps(x, default=str) if isinstance(x, dict | list | tuple) else str(x)
    return s.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def grid_table(rows: Sequence[Mapping], columns: Mapping[str, str], chosen: Mapping) -> str:
    """A validation grid as a markdown table (`columns`: header -> row key), best validation macro-F1 first,
    the chosen row marked; `val_*` scores with 4 decimals."""
    body = []
    for r in sorted(rows, key=lambda r: -r["val_macro_f1"]):
        cells = []
        for key in columns.values():
            cell = f"{r[key]:.4f}" if key.startswith("val_") else r[key]
            cells.append(f"{cell} **(chosen)**" if key == "val_macro_f1" and r is chosen else cell)
        body.append(cells)
    return _table(list(columns), body)


def _short(name: str, n: int = 38) -> str:
    name = redact_secrets(str(name))
    return name if len(name) <= n else name[: n - 1] + "…"


def jsonable(x):
    """NaN/inf -> None (JSON has no NaN) and numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _primary(results: Sequence[SplitResult]) -> SplitResult | None:
    """The split the headline tables use: test when scored, else validation."""
    by_split = {r.split: r for r in results}
    return by_split.get("test") or by_split.get("validation") or (results[-1] if results else None)


def confused_pairs(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[tuple[int, int, int]]:
    """Off-diagonal (true, predicted, count), most frequent first (ties by class ids)."""
    cm = np.bincount(np.asarray(y_true) * num_classes + np.asarray(y_pred), minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    np.fill_diagonal(cm, 0)
    t, p = np.nonzero(cm)
    pairs = sorted(zip(t.tolist(), p.tolist(), cm[t, p].tolist()), key=lambda x: (-x[2], x[0], x[1]))
    return pairs


# ---------------------------------------------------------------------------------------------
# Metrics files
# ---------------------------------------------------------------------------------------------


def score_split(
    result: SplitResult, tiers: Mapping[int, str], n_resamples: int = BOOTSTRAP_RESAMPLES
) -> dict:
    """classification_metrics (with CIs) plus slice metrics; stored in and returned as result.metrics."""
    y_true = np.asarray(result.y_true)
    metrics = classification_metrics(y_true, result.probs, tiers, n_resamples=n_resamples)
    texts = pd.Series(result.texts).reset_index(drop=True).astype(str)
    metrics["slices"] = slice_metrics(y_true, result.y_pred, slice_masks(texts))
    result.metrics = metrics
    return metrics


def save_predictions(output_dir, result: SplitResult, label_names: Sequence[str]) -> Path:
    """Per-example probabilities of one split, `predictions_<split>.npz` (row_id, y_true, probs,
    label_names): what `compare` and ensembles read to score several runs on the same rows."""
    n = len(result.y_true)
    row_ids = np.arange(n) if result.row_ids is None else np.asarray(result.row_ids)
    path = Path(output_dir) / f"predictions_{result.split}.npz"
    np.savez_compressed(
        path,
        row_id=row_ids.astype(np.int64),
        y_true=np.asarray(result.y_true, dtype=np.int64),
        probs=np.asarray(result.probs, dtype=np.float32),
        label_names=np.asarray(list(label_names), dtype=str),
    )
    return path


def load_predictions(path) -> dict[str, np.ndarray]:
    """Inverse of `save_predictions`: a dict with row_id, y_true, probs, label_names."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_results_json(output_dir, result: SplitResult) -> Path:
    path = Path(output_dir) / f"{RESULTS_PREFIX.get(result.split, result.split)}_results.json"
    existing = {}
    if path.is_file():  # Trainer may already have written eval_loss / runtime here: keep them
        try:
            existing = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError:
            existing = {}
    merged = jsonable({**existing, **result.metrics})
    return _write_text(path, json.dumps(merged, indent=2, allow_nan=False) + "\n")


def write_per_class_csv(
    output_dir,
    results: Sequence[SplitResult],
    label_names: Sequence[str],
    tiers: Mapping[int, str],
    train_counts: Mapping[int, int] | None = None,
) -> Path:
    frames = []
    for r in results:
        df = per_class_table(np.asarray(r.y_true), r.y_pred, label_names, tiers)
        df.insert(0, "split", r.split)
        if train_counts is not None:
            df.insert(4, "train_count", [int(train_counts.get(c, 0)) for c in df["label_id"]])
        frames.append(df)
    path = Path(output_dir) / "per_class.csv"
    return _write_text(path, pd.concat(frames, ignore_index=True).to_csv(index=False))


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot_confusions(path, result: SplitResult, label_names: Sequence[str], top_k: int = 20) -> Path:
    """Horizontal bars of the top_k (true → predicted) pairs: legible at 100+ classes, unlike a
    full confusion matrix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(result.y_true)
    pairs = confused_pairs(y_true, result.y_pred, len(label_names))
    shown = pairs[:top_k][::-1]  # barh draws bottom-up: largest on top
    support = np.bincount(y_true, minlength=len(label_names))
    # two-line tick labels (true, then → predicted) keep the long CFPB issue names readable
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.5 * max(len(shown), 3)))
    if shown:
        counts = [c for _, _, c in shown]
        ax.barh(range(len(shown)), counts, color="tab:red", alpha=0.75)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels(
            [f"{_short(label_names[t], 60)}\n→ {_short(label_names[p], 58)}" for t, p, _ in shown]
        )
        for i, (t, _, c) in enumerate(shown):
            ax.text(c, i, f" {c} ({c / max(support[t], 1):.0%} of true class)", va="center", fontsize=8)
        ax.set_xlim(0, max(counts) * 1.35)
        ax.tick_params(axis="y", labelsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no misclassifications", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    errors = sum(c for _, _, c in pairs)
    ax.set_xlabel("rows (true class → predicted class)")
    ax.set_title(
        f"Most confused pairs on {result.split}\ntop {len(shown)} of {len(pairs):,} confused pairs; "
        f"{errors:,} errors in {len(y_true):,} rows",
        fontsize=10,
    )
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_reliability(path, arms: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Reliability curves of several arms (e.g. vanilla / temperature-scaled) on shared axes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    for i, (name, (probs, y)) in enumerate(arms.items()):
        probs, y = np.asarray(probs), np.asarray(y)
        bins = reliability_bins(probs, y)
        full = [b for b in bins if b["count"]]
        ece = expected_calibration_error(probs, y)
        color = f"C{i}"
        ax.plot(
            [b["confidence"] for b in full],
            [b["accuracy"] for b in full],
            marker="o",
            color=color,
            label=f"{name} (ECE {ece:.3f}, n={len(y)})",
        )
        # side-by-side bars inside each bin, one per arm
        width = (bins[0]["high"] - bins[0]["low"]) / max(len(arms), 1)
        hist.bar(
            [b["low"] + width * (i + 0.5) for b in bins],
            [b["count"] for b in bins],
            width=width,
            color=color,
            alpha=0.75,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="Reliability (top-label confidence)")
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="confidence", ylabel="rows per bin")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _metrics_table(results: Sequence[SplitResult], tier_sizes: Mapping[str, int] | None = None) -> str:
    def tier_row(tier):
        size = f" ({tier_sizes.get(tier, 0)} classes in training)" if tier_sizes else ""
        return f"macro-F1 {tier}{size}", lambda m: _fmt(m.get(f"macro_f1_{tier}"))

    rows = [
        ("accuracy [95% CI]", lambda m: _fmt_ci(m, "accuracy")),
        ("**macro-F1** [95% CI]", lambda m: _fmt_ci(m, "macro_f1")),
        ("weighted-F1", lambda m: _fmt(m.get("weighted_f1"))),
        (
            "zero-F1 classes / classes scored",
            lambda m: f"{m.get('zero_f1_classes')} / {m.get('classes_scored')}",
        ),
        *(tier_row(t) for t in TIERS),
        ("ECE (15 bins), raw", lambda m: _fmt(m.get("ece"))),
        ("NLL, raw", lambda m: _fmt(m.get("nll"))),
    ]
    temperature = next((r.metrics["temperature"] for r in results if "temperature" in r.metrics), 1.0)
    if temperature != 1.0:  # what `predict` serves: softmax(logits / T)
        rows += [
            (f"ECE, served (T = {temperature:.3f})", lambda m: _fmt(m.get("ece_served"))),
            ("NLL, served", lambda m: _fmt(m.get("nll_served"))),
        ]
    rows.append(("n", lambda m: _fmt(m.get("num_examples"))))
    return _table(
        ["metric", *(r.split for r in results)], [[n, *(f(r.metrics) for r in results)] for n, f in rows]
    )


def _slices_table(results: Sequence[SplitResult]) -> str:
    names = list(dict.fromkeys(s for r in results for s in r.metrics.get("slices", {})))
    header = ["slice"] + [f"{r.split} {c}" for r in results for c in ("n", "accuracy", "macro-F1")]
    rows = []
    for name in names:
        row = [name]
        for r in results:
            s = r.metrics.get("slices", {}).get(name, {})
            row += [_fmt(s.get("num_examples")), _fmt(s.get("accuracy")), _fmt(s.get("macro_f1"))]
        rows.append(row)
    return _table(header, rows)


def _data_summary(log: Mapping) -> list[str]:
    lines = []
    if log.get("rows"):
        lines.append("- rows per split: " + ", ".join(f"{s} {n:,}" for s, n in log["rows"].items()))
    if log.get("num_classes") is not None:
        lines.append(f"- classes (labels of the final training rows): {log['num_classes']}")
    for split in ("train", "validation", "test"):
        c = log.get(split)
        if isinstance(c, dict):
            dropped = ", ".join(
                f"{k.removeprefix('dropped_')} {v:,}" for k, v in c.items() if k.startswith("dropped") and v
            )
            lines.append(
                f"- {split}: read {c.get('rows_read', 0):,}, kept {c.get('rows_kept', 0):,}"
                f" (dropped: {dropped or 'none'}; old label wordings merged: {c.get('labels_merged', 0):,}"
                # labels read as the taxonomy's in another case or spacing: shown only when there were any
                + (f"; labels respelled: {c['labels_respelled']:,}" if c.get("labels_respelled") else "")
                + ")"
            )
    if log.get("dropped_train_duplicates_of_eval") is not None:
        lines.append(
            f"- training rows dropped as duplicates of validation/test text: {log['dropped_train_duplicates_of_eval']:,}"
        )
    if log.get("dropped_validation_duplicates_of_test"):  # shown only when there were any, as below
        lines.append(
            f"- validation rows dropped as duplicates of test text: {log['dropped_validation_duplicates_of_test']:,}"
        )
    if log.get("labels_split_by_spelling"):
        lines.append(
            "- training labels written in more than one case or spacing (each spelling a class of its own): "
            f"{log['labels_split_by_spelling']:,}"
        )
    if log.get("capped_rows"):  # --max_train_samples and its twins: a seeded sample, after the drops above
        lines.append(
            "- rows capped (--max_train_samples / --max_eval_samples / --max_predict_samples, a seeded sample): "
            + ", ".join(
                f"{s} {log['capped_rows'][s]['kept']:,} of {log['capped_rows'][s]['of']:,}"
                for s in ("train", "validation", "test")
                if s in log["capped_rows"]
            )
        )
    rare = log.get("dropped_rare_classes")
    if rare is not None:
        names = ", ".join(list(rare)[:10]) + (", …" if len(rare) > 10 else "")
        lines.append(
            f"- rare classes dropped: {len(rare)} ({log.get('dropped_rare_class_rows', 0):,} rows)"
            + (f": {names}" if rare else "")
        )
    for split in ("validation", "test"):
        if f"{split}_excluded_unseen_labels" in log:
            lines.append(
                f"- {split} rows excluded (label unseen in training): {log[f'{split}_excluded_unseen_labels']:,}"
            )
    if log.get("validation_from_train"):
        lines.append(f"- validation carved from training: {_cell(log['validation_from_train'])}")
    return lines or ["- (no data log recorded)"]


def write_report(
    output_dir,
    *,
    title: str,
    run_info: Mapping,
    data_log: Mapping,
    label_names: Sequence[str],
    train_counts: Mapping[int, int],
    tiers: Mapping[int, str],
    results: Sequence[SplitResult],
    sections: Sequence[str] | None = None,
) -> Path:
    out = Path(output_dir)
    info = {k: v for k, v in run_info.items() if k != "command"}
    info.setdefault("selection", "not recorded")  # a report must say which split chose what
    md = [f"# {title}", "", "## Run", "", _table(["", ""], [[f"**{k}**", v] for k, v in info.items()])]
    if run_info.get("command"):
        md += ["", "Command:", "", "```bash", str(run_info["command"]), "```"]
    md += ["", "## Data", "", *_data_summary(data_log)]
    primary = _primary(results)
    if primary is not None:
        tier_sizes = Counter(tiers.values())
        md += [
            "",
            "## Metrics",
            "",
            _metrics_table(results, tier_sizes),
            "",
            "Macro-F1 weights every class equally and is the headline number on a long tail; accuracy is "
            "dominated by head classes. CIs are 95% percentile bootstraps over rows. Macro averages run over "
            "the classes present in a split's true labels or predictions ('classes scored'); tier macro-F1 "
            "over the tier's classes present in the true labels. Tiers: top 20 / next 40 / rest classes by "
            "training frequency.",
            "",
            "## Slices",
            "",
            _slices_table(results),
        ]
        y_true, y_pred = np.asarray(primary.y_true), primary.y_pred
        support = np.bincount(y_true, minlength=len(label_names))
        pairs = confused_pairs(y_true, y_pred, len(label_names))[:10]
        md += ["", f"## Most confused pairs ({primary.split})", ""]
        md.append(
            _table(
                ["true", "predicted", "rows", "share of true class"],
                [[label_names[t], label_names[p], c, f"{c / max(support[t], 1):.1%}"] for t, p, c in pairs],
            )
            if pairs
            else "No misclassifications."
        )
        if (out / "confusion.png").is_file():
            md += ["", "![Most confused pairs](confusion.png)"]
        table = per_class_table(y_true, y_pred, label_names, tiers)
        table["train_count"] = [int(train_counts.get(c, 0)) for c in table["label_id"]]
        scored = table[(table["support"] > 0) | (table["predicted"] > 0)]  # same classes as 'classes scored'
        worst = scored.sort_values(["f1", "support"], ascending=[True, False]).head(15)
        md += [
            "",
            f"## Worst classes by F1 ({primary.split})",
            "",
            f"{int((scored['f1'] == 0).sum())} of {len(scored)} scored classes have F1 = 0 on {primary.split}.",
            "",
            _table(
                ["class", "tier", "F1", "precision", "recall", "support", "predicted", "train count"],
                [
                    [
                        r.label,
                        r.tier,
                        *map(_fmt, (r.f1, r.precision, r.recall)),
                        r.support,
                        r.predicted,
                        r.train_count,
                    ]
                    for r in worst.itertuples()
                ],
            ),
        ]
        if (out / "reliability.png").is_file():
            md += ["", "## Calibration", "", "![Reliability diagram](reliability.png)"]
    for section in sections or []:
        md += ["", section.rstrip()]
    files = [f for f in OUTPUT_FILES if (out / f).is_file() or f == "report.md"]
    md += ["", "## Output files", "", *(f"- `{f}`: {OUTPUT_FILES[f]}" for f in files), ""]
    return _write_text(out / "report.md", "\n".join(md))


def _versions() -> dict[str, str]:
    from longtail.provenance import package_versions, source_revision

    revision = source_revision()
    commit = revision["git_commit"]
    longtail = f"{revision['version']}" + (
        f" (git {commit[:12]}{', with uncommitted changes' if revision['git_dirty'] else ''})"
        if commit
        else ""
    )
    return {**package_versions(), "longtail": longtail}


def write_model_card(
    output_dir,
    *,
    base_model: str,
    run_info: Mapping,
    label_names: Sequence[str],
    results: Sequence[SplitResult],
    data_description: str,
    command: str,
    tags: Sequence[str] | None = None,
    pipeline_example: bool = True,
    title: str | None = None,
) -> Path:
    out = Path(output_dir)
    front = {
        "library_name": run_info.get("library_name", "transformers"),
        "pipeline_tag": "text-classification",
        "base_model": base_model,
        "license": run_info.get("license", "apache-2.0"),
        "tags": list(dict.fromkeys(["text-classification", "long-tail", *(tags or [])])),
    }
    info = {k: v for k, v in run_info.items() if k not in {"command", "license", "library_name"}}
    md = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    md += [
        f"# {title or f'{base_model} for long-tail text classification'}",
        "",
        f"A text classifier over {len(label_names)} labels with an extreme long tail, trained from "
        f"`{base_model}`" + (f" with the `{run_info['recipe']}` recipe." if run_info.get("recipe") else "."),
        "",
        "## Labels",
        "",
        f"{len(label_names)} labels.",
        "",
        "<details><summary>All labels</summary>",
        "",
        *(f"{i}. {name}" for i, name in enumerate(label_names)),
        "",
        "</details>",
    ]
    if results:
        md += [
            "",
            "## Metrics",
            "",
            _metrics_table(results),
            "",
            "Brackets: 95% percentile bootstrap CIs over rows.",
        ]
    md += [
        "",
        "## Data",
        "",
        data_description,
        "",
        "## Training",
        "",
        _table(["", ""], [[f"**{k}**", v] for k, v in info.items()]),
    ]
    md += ["", "Command:", "", "```bash", command, "```"]
    if pipeline_example:
        from longtail.probe import REGISTER_LINE, is_probe_folder

        model_ref = run_info.get("hub_model_id") or str(out)
        md += [
            "",
            "## Quick start",
            "",
            "```python",
            *(
                [REGISTER_LINE] if is_probe_folder(out) else []
            ),  # LP-FT's output, a merged LoRA run on a probe
            "from transformers import pipeline",
            "",
            f'clf = pipeline("text-classification", model="{model_ref}")',
            # the pipeline does not truncate: a text longer than the body's positions was a traceback
            'print(clf("I was charged a late fee although I paid on time.", top_k=3'
            + (
                f", truncation=True, max_length={length}))"
                if (length := run_info.get("max_length"))
                else "))"
            ),
            "```",
        ]
        if length and run_info.get("long_text") == "windows":
            md += [
                "",
                f"The pipeline reads a text's first {length} tokens; `longtail.predict` reads the whole text in "
                f"{length}-token windows and averages their logits, as this run was trained and scored.",
            ]
        served_t = next((r.metrics["temperature"] for r in results if r.metrics.get("temperature")), 1.0)
        if served_t != 1:  # the pipeline's softmax is at T = 1; the Limitations below quote the served scores
            md += [
                "",
                f"The pipeline's scores are a softmax at T = 1; `longtail.predict` serves them at this run's "
                f"temperature, T = {served_t:.3f} (`temperature.json`), as the calibration figures below do: "
                'with `function_to_apply="none"` the pipeline returns the logits to divide by it.',
            ]
    elif front["library_name"] == "sklearn":  # a joblib pipeline: served by longtail.predict
        md += [
            "",
            "## Quick start",
            "",
            "```bash",
            f"python -m longtail.predict --model_dir {out} --input texts.csv --output predictions.csv",
            "```",
            "",
            "`model.joblib` is a pickle: load only runs you trust.",
        ]
    md += ["", "## Versions", "", *(f"- {k}: {v}" for k, v in _versions().items())]
    md += ["", "## Limitations", ""]
    for r in results:
        m = r.metrics
        t = m.get("temperature", 1.0)
        served = apply_temperature(log_probs(np.asarray(r.probs)), t) if len(r.y_true) else np.zeros((0, 1))
        conf = float(served.max(axis=1).mean()) if len(r.y_true) else float("nan")
        md.append(
            f"- {r.split}: {m.get('zero_f1_classes')} of {m.get('classes_scored')} scored classes have F1 = 0; "
            f"tail-tier macro-F1 {_fmt(m.get('macro_f1_tail'))} vs head {_fmt(m.get('macro_f1_head'))}. "
            f"ECE of the served probabilities{f' (T = {t:.3f})' if t != 1 else ''} "
            f"{_fmt(m.get('ece_served', m.get('ece')))}: mean confidence {_fmt(conf)} vs accuracy "
            f"{_fmt(m.get('accuracy'))}."
        )
    md += [
        "- Tail classes have few training and evaluation rows: their per-class scores are noisy, and the "
        "model rarely predicts them. Check `per_class.csv` before relying on any single class.",
        "- Only labels seen in training can be predicted; evaluation rows with unseen labels were excluded.",
        "- Confidences are not guaranteed to be calibrated; see `reliability.png` and the ECE above.",
        "",
    ]
    return _write_text(out / "README.md", "\n".join(md))


def write_run_outputs(
    output_dir,
    *,
    title: str,
    base_model: str,
    run_info: Mapping,
    data,
    results: Sequence[SplitResult],
    command: str,
    data_description: str | None = None,
    sections: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    pipeline_example: bool = True,
) -> dict[str, Path]:
    """Everything a recipe writes after training; `data` is the run's `PreparedData`;
    `data_description` names the source (see `runs.source_description`)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiers = assign_tiers(data.train_counts)
    calibration = calibrate_run(out, results)  # temperature.json next to the model, for every recipe
    temperature = load_temperature(out)  # 1 when none was fitted or kept
    paths: dict[str, Path] = {}
    for r in results:
        if not r.metrics:
            score_split(r, tiers)
        r.metrics.update(served_scores(r.probs, np.asarray(r.y_true), temperature))
        paths[f"{RESULTS_PREFIX.get(r.split, r.split)}_results"] = save_results_json(out, r)
        paths[f"predictions_{r.split}"] = save_predictions(out, r, data.label_names)
    paths["per_class"] = write_per_class_csv(out, results, data.label_names, tiers, data.train_counts)
    primary = _primary(results)
    if primary is not None:
        paths["confusion"] = plot_confusions(out / "confusion.png", primary, data.label_names)
        paths["reliability"] = plot_reliability(
            out / "reliability.png", {r.split: (r.probs, np.asarray(r.y_true)) for r in results}
        )
    sections = [*(sections or []), *([calibration] if calibration else [])]
    rows = data.log.get("rows", {})
    data_description = (
        f"Source: {data_description or 'see run info'}. Rows: "
        + ", ".join(f"{s} {n:,}" for s, n in rows.items())
        + f". {len(data.label_names)} classes; tiers by training frequency: "
        + ", ".join(f"{t} {n}" for t, n in Counter(tiers.values()).items())
        + " classes. See `report.md` for cleaning, merges and dropped rows."
    )
    paths["card"] = write_model_card(
        out,
        base_model=base_model,
        run_info=run_info,
        label_names=data.label_names,
        results=results,
        data_description=data_description,
        command=command,
        tags=tags,
        pipeline_example=pipeline_example,
        title=title,
    )
    paths["report"] = write_report(
        out,
        title=title,
        run_info={"command": command, **run_info},
        data_log=data.log,
        label_names=data.label_names,
        train_counts=data.train_counts,
        tiers=tiers,
        results=results,
        sections=sections,
    )
    return paths


def summary_text(results: Sequence[SplitResult], paths: Mapping[str, Path]) -> str:
    """The final metrics table and where the report and plots are, for the terminal."""
    lines = ["", _metrics_table(results), "", "Outputs:"]
    for key in ("report", "confusion", "reliability", "per_class", "card"):
        if key in paths:
            lines.append(f"  {key:<12} {paths[key]}")
    return "\n".join(lines)
