"""Set aside a held-out test file that no recipe ever reads while choosing anything.

    python -m longtail.holdout ../shared/data/cfpb/complaints_dev.csv --output_dir outputs/cfpb_study/data \
        [--fraction 0.15] [--seed 7] [--overwrite]

Writes `train.csv` (the rest; recipes carve their validation split from it) and `heldout.csv` (a seeded
uniform sample of the rows, `DataFrame.sample(frac, random_state)`), with the input's columns unchanged, and
`holdout.json` (source, sizes, seed). The recipes take them as `--train_file` / `--test_file`; their data
pipeline then drops any training row whose normalised text also appears in the held-out file, and says how
many. Rows are sampled before any cleaning so that the held-out file looks like new data: rows that
the recipes will drop (no narrative, label outside the taxonomy) are dropped and counted there too.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pandas as pd

from longtail.cli import seed_problem, usage_exit
from longtail.data import DataError, read_table

OUTPUT_FILES = ("train.csv", "heldout.csv", "holdout.json")


# Files `runs.RUN_FILES` lists that a data folder holds as well (notes on the data, ids for --split_indices):
# they alone do not make a folder a run's
DATA_FOLDER_FILES = ("README.md", "splits.json")


def run_contents(folder: Path) -> list[str]:
    """What makes `folder` a run's, an ensemble's, a comparison's or a model's (what `runs.previous_run` finds:
    result and prediction files, model files, weights, checkpoints, exports; and ONNX exports at the top): the
    names found, [] for a data folder (its own train.csv / heldout.csv / holdout.json, README.md, splits.json).
    The split's files written there would sit among the run's results, which they did not make (an overwrite of
    the run keeps them, as files not ours)."""
    from longtail.runs import previous_run

    if not folder.is_dir():
        return []
    files, folders = previous_run(folder)
    found = {f.name for f in files if f.name not in DATA_FOLDER_FILES}
    found |= {f.name for f in folder.glob("*.onnx") if f.is_file()}
    found |= {d.name + "/" for d in folders}
    return sorted(found)


def rows_seen_before(out: Path, heldout: pd.DataFrame) -> int | None:
    """How many of the new held-out rows the earlier split's train.csv in `out` holds, each row compared whole, as
    the CSV holds it (None: there is no earlier train.csv, or it has other columns: another file's split)."""
    earlier = out / "train.csv"
    if not earlier.is_file():
        return None
    text = heldout.to_csv(index=False)  # as heldout.csv will hold it
    if (out / "heldout.csv").is_file() and (out / "heldout.csv").read_bytes() == text.encode("utf-8"):
        return 0  # the same split again (`make cfpb-study`): the earlier train.csv, maybe GBs, is not read
    options = dict(dtype=str, keep_default_na=False)
    try:  # only to warn: an empty or damaged earlier file is no earlier split, not a traceback
        previous = pd.read_csv(earlier, **options)
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    new = pd.read_csv(io.StringIO(text), **options)
    if list(previous.columns) != list(new.columns):
        return None
    seen = set(pd.util.hash_pandas_object(previous, index=False))
    return int(pd.util.hash_pandas_object(new, index=False).isin(seen).sum())


def split_holdout(path: str, fraction: float, seed: int):
    frame = read_table(path)
    if len(frame) < 2:
        raise DataError(f"{path} has {len(frame)} row(s): nothing to hold out.")
    heldout = frame.sample(frac=fraction, random_state=seed)
    if len(heldout) in (0, len(frame)):
        raise DataError(f"--fraction {fraction} of {len(frame)} rows leaves an empty train or held-out file.")
    return frame.drop(index=heldout.index), heldout


def main(argv: list[str] | None = None) -> dict:
    # no prog: argparse names the tool by sys.argv[0] as usage_exit does, so its errors and ours start alike
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_file", help="csv / json / jsonl / parquet with every column of the source")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fraction", type=float, default=0.15, help="share of rows held out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier split in output_dir")
    args = parser.parse_args(argv)
    if not 0 < args.fraction < 1:
        parser.error(f"--fraction must be in (0, 1), got {args.fraction}")
    if (problem := seed_problem("seed", args.seed)) is not None:
        parser.error(problem)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        parser.error(f"--output_dir {out} is a file, not a folder")
    if Path(args.data_file).resolve() in {(out / name).resolve() for name in OUTPUT_FILES}:
        # --overwrite would replace the source with its own training share, the held-out rows gone from it
        parser.error(
            f"{args.data_file} is the input and one of the files written to {out}: choose another --output_dir"
        )
    if found := run_contents(out):
        # even with --overwrite: it replaces an earlier split, never a run's files, and a run is no place for data
        raise usage_exit(
            f"--output_dir {out} is a run or model folder (it holds {', '.join(found[:5])}"
            f"{', ...' if len(found) > 5 else ''}): the split's files would be mixed into it; choose another "
            "--output_dir, e.g. a data/ folder of its own"
        )
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        # runs trained on the old split would silently be compared with test rows they trained on
        raise usage_exit(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace.")
    try:
        train, heldout = split_holdout(args.data_file, args.fraction, args.seed)
    except DataError as err:
        raise usage_exit(str(err)) from None
    # --overwrite with another seed, fraction or source: runs trained on the earlier train.csv hold rows of the
    # new held-out file, and would be scored on them without a word (the split's reason for being)
    seen = rows_seen_before(out, heldout) if existing else None
    if seen:
        print(
            f"holdout: warning: {seen} of the {len(heldout)} new held-out rows are in the train.csv this replaces: "
            "runs trained on it would be scored on rows they trained on; retrain them on the new train.csv",
            file=sys.stderr,
        )
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.csv", index=False)
    heldout.to_csv(out / "heldout.csv", index=False)
    record = {
        "source": str(args.data_file),
        "fraction": args.fraction,
        "seed": args.seed,
        "rows": {"train": len(train), "heldout": len(heldout)},
    }
    (out / "holdout.json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    print(
        f"holdout: {len(train)} train rows -> {out / 'train.csv'}, {len(heldout)} held out -> {out / 'heldout.csv'}"
    )
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
