"""Long-tail losses and the Trainer that uses them.

- ce: plain cross-entropy (optionally class-weighted, optionally label-smoothed).
- weighted_ce: cross-entropy with per-class weights (`class_weighting` inverse or sqrt_inverse).
- focal: focal loss (Lin et al. 2017), (1 - p_t)^gamma * CE, with optional class weights as alpha.
- logit_adjusted: CE on logits + tau * log(prior) (Menon et al. 2021). The shift is applied in training
  only, so at inference the raw logits act as if classes were balanced: the Bayes-optimal rule for
  balanced error, which is what macro-F1 rewards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, has_length

from longtail.checkpoints import RecordLabels, RecordTrainLoss, fit_problem, label_names_of
from longtail.cli import UsageError
from longtail.layer_decay import RecordLayerDecay, check_resume, layerwise_param_groups, resume_error
from longtail.posthoc import check_tau, parse_tau_option

LOSSES = ("ce", "weighted_ce", "focal", "logit_adjusted")
WEIGHTINGS = ("none", "inverse", "sqrt_inverse")


@dataclass
class LossArguments:
    loss: str = field(default="ce", metadata={"help": f"Training loss: one of {LOSSES}."})
    class_weighting: str = field(
        default="none",
        metadata={
            "help": f"Per-class weights from training counts, normalised to mean 1: one of {WEIGHTINGS}."
        },
    )
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal loss."})
    logit_adjustment_tau: float = field(default=1.0, metadata={"help": "Scale of the log-prior shift."})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Label smoothing for the CE-family losses."}
    )
    posthoc_logit_adjustment: str = field(
        default="auto",
        metadata={
            "help": "After training, shift logits by -tau*log(prior): 'auto' picks tau in {0, .25, .5, .75, 1} "
            "by validation macro-F1 and folds it into the head's bias; 'none'; or a fixed tau."
        },
    )

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {LOSSES}, got '{self.loss}'")
        if self.class_weighting not in WEIGHTINGS:
            raise ValueError(f"--class_weighting must be one of {WEIGHTINGS}, got '{self.class_weighting}'")
        if self.loss == "weighted_ce" and self.class_weighting == "none":
            raise ValueError("--loss weighted_ce needs --class_weighting inverse or sqrt_inverse")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        # a negative gamma weights the rows the model already gets right most, and one it is sure of (p_t = 1)
        # gives 0^gamma * 0 = NaN loss; it was taken and trained
        if not 0.0 <= self.focal_gamma < float("inf"):
            raise ValueError(
                f"--focal_gamma must be a finite number >= 0, got {self.focal_gamma} (0 is plain CE; the focal "
                "loss's usual value is 2)"
            )
        parse_tau_option(self.posthoc_logit_adjustment)  # now, not after training
        # a negative tau trains the raw logits towards the head classes; NaN passed every check to a NaN loss
        # (other losses do not read it: still refused, but a large one is not warned about)
        check_tau(self.logit_adjustment_tau, "--logit_adjustment_tau", warn=self.loss == "logit_adjusted")


def class_weights(train_counts: Mapping[int, int], num_labels: int, scheme: str) -> torch.Tensor | None:
    """Weights proportional to 1/n_c (inverse) or 1/sqrt(n_c) (sqrt_inverse), normalised to mean 1."""
    if scheme == "none":
        return None
    counts = torch.tensor([float(train_counts.get(c, 0)) for c in range(num_labels)])
    if (counts == 0).any():
        missing = [c for c in range(num_labels) if counts[c] == 0]
        raise ValueError(f"Class ids {missing} have no training rows: cannot weight by frequency")
    weights = 1.0 / counts if scheme == "inverse" else counts.rsqrt()
    return weights / weights.mean()


def log_prior(train_counts: Mapping[int, int], num_labels: int) -> torch.Tensor:
    counts = torch.tensor([float(train_counts.get(c, 0)) for c in range(num_labels)]).clamp(min=1.0)
    return (counts / counts.sum()).log()


def long_tail_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss: str = "ce",
    weights: torch.Tensor | None = None,
    focal_gamma: float = 2.0,
    log_prior: torch.Tensor | None = None,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean loss over the batch (weighted mean when class weights are given, as torch's CE does)."""
    logits = logits.float()  # losses in fp32 even under mixed precision
    if weights is not None:
        weights = weights.to(logits.device, logits.dtype)
    if loss == "logit_adjusted":
        if log_prior is None:
            raise ValueError("logit_adjusted loss needs the class log-prior")
        logits = logits + tau * log_prior.to(logits.device, logits.dtype)
    if loss != "focal":
        return F.cross_entropy(logits, labels, weight=weights, label_smoothing=label_smoothing)
    ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    p_t = F.softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    focal = (1.0 - p_t).pow(focal_gamma) * ce
    if weights is None:
        return focal.mean()
    w = weights[labels]
    return (w * focal).sum() / w.sum()


