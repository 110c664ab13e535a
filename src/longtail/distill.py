"""Knowledge distillation (Hinton et al. 2015): the loss, the Trainer, and cached teacher logits.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * hard loss(s, y)

T^2 keeps the soft term's gradients on the scale of the hard term's as T grows; the KL runs from the
teacher's distribution to the student's (the student is pulled towards the teacher), computed from
log-probabilities on both sides. The hard loss is the recipe's long-tail loss (plain CE by default).

Teacher logits are computed once per (teacher, data rows, max_length) and cached in a Parquet file
keyed by (split, row_id), with a fingerprint of all three in the file's metadata: a rerun reuses the
file, any change rebuilds it. They reach `compute_loss` through the batch, as the column
`teacher_logits`, which `remove_unused_columns` would otherwise drop (transformers#19599).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType

import numpy as np
import torch
import torch.nn.functional as F

from longtail.cli import UsageError, reading_model
from longtail.data import DataError, PreparedData
from longtail.losses import LongTailTrainer
from longtail.metrics import accuracy, macro_f1

logger = logging.getLogger(__name__)

TEACHER_COLUMN = "teacher_logits"
CACHE_FILE = "teacher_logits.parquet"
METADATA_KEY = b"longtail"
DISTILL_SPLITS = ("train", "validation")
# train macro-F1 above validation's by more than this: the teacher was fit on the student's training rows
IN_SAMPLE_GAP = 0.1
# files that decide a teacher's logits (weights, config, tokenizer); reports and checkpoints do not
TEACHER_FILE_PATTERNS = (
    "*.safetensors",
    "config.json",
    "adapter_config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "*.model",
)


@dataclass
class DistillArguments:
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Trained classifier folder (full model, or a LoRA/QLoRA run folder with adapter_config.json) "
            "whose logits the student learns from; it uses its own tokenizer."
        },
    )
    teacher_base_model: str | None = field(
        default=None, metadata={"help": "Base model of a LoRA teacher, if not the one its adapter names."}
    )
    teacher_logits: str | None = field(
        default=None,
        metadata={
            "help": "Precomputed teacher logits instead of a teacher model: a Parquet/Arrow file (columns split, "
            "row_id, logits; label_names in its metadata) or a run folder with predictions_train.npz and "
            "predictions_validation.npz (log-probabilities are used as logits)."
        },
    )
    teacher_max_length: int | None = field(
        default=None, metadata={"help": "Teacher's truncation length (default: --max_length)."}
    )
    teacher_batch_size: int = field(default=32, metadata={"help": "Batch size of the teacher's pass."})
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": f"Teacher-logits cache file (default: <output_dir>/{CACHE_FILE})."},
    )
    teacher_drop_extra_labels: bool = field(
        default=False,
        metadata={
            "help": "Drop teacher classes the student does not have (e.g. a student trained on capped rows) "
            "instead of failing."
        },
    )
    kd_temperature: float = field(default=4.0, metadata={"help": "Softening temperature T of the KD term."})
    kd_alpha: float = field(default=0.7, metadata={"help": "Weight of the KD term (1 - alpha: hard loss)."})
    vanilla_run: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a finished run of the same student without distillation (its "
            "predictions_validation.npz): the comparison's vanilla arm. Default: train it here."
        },
    )
    train_vanilla: bool = field(
        default=True,
        metadata={
            "help": "Without --vanilla_run, train the same student with the hard loss alone (same seed and "
            "schedule) into <output_dir>/vanilla for the comparison."
        },
    )

    def __post_init__(self):
        for name in ("teacher_model_name_or_path", "teacher_logits", "vanilla_run"):
            if getattr(self, name) in ("", "none", "None"):  # lets the command line unset a YAML value
                setattr(self, name, None)
        if bool(self.teacher_model_name_or_path) == bool(self.teacher_logits):
            raise ValueError("Pass exactly one of --teacher_model_name_or_path and --teacher_logits")
        if not 0 < self.kd_temperature < float("inf"):  # inf passed "> 0" and made the KD term NaN
            raise ValueError(f"--kd_temperature must be a finite number > 0, got {self.kd_temperature}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"--kd_alpha must be in [0, 1], got {self.kd_alpha}")
        # a batch size below 1 scored no row (all-zero logits: a uniform teacher, cached); a teacher_max_length
        # of 0 fell back to --max_length unsaid, a negative one failed inside the tokenizer after loading
        if self.teacher_batch_size < 1:
            raise ValueError(f"--teacher_batch_size must be >= 1, got {self.teacher_batch_size}")
        if self.teacher_max_length is not None and self.teacher_max_length < 1:
            raise ValueError(f"--teacher_max_length must be >= 1 (tokens), got {self.teacher_max_length}")


# ---------------------------------------------------------------------------------------------
# Loss and Trainer
# ---------------------------------------------------------------------------------------------


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.to(student_logits.device).float() / temperature, dim=-1)
    # kl_div(input, target) = sum target * (log target - input): target is the teacher
    return temperature**2 * F.kl_div(s, t, reduction="batchmean", log_target=True)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
    hard_loss: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * hard loss (CE unless given)."""
    hard = F.cross_entropy(student_logits.float(), labels) if hard_loss is None else hard_loss
    return alpha * kd_term(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard


class DistillationTrainer(LongTailTrainer):
    """LongTailTrainer whose loss adds the KD term when the batch carries `teacher_logits`.

    Batches without them (test rows) get the hard loss alone. `num_items_in_batch` is accepted and not
    needed: both terms are per-batch means, and Trainer scales them for gradient accumulation.
    """

    def __init__(self, *args, temperature: float = 4.0, alpha: float = 0.7, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha = temperature, alpha

    def _set_signature_columns_if_needed(self):
        # keep the teacher's logits although the model's forward() has no such argument
        super()._set_signature_columns_if_needed()
        if TEACHER_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        teacher = inputs.pop(TEACHER_COLUMN, None)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        hard = self.hard_loss(logits, labels)
        loss = (
            hard
            if teacher is None
            else distillation_loss(logits, teacher, labels, self.temperature, self.alpha, hard_loss=hard)
        )
        return (loss, outputs) if return_outputs else loss


class DistillationCollator:
    """Dynamic padding for the tokens, plus the teacher's logits stacked as a float32 tensor."""

    def __init__(self, tokenizer):
        from longtail.training import padding_collator

        self.pad = padding_collator(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        teacher = [f[TEACHER_COLUMN] for f in features] if TEACHER_COLUMN in features[0] else None
        batch = self.pad([{k: v for k, v in f.items() if k != TEACHER_COLUMN} for f in features])
        if teacher is not None:
            batch[TEACHER_COLUMN] = torch.tensor(np.asarray(teacher, dtype=np.float32))
        return batch


def add_teacher_column(datasets: dict, logits: Mapping[str, np.ndarray]) -> dict:
    """The tokenised splits with `teacher_logits` added where the teacher scored the rows (train, validation)."""
    out = dict(datasets)
    for split, values in logits.items():
        out[split] = datasets[split].add_column(TEACHER_COLUMN, [row for row in values.astype(np.float32)])
    return out


# ---------------------------------------------------------------------------------------------
# Label maps
# ---------------------------------------------------------------------------------------------


class LabelMapError(UsageError):
    pass


def label_columns(
    teacher_labels: Sequence[str], student_labels: Sequence[str], source: str, drop_extra: bool = False
) -> np.ndarray:
    """Column index in the teacher's logits of each student label, in the student's order.

    A student label the teacher lacks is always an error; a teacher label the student lacks is one
    unless `drop_extra` (those columns are then left out, and the softmax renormalises over the rest).
    """
    teacher_labels, student_labels = [str(x) for x in teacher_labels], [str(x) for x in student_labels]
    missing = sorted(set(student_labels) - set(teacher_labels))
    extra = sorted(set(teacher_labels) - set(student_labels))
    if missing or (extra and not drop_extra):
        parts = []
        if missing:
            parts.append(f"labels of the student's data missing from the teacher: {missing}")
        if extra:
            parts.append(f"teacher labels absent from the student's training data: {extra}")
        raise LabelMapError(
            f"The label maps of the teacher ({source}, {len(teacher_labels)} labels) and the student "
            f"({len(student_labels)} labels) differ: "
            + "; ".join(parts)
            + ". Train both on the same data and label options"
            + (
                ""
                if missing
                else ", or pass --teacher_drop_extra_labels true to ignore the teacher's extra ones"
            )
            + "."
        )
    if extra:
        logger.warning("Dropping %d teacher labels the student does not have: %s", len(extra), extra[:10])
    position = {name: i for i, name in enumerate(teacher_labels)}
    return np.array([position[name] for name in student_labels], dtype=np.int64)


def config_labels(config) -> list[str]:
    return [config.id2label[i] for i in sorted(int(k) for k in config.id2label)]


# ---------------------------------------------------------------------------------------------
# Fingerprints and the cache file
# ---------------------------------------------------------------------------------------------


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def teacher_fingerprint(
    teacher: str, base_model: str | None = None, base: str | None | EllipsisType = ...
) -> str:
    """Hash of the files that decide the teacher's outputs (a local folder), or of its Hub id and the commit the
    local Hub cache holds as its main (`probe.hub_commit`, offline: by its id alone, a teacher updated on the Hub
    reused the old one's logits; `teacher_config` has just resolved it, so that is the commit it loads). A LoRA
    teacher's base counts too, named by --teacher_base_model or by its adapter_config.json (a run folder's, or a Hub
    adapter repo's, which Transformers loads on that base: keyed by the adapter's commit alone, a base since
    updated reused the old logits): a local folder by its files (by its name alone, a retrained base reused a stale
    cache), a Hub id with the commit the cache holds as its main (`resolve_hub_base` has just resolved it, as
    `teacher_config` the teacher: the last one downloaded, with no resolve, reused logits of a base since updated).
    `base`: the base `resolve_hub_base` returned (None: a whole model), so a pass reads adapter_config.json once
    (a Hub adapter's is a Hub request online); left out, it is read here."""
    from longtail.probe import hub_commit

    path = Path(teacher)
    if base is ...:
        base = base_model or adapter_base(teacher)
    if not path.is_dir():
        own = ("hub", teacher, hub_commit(teacher))
        if not base:  # a whole model: the key it always had
            return _digest(*own, base_model)
        own = _digest(*own)
    else:
        h = hashlib.sha256()
        files = sorted({f for pattern in TEACHER_FILE_PATTERNS for f in path.glob(pattern) if f.is_file()})
        for f in files:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        own = h.hexdigest()
    if base and Path(base).is_dir() and Path(base).resolve() != path.resolve():
        return _digest(own, "local base", teacher_fingerprint(base))
    if base and not Path(base).is_dir():  # a Hub id: the commit of it the cache holds
        return _digest(own, base_model, "hub base", base, hub_commit(base))
    return _digest(own, base_model)


def adapter_base(teacher: str | Path) -> str | None:
    """The base model an adapter's adapter_config.json names, for a run folder or a Hub adapter repo (its file as
    Transformers finds it when loading the repo: online, the Hub's main, downloaded into the cache; offline, the
    cache's); None for no adapter (or a damaged one: its load reports it)."""
    from transformers.utils import find_adapter_config_file

    path = Path(teacher)
    try:
        file = path / "adapter_config.json" if path.is_dir() else find_adapter_config_file(str(teacher))
        if file is None or not Path(file).is_file():
            return None
        return json.loads(Path(file).read_text("utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def resolve_hub_base(teacher: str, base_model: str | None = None) -> str | None:
    """A LoRA teacher's base named by a Hub id, resolved as `teacher_config` resolves a Hub teacher (its config
    loaded: online, the Hub's current main, downloaded into the cache; offline, the cache's main), so the commit
    `teacher_fingerprint` keys it with is the one loading it reads. A base neither cached nor on the Hub: the
    error loading it gives, before any weights load. Returns the base (for `teacher_fingerprint`)."""
    from longtail.adapters import ensure_base_available

    base = base_model or adapter_base(teacher)  # None for a whole model: no base to load it on
    if base and not Path(base).is_dir():
        ensure_base_available(base, teacher)
    return base


def data_fingerprint(data: PreparedData, splits: Sequence[str] = DISTILL_SPLITS) -> str:
    """Hash of the rows the teacher scores (split, row id, text) and of the label order."""
    h = hashlib.sha256(json.dumps(list(data.label_names)).encode())
    for split in splits:
        df = data.splits[split]
        h.update(split.encode())
        h.update(df["row_id"].to_numpy(np.int64).tobytes())
        for text in df["text"]:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()


def write_logits_file(path, logits: Mapping[str, np.ndarray], data: PreparedData, metadata: dict) -> Path:
    """Parquet: one row per (split, row_id) with the logits in the student's label order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = list(logits)
    num_labels = len(data.label_names)
    flat = np.concatenate([logits[s].astype(np.float32).reshape(-1) for s in splits])
    table = pa.table(
        {
            "split": pa.array([s for s in splits for _ in range(len(logits[s]))], pa.string()),
            "row_id": pa.array(np.concatenate([data.splits[s]["row_id"].to_numpy(np.int64) for s in splits])),
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), num_labels),
        }
    )
    meta = {"label_names": list(data.label_names), **metadata}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_logits_table(path) -> tuple[dict, dict[str, dict[int, np.ndarray]]]:
    """(metadata, {split: (row_ids, logits)}) of a Parquet or Arrow (IPC/Feather) logits file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.feather
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Teacher logits file not found: {path}")
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pyarrow.feather.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"Could not read {path} as Parquet/Arrow teacher logits: {err}") from None
    missing = [c for c in ("split", "row_id", "logits") if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {missing}; a teacher-logits file needs split, row_id and logits "
            f"(found {table.column_names})"
        )
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    nulls = [f"{c} ({n} rows)" for c in ("split", "row_id", "logits") if (n := table.column(c).null_count)]
    if nulls:
        raise DataError(f"{path} has empty (null) cells in: {', '.join(nulls)}")
    logits, kind = table.column("logits").combine_chunks(), table.column("logits").type
    if not (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ) or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise DataError(f"{path}: its logits column holds {kind}, not a list of numbers per row")
    split = np.asarray(table.column("split").to_pylist(), dtype=str)
    row_id = table.column("row_id").to_numpy().astype(np.int64)
    widths = pc.list_value_length(logits).to_numpy(zero_copy_only=False)
    expected = len(meta["label_names"]) if "label_names" in meta else widths[0] if len(widths) else 0
    wrong = np.flatnonzero(widths != expected)
    if len(wrong):
        raise DataError(
            f"{path}: {len(wrong)} of {len(widths)} rows have "
            + " or ".join(str(w) for w in sorted(set(widths[wrong].tolist())))
            + " logits, but "
            + (
                f"its metadata lists {expected} label_names"
                if "label_names" in meta
                else f"the first has {expected}"
            )
            + f" (rows {_rows(split[wrong], row_id[wrong])})"
        )
    values = logits.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), expected)
    return meta, {str(s): (row_id[split == s], values[split == s]) for s in np.unique(split)}


def _rows(splits, row_ids, n: int = 5) -> str:
    """A few (split, row id) pairs for an error message."""
    pairs = ", ".join(f"{s} {i}" for s, i in list(zip(splits, row_ids, strict=True))[:n])
    return pairs + ("..." if len(row_ids) > n else "")


def align_rows(
    by_split: Mapping[str, tuple[np.ndarray, np.ndarray]],
    data: PreparedData,
    source: str,
    splits: Sequence[str] = DISTILL_SPLITS,
) -> dict[str, np.ndarray]:
    """Values in the order of data.splits[split] rows, looked up by row id; missing rows are an error."""
    out = {}
    for split in splits:
        if split not in by_split:
            raise DataError(f"{source} has no logits for the {split} split (found: {sorted(by_split)})")
        ids, values = by_split[split]
        unique, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        if (counts > 1).any():
            repeated = unique[counts > 1].tolist()
            raise DataError(
                f"{source}: {len(repeated)} {split} row ids appear more than once (row ids {repeated[:10]}"
                f"{'...' if len(repeated) > 10 else ''}); each (split, row_id) needs exactly one row of logits."
            )
        index = {int(i): k for k, i in enumerate(ids)}
        wanted = data.splits[split]["row_id"].to_numpy(np.int64)
        absent = [int(i) for i in wanted if int(i) not in index]
        if absent:
            raise DataError(
                f"{source}: {len(absent)} of {len(wanted)} {split} rows have no teacher logits (row ids "
                f"{absent[:10]}...). The teacher was scored on other rows: use the same data, split and "
                "cleaning options."
            )
        out[split] = values[[index[int(i)] for i in wanted]]
    return out


def require_finite(
    logits: Mapping[str, np.ndarray], data: PreparedData, source: str
) -> dict[str, np.ndarray]:
    """`logits` unchanged, or an error naming the rows with NaN or infinite teacher logits (they would turn
    the KD loss, then the student's weights, into NaN)."""
    for split, values in logits.items():
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            ids = data.splits[split]["row_id"].to_numpy()[bad].tolist()
            raise DataError(
                f"{source}: {len(bad)} of {len(values)} {split} rows have NaN or infinite teacher logits (row ids "
                f"{ids[:10]}{'...' if len(ids) > 10 else ''}). Fix or rescore the teacher (log-probabilities of "
                "0 are -inf: clip the probabilities first)."
            )
    return dict(logits)


def load_precomputed(path, data: PreparedData, drop_extra: bool = False) -> dict[str, np.ndarray]:
    """Teacher logits from a Parquet/Arrow file or a run folder's predictions_{train,validation}.npz."""
    path = Path(path)
    if path.is_dir():
        return load_run_predictions(path, data, drop_extra)
    meta, by_split = read_logits_table(path)
    if "label_names" not in meta:
        raise DataError(
            f"{path} has no label_names in its metadata (key 'longtail'): the column order of its logits is "
            "unknown. Write it with longtail.distill.write_logits_file."
        )
    cols = label_columns(meta["label_names"], data.label_names, str(path), drop_extra)
    return {s: v[:, cols] for s, v in align_rows(by_split, data, str(path)).items()}


def read_run_predictions(path: Path) -> dict[str, np.ndarray]:
    """A run folder's predictions file as `compare.read_predictions` reads and checks it (an unreadable or
    malformed file, rows that are not probabilities: logits saved as probs), its one-line error a DataError:
    `report.load_predictions` alone gave a KeyError traceback, and used logits as probabilities without a word."""
    from longtail.compare import CompareError, read_predictions

    try:
        return read_predictions(path)
    except CompareError as err:
        raise DataError(str(err)) from None


def load_run_predictions(
    run_dir: Path, data: PreparedData, drop_extra: bool = False
) -> dict[str, np.ndarray]:
    """A finished run (e.g. the TF-IDF baseline with --predict_train true) as the teacher: its saved
    probabilities per row; its gold labels must match the student's rows (same data, same split)."""
    from longtail.calibration import log_probs
    from longtail.crossfit import train_prediction_folds

    by_split, names = {}, None
    for split in DISTILL_SPLITS:
        file = run_dir / f"predictions_{split}.npz"
        if not file.is_file():
            # the README's teachers: TF-IDF and probe runs with --predict_train true, or an ensemble of such runs
            hint = (
                (
                    " (an ensemble writes it only when every member ran with --predict_train true: rebuild it from "
                    "such members)"
                    if (run_dir / "ensemble.json").is_file()
                    else " (baseline_tfidf and probe_encoder write it with --predict_train true)"
                )
                if split == "train"
                else ""
            )
            raise DataError(f"{run_dir} has no {file.name}{hint}: it cannot serve as a teacher")
        pred = read_run_predictions(file)
        names = [str(x) for x in pred["label_names"]]
        by_split[split] = (pred["row_id"], log_probs(pred["probs"]), pred["y_true"])
    folds = train_prediction_folds(run_dir)
    if not folds:  # legal (the course's KD does it), but the targets then mostly repeat the labels: say so
        logger.warning(
            "%s: its predictions_train.npz %s. A teacher scoring the rows it was fit on is near-certain there "
            "(TF-IDF on CFPB: train macro-F1 0.95 against 0.27 on validation), so the KD targets add little beyond "
            "the labels; rerun it (an ensemble: its members) with --predict_train true, which cross-fits them by default",
            run_dir,
            "is in-sample (--predict_train_folds 0)"
            if folds == 0
            else "does not record how it was made (no predict_train_folds in run_config.json: a run from before "
            "cross-fitting, or another tool's)",
        )
    cols = label_columns(names, data.label_names, str(run_dir), drop_extra)
    logits = align_rows({s: v[:2] for s, v in by_split.items()}, data, str(run_dir))
    for split in DISTILL_SPLITS:  # the same rows must carry the same gold labels
        ids, _, y = by_split[split]
        gold = dict(zip(ids.tolist(), np.asarray(names)[y].tolist(), strict=True))
        df = data.splits[split]
        wrong = int(sum(gold[int(i)] != label for i, label in zip(df["row_id"], df["label"], strict=True)))
        if wrong:
            raise DataError(
                f"{run_dir}: {wrong} of {len(df)} {split} rows have another gold label in the teacher run: it "
                "was trained on different data or label options."
            )
    return {s: v[:, cols] for s, v in logits.items()}


# ---------------------------------------------------------------------------------------------
# Running the teacher
# ---------------------------------------------------------------------------------------------


def teacher_config(teacher: str):
    """The config of --teacher_model_name_or_path, or an error saying what the path is instead."""
    from transformers import AutoConfig

    from longtail.inference import register_custom_models
    from longtail.predict import not_transformers

    register_custom_models()  # a probe or LP-FT run (model_type longtail_probe) as the teacher
    path = Path(teacher)
    if path.is_dir() and (what := not_transformers(path)):
        raise UsageError(
            f"--teacher_model_name_or_path {teacher} is {what}, not a Transformers model: pass --teacher_logits "
            f"{teacher} instead (its train predictions come from --predict_train true)"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(
            f"--teacher_model_name_or_path {teacher} has no config.json: not a trained classifier folder"
        )
    with reading_model("--teacher_model_name_or_path", teacher):
        return AutoConfig.from_pretrained(teacher)


def load_teacher(teacher: str, base_model: str | None = None):
    """(model in eval mode, tokenizer, label names) of a trained classifier folder: a full model, or a
    LoRA/QLoRA run folder (adapter + head on its base, reloaded in float32)."""
    from transformers import AutoModelForSequenceClassification

    from longtail.inference import register_custom_models
    from longtail.training import ModelArguments, load_tokenizer

    register_custom_models()  # a probe or LP-FT run (model_type longtail_probe) as the teacher
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=teacher))
    if (Path(teacher) / "adapter_config.json").is_file():
        from longtail.adapters import load_adapter_classifier

        model = load_adapter_classifier(teacher, base_model, dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(teacher, use_safetensors=True).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, config_labels(model.config)


@torch.no_grad()
def teacher_forward(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int) -> np.ndarray:
    """Logits (float32) for `texts`, in order; batches of similar length for less padding."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(device)
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def warn_if_read_otherwise(teacher: str, max_length: int) -> None:
    """A warning when the teacher's run read its texts otherwise than this pass does (truncated at `max_length`):
    another max_length, or a probe trained and served on whole texts in windows, whose soft targets from the first
    tokens alone are not the ones it scored its own rows with."""
    from longtail.inference import serving_defaults

    if not Path(teacher).is_dir():
        return
    served = serving_defaults(teacher)
    if served["source"] == "default" or (
        served["long_text"] != "windows" and served["max_length"] == max_length
    ):
        return
    read = (
        f"whole texts in {served['max_length']}-token windows"
        if served["long_text"] == "windows"
        else f"the first {served['max_length']} tokens"
    )
    logger.warning(
        "The teacher %s read %s (%s); its pass here reads the first %d tokens of each text (--teacher_max_length "
        "sets how many)",
        teacher,
        read,
        served["source"],
        max_length,
    )


def teacher_pass_options(args: DistillArguments) -> list[str]:
    """The teacher-pass options set away from their defaults (a teacher model's pass reads them; logits do not)."""
    defaults = DistillArguments.__dataclass_fields__
    names = ("teacher_base_model", "teacher_max_length", "teacher_batch_size", "teacher_cache")
    return [f"--{n} {getattr(args, n)}" for n in names if getattr(args, n) != defaults[n].default]


def teacher_logits(
    args: DistillArguments, data: PreparedData, output_dir, max_length: int
) -> tuple[dict[str, np.ndarray], dict]:
    """Teacher logits for the train and validation rows (student label order) and a description of
    where they came from: precomputed, reused from the cache, or computed now (and cached)."""
    if args.teacher_logits:
        if unused := teacher_pass_options(args):  # they shape a teacher's pass, and there is none
            logger.warning(
                "--teacher_logits are precomputed: %s not used (they set the teacher's pass)", unused
            )
        logits = load_precomputed(args.teacher_logits, data, args.teacher_drop_extra_labels)
        logits = require_finite(logits, data, f"--teacher_logits {args.teacher_logits}")
        return logits, {"teacher": f"precomputed logits `{Path(args.teacher_logits).name}`", "cache": "none"}

    from longtail.inference import check_max_length
    from longtail.runs import public_model_name

    teacher = args.teacher_model_name_or_path
    if (
        args.teacher_base_model
        and Path(teacher).is_dir()
        and not (Path(teacher) / "adapter_config.json").is_file()
    ):
        # only an adapter is loaded on a base: a whole model's teacher ignored it, unsaid
        raise UsageError(
            f"--teacher_base_model {args.teacher_base_model}: the teacher {teacher} is a whole model, not a LoRA "
            "adapter run, so there is no base to load it on; drop the option"
        )
    max_length = args.teacher_max_length or max_length
    # check the label maps and the length from the config before loading any weights
    config = teacher_config(teacher)  # first: a path not there is named as such, not as a Hub id
    if args.teacher_base_model and not Path(teacher).is_dir():
        # Transformers loads a Hub adapter repo on the base its adapter_config.json names: the option was ignored
        raise UsageError(
            f"--teacher_base_model {args.teacher_base_model}: the teacher {teacher} is a Hub id, loaded as its "
            "repo says (an adapter repo on the base its adapter_config.json names); the option applies to a local "
            "LoRA run folder: drop it, or download the repo and pass its folder"
        )
    cols = label_columns(config_labels(config), data.label_names, teacher, args.teacher_drop_extra_labels)
    option = "--teacher_max_length" if args.teacher_max_length else "--max_length"
    warn_if_read_otherwise(teacher, max_length)
    check_max_length(
        config, max_length, teacher, " for the teacher (--teacher_max_length sets its own)", option
    )
    # before the key: its commit is the one that loads
    base = resolve_hub_base(teacher, args.teacher_base_model)
    fingerprint = _digest(
        teacher_fingerprint(teacher, args.teacher_base_model, base),
        data_fingerprint(data),
        max_length,
        cols.tolist(),
    )
    cache = Path(args.teacher_cache or Path(output_dir) / CACHE_FILE)
    info = {
        "teacher": public_model_name(teacher),
        "teacher_max_length": max_length,
        "cache": str(cache),
        "seen": teacher_seen(teacher, data),  # a run folder: the student's rows it trained on
    }
    if cache.is_file():
        meta, by_split = read_logits_table(cache)
        if meta.get("fingerprint") == fingerprint:
            logger.info("Reusing the teacher logits cached in %s (fingerprint %s)", cache, fingerprint[:12])
            logits = require_finite(align_rows(by_split, data, str(cache)), data, f"the cache {cache}")
            return logits, {**info, "cache_status": "reused"}
        logger.info("Teacher, data or max_length changed since %s was written: recomputing the logits", cache)
    model, tokenizer, _ = load_teacher(teacher, args.teacher_base_model)
    logits = {}
    for split in DISTILL_SPLITS:
        texts = data.splits[split]["text"].tolist()
        logger.info("Teacher %s: scoring %d %s rows", info["teacher"], len(texts), split)
        logits[split] = teacher_forward(model, tokenizer, texts, max_length, args.teacher_batch_size)[:, cols]
    del model
    require_finite(logits, data, f"teacher {info['teacher']}")
    write_logits_file(
        cache,
        logits,
        data,
        {"fingerprint": fingerprint, "teacher": info["teacher"], "max_length": max_length},
    )
    logger.info("Teacher logits cached in %s", cache)
    return logits, {**info, "cache_status": "computed"}


def teacher_seen(teacher: str, data: PreparedData) -> dict | None:
    """How many of the student's train and validation rows a teacher run folder trained on, by text: the rows its
    splits.json (and those of the runs its model started from, `score.started_from`) records for train, and for
    validation too where run_config.json records --refit_with_validation (the saved model was refit on train +
    validation). None where it cannot be told (a Hub id, a folder without splits.json). A refit teacher's validation
    scores on the student's rows are in-sample as well, which the train-vs-validation gap cannot show (the study's
    probe: 0.374 on 293 validation rows it was refit on, against 0.26 on unseen ones)."""
    from longtail.data import TEXTS_KEY, legacy_text_digest, norm_digest, normalised
    from longtail.score import read_json, run_file, started_from

    path = Path(teacher)
    if not path.is_dir() or run_file(path, "splits.json") is None:
        return None
    trained, refit = set(), False
    for run in (path, *started_from(path)):
        splits = run_file(run, "splits.json")
        digests = read_json(splits).get(TEXTS_KEY) if splits else None
        if not isinstance(digests, dict):
            continue
        config = run_file(run, "run_config.json")
        refit_args = read_json(config).get("refit") if config else None
        refit_here = isinstance(refit_args, dict) and bool(refit_args.get("refit_with_validation"))
        refit = refit or refit_here
        for split in ("train", "validation") if refit_here else ("train",):
            trained.update((digests.get(split) or {}).values())
    seen = {"refit": refit}
    for split in DISTILL_SPLITS:
        df = data.splits[split]
        norms = df["norm"] if "norm" in df else normalised(df["text"].astype(str))
        hit = norms.map(norm_digest).isin(trained) | df["text"].map(legacy_text_digest).isin(trained)
        seen[split] = [int(hit.sum()), len(df)]
    return seen


def teacher_fit(logits: dict[str, np.ndarray], data: PreparedData, seen: dict | None = None) -> dict:
    """The teacher's arg-max scored on the student's train and validation rows (macro-F1, accuracy), logged. A
    teacher far surer of the training rows than of validation was fit on them (a fine-tuned run, or in-sample
    predictions), so its soft targets there sit closer to the labels than on unseen text: a warning, with the way out."""
    scores = {}
    for split in DISTILL_SPLITS:
        y, pred = data.splits[split]["label_id"].to_numpy(), logits[split].argmax(axis=1)
        scores[split] = {"macro_f1": macro_f1(y, pred), "accuracy": accuracy(y, pred)}
    scores["in_sample"] = scores["train"]["macro_f1"] - scores["validation"]["macro_f1"] > IN_SAMPLE_GAP
    if seen is not None:
        scores["seen"] = seen
        if seen["validation"][0]:
            logger.warning(
                "The teacher trained on %d of the student's %d validation rows (its run %s): its validation scores "
                "here, and its row in comparison.md, are in-sample too",
                *seen["validation"],
                "was refit on train + validation" if seen["refit"] else "trained on them",
            )
    (logger.warning if scores["in_sample"] else logger.info)(
        "Teacher on the student's rows: %s%s",
        fit_text(scores),
        ". Far higher on train: the teacher was fit on those rows, so its soft targets there sit closer to the labels "
        "than what it says of unseen text; a teacher that has not seen them: --teacher_logits <a run made with "
        "--predict_train true>, "
        "which cross-fits them (baseline_tfidf, probe_encoder, or an ensemble of such runs)"
        if scores["in_sample"]
        else "",
    )
    return scores


def fit_text(scores: dict) -> str:
    text = "train macro-F1 {:.3f} (accuracy {:.3f}), validation {:.3f} ({:.3f})".format(
        scores["train"]["macro_f1"],
        scores["train"]["accuracy"],
        scores["validation"]["macro_f1"],
        scores["validation"]["accuracy"],
    )
    if seen := scores.get("seen"):  # a teacher run folder: the rows it trained on, counted by text
        text += "; its run trained on {} of these {} train rows and {} of these {} validation rows{}".format(
            *seen["train"], *seen["validation"], " (refit on train + validation)" if seen["refit"] else ""
        )
    return text
