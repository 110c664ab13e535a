"""Validation grids of scikit-learn models: every setting fit on train and predicted on validation.

Shared by the TF-IDF baseline and the probe. Lives in the package (not a recipe) so that joblib's worker
processes can import what they run.
"""

from __future__ import annotations

import time

from joblib import Parallel, delayed
from sklearn.base import clone


def fit_and_predict(estimator, x_train, y_train, x_val):
    """(fitted copy of `estimator`, its validation predictions, fit + predict seconds)."""
    started = time.time()
    fitted = clone(estimator).fit(x_train, y_train)
    return fitted, fitted.predict(x_val), round(time.time() - started, 1)


def fit_settings(estimators: list, x_train, y_train, x_val, n_jobs: int = 1) -> list[tuple]:
    """`fit_and_predict` for every estimator, in their order, `n_jobs` at a time (joblib processes; -1 = one
    per core). The results do not depend on n_jobs: each fit is the same deterministic solver on the same rows."""
    if n_jobs == 0:
        raise ValueError("n_jobs must be a number of processes (1, 2, ...) or -1 for one per core, got 0")
    jobs = min(n_jobs, len(estimators)) if n_jobs > 0 else n_jobs
    if jobs == 1 or len(estimators) < 2:  # no worker processes: nothing to pickle
        return [fit_and_predict(e, x_train, y_train, x_val) for e in estimators]
    return Parallel(n_jobs=jobs)(delayed(fit_and_predict)(e, x_train, y_train, x_val) for e in estimators)
