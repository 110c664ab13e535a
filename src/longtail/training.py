"""What the Trainer recipes share: model arguments, hardware precision, model + tokenizer loading,
tokenisation, the collator, and prediction."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    TrainingArguments,
)

from longtail.cli import UsageError, reading_model
from longtail.data import PreparedData
from longtail.metrics import softmax
from longtail.runs import TOKENIZER_FILES, WEIGHT_FILES

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="answerdotai/ModernBERT-base", metadata={"help": "Hub id or local folder of the model."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with the model (off unless you trust the repo)."}
    )
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 on GPUs with compute capability >= 8, fp16 on older GPUs, fp32 on CPU."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without a better metric_for_best_model."},
    )

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"--mixed_precision must be one of {PRECISIONS}, got '{self.mixed_precision}'")


def auto_precision() -> str:
    """bf16 only where it is native (compute capability >= 8: on a T4 it is emulated and ~4x slower)."""
    if not torch.cuda.is_available():
        return "no"
    major, _ = torch.cuda.get_device_capability()
    return "bf16" if major >= 8 else "fp16"


def apply_precision(training_args: TrainingArguments, choice: str) -> TrainingArguments:
    """Return training args with fp16/bf16 set from `choice` (auto resolves by hardware).

    An explicit --fp16/--bf16 on the command line wins over auto. `dataclasses.replace` re-runs
    TrainingArguments' own validation, which is where the mixed-precision setting takes effect.
    """
    if training_args.fp16 or training_args.bf16:
        return training_args
    precision = auto_precision() if choice == "auto" else choice
    if precision == "no":
        return training_args
    try:
        resolved = dataclasses.replace(training_args, fp16=precision == "fp16", bf16=precision == "bf16")
    # Transformers' refusal (bf16 on a machine without it): after the options were parsed
    except ValueError as err:
        raise UsageError(
            f"--mixed_precision {choice}: {' '.join(str(err).split())} (auto, the default, picks what this machine "
            "supports)"
        ) from None
    logger.info("Mixed precision: %s", precision)
    return resolved


def load_tokenizer(model_args: ModelArguments):
    option = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    name = model_args.tokenizer_name or model_args.model_name_or_path
    # a wrong path or an uncached repo id: one line, not a Hub traceback. A tokenizer folder may hold no config.json
    with reading_model(option, name, needs=TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token is None:
        # Decoders ship without a pad token; eos is the usual stand-in (the head pools the last non-pad token).
        if tokenizer.eos_token is None:
            raise UsageError(
                f"Tokenizer of {model_args.model_name_or_path} has neither a pad nor an eos token"
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer had no pad token: using eos (%r)", tokenizer.eos_token)
    return tokenizer


def classifier_config(model_args: ModelArguments, label_names: list[str], tokenizer):
    """The model's config with the label maps, problem type and the tokenizer's pad token id."""
    from longtail.inference import register_custom_models

    register_custom_models()  # a probe or LP-FT run (model_type longtail_probe) read before any model loads
    with reading_model("--model_name_or_path", model_args.model_name_or_path):
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            problem_type="single_label_classification",
            trust_remote_code=model_args.trust_remote_code,
        )
    config.pad_token_id = tokenizer.pad_token_id
    if config.model_type == "modernbert" and not torch.cuda.is_available():
        config.reference_compile = False  # its auto-compile breaks on CPU when triton is installed
    return config


def trained_labels(config) -> list[str] | None:
    """The labels of a trained sequence classifier's config (a finished run, a fine-tuned Hub model) in its
    head's row order; None for a base model (no `*ForSequenceClassification` architecture)."""
    if not any(str(a).endswith("ForSequenceClassification") for a in config.architectures or []):
        return None
    return [str(config.id2label[k]) for k in sorted(config.id2label)]


def refit_on_validation(run_dir: str) -> bool:
    """Whether a finished run's saved model was refit on train + validation (its `run_config.json` says so)."""
    try:
        config = json.loads((Path(run_dir).expanduser() / "run_config.json").read_text("utf-8"))
        return config.get("refit", {}).get("refit_with_validation") is True
    except (OSError, ValueError, AttributeError):
        return False


def output_layer(model, num_labels: int):
    """The head's last linear layer with one row per label (`classifier`, `score`; after ModernBERT's `head`)."""
    from longtail.adapters import _in_head, _is_linear, head_modules

    heads = head_modules(model)
    layers = [
        m
        for n, m in model.named_modules()
        if _in_head(n, heads) and _is_linear(m) and getattr(m, "out_features", None) == num_labels
    ]
    return layers[-1] if layers else None


