"""Data: load a source, clean and merge labels, split without leakage, tier and slice.

The pipeline, in order (each step logs what it drops):
1. load each split from the Hub, local files, or the built-in synthetic demo set;
2. drop rows with an empty text or label; strip whitespace;
3. read a label that is a merge-map or taxonomy label in another case or spacing as that label (counted), fold
   old label wordings into new ones (CFPB's April 2017 rewording), then keep only labels of the taxonomy when one
   is given;
4. drop from the training pool any row whose normalised text also appears in an evaluation split;
5. drop classes with fewer than `min_class_count` rows in the training pool;
6. carve a stratified, duplicate-aware validation split when the source has none;
7. cap rows (`max_*_samples`) and build the label space from the final training rows; evaluation rows
   whose label the model never saw are excluded (and counted).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import gzip
import hashlib
import io
import json
import logging
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.cli import UsageError

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "determined-ai/consumer_complaints_medium"
SYNTHETIC_DATASET = "synthetic"
# built-in merge maps: their resource files, read in order (a later pair wins)
BUILTIN_MERGE_MAPS = {
    "cfpb_2017": ("cfpb_issue_merge_2017.csv",),
    "cfpb_2025": ("cfpb_issue_merge_2017.csv", "cfpb_issue_merge_2025.csv"),
}
BUILTIN_TAXONOMIES = {"cfpb_issue_113": "cfpb_issue_taxonomy.txt"}
NONE_VALUES = {None, "", "none", "None", "null"}
# Other names the same column goes by in CFPB sources (the Hub set, the CSV export, the API's JSON), offered as hints
# when a column is missing; the same name in another case or spacing (`issue`, `Sub_issue`) is found by `column_key`.
COLUMN_HINTS = {
    "Consumer Complaint": ["Consumer complaint narrative", "complaint_what_happened"],
    "Consumer complaint narrative": ["Consumer Complaint", "complaint_what_happened"],
    "complaint_what_happened": ["Consumer complaint narrative", "Consumer Complaint"],
}
SPLITS = ("train", "validation", "test")
DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
# What to do with the files a data file is most often mistaken for: a spreadsheet, a tab-separated export.
SAVE_AS = {
    **dict.fromkeys((".xlsx", ".xls", ".xlsm", ".ods"), " Save the sheet as CSV UTF-8 (comma-delimited)."),
    **dict.fromkeys((".tsv", ".tab"), " Save it comma-separated as a .csv."),
}
# A data file compressed whole, as CFPB's download is (complaints.csv.zip): read through, by its last suffix.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}
# Rows per piece when a .csv is read for some of its columns (`read_table(columns=...)`): each piece is parsed with
# all its columns, as a whole read parses the file (a row with too many fields is still an error, which pandas'
# `usecols` skips), and only the columns asked for are kept. A piece this size of the CFPB export, all 18 columns,
# is 30-60 MB of text.
CSV_CHUNK_ROWS = 50_000
# Rows per piece when `clean_split` reads whether texts are empty and normalises them.
CLEAN_CHUNK_ROWS = 50_000
# The columns to keep: names, or a function of the names the file has giving them (None: all; a name the file
# lacks: none of its rows, `read_table`).
Columns = Iterable[str] | Callable[[list[str]], Iterable[str] | None] | None


@dataclass
class DataArguments:
    """Where the rows come from and how they are cleaned and split."""

    dataset_name: str | None = field(
        default=DEFAULT_DATASET,
        metadata={
            "help": "Hub data set id, a local .csv/.json/.jsonl/.parquet file, or 'synthetic' (the built-in "
            "offline demo set). Ignored when --train_file is given."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub data set configuration."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file (csv/json/jsonl/parquet)."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(
        default=None, metadata={"help": "Local test file (scored with --do_predict)."}
    )
    text_column: str = field(default="Consumer Complaint", metadata={"help": "Column holding the text."})
    label_column: str = field(default="Issue", metadata={"help": "Column holding the label."})
    label_merge_map: str | None = field(
        default="cfpb_2017",
        metadata={
            "help": "Old->new label map applied before anything else: a built-in name (cfpb_2017), a .csv "
            "(old,new columns) or .json ({old: new}) file, or 'none'."
        },
    )
    label_taxonomy: str | None = field(
        default=None,
        metadata={
            "help": "Keep only labels of this taxonomy (after merging): a built-in name (cfpb_issue_113) or a "
            "text file with one label per line; 'none' keeps every label."
        },
    )
    min_class_count: int = field(default=5, metadata={"help": "Drop classes with fewer training rows."})
    validation_split_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of training rows held out when the source has no validation split."},
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the validation split and of row caps."})
    split_indices: str | None = field(
        default=None,
        metadata={
            "help": "JSON file of row ids per split (a run's splits.json) to reproduce a split exactly."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap training rows (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap validation rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Cap test rows."})
    max_length: int = field(default=128, metadata={"help": "Truncate texts to this many tokens."})

    def __post_init__(self):
        if not 0 < self.validation_split_fraction < 1:
            raise ValueError(
                f"validation_split_fraction must be in (0, 1), got {self.validation_split_fraction}"
            )
        if self.min_class_count < 1:
            raise ValueError(f"min_class_count must be >= 1, got {self.min_class_count}")
        if self.max_length < 1:  # the tokenizers read 0 as "no truncation" and fail on a negative length
            raise ValueError(f"max_length must be >= 1 (tokens), got {self.max_length}")
        capped = {
            name: getattr(self, name)
            for name in ("max_train_samples", "max_eval_samples", "max_predict_samples")
            if getattr(self, name) is not None and getattr(self, name) < 1
        }
        if capped:
            raise ValueError(f"row caps must be >= 1 (or unset), got {capped}")


class DataError(UsageError):
    """A problem with the user's data or data options, stated in the user's terms."""


@dataclass
class PreparedData:
    """Clean splits (DataFrames with columns text, label, label_id, row_id) and the label space."""

    splits: dict[str, pd.DataFrame]
    label_names: list[str]
    train_counts: dict[int, int]
    log: dict = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_table(path: str | Path, columns: Columns = None) -> pd.DataFrame:
    """Read a local csv/json/jsonl/parquet file, or a csv/json/jsonl compressed whole (.gz, .bz2, .xz, .zip);
    a non-UTF-8 or unreadable file is a DataError.

    columns: the names the caller reads (or a function of the file's column names giving them): a .csv or .parquet
    keeps only those columns (CFPB's export has 18, a recipe reads 2), with the rows a whole read gives, and
    `attrs["file_columns"]` names every column a whole read holds. When one of them is not in the file, no row is
    read: the frame is empty, with every column a whole read names (from the .csv's header or the .parquet's
    schema), so that the caller's error lists them as before, and `attrs["missing_columns"]` names those it lacks
    (a .csv whose header is one name split by ';' or tabs is read whole, for the parse error that names the
    separator). A .json or .jsonl is always read whole."""
    path = Path(path)
    if path.is_dir():  # "not found" sent the user looking for a file that is there
        raise DataError(
            f"{path} is a folder, not a data file: pass the .csv, .json, .jsonl or .parquet file in it"
        )
    if not path.is_file():
        raise DataError(f"Data file not found: {path}")
    frame = _read_table(path, columns)
    if frame.attrs.pop("keyed_by_row", False):
        logger.info(
            "%s: read as records keyed by row id (pandas' to_json(orient='index')): %d rows, columns %s",
            path,
            len(frame),
            [str(c) for c in frame.columns],
        )
    if data_format(path)[0] in (".json", ".jsonl"):
        frame = api_records(frame, path)
    # a .csv's header as written: pandas renames a repeated `t` to `t.1`, and the first `t` was read silently.
    # Blank header cells (a spreadsheet's trailing columns) are pandas' `Unnamed: N`, not repeats.
    read = [str(c) for c in frame.attrs.get("file_columns", frame.columns)]  # as a whole read names them
    names = csv_header(path) if data_format(path)[0] == ".csv" else read
    repeated = sorted({n for i, n in enumerate(names) if n.strip() and n in names[:i]}, key=names.index)
    if repeated:
        logger.warning(
            "%s repeats the column name(s) %s: the later ones are read as %s",
            path,
            repeated,
            [c for c in read if c.rsplit(".", 1)[0] in repeated and c not in repeated],
        )
    frame.attrs["repeated_columns"] = repeated
    frame.attrs["header"] = names
    return frame


def api_records(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The CFPB API's JSON (an Elasticsearch search) as one row per complaint: each complaint's fields sit in a
    hit's `_source` object, the hits a list (`format=json`) or under `hits.hits` (the search's own answer). Its
    fields keep the API's names (`complaint_what_happened`, `issue`). Only a frame whose other columns are all hit
    metadata (`_index`, `_id`, `_score`, `sort`, ...) is flattened; any other frame is returned as it is."""
    if "hits" in frame.columns and "hits" in frame.index and isinstance(frame.at["hits", "hits"], list):
        frame = pd.DataFrame(frame.at["hits", "hits"])
    if "_source" not in frame.columns or not all(isinstance(v, dict) for v in frame["_source"]):
        return frame
    # a hit's own fields besides `_source`: `_index`, `_id`, `_score` and other `_`-names, and these
    hit_fields = {"sort", "highlight", "fields", "inner_hits", "matched_queries"}
    if not all(isinstance(c, str) and (c.startswith("_") or c in hit_fields) for c in frame.columns):
        return frame  # a user's table with a `_source` column among its own columns: kept as it is
    records = pd.DataFrame.from_records(list(frame["_source"]))
    logger.info(
        "%s: read the %d complaints' `_source` fields (the API's JSON): %s",
        path,
        len(records),
        list(records.columns),
    )
    return records


def refuse_repeated(frame: pd.DataFrame, columns, where) -> None:
    """A DataError when a column the caller reads (the text, the label) is one whose name the file repeats: which
    of them was meant cannot be told. A repeat among the other columns is only `read_table`'s warning."""
    repeated = [c for c in frame.attrs.get("repeated_columns", []) if c in set(columns)]
    if repeated:
        raise DataError(
            f"{where} has more than one column named {repeated}: rename or drop the repeated columns "
            f"(columns: {frame.attrs.get('header', list(frame.columns))})"
        )


def csv_header(path: Path) -> list[str]:
    """A .csv's header as written. Read after the file's columns were (by pandas, as UTF-8): the bytes decoded
    past the header (a block at a time) are not checked here, for a file whose rows are not read."""
    with (
        open_data(path) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as f,
    ):
        return next(csv.reader(f), [])


def data_format(path: str | Path) -> tuple[str, str | None]:
    """A data file's format and compression by its name: ('.csv', None), ('.csv', 'gzip') for `x.csv.gz`; a
    .zip's format is its one data file's (`complaints.zip` holding complaints.csv is ('.csv', 'zip'))."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in COMPRESSIONS:
        return suffix, None
    compression = COMPRESSIONS[suffix]
    if compression == "zip" and path.is_file():
        return Path(zip_member(path)).suffix.lower(), compression
    return Path(path.stem).suffix.lower(), compression


def zip_member(path: Path) -> str:
    """The one file a .zip holds (folders and macOS's `__MACOSX/` and `._` entries aside), else a DataError."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as err:
        raise DataError(
            f"{path} is not a readable .zip archive ({err}): unzip it yourself and pass the file"
        ) from None
    members = [
        n
        for n in names
        if not n.endswith("/") and not n.startswith("__MACOSX/") and not Path(n).name.startswith("._")
    ]
    if len(members) != 1:
        raise DataError(
            f"{path} holds {len(members)} files ({', '.join(members[:5]) or 'none'}"
            f"{', ...' if len(members) > 5 else ''}), not one data file: unzip it (`unzip {path.name}`) and pass the "
            "data file"
        )
    return members[0]


@contextmanager
def open_data(path: Path):
    """The data file's bytes, decompressed when its name ends in a compression suffix."""
    compression = data_format(path)[1]
    if compression == "zip":
        with zipfile.ZipFile(path) as archive, archive.open(zip_member(path)) as f:
            yield f
    else:
        opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}.get(compression, open)
        with opener(path, "rb") as f:
            yield f


def _read_table(path: Path, columns: Columns = None) -> pd.DataFrame:
    suffix, compression = data_format(path)
    inner = zip_member(path) if compression == "zip" else path.stem if compression else path.name
    if suffix not in DATA_SUFFIXES:
        if compression == "zip":
            shown = f"'.zip' holding {inner!r}"
        else:
            shown = f"'{''.join(path.suffixes[-2:]).lower() if compression else suffix}'"
        raise DataError(
            f"Unsupported data file type {shown} for {path}: use .csv, .json, .jsonl or .parquet (a .csv, .json "
            f"or .jsonl may be compressed: {', '.join(COMPRESSIONS)}).{SAVE_AS.get(suffix, '')}"
        )
    if suffix == ".parquet" and compression:  # parquet compresses inside; pyarrow would seek through a stream
        raise DataError(
            f"{path}: a compressed .parquet file is not read: decompress it and pass the .parquet file"
        )
    try:
        with open_data(path) as raw:
            return read_frame(raw, suffix, columns)
    except UnicodeDecodeError:
        raise DataError(not_utf8_message(path, inner, suffix, compression)) from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(
            f"Could not parse {path} as {suffix[1:]}: {str(err).strip()}{separator_hint(path)}"
        ) from None
    # a compressed file that is not what its name says (BadGzipFile), cut short (EOFError), a bad checksum
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError) as err:
        if not compression:
            raise
        raise DataError(
            f"Could not decompress {path} ({compression}: {err}): check the download, or decompress it yourself "
            f"and pass the {suffix} file"
        ) from None


# A UTF-16 file starts with one of these byte-order marks (Excel's "Unicode Text", PowerShell's `>` redirection).
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def first_non_utf8(path: Path, block: int = 1 << 20) -> tuple[int, int, bytes]:
    """The first bytes of a data file (decompressed) that are not UTF-8: their offset, their line (1-based) and the
    bytes. pandas' UnicodeDecodeError counts from the start of the block it was decoding, not of the file (a
    cp1252 quote at byte 942,822 of a file was "at byte 1"). (-1, 0, b"") when every byte decodes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    with open_data(path) as raw:
        while chunk := raw.read(block):
            pending = decoder.getstate()[0]  # the start of a character cut by the previous block
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                data = pending + chunk
                start = offset - len(pending) + err.start
                return start, lines + data[: err.start].count(b"\n") + 1, data[err.start : err.end]
            lines += chunk.count(b"\n")
            offset += len(chunk)
    pending = decoder.getstate()[0]  # a character the file's end cuts short
    return (offset - len(pending), lines + 1, pending) if pending else (-1, 0, b"")


def not_utf8_message(path: Path, inner: str, suffix: str, compression: str | None) -> str:
    """The one line for a data file that is not UTF-8: where its first such bytes are, and the `iconv` command
    that re-saves it. Bytes 0x80-0x9F (curly quotes, dashes: Windows text) are cp1252, which latin-1 reads as
    invisible control characters; latin-1's printable letters read alike in cp1252, so cp1252 is suggested."""
    with open_data(path) as raw:
        head = raw.read(2)
    where = " of the decompressed data" if compression else ""
    if head in UTF16_BOMS:
        found, source = "it is UTF-16, by its byte-order mark", "utf-16"
    else:
        start, line, bad = first_non_utf8(path)
        found = f"byte {' '.join(f'0x{b:02X}' for b in bad)} at line {line:,}, offset {start:,}{where}"
        if start < 0:  # pandas' error without a bad byte found: never seen, but still one line
            found = "its bytes do not decode"
        source = "cp1252"
    return (
        f"{path} is not valid UTF-8 ({found}). {'Decompress it and r' if compression else 'R'}e-save it as UTF-8, "
        f"e.g. `iconv -f {source} -t utf-8 {Path(inner).name} > fixed{suffix}`."
    )


def wanted_columns(columns: Columns, names: list) -> set:
    """The names `columns` asks for of a file with these column names (empty: all). One name may be a string."""
    wanted = columns(list(names)) if callable(columns) else columns
    return {wanted} if isinstance(wanted, str) else set(wanted or ())  # "text": that column, not t, e, x


def missing_columns(columns: Columns, names: list) -> list:
    """The names `columns` asks for that a file with these column names does not have, sorted."""
    return sorted(wanted_columns(columns, names) - set(names), key=str)


def header_only(frame: pd.DataFrame, missing: list) -> pd.DataFrame:
    """A whole read's columns without its rows, for a file that lacks columns the caller reads: its error lists
    the columns (and the names they may have meant) without the file's rows being read."""
    frame.attrs["missing_columns"] = missing
    return frame


def kept_columns(columns: Columns, names: list) -> list | None:
    """The file's columns to keep, in the file's order; None to keep them all (`columns` None or empty, or naming a
    column the file does not have: `read_frame` reads none of its rows then, but for a .csv split by ';' or tabs).
    One name may be given as a string."""
    wanted = wanted_columns(columns, names)
    if not wanted:
        return None
    # a repeated name: pandas tells a .csv's repeats apart (`t`, `t.1`), a parquet's may stay alike
    if not wanted <= set(names) or len(set(names)) < len(names):
        return None
    return [n for n in names if n in wanted]


def read_frame(raw, suffix: str, columns: Columns = None) -> pd.DataFrame:
    """One data file's rows from its (decompressed) bytes; `columns` as `read_table` takes them."""
    if suffix == ".csv":
        # keep_default_na=False: a narrative that reads "NA" is text, not missing; skip_blank_lines=False:
        # a blank line is a row with no text, counted and reported downstream rather than vanishing here
        options = dict(
            encoding="utf-8", dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=False
        )
        if columns is None:
            return pd.read_csv(raw, **options)
        # the header alone first, as a whole read names its columns (a repeat as `t.1`, a blank one `Unnamed: N`):
        # a column asked for that it lacks is the caller's error, and the rows (gigabytes) are not read for it
        header = pd.read_csv(raw, nrows=0, **options)
        missing = missing_columns(columns, list(header.columns))
        if missing and not split_otherwise(header.columns):
            return header_only(header, missing)
        raw.seek(0)
        # in pieces, each parsed whole and cut to the columns kept, not with pandas' `usecols`: it skips the check
        # that a row has no more fields than the header (an unquoted comma in a text: the row's later fields were
        # read shifted, without a word, where this is "Expected 2 fields in line 3, saw 3")
        pieces, names, keep = [], None, None
        with pd.read_csv(raw, chunksize=CSV_CHUNK_ROWS, **options) as reader:
            for piece in reader:
                if names is None:
                    names = list(piece.columns)
                    keep = kept_columns(columns, names) or names
                pieces.append(piece[keep] if keep != names else piece)
        frame = pd.concat(pieces)
        if keep != names:
            frame.attrs["file_columns"] = names
        return frame
    if suffix == ".parquet":
        if columns is None:
            return pd.read_parquet(raw)
        import pyarrow.parquet as pq

        # the columns a whole read gives (an index pandas saved is not one), from the schema alone
        empty = pq.read_schema(raw).empty_table().to_pandas()
        names = list(empty.columns)
        if missing := missing_columns(columns, names):  # no data page is read for the caller's column error
            return header_only(empty, missing)
        raw.seek(0)
        keep = kept_columns(columns, names)
        frame = pd.read_parquet(raw, columns=keep)
        if keep is not None and keep != names:
            frame.attrs["file_columns"] = names
        return frame
    # utf-8-sig: a byte-order mark (Notepad, PowerShell) is skipped, as read_csv skips it; with utf-8 it was
    # "Expected object or value at position 0"
    text = io.TextIOWrapper(raw, encoding="utf-8-sig").read()
    if suffix == ".jsonl":
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    try:
        frame = pd.read_json(io.StringIO(text), dtype=False)
    except ValueError:
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    if keyed_by_row(frame, columns):
        # `{"0": {"Issue": ..., "text": ...}, "1": {...}}`: one row per key, as pandas reads orient="index"
        frame = pd.read_json(io.StringIO(text), orient="index", dtype=False)
        frame.attrs["keyed_by_row"] = True  # logged by read_table, which knows the file
    return frame


# a row id as pandas' to_json(orient="index") writes a default or numeric index: "0", "17", "-1"
ROW_KEY = re.compile(r"-?\d+")


def keyed_by_row(frame: pd.DataFrame, columns: Columns = None) -> bool:
    """Whether a .json object read with pandas' default orient ("columns") is sideways: a file keyed by row id
    (pandas' to_json(orient="index"): `{"0": {"Issue": ..., "text": ...}, ...}`) reads as columns "0", "1", ...
    with the field names as its index. Told by the names the caller reads (`columns`: in the index, not among the
    columns), else by the shape: every column a row id, not every index label one (the API's search JSON, its keys
    `took`, `hits`, ..., is neither); a file whose columns hold what the caller reads is as read. What the fields
    hold does not count: a field of lists (CFPB's tags) kept such a file sideways, the recipes' column error
    listing "0", "1", ... and `longtail.holdout` splitting its fields instead of its rows."""
    if frame.empty or isinstance(frame.index, pd.RangeIndex):  # a list of records reads with a RangeIndex
        return False
    keys, fields = [str(c) for c in frame.columns], [str(i) for i in frame.index]
    if columns is not None and (wanted := wanted_columns(columns, keys)) and wanted <= set(keys):
        return False
    if columns is not None and (wanted := wanted_columns(columns, fields)) and wanted <= set(fields):
        return True
    return all(ROW_KEY.fullmatch(k) for k in keys) and not all(ROW_KEY.fullmatch(f) for f in fields)


def split_otherwise(columns) -> bool:
    """A .csv header read as one name holding ';' or tabs: likely split by them, a file whose whole read may fail
    to parse, with `separator_hint`'s note, or read as one column (`check_columns` names it)."""
    return len(columns) == 1 and any(sep in str(columns[0]) for sep in (";", "\t"))


def separator_hint(path: Path) -> str:
    """For a .csv that fails to parse: a note when its header is split by ';' or tabs rather than commas."""
    if data_format(path)[0] != ".csv":
        return ""
    with open_data(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=counts.get)
    if sep == "," or not counts[sep]:
        return ""
    name = "tab" if sep == "\t" else repr(sep)
    return f" (its header is split by {name}, not commas: save it comma-separated)"


def is_local_file(name: str | None) -> bool:
    """A local data file (read_table names unsupported types) rather than a Hub id."""
    return bool(name) and (Path(name).is_file() or data_format(name)[0] in DATA_SUFFIXES)


def load_raw_splits(args: DataArguments) -> dict[str, pd.DataFrame]:
    """Raw splits by name. Local files win over --dataset_name, as in the HF example scripts."""
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    if args.train_file is None and is_local_file(args.dataset_name):
        files["train"] = args.dataset_name
    raw: dict[str, pd.DataFrame] = {}
    if files["train"] is not None:
        if args.dataset_name not in NONE_VALUES | {DEFAULT_DATASET} and not is_local_file(args.dataset_name):
            logger.warning("--train_file given: ignoring --dataset_name %s", args.dataset_name)
    elif args.dataset_name == SYNTHETIC_DATASET:
        from longtail.synthetic import make_synthetic_splits

        raw.update(make_synthetic_splits(seed=args.split_seed))
    elif args.dataset_name not in NONE_VALUES:
        raw.update(load_hub_splits(args.dataset_name, args.dataset_config_name))
    else:
        raise DataError("No data: pass --train_file or --dataset_name.")
    for split, path in files.items():
        if path is not None:
            # only the columns `clean_split` reads (a row's id is its position): the export's other 16 stay unread
            raw[split] = read_table(path, columns=[args.text_column, args.label_column])
    if "train" not in raw:
        raise DataError(f"The data source has no 'train' split (found: {sorted(raw)}).")
    return raw


def load_hub_splits(name: str, config_name: str | None) -> dict[str, pd.DataFrame]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config_name)
    # OSError: offline and not cached (ConnectionError), not on the Hub (DatasetNotFoundError); ValueError: a name
    # that cannot be a repo id, a configuration the data set lacks. Each was a traceback from inside `datasets`.
    except (OSError, ValueError) as err:
        config = f" --dataset_config_name {config_name}" if config_name else ""  # perhaps the one mistyped
        raise DataError(
            f"--dataset_name {name}{config} could not be loaded from the Hugging Face Hub "
            f"({' '.join(str(err).split())}): "
            "a local .csv/.json/.jsonl/.parquet file goes in --train_file (or --dataset_name <file>), and "
            "--dataset_name synthetic is the built-in demo set"
        ) from err
    aliases = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}
    return {aliases.get(split, split): ds[split].to_pandas() for split in ds}


