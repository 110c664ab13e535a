"""ONNX export of a trained classifier folder, ORT graph optimisation, dynamic int8, and a parity check.

    out/fp32/model.onnx                 Optimum export (opset chosen by Optimum), + config, tokenizer, temperature
    out/optimized/model_optimized.onnx  ORT graph fusions (architectures ORTOptimizer supports)
    out/int8/model_quantized.onnx       dynamic int8 (ORTQuantizer; config from the CPU's features)
    out/parity.json                     max |delta logit| and argmax agreement of each variant vs PyTorch

The fp32 export must match PyTorch to `atol` (1e-3) on the parity sample or the export fails. Dynamic int8
can collapse a classifier (optimum#151), so the int8 model is kept only when its argmax agreement with
PyTorch (and, with labels, its macro-F1) holds up; otherwise it is removed and parity.json says why.
parity.json records the gate applied (`int8_gate`); with it off (min_int8_agreement 0 and no labels, as the
inference bench exports) the int8 variant's status is "ungated", never "ok".
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longtail.cli import UsageError
from longtail.inference import (
    ExecutionProviderError,
    OrtBackend,
    TorchBackend,
    cpu_features,
    encode_batches,
    load_model_dir,
    onnx_files,
    run_batches,
    serving_defaults,
    text_windows,
    torch_device_problem,
)
from longtail.predict import ENSEMBLE_FILE, SKLEARN_FILE, run_kind
from longtail.probe import MODEL_TYPE as PROBE_TYPE

logger = logging.getLogger(__name__)

VARIANTS = ("fp32", "optimized", "int8")
# run_config.json tells `predict` how the run read its texts (max_length, long_text)
EXTRA_FILES = ("temperature.json", "labels.json", "run_config.json")
# what a run's checkpoint-N shares with the run (its data, how it read texts), and so its export carries: the
# parity check read the run's length from there. Not its temperature, fitted on the run's final model.
RUN_RECORD = ("labels.json", "run_config.json")


class ExportError(UsageError, RuntimeError):
    """What the export cannot do for this model (an architecture Optimum does not export, logits that do not match
    PyTorch): one line from the recipe, as a UsageError; still a RuntimeError for callers that catch those."""


class ExportExistsError(UsageError, FileExistsError):
    """An earlier export in --output_dir, without --overwrite_output_dir: one line from the recipe."""


@dataclass
class ExportArguments:
    model_dir: str = field(
        default="outputs/demo/full_ft_encoder", metadata={"help": "Trained classifier folder."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Export folder (default <model_dir>/onnx)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing export."})
    optimize: bool = field(
        default=True, metadata={"help": "Also write ORT graph-optimised model (level O2)."}
    )
    quantize: bool = field(default=True, metadata={"help": "Also write a dynamic int8 model."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda: the execution provider checked."})
    merge_adapter: bool = field(
        default=True, metadata={"help": "Merge an unmerged LoRA adapter folder first (else refuse it)."}
    )
    parity_file: str | None = field(
        default=None,
        metadata={"help": "csv/jsonl of texts for the parity check (default: 64 synthetic complaints)."},
    )
    text_column: str = field(default="Consumer complaint narrative", metadata={"help": "Text column."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column of --parity_file: gates int8 on macro-F1 too."}
    )
    label_merge_map: str | None = field(
        default=None,
        metadata={
            "help": "Merge map the labels of --label_column are read with (default: the run's, from its "
            "run_config.json; none without one)."
        },
    )
    label_taxonomy: str | None = field(
        default=None,
        metadata={
            "help": "Taxonomy of the labels of --label_column (default: the run's, as --label_merge_map)."
        },
    )
    parity_rows: int = field(default=64, metadata={"help": "Rows of the parity sample."})
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncation length of the parity sample; default: the length predict serves the run at (its "
            "run_config.json max_length; 512 without one)."
        },
    )
    atol: float = field(default=1e-3, metadata={"help": "Max |delta logit| the fp32 export may show."})
    min_int8_agreement: float = field(
        default=0.97, metadata={"help": "Min argmax agreement of int8 with PyTorch to keep it."}
    )
    max_int8_macro_f1_drop: float = field(
        default=0.005, metadata={"help": "Max macro-F1 drop of int8 vs PyTorch (with labels) to keep it."}
    )

    def __post_init__(self):
        if self.parity_rows < 1:
            raise ValueError(f"--parity_rows must be >= 1, got {self.parity_rows}")
        # each once passed unchecked: max_length 0 turned truncation off, a negative atol failed only after the
        # whole export, an agreement above 1 (or a negative drop) rejected every int8, and `gpu` was torch's traceback
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max_length must be >= 1 (tokens), got {self.max_length}")
        if self.atol < 0:
            raise ValueError(f"--atol must be >= 0, got {self.atol}")
        if not 0 <= self.min_int8_agreement <= 1:
            raise ValueError(f"--min_int8_agreement must be in [0, 1], got {self.min_int8_agreement}")
        if self.max_int8_macro_f1_drop < 0:
            raise ValueError(f"--max_int8_macro_f1_drop must be >= 0, got {self.max_int8_macro_f1_drop}")
        if problem := torch_device_problem(self.device, here=False, mps=False):
            raise ValueError(problem)
        if self.label_column and not self.parity_file:
            # the synthetic parity sample is unlabelled: the macro-F1 gate asked for was silently not applied
            raise ValueError(
                f"--label_column {self.label_column} names a column of --parity_file, and none was given: "
                "pass the labelled --parity_file, or drop --label_column (the default sample has no labels)"
            )
        unread = [f"--{n}" for n in ("label_merge_map", "label_taxonomy") if getattr(self, n) is not None]
        if unread and not self.label_column:
            raise ValueError(
                f"{' and '.join(unread)} read the labels of --label_column, and none was given: pass "
                "--parity_file and --label_column for the macro-F1 gate, or drop them"
            )
        kind = run_kind(Path(self.model_dir))
        if kind == "sklearn":
            raise ValueError(
                f"{self.model_dir} is a scikit-learn TF-IDF run ({SKLEARN_FILE}), which has no ONNX export here: "
                f"serve it with python -m longtail.predict --model_dir {self.model_dir}"
            )
        if kind == "ensemble":
            raise ValueError(
                f"{self.model_dir} is an ensemble folder ({ENSEMBLE_FILE}), which has no ONNX export of its own: "
                f"export its member runs (listed in {ENSEMBLE_FILE}) instead, or serve it with "
                f"python -m longtail.predict --model_dir {self.model_dir}"
            )
        if problem := onnx_export_problem(Path(self.model_dir)):
            raise ValueError(problem)


def onnx_export_problem(folder: Path) -> str | None:
    """Why `folder` cannot be exported because it is an ONNX export already (a variant `<run>/onnx/fp32`, or the
    export's top folder `<run>/onnx`), naming the run to export instead; None otherwise. A variant was a traceback
    from Transformers (no model.safetensors), and the top folder's error told the user to pass a variant."""
    from longtail.runs import source_run

    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return None
    if onnx_files(folder):
        variant = folder
    else:
        variants = [d for d in sorted(folder.iterdir()) if d.is_dir() and onnx_files(d)]
        if not variants or (folder / "config.json").is_file():
            return None
        variant = variants[0]
    source = source_run(variant)
    run = f"export the run it was made from ({source})" if source else "export the run it was made from"
    return f"{folder} is an ONNX export (.onnx models, no PyTorch weights), which cannot be exported again: {run}"


def quantization_config(features: dict | None = None):
    """Dynamic int8 config for this CPU: arm64 / avx512_vnni / avx512 / avx2 (Optimum's presets)."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    f = features or cpu_features()
    if f["arm64"]:
        return "arm64", AutoQuantizationConfig.arm64(is_static=False, per_channel=False)
    if f["avx512_vnni"]:
        return "avx512_vnni", AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    if f["avx512"]:
        return "avx512", AutoQuantizationConfig.avx512(is_static=False, per_channel=False)
    return "avx2", AutoQuantizationConfig.avx2(is_static=False, per_channel=False)


def probe_onnx_config(model):
    """Optimum's text-classification ONNX config of a probe's *body* architecture: the probe takes the same
    inputs (input_ids, attention_mask[, token_type_ids]) and returns `logits`, like the body's own classifier."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    body = model.config.encoder_config
    try:
        constructor = TasksManager.get_exporter_config_constructor(
            exporter="onnx",
            model_type=body.model_type.replace("_", "-"),
            task="text-classification",
            library_name="transformers",
        )
    except (KeyError, ValueError) as e:
        raise ExportError(
            f"Optimum cannot export this probe's body '{body.model_type}' to ONNX for text-classification. "
            "Serve it with the PyTorch backend (python -m longtail.predict --backend torch)."
        ) from e
    return constructor(body, task="text-classification")


def check_exportable(model) -> None:
    """Fail with a clear message when Optimum has no ONNX config for this architecture."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    model_type = model.config.model_type
    if model_type == PROBE_TYPE:
        probe_onnx_config(model)
        return
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type.replace("_", "-"), exporter="onnx", library_name="transformers"
        )
    except (KeyError, ValueError) as e:
        raise ExportError(
            f"Optimum cannot export the architecture '{model_type}' ({type(model).__name__}) to ONNX: it has no "
            "ONNX config for it. Serve it with the PyTorch backend (python -m longtail.predict --backend torch)."
        ) from e
    if "text-classification" not in tasks:
        raise ExportError(
            f"Optimum exports '{model_type}' but not for text-classification (supported: {sorted(tasks)})."
        )


def export_fp32(model, target: Path, device: str) -> None:
    """fp32 ONNX export: Optimum's model-level export, or for a probe (whose class lives outside
    transformers, so Optimum cannot infer its library and task) the graph-level export with its body's config."""
    from optimum.exporters.onnx import export, onnx_export_from_model

    if model.config.model_type != PROBE_TYPE:
        onnx_export_from_model(model, target, task="text-classification", do_validation=False, device=device)
        return
    onnx_config = probe_onnx_config(model)
    target.mkdir(parents=True, exist_ok=True)
    export(model, onnx_config, target / "model.onnx", opset=onnx_config.DEFAULT_ONNX_OPSET, device=device)
    model.config.save_pretrained(target)


