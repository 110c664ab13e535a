"""Cross-fitted (out-of-fold) probabilities of the training rows, for a distillation teacher.

A model scoring the rows it was fit on is near-certain there (TF-IDF + LogReg on CFPB: train macro-F1 0.95 against
0.27 on validation), so its soft targets say little beyond the labels. Cross-fitting scores each training row with
the same setting fit on the other folds: what the teacher says of text it has not seen. `recipes/distill.py
--teacher_logits <run folder>` reads the saved `predictions_train.npz`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from longtail.cli import UsageError

logger = logging.getLogger(__name__)
FOLDS_HELP = (
    "With --predict_train: each training row is scored by the chosen setting fit on the other folds (K stratified "
    "folds), so a distillation teacher says what it would of unseen text; a model is near-certain on its own "
    "training rows. 0: the saved model's in-sample probabilities."
)


def check_folds(folds: int) -> None:
    if folds == 1 or folds < 0:
        raise ValueError(f"predict_train_folds must be 0 (in-sample) or at least 2, got {folds}")


def check_class_counts(y: np.ndarray, folds: int) -> None:
    """Fail before any fitting when no class can fill `folds` folds (else scikit-learn's error from inside the
    splitter, after the recipe's fits); 0 folds (in-sample) needs nothing."""
    counts = np.bincount(y)
    if folds and counts.max() < folds:
        raise UsageError(
            f"--predict_train_folds {folds}: no class has {folds} training rows (at most {counts.max()}); "
            "use fewer folds, or 0 for in-sample predictions"
        )


def cross_fitted_probs(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    y: np.ndarray,
    num_labels: int,
    folds: int,
    seed: int,
) -> np.ndarray:
    """(rows, num_labels) probabilities: `fit_predict(fit_rows, scored_rows)` fits on the first row indices and
    returns probabilities over every label for the second, once per stratified fold."""
    check_class_counts(y, folds)
    counts = np.bincount(y)
    few = int(((counts > 0) & (counts < folds)).sum())
    if few:  # StratifiedKFold warns too; say what it means here
        logger.warning(
            "%d classes have fewer than %d training rows: some of their rows are scored by a fold that never saw "
            "the class",
            few,
            folds,
        )
    probs = np.zeros((len(y), num_labels))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for k, (fit_rows, scored) in enumerate(splitter.split(np.zeros(len(y)), y)):
        probs[scored] = fit_predict(fit_rows, scored)
        logger.info("Train predictions: fold %d of %d scored (%d rows)", k + 1, folds, len(scored))
    return probs


def train_prediction_note(folds: int, refit: bool) -> str:
    """The report's words on how `predictions_train.npz` was made."""
    if folds:
        return f"cross-fitted: each row scored by the chosen setting fit on the other {folds - 1} of {folds} stratified folds of train"
    return (
        "in-sample: the saved model" + (" (fit on train + validation)" if refit else "") + " on its own rows"
    )


def train_prediction_folds(run_dir: Path) -> int | None:
    """How a folder's predictions_train.npz was made: the recipe's `predict_train_folds` (0: in-sample) from its
    run_config.json, or an ensemble's from its ensemble.json (`combined_folds` of its members); None when
    neither records it."""
    for name in ("run_config.json", "ensemble.json"):
        path = Path(run_dir) / name
        if path.is_file():
            sections = json.loads(path.read_text("utf-8")).values()
            found = [
                s["predict_train_folds"]
                for s in sections
                if isinstance(s, dict) and "predict_train_folds" in s
            ]
            if found:
                return None if found[0] is None else int(found[0])
    return None


def combined_folds(member_folds: list[int | None]) -> int | None:
    """An ensemble's train predictions are only as unseen as its least held-out member's: None if any member
    does not record how it made them, 0 if any is in-sample, else the fewest folds."""
    if any(f is None for f in member_folds):
        return None
    return min(member_folds)
