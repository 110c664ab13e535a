"""LP-FT (Kumar et al. 2022): fit the head first, then fine-tune everything.

Fine-tuning a pretrained body under a random head sends large, noisy gradients into the body and wrecks
the features the rare classes depend on. Two ways to give the body a fitted head first:

- `--head_warmup_epochs N`: a first Trainer run of N epochs trains only the head (the modules outside the
  backbone, `adapters.head_modules`: BERT/ModernBERT `classifier` (+ ModernBERT's pretrained `head`), Qwen/Llama
  `score`) at `--head_warmup_learning_rate`, with the body frozen; then the configured run trains everything
  (or, with LoRA, the adapter + head) at the configured learning rate and schedule.
- `--head_init_from <probe run>`: start from a `probe_encoder` run folder, i.e. fine-tune the probe model itself
  (body + the probe's pooling + its sklearn-fitted head). The head was fit on *mean-pooled* features; BERT's own
  head reads the tanh pooler of [CLS] and a decoder's reads the last token, so copying the weights into them
  would feed the head features it never saw. Fine-tuning the probe architecture keeps head and features
  consistent. The probe's labels must equal this run's (same data options); a mismatch is a clear error.
  A probe refit on train + validation (`--refit_with_validation`) also keeps its train-only head
  (`refit.SELECTION_HEAD`); LP-FT starts from that one, so the rows it is selected on were never fit.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longtail.calibration import temperature_note
from longtail.cli import UsageError
from longtail.refit import SELECTION_HEAD

logger = logging.getLogger(__name__)


@dataclass
class LPFTArguments:
    head_warmup_epochs: float = field(
        default=0.0, metadata={"help": "LP-FT: first train only the head for this many epochs, body frozen."}
    )
    head_warmup_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the head-only warm-up (a fresh head needs a large one)."},
    )
    head_init_from: str | None = field(
        default=None,
        metadata={"help": "A probe_encoder run folder: fine-tune its model (body + pooling + fitted head)."},
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay: layer i of L trains at lr * d^(L - i), the embeddings at "
            "lr * d^(L + 1), the head at lr (longtail.layer_decay); 1 = one rate for all."
        },
    )

    def __post_init__(self):
        if not 0 <= self.head_warmup_epochs < float("inf"):  # nan and inf passed "< 0"
            raise ValueError(
                f"--head_warmup_epochs must be a finite number >= 0, got {self.head_warmup_epochs}"
            )
        if not 0 < self.head_warmup_learning_rate < float("inf"):
            raise ValueError(
                f"--head_warmup_learning_rate must be a finite number > 0, got {self.head_warmup_learning_rate}"
            )
        default = type(self).__dataclass_fields__["head_warmup_learning_rate"].default
        if not self.head_warmup_epochs and self.head_warmup_learning_rate != default:
            # it went unused without a word
            logger.warning(
                "--head_warmup_learning_rate %g is not used: there is no head-only warm-up (--head_warmup_epochs 0)",
                self.head_warmup_learning_rate,
            )
        if not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"--layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")


def model_config(model_args, lpft_args: LPFTArguments, label_names: list[str], tokenizer):
    """The config of the classifier `load_model` returns, read without any weight, so options are checked against
    it (--max_length) before a load that takes minutes for a large model: the probe run's with --head_init_from
    (its folder and labels checked first, as `load_model` does), else `training.classifier_config`."""
    from longtail.training import classifier_config

    if not lpft_args.head_init_from:
        return classifier_config(model_args, label_names, tokenizer)
    from longtail.probe import ProbeConfig, probe_run_config

    probe_run_config(lpft_args.head_init_from, label_names)
    config = ProbeConfig.from_pretrained(lpft_args.head_init_from)
    check_probe_body(lpft_args.head_init_from, config.encoder_config, model_args, tokenizer)
    config.pad_token_id = tokenizer.pad_token_id  # as load_model sets it
    return config


# what tells two bodies apart without reading weights (a fine-tuned variant of one body shares them all)
BODY_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")


def check_probe_body(probe_dir, probe_body, model_args, tokenizer) -> None:
    """Refuse a --head_init_from probe fit on another body or tokenizer than this run names.

    LP-FT fine-tunes the probe's own body, but the texts are tokenised by --model_name_or_path's (or
    --tokenizer_name's) tokenizer: another vocabulary fed the body ids it never saw (silently, or an index error
    mid-training), and another architecture was fine-tuned under this run's model name with only a warning."""
    from transformers import AutoConfig, AutoTokenizer

    from longtail.cli import reading_model
    from longtail.probe import MODEL_TYPE
    from longtail.training import PADDING_PROBE

    source = model_args.model_name_or_path
    with reading_model("--model_name_or_path", source):
        named = AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    if named.model_type == MODEL_TYPE:  # a probe-architecture folder (a probe, an LP-FT run): its body
        named = named.encoder_config
    ours, theirs = ({f: getattr(c, f, None) for f in BODY_FIELDS} for c in (named, probe_body))
    if ours != theirs:
        differ = ", ".join(f"{f} {theirs[f]} vs {ours[f]}" for f in BODY_FIELDS if ours[f] != theirs[f])
        raise UsageError(
            f"--head_init_from {probe_dir} was fit on another body than --model_name_or_path {source} ({differ}): "
            f"pass the body the probe embedded with ('{getattr(probe_body, '_name_or_path', '?')}')"
        )
    with reading_model("--head_init_from", str(probe_dir), needs=("tokenizer_config.json",)):
        saved = AutoTokenizer.from_pretrained(str(probe_dir), trust_remote_code=model_args.trust_remote_code)
    # the same vocabulary and the same ids for a cased, punctuated sentence (lower-casing, special tokens)
    text = PADDING_PROBE[1]
    if saved.get_vocab() != tokenizer.get_vocab() or saved(text)["input_ids"] != tokenizer(text)["input_ids"]:
        option = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
        raise UsageError(
            f"--head_init_from {probe_dir} embedded its texts with another tokenizer than {option} "
            f"{model_args.tokenizer_name or source}'s (other token ids): pass the probe's ({probe_dir})"
        )