def draw_again(model, layer) -> None:
    """Initialise `layer` as Transformers initialises a weight missing from a checkpoint: every other module is
    marked initialised and `initialize_weights` runs the model's own `_init_weights` on the layer and the modules
    holding it (ModernBERT draws its classifier from the top-level module's call, BERT and Qwen2 from the layer's)."""
    name = next(n for n, m in model.named_modules() if m is layer)
    for n, module in model.named_modules():
        module._is_hf_initialized = not (n == "" or name == n or name.startswith(n + "."))
    model.initialize_weights()


def load_classifier(model_args: ModelArguments, label_names: list[str], tokenizer, **from_pretrained_kwargs):
    """A sequence classifier with the label maps and problem type written into its config.

    `--model_name_or_path` may be a finished classifier run (full FT, LP-FT, a probe): its trained head is kept
    when its labels are this run's; the same labels in another order have its rows reordered; other labels get
    a fresh output layer, with a warning. Transformers alone would stop with a size mismatch deep in
    `load_state_dict`, or, for as many labels under other names, read its rows as this run's labels."""
    config = classifier_config(model_args, label_names, tokenizer)  # registers the probe's model type too
    source = model_args.model_name_or_path
    with reading_model("--model_name_or_path", source):
        previous = trained_labels(
            AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
        )
    other_labels = previous is not None and previous != list(label_names)
    if other_labels and len(previous) != len(label_names):
        from_pretrained_kwargs["ignore_mismatched_sizes"] = True  # the new output layer is drawn fresh
    # a folder without weights (a bare config, a LoRA run's folder): one line naming it, not Transformers' OSError
    with reading_model("--model_name_or_path", source, needs=WEIGHT_FILES):
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            trust_remote_code=model_args.trust_remote_code,
            use_safetensors=True,  # never unpickle weights
            **from_pretrained_kwargs,
        )
    if previous is None:
        return model
    if refit_on_validation(source):
        logger.warning(
            "--model_name_or_path %s was refit on train + validation: if that is this run's data, this run's "
            "validation scores are not held out (for a probe, --head_init_from starts from its train-only head)",
            source,
        )
    layer = output_layer(model, len(label_names))
    if other_labels and len(previous) == len(label_names) and layer is None:
        raise UsageError(
            f"--model_name_or_path {source} is a classifier over other labels than this run's, and its output "
            f"layer (a linear layer of {len(label_names)} rows in the head) was not found to replace"
        )
    shared = len(set(previous) & set(label_names))
    if not other_labels:
        logger.info(
            "--model_name_or_path %s is a classifier over this run's labels: starting from its head as saved (with "
            "any post-hoc shift that run folded into its bias, its report's posthoc_tau; this run chooses its own)",
            source,
        )
    elif shared == len(previous) == len(label_names):
        order = torch.tensor([previous.index(name) for name in label_names])
        with torch.no_grad():
            for param in (layer.weight, layer.bias):
                if param is not None:
                    param.copy_(param[order])
        logger.info(
            "--model_name_or_path %s has this run's labels in another order: its head rows reordered", source
        )
    else:
        if len(previous) == len(label_names):
            draw_again(model, layer)  # Transformers loaded the old rows: as many labels, other names
        logger.warning(
            "--model_name_or_path %s is a classifier over other labels (%d there, %d here, %d shared): its output "
            "layer is not used, a fresh one is trained",
            source,
            len(previous),
            len(label_names),
            shared,
        )
    return model


def tokenize_splits(data: PreparedData, tokenizer, max_length: int, training_args: TrainingArguments) -> dict:
    """HF datasets with input_ids/attention_mask/labels per split (padding is left to the collator)."""
    import datasets

    from longtail.data import require_usable_splits

    require_usable_splits(data, training_args.do_predict)  # before training, not after

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    out = {}
    with training_args.main_process_first(desc="tokenisation"):
        for split, df in data.splits.items():
            ds = datasets.Dataset.from_pandas(df[["text", "label_id", "row_id"]], preserve_index=False)
            ds = ds.map(encode, batched=True, remove_columns=["text"], desc=f"Tokenising {split}")
            out[split] = ds.rename_column("label_id", "labels")
    return out


