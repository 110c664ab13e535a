"""Score finished runs on a new labelled file, side by side: the same rows for every run, read the way the runs
read their data, with paired-bootstrap deltas against a reference and the run validation picks.

    python -m longtail.score outputs/probe outputs/lpft outputs/ensemble outputs/tfidf \
        --data new_complaints.csv --reference outputs/tfidf --output_dir outputs/scored_new

For complaints no run has seen, after the runs were trained and chosen: `predict` labels texts but scores nothing,
and retraining with --test_file reruns everything. The file is read once with the runs' own data options
(`run_config.json`: text and label columns, label merge map, taxonomy), as a recipe reads a test file, and
three kinds of rows are left out and counted: rows without a text or a label (or with a label outside the
taxonomy), rows whose label the runs were not trained on, and rows whose text a run trained on or was
selected on (its `splits.json` text digests; `--keep_seen_rows` keeps them). Each run scores the rest with
`longtail.predict`'s code, as the run reads text (its max_length, windows, members), and `longtail.compare`
puts them side by side.

Writes to --output_dir: `scored/<run>/predictions_test.npz` for each run, beside copies of the run's
`predictions_validation.npz`, `labels.json` and `temperature.json` (so the folder reads as a run: `compare` can
be run on it again), `score.md` (what was read and left out, the comparison, each run's scoring time) and
`score.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.cli import UsageError, usage_exit
from longtail.compare import CompareError, check_distinct, compare_runs, run_labels, to_markdown
from longtail.metrics import BOOTSTRAP_RESAMPLES
from longtail.runs import source_run, spellings

logger = logging.getLogger("longtail.score")

# The data options a run's true labels depend on, as run_config.json records them ("data")
LABEL_OPTIONS = ("label_column", "label_merge_map", "label_taxonomy")
SCORED_DIR = "scored"  # under --output_dir: one folder per run, readable by `compare`
SCORE_FILES = ("score.md", "score.json")  # what a rerun with --overwrite_output_dir replaces, with SCORED_DIR
# the counts of rows left out (`read_rows`), and why, as score.md (and the export's parity.json) words them
LEFT_OUT = (
    ("dropped_empty_text", "no text"),
    ("dropped_missing_label", "no label"),
    ("dropped_outside_taxonomy", "a label outside the taxonomy"),
    ("excluded_unseen_labels", "a label the runs were not trained on"),
    ("excluded_seen", "a text a run trained or was selected on"),
)
COPIED = ("predictions_validation.npz", "labels.json", "temperature.json")  # what `compare` reads beside test


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders (any kind `predict` serves; each once)")
    parser.add_argument(
        "--data", required=True, help="labelled .csv, .json, .jsonl or .parquet (or compressed)"
    )
    parser.add_argument(
        "--reference", default=None, help="the run the others are compared with (default: the first run)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true")
    for name in ("text_column", *LABEL_OPTIONS):
        parser.add_argument(
            f"--{name}", default=None, help="default: as the runs were trained (run_config.json)"
        )
    parser.add_argument(
        "--keep_seen_rows",
        action="store_true",
        help="score rows whose text a run trained or was selected on too (counted either way)",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the Transformers models run: cpu, cuda, cuda:N or mps (TF-IDF runs always run on the CPU)",
    )
    parser.add_argument("--n_resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    from longtail.compare import MIN_RESAMPLES, RESAMPLES_ERROR

    if args.n_resamples < MIN_RESAMPLES:
        parser.error(RESAMPLES_ERROR.format(args.n_resamples))
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def leaf_runs(folder: Path) -> list[Path]:
    """The trained runs behind a run folder: an ensemble's members (nested ensembles followed), else the folder."""
    from longtail.ensemble import ensemble_members, member_walk

    walk = member_walk(folder)
    return [folder] if len(walk) == 1 else [f for f, _ in walk if not ensemble_members(f)]


def distinct_runs(folders) -> list[Path]:
    """Each run folder once, as first spelt: an ensemble records its members by absolute path, and a member given
    too, spelt relative, was counted (and named) twice."""
    distinct: dict[Path, Path] = {}
    for folder in folders:
        distinct.setdefault(Path(folder).resolve(), Path(folder))
    return list(distinct.values())