# ---------------------------------------------------------------------------------------------
# Cleaning and labels
# ---------------------------------------------------------------------------------------------


def _parse_merge_csv(text: str, source: str) -> dict[str, str]:
    """Rows of (old, new) after a header; lines starting with '#' are comments."""
    rows = [r for r in csv.reader(line for line in text.splitlines() if not line.startswith("#")) if r]
    if rows and any(len(r) != 2 for r in rows):
        raise DataError(
            f"{source}: a merge map csv needs exactly two columns (old, new), found header {rows[0]}"
        )
    return {old: new for old, new in rows[1:]}


def read_json_file(path, option: str):
    """A JSON file named by an option, or a DataError naming the option and the file."""
    if not Path(path).is_file():
        raise DataError(f"{option} {path}: no such file")
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{option} {path} is not valid JSON: {err}") from None


def load_merge_map(spec: str | None) -> dict[str, str]:
    if spec in NONE_VALUES:
        return {}
    if spec in BUILTIN_MERGE_MAPS:
        mapping = {}
        for name in BUILTIN_MERGE_MAPS[spec]:
            mapping |= _parse_merge_csv(
                resources.files("longtail.resources").joinpath(name).read_text("utf-8"), spec
            )
        return mapping
    path = Path(spec)
    if not path.is_file():
        raise DataError(
            f"label_merge_map '{spec}' is neither a built-in ({sorted(BUILTIN_MERGE_MAPS)}) nor a file."
        )
    if path.suffix.lower() == ".json":
        mapping = read_json_file(path, "--label_merge_map")
        if not isinstance(mapping, dict):
            raise DataError(
                f"{path}: a .json merge map must be an object {{old: new}}, got {type(mapping).__name__}"
            )
        mapping = {k: v for k, v in mapping.items() if not k.startswith("_")}  # allow "_comment" keys
    else:
        mapping = _parse_merge_csv(path.read_text("utf-8"), str(path))
    not_text = {k: v for k, v in mapping.items() if not isinstance(v, str) or not v.strip()}
    if not_text:  # a number, null or list: a TypeError from pandas while merging; "": a class named ""
        raise DataError(
            f"{path} (--label_merge_map): each new label must be non-empty text (in .json, numbers in quotes), "
            f"got {dict(list(not_text.items())[:5])}"
        )
    return mapping


