"""Predict labels for a CSV, JSON or JSONL file of texts with any finished run: a Transformers classifier folder (fine-tuned,
LoRA, probe) or its ONNX export, a TF-IDF run (`model.joblib`) or an ensemble folder (`ensemble.json`).

    python -m longtail.predict --model_dir outputs/demo/full_ft_encoder --input texts.csv --output preds.csv
    python -m longtail.predict --model_dir outputs/demo/full_ft_encoder/onnx/optimized --input texts.jsonl \\
        --output preds.jsonl --top_k 3 --min_confidence 0.6
    python -m longtail.predict --model_dir outputs/ensemble --input new_complaints.csv --output preds.csv

Probabilities are softmax(logits / T) with the model folder's `temperature.json` (T = 1 without one). An
ensemble scores each member as that member's run saved its predictions and mixes them with the setting chosen
on validation (`longtail.ensemble.apply_mix`), so on the run's own test rows it returns the run's test
predictions.
Rows are batched by length (dynamic padding) and written back in input order. Texts are read the way the
run was trained (its max_length, and for a probe trained with `--long_text windows` the whole text in
windows whose logits are averaged), unless --max_length / --long_text say otherwise. A row with an empty or
missing text gets no prediction: it stays in the output with `error` set, and is counted and listed (a number is
a text: "123").
The backend follows the folder (an .onnx file -> ONNX Runtime, else PyTorch) unless --backend says.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.calibration import apply_temperature, load_temperature, log_probs
from longtail.cli import UsageError, usage_exit
from longtail.inference import (
    LONG_TEXT,
    OrtBackend,
    TorchBackend,
    check_max_length,
    encode_batches,
    is_adapter_dir,
    load_model_dir,
    load_tokenizer_dir,
    onnx_files,
    serving_defaults,
    text_windows,
    torch_device_problem,
    warn_if_quantized_export,
    warn_if_unvetted_export,
)
from longtail.metrics import softmax

logger = logging.getLogger("longtail.predict")
# the CFPB export's narrative column, as the CSV download and the API's JSON name it
TEXT_COLUMN_GUESSES = (
    "text",
    "Consumer complaint narrative",
    "Consumer Complaint",
    "complaint_what_happened",
    "narrative",
)
SHOW_ROWS = 20  # bad row numbers listed in the log
ENSEMBLE_FILE = "ensemble.json"  # longtail.ensemble's folder
SKLEARN_FILE = "model.joblib"  # baseline_tfidf's folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model_dir",
        required=True,
        help="a finished run folder (Transformers classifier, ONNX export, TF-IDF run or ensemble)",
    )
    p.add_argument(
        "--input",
        required=True,
        help=".csv, .json or .jsonl file of texts (or one compressed: .gz, .bz2, .xz, .zip)",
    )
    p.add_argument("--output", required=True, help=".csv or .jsonl file to write")
    p.add_argument(
        "--text_column", default=None, help=f"text column (default: the first of {TEXT_COLUMN_GUESSES})"
    )
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument(
        "--onnx_file", default=None, help="which .onnx file of the folder (default: the only/first one)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="where a Transformers model runs: cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)",
    )
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="tokens per text (or per window); default: the run's max_length (run_config.json), else 512",
    )
    p.add_argument(
        "--long_text",
        choices=LONG_TEXT,
        default=None,
        help="truncate, or windows: score the whole text in max_length windows and average their logits "
        "(token-weighted; exact for a probe trained with --long_text windows); default: the run's setting",
    )
    p.add_argument("--top_k", type=int, default=3)
    p.add_argument(
        "--min_confidence",
        type=float,
        default=None,
        help="add a `route` column: 'auto' when the top probability reaches it, else 'review'",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("top_k", "batch_size", "max_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        p.error(f"--min_confidence must be in [0, 1], got {args.min_confidence}")
    from longtail.data import DataError, data_format

    try:  # the format inside a compressed input (x.csv.gz, complaints.csv.zip), which is read through
        input_format = data_format(args.input)[0]
    except DataError as err:  # a .zip of several files
        p.error(str(err))
    if input_format not in (".csv", ".json", ".jsonl"):  # .json: a list of objects, e.g. the CFPB API's
        if Path(args.input).is_dir():
            p.error(
                f"--input {args.input} is a folder, not a data file: pass the .csv, .json or .jsonl file in it"
            )
        if not Path(args.input).is_file():  # a missing complaints.zip has no format to read from inside it
            p.error(f"--input {args.input}: no such file")
        p.error(
            "--input must be a .csv, .json or .jsonl file (or one compressed: .gz, .bz2, .xz, .zip), got "
            f"{args.input}"
        )
    if Path(args.output).suffix.lower() not in (".csv", ".jsonl"):
        p.error(f"--output must be a .csv or .jsonl file, got {args.output}")
    output, source = Path(args.output), Path(args.input)
    # resolve() misses a hard link and another case on a case-insensitive disk; samefile asks the file system
    if output.resolve() == source.resolve() or (
        output.is_file() and source.is_file() and output.samefile(source)
    ):
        # --overwrite would replace the texts with their predictions (which do not repeat the texts)
        p.error(f"--output {args.output} is the --input file: choose another --output")
    if Path(args.output).is_dir():
        p.error(f"--output {args.output} is a folder: name a .csv or .jsonl file")
    blocker = next((d for d in output.parents if d.exists()), None)
    if blocker is not None and not blocker.is_dir():  # a FileExistsError traceback once every row was scored
        p.error(f"--output {args.output}: {blocker} is a file, not a folder")
    # None until here: a TF-IDF run refuses a device asked for, not the default (`device_problem`)
    args.device_given = args.device is not None
    if args.device is None:
        args.device = "cuda" if _cuda() else "cpu"
    if problem := torch_device_problem(args.device, here=False):  # whether it is here: by backend, later
        p.error(problem)
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def read_texts(path: str, text_column: str | None) -> tuple[pd.DataFrame, str]:
    from longtail.data import nested_values_error, read_table, refuse_repeated, similar_columns

    def text_only(names: list[str]) -> list[str]:
        """The one column scored (the output holds `row` and the predictions, none of the input's columns). A file
        with none of the guesses, or not --text_column, is read for its columns alone (a .csv's header, a
        .parquet's schema), which the errors below list."""
        found = text_column or next((c for c in TEXT_COLUMN_GUESSES if c in names), None)
        return [found] if found else list(TEXT_COLUMN_GUESSES)

    df = read_table(path, columns=text_only)
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMN_GUESSES if c in df.columns), None)
        if text_column is None:
            close = list(
                dict.fromkeys(c for guess in TEXT_COLUMN_GUESSES for c in similar_columns(guess, df.columns))
            )
            raise ValueError(
                f"{path}: no text column found; pass --text_column (columns: {list(df.columns)})"
                + (f". Did you mean {' / '.join(map(repr, close))}?" if close else "")
            )
    elif text_column not in df.columns:
        close = similar_columns(text_column, df.columns)
        raise ValueError(
            f"{path} has no column '{text_column}'; columns: {list(df.columns)}"
            + (f". Did you mean {' / '.join(map(repr, close))}?" if close else "")
        )
    refuse_repeated(df, [text_column], path)
    if err := nested_values_error(df[text_column], text_column, path):  # not an "empty or missing" text
        raise err
    return df, text_column