def load_model(model_args, lpft_args: LPFTArguments, label_names: list[str], tokenizer, train_only_head=True):
    """The classifier to fine-tune: the probe run's model with --head_init_from, else `training.load_classifier`.

    A refit probe's train-only head is used unless `train_only_head` is false (the refit on train + validation,
    `refit_ft`, starts from the probe's saved, refit model)."""
    from longtail.training import load_classifier

    if not lpft_args.head_init_from:
        return load_classifier(model_args, label_names, tokenizer)
    from longtail.probe import ProbeForSequenceClassification, probe_run_config

    probe_run_config(lpft_args.head_init_from, label_names)  # checks folder, model type and labels first
    model = ProbeForSequenceClassification.from_pretrained(lpft_args.head_init_from, use_safetensors=True)
    # the body is the probe's own; `check_probe_body` (through model_config) refused another body or tokenizer, so
    # a name that differs (a local copy, a Hub cache path) is the same model and is not warned about
    model.config.pad_token_id = tokenizer.pad_token_id
    selection_head = Path(lpft_args.head_init_from) / SELECTION_HEAD
    # the probe was refit on train + validation: start from its train-only head (a refit of this run does not)
    if train_only_head and selection_head.is_file():
        from safetensors.torch import load_file

        loaded = model.load_state_dict(load_file(str(selection_head)), strict=False)
        if loaded.unexpected_keys:
            raise UsageError(
                f"{selection_head}: unexpected tensors {loaded.unexpected_keys} (expected the head's)"
            )
        logger.info(
            "LP-FT: the probe's saved head was refit on train + validation; starting from its train-only head "
            "(%s) so this run's validation scores stay held out",
            SELECTION_HEAD,
        )
    logger.info(
        "LP-FT: fine-tuning the probe in %s (fitted head, %s pooling)",
        lpft_args.head_init_from,
        model.config.pooling,
    )
    return model