def load_taxonomy(spec: str | None) -> list[str] | None:
    if spec in NONE_VALUES:
        return None
    if spec in BUILTIN_TAXONOMIES:
        text = resources.files("longtail.resources").joinpath(BUILTIN_TAXONOMIES[spec]).read_text("utf-8")
    elif Path(spec).is_file():
        path = Path(spec)
        text = path.read_text("utf-8")
        if path.suffix.lower() == ".json":
            labels = read_json_file(path, "--label_taxonomy")
            # list() of a JSON string is its characters, of an object its keys; a number never matches a label
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise DataError(
                    f"{path} (--label_taxonomy): a .json taxonomy must be a list of labels as text, "
                    f'["label", ...], got {repr(labels)[:80]}'
                )
            return labels
    else:
        raise DataError(
            f"label_taxonomy '{spec}' is neither a built-in ({sorted(BUILTIN_TAXONOMIES)}) nor a file."
        )
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def check_columns(df: pd.DataFrame, split: str, text_column: str, label_column: str) -> None:
    if text_column == label_column:  # the model would read the answer: every score 1.0
        raise DataError(
            f"--text_column and --label_column are both {text_column!r}: the model would read its label. "
            f"Columns that exist: {list(df.attrs.get('file_columns', df.columns))}"
        )
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if not missing:
        return
    hint = column_hint(missing, df.columns)
    if split_otherwise(df.columns):
        hint += " The file was read as one column: is it ';'- or tab-separated? Save it comma-separated."
    raise DataError(
        f"Column(s) {missing} not found in the {split} data. Columns that exist: {list(df.columns)}.{hint} "
        "Set --text_column / --label_column."
    )