def bad_rows(texts: pd.Series) -> np.ndarray:
    """Positions of rows without a usable text (missing, NaN, or only whitespace). A number or boolean (a JSON
    `"text": 123`) is the text "123", as the recipes read it, not a missing one."""
    ok = texts.map(lambda t: pd.api.types.is_scalar(t) and not pd.isna(t) and bool(str(t).strip()))
    return np.flatnonzero(~ok.to_numpy(dtype=bool))


def load_backend(args, folder: Path):
    """(backend, tokenizer, id2label, temperature) of a Transformers folder or its ONNX export."""
    if args.onnx_file and args.backend == "torch":
        raise UsageError(
            f"--onnx_file {args.onnx_file} names an ONNX model, which --backend torch does not read"
        )
    # --onnx_file asks for ONNX Runtime: a folder without one said nothing and scored with PyTorch
    use_onnx = args.backend == "onnx" or (args.backend == "auto" and (onnx_files(folder) or args.onnx_file))
    if not use_onnx and onnx_files(folder) and not any(folder.glob("*.safetensors")):
        # an export folder has no PyTorch weights: Transformers' OSError was a traceback
        raise UsageError(
            f"--backend torch: {folder} is an ONNX export, with no PyTorch weights; serve it with --backend "
            "onnx (or auto), or pass the run folder it was exported from"
        )
    if use_onnx:
        backend = OrtBackend(folder, file_name=args.onnx_file, device=args.device)
        warn_if_quantized_export(folder)  # a Transformers folder warns in load_model_dir
        warn_if_unvetted_export(folder, backend.file_name)
        return backend, load_tokenizer_dir(folder), backend.config.id2label, load_temperature(folder)
    if problem := torch_device_problem(args.device):  # (ONNX Runtime checks its own provider)
        raise UsageError(problem)
    model, tokenizer, resolved = load_model_dir(folder, device=args.device)
    # the temperature is fitted on the trained run: look in the given folder, then the resolved one
    temperature = (
        load_temperature(folder) if (folder / "temperature.json").is_file() else load_temperature(resolved)
    )
    return TorchBackend(model, args.device), tokenizer, model.config.id2label, temperature


