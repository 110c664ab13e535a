"""Refit the validation-chosen setting on train + validation (the scikit-learn heads: probe, TF-IDF).

Validation chooses the setting; then that one setting is fit again on every labelled row that is not test.
On a long tail the 10 % validation rows are one more example for many rare classes (on the CFPB study
split the effect was inside the noise: probe test macro-F1 +0.010, TF-IDF -0.004; README). What was
measured or chosen on validation stays honest:
the validation predictions, metrics, temperature, and what later tools choose on them (the ensemble's
temperatures and tau, LP-FT's starting head: `SELECTION_HEAD`) come from the train-only fit, which never saw those rows. The
saved model and the test split use the refit (scikit-learn's `GridSearchCV(refit=True)` does the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# The probe's train-only head (classifier.weight / classifier.bias), kept beside a refit model so that LP-FT
# starts from a head that never saw validation and its validation scores stay held out.
SELECTION_HEAD = "selection_head.safetensors"


@dataclass
class RefitArguments:
    refit_with_validation: bool = field(
        default=False,
        metadata={
            "help": "After choosing on validation, fit the chosen setting again on train + validation and save "
            "that model (test is scored with it). Validation predictions and metrics stay the train-only fit's."
        },
    )


def train_and_validation(data) -> pd.DataFrame:
    """The train and validation rows of a `prepare_data` result, in that order."""
    return pd.concat([data.splits["train"], data.splits["validation"]], ignore_index=True)


def label_counts(labels: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def refit_note(data) -> str:
    """The report's line on what the saved model was fit on."""
    n_train, n_val = len(data.splits["train"]), len(data.splits["validation"])
    return (
        f"the chosen setting was refit on train + validation ({n_train} + {n_val} rows); the saved model and "
        "test use the refit, validation predictions and metrics are the train-only fit's (held out)"
    )
