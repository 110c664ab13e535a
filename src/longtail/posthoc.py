"""Post-hoc logit adjustment (Menon et al. 2021), chosen on validation.

A classifier trained with plain cross-entropy on a long tail under-predicts rare classes. Subtracting
tau * log(prior) from its logits moves the decision rule towards balanced error (tau = 1 is the
Bayes rule for it). How far to move depends on how well the model fit the tail, so tau is chosen
on validation macro-F1 from a small grid that includes 0 (no change). The chosen shift is folded
into the classifier's bias, so the saved model, `pipeline(...)`, ONNX exports and every later
prediction use it with no extra code.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
import torch

from longtail.metrics import macro_f1

logger = logging.getLogger(__name__)

TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# tau = 1 is the Bayes rule for balanced error; a fixed tau beyond this over-corrects (a warning, not an error)
LARGE_TAU = 2.0
# (option, tau) already warned about: once per process, however often the option is parsed
_warned_taus: set[tuple[str, float]] = set()


def check_tau(tau: float, option: str, value=None, warn: bool = True) -> float:
    """`tau` as a fixed shift for `option`: NaN, inf or a negative tau is a ValueError naming the option and
    `value` (as given); a tau above LARGE_TAU is accepted, with a logged warning (once per value) if `warn`."""
    value = tau if value is None else value
    if not math.isfinite(tau):  # nan or inf: every logit NaN, each prediction class 0, and a report of it
        raise ValueError(f"{option} must be a finite number >= 0, got '{value}'")
    if tau < 0:  # the prior multiplied in, not divided out: the opposite of what the option is for
        raise ValueError(
            f"{option} must be >= 0, got '{value}': a negative tau shifts predictions towards the head classes "
            "(tau = 1 is the Bayes rule for balanced error)"
        )
    if warn and tau > LARGE_TAU and (option, tau) not in _warned_taus:
        _warned_taus.add((option, tau))
        logger.warning(
            "%s %s is above %s: it over-corrects past the balanced-error rule (tau = 1 is its Bayes rule), so "
            "predictions lean to the tail classes",
            option,
            value,
            LARGE_TAU,
        )
    return tau


def parse_tau_option(value: str, option: str = "--posthoc_logit_adjustment") -> tuple[float, ...]:
    """'auto' -> the grid; 'none' -> (0,); a number >= 0 -> that tau (above 2: a warning, `check_tau`)."""
    if value in ("auto", None):
        return TAU_GRID
    if value == "none":
        return (0.0,)
    try:
        tau = float(value)
    except ValueError:
        tau = math.nan
    if not math.isfinite(tau):
        raise ValueError(f"{option} must be auto, none or a number, got '{value}'")
    return (check_tau(tau, option, value),)


def log_prior_array(train_counts: dict[int, int], num_labels: int) -> np.ndarray:
    counts = np.array([max(train_counts.get(c, 0), 1) for c in range(num_labels)], dtype=np.float64)
    return np.log(counts / counts.sum())


def select_tau(
    logits: np.ndarray, y_true: np.ndarray, log_prior: np.ndarray, grid: tuple[float, ...] = TAU_GRID
) -> tuple[float, list[dict]]:
    """The tau with the best validation macro-F1 (ties go to the smaller shift), and the whole grid."""
    rows = []
    for tau in grid:
        pred = (logits - tau * log_prior).argmax(axis=1)
        rows.append(
            {
                "tau": tau,
                "val_macro_f1": macro_f1(y_true, pred),
                "val_accuracy": float((pred == y_true).mean()),
            }
        )
    best = max(rows, key=lambda r: (round(r["val_macro_f1"], 12), -r["tau"]))
    return best["tau"], rows


def classification_head(model: torch.nn.Module, num_labels: int) -> torch.nn.Linear | None:
    """The last Linear layer that outputs `num_labels` logits (BERT/ModernBERT `classifier`,
    RoBERTa `classifier.out_proj`, Qwen/Llama `score`, also inside a PEFT wrapper)."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    return heads[-1] if heads else None