def ensemble_depth(folder: Path) -> int:
    """0 for a run, 1 for an ensemble of runs, 2 for one with an ensemble among its members, ..."""
    from longtail.ensemble import member_walk

    return max(len(chain) + (f / "ensemble.json").is_file() for f, chain in member_walk(folder))


def run_file(folder: Path, name: str) -> Path | None:
    """A run's file in its folder, or in the parent for a folder inside a run (an adapter's `merged/`: where
    `predict` finds run_config.json too), or, for an ONNX export's variant (`<run>/onnx/fp32`), in the run it was
    exported from (`source_run`, and that folder's parent, for an adapter's `merged/`), else the export's default
    place, two folders up. An export copies labels.json and run_config.json, not splits.json: without it the rows
    the run trained on were scored as new ones."""
    folder = spellings(folder)[0]  # absolute: `.` given from inside merged/ has itself for parent
    candidates = [folder, folder.parent]
    source = source_run(folder)
    if source is not None and source != folder.parent:  # an export (a merged adapter's run is its parent)
        candidates += [source, source.parent, folder.parent.parent]
    return next((d / name for d in candidates if (d / name).is_file()), None)


def read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path} holds a {type(record).__name__}, not an object")
    return record


def recorded_data_options(folder: Path) -> dict | None:
    """The `data` options a trained run recorded in run_config.json (None without one)."""
    path = run_file(folder, "run_config.json")
    data = read_json(path).get("data") if path else None
    if data is not None and not isinstance(data, dict):  # else the recipes' defaults, and a column error
        raise UsageError(f"{path}: its 'data' entry is a {type(data).__name__}, not the run's data options")
    return data


def none_as_null(name: str, value):
    """A recorded merge map or taxonomy of none ("none", "None", "null", "") as null: runs trained with
    `--label_taxonomy none` and runs whose config left it unset read labels the same way."""
    from longtail.data import NONE_VALUES

    if (
        name in ("label_merge_map", "label_taxonomy")
        and isinstance(value, (str, type(None)))
        and value in NONE_VALUES
    ):
        return None
    return value


def data_options(run_dirs: list[Path], given: dict) -> tuple[dict, str]:
    """Text column, label column, merge map and taxonomy to read the file with, and where they came from: each
    given option, else the one value every trained run recorded. Runs that recorded different values are an error
    naming them (their true labels differ: no comparison on one set of rows); runs that recorded none take the
    recipes' defaults."""
    from longtail.data import DataArguments, DataError, load_merge_map, load_taxonomy

    leaves = distinct_runs(leaf for d in run_dirs for leaf in leaf_runs(d))
    recorded = {leaf: recorded_data_options(leaf) for leaf in leaves}
    known = {leaf: opts for leaf, opts in recorded.items() if opts is not None}
    options, sources = {}, []
    defaults = DataArguments()
    for name in ("text_column", *LABEL_OPTIONS):
        if given.get(name) is not None:
            options[name] = given[name]
            continue
        # a key the run did not record (an older run_config.json) is not a value: null is one (no taxonomy), and
        # "none", "" and null are one value (no merge map, no taxonomy), as the recipes read them
        values = {leaf: none_as_null(name, opts[name]) for leaf, opts in known.items() if name in opts}
        distinct = list(dict.fromkeys(values.values()))
        if len(distinct) > 1:
            shown = "; ".join(
                f"{v!r}: {', '.join(str(leaf) for leaf, w in values.items() if w == v)}" for v in distinct
            )
            raise UsageError(
                f"the runs were trained with different --{name} ({shown}), so their true labels "
                f"{'(texts) ' if name == 'text_column' else ''}would differ: score runs trained on the same data "
                f"options, or pass --{name} to read the file one way for all"
            )
        options[name] = distinct[0] if distinct else getattr(defaults, name)
        loader = {"label_merge_map": load_merge_map, "label_taxonomy": load_taxonomy}.get(name)
        if distinct and loader:  # a file named relative to where the runs ran, or gone since
            try:
                loader(options[name])
            except DataError as err:
                raise DataError(
                    f"{err} It is the --{name} the runs were trained with (run_config.json of "
                    f"{', '.join(map(str, list(values)[:3]))}): pass --{name} to name the file from here (or none)"
                ) from None
    if known:
        sources.append(f"as {len(known)} trained runs recorded them in run_config.json")
    if len(known) < len(leaves):
        sources.append(f"the recipes' defaults for {len(leaves) - len(known)} trained runs without one")
    if any(given.get(n) is not None for n in options):
        sources.insert(0, "given: " + ", ".join(f"--{n}" for n in options if given.get(n) is not None))
    return options, "; ".join(sources)