def padding_collator(tokenizer):
    """Dynamic padding to the longest row of the batch, rounded up to a multiple of 8 (tensor cores)."""
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)


def callbacks(model_args: ModelArguments) -> list:
    return (
        [EarlyStoppingCallback(model_args.early_stopping_patience)]
        if model_args.early_stopping_patience
        else []
    )


def predict_probs(trainer, dataset) -> np.ndarray:
    """Class probabilities (float64) for every row of `dataset`, in order."""
    logits = trainer.predict(dataset, metric_key_prefix="predict").predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    return softmax(np.asarray(logits, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Run stages shared by the Trainer recipes (parse -> data -> model -> train -> evaluate -> report)
# ---------------------------------------------------------------------------------------------


def start_run(
    training_args: TrainingArguments,
    mixed_precision: str,
    inputs: dict[str, str] | None = None,
    resuming: bool = False,
) -> tuple[TrainingArguments, bool]:
    """Logging, hardware precision, the output-folder guard and the seed; returns (args, push).

    The Hub push is taken out of the Trainer's hands (it would push every checkpoint): recipes push
    once at the end when `push` is true. `resuming`: the recipe resumes its run in output_dir although no
    checkpoint of the main training is there yet (distill's vanilla arm, trained first).
    """
    import transformers

    from longtail.checkpoints import resolve_resume
    from longtail.distributed import check_distributed
    from longtail.runs import check_hub_push, prepare_output_dir, take_hub_token

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True
    )
    transformers.utils.logging.set_verbosity_warning()
    push = training_args.push_to_hub
    training_args = apply_precision(training_args, mixed_precision)
    training_args.push_to_hub = False
    take_hub_token(training_args)  # a pickled copy of the arguments (training_args.bin) once carried it
    if push:
        check_hub_push()  # offline or no token: refused now, not after training
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # nothing to pin to; avoids a warning per epoch
    check_distributed(training_args)
    # "true" -> the newest complete checkpoint in output_dir (a half-written one is skipped, with a warning)
    training_args.resume_from_checkpoint = resolve_resume(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    # checked now, cleared by replace_previous_results once the data and model are checked too. Every process
    # checks (it only reads, and nothing is written before the data block's barrier, which all of them reach
    # after this): a refusal on the main process alone left the others waiting in that barrier, to end in a
    # gloo "Connection closed by peer" traceback once it exited.
    prepare_output_dir(
        training_args.output_dir,
        training_args.overwrite_output_dir,
        resuming or resuming_in_place(training_args),
        inputs,
        clear=False,
    )
    transformers.set_seed(training_args.seed)
    return training_args, push


def resuming_in_place(training_args: TrainingArguments) -> bool:
    """Resuming continues the run in output_dir; a checkpoint from elsewhere starts a new run there, which must
    not write over another run's results unasked."""
    resume = training_args.resume_from_checkpoint
    return resume is not None and Path(resume).resolve().parent == Path(training_args.output_dir).resolve()


def replace_previous_results(training_args: TrainingArguments, resuming: bool = False) -> None:
    """With --overwrite_output_dir, the previous run's results go only now, after the data and the model passed
    their checks: a run refused for a mistake (a column name, --max_length) leaves them in place. Main process
    first, so that the others never see a half-cleared folder."""
    from longtail.runs import replace_previous_run

    with training_args.main_process_first(local=False, desc="output folder"):
        if training_args.process_index == 0:
            replace_previous_run(
                training_args.output_dir,
                training_args.overwrite_output_dir,
                resuming or resuming_in_place(training_args),
            )


def check_resume_patience(checkpoint, patience: int) -> None:
    """Refuse a resume that asks for another --early_stopping_patience than its checkpoint's: restoring the
    callback's state from the checkpoint (its count) restores its patience too, so the new one would be ignored."""
    if not checkpoint or not isinstance(checkpoint, (str, Path)):
        return
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text("utf-8"))
        saved = state["stateful_callbacks"]["EarlyStoppingCallback"]["args"]["early_stopping_patience"]
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
    ):  # no record (no early stopping then): the count starts anew
        return
    if saved != patience:
        raise UsageError(
            f"--resume_from_checkpoint {checkpoint}: the checkpoint counts evaluations without improvement against "
            f"--early_stopping_patience {saved}, this run asks for {patience}; the checkpoint's would be kept. "
            f"Resume with --early_stopping_patience {saved}, or start a new run without --resume_from_checkpoint."
        )