def column_key(name) -> str:
    """A column name with case, spaces and punctuation ignored: `Sub-issue`, `sub_issue` and `SUB ISSUE` agree."""
    return re.sub(r"[\W_]+", "", str(name).casefold())


def similar_columns(name: str, columns) -> list[str]:
    """Columns that `name` may have meant: its other names in CFPB sources, the same name in another case or
    spacing (`issue` for `Issue`), else a near spelling (`Isue`)."""
    columns = [str(c) for c in columns]
    found = [h for h in COLUMN_HINTS.get(name, []) if h in columns]
    found += [c for c in columns if column_key(c) == column_key(name)]
    if not found:
        by_key = {column_key(c): c for c in columns}
        found = [
            by_key[k] for k in difflib.get_close_matches(column_key(name), list(by_key), n=2, cutoff=0.8)
        ]
    return list(dict.fromkeys(found))


def column_hint(missing: list[str], columns) -> str:
    """` Did you mean 'issue'?` for missing columns that have a similar one (`similar_columns`), else ''."""
    hints = {name: similar_columns(name, columns) for name in missing}
    hints = {name: found for name, found in hints.items() if found}
    if not hints:
        return ""
    if len(missing) == 1:
        return f" Did you mean {' / '.join(map(repr, hints[missing[0]]))}?"
    return (
        " Did you mean "
        + ", ".join(f"{' / '.join(map(repr, found))} for {name!r}" for name, found in hints.items())
        + "?"
    )


