"""Finished runs side by side on the same rows, with paired-bootstrap deltas against a reference.

    python -m longtail.compare outputs/probe_encoder outputs/full_ft_encoder --reference outputs/baseline_tfidf \
        [--split test] [--output_dir outputs/compare]

Reads each run's `predictions_<split>.npz` (row ids, true labels, probabilities, label names). The runs must
have scored the same rows with the same label list, otherwise the comparison would be meaningless: a clear
error says which run differs and how. For every run: accuracy and macro-F1 with 95% bootstrap CIs, zero-F1
classes, tier macro-F1 (tiers from the reference's labels.json), ECE, NLL; and against the reference, paired
bootstrap deltas (same resampled rows for both systems) with CI and one-sided p-value. On test, each run's
validation macro-F1 too, and the run validation picks (the honest "best of them"). Writes compare.md and
compare.json (with --output_dir) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePath

import numpy as np

from longtail.calibration import load_temperature, served_scores
from longtail.cli import UsageError, usage_exit
from longtail.metrics import (
    BOOTSTRAP_RESAMPLES,
    accuracy,
    bootstrap_settings,
    classification_metrics,
    macro_f1,
    paired_bootstrap,
)
from longtail.report import load_predictions


class CompareError(UsageError):
    pass


# scipy's bootstrap runs with 1 resample, but warns computing its standard error (ddof=1) and the CI is a point
MIN_RESAMPLES = 2
RESAMPLES_ERROR = "--n_resamples must be >= 2 (a bootstrap CI needs at least two resamples), got {}"
# What --output_dir holds after a comparison: all that --overwrite_output_dir replaces there (never a run's files)
COMPARE_FILES = ("compare.md", "compare.json")


def run_labels(run_dirs) -> list[str]:
    """A short, distinct label per run folder: its name, with as many parent folders as it takes to tell it from
    the others (`seed0/probe`, `seed1/probe`); the same folder given twice is numbered."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    labels = []
    for i, p in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i and q != p]
        k = 1
        while k < len(p) and any(q[-k:] == p[-k:] for q in others):
            k += 1
        labels.append(str(PurePath(*p[-k:])))  # from the root: "/a/probe", not "//a/probe"
    # only repeats of one folder are left equal
    return [f"{x} #{labels[:i].count(x) + 1}" if labels.count(x) > 1 else x for i, x in enumerate(labels)]


def check_distinct(run_dirs) -> None:
    """A CompareError naming a run folder listed twice, however spelt (`a`, `./a/`, its absolute path)."""
    seen = {}
    for d in run_dirs:
        path = Path(d).resolve()
        if path in seen:
            also = "" if str(seen[path]) == str(d) else f" (as {seen[path]} and {d})"
            raise CompareError(f"{path} is given twice{also}: list each run once")
        seen[path] = d


PREDICTION_KEYS = ("row_id", "y_true", "probs", "label_names")


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """`report.load_predictions`, with a file that is not one `save_predictions` would write (unreadable, a key
    missing, lengths or widths that disagree, no rows, a row id twice, label ids outside its label list) a
    CompareError naming the file and what is wrong: each was a traceback from numpy or scikit-learn, or, for a
    width past the label list, a silent comparison of the wrong columns."""
    import zipfile

    if not zipfile.is_zipfile(path):  # numpy would read it as a pickle, and refuse that
        raise CompareError(
            f"{path} is not an .npz archive (truncated, or not written by these tools). "
            "Rerun the run (or the ensemble) that wrote it."
        )
    try:
        pred = load_predictions(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a damaged archive, an object array
        why = " ".join(str(err).split())[:120]
        raise CompareError(
            f"{path} cannot be read as a predictions file ({type(err).__name__}: {why}). "
            "Rerun the run (or the ensemble) that wrote it."
        ) from None
    missing = [k for k in PREDICTION_KEYS if k not in pred]
    if missing:
        raise CompareError(
            f"{path} has no {', '.join(missing)} (found: {', '.join(sorted(pred)) or 'nothing'}): not a "
            "predictions file of these tools, which hold row_id, y_true, probs and label_names."
        )
    row_id, y_true, probs, names = (pred[k] for k in PREDICTION_KEYS)
    problem = None
    if probs.ndim != 2 or row_id.ndim != 1 or y_true.ndim != 1 or names.ndim != 1:
        problem = (
            f"probs of shape {probs.shape}, row_id {row_id.shape}, y_true {y_true.shape}: not one row each"
        )
    elif not len(row_id) == len(y_true) == len(probs):
        problem = f"{len(row_id)} row ids, {len(y_true)} true labels and {len(probs)} rows of probabilities"
    elif probs.shape[1] != len(names):
        problem = f"{probs.shape[1]} probability columns for {len(names)} label names"
    elif not len(probs):
        problem = "no rows"
    elif not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(row_id.dtype, np.integer)):
        problem = f"row ids of type {row_id.dtype} and true labels of type {y_true.dtype}, not integers"
    elif len(np.unique(row_id)) != len(row_id):
        ids, counts = np.unique(row_id, return_counts=True)
        problem = (
            f"{int((counts > 1).sum())} row ids more than once (e.g. {[int(i) for i in ids[counts > 1][:5]]})"
        )
    elif ((y_true < 0) | (y_true >= len(names))).any():
        outside = sorted({int(i) for i in y_true if not 0 <= i < len(names)})
        problem = f"true label ids {outside[:5]} outside its {len(names)} label names"
    if problem:
        raise CompareError(f"{path} is malformed: {problem}. Rerun the run (or the ensemble) that wrote it.")
    check_probabilities(path, row_id, probs)
    return pred