def head_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters of the head (modules outside the backbone), also inside a PEFT wrapper."""
    from longtail.adapters import head_modules

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    heads = head_modules(base)
    return {
        name: p
        for name, p in base.named_parameters()
        if p.requires_grad and any(name == h or name.startswith(h + ".") for h in heads)
    }


def warm_up_head(trainer, epochs: float, learning_rate: float) -> dict:
    """Train only the head for `epochs` (body frozen), then restore what was trainable. Returns the
    warm-up's train metrics. The main run's optimizer is created afterwards, over every trainable parameter."""
    model = trainer.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = head_parameters(model)
    if not head:
        raise ValueError(f"{type(model).__name__}: found no trainable head parameters to warm up")
    head_ids = {id(p) for p in head.values()}
    for p in trainable:
        p.requires_grad_(id(p) in head_ids)
    logger.info(
        "LP-FT warm-up: %s epoch(s) of the head only (%s; %d of %d trainable tensors) at lr %s",
        epochs,
        ", ".join(sorted({n.split(".")[0] for n in head})),
        len(head),
        len(trainable),
        learning_rate,
    )
    args = dataclasses.replace(
        trainer.args,
        output_dir=str(Path(trainer.args.output_dir) / "head_warmup"),
        num_train_epochs=epochs,
        max_steps=-1,
        learning_rate=learning_rate,
        warmup_ratio=0.0,
        warmup_steps=0,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        report_to=[],
    )
    warm = type(trainer)(
        model=model,
        args=args,
        train_dataset=trainer.train_dataset,
        processing_class=trainer.processing_class,
        data_collator=trainer.data_collator,
        loss_args=trainer.loss_args,
        train_counts=trainer.train_counts,
    )
    try:
        metrics = warm.train().metrics
    finally:
        for p in trainable:
            p.requires_grad_(True)
        try:  # Trainer made the folder and the warm-up saves nothing in it: no empty head_warmup/ in the run
            Path(args.output_dir).rmdir()
        except OSError:  # not empty, or another process removed it first
            pass
    return {f"head_warmup_{k.removeprefix('train_')}": v for k, v in metrics.items()}


def train(trainer, lpft_args: LPFTArguments, resume_from_checkpoint=None, on_start=None):
    """trainer.train(), preceded by the head-only warm-up when asked (not when resuming: the checkpoint
    already holds a warmed-up head). `on_start(model)` runs just before the main run (WiSE-FT keeps the
    starting weights). The main run's optimizer decays the rate layer by layer with `--layer_lr_decay` (the
    warm-up trains the head alone, at one rate). Returns (train_result, warm-up metrics)."""
    trainer.layer_lr_decay = lpft_args.layer_lr_decay
    warm = {}
    if lpft_args.head_warmup_epochs > 0 and not resume_from_checkpoint:
        warm = warm_up_head(trainer, lpft_args.head_warmup_epochs, lpft_args.head_warmup_learning_rate)
    if on_start is not None:
        on_start(trainer.model)
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    result.metrics.update(warm)
    return result, warm


def selection_note(
    selection: str,
    lpft_args: LPFTArguments,
    tau: float | None,
    tau_applied: bool | None,
    validation_rows: int,
    wise_alpha: float | None = None,
) -> str:
    """run_info's selection line with what else chose what: the head (LP-FT), the post-hoc tau, temperature.
    `tau_applied`: `posthoc.adjust_on_validation`'s `applied` (None: no tau chosen, False: chosen, not in the
    model)."""
    test = "; test scored once at the end"
    parts = [selection.replace(test, "")]
    if lpft_args.head_init_from:
        parts.append(
            f"head: the probe's ({Path(lpft_args.head_init_from).name}; its settings chosen on validation)"
        )
    if lpft_args.head_warmup_epochs:
        parts.append(f"head warm-up: {lpft_args.head_warmup_epochs:g} fixed epoch(s), body frozen")
    if lpft_args.layer_lr_decay != 1:
        parts.append(f"layer-wise lr decay {lpft_args.layer_lr_decay:g}: fixed")
    if wise_alpha is not None:
        parts.append(f"WiSE-FT alpha {wise_alpha:g}: best validation macro-F1")
    # a bias-less head (Qwen/Llama `score`) serves tau 0, which was not the best: the line said it was
    if tau_applied is False:
        parts.append("post-hoc tau: chosen on validation, not applied (the head has no bias)")
    elif tau_applied:
        parts.append(f"post-hoc tau {tau}: best validation macro-F1")
    parts.append(temperature_note(validation_rows))
    return "; ".join(parts) + (test if test in selection else "")