def label_names_of(folder: Path) -> list[str] | None:
    """A run's label list without loading its model: an ensemble's ensemble.json, a run's labels.json, or the
    model's config.json (None when none of them says)."""
    ensemble = folder / "ensemble.json"
    if ensemble.is_file():
        names = (read_json(ensemble).get("serving") or {}).get("label_names")
        return list(names) if names else None
    for name in ("labels.json", "config.json"):
        path = run_file(folder, name)
        if path:
            id2label = read_json(path).get("id2label")
            if isinstance(id2label, dict) and id2label:
                try:
                    return [id2label[str(i)] for i in range(len(id2label))]
                except KeyError:
                    return None
    return None


def check_label_lists(runs: dict[str, list[str] | None]) -> list[str] | None:
    """The runs' common label list (None if no run says before scoring); a UsageError when two differ."""
    known = {run: names for run, names in runs.items() if names is not None}
    if not known:
        return None
    (first, names), *others = known.items()
    for run, other in others:
        if other != names:
            missing, extra = sorted(set(names) - set(other)), sorted(set(other) - set(names))
            raise CompareError(
                f"{run} and {first} have different label lists ({len(other)} vs {len(names)} classes; missing: "
                f"{missing[:5]}; extra: {extra[:5]}"
                f"{'; same labels in another order' if not missing and not extra else ''}): runs trained on "
                "different data options cannot score one set of rows. Score them separately."
            )
    return names


# run_config.json options through which a run's model starts from another run's: its weights hold what that run
# trained on (LP-FT from a probe, a classifier run fine-tuned again, distill's teacher)
START_OPTIONS = ("model_name_or_path", "head_init_from", "teacher_model_name_or_path", "teacher_logits")
# of those, the ones only a local path fills (the others may name a Hub id, which no local check can tell from a
# folder that is not here)
LOCAL_START_OPTIONS = ("head_init_from", "teacher_logits")


def started_from(run: Path) -> list[Path]:
    """The runs of the recipes a trained run's model started from (its run_config.json's START_OPTIONS naming a
    folder with a run_config.json or splits.json), followed back; a Hub id or a base model's folder is none."""
    chain: list[Path] = []
    todo = [run]
    while todo:
        path = run_file(todo.pop(), "run_config.json")
        config = read_json(path) if path else {}
        for section in config.values():
            for option in START_OPTIONS:
                value = section.get(option) if isinstance(section, dict) else None
                if (
                    isinstance(value, str)
                    and value
                    and option in LOCAL_START_OPTIONS
                    and not Path(value).exists()
                ):
                    logger.warning(
                        "%s records --%s %s, which is not here (a path relative to where it was trained?): the rows "
                        "that run trained on cannot be told, and are scored as new if in the file",
                        path,
                        option,
                        value,
                    )
                if not isinstance(value, str) or not value or not Path(value).is_dir():
                    continue
                folder = Path(value).resolve()
                is_run = run_file(folder, "run_config.json") or run_file(folder, "splits.json")
                if is_run and folder != run.resolve() and folder not in chain:
                    chain.append(folder)
                    todo.append(folder)
    return chain