def run_kind(folder: Path) -> str:
    """`ensemble` (longtail.ensemble's folder), `sklearn` (baseline_tfidf's model.joblib) or `transformers`."""
    if (folder / ENSEMBLE_FILE).is_file():
        return "ensemble"
    if (folder / SKLEARN_FILE).is_file():
        return "sklearn"
    return "transformers"


def not_transformers(folder: Path) -> str | None:
    """What a run folder is when it holds no Transformers model ("a scikit-learn TF-IDF run (model.joblib)",
    "an ensemble (ensemble.json)"), for the errors of the tools that need one; None otherwise."""
    return {
        "sklearn": f"a scikit-learn TF-IDF run ({SKLEARN_FILE})",
        "ensemble": f"an ensemble ({ENSEMBLE_FILE})",
    }.get(run_kind(Path(folder)))


@dataclass
class Scores:
    probs: np.ndarray  # one row per text, columns in label_names order
    label_names: list[str]
    info: dict  # how they were computed (backend, temperature, reading of long texts, members)


def score_texts(args, folder: Path, texts: list[str], calibrated: bool = True) -> Scores:
    """Class probabilities of `texts` from a run folder of any kind. calibrated: softmax(logits / T) with the
    run's temperature.json; otherwise T = 1, the probabilities the run saved in predictions_<split>.npz (what an
    ensemble mixed). An ensemble's output is its calibrated mix either way."""
    # longtail.score scores several runs on one file: a run that is also an ensemble's member is scored once
    cache = getattr(args, "scores_cache", None)
    key = (Path(folder).resolve(), calibrated)
    if cache is not None and key in cache:
        return cache[key]
    scores = _score_texts(args, folder, texts, calibrated)
    if cache is not None:
        cache[key] = scores
    return scores


def _score_texts(args, folder: Path, texts: list[str], calibrated: bool) -> Scores:
    kind = run_kind(folder)
    if kind != "transformers":
        asked = [f"--{k}" for k in ("max_length", "long_text", "onnx_file") if getattr(args, k) is not None]
        asked += ["--backend onnx"] * (args.backend == "onnx")
        if asked:
            raise ValueError(
                f"{' and '.join(asked)} {'sets' if len(asked) == 1 else 'set'} how a Transformers model reads text; {folder} is "
                + ("an ensemble, whose members are served as they were trained" if kind == "ensemble"
                   else "a scikit-learn run (TF-IDF), which reads the whole text")
            )  # fmt: skip
    if kind == "ensemble":
        return ensemble_scores(args, folder, texts)
    if kind == "sklearn":
        return sklearn_scores(folder, texts, calibrated)
    return transformer_scores(args, folder, texts, calibrated)


