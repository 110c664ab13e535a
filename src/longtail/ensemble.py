"""Average the calibrated probabilities of finished runs, with weights chosen on validation.

    python -m longtail.ensemble outputs/probe_encoder outputs/baseline_tfidf --output_dir outputs/ensemble

Runs whose errors differ (a frozen-encoder probe and TF-IDF) help each other most. Each member is first
temperature-scaled on validation (`calibration.fit_temperature`, T minimising validation NLL; softmax(log p / T) equals scaling its logits, so
the saved probabilities suffice), then the weights (a grid on the simplex, step --weight_step) are chosen by
validation macro-F1, ties broken by validation NLL. The test split is scored once with the chosen setting.
Writes predictions_validation.npz / predictions_test.npz (so `longtail.compare` can put the ensemble next to
its members), ensemble.json and report.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from longtail.calibration import apply_temperature, log_probs
from longtail.calibration import fit_temperature as fit_on_logits
from longtail.compare import CompareError, check_same_rows, load_tiers, read_run
from longtail.metrics import (
    BOOTSTRAP_RESAMPLES,
    classification_metrics,
    macro_f1,
    negative_log_likelihood,
)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at temperature T (calibration's softmax(logits / T), on log-probabilities)."""
    return apply_temperature(log_probs(probs), temperature)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """calibration.fit_temperature on log-probabilities (they differ from the logits by a per-row constant)."""
    return fit_on_logits(log_probs(probs), y)


def simplex_grid(k: int, step: float) -> list[tuple[float, ...]]:
    n = round(1 / step)
    return [
        tuple(c / n for c in combo) for combo in itertools.product(range(n + 1), repeat=k) if sum(combo) == n
    ]


def choose_weights(
    members: list[np.ndarray], y: np.ndarray, step: float
) -> tuple[tuple[float, ...], list[dict]]:
    """Weights on the simplex with the best validation macro-F1 (ties: lower NLL)."""
    rows = []
    for w in simplex_grid(len(members), step):
        mix = sum(wi * p for wi, p in zip(w, members))
        rows.append(
            {
                "weights": w,
                "val_macro_f1": macro_f1(y, mix.argmax(1)),
                "val_nll": negative_log_likelihood(mix, y),
            }
        )
    best = max(rows, key=lambda r: (round(r["val_macro_f1"], 12), -r["val_nll"]))
    return best["weights"], rows


def build_ensemble(run_dirs: list[str], step: float = 0.1, do_test: bool = True) -> dict:
    val = [read_run(d, "validation") for d in run_dirs]
    check_same_rows(val[1:], val[0])
    y_val = val[0]["y_true"]
    temps = [fit_temperature(r["probs"], y_val) for r in val]
    calibrated = [temper(r["probs"], t) for r, t in zip(val, temps)]
    weights, grid = choose_weights(calibrated, y_val, step)
    out = {
        "members": [r["dir"] for r in val],
        "temperatures": temps,
        "weights": list(weights),
        "grid": grid,
        "label_names": val[0]["label_names"],
        "splits": {"validation": (val[0]["row_id"], y_val, sum(w * p for w, p in zip(weights, calibrated)))},
    }
    if do_test:
        test = [read_run(d, "test") for d in run_dirs]
        check_same_rows(test[1:], test[0])
        mix = sum(w * temper(r["probs"], t) for w, r, t in zip(weights, test, temps))
        out["splits"]["test"] = (test[0]["row_id"], test[0]["y_true"], mix)
    return out


def write_outputs(
    result: dict, output_dir: Path, tiers: dict, n_resamples: int = BOOTSTRAP_RESAMPLES
) -> dict:
    from longtail.report import jsonable
    from longtail.runs import write_json

    metrics = {}
    for split, (row_id, y, probs) in result["splits"].items():
        np.savez_compressed(
            output_dir / f"predictions_{split}.npz",
            row_id=row_id.astype(np.int64),
            y_true=y.astype(np.int64),
            probs=probs.astype(np.float32),
            label_names=np.asarray(result["label_names"], dtype=str),
        )
        metrics[split] = classification_metrics(y, probs, tiers, n_resamples=n_resamples)
    names = [Path(m).name for m in result["members"]]
    record = {
        "members": result["members"],
        "temperatures": dict(zip(names, result["temperatures"])),
        "weights": dict(zip(names, result["weights"])),
        "selection": "temperatures: validation NLL per member; weights: best validation macro-F1 on the simplex "
        "grid (ties: lower NLL)" + ("; test scored once at the end" if "test" in metrics else ""),
        "metrics": metrics,
    }
    write_json(output_dir / "ensemble.json", record)
    md = [
        "# Ensemble of " + ", ".join(names),
        "",
        f"**Selection**: {record['selection']}. Validation scores of the chosen weights are therefore optimistic.",
        "",
        "| member | temperature (validation NLL) | weight (validation macro-F1) |",
        "|---|---|---|",
        *(
            f"| {n} | {t:.3f} | {w:.2f} |"
            for n, t, w in zip(names, result["temperatures"], result["weights"])
        ),
        "",
        "| split | accuracy [95% CI] | macro-F1 [95% CI] | zero-F1 classes | ECE | NLL |",
        "|---|---|---|---|---|---|",
    ]
    for split, m in metrics.items():
        md.append(
            f"| {split} | {m['accuracy']:.3f} [{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}] | "
            f"**{m['macro_f1']:.3f}** [{m['macro_f1_ci_low']:.3f}, {m['macro_f1_ci_high']:.3f}] | "
            f"{m['zero_f1_classes']} / {m['classes_scored']} | {m['ece']:.3f} | {m['nll']:.3f} |"
        )
    top = sorted(result["grid"], key=lambda r: (-r["val_macro_f1"], r["val_nll"]))[:10]
    md += [
        "",
        "## Validation grid (top 10)",
        "",
        "| weights | validation macro-F1 | validation NLL |",
        "|---|---|---|",
    ]
    md += [
        f"| {', '.join(f'{w:.2f}' for w in r['weights'])} | {r['val_macro_f1']:.4f} | {r['val_nll']:.4f} |"
        for r in top
    ]
    (output_dir / "report.md").write_text("\n".join(md) + "\n", "utf-8")
    return jsonable(record)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m longtail.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders (predictions_validation.npz [+ _test])")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--weight_step", type=float, default=0.1, help="grid step of the member weights")
    parser.add_argument(
        "--n_resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples (CIs)"
    )
    parser.add_argument(
        "--no_test", action="store_true", help="validation only (members without a test split)"
    )
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("an ensemble needs at least two runs")
    if not 0 < args.weight_step <= 0.5 or abs(round(1 / args.weight_step) * args.weight_step - 1) > 1e-9:
        parser.error(f"--weight_step must divide 1 (0.05, 0.1, 0.25, ...), got {args.weight_step}")
    from longtail.runs import OutputDirError, prepare_output_dir

    try:  # the output folder is checked before the work, not after
        out = prepare_output_dir(args.output_dir, args.overwrite_output_dir)
        result = build_ensemble(args.runs, args.weight_step, not args.no_test)
    except (CompareError, OutputDirError) as err:
        parser.exit(2, f"ensemble: error: {err}\n")
    record = write_outputs(result, out, load_tiers(args.runs[0], result["label_names"]), args.n_resamples)
    print((out / "report.md").read_text("utf-8"))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