def nested_values_error(values: pd.Series, column: str, where: str) -> DataError | None:
    """The error for a column holding lists or dicts (JSON arrays and objects, parquet lists): astype(str) turns
    each into its printed form ("['a', 'b']"), which was trained on or scored as text silently."""
    rows = np.flatnonzero([isinstance(v, (list, tuple, dict, set, np.ndarray)) for v in values])
    if not len(rows):
        return None
    shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
    return DataError(
        f"Column {column!r} of {where} holds lists or objects, not text, in {len(rows)} of {len(values)} rows "
        f"(rows {shown}; 0-based): write each value as one string"
    )


def split_source(args: DataArguments, split: str) -> str:
    """`the train data (file.jsonl)`: a split and, when it came from a local file, that file."""
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    if files["train"] is None and is_local_file(args.dataset_name):
        files["train"] = args.dataset_name
    return f"the {split} data" + (f" ({files[split]})" if files.get(split) else "")


def empty_text_column(args: DataArguments, split: str, rows: int) -> str:
    """The note for a text column with no text in any row (a CFPB export whose rows all lack a narrative)."""
    return (
        f"--text_column {args.text_column!r} is empty in all {rows} rows of {split_source(args, split)}: pass the "
        "column that holds the texts (a CFPB export has a narrative only where the consumer agreed to publish one: "
        "most rows, and every complaint before March 2015, have none)"
    )


def normalise_text(text: str) -> str:
    """The key under which two narratives count as identical (case and whitespace ignored)."""
    return re.sub(r"\s+", " ", text).strip().lower()


def label_key(label: str) -> str:
    """A label with case and runs of whitespace ignored."""
    return " ".join(label.split()).casefold()


def known_wordings(merge_map: dict, taxonomy: set | None) -> dict[str, str]:
    """`label_key` -> the label as the merge map (old and new wordings) and the taxonomy write it; a key two of their
    wordings share is left out (which one a label meant cannot be told)."""
    by_key: dict[str, set] = {}
    for wording in {*merge_map, *merge_map.values(), *(taxonomy or ())}:
        by_key.setdefault(label_key(wording), set()).add(wording)
    return {key: next(iter(found)) for key, found in by_key.items() if len(found) == 1}


def respell(out: pd.DataFrame, wordings: dict[str, str], split: str, counts: dict) -> None:
    """Labels that are a merge-map or taxonomy label in another case or spacing ('fraud or scam', 'Fraud  or scam')
    are read as that label, counted and named: they were dropped as outside the taxonomy, or kept as classes of
    their own, without a word."""
    keys = out["label"].map({label: label_key(label) for label in out["label"].unique()})  # millions of rows
    respelled = ~out["label"].isin(set(wordings.values())) & keys.isin(wordings.keys())
    counts["labels_respelled"] = int(respelled.sum())
    if respelled.any():
        examples = out.loc[respelled, "label"].value_counts().head(3).index
        logger.warning(
            "%s: %d rows have labels written in another case or spacing than the merge map's or taxonomy's, read as "
            "them: %s",
            split,
            respelled.sum(),
            ", ".join(f"{label!r} as {wordings[label_key(label)]!r}" for label in examples),
        )
        out.loc[respelled, "label"] = keys[respelled].map(wordings)


def stripped_text(values: pd.Series) -> pd.Series:
    """A column's values as text with surrounding whitespace stripped (missing values stay missing)."""
    return values.astype("string").str.strip()


def normalised(texts: pd.Series) -> pd.Series:
    """`normalise_text` of each text, computed in pieces of CLEAN_CHUNK_ROWS rows (as one `map` gives it): a whole
    `map` holds every text and its key as Python strings at once."""
    if len(texts) <= CLEAN_CHUNK_ROWS:
        return texts.map(normalise_text)
    return pd.concat(
        [
            texts.iloc[i : i + CLEAN_CHUNK_ROWS].map(normalise_text)
            for i in range(0, len(texts), CLEAN_CHUNK_ROWS)
        ]
    )


def kept_texts(texts: pd.Series, positions: np.ndarray) -> pd.Series:
    """`stripped_text` of the texts at these positions (ascending), taken from pieces of CLEAN_CHUNK_ROWS rows: a
    take from a whole column read in pieces (pyarrow's chunks) first joined all of it into one copy."""
    if len(texts) <= CLEAN_CHUNK_ROWS:
        return stripped_text(texts.iloc[positions])
    pieces = []
    for start in range(0, len(texts), CLEAN_CHUNK_ROWS):
        first, stop = np.searchsorted(positions, [start, start + CLEAN_CHUNK_ROWS])
        pieces.append(
            stripped_text(texts.iloc[start : start + CLEAN_CHUNK_ROWS].iloc[positions[first:stop] - start])
        )
    return pd.concat(pieces)


def empty(values: pd.Series) -> np.ndarray:
    """Which of the stripped values are missing or empty."""
    return (values.isna() | (values == "")).to_numpy(dtype=bool)