def transformer_scores(args, folder: Path, texts: list[str], calibrated: bool) -> Scores:
    from tqdm.auto import tqdm

    backend, tokenizer, id2label, temperature = load_backend(args, folder)
    serving = serving_defaults(folder)
    max_length = args.max_length or serving["max_length"]
    config = backend.config if isinstance(backend, OrtBackend) else backend.model.config
    check_max_length(config, max_length, str(folder))  # else a shape error from inside the model
    long_text = args.long_text or serving["long_text"]
    if long_text == "windows":
        windows = text_windows(tokenizer, texts, max_length)
        batches = windows.batches(tokenizer, args.batch_size)
    else:
        batches = encode_batches(tokenizer, texts, args.batch_size, max_length)
    logits = np.zeros((sum(len(b.rows) for b in batches), len(id2label)))
    for batch in tqdm(batches, desc=f"Predicting ({folder.name})", unit="batch", disable=args.no_progress):
        logits[batch.rows] = backend.logits(batch)
    if long_text == "windows":
        logits = windows.per_row(logits)
    temperature = temperature if calibrated else 1.0
    info = {
        "backend": backend.name,
        "temperature": temperature,
        "max_length": max_length,
        "long_text": long_text,
        "windows": len(windows.input_ids) if long_text == "windows" else None,
        "padded_to_real_tokens": round(batches.padding_ratio, 3) if texts else None,
    }
    label_names = [id2label[i] for i in range(len(id2label))]
    return Scores(softmax(logits / temperature), label_names, info)


def sklearn_scores(folder: Path, texts: list[str], calibrated: bool) -> Scores:
    """A scikit-learn pipeline saved with joblib (a pickle: load only folders you trust, like any checkpoint
    that is not safetensors)."""
    import joblib

    labels = folder / "labels.json"
    if not labels.is_file():
        raise ValueError(f"{folder} has {SKLEARN_FILE} but no labels.json: not a finished longtail run")
    id2label = json.loads(labels.read_text("utf-8"))["id2label"]
    label_names = [id2label[str(i)] for i in range(len(id2label))]
    pipeline = joblib.load(folder / SKLEARN_FILE)
    probs = np.zeros((len(texts), len(label_names)))
    if texts:  # columns follow the classes the pipeline saw; a class it never saw keeps probability 0
        probs[:, np.asarray(pipeline.classes_, dtype=int)] = pipeline.predict_proba(texts)
    temperature = load_temperature(folder) if calibrated else 1.0
    if temperature != 1.0:
        probs = apply_temperature(log_probs(probs), temperature)
    return Scores(probs, label_names, {"backend": "scikit-learn", "temperature": temperature})


def serving_entry(folder: Path) -> dict:
    """An ensemble folder's ensemble.json `serving` entry: what `apply_mix` needs."""
    try:
        record = json.loads((folder / ENSEMBLE_FILE).read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / ENSEMBLE_FILE} is not valid JSON ({err})") from None
    # none: an older ensemble's; a file or entry that is no object: edited by hand
    serving = record.get("serving") if isinstance(record, dict) else record
    if not isinstance(serving, dict):
        why = "it predates serving" if serving is None else f"it holds a {type(serving).__name__}"
        raise ValueError(
            f"{folder / ENSEMBLE_FILE} has no 'serving' entry ({why}): rerun `python -m longtail.ensemble` on the "
            "same member runs (seconds) to serve and score it"
        )
    return serving


def check_members(folder: Path) -> None:
    """Every folder an ensemble leads to (nested ensembles' members too) is a folder, every ensemble among them
    serves, and none leads back to an ensemble on the way (`ensemble.member_walk`): checked before the input is
    read and any member scores (a pass can take minutes). A run passes."""
    from longtail.ensemble import member_walk

    for member, chain in member_walk(folder):
        if chain and not member.is_dir():
            raise ValueError(
                f"ensemble member {member} (listed in {chain[-1] / ENSEMBLE_FILE}) is not a folder"
            )
        if run_kind(member) == "ensemble":
            serving_entry(member)