def long_tail_trainer(
    model,
    training_args,
    data: PreparedData,
    datasets: dict,
    tokenizer,
    loss_args,
    model_args,
    trainer_class=None,
    data_collator=None,
    **trainer_kwargs,
):
    """A LongTailTrainer (or a subclass, e.g. DistillationTrainer) on the train/validation splits with
    macro-F1 metrics and dynamic padding."""
    from longtail.losses import LongTailTrainer
    from longtail.metrics import assign_tiers, trainer_compute_metrics

    if model_args.early_stopping_patience:
        # a resumed run goes on counting evaluations without improvement from its checkpoint: Trainer restarts the
        # count at 0 unless told, and a run resumed just before it would have stopped trained on past that point
        training_args.restore_callback_states_from_checkpoint = True
        check_resume_patience(training_args.resume_from_checkpoint, model_args.early_stopping_patience)
    return (trainer_class or LongTailTrainer)(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        processing_class=tokenizer,
        data_collator=data_collator or padding_collator(tokenizer),
        compute_metrics=trainer_compute_metrics(assign_tiers(data.train_counts)),
        callbacks=callbacks(model_args),
        loss_args=loss_args,
        train_counts=data.train_counts,
        **trainer_kwargs,
    )


def evaluate_splits(trainer, data: PreparedData, datasets: dict, do_predict: bool, test_trainer=None) -> list:
    """Validation always; test only when asked (once, at the end), by `test_trainer` when given (a refit
    model: validation stays the selection model's). Returns report.SplitResult rows."""
    from longtail.report import SplitResult

    return [
        SplitResult(
            split,
            data.splits[split]["label_id"].to_numpy(),
            predict_probs(test_trainer if split == "test" and test_trainer else trainer, datasets[split]),
            data.splits[split]["text"],
            row_ids=data.splits[split]["row_id"].to_numpy(),
        )
        for split in ("validation", "test")
        if split == "validation" or do_predict
    ]


def epochs_trained(trainer, model_args) -> float | str:
    """The run table's epochs: --num_train_epochs, or what was trained where --max_steps or early stopping ended
    the run sooner (the table said 4 for a run early stopping ended after 3, and 3 for a --max_steps 4 run)."""
    args, trained = trainer.args, round(float(trainer.state.epoch or 0.0), 2)
    if args.max_steps > 0:
        return f"{trained:g} (--max_steps {args.max_steps})"
    if trained < args.num_train_epochs:
        patience = getattr(model_args, "early_stopping_patience", None)
        why = f"early stopping, patience {patience}" if patience else "stopped early"
        return f"{trained:g} of {args.num_train_epochs:g} ({why})"
    return args.num_train_epochs


def checkpoint_name(state, checkpoint: str) -> str:
    """`checkpoint-N, epoch E`: the report named the step alone, which does not say which epoch validation chose
    (the epoch is read from the evaluation logged at that step; the name alone where none was logged)."""
    name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
    step = name.rsplit("-", 1)[-1]
    epochs = [
        e["epoch"]
        for e in getattr(state, "log_history", None) or []
        if str(e.get("step")) == step and "epoch" in e
    ]
    return f"{name}, epoch {round(float(epochs[-1]), 2):g}" if epochs else name


def run_info(recipe: str, trainer, train_result, model_args, data_args, loss_args, started: float) -> dict:
    """The 'Run' table of the report and model card: model, loss, schedule, runtime, what chose what."""
    import time

    from longtail.runs import public_model_name

    args = trainer.args
    best = trainer.state.best_model_checkpoint
    return {
        "recipe": recipe,
        "model": public_model_name(model_args.model_name_or_path),
        "loss": loss_args.loss,
        "class_weighting": loss_args.class_weighting,
        "learning_rate": args.learning_rate,
        "epochs": epochs_trained(trainer, model_args),
        "batch_size": args.per_device_train_batch_size * args.world_size,
        "max_length": data_args.max_length,
        "seed": args.seed,
        "train_runtime_s": round(train_result.metrics.get("train_runtime", 0.0), 1),
        "total_runtime_s": round(time.time() - started, 1),
        "selection": (
            f"checkpoint: best validation {args.metric_for_best_model} ({checkpoint_name(trainer.state, best)})"
            if best and args.load_best_model_at_end
            else "checkpoint: last epoch (no model selection)"
        )
        + "; test scored once at the end" * args.do_predict,
    }