def fold_into_head(model: torch.nn.Module, log_prior: np.ndarray, tau: float, hint: bool = True) -> bool:
    """Subtract tau * log_prior from the head's bias in place. False when the head has no bias (`hint`: then name
    the logit-adjusted loss, whose shift is trained in and needs no bias; not to a run that trains with it)."""
    if tau == 0:
        return True
    head = classification_head(model, len(log_prior))
    if head is None or head.bias is None:
        logger.warning(
            "The classification head has no bias (a decoder's `score`): the post-hoc logit adjustment validation "
            "chose (tau=%s) cannot be folded in, so the saved model and its test scores are unshifted%s",
            tau,
            "; --loss logit_adjusted trains the shift in instead, with no bias needed" if hint else "",
        )
        return False
    if head.bias.numel() != len(log_prior):  # FSDP / DeepSpeed ZeRO-3 leave each process a shard of it
        logger.warning(
            "The head's bias is sharded (FSDP or ZeRO-3): post-hoc logit adjustment (tau=%s) not folded in; "
            "pass --posthoc_logit_adjustment none with sharded training",
            tau,
        )
        return False
    with torch.no_grad():
        head.bias -= torch.as_tensor(tau * log_prior, dtype=head.bias.dtype, device=head.bias.device)
    return True


NOT_FOLDED = (
    "**The head has no bias (a decoder's `score`), so the chosen shift is not in the saved model, nor in the test "
    "scores reported.**"
)


def grid_section(rows: list[dict], tau: float, folded: bool, hint: bool = True) -> str:
    lines = [
        "## Post-hoc logit adjustment",
        "",
        "Logits shifted by -tau * log(class prior) (Menon et al. 2021); tau chosen by validation macro-F1 "
        "(so validation scores after the shift are slightly optimistic; test is not used).",
        ""
        if folded
        else NOT_FOLDED
        + (" `--loss logit_adjusted` trains the shift in instead, with no bias needed." if hint else ""),
        "",
        "| tau | validation macro-F1 | validation accuracy |",
        "|---|---|---|",
    ]
    for r in rows:
        mark = " **(chosen)**" if r["tau"] == tau else ""
        lines.append(f"| {r['tau']} | {r['val_macro_f1']:.4f}{mark} | {r['val_accuracy']:.4f} |")
    return "\n".join(lines)


class Adjustment(NamedTuple):
    """What `adjust_on_validation` did, for the report and the selection line: the tau the saved model carries,
    the report section (None when the option is 'none'), and whether the chosen tau is in the model (`applied`:
    False for a bias-less head, None when no tau was chosen). The selection line read "not applied" off the
    section's wording."""

    tau: float
    section: str | None
    applied: bool | None


def adjust_on_validation(trainer, data, datasets: dict, option: str) -> Adjustment:
    """Choose tau on the validation logits, fold it into the trained model's head, re-save the model.

    Returns (tau, report section, applied); (0.0, None, None) when the option is 'none'.
    """
    grid = parse_tau_option(option)
    if grid == (0.0,):
        return Adjustment(0.0, None, None)
    output = trainer.predict(datasets["validation"], metric_key_prefix="posthoc")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    log_prior = log_prior_array(data.train_counts, len(data.label_names))
    y_val = data.splits["validation"]["label_id"].to_numpy()
    tau, rows = select_tau(np.asarray(logits, dtype=np.float64), y_val, log_prior, grid)
    loss_args = getattr(trainer, "loss_args", None)
    hint = getattr(loss_args, "loss", None) != "logit_adjusted"
    folded = fold_into_head(trainer.model, log_prior, tau, hint)
    logger.info("Post-hoc logit adjustment: tau=%s chosen on validation macro-F1 (%s)", tau, rows)
    if folded and tau != 0:
        trainer.save_model()  # the served model carries the shift
    return Adjustment(tau if folded else 0.0, grid_section(rows, tau, folded, hint), folded)