def label_options(args: ExportArguments) -> tuple[dict, str]:
    """The data options the parity file's labels are read with, and where they came from: as `longtail.score`
    reads a file for a run (`score.data_options`: the merge map and taxonomy the run recorded in run_config.json,
    each given option over the run's). A model folder that records none (not a recipe's run) reads its labels
    as written, with no merge map or taxonomy unless given."""
    from longtail.score import data_options, recorded_data_options

    given = {
        "text_column": args.text_column,
        "label_column": args.label_column,
        "label_merge_map": args.label_merge_map,
        "label_taxonomy": args.label_taxonomy,
    }
    if recorded_data_options(Path(args.model_dir)) is None:
        # null where not given, not "none": that reads as `--label_merge_map none` given, and nothing was
        return given, (
            f"{args.model_dir} records no data options (run_config.json): a merge map and taxonomy only "
            "as given, none otherwise"
        )
    return data_options([Path(args.model_dir)], given)


def parity_sample(args: ExportArguments, label2id: dict) -> tuple[list[str], tuple | None, dict | None]:
    """(texts, (scored rows, label ids) or None, how the labels were read or None) of the parity sample: the first
    --parity_rows rows of --parity_file with a text, else synthetic complaints. With --label_column the sample's
    labels are read as the run read its data (`label_options`, and `score.labelled_rows`: its merge map and
    taxonomy, a recipe's test-split cleaning); rows without a label, outside the taxonomy or with a label the model
    does not know are not scored in the macro-F1 gate, and are counted; none scored is an error, the gate asked
    for could not be applied."""
    if not args.parity_file:
        from longtail.synthetic import make_synthetic_complaints

        df = make_synthetic_complaints(args.parity_rows * 2, seed=11)
        texts = [t for t in df["Consumer complaint narrative"].fillna("") if t.strip()][: args.parity_rows]
        return texts, None, None
    from longtail.data import read_table, refuse_repeated
    from longtail.score import LEFT_OUT, labelled_rows

    df = read_table(args.parity_file)
    missing = [c for c in (args.text_column, args.label_column) if c and c not in df.columns]
    if missing:
        raise UsageError(f"{args.parity_file} has no column {missing}; columns: {list(df.columns)}")
    refuse_repeated(df, (args.text_column, args.label_column), args.parity_file)
    df = df[df[args.text_column].fillna("").astype(str).str.strip() != ""].head(args.parity_rows)
    if df.empty:
        raise UsageError(
            f"{args.parity_file}: no row has a non-empty '{args.text_column}' for the parity check"
        )
    texts = df[args.text_column].astype(str).tolist()
    if not args.label_column:
        return texts, None, None
    options, source = label_options(args)
    written = sorted(set(df[args.label_column].dropna().astype(str).str.strip()) - {""})
    rows, counts = labelled_rows(lambda: df.reset_index(drop=True), args.parity_file, options, list(label2id))
    left_out = {what: counts[key] for key, what in LEFT_OUT if counts.get(key)}
    read_as = (
        f"merge map {options['label_merge_map'] or 'none'}, taxonomy {options['label_taxonomy'] or 'none'} "
        f"({source})"
    )
    if rows.empty:
        raise UsageError(
            f"{args.parity_file}: no value of --label_column '{args.label_column}' is a label the model knows, so "
            f"the int8 macro-F1 gate cannot be scored (file: {written[:5]}; model: {sorted(label2id)[:5]}; "
            f"read with {read_as}; left out of {len(df)} rows: {left_out}). "
            "Pass the column of the labels the model was trained on, or drop --label_column."
        )
    if left_out:
        logger.warning(
            "Parity sample: %d of %d rows are left out of the int8 macro-F1 gate (%s), labels read with %s",
            len(df) - len(rows),
            len(df),
            ", ".join(f"{n} with {what}" for what, n in left_out.items()),
            read_as,
        )
    record = {
        **{name: options[name] for name in ("label_column", "label_merge_map", "label_taxonomy")},
        "read_as": source,
        "rows_scored": len(rows),
        "left_out": left_out,  # of the parity rows, by why: {} when every one is scored
        "labels_merged": counts.get("labels_merged", 0),
    }
    return texts, (rows["row_id"].to_numpy(), rows["label"].map(label2id).to_numpy()), record


