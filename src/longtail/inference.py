"""Inference shared by `export`, `predict` and the benchmarks: load a trained classifier folder, batch
texts by length with dynamic padding, and run them through PyTorch or ONNX Runtime.

- `load_model_dir`: a plain classifier folder, a probe folder (`longtail.probe` registers its Auto class
  when present) or a merged adapter; an unmerged adapter folder is merged first or refused clearly.
- `encode_batches`: tokenise once (outside any timed region), sort rows by length and pad each batch to
  its own longest row (or to a fixed length, to measure what padding costs); counts real vs padded tokens.
  `pad_in_batches` does the batching for rows tokenised already (windows, the probe's embedding).
- `text_windows`: whole texts as consecutive max_length windows (`--long_text windows`), and the
  token-weighted mean that puts window outputs back together per text.
- `TorchBackend` / `OrtBackend`: the same `logits(batch)` call on both; the ORT backend verifies its
  execution provider (CUDA requested but ORT would run on CPU is an error, never a silent fallback).
- `cpu_features`: the CPU flags that decide what int8 can gain (avx2 / avx512 / VNNI / AMX / arm64).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import platform
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longtail.cli import MissingInputError, UsageError

logger = logging.getLogger(__name__)

ONNX_SUFFIX = ".onnx"


class ExecutionProviderError(UsageError, RuntimeError):
    """ONNX Runtime would not run on the device that was asked for: one line from a script (a UsageError), still a
    RuntimeError for callers that catch those."""


def register_custom_models() -> None:
    """Import `longtail.probe` when it exists: it registers the probe classifier with the Auto classes."""
    if importlib.util.find_spec("longtail.probe") is not None:
        importlib.import_module("longtail.probe")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def onnx_files(path: str | Path) -> list[Path]:
    return sorted(Path(path).glob(f"*{ONNX_SUFFIX}")) if Path(path).is_dir() else []


def resolve_model_dir(
    model_dir: str | Path, merge_adapter: bool = True, base_model: str | None = None
) -> Path:
    """A folder that `from_pretrained` reads as a plain classifier.

    An adapter run folder is served through its merged model (peft#901, transformers PR#36480): the run's
    `merged/` when it has one, otherwise the adapter is merged now into `<model_dir>/merged` when
    `merge_adapter`, or refused with a message saying how to merge it.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise MissingInputError(f"Model folder not found: {path}")
    if not is_adapter_dir(path):
        if not (path / "config.json").is_file():
            # an export's top folder (`<run>/onnx`) holds one folder per variant: name them
            variants = sorted(d.name for d in path.iterdir() if d.is_dir() and onnx_files(d))
            hint = (
                f": an ONNX export; pass one of its variants, {path}/{{{','.join(variants)}}}"
                if variants
                else ""
            )
            raise MissingInputError(f"{path} has no config.json: not a trained classifier folder{hint}")
        from longtail.runs import adapter_run_above

        if (run := adapter_run_above(path)) is not None:  # a QLoRA run's merged/, given itself
            warn_if_quantized_run(run)
        return path
    merged = path / "merged"
    from longtail.runs import checkpoint_run_above

    # a QLoRA run's adapter checkpoint-N: the run's record (above it) says the base was 4-bit
    warn_if_quantized_run(checkpoint_run_above(path) or path)
    if (merged / "config.json").is_file():
        logger.info("%s is an adapter run: using its merged model %s", path, merged)
        return merged
    if not merge_adapter:
        raise UsageError(
            f"{path} holds an unmerged LoRA adapter: merge it first (rerun with --merge_adapter, or "
            "longtail.adapters.merge_adapter), or allow merging here (--merge_adapter true)."
        )
    from longtail.adapters import merge_adapter as merge

    logger.info("%s is an unmerged adapter: merging it into %s", path, merged)
    return merge(path, merged, base_model)


def warn_if_quantized_run(run: Path) -> None:
    """A QLoRA run is served through its adapter merged into the full-precision base, not the 4-bit model its
    predictions and reports came from (SmolLM2-135M: 15 of 48 test labels changed); it said nothing."""
    if records_quantization(run):
        logger.warning(
            "%s is a 4-bit (QLoRA) run: its adapter is served merged into the full-precision base, whose scores "
            "differ from the 4-bit model's in the run's predictions and report",
            run,
        )


def warn_if_quantized_export(variant: Path) -> None:
    """`warn_if_quantized_run` for an ONNX export's variant folder (`<run>/onnx/fp32`) of a QLoRA run or of its
    `merged/`: the export holds that merged full-precision model too, and served without a word. The run_config.json
    the export copied from the run says so; an export without one (before `merged/`'s exports copied it) is judged
    by the run it was made from (`runs.source_run`, and the adapter run above a `merged/`)."""
    from longtail.runs import adapter_run_above, source_run

    record = variant
    if not (variant / "run_config.json").is_file() and (source := source_run(variant)) is not None:
        record = adapter_run_above(source) or source
    if records_quantization(record):
        logger.warning(
            "%s is an ONNX export of a 4-bit (QLoRA) run (%s): it serves the adapter merged into the full-precision "
            "base, whose scores differ from the 4-bit model's in the run's predictions and report",
            variant,
            record if record != variant else "its run_config.json",
        )


def warn_if_unvetted_export(variant: Path, file_name: str) -> None:
    """An export's variant that its parity check did not pass as `ok` (an int8 kept with the gate off, `ungated`, as
    the inference bench exports; an optimised model that drifted; a failed export kept for inspection): `predict`
    served it without a word, though its parity.json said so (an ungated int8 LP-FT export of the CFPB study agreed
    with PyTorch on 0 of 64 rows, and predict gave it 1 of the run's labels in 50)."""
    try:
        record = json.loads((variant / ".." / "parity.json").read_text("utf-8"))
        entry = record["variants"][variant.resolve().name]
        status, agreement, diff = (
            entry["status"],
            float(entry["argmax_agreement"]),
            float(entry["max_abs_logit_diff"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return  # not an export's variant (or one from before parity.json): nothing recorded to go by
    if status == "ok" or Path(entry.get("file") or file_name).name != file_name:
        return
    logger.warning(
        "%s did not pass the export's parity check (parity.json: status '%s', argmax agreement %.3f with "
        "PyTorch and max |dlogit| %.3g on %s rows%s): its predictions may differ from the run's",
        variant,
        status,
        agreement,
        diff,
        record.get("parity_rows"),
        f"; {entry['reason']}" if entry.get("reason") else "",
    )


def records_quantization(run: Path) -> bool:
    """Whether the run_config.json in `run` records a 4-bit base (QLoRA's `quantization` section)."""
    try:
        return "quantization" in json.loads((run / "run_config.json").read_text("utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _is_modernbert(path: Path) -> bool:
    import json

    return json.loads((path / "config.json").read_text("utf-8")).get("model_type") == "modernbert"


def load_tokenizer_dir(model_dir: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # as training.load_tokenizer did
    return tokenizer


def load_model_dir(
    model_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    merge_adapter: bool = True,
    **from_pretrained_kwargs,
):
    """(model in eval mode, tokenizer, resolved folder) of a trained classifier folder."""
    from transformers import AutoModelForSequenceClassification

    register_custom_models()
    path = resolve_model_dir(model_dir, merge_adapter)
    if _is_modernbert(path) and not str(device).startswith("cuda"):
        # its auto-compile breaks on CPU when triton is installed (transformers#35388)
        from_pretrained_kwargs.setdefault("reference_compile", False)
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=False,
        output_loading_info=True,
        **from_pretrained_kwargs,
    )
    # initialised at random: e.g. a base model's head, which would serve noise (a quantizer, GPU-only here, keeps
    # its own account of the keys it builds)
    if loading["missing_keys"] and "quantization_config" not in from_pretrained_kwargs:
        missing = sorted(loading["missing_keys"])
        raise UsageError(
            f"{path} has no saved weights for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: "
            "a base model or a partial save, not a trained classifier. Pass a run folder of the recipes."
        )
    if "device_map" not in from_pretrained_kwargs and "quantization_config" not in from_pretrained_kwargs:
        model.to(device)
    return model.eval(), load_tokenizer_dir(path), path


# ---------------------------------------------------------------------------------------------
# Batching by length
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    rows: np.ndarray  # positions of the batch's rows in the input
    inputs: dict[str, np.ndarray]  # input_ids, attention_mask (+ token_type_ids), int64

    @property
    def real_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.inputs["attention_mask"].size)


@dataclass
class Batches:
    batches: list[Batch]
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @property
    def real_tokens(self) -> int:
        return sum(b.real_tokens for b in self.batches)

    @property
    def padded_tokens(self) -> int:
        return sum(b.padded_tokens for b in self.batches)

    @property
    def padding_ratio(self) -> float:
        """Tokens computed / real tokens (1.0 = no padding at all)."""
        return self.padded_tokens / max(self.real_tokens, 1)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def encode_batches(
    tokenizer,
    texts: list[str],
    batch_size: int,
    max_length: int,
    *,
    sort_by_length: bool = True,
    pad_to_max_length: bool = False,
    input_names: tuple[str, ...] | None = None,
) -> Batches:
    """Tokenise every text once, then group rows into batches padded to their own longest row.

    Sorting by length (longest first, so a memory problem shows on the first batch) puts rows of similar
    length together and leaves little padding; `pad_to_max_length` pads every batch to `max_length`
    instead, which is what fixed-shape serving does. Row order is restored by the caller from `Batch.rows`.
    """
    if not len(texts):  # the tokenizer fails on an empty batch; nothing to run is no batches
        return Batches([], np.zeros(0, dtype=int))
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    names = input_names or tuple(k for k in tokenizer.model_input_names if k in encoded)
    return pad_in_batches(
        tokenizer, {k: encoded[k] for k in names}, batch_size, sort_by_length=sort_by_length,
        pad_to=max_length if pad_to_max_length else None,
    )  # fmt: skip


def pad_in_batches(
    tokenizer, encoded: dict, batch_size: int, *, sort_by_length: bool = True, pad_to: int | None = None
) -> Batches:
    """Rows tokenised already (`encoded`: input name -> one id list per row) grouped into batches, each
    padded to its longest row (or to `pad_to`); longest rows first unless `sort_by_length` is off."""
    # padding pre-tokenised rows is what we want here (tokenise once, pad per batch): silence the hint
    getattr(tokenizer, "deprecation_warnings", {})["Asking-to-pad-a-fast-tokenizer"] = True
    lengths = np.array([len(ids) for ids in encoded["input_ids"]], dtype=int)
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        features = [{k: v[i] for k, v in encoded.items()} for i in rows]
        padded = tokenizer.pad(
            features, padding="max_length" if pad_to else "longest", max_length=pad_to, return_tensors="np"
        )
        batches.append(Batch(rows, {k: np.asarray(v, dtype=np.int64) for k, v in padded.items()}))
    return Batches(batches, lengths)


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


OFFSET_POSITIONS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "longformer", "mpnet"}
)


def check_max_length(model, max_length: int, name: str, note: str = "", option: str = "--max_length") -> None:
    """`option` within the position table (`max_position_embeddings`) of `model` (a model or its config; a
    probe-architecture model's body). Past a learned table (BERT, RoBERTa, GPT-2), the first text that long fails
    deep inside the model, mid-training or mid-scoring: refused. Rotary models (ModernBERT, Qwen2, Llama) and
    DeBERTa's relative positions run past it, untrained there: a warning."""
    config = getattr(model, "config", model)
    config = getattr(config, "encoder_config", None) or config
    limit = getattr(config, "max_position_embeddings", None)
    if not limit or max_length <= limit - offset(config):
        return
    rotary = any(getattr(config, key, None) for key in ("rope_theta", "global_rope_theta", "rope_scaling"))
    if rotary or getattr(config, "position_biased_input", True) is False:
        logger.warning(
            "%s %d is beyond the %d positions %s was trained on: it runs (its positions are not a table), but "
            "texts that long are read at lengths it never saw",
            option,
            max_length,
            limit,
            name,
        )
        return
    limit -= offset(config)
    raise UsageError(f"{option} {max_length} exceeds the {limit} positions of {name}; use at most that{note}")


def offset(config) -> int:
    """RoBERTa-style embeddings number positions from pad_token_id + 1: of 514, 512 are usable."""
    if getattr(config, "model_type", None) in OFFSET_POSITIONS:
        return (getattr(config, "pad_token_id", None) or 0) + 1
    return 0


class TorchBackend:
    name = "pytorch"

    def __init__(self, model, device: str = "cpu"):
        self.model, self.device = model, device

    def logits(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(self.device) for k, v in batch.inputs.items()}
            out = self.model(**inputs).logits.float()
            synchronize(self.device)  # the timer must see the work done, not just queued
            return out.cpu().numpy()


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def torch_device_problem(device: str, here: bool = True, mps: bool = True) -> str | None:
    """Why PyTorch cannot run on `device` (cpu, cuda[:N], and mps unless mps=False: the benchmarks time CPU and
    CUDA only), in one line; None when it can (here=False: only the spelling). Else the first tensor moved there
    fails inside torch ("Torch not compiled with CUDA enabled", a device-string error)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?" + ("|mps" if mps else ""), device):
        return f"--device must be {'cpu, cuda, cuda:N or mps' if mps else 'cpu, cuda or cuda:N'} (got {device!r})"
    if not here:
        return None
    if device == "mps" and not torch.backends.mps.is_available():
        return "--device mps: Apple's MPS is not available here (use --device cpu)"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"--device {device}: CUDA is not available here (use --device cpu)"
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            return f"--device {device}: this machine has {count} CUDA device(s), numbered from 0"
    return None


def ort_provider(device: str) -> str:
    """The execution provider for `device`; CUDA requested but not available in this onnxruntime is an error."""
    import onnxruntime as ort

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    provider = PROVIDERS[kind]
    available = ort.get_available_providers()
    if provider not in available:
        raise ExecutionProviderError(
            f"device '{device}' asks for ONNX Runtime's {provider}, but this onnxruntime offers only "
            f"{available}: it would run on CPU. Install onnxruntime-gpu (matching your CUDA) or use --device cpu."
        )
    return provider


def check_session_provider(session, requested: str) -> None:
    """ORT falls back to CPU silently when a provider fails to initialise: refuse that."""
    used = session.get_providers()
    if not used or used[0] != requested:
        raise ExecutionProviderError(
            f"ONNX Runtime was asked for {requested} but the session runs on {used}: refusing to fall back "
            "silently (CPU fallback ran 12.7x slower in the course's measurements)."
        )


# the ops that carry a classifier's compute: a shape op ORT puts on CPU beside a CUDA graph is by design, these are not
COMPUTE_OPS = re.compile(r"MatMul|Gemm|Attention|Conv|QuantizeLinear")


def node_placement(events: list) -> dict:
    """{provider: {op type: nodes run}} from an ORT profile (`SessionOptions.enable_profiling`): where each node of
    the graph actually ran, which the session's provider list does not say."""
    placement: dict = {}
    for event in events:
        args = event.get("args") or {}
        if (
            event.get("cat") == "Node"
            and str(event.get("name", "")).endswith("_kernel_time")
            and "provider" in args
        ):
            ops = placement.setdefault(args["provider"], {})
            ops[args["op_name"]] = ops.get(args["op_name"], 0) + 1
    return placement


def check_node_placement(placement: dict, requested: str) -> None:
    """A session on CUDA puts each node without a CUDA kernel on CPU, without a word (a dynamic int8 model's
    MatMulInteger / DynamicQuantizeLinear: the course's int8 on GPU ran on CPU): refuse compute ops run elsewhere."""
    elsewhere = {
        f"{op} x{n} on {provider}"
        for provider, ops in placement.items()
        if provider != requested
        for op, n in ops.items()
        if COMPUTE_OPS.search(op)
    }
    if elsewhere:
        raise ExecutionProviderError(
            f"ONNX Runtime was asked for {requested} but ran compute nodes elsewhere ({', '.join(sorted(elsewhere))}): "
            f"{requested} has no kernel for them (a dynamic int8 model is built for CPU). Serve this model with "
            "--device cpu, or on this device a variant whose nodes run there (an int8 one's fp32)."
        )


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, file_name: str | None = None, device: str = "cpu", threads=None):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSequenceClassification

        register_custom_models()
        files = onnx_files(onnx_dir)
        if not files:
            raise MissingInputError(
                f"{onnx_dir} holds no .onnx file: export the model first (recipes/export_onnx.py)"
            )
        file_name = file_name or files[0].name
        provider = ort_provider(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # off CPU, the first run is profiled to see where each node ran (check_node_placement); then profiling stops
        self.placement: dict | None = None
        self._profile_dir = None
        if provider != PROVIDERS["cpu"]:
            self._profile_dir = Path(tempfile.mkdtemp(prefix="longtail-ort-profile-"))
            options.enable_profiling = True
            options.profile_file_prefix = str(self._profile_dir / "ort")
        try:
            self.model = ORTModelForSequenceClassification.from_pretrained(
                onnx_dir, file_name=file_name, provider=provider, session_options=options
            )
            check_session_provider(self.model.model, provider)
        except BaseException:  # no session to profile: its folder would be left behind
            if self._profile_dir is not None:
                shutil.rmtree(self._profile_dir, ignore_errors=True)
            raise
        # a backend that never scores (an all-empty input) leaves no profile folder behind either
        if self._profile_dir is not None:
            weakref.finalize(self, shutil.rmtree, self._profile_dir, True)
        self.input_names = tuple(i.name for i in self.model.model.get_inputs())
        self.device, self.file_name, self.provider = device, file_name, provider
        self.config = self.model.config

    def logits(self, batch: Batch) -> np.ndarray:
        inputs = {k: v for k, v in batch.inputs.items() if k in self.input_names}
        if "token_type_ids" in self.input_names and "token_type_ids" not in inputs:
            inputs["token_type_ids"] = np.zeros_like(batch.inputs["input_ids"])
        logits = np.asarray(self.model(**inputs).logits, dtype=np.float32)
        if self._profile_dir is not None and self.placement is None:
            try:
                profile = Path(self.model.model.end_profiling())
                self.placement = node_placement(json.loads(profile.read_text("utf-8")))
            # a profile not written or not read is no fault of the model's
            except (OSError, ValueError, RuntimeError) as err:
                self.placement = {}
                logger.warning("Where ONNX Runtime ran each node was not checked (its profile: %s)", err)
            finally:
                shutil.rmtree(self._profile_dir, ignore_errors=True)
            check_node_placement(self.placement, self.provider)
        return logits


LONG_TEXT = ("truncate", "windows")
SERVING_FALLBACK = {"max_length": 512, "long_text": "truncate"}


def serving_defaults(model_dir: str | Path) -> dict:
    """How the run read its texts: `max_length` (data options) and `long_text` (probe runs), from the
    `run_config.json` in the folder (copied into ONNX exports) or its parent (an adapter's `merged/`, a run's
    `checkpoint-N`), however the folder is spelt (`runs.spellings`). Serving the way the model was trained is the
    default; a folder without a record gets 512 / truncate."""
    from longtail.runs import spellings

    out = dict(SERVING_FALLBACK, source="default")
    # absolute, as given and with links resolved: `.` from inside merged/ has itself for parent
    folders = spellings(model_dir)
    candidates = [f / "run_config.json" for f in folders] + [f.parent / "run_config.json" for f in folders]
    for candidate in candidates:
        if candidate.is_file():
            config = json.loads(candidate.read_text("utf-8"))
            out["max_length"] = config.get("data", {}).get("max_length") or out["max_length"]
            out["long_text"] = config.get("probe", {}).get("long_text") or out["long_text"]
            out["source"] = str(candidate)
            break
    return out


@dataclass
class Windows:
    """Every text cut into consecutive windows of at most `max_length` tokens (special tokens included)."""

    inputs: dict  # the tokenizer's inputs per window (input_ids, attention_mask, token_type_ids if any)
    owner: np.ndarray  # row (text position) of each window
    num_rows: int

    @property
    def input_ids(self) -> list[list[int]]:
        return self.inputs["input_ids"]

    @property
    def tokens(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids], dtype=np.float64)

    def per_row(self, values: np.ndarray) -> np.ndarray:
        """Token-weighted mean of per-window `values` (windows, d) for each row -> (rows, d). For a linear
        head this is exact both ways: averaging window logits = the head applied to averaged features."""
        weights = self.tokens
        out = np.zeros((self.num_rows, values.shape[1]), dtype=np.float64)
        np.add.at(out, self.owner, values.astype(np.float64) * weights[:, None])
        total = np.bincount(self.owner, weights=weights, minlength=self.num_rows)
        return out / total[:, None]

    def batches(self, tokenizer, batch_size: int) -> Batches:
        """Batches over windows (Batch.rows index windows, not texts), sorted by length, dynamic padding."""
        return pad_in_batches(tokenizer, self.inputs, batch_size)


def text_windows(tokenizer, texts: list[str], max_length: int) -> Windows:
    """Whole texts as non-overlapping windows of at most `max_length` tokens, each with the model's special
    tokens (the fast tokenizer's overflow, as Transformers' QA pipelines use it). A text that fits is one
    window, identical to truncating it at `max_length`."""
    if max_length - tokenizer.num_special_tokens_to_add(pair=False) < 1:
        raise UsageError(f"max_length {max_length} leaves no room for text next to the special tokens")
    if not tokenizer.is_fast:
        raise UsageError("long_text windows needs a fast tokenizer (it cuts texts with their overflow)")
    if not texts:  # the tokenizer's overflow path fails on an empty batch
        return Windows({"input_ids": []}, np.zeros(0, dtype=int), 0)
    encoded = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_overflowing_tokens=True, stride=0
    )
    owner = np.asarray(encoded["overflow_to_sample_mapping"], dtype=int)
    inputs = {k: list(encoded[k]) for k in tokenizer.model_input_names if k in encoded}
    return Windows(inputs, owner, len(texts))


def run_batches(backend, batches: Batches, num_rows: int, num_labels: int) -> np.ndarray:
    """Logits for every row, in input order."""
    out = np.zeros((num_rows, num_labels), dtype=np.float32)
    for batch in batches:
        out[batch.rows] = backend.logits(batch)
    return out


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def cpu_features() -> dict:
    """CPU model and the instruction sets that matter for int8 (VNNI/AMX make int8 GEMMs fast)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    machine = platform.machine().lower()
    return {
        "cpu": model,
        "machine": machine,
        "arm64": machine in ("arm64", "aarch64"),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx": "amx_tile" in flags,
    }


def machine_description() -> dict:
    import os

    import onnxruntime
    import transformers

    info = {
        **cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def describe_machine(info: dict) -> str:
    isa = [k for k in ("avx2", "avx512", "avx512_vnni", "avx_vnni", "amx", "arm64") if info.get(k)]
    load = info.get("load_average")
    return (
        f"{info['cpu']} ({info['cpu_count']} cores; {', '.join(isa) or 'no AVX2'}; "
        f"{'no VNNI/AMX' if not (info.get('avx512_vnni') or info.get('avx_vnni') or info.get('amx')) else 'int8 dot-product units'}), "
        f"{info['torch_threads']} torch threads"
        + (f", load average {load[0]:.1f}" if load else "")
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU")
        + f"; torch {info['torch']}, onnxruntime {info['onnxruntime']}"
    )
