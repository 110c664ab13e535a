"""Refit a fine-tuning run on train + validation, after validation has chosen everything.

The scikit-learn recipes refit their chosen setting (`longtail.refit`); this is the same step for a Trainer
run (`--refit_with_validation` in `full_ft_encoder.py`, `lora_decoder.py` and `qlora_decoder.py`). The selection run has chosen, on validation, the
checkpoint (hence a number of epochs), WiSE-FT's alpha and the post-hoc tau. The refit trains the model again
from the same start on train + validation for that many epochs (same seed, hyperparameters and schedule
length in epochs; any LP-FT head warm-up included), then applies the same alpha (against its own start) and
tau (with the train + validation prior); a LoRA run gets a new adapter the same way. It is what `GridSearchCV(refit=True)` does, at twice the training
cost, and it gives the rare classes the validation rows too.

What was measured on validation stays held out: the validation predictions, metrics and temperature are the
selection run's. The saved model and the test split are the refit's. With `--head_init_from`, the refit
starts from the probe's saved model (itself refit on train + validation when the probe was), not from the
train-only head the selection run started from.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import datasets as hf_datasets
import transformers

from longtail.data import PreparedData
from longtail.posthoc import fold_into_head, log_prior_array
from longtail.refit import label_counts, train_and_validation

logger = logging.getLogger(__name__)


def chosen_epochs(trainer) -> float:
    """Epochs of training behind the model the selection run kept: the best checkpoint's with
    `load_best_model_at_end`, else all the run trained."""
    state, args = trainer.state, trainer.args
    best = state.best_model_checkpoint
    if best and args.load_best_model_at_end:
        step = int(best.rstrip("/").rsplit("-", 1)[-1])
        epochs = [e["epoch"] for e in state.log_history if e.get("step") == step and "epoch" in e]
        if not epochs:
            raise ValueError(f"refit: no logged epoch for the best checkpoint {best} (step {step})")
        return float(epochs[-1])
    return float(state.epoch)


def refit(
    selection,
    build_model,
    data: PreparedData,
    datasets: dict,
    lpft_args,
    alpha,
    tau: float,
    train_metrics: dict,
    save=None,
):
    """Train `build_model()` on train + validation as the selection trainer's run was trained, then apply its
    alpha (None: no WiSE-FT) and tau; save it to the run folder with `save(trainer)` (default
    `trainer.save_model()`; adapter runs pass `adapters.save_adapter`). Its metrics are written beside the
    selection run's `train_metrics` (train_results.json). Returns (refit trainer, the report's section)."""
    from longtail.lpft import train as lpft_train
    from longtail.wise_ft import apply_alpha, float_state

    epochs = chosen_epochs(selection)
    rows = hf_datasets.concatenate_datasets(
        [datasets["train"], datasets["validation"]]
    )  # tokenised, in order
    counts = label_counts(train_and_validation(data)["label_id"].to_numpy())
    args = dataclasses.replace(
        selection.args,
        num_train_epochs=epochs,
        max_steps=-1,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        resume_from_checkpoint=None,
    )
    logger.info(
        "Refit: training again on train + validation (%d rows) for %g epoch(s), the chosen checkpoint's",
        len(rows),
        epochs,
    )
    transformers.set_seed(args.seed)  # the same start as the selection run (a fresh head draws the same init)
    model = build_model()
    trainer = type(selection)(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=selection.processing_class,
        data_collator=selection.data_collator,
        loss_args=selection.loss_args,
        train_counts=counts,  # class weights and the logit-adjusted loss from every fitted row
    )
    start = {}
    started = time.time()
    result, _ = lpft_train(
        trainer, lpft_args, None, (lambda m: start.update(float_state(m))) if alpha is not None else None
    )
    if alpha is not None:
        apply_alpha(trainer.model, start, alpha)
    if tau:
        fold_into_head(trainer.model, log_prior_array(counts, len(data.label_names)), tau)
    (save or type(trainer).save_model)(trainer)
    metrics = {f"refit_{k.removeprefix('train_')}": v for k, v in result.metrics.items()}
    metrics.update(
        refit_rows=len(rows), refit_epochs=epochs, refit_total_runtime=round(time.time() - started, 1)
    )
    selection.save_metrics("train", {**train_metrics, **metrics})
    return trainer, refit_section(data, metrics, alpha, tau)


def refit_adapter(
    selection, build_base, adapter_args, data: PreparedData, datasets: dict, lpft_args, tau, train_metrics
):
    """`refit` for a LoRA or QLoRA run: a new adapter (`add_lora(build_base(), adapter_args)`), saved with
    `save_adapter` as the recipe saves its own; no WiSE-FT."""
    from longtail.adapters import add_lora, save_adapter

    def build():
        return add_lora(build_base(), adapter_args)

    return refit(selection, build, data, datasets, lpft_args, None, tau, train_metrics, save=save_adapter)


def refit_section(data: PreparedData, metrics: dict, alpha, tau: float) -> str:
    n_train, n_val = len(data.splits["train"]), len(data.splits["validation"])
    chosen = ", ".join(
        [f"{metrics['refit_epochs']:g} epoch(s) (as many as the kept model had trained)"]
        + ([f"WiSE-FT alpha {alpha:g}"] if alpha is not None else [])
        + ([f"post-hoc tau {tau:g} (with the train + validation prior)"] if tau else [])
    )
    return "\n".join(
        [
            "## Refit on train + validation",
            "",
            f"After validation chose everything, the model was trained again from the same start on train + "
            f"validation ({n_train} + {n_val} rows) with {chosen}, in "
            f"{metrics['refit_total_runtime']:.0f} s. The saved model and test use the refit; the validation "
            "predictions, metrics and temperature are the selection run's (held out).",
        ]
    )