def seen_digests(run_dirs: list[Path]) -> tuple[dict[str, set], list[Path]]:
    """{split: digests of the texts any trained run behind these folders read in that split} from their
    splits.json (and those of the runs their models started from: `started_from`), and the runs that recorded none
    (older runs, folders not written by the recipes). A set may hold both forms: 16 hex digits of the normalised
    text (`data.text_digest`) and, from runs written before them, 8 of the stripped text (`legacy_text_digest`);
    `read_rows` tests each row against both."""
    from longtail.data import TEXTS_KEY

    found: dict[str, set] = {"train": set(), "validation": set(), "test": set()}
    unchecked = []
    leaves = distinct_runs(leaf for d in run_dirs for leaf in leaf_runs(d))
    for leaf in distinct_runs(run for trained in leaves for run in (trained, *started_from(trained))):
        path = run_file(leaf, "splits.json")
        digests = read_json(path).get(TEXTS_KEY) if path else None
        if not isinstance(digests, dict):
            unchecked.append(leaf)
            continue
        for split, by_id in digests.items():
            if isinstance(by_id, dict) and split in found:
                found[split].update(by_id.values())
    return found, unchecked


def labelled_rows(
    read: Callable[[], pd.DataFrame], path: str, options: dict, label_names: list[str] | None
) -> tuple[pd.DataFrame, dict]:
    """The rows `read()` gives (the table in `path`) with a text and a label, read with `options` (`data_options`:
    the runs' merge map and taxonomy) as a recipe cleans its test split, less those whose label is not among
    `label_names`; and the counts of what was left out and why. `row_id`: each row's position in the table. The
    merge map and taxonomy load first: one named that is no file fails before the file (gigabytes) is read.
    `longtail.export` reads its labelled parity sample with it."""
    from longtail.data import DataArguments, clean_split, load_merge_map, load_taxonomy, spelling_hint

    args = DataArguments(test_file=path, **options)
    merge_map = load_merge_map(args.label_merge_map)
    taxonomy_list = load_taxonomy(args.label_taxonomy)
    taxonomy = set(taxonomy_list) if taxonomy_list is not None else None
    log: dict = {}
    raw = read()
    rows = clean_split(raw, "test", args, merge_map, taxonomy, log)
    del raw
    counts = dict(log["test"])
    counts.pop("rows_kept", None)
    if label_names is not None:
        unseen = ~rows["label"].isin(set(label_names))
        counts["excluded_unseen_labels"] = int(unseen.sum())
        if unseen.any():
            missed = sorted(rows.loc[unseen, "label"].unique())
            hint = spelling_hint(missed, label_names)
            logger.warning(
                "%s: %d rows (%d labels) the runs were not trained on are left out: %s%s",
                path,
                unseen.sum(),
                len(missed),
                missed[:10],
                f". {hint}" if hint else "",
            )
            counts["unseen_label_hint"] = hint or None
        rows = rows[~unseen]
    return rows, counts


def read_rows(path: str, options: dict, label_names: list[str] | None, keep_seen: bool, run_dirs) -> dict:
    """The file's rows to score, cleaned as a recipe cleans its test split, and the counts of what was left out."""
    from longtail.data import DIGEST_HEX, DataError, legacy_text_digest, norm_digest, read_table

    columns = [options["text_column"], options["label_column"]]  # as data_options gives them: all four set
    rows, counts = labelled_rows(lambda: read_table(path, columns=columns), path, options, label_names)
    seen, unchecked = seen_digests(run_dirs)
    # a text is seen when its normalised text's digest is a run's (case and spacing ignored, as the recipes' leak
    # guard does: a file re-saved with CRLF inside narratives), or, for runs written before those digests, its
    # stripped text's 8-digit one; the two lengths never meet, so one set holds both
    digests = rows["norm"].map(norm_digest)
    old_form = any(isinstance(d, str) and len(d) != DIGEST_HEX for found in seen.values() for d in found)
    legacy = rows["text"].map(legacy_text_digest) if old_form else None

    def in_runs(found: set) -> pd.Series:
        hit = digests.isin(found)
        return hit | legacy.isin(found) if legacy is not None else hit

    for split in ("train", "validation", "test"):
        counts[f"in_run_{split}"] = int(in_runs(seen[split]).sum())
    read_before = in_runs(seen["train"] | seen["validation"])
    counts["excluded_seen"] = 0 if keep_seen else int(read_before.sum())
    if read_before.any():
        logger.warning(
            "%s: %d rows have a text a run trained or was selected on (train %d, validation %d)%s",
            path,
            read_before.sum(),
            counts["in_run_train"],
            counts["in_run_validation"],
            ": scored anyway (--keep_seen_rows)" if keep_seen else ": left out (--keep_seen_rows keeps them)",
        )
        if not keep_seen:
            rows = rows[~read_before]
    if unchecked:
        logger.warning(
            "%d runs record no text digests (splits.json), so rows they trained on cannot be told: %s",
            len(unchecked),
            ", ".join(map(str, unchecked[:5])),
        )
    counts["rows_scored"] = len(rows)
    if rows.empty:
        dropped = {k: v for k, v in counts.items() if v and k != "rows_scored"}
        if not counts["rows_read"]:
            why = "the file has no rows"
        elif counts["excluded_seen"]:  # every row left had a text a run read
            why = (
                "every row with a text and a known label has a text a run trained or was selected on: "
                "--keep_seen_rows scores them anyway (their scores are optimistic)"
            )
        elif counts.get("excluded_unseen_labels") and label_names is not None:
            why = (
                f"the runs know {len(label_names)} labels ({', '.join(map(repr, label_names[:3]))}"
                f"{', ...' if len(label_names) > 3 else ''}): check --label_column and the labels"
            )
        else:
            why = "check --text_column / --label_column and the labels"
        raise DataError(
            f"{path}: no row left to score ({dropped}): {why}"
            + (f". {counts['unseen_label_hint']}" if counts.get("unseen_label_hint") else "")
        )
    return {
        "rows": rows.reset_index(drop=True),
        "counts": counts,
        "unchecked_runs": [str(d) for d in unchecked],
    }