class LongTailTrainer(Trainer):
    """A Trainer whose `compute_loss` applies one of the long-tail losses.

    `labels` are popped from the inputs so the model does not also compute its own loss.
    The loss is a per-batch mean, so we tell Trainer to scale it for gradient accumulation itself
    (`model_accepts_loss_kwargs = False`); `num_items_in_batch` is accepted and not needed.
    `layer_lr_decay` < 1 gives the optimizer one learning rate per layer (`longtail.layer_decay`); `lpft.train`
    sets it from `--layer_lr_decay` before each training it runs (the selection run, its refit). Each checkpoint
    records it, and a resume with another decay is refused (`layer_decay.check_resume`).
    """

    layer_lr_decay = 1.0

    def __init__(self, *args, loss_args: LossArguments, train_counts: Mapping[int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        num_labels = self.model.config.num_labels
        self.loss_args = loss_args
        self.train_counts = train_counts  # kept for a second phase (lpft.warm_up_head)
        self.class_weight_tensor = class_weights(train_counts, num_labels, loss_args.class_weighting)
        self.log_prior = log_prior(train_counts, num_labels)
        self.add_callback(RecordLayerDecay(self))
        self.add_callback(RecordLabels(label_names_of(self.model)))
        self.train_loss_record = RecordTrainLoss(self)  # train_loss over every step, also after a resume
        self.add_callback(self.train_loss_record)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = (
            get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is True
            else resume_from_checkpoint
        )
        if checkpoint:
            if problem := fit_problem(checkpoint, self.model):
                raise UsageError(
                    f"--resume_from_checkpoint {checkpoint}: {problem}. Resume with the data and options it was "
                    "written with, or start a new run without --resume_from_checkpoint."
                )
            check_resume(checkpoint, self.layer_lr_decay)
        self.train_loss_record.resume_from = checkpoint or None
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        # torch's Optimizer.load_state_dict: the checkpoint's groups do not fit this optimizer
        except ValueError as err:
            if checkpoint and "parameter group" in str(err):
                raise resume_error(checkpoint, self.layer_lr_decay) from err
            raise

    def _get_eval_sampler(self, eval_dataset):
        # `--group_by_length` is for training batches. Transformers (PR #33514) also groups evaluation and
        # prediction rows by length, in an unseeded random order, and `predict` returns its rows in that order:
        # every caller pairing them with the split's rows (validation and test predictions, WiSE-FT's alpha, the
        # post-hoc tau, the temperature) scored each row's prediction against another row's label.
        if (
            self.args.group_by_length
            and not self.args.use_legacy_prediction_loop
            and has_length(eval_dataset)
        ):
            return (
                SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
            )  # Trainer's own choice
        return super()._get_eval_sampler(eval_dataset)

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        # the loss since the last log, for a checkpoint saved in this call
        self.train_loss_record.pending = tr_loss
        try:
            return super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)
        finally:
            self.train_loss_record.pending = None

    def _save_checkpoint(self, model, trial):
        # train_loss.json first: Trainer writes trainer_state.json, which marks a checkpoint complete, last
        checkpoint = (
            Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        self.train_loss_record.save(checkpoint, self.state)
        return super()._save_checkpoint(model, trial)

    def create_optimizer(self):
        if self.optimizer is not None or self.layer_lr_decay == 1.0:
            return super().create_optimizer()
        # Trainer's own path with our groups as `params` (its documented override), so the optimizer class,
        # its kwargs and bitsandbytes' 8-bit embedding overrides stay Trainer's
        optimizer_cls, kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
            self.args, self.model
        )
        groups = layerwise_param_groups(
            self.model,
            self.args.learning_rate,
            self.layer_lr_decay,
            self.args.weight_decay,
            self.get_decay_parameter_names(self.model),
        )
        own = self.optimizer_cls_and_kwargs
        self.optimizer_cls_and_kwargs = (optimizer_cls, {**kwargs, "params": groups})
        try:
            return super().create_optimizer()
        finally:
            self.optimizer_cls_and_kwargs = own

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # Trainer reads the labels from its own dict after this call
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        loss = self.hard_loss(logits, labels)
        return (loss, outputs) if return_outputs else loss

    def hard_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured long-tail loss against the gold labels."""
        a = self.loss_args
        return long_tail_loss(
            logits,
            labels,
            loss=a.loss,
            weights=self.class_weight_tensor,
            focal_gamma=a.focal_gamma,
            log_prior=self.log_prior,
            tau=a.logit_adjustment_tau,
            label_smoothing=a.label_smoothing,
        )