def compare(reference: np.ndarray, logits: np.ndarray) -> dict:
    return {
        "max_abs_logit_diff": float(np.abs(reference - logits).max()),
        "argmax_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
    }


def _copy_extras(folders: tuple[Path, ...], tokenizer, target: Path, run_record: Path | None = None) -> None:
    """The tokenizer and each of EXTRA_FILES from the first of `folders` that has it: the resolved model folder,
    then the given one, then the adapter run above a given merged/ (an adapter run keeps temperature.json and
    run_config.json beside the adapter, not in the merged/ folder a merge at export time writes). `run_record`,
    the run above a given checkpoint-N, gives its RUN_RECORD files only, last."""
    tokenizer.save_pretrained(target)
    for name in EXTRA_FILES:
        where = (*folders, run_record) if run_record is not None and name in RUN_RECORD else folders
        source = next((folder / name for folder in where if (folder / name).is_file()), None)
        if source is not None:
            shutil.copy2(source, target / name)


def export_onnx(args: ExportArguments) -> dict:
    """Export, optimise, quantise, check parity; returns the parity record (also written to parity.json)."""
    from longtail.inference import ort_provider
    from longtail.metrics import macro_f1
    from longtail.runs import adapter_run_above, checkpoint_run_above, write_json

    ort_provider(args.device)  # CUDA asked but ORT would run on CPU: fail before any work
    model, tokenizer, resolved = load_model_dir(args.model_dir, merge_adapter=args.merge_adapter)
    check_exportable(model)
    # a bad parity file fails before any output
    texts, labels, label_record = parity_sample(args, model.config.label2id)
    out = Path(args.output_dir or Path(args.model_dir) / "onnx")
    if out.resolve() in (Path(args.model_dir).resolve(), Path(resolved).resolve()):
        # its overwrite would clear the variants' folders beside the model, and a run's files are not ours here
        raise UsageError(
            f"--output_dir {out} is the model's own folder: the export needs a folder of its own "
            "(default: <model_dir>/onnx)"
        )
    if (
        out.exists() and not out.is_dir()
    ):  # else FileExistsError after the whole export, its .partial left behind
        raise UsageError(f"--output_dir {out} is a file, not a folder: choose a folder for the export")
    replacing = out.is_dir() and any(out.iterdir())
    if replacing and not args.overwrite_output_dir:
        raise ExportExistsError(
            f"{out} exists and is not empty: pass --overwrite_output_dir to replace the export"
        )
    # built beside `out`, which it replaces only once the fp32 parity passed: an earlier export stays whole
    # through an export that fails or is interrupted
    whole = out.resolve()  # `--output_dir .` has no name to put a suffix on
    work, failed_dir = whole.with_name(f"{whole.name}.partial"), whole.with_name(f"{whole.name}.failed")
    shutil.rmtree(work, ignore_errors=True)  # an interrupted attempt's
    work.mkdir(parents=True)

    # the parity and int8 gate judge the inputs predict will serve: the run's own length (a fixed 128 judged a
    # run served at 56 on longer texts than it ever reads)
    serving = serving_defaults(args.model_dir)
    max_length = args.max_length or serving["max_length"]
    # and read whole, as predict serves a probe trained with --long_text windows: the mean of its windows' logits
    # (truncated, the parity and int8 gate judged only each text's first window, which predict never serves alone)
    windows = text_windows(tokenizer, texts, max_length) if serving["long_text"] == "windows" else None
    if windows is not None:
        batches, inputs, per_row = windows.batches(tokenizer, 16), len(windows.input_ids), windows.per_row
    else:
        batches, inputs, per_row = encode_batches(tokenizer, texts, 16, max_length), len(texts), np.asarray
    num_labels = model.config.num_labels
    reference = per_row(run_batches(TorchBackend(model), batches, inputs, num_labels))

    record: dict = {
        "model_dir": str(resolved),
        "model_type": model.config.model_type,
        "parity_rows": len(texts),
        "parity_source": args.parity_file or "synthetic complaints",
        "max_length": max_length,  # what the parity sample was truncated at: by default, what predict serves at
        "long_text": serving[
            "long_text"
        ],  # truncate, or windows (whole texts, window logits averaged, as predict)
        "parity_windows": inputs if windows is not None else None,
        "atol": args.atol,
        # the int8 gate as applied: argmax agreement floor, macro-F1 drop (only with labelled parity rows)
        "int8_gate": {
            "min_argmax_agreement": args.min_int8_agreement,
            "max_macro_f1_drop": args.max_int8_macro_f1_drop if labels is not None else None,
            "on": args.min_int8_agreement > 0 or labels is not None,
        },
        # how the gate's labels were read (the run's merge map and taxonomy) and the parity rows it left out, by why
        "parity_labels": label_record,
        "device": args.device,
        "cpu": cpu_features(),
        "variants": {},
    }

    # ---- fp32 ----------------------------------------------------------------------------------
    # an adapter run's merged/ given itself: its run_config.json (the length predict serves) sits in the run above
    given = Path(args.model_dir)
    run_above = adapter_run_above(given)
    extras = (Path(resolved), given, *([run_above] if run_above is not None else []))
    # a checkpoint's: the run above it, whose run_config.json gave the parity check its length
    run_record = checkpoint_run_above(given)
    if run_record is not None and (run_record / "temperature.json").is_file():
        logger.info(
            "%s is a checkpoint of %s: its export carries the run's run_config.json and labels.json, not its "
            "temperature.json, fitted on the run's final model (predict serves the checkpoint at T = 1 too)",
            given,
            run_record,
        )
    fp32 = work / "fp32"
    export_fp32(model, fp32, args.device)
    _copy_extras(extras, tokenizer, fp32, run_record)
    variants = {"fp32": fp32}

    # ---- ORT graph optimisation (where the architecture is supported) ----------------------------
    if args.optimize:
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import OptimizationConfig

        try:
            optimizer = ORTOptimizer.from_pretrained(fp32, file_names=["model.onnx"])
            optimizer.optimize(
                OptimizationConfig(optimization_level=2, optimize_for_gpu=args.device != "cpu"),
                work / "optimized",
            )
            _copy_extras(extras, tokenizer, work / "optimized", run_record)
            variants["optimized"] = work / "optimized"
        except (NotImplementedError, KeyError, ValueError) as e:
            reason = f"not supported for {model.config.model_type}: {str(e).splitlines()[0][:200]}"
            logger.warning("ORT optimisation skipped (%s)", reason)
            shutil.rmtree(work / "optimized", ignore_errors=True)
            record["variants"]["optimized"] = {"status": "skipped", "reason": reason}

    # ---- dynamic int8 ------------------------------------------------------------------------------
    if args.quantize:
        from optimum.onnxruntime import ORTQuantizer

        isa, qconfig = quantization_config()
        ORTQuantizer.from_pretrained(fp32, file_name="model.onnx").quantize(qconfig, work / "int8")
        _copy_extras(extras, tokenizer, work / "int8", run_record)
        variants["int8"] = work / "int8"
        record["int8_config"] = isa

    # ---- parity --------------------------------------------------------------------------------
    for name, path in variants.items():
        backend = OrtBackend(path, device=args.device)
        try:
            logits = per_row(run_batches(backend, batches, inputs, num_labels))
        except ExecutionProviderError as e:
            if name != "int8":
                raise
            # a dynamic int8 model on CUDA runs its matmuls on CPU (check_node_placement): not a GPU model
            record["variants"][name] = {
                "file": None,
                "status": "rejected",
                "reason": str(e),
                "node_placement": backend.placement,  # where its nodes ran: the reason
            }
            shutil.rmtree(path)
            logger.warning("int8 model rejected and removed: %s", e)
            continue
        entry = {
            "file": backend.file_name,  # under the folder it ends in, set below
            "size_bytes": sum(f.stat().st_size for f in onnx_files(path)),
            **compare(reference, logits),
            "status": "ok",
        }
        if backend.placement is not None:  # off CPU: where its nodes ran, by provider and op
            entry["node_placement"] = backend.placement
        if labels is not None:
            rows, y = labels
            entry["macro_f1"] = macro_f1(y, logits[rows].argmax(1))
            entry["pytorch_macro_f1"] = macro_f1(y, reference[rows].argmax(1))
        if name == "fp32" and entry["max_abs_logit_diff"] > args.atol:
            entry["status"] = "failed"
        elif name == "optimized" and entry["max_abs_logit_diff"] > args.atol:
            entry["status"] = "drift"  # fused kernels may round differently; reported, not fatal
        if name == "int8":
            reasons = []
            if entry["argmax_agreement"] < args.min_int8_agreement:
                reasons.append(
                    f"argmax agreement {entry['argmax_agreement']:.3f} < {args.min_int8_agreement}"
                )
            if (
                labels is not None
                and entry["pytorch_macro_f1"] - entry["macro_f1"] > args.max_int8_macro_f1_drop
            ):
                reasons.append(
                    f"macro-F1 drop {entry['pytorch_macro_f1'] - entry['macro_f1']:.4f} > {args.max_int8_macro_f1_drop}"
                )
            if not record["int8_gate"]["on"]:  # kept whatever its quality: never read as gated
                entry.update(
                    status="ungated", reason="int8 gate off (min_int8_agreement 0, no labelled rows)"
                )
            if reasons:
                entry.update(status="rejected", reason="; ".join(reasons))
                shutil.rmtree(path)
                logger.warning("int8 model rejected and removed: %s", entry["reason"])
        record["variants"][name] = entry
        logger.info(
            "%s: max |dlogit| %.2e, argmax agreement %.3f (%s)",
            name,
            entry["max_abs_logit_diff"],
            entry["argmax_agreement"],
            entry["status"],
        )
    failed = {n: v for n, v in record["variants"].items() if v.get("status") == "failed"}
    # where each file is once moved: served, or kept to inspect; a rejected int8 was removed, so it names none
    for name, entry in record["variants"].items():
        if entry.get("status") == "rejected":
            entry["file"] = None
        elif "file" in entry:
            entry["file"] = str((failed_dir if failed else out) / name / entry["file"])
    write_json(work / "parity.json", record)
    if failed:  # kept for inspection beside `out`, which is left as it was
        shutil.rmtree(failed_dir, ignore_errors=True)
        work.rename(failed_dir)
        detail = ", ".join(f"{n}: max |dlogit| {v['max_abs_logit_diff']:.2e}" for n, v in failed.items())
        kept = f"; the earlier export in {out} is unchanged" if replacing else ""
        raise ExportError(
            f"ONNX export does not match PyTorch within atol {args.atol} ({detail}); "
            f"see {failed_dir / 'parity.json'}{kept}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in VARIANTS:  # an earlier export's variant that this one did not keep (int8 rejected) goes too
        if (out / name).is_dir() and not (work / name).is_dir():  # said: it went without a word
            option = {"optimized": "--optimize", "int8": "--quantize"}.get(name)
            entry = record["variants"].get(name)
            why = f"this export's is {entry['status']}" if entry else f"this export has none ({option} false)"
            logger.warning("%s: the earlier export's %s variant is removed: %s", out, name, why)
        shutil.rmtree(out / name, ignore_errors=True)
    for item in work.iterdir():
        item.replace(out / item.name)
    work.rmdir()
    shutil.rmtree(failed_dir, ignore_errors=True)  # an earlier failure's, now superseded
    return record