def write_scored_run(folder: Path, run: Path, row_ids, y_true, probs, label_names, info: dict) -> None:
    """`folder` as `compare` reads a run: its predictions on the new rows, and the run's own validation
    predictions, labels.json and temperature.json beside them."""
    from longtail.report import SplitResult, save_predictions
    from longtail.runs import write_json

    folder.mkdir(parents=True, exist_ok=True)
    save_predictions(
        folder, SplitResult("test", y_true, probs, pd.Series(dtype=str), row_ids=row_ids), label_names
    )
    source = source_run(run)
    for name in COPIED:
        if (run / name).is_file():
            shutil.copyfile(run / name, folder / name)
        elif source is not None and (source / name).is_file():
            # an export or a merged adapter is its run served another way, and was never scored on validation: its
            # run's validation predictions let `compare` name the run validation picks (how close an export is to its
            # run: its parity.json)
            shutil.copyfile(source / name, folder / name)
            info.setdefault("copied_from_source_run", {})[name] = str(source.resolve())
    write_json(folder / "scored.json", {"run": str(run.resolve()), **info})


def data_section(
    path: str, options: dict, source: str, counts: dict, timings: dict, unchecked: list[str] = ()
) -> str:
    """score.md's first part: how the file was read, what was left out and why, and each run's scoring time."""
    left_out = [(what, counts.get(key, 0)) for key, what in LEFT_OUT]
    seen = {s: counts[f"in_run_{s}"] for s in ("train", "validation", "test")}
    kept_seen = not counts["excluded_seen"] and (seen["train"] or seen["validation"])
    notes = [
        f"Labels merged by the merge map: {counts['labels_merged']:,}" if counts.get("labels_merged") else "",
        f"Labels read in the merge map's or taxonomy's spelling: {counts['labels_respelled']:,}"
        if counts.get("labels_respelled")
        else "",
        # labels the runs know written another way (case, spacing): left out, and the log's hint said so
        f"Labels the runs were not trained on: {counts['unseen_label_hint'].rstrip('.')}"
        if counts.get("unseen_label_hint")
        else "",
    ]
    return "\n".join(
        [
            f"# Scored on {path}",
            "",
            f"Read with text column `{options['text_column']}`, label column `{options['label_column']}`, merge "
            f"map `{options['label_merge_map'] or 'none'}`, taxonomy `{options['label_taxonomy'] or 'none'}` ({source}).",
            "",
            f"{counts['rows_read']:,} rows read, **{counts['rows_scored']:,} scored**. Left out: "
            + (", ".join(f"{n:,} with {what}" for what, n in left_out if n) or "none")
            + "."
            + "".join(f" {note}." for note in notes if note),
            "",
            f"Texts also in a run's own splits (their splits.json digests): train {seen['train']:,}, validation "
            f"{seen['validation']:,}, test {seen['test']:,}"
            + (" (the train and validation ones scored: --keep_seen_rows)" if kept_seen else "")
            + "."
            + (
                f" **{len(unchecked)} runs record no text digests** (no splits.json: {', '.join(unchecked[:5])}"
                f"{', ...' if len(unchecked) > 5 else ''}): rows they trained or were selected on cannot be told, "
                "and are scored as new."
                if unchecked
                else ""
            ),
            "",
            "Scoring time (wall clock; an ensemble's is that of its mix and of members not scored as runs here): "
            + ", ".join(f"{run} {seconds:.2f} s" for run, seconds in timings.items())
            + ".",
            "",
        ]
    )


