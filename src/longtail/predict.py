"""Predict labels for a CSV/JSONL of texts with a trained classifier folder or its ONNX export.

    python -m longtail.predict --model_dir outputs/demo/full_ft_encoder --input texts.csv --output preds.csv
    python -m longtail.predict --model_dir outputs/demo/full_ft_encoder/onnx/int8 --input texts.jsonl \
        --output preds.jsonl --top_k 3 --min_confidence 0.6

Probabilities are softmax(logits / T) with the model folder's `temperature.json` (T = 1 without one).
Rows are batched by length (dynamic padding) and written back in input order. Texts are read the way the
run was trained (its max_length, and for a probe trained with `--long_text windows` the whole text in
windows whose logits are averaged), unless --max_length / --long_text say otherwise. A row with an empty or
missing text gets no prediction: it stays in the output with `error` set, and is counted and listed.
The backend follows the folder (an .onnx file -> ONNX Runtime, else PyTorch) unless --backend says.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.calibration import load_temperature
from longtail.inference import (
    LONG_TEXT,
    OrtBackend,
    TorchBackend,
    encode_batches,
    load_model_dir,
    load_tokenizer_dir,
    onnx_files,
    serving_defaults,
    text_windows,
)
from longtail.metrics import softmax

logger = logging.getLogger("longtail.predict")
TEXT_COLUMN_GUESSES = ("text", "Consumer complaint narrative", "Consumer Complaint", "narrative")
SHOW_ROWS = 20  # bad row numbers listed in the log


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="trained classifier folder, or an ONNX export folder")
    p.add_argument("--input", required=True, help=".csv or .jsonl file of texts")
    p.add_argument("--output", required=True, help=".csv or .jsonl file to write")
    p.add_argument(
        "--text_column", default=None, help=f"text column (default: the first of {TEXT_COLUMN_GUESSES})"
    )
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument(
        "--onnx_file", default=None, help="which .onnx file of the folder (default: the only/first one)"
    )
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
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
    for name in ("input", "output"):
        if Path(getattr(args, name)).suffix.lower() not in (".csv", ".jsonl"):
            p.error(f"--{name} must be a .csv or .jsonl file, got {getattr(args, name)}")
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def read_texts(path: str, text_column: str | None) -> tuple[pd.DataFrame, str]:
    from longtail.data import read_table

    df = read_table(path)
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMN_GUESSES if c in df.columns), None)
        if text_column is None:
            raise ValueError(
                f"{path}: no text column found; pass --text_column (columns: {list(df.columns)})"
            )
    elif text_column not in df.columns:
        raise ValueError(f"{path} has no column '{text_column}'; columns: {list(df.columns)}")
    return df, text_column


def bad_rows(texts: pd.Series) -> np.ndarray:
    """Positions of rows without a usable text (missing, not a string, or only whitespace)."""
    ok = texts.map(lambda t: isinstance(t, str) and bool(t.strip()))
    return np.flatnonzero(~ok.to_numpy(dtype=bool))


def load_backend(args):
    """(backend, tokenizer, id2label, temperature)."""
    folder = Path(args.model_dir)
    use_onnx = args.backend == "onnx" or (args.backend == "auto" and onnx_files(folder))
    if use_onnx:
        backend = OrtBackend(folder, file_name=args.onnx_file, device=args.device)
        return backend, load_tokenizer_dir(folder), backend.config.id2label, load_temperature(folder)
    model, tokenizer, resolved = load_model_dir(folder, device=args.device)
    # the temperature is fitted on the trained run: look in the given folder, then the resolved one
    temperature = (
        load_temperature(folder) if (folder / "temperature.json").is_file() else load_temperature(resolved)
    )
    return TorchBackend(model, args.device), tokenizer, model.config.id2label, temperature


def predict_frame(args, df: pd.DataFrame, text_column: str) -> tuple[pd.DataFrame, dict]:
    from tqdm.auto import tqdm

    backend, tokenizer, id2label, temperature = load_backend(args)
    texts = df[text_column]
    bad = bad_rows(texts)
    good = np.setdiff1d(np.arange(len(df)), bad)
    good_texts = texts.iloc[good].astype(str).tolist()
    serving = serving_defaults(args.model_dir)
    max_length = args.max_length or serving["max_length"]
    long_text = args.long_text or serving["long_text"]
    if long_text == "windows":
        windows = text_windows(tokenizer, good_texts, max_length)
        batches = windows.batches(tokenizer, args.batch_size)
    else:
        batches = encode_batches(tokenizer, good_texts, args.batch_size, max_length)
    logits = np.zeros((sum(len(b.rows) for b in batches), len(id2label)))
    for batch in tqdm(batches, desc="Predicting", unit="batch", disable=args.no_progress):
        logits[batch.rows] = backend.logits(batch)
    if long_text == "windows":
        logits = windows.per_row(logits)
    probs = softmax(logits / temperature)
    k = min(args.top_k, len(id2label))

    out = pd.DataFrame({"row": np.arange(len(df))})
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    label = pd.Series([None] * len(df), dtype=object)
    confidence = pd.Series([np.nan] * len(df))
    label.iloc[good] = [id2label[int(i)] for i in top[:, 0]]
    confidence.iloc[good] = probs[np.arange(len(good)), top[:, 0]]
    out["label"], out["confidence"] = label, confidence
    for j in range(k):
        lab = pd.Series([None] * len(df), dtype=object)
        prob = pd.Series([np.nan] * len(df))
        lab.iloc[good] = [id2label[int(i)] for i in top[:, j]]
        prob.iloc[good] = probs[np.arange(len(good)), top[:, j]]
        out[f"label_{j + 1}"], out[f"prob_{j + 1}"] = lab, prob
    if args.min_confidence is not None:
        out["route"] = np.where(out["confidence"] >= args.min_confidence, "auto", "review")
        out.loc[bad, "route"] = "review"
    error = pd.Series([""] * len(df), dtype=object)
    error.iloc[bad] = "empty or missing text"
    out["error"] = error
    summary = {
        "rows": len(df),
        "predicted": len(good),
        "bad_rows": len(bad),
        "bad_row_numbers": bad.tolist(),
        "temperature": temperature,
        "backend": backend.name,
        "max_length": max_length,
        "long_text": long_text,
        "windows": len(windows.input_ids) if long_text == "windows" else None,
        "padded_to_real_tokens": round(batches.padding_ratio, 3) if len(good) else None,
    }
    return out, summary


def write_frame(df: pd.DataFrame, path: str) -> None:
    if Path(path).suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True, force_ascii=False)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    args = parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        raise SystemExit(f"error: {args.output} exists; pass --overwrite to replace it")
    try:  # a user's mistake (input file, column, model folder, window length) is one line, not a traceback
        df, text_column = read_texts(args.input, args.text_column)
        out, summary = predict_frame(args, df, text_column)
    except ValueError as err:  # DataError included
        raise SystemExit(f"predict: error: {err}") from None
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
    logger.info(
        "%d rows predicted (%s, temperature %.3f, max_length %d, %s, padded/real tokens %s) -> %s",
        summary["predicted"],
        summary["backend"],
        summary["temperature"],
        summary["max_length"],
        summary["long_text"] if summary["long_text"] == "truncate" else f"{summary['windows']} windows",
        summary["padded_to_real_tokens"],
        args.output,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "bad_row_numbers"}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