# Two texts of clearly different length: the short one is scored alone and inside a padded batch.
PADDING_PROBE = (
    "I was charged a late fee twice.",
    "The bank closed my checking account without any notice, kept the remaining balance for six "
    "weeks and never answered my letters or my calls about the overdraft fees.",
)


def set_padding_side(tokenizer, side: str) -> None:
    """Pad on `side`, and save it so: `save_pretrained` writes only the options the tokenizer was loaded with, so a
    side set on one whose folder names none (SmolLM2's LlamaTokenizerFast) came back as its class's default (left)."""
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = side


def padding_side_works(model, tokenizer, side: str) -> bool:
    """Does the model score PADDING_PROBE[0] the same alone and inside a batch padded on `side`?"""
    saved_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = side
    model.eval()
    try:
        with torch.no_grad():
            alone = model(**tokenizer(PADDING_PROBE[:1], return_tensors="pt").to(model.device)).logits
            batch = tokenizer(list(PADDING_PROBE), return_tensors="pt", padding=True).to(model.device)
            padded = model(**batch).logits[:1]
    finally:
        tokenizer.padding_side = saved_side
        model.train(was_training)
    alone, padded = alone.float(), padded.float()
    # fp32 agrees to rounding; half precision (or a 4-bit model computing in half) only to ~1e-2
    quant = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    half = {torch.float16, torch.bfloat16}
    low = (
        any(p.dtype in half for p in model.parameters())
        or getattr(quant, "bnb_4bit_compute_dtype", None) in half
    )
    tol = 2e-2 if low else 1e-4
    return bool(torch.allclose(alone, padded, rtol=tol, atol=tol * (1.0 + alone.abs().max().item())))


def check_padding(model, tokenizer) -> str:
    """Make sure the classifier pools the same token whether or not a text is padded (decoder heads pool the
    last non-pad token, found through `config.pad_token_id`).

    Keeps the tokenizer's padding side when it works, switches to the other side (with a warning) when only
    that one works, and raises a clear error when neither does. Returns the padding side in use.
    """
    config_pad, tok_pad = model.config.pad_token_id, tokenizer.pad_token_id
    if tok_pad is None or config_pad != tok_pad:
        raise ValueError(
            f"config.pad_token_id ({config_pad}) must equal the tokenizer's pad token id ({tok_pad}): "
            "decoder heads find the last real token through it. Load with training.load_tokenizer and "
            "training.load_classifier, which set both."
        )
    side = tokenizer.padding_side
    if padding_side_works(model, tokenizer, side):
        logger.info(
            "Padding check passed: %s padding, pad token %r (id %s)", side, tokenizer.pad_token, tok_pad
        )
        return side
    other = "left" if side == "right" else "right"
    if padding_side_works(model, tokenizer, other):
        logger.warning(
            "%s pools the wrong token with %s padding: switching the tokenizer to %s padding",
            type(model).__name__,
            side,
            other,
        )
        set_padding_side(tokenizer, other)
        return other
    raise UsageError(
        f"{type(model).__name__} scores a text differently alone and inside a padded batch, with left and with "
        f"right padding (pad token {tokenizer.pad_token!r}, id {tok_pad}): its head does not pool the last "
        "non-pad token. Use a tokenizer whose pad token the model's head recognises, or a model whose "
        "sequence-classification head pools by position."
    )


def finish_run(
    trainer,
    *,
    title: str,
    run_info: dict,
    data: PreparedData,
    results: list,
    command: str,
    config: dict,
    push: bool,
    sections: list[str] | None = None,
) -> dict:
    """Main process only: metrics, report, plots, card and run files; then the Hub push if asked.

    `config` maps a name to each argument dataclass; they are recorded in run_config.json
    (TrainingArguments.to_dict masks tokens).
    """
    from longtail.report import write_run_outputs
    from longtail.runs import push_folder, source_description, write_run_files

    args = trainer.args
    paths = write_run_outputs(
        args.output_dir,
        title=title,
        base_model=run_info["model"],
        run_info=run_info,
        data=data,
        results=results,
        command=command,
        data_description=source_description(config["data"]),
        sections=sections,
    )
    record = {name: dataclasses.asdict(value) for name, value in config.items()}
    write_run_files(args.output_dir, data, command, {**record, "training": args.to_dict()})
    if push:
        push_folder(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
    return paths