def check_model_dir(folder: Path) -> None:
    """A --model_dir with none of the files of a run predict serves (a data or comparison folder, a run's parent
    folder) is refused before the input is read, saying what it looks for: it was found only once the whole input
    had been read, and the error named the Transformers classifier alone."""
    if not folder.is_dir() or run_kind(folder) != "transformers" or is_adapter_dir(folder):
        return  # a missing folder, another run or an adapter: their own errors, when scored
    if (folder / "config.json").is_file() or any(d.is_dir() and onnx_files(d) for d in folder.iterdir()):
        return  # a classifier, or an export's top folder (whose error names its variants)
    raise ValueError(
        f"{folder} has no config.json: not a trained classifier folder, nor a TF-IDF run ({SKLEARN_FILE}) or an "
        f"ensemble ({ENSEMBLE_FILE}), the other runs predict serves"
    )


def device_problem(folders, device: str) -> str | None:
    """Why an explicit --device other than cpu does not fit the run folder(s) served (`predict`'s one, `score`'s
    several): a TF-IDF run, or an ensemble of TF-IDF runs alone, runs on the CPU (scikit-learn), and the device was
    ignored without a word. None when some Transformers model is served (an ensemble's or another run's)."""
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    if device == "cpu" or not folders or not all(f.is_dir() for f in folders):
        return None
    from longtail.ensemble import member_walk

    kinds = {run_kind(member) for folder in folders for member, _ in member_walk(folder)} - {"ensemble"}
    if kinds != {"sklearn"}:
        return None
    if len(folders) > 1:
        return (
            f"--device {device} sets where a Transformers model runs; every run given "
            f"({', '.join(map(str, folders))}) is a scikit-learn run (TF-IDF) or an ensemble of them, which run on "
            "the CPU"
        )
    what = (
        "a scikit-learn run (TF-IDF)"
        if run_kind(folders[0]) == "sklearn"
        else "an ensemble of scikit-learn runs (TF-IDF) alone"
    )
    return f"--device {device} sets where a Transformers model runs; {folders[0]} is {what}, which runs on the CPU"


def ensemble_scores(args, folder: Path, texts: list[str]) -> Scores:
    from longtail.ensemble import apply_mix

    spec = serving_entry(folder)
    check_members(folder)
    member_probs, members = [], []
    for member, temperature in zip(map(Path, spec["members"]), spec["temperatures"], strict=True):
        scores = score_texts(args, member, texts, calibrated=False)
        if scores.label_names != spec["label_names"]:
            raise ValueError(
                f"ensemble member {member} now has other labels than when the ensemble was built"
            )
        member_probs.append(scores.probs)
        # the member's temperature is the ensemble's own (apply_mix), not its run folder's nor 1
        members.append({"run": str(member), **scores.info, "temperature": temperature})
    probs = apply_mix(member_probs, spec) if texts else np.zeros((0, len(spec["label_names"])))
    info = {
        "backend": "ensemble (" + ", ".join(m["backend"] for m in members) + ")",
        "temperature": spec["mix_temperature"],
        "members": members,
    }
    return Scores(probs, list(spec["label_names"]), info)