PROBABILITY_SUM_TOLERANCE = 1e-3  # saved as float32 from a float64 softmax: rows sum to 1 within ~1e-6


def check_probabilities(path: Path, row_id: np.ndarray, probs: np.ndarray) -> None:
    """A CompareError for rows that are not probabilities: NaN or infinite values (a run that diverged: compare
    scored every such row as the first class, and an ensemble mixed them into NaN, then the first class, without a
    word), or values outside [0, 1] or rows not summing to 1 (logits or scores saved as `probs`: their argmax was
    compared as it came, and an ensemble took the log of negative "probabilities")."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise CompareError(
            f"{path} has NaN or infinite probabilities in {int(bad.sum())} of {len(probs)} rows (row ids "
            f"{[int(i) for i in row_id[bad][:5]]}{', ...' if bad.sum() > 5 else ''}): a run that diverged? "
            "Its predictions cannot be scored or mixed."
        )
    sums = probs.sum(axis=1, dtype=np.float64)
    bad = (probs < 0).any(axis=1) | (probs > 1).any(axis=1) | (np.abs(sums - 1) > PROBABILITY_SUM_TOLERANCE)
    if bad.any():
        raise CompareError(
            f"{path} holds rows that are not probabilities ({int(bad.sum())} of {len(probs)}, row ids "
            f"{[int(i) for i in row_id[bad][:5]]}{', ...' if bad.sum() > 5 else ''}: values from "
            f"{float(probs.min()):.3g} to {float(probs.max()):.3g}, rows summing to {float(sums.min()):.3g} to "
            f"{float(sums.max()):.3g}): logits or scores saved as probs? Each row must be probabilities summing to 1."
        )


def read_run(run_dir, split: str) -> dict:
    path = Path(run_dir) / f"predictions_{split}.npz"
    if Path(run_dir).is_file():
        raise CompareError(f"{run_dir} is a file: pass the run folder that holds {path.name}")
    if not Path(run_dir).is_dir():
        raise CompareError(f"{run_dir}: no such run folder")
    if not path.is_file():
        have = sorted(p.name for p in Path(run_dir).glob("predictions_*.npz"))
        # an ensemble has no --do_predict: it scores test unless built with --no_test
        rerun = {
            "test": "Rerun python -m longtail.ensemble on its members without --no_test to score the test split."
            if (Path(run_dir) / "ensemble.json").is_file()
            else "Rerun it with --do_predict to score the test split.",
            # every run of these recipes writes it: a folder without it stopped early or is no run of theirs (an
            # ensemble's temperatures and tau are chosen on it; it said nothing of what to do)
            "validation": "Every finished run of these recipes has it (an ensemble is chosen on it, and "
            "compare's validation pick reads it): pass a finished run, or rerun this one.",
        }.get(split)
        raise CompareError(
            f"{run_dir}: no {path.name} (found: {have or 'nothing'})." + f" {rerun}" * bool(rerun)
        )
    pred = read_predictions(path)
    order = np.argsort(pred["row_id"], kind="stable")  # align runs by row id, whatever their order
    return {
        "name": Path(run_dir).name,
        "dir": str(run_dir),
        "row_id": pred["row_id"][order],
        "y_true": pred["y_true"][order],
        "probs": pred["probs"][order].astype(np.float64),
        "label_names": [str(x) for x in pred["label_names"]],
    }


def check_same_rows(runs: list[dict], reference: dict, role: str = "the reference") -> None:
    """Same label list, same row ids, same true labels as the reference; otherwise a CompareError naming it by
    `role` (an ensemble's runs are checked against its first member)."""
    ref = reference
    for run in runs:
        if run["label_names"] != ref["label_names"]:
            missing = sorted(set(ref["label_names"]) - set(run["label_names"]))
            extra = sorted(set(run["label_names"]) - set(ref["label_names"]))
            raise CompareError(
                f"{run['dir']} and {role} {ref['dir']} have different label lists "
                f"({len(run['label_names'])} vs {len(ref['label_names'])} classes; missing: {missing[:5]}; "
                f"extra: {extra[:5]}{'; same labels in another order' if not missing and not extra else ''}). "
                "Train the runs on the same data options (reuse splits.json with --split_indices)."
            )
        if len(run["row_id"]) != len(ref["row_id"]) or (run["row_id"] != ref["row_id"]).any():
            only_run = np.setdiff1d(run["row_id"], ref["row_id"]).size
            only_ref = np.setdiff1d(ref["row_id"], run["row_id"]).size
            raise CompareError(
                f"{run['dir']} scored different rows than {role} {ref['dir']} ({len(run['row_id'])} vs "
                f"{len(ref['row_id'])} rows; {only_run} only in the run, {only_ref} only in {role})."
            )
        if (run["y_true"] != ref["y_true"]).any():
            raise CompareError(
                f"{run['dir']}: true labels differ from those of {role} {ref['dir']} on "
                f"{int((run['y_true'] != ref['y_true']).sum())} rows with the same row ids (different data files?)."
            )


def read_labels_json(run_dir, label_names: list[str]) -> dict | None:
    """A run's labels.json (None without one), its `train_counts` ({label: count}) and `tiers` ({label: tier})
    checked: a file that is not JSON, not an object, or whose entries are not those mappings (each once a
    JSONDecodeError, AttributeError or TypeError traceback, or tiers silently dropped), or whose train_counts name
    none of the run's labels (another run's labels.json: every class would count as one row, the post-hoc prior
    uniform, the shift doing nothing) is a CompareError naming the file."""
    path = Path(run_dir) / "labels.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text("utf-8"))
    except (ValueError, OSError) as err:  # not JSON (or UTF-8), unreadable
        raise CompareError(
            f"{path} is not readable JSON ({type(err).__name__}: {err}). Rerun the run that wrote it."
        ) from None
    problem = None
    if not isinstance(record, dict):
        problem = f"it holds a {type(record).__name__}, not an object"
    else:
        counts, tiers = record.get("train_counts"), record.get("tiers")
        if counts is not None and not (
            isinstance(counts, dict)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values())
        ):
            problem = "train_counts is not a mapping of label to a count of rows"
        elif tiers is not None and not (
            isinstance(tiers, dict) and all(isinstance(t, str) for t in tiers.values())
        ):
            problem = "tiers is not a mapping of label to tier"
        elif counts and label_names and not set(counts) & set(label_names):
            problem = (
                f"its train_counts name none of the {len(label_names)} labels of the run's predictions "
                f"(e.g. {sorted(counts)[:3]} against {list(label_names)[:3]}): another run's labels.json?"
            )
    if problem:
        raise CompareError(f"{path}: {problem}. Rerun the run that wrote it.")
    return record


