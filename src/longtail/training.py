"""What the Trainer recipes share: model arguments, hardware precision, model + tokenizer loading,
tokenisation, the collator, and prediction."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

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

from longtail.data import PreparedData
from longtail.metrics import softmax

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
    logger.info("Mixed precision: %s", precision)
    return dataclasses.replace(training_args, fp16=precision == "fp16", bf16=precision == "bf16")


def load_tokenizer(model_args: ModelArguments):
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
    )
    if tokenizer.pad_token is None:
        # Decoders ship without a pad token; eos is the usual stand-in (the head pools the last non-pad token).
        if tokenizer.eos_token is None:
            raise ValueError(
                f"Tokenizer of {model_args.model_name_or_path} has neither a pad nor an eos token"
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer had no pad token: using eos (%r)", tokenizer.eos_token)
    return tokenizer


def load_classifier(model_args: ModelArguments, label_names: list[str], tokenizer, **from_pretrained_kwargs):
    """A sequence classifier with the label maps and problem type written into its config."""
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
    return AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        trust_remote_code=model_args.trust_remote_code,
        use_safetensors=True,  # never unpickle weights
        **from_pretrained_kwargs,
    )


def tokenize_splits(data: PreparedData, tokenizer, max_length: int, training_args: TrainingArguments) -> dict:
    """HF datasets with input_ids/attention_mask/labels per split (padding is left to the collator)."""
    import datasets

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