def predict_frame(args, df: pd.DataFrame, text_column: str) -> tuple[pd.DataFrame, dict]:
    texts = df[text_column]
    bad = bad_rows(texts)
    good = np.setdiff1d(np.arange(len(df)), bad)
    good_texts = texts.iloc[good].astype(str).str.strip().tolist()  # as the recipes read them
    scores = score_texts(args, Path(args.model_dir), good_texts)
    probs, label_names = scores.probs, scores.label_names
    k = min(args.top_k, len(label_names))
    if k < args.top_k:
        logger.info("--top_k %d: the model has %d classes, so %d label columns", args.top_k, k, k)

    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]

    def column(values, missing, dtype=None) -> pd.Series:
        """`values` at the scored rows, `missing` at the others."""
        series = pd.Series([missing] * len(df), dtype=dtype)
        series.iloc[good] = values
        return series

    # every column built first, the frame made once: inserted one by one, a --top_k of 50 or more flooded stderr
    # with pandas' "DataFrame is highly fragmented" PerformanceWarning
    labels = [column([label_names[int(i)] for i in top[:, j]], None, object) for j in range(k)]
    top_probs = [column(probs[np.arange(len(good)), top[:, j]], np.nan, float) for j in range(k)]
    columns = {"row": np.arange(len(df)), "label": labels[0], "confidence": top_probs[0]}
    for j in range(k):
        columns[f"label_{j + 1}"], columns[f"prob_{j + 1}"] = labels[j], top_probs[j]
    if args.min_confidence is not None:
        route = np.where(top_probs[0] >= args.min_confidence, "auto", "review")
        route[bad] = "review"
        columns["route"] = route
    error = np.full(len(df), "", dtype=object)
    error[bad] = "empty or missing text"
    columns["error"] = error
    out = pd.DataFrame(columns)
    summary = {
        "rows": len(df),
        "predicted": len(good),
        "bad_rows": len(bad),
        "bad_row_numbers": bad.tolist(),
        **scores.info,
    }
    return out, summary


def describe(info: dict) -> str:
    """One line on how a run scored the texts, for the log."""
    if "members" in info:
        return f"ensemble of {len(info['members'])}: " + "; ".join(
            f"{Path(m['run']).name}: {describe(m)}" for m in info["members"]
        )
    text = f"{info['backend']}, temperature {info['temperature']:.3f}"
    if "max_length" in info:
        reading = "truncate" if info["long_text"] == "truncate" else f"{info['windows']} windows"
        text += f", max_length {info['max_length']}, {reading}, padded/real tokens {info['padded_to_real_tokens']}"
    return text


def write_frame(df: pd.DataFrame, path: str) -> None:
    """Write `df` to `path` in full, then rename it into place: an interrupted or failed write (a full disk, a
    Ctrl-C) leaves an earlier file at `path` as it was (--overwrite once lost it) and no temporary file."""
    path = Path(path)
    # beside `path` (a rename within one file system), under a name of this call's own, with its suffix: pandas
    # infers the format and compression from it
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        if path.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    args = parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        raise usage_exit(f"{args.output} exists; pass --overwrite to replace it")
    try:  # a user's mistake (input file, column, model folder, window length) is one line, not a traceback
        check_model_dir(Path(args.model_dir))  # before the input is read
        check_members(Path(args.model_dir))
        if args.device_given and (problem := device_problem(Path(args.model_dir), args.device)):
            raise ValueError(problem)
        df, text_column = read_texts(args.input, args.text_column)
        out, summary = predict_frame(args, df, text_column)
    except (ValueError, FileNotFoundError) as err:  # DataError included; a missing folder or adapter base
        raise usage_exit(str(err)) from None
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_frame(out, args.output)
    if summary["bad_rows"]:
        shown = ", ".join(map(str, summary["bad_row_numbers"][:SHOW_ROWS]))
        more = " ..." if summary["bad_rows"] > SHOW_ROWS else ""
        logger.warning(
            "%d of %d rows have an empty or missing '%s' and got no prediction (rows %s%s; 0-based, kept in "
            "the output with `error` set)",
            summary["bad_rows"],
            summary["rows"],
            text_column,
            shown,
            more,
        )
    logger.info("%d rows predicted (%s) -> %s", summary["predicted"], describe(summary), args.output)
    print(json.dumps({k: v for k, v in summary.items() if k != "bad_row_numbers"}))
    return summary


def console_main() -> None:
    """The `longtail-predict` console script: its wrapper exits with what this returns, and main's summary dict
    made it print the dict to stderr and exit with status 1 after every successful run."""
    main()


if __name__ == "__main__":
    main(sys.argv[1:])