def load_tiers(run_dir, label_names: list[str]) -> dict[int, str]:
    tiers = (read_labels_json(run_dir, label_names) or {}).get("tiers") or {}
    return {i: tiers[name] for i, name in enumerate(label_names) if name in tiers}


def compare_runs(
    run_dirs, reference_dir, split: str = "test", n_resamples: int = BOOTSTRAP_RESAMPLES
) -> dict:
    reference = read_run(reference_dir, split)
    ref = Path(reference_dir).resolve()  # the reference listed among the runs too (a glob) is shown once
    runs = [reference] + [read_run(d, split) for d in run_dirs if Path(d).resolve() != ref]
    check_same_rows(runs, reference)
    for run, label in zip(runs, run_labels([r["dir"] for r in runs])):
        run["name"] = label
    tiers, tiers_from = load_tiers(reference_dir, reference["label_names"]), reference["name"]
    # an ensemble saves no labels.json: every run's tier columns were blank ("—"), as if it had no such classes
    for run in runs[1:] if not tiers else []:
        tiers, tiers_from = load_tiers(run["dir"], reference["label_names"]), run["name"]
        if tiers:
            break
    y = reference["y_true"]
    ref_pred = reference["probs"].argmax(1)
    rows = []
    for run in runs:
        pred = run["probs"].argmax(1)
        row = {
            "run": run["name"],
            "dir": run["dir"],
            "reference": run is reference,
            **classification_metrics(y, run["probs"], tiers, n_resamples=n_resamples),
            # as `predict` serves it: the saved (raw) probabilities at the run's own temperature; an ensemble's
            # are already its calibrated mix (it saves no temperature.json)
            **served_scores(run["probs"], y, load_temperature(run["dir"])),
        }
        if run is not reference:
            for key, metric in (("macro_f1", macro_f1), ("accuracy", accuracy)):
                row[f"delta_{key}"] = paired_bootstrap(
                    y, pred, ref_pred, metric=metric, n_resamples=n_resamples
                )
        rows.append(row)
    result = {
        "split": split,
        "num_rows": int(len(y)),
        "reference": reference["name"],
        "bootstrap": bootstrap_settings(n_resamples),  # the same seed and resamples give the same CIs and p
        "runs": rows,
        "tiers_from": tiers_from if tiers else None,  # whose labels.json (training counts) set the tiers
    }
    if split == "test":
        result["validation_pick"] = validation_pick(rows)
    return result