def check_servable(folder: Path) -> None:
    """A UsageError for a folder no run kind serves (an empty folder, a typo, an export's top folder), or an
    ensemble whose members (nested ones too) are gone, do not serve or lead back to it (`predict.check_members`),
    before the file is read: the file was read first with the recipes' defaults, and the error named a column."""
    from longtail.ensemble import member_walk
    from longtail.inference import is_adapter_dir, onnx_files
    from longtail.predict import ENSEMBLE_FILE, SKLEARN_FILE, check_members

    try:  # all of them before any run scores (a pass can take minutes)
        check_members(folder)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for member, chain in member_walk(folder):
        member = member if chain else folder  # the folder as given, in the message
        if any((member / name).is_file() for name in (ENSEMBLE_FILE, SKLEARN_FILE, "config.json")):
            continue
        if is_adapter_dir(member):
            continue
        variants = sorted(d.name for d in member.iterdir() if d.is_dir() and onnx_files(d))
        raise UsageError(
            f"{member} is not a finished run (no config.json, {SKLEARN_FILE}, {ENSEMBLE_FILE} or adapter)"
            + (
                f": an ONNX export; pass one of its variants, {member}/{{{','.join(variants)}}}"
                if variants
                else ""
            )
        )


def score_runs(args) -> dict:
    """Read the file once, score it with every run, compare them; returns score.json's content."""
    from longtail.calibration import load_temperature
    from longtail.inference import torch_device_problem
    from longtail.predict import describe, device_problem, score_texts
    from longtail.runs import prepare_results_dir, replace_previous_run

    if problem := torch_device_problem(args.device, here=False):  # the spelling; whether it is here: below
        raise UsageError(problem)
    runs = list(args.runs)
    reference = args.reference or runs[0]
    check_distinct(runs)
    if Path(reference).resolve() not in {Path(r).resolve() for r in runs}:
        runs.append(reference)
    for run in runs:
        if not Path(run).is_dir():
            raise UsageError(
                f"{run}: no such run folder" + (" (it is a file)" if Path(run).is_file() else "")
            )
        check_servable(Path(run))
    folders = [Path(r) for r in runs]
    # before the file is read and the first run scores: a device no run uses (TF-IDF runs alone: it was ignored
    # without a word, as `predict` once did), then one this machine lacks
    if problem := device_problem(folders, args.device) or torch_device_problem(args.device):
        raise UsageError(problem)
    # results never filed inside a run, nor in another run's files or beside a README kept with earlier scores:
    # only an earlier score is replaced
    reads = [("the run", r) for r in runs] + [("--data", args.data)]
    out = prepare_results_dir(
        args.output_dir, args.overwrite_output_dir, reads, SCORE_FILES, (SCORED_DIR,), "score", "score.json"
    )
    label_names = check_label_lists({r: label_names_of(Path(r)) for r in runs})
    given = {n: getattr(args, n) for n in ("text_column", *LABEL_OPTIONS)}
    options, source = data_options(folders, given)
    data = read_rows(args.data, options, label_names, args.keep_seen_rows, folders)
    rows = data["rows"]
    texts = rows["text"].tolist()
    serving = argparse.Namespace(
        max_length=None,
        long_text=None,
        onnx_file=None,
        backend="auto",
        batch_size=args.batch_size,
        device=args.device,
        no_progress=args.no_progress,
        scores_cache={},  # each run once: an ensemble reuses the scores of members scored as runs here
    )
    scored, timings, infos = {}, {}, {}
    # a label from the root ("/a" beside "/b/a") would make an absolute path under scored/
    labels = [label.lstrip("/") for label in run_labels(runs)]
    # ensembles last, inner ones first, so that members given as runs too are scored once (an ensemble's time is
    # then its mix's and that of the members not given; an ensemble given before one inside it took that one's
    # time, and the inner one was timed as a look-up)
    for run, label in sorted(zip(folders, labels), key=lambda pair: ensemble_depth(pair[0])):
        start = time.perf_counter()
        scores = score_texts(serving, run, texts, calibrated=False)  # as the run saved its test predictions
        timings[label] = time.perf_counter() - start
        info = dict(scores.info)
        # scored at T = 1, as the run saved them; served (and compared) at its own T
        if "members" not in info:
            info["temperature"] = load_temperature(run)
        if label_names is None:
            label_names = scores.label_names
        check_label_lists({str(runs[0]): label_names, str(run): scores.label_names})
        unseen = ~rows["label"].isin(set(label_names))
        if unseen.any():  # no run said its labels before scoring: the first one scored says
            raise CompareError(
                f"{int(unseen.sum())} rows carry labels {run} was not trained on "
                f"({sorted(rows.loc[unseen, 'label'].unique())[:5]}): give runs with a labels.json"
            )
        y_true = rows["label"].map({n: i for i, n in enumerate(label_names)}).to_numpy(dtype=np.int64)
        infos[label] = {"seconds": round(timings[label], 3), "how": describe(info), **info}
        scored[label] = (y_true, scores.probs)
        logger.info("%s: %d rows scored in %.1f s (%s)", run, len(texts), timings[label], describe(info))
    timings = {label: timings[label] for label in labels}  # in the order given
    replace_previous_run(out, args.overwrite_output_dir)  # the previous results go only now, this one ready
    for run, label in zip(folders, labels):
        y_true, probs = scored[label]
        write_scored_run(
            out / SCORED_DIR / label, run, rows["row_id"].to_numpy(), y_true, probs, label_names, infos[label]
        )
    scored_dirs = [out / SCORED_DIR / label for label in labels]
    ref_dir = scored_dirs[[f.resolve() for f in folders].index(Path(reference).resolve())]
    result = compare_runs([d for d in scored_dirs if d != ref_dir], ref_dir, "test", args.n_resamples)
    pick = result.get("validation_pick") or {}
    for row in [*result["runs"], *([pick] if pick.get("dir") else [])]:  # the run folder, not the scored copy
        row["dir"] = str(folders[scored_dirs.index(Path(row["dir"]))])
    counts = data["counts"]
    borrowed = [
        f"{label}'s are {Path(info['copied_from_source_run']['predictions_validation.npz']).name}'s, the run it serves"
        for label, info in infos.items()
        if "predictions_validation.npz" in info.get("copied_from_source_run", {})
    ]
    markdown = (
        data_section(args.data, options, source, counts, timings, data["unchecked_runs"])
        + (
            "Validation predictions: " + "; ".join(borrowed) + " (an ONNX export or a merged adapter is not "
            "scored on validation itself).\n\n"
            if borrowed
            else ""
        )
        + "\n"
        + to_markdown(result, rows_name="the scored file")
    )
    return {
        "data": str(args.data),
        "options": options,
        "options_from": source,
        "counts": counts,
        "unchecked_runs": data["unchecked_runs"],
        "runs": {label: {"dir": str(run), **infos[label]} for run, label in zip(folders, labels)},
        "compare": result,
        "markdown": markdown,
        "output_dir": str(out),
    }


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    logging.getLogger("longtail.data").setLevel(logging.INFO)
    args = parse_args(argv)
    try:  # a mistake in the runs, the file or the options is one line, not a traceback
        result = score_runs(args)
    except (ValueError, FileNotFoundError) as err:  # UsageError, DataError, CompareError included
        raise usage_exit(str(err)) from None
    from longtail.runs import write_report

    out = Path(result.pop("output_dir"))
    markdown = result.pop("markdown")
    write_report(out, "score", markdown, result, argv)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