def clean_split(
    df: pd.DataFrame, split: str, args: DataArguments, merge_map: dict, taxonomy: set | None, log: dict
):
    """Select and clean one split: returns text, label, row_id, norm columns.

    Memory: the labels are cleaned, merged and checked against the taxonomy first, and the texts are stripped
    only for the rows kept (a CFPB export has no narrative in most rows, and no label in some); whether a text
    is empty is read in pieces. The caller may pass its only reference to `df`: the frame is dropped here at once,
    the label column once cleaned, and the text column once the kept texts are taken."""
    if not len(df.columns) and not len(df):  # "Columns that exist: []" of an empty .jsonl / .json
        raise DataError(f"{split_source(args, split)} is empty: no rows and no columns")
    check_columns(df, split, args.text_column, args.label_column)
    refuse_repeated(df, (args.text_column, args.label_column), split_source(args, split))
    for column in (args.text_column, args.label_column):
        if err := nested_values_error(df[column], column, split_source(args, split)):
            raise err
    texts, labels = df[args.text_column], df[args.label_column]
    del df
    rows = len(texts)
    counts = {"rows_read": rows}
    pieces = [
        empty(stripped_text(texts.iloc[i : i + CLEAN_CHUNK_ROWS])) for i in range(0, rows, CLEAN_CHUNK_ROWS)
    ]
    empty_text = np.concatenate(pieces) if pieces else np.zeros(0, dtype=bool)
    label = stripped_text(labels)
    del labels  # the text column alone lives on, until the kept texts are taken
    empty_label = empty(label)
    counts["dropped_empty_text"] = int(empty_text.sum())
    counts["dropped_missing_label"] = int((empty_label & ~empty_text).sum())
    if rows and empty_text.all():
        logger.warning("%s", empty_text_column(args, split, rows))
    if not rows:
        logger.warning("%s has no data rows, only a header", split_source(args, split))
    keep = ~empty_text & ~empty_label
    out = pd.DataFrame({"label": label[keep].astype(str), "row_id": np.flatnonzero(keep)})
    del label
    if wordings := known_wordings(merge_map, taxonomy):
        respell(out, wordings, split, counts)
    merged = out["label"].isin(merge_map.keys())
    counts["labels_merged"] = int(merged.sum())
    out.loc[merged, "label"] = out.loc[merged, "label"].map(merge_map)
    if taxonomy is not None:
        outside = ~out["label"].isin(taxonomy)
        counts["dropped_outside_taxonomy"] = int(outside.sum())
        if outside.any():
            top = out.loc[outside, "label"].value_counts().head(5).to_dict()
            logger.info(
                "%s: %d rows have labels outside the taxonomy (most common: %s)", split, outside.sum(), top
            )
        out = out[~outside]
    text = kept_texts(texts, out["row_id"].to_numpy()).astype(str)
    del texts
    out.insert(0, "text", text.array)
    del text
    out["norm"] = normalised(out["text"]).array
    counts["rows_kept"] = len(out)
    log[split] = counts
    dropped = {k: v for k, v in counts.items() if k.startswith("dropped") and v}
    logger.info(
        "%s: read %d rows, kept %d%s",
        split,
        counts["rows_read"],
        len(out),
        f", dropped {dropped}" if dropped else "",
    )
    return out


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