def validation_pick(rows: list[dict]) -> dict:
    """Each run's validation macro-F1 (into its row) and the run validation would pick: the best one, ties to
    the earlier run (the reference first). No pick unless every run scored the same validation rows."""
    try:
        val = [read_run(r["dir"], "validation") for r in rows]
        check_same_rows(val[1:], val[0])
    except CompareError as err:
        return {"run": None, "why_none": str(err)}
    for row, run in zip(rows, val):
        row["val_macro_f1"] = macro_f1(run["y_true"], run["probs"].argmax(1))
    best = max(rows, key=lambda r: r["val_macro_f1"])  # max keeps the first of equals
    return {
        "run": best["run"],
        "dir": best["dir"],
        "val_macro_f1": best["val_macro_f1"],
        "test_macro_f1": best["macro_f1"],
        "validation_rows": int(len(val[0]["y_true"])),
    }


def bootstrap_note(settings: dict | None) -> str:
    """' Bootstrap: N resamples, seed S.' for a report's text ('' when the settings were not recorded)."""
    if not settings:
        return ""
    return f" Bootstrap: {settings['n_resamples']:,} resamples, seed {settings['seed']}."


def to_markdown(result: dict, rows_name: str | None = None) -> str:
    """compare.md; `rows_name` names the rows scored where the split's name would mislead (`longtail.score`'s new
    file is scored as a run's test split)."""
    rows_name = rows_name or result["split"]

    def f(x):
        return "—" if x is None or np.isnan(x) else f"{x:.3f}"  # NaN: e.g. no tail class in these rows

    lines = [
        f"# Comparison on {rows_name} ({result['num_rows']:,} rows, reference: {result['reference']})",
        "",
        "Every run scored the same rows with the same labels. CIs: 95% percentile bootstrap over rows. "
        "Deltas vs the reference: paired bootstrap (both systems on the same resampled rows); p = share of "
        "resamples where the run is not better. Macro-F1 averages over the classes in the true labels or in a "
        "run's predictions (scikit-learn's rule), so two runs may average over different classes: the zero-F1 "
        "column's second number says how many. ECE is that of the probabilities each run serves (at its own "
        "temperature, `temperature.json`)." + bootstrap_note(result.get("bootstrap")),
        "",
    ]
    if result.get("tiers_from") not in (None, result["reference"]):
        lines += [f"Tiers: {result['tiers_from']}'s training counts (the reference has no labels.json).", ""]
    elif "tiers_from" in result and result["tiers_from"] is None:
        lines += ["Tiers: none (no run has a labels.json with training counts).", ""]
    pick = result.get("validation_pick") or {}
    if pick.get("run"):
        lines += [
            f"**Chosen on validation**: {pick['run']}, the best validation macro-F1 ({pick['val_macro_f1']:.3f} on "
            f"the same {pick['validation_rows']:,} validation rows for every run), which scores "
            f"**{pick['test_macro_f1']:.3f}** on {rows_name}. Each validation score is that of the run's own "
            "selection (grid, checkpoint, tau), so all are a little optimistic; the test column is not.",
            "",
        ]
    elif pick:
        lines += [f"No validation pick: {pick['why_none']}", ""]
    val_column = bool(pick.get("run"))
    header = (
        "| run | accuracy [95% CI] | macro-F1 [95% CI] | zero-F1 / classes scored | head / mid / tail macro-F1 | ECE, served | "
        "Δ macro-F1 vs ref [95% CI], p | Δ accuracy vs ref [95% CI], p |"
    )
    if val_column:
        header += " validation macro-F1 |"
    lines += [header, "|---|---|---|---|---|---|---|---|" + "---|" * val_column]
    for r in result["runs"]:

        def delta(key, r=r):
            d = r.get(f"delta_{key}")
            if d is None:
                return "(reference)"
            return f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], p={d['p_value']:.3f}"

        tiers = " / ".join(f(r.get(f"macro_f1_{t}")) for t in ("head", "mid", "tail"))
        lines.append(
            f"| {r['run']}{' **(ref)**' if r['reference'] else ''} "
            f"| {f(r['accuracy'])} [{f(r.get('accuracy_ci_low'))}, {f(r.get('accuracy_ci_high'))}] "
            f"| **{f(r['macro_f1'])}** [{f(r.get('macro_f1_ci_low'))}, {f(r.get('macro_f1_ci_high'))}] "
            f"| {r['zero_f1_classes']} / {r['classes_scored']} | {tiers} | {f(r['ece_served'])} "
            f"| {delta('macro_f1')} | {delta('accuracy')} |"
            + (f" {f(r['val_macro_f1'])} |" if val_column else "")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    # no prog: argparse names the tool by sys.argv[0] as usage_exit does, so its errors and ours start alike
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs",
        nargs="+",
        help="run folders (each with predictions_<split>.npz; each listed once, the reference may be among them)",
    )
    parser.add_argument("--reference", required=True, help="the run the others are compared with")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--output_dir", default=None, help="write compare.md and compare.json here")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--n_resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    args = parser.parse_args(argv)
    if args.n_resamples < MIN_RESAMPLES:
        parser.error(RESAMPLES_ERROR.format(args.n_resamples))
    from longtail.runs import prepare_results_dir

    try:  # the output folder is checked before minutes of bootstrap, not after
        check_distinct(args.runs)
        # never clear a run being compared (--output_dir one of them, as `make compare COMPARE_OUT=...` could say)
        reads = [("the run", d) for d in args.runs] + [("--reference", args.reference)]
        # nor write inside one, nor in another run's folder: it replaces an earlier comparison only
        out = (
            prepare_results_dir(
                args.output_dir,
                args.overwrite_output_dir,
                reads,
                COMPARE_FILES,
                (),
                "comparison",
                "compare.json",
            )
            if args.output_dir
            else None
        )
        result = compare_runs(args.runs, args.reference, args.split, args.n_resamples)
    except UsageError as err:  # CompareError, OutputDirError, a malformed temperature.json
        raise usage_exit(str(err)) from None
    markdown = to_markdown(result)
    if out is not None:  # an overwrite clears the previous comparison only now, when this one is ready
        from longtail.runs import replace_previous_run, write_report

        replace_previous_run(out, args.overwrite_output_dir)
        write_report(out, "compare", markdown, result, argv)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