def stratified_group_split(labels: pd.Series, groups: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: about `fraction` of each class, whole duplicate groups only.

    Hand-rolled because sklearn's stratified splitters either reject classes with one member
    (train_test_split) or cannot honour both groups and an arbitrary fraction; here a class with
    a single group simply stays in training.
    """
    rng = np.random.default_rng(seed)
    group_label = labels.groupby(groups, sort=True).first()  # one label per duplicate group
    val_groups = []
    for _, members in group_label.groupby(group_label, sort=True):
        names = members.index.to_numpy()
        n_val = min(int(np.floor(fraction * len(names) + 0.5)), len(names) - 1)
        if n_val > 0:
            val_groups.extend(rng.permutation(names)[:n_val])
    return groups.isin(set(val_groups)).to_numpy()


def cap(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed).sort_index()


def prepare_data(args: DataArguments, raw: dict[str, pd.DataFrame] | None = None) -> PreparedData:
    """Run the whole pipeline (see the module docstring) and return clean splits + label space."""
    # frames read here are dropped as each is cleaned (a caller's `raw` stays as it was given)
    raw = load_raw_splits(args) if raw is None else dict(raw)
    merge_map = load_merge_map(args.label_merge_map)
    taxonomy_list = load_taxonomy(args.label_taxonomy)
    taxonomy = set(taxonomy_list) if taxonomy_list is not None else None
    log: dict = {"merge_map_pairs": len(merge_map), "taxonomy_size": len(taxonomy) if taxonomy else None}
    clean = {s: clean_split(raw.pop(s), s, args, merge_map, taxonomy, log) for s in list(raw) if s in SPLITS}
    del raw
    pool = clean["train"]
    if pool.empty:
        counts = log["train"]
        no_text = counts["rows_read"] and counts["dropped_empty_text"] == counts["rows_read"]
        if not counts["rows_read"]:  # the counts, all 0, said nothing of the file
            raise DataError(
                f"{split_source(args, 'train')} has no data rows, only a header: nothing to train on"
            )
        raise DataError(
            f"No training rows left after cleaning: {counts}"
            + (f". {empty_text_column(args, 'train', counts['rows_read'])}" if no_text else "")
        )

    # Leakage guard: a narrative that is also in an evaluation split leaves the training pool, and a
    # validation narrative that is also in test leaves validation (test is the final measure).
    # A warning, not a note: files that share rows (a test file cut from the training file) are a mistake in the
    # data, which the scores would not show; a holdout split of the real sample shares none.
    if "validation" in clean and "test" in clean:
        overlap = clean["validation"]["norm"].isin(set(clean["test"]["norm"]))
        log["dropped_validation_duplicates_of_test"] = int(overlap.sum())
        if overlap.any():
            logger.warning(
                "Dropped %s whose text also appears in test (case and spacing ignored): validation/test leakage",
                share(overlap.sum(), len(overlap), "validation"),
            )
        clean["validation"] = clean["validation"][~overlap]
    eval_norms = {s: set(clean[s]["norm"]) for s in ("validation", "test") if s in clean}
    leaked = pool["norm"].isin(set().union(*eval_norms.values()))
    log["dropped_train_duplicates_of_eval"] = int(leaked.sum())
    if leaked.any():
        into = [s for s, norms in eval_norms.items() if pool.loc[leaked, "norm"].isin(norms).any()]
        logger.warning(
            "Dropped %s whose text also appears in %s (case and spacing ignored): train/%s leakage, kept out of "
            "training so that no score is of a text trained on; more than a few repeated complaints means the %s "
            "data was drawn from the training data",
            share(leaked.sum(), len(leaked), "training"),
            " and ".join(into),
            "/".join(into),
            " and ".join(into),
        )
    pool = pool[~leaked]

    warn_split_spellings(pool["label"], log)
    counts = pool["label"].value_counts()
    rare = sorted(counts[counts < args.min_class_count].index)
    log["dropped_rare_classes"] = {label: int(counts[label]) for label in rare}
    log["dropped_rare_class_rows"] = int(counts[rare].sum())
    log["min_class_count"] = args.min_class_count
    if rare:
        logger.info(
            "Dropped %d classes with < %d training rows (%d rows)",
            len(rare),
            args.min_class_count,
            counts[rare].sum(),
        )
    pool = pool[~pool["label"].isin(rare)]

    splits = dict(clean)
    if args.split_indices:
        splits.update(apply_split_indices(args.split_indices, pool, clean))
    elif "validation" not in clean:
        is_val = stratified_group_split(
            pool["label"], pool["norm"], args.validation_split_fraction, args.split_seed
        )
        splits["train"], splits["validation"] = pool[~is_val], pool[is_val]
        log["validation_from_train"] = {"fraction": args.validation_split_fraction, "seed": args.split_seed}
    else:
        splits["train"] = pool

    caps = {
        "train": args.max_train_samples,
        "validation": args.max_eval_samples,
        "test": args.max_predict_samples,
    }
    # a seeded sample of each capped split, said in the log and the report: only the command line said it, beside
    # "kept 6,782" training rows for a run trained on 600
    capped = {s: (caps[s], len(df)) for s, df in splits.items() if caps[s] is not None and len(df) > caps[s]}
    if capped:
        log["capped_rows"] = {s: {"kept": n, "of": total} for s, (n, total) in capped.items()}
        logger.info(
            "Row caps (a seeded sample, --split_seed %d): %s",
            args.split_seed,
            ", ".join(f"{s} {n} of {total}" for s, (n, total) in capped.items()),
        )
    splits = {s: cap(df, caps[s], args.split_seed) for s, df in splits.items()}

    label_names = sorted(splits["train"]["label"].unique())
    label2id = {name: i for i, name in enumerate(label_names)}
    for s in ("validation", "test"):
        if s in splits:
            unseen = ~splits[s]["label"].isin(label2id)
            log[f"{s}_excluded_unseen_labels"] = int(unseen.sum())
            if unseen.any():
                missed = sorted(splits[s].loc[unseen, "label"].unique())
                hint = spelling_hint(missed, label_names)
                log[f"{s}_unseen_label_hint"] = hint or None
                logger.warning(
                    "%s: %d rows (%d labels) never seen in training are excluded from metrics: %s%s",
                    s,
                    unseen.sum(),
                    len(missed),
                    missed[:10],
                    f". {hint}" if hint else "",
                )
            splits[s] = splits[s][~unseen]
    for s, df in splits.items():
        splits[s] = df.assign(label_id=df["label"].map(label2id).astype(int)).reset_index(drop=True)
    train_counts = splits["train"]["label_id"].value_counts().to_dict()
    log["rows"] = {s: len(df) for s, df in splits.items()}
    log["num_classes"] = len(label_names)
    logger.info("Final rows per split: %s; %d classes", log["rows"], len(label_names))
    return PreparedData(splits=splits, label_names=label_names, train_counts=train_counts, log=log)


def warn_split_spellings(labels: pd.Series, log: dict) -> None:
    """A warning when training labels differ only in case or spacing ('Opening an account', 'OPENING AN ACCOUNT':
    two exports joined): each spelling is a class of its own, its rows split between them, without a word. They
    are not merged (labels are never rewritten silently; a taxonomy or merge map's spellings are read as theirs)."""
    counts = labels.value_counts()
    groups: dict[str, list[str]] = {}
    for label in sorted(counts.index):
        groups.setdefault(label_key(label), []).append(label)
    split = [found for found in groups.values() if len(found) > 1]
    log["labels_split_by_spelling"] = len(split)
    if split:
        examples = "; ".join(
            " vs ".join(
                f"{label!r} ({counts[label]:,} row{'s' if counts[label] != 1 else ''})" for label in found
            )
            for found in split[:3]
        )
        logger.warning(
            "train: %d labels are written in more than one case or spacing, each spelling a class of its own: "
            "%s%s: write each label one way (a --label_taxonomy's spellings are read as its)",
            len(split),
            examples,
            "; ..." if len(split) > 3 else "",
        )


def share(part: int, whole: int, rows: str) -> str:
    """`300 of 1,600 training rows (18.8%)`."""
    return f"{part:,} of {whole:,} {rows} rows ({100 * part / whole:.1f}%)"


def apply_split_indices(path: str, pool: pd.DataFrame, clean: dict) -> dict[str, pd.DataFrame]:
    """Rebuild the splits from saved row ids (a run's splits.json).

    Train ids (and validation ids when the source has no validation split) index the training
    source; other splits index their own source. Ids that cleaning removed are reported.
    """
    wanted = read_json_file(path, "--split_indices")
    if not isinstance(wanted, dict):
        raise DataError(
            f"{path} (--split_indices): expected an object of row ids per split, got {type(wanted).__name__}"
        )
    digests = wanted.pop(TEXTS_KEY, None)  # written since the check below; older files have only the ids
    unknown = set(wanted) - set(SPLITS)
    if unknown or "train" not in wanted:
        raise DataError(f"{path}: expected keys among {SPLITS} including 'train', found {sorted(wanted)}")
    not_ids = [
        split
        for split, ids in wanted.items()
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ]
    if not_ids:
        raise DataError(
            f"{path} (--split_indices): the ids of {not_ids} must be a list of integer row ids, got "
            + ", ".join(f"{split}: {str(wanted[split])[:60]}" for split in not_ids)
        )
    if digests is not None and not (
        isinstance(digests, dict)
        and all(isinstance(d, dict) and all(isinstance(v, str) for v in d.values()) for d in digests.values())
    ):
        raise DataError(
            f"{path} (--split_indices): '{TEXTS_KEY}' must map each split to {{row id: text digest}}, got "
            f"{str(digests)[:60]} (remove the key to use the ids unchecked)"
        )
    if digests is not None and set(digests) - set(wanted):  # a misspelt split's ids would go unchecked
        raise DataError(
            f"{path} (--split_indices): '{TEXTS_KEY}' names {sorted(set(digests) - set(wanted))}, which have no ids "
            f"(splits with ids: {sorted(wanted)})"
        )
    if "validation" not in wanted and "validation" not in clean:
        raise DataError(
            f"{path} (--split_indices) has no 'validation' ids and the data has no validation split: add the "
            "validation ids (a run's splits.json has them) or pass --validation_file"
        )
    out = {}
    for split, ids in wanted.items():
        source = pool if split == "train" or split not in clean else clean[split]
        picked = source[source["row_id"].isin(set(ids))]
        if len(picked) < len(ids):
            logger.warning(
                "%s: %d of %d ids from %s are not among the clean rows",
                split,
                len(ids) - len(picked),
                len(ids),
                path,
            )
        if digests and split in digests:  # ids without a digest (added by hand) are taken unchecked
            recorded = digests[split]
            # a digest of 16 hex digits is of the normalised text (case and spacing ignored, as the leak guard
            # does), one of 8 of the stripped text (files written before): `digest_matches`
            other = [
                i
                for i, t, n in zip(picked["row_id"], picked["text"], picked["norm"])
                if str(i) in recorded and not digest_matches(recorded[str(i)], t, n)
            ]
            if other:
                raise DataError(
                    f"{path} (--split_indices): {len(other)} of its {len(ids)} {split} ids name other texts here "
                    f"than in the run that wrote it (e.g. row ids {[int(i) for i in other[:5]]}; ids are row "
                    "positions: another data file, an export downloaded again with rows added or reordered, "
                    "another --split_seed on the synthetic set, or other cleaning options). Pass the data that run "
                    "read, or drop --split_indices to split this data afresh."
                )
        out[split] = picked
    return out


def spelling_hint(unseen: list[str], known: list[str]) -> str:
    """A note when labels unseen in training are training labels written another way: another case or
    spacing, or a number written as a float ('3.0', as pandas writes an integer column with a gap) or not."""

    def key(label: str) -> str:
        text = label_key(label)
        try:
            number = float(text)
        except ValueError:
            return text
        return str(int(number)) if number.is_integer() else str(number)

    by_key = {key(k): k for k in known}
    pairs = [(u, by_key[key(u)]) for u in unseen if key(u) in by_key]
    if not pairs:
        return ""
    examples = ", ".join(f"{u!r} vs {k!r}" for u, k in pairs[:3])
    return (
        f"{len(pairs)} of them match a training label written differently ({examples}): write each label the "
        "same way in every file"
    )


def require_usable_splits(data: PreparedData, do_predict: bool) -> None:
    """Stop before any model is built or trained when cleaning left nothing to learn from or to score (a
    library would fail later, after training, about empty arrays), or --do_predict has no test split."""
    require_test_split(data, do_predict)
    log = data.log
    steps = [f"{s}: {log[s]}" for s in SPLITS if s in log]
    if log.get("dropped_train_duplicates_of_eval"):
        steps.append(f"{log['dropped_train_duplicates_of_eval']} training rows repeat a validation/test text")
    if log.get("dropped_rare_classes"):
        steps.append(
            f"{len(log['dropped_rare_classes'])} classes ({log['dropped_rare_class_rows']} rows) have fewer than "
            f"--min_class_count {log['min_class_count']} training rows"
        )
    dropped = "; ".join(steps)
    if data.splits["train"].empty:
        raise DataError(f"No training rows left ({dropped})")
    if len(data.label_names) < 2:
        raise DataError(
            f"The training rows hold {len(data.label_names)} class ({data.label_names}): a classifier needs at "
            f"least two ({dropped})"
        )
    for s in ("validation", "test") if do_predict else ("validation",):  # test is read only to be scored
        if s in data.splits and data.splits[s].empty:
            unseen = log.get(f"{s}_excluded_unseen_labels", 0)
            read = log.get(s, {}).get("rows_read")
            raise DataError(
                f"The {s} split has no rows left to score"
                + (f": all {unseen} of its rows carry labels never seen in training" if unseen else "")
                + (": its file has no data rows, only a header" if read == 0 else "")
                + (f". {hint}" if (hint := log.get(f"{s}_unseen_label_hint")) else "")
                + f" ({dropped}). Check --label_column and the {s} data"
                + (", or --validation_split_fraction" if s == "validation" else "")
            )


def require_test_split(data: PreparedData, do_predict: bool) -> None:
    """Fail before any training when --do_predict has no test split to score."""
    if do_predict and "test" not in data.splits:
        raise DataError(
            "--do_predict needs a test split: pass --test_file or use a data set with a test split"
        )


# splits.json's key for the digests of the texts each split's ids name: --split_indices checks them, and
# `longtail.score` leaves out new rows whose text a run trained or was selected on
TEXTS_KEY = "text_digests"
DIGEST_HEX = 16  # written now: the first 16 hex digits (64 bits) of the SHA-256 of `normalise_text(text)`
LEGACY_DIGEST_HEX = 8  # written before: the first 8 hex digits (32 bits) of the SHA-256 of the stripped text


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def norm_digest(norm: str) -> str:
    """`text_digest` of a text already normalised (`normalise_text`, the `norm` column)."""
    return _sha256_hex(norm)[:DIGEST_HEX]


def text_digest(text) -> str:
    """The first 16 hex digits of the SHA-256 of a text's `normalise_text` (case and runs of whitespace ignored, as
    the recipes' leak guard tells texts apart): the digest splits.json records now. Texts that differ only in case
    or spacing (a file re-saved with CRLF inside narratives) share it; 64 bits, so two other texts share one with
    odds of about 1 in 10^19, against 1 in 4 * 10^9 for the 8 digits written before (`legacy_text_digest`)."""
    return norm_digest(normalise_text(str(text)))


def legacy_text_digest(text) -> str:
    """The digest splits.json recorded before `text_digest`: the first 8 hex digits of the SHA-256 of the text as
    cleaning kept it (stripped), so case and spacing counted. Still read: a recorded digest's length tells it."""
    return _sha256_hex(str(text))[:LEGACY_DIGEST_HEX]


def digest_matches(recorded: str, text, norm: str | None = None) -> bool:
    """Whether a digest splits.json recorded names this text: one of DIGEST_HEX digits is compared with
    `text_digest` (of `norm`, the text's `normalise_text`, when given), any other with `legacy_text_digest` (a
    file written before: 8 digits of the stripped text)."""
    if len(recorded) == DIGEST_HEX:
        return recorded == (norm_digest(norm) if norm is not None else text_digest(text))
    return recorded == legacy_text_digest(text)


def split_ids(data: PreparedData) -> dict:
    """Row ids per split, for `splits.json` (feed back with --split_indices), and under `text_digests` a digest of
    the text each id names ({split: {id: digest}}): ids are positions in the data files, so the same ids on a
    re-downloaded export (rows added or reordered), another file or another synthetic --split_seed name other
    texts. Each digest is `text_digest`: 16 hex digits of the SHA-256 of the normalised text (files written before
    hold 8 hex digits of the stripped text, `legacy_text_digest`; this code tells the two by length. Code from
    before 16-digit digests refuses a file with them: it reads every id as naming another text)."""
    rows = {s: df.sort_values("row_id", kind="stable") for s, df in data.splits.items()}
    ids = {s: [int(i) for i in df["row_id"]] for s, df in rows.items()}
    # keyed by id (JSON keys are text), so ids removed or added by hand keep the others checked
    digests = {
        s: {
            str(int(i)): norm_digest(n)
            for i, n in zip(df["row_id"], df["norm"] if "norm" in df else normalised(df["text"].astype(str)))
        }
        for s, df in rows.items()
    }
    return ids | {TEXTS_KEY: digests}


# ---------------------------------------------------------------------------------------------
# Slices
# ---------------------------------------------------------------------------------------------

DOLLAR_OR_NUMBER = re.compile(r"\$\s?\d|\b\d{4,}\b|\b\d{1,3}(?:,\d{3})+\b")


def slice_masks(texts: pd.Series) -> dict[str, np.ndarray]:
    """Boolean masks for the report's slices: length (words), redaction (XXXX), numbers."""
    words = texts.str.split().str.len().to_numpy()
    return {
        "length<35": words < 35,
        "length35-65": (words >= 35) & (words <= 65),
        "length>65": words > 65,
        "redacted": texts.str.contains("XXXX", regex=False).to_numpy(),
        "not_redacted": ~texts.str.contains("XXXX", regex=False).to_numpy(),
        "numeric": texts.str.contains(DOLLAR_OR_NUMBER).to_numpy(),
        "not_numeric": ~texts.str.contains(DOLLAR_OR_NUMBER).to_numpy(),
    }
