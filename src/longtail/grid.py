"""Validation grids of scikit-learn models: every setting fit on train and predicted on validation.

Shared by the TF-IDF baseline and the probe. Lives in the package (not a recipe) so that joblib's worker
processes can import what they run.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone

logger = logging.getLogger(__name__)


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


def check_solver_options(tol: float, max_iter: int) -> None:
    """A clear error at parse time, not scikit-learn's after minutes of vectorising or embedding (a negative tol),
    and not a silently unfit model (max_iter 0 runs no iteration at all)."""
    if tol < 0 or max_iter < 1:
        raise ValueError(f"--tol must be >= 0 and --max_iter >= 1, got tol={tol}, max_iter={max_iter}")


def check_grid(grid_C: list[float], grid_class_weight: list[str], weightings: tuple[str, ...]) -> None:
    """The C x class-weighting grid of the probe and the TF-IDF baseline, checked when the options are read: a
    weighting outside `weightings`, an empty weighting list (a YAML `[]`: no setting to fit, an AttributeError
    once every split was vectorised or embedded), a C that is not positive (`not c > 0` also catches a NaN given
    from Python), and a value listed twice (it was fit twice and listed twice in the report's grid)."""
    bad = sorted({w for w in grid_class_weight if w not in weightings})
    if bad:
        raise ValueError(f"grid_class_weight values must be in {weightings}, got {bad}")
    if not grid_class_weight:
        raise ValueError(f"grid_class_weight needs at least one of {weightings}, got []")
    if not grid_C or any(not c > 0 for c in grid_C):
        raise ValueError(f"grid_C must be positive numbers, got {grid_C}")
    for name, values in (("grid_C", grid_C), ("grid_class_weight", grid_class_weight)):
        if repeated := sorted({v for v in values if values.count(v) > 1}, key=str):
            raise ValueError(f"{name} lists {', '.join(map(str, repeated))} more than once: {values}")


def solver_iterations(estimator) -> int:
    """Iterations the fitted model's solver ran (a Pipeline: its last step's; the most over sub-problems)."""
    if hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    return int(np.max(estimator.n_iter_))


def warn_unconverged(settings: list[dict], max_iter: int) -> list[dict]:
    """Log the fits that stopped at `max_iter` (each a dict with its `iterations` and the values that name it)
    before meeting the solver's tolerance; returns them. Their scores depend on where the solver stopped, so
    the same run differs between library versions. scikit-learn's own ConvergenceWarning is not enough: in
    the grid's worker processes it is easy to miss."""
    stopped = [s for s in settings if s["iterations"] >= max_iter]
    if stopped:
        logger.warning(
            "%d of %d fits stopped at max_iter %d before the solver's tolerance was met (%s): their scores "
            "depend on where the solver stopped; raise --max_iter",
            len(stopped),
            len(settings),
            max_iter,
            fit_names(stopped),
        )
    return stopped


def fit_names(fits: list[dict]) -> str:
    """'C=10.0, class_weight=balanced; refit=True, C=10.0, ...': each fit by the values that name it."""
    return "; ".join(", ".join(f"{k}={v}" for k, v in f.items() if k != "iterations") for f in fits)


def solver_note(tol: float, max_iter: int, stopped: list[dict]) -> str:
    """The report's line on lbfgs: its stopping rule, and the fits (from `warn_unconverged`) that ran out."""
    note = f"Solver: lbfgs, tol {tol:g}, at most {max_iter} iterations"
    if not stopped:
        return note + "; every fit met the tolerance."
    return note + (
        f"; **{len(stopped)} fit(s) stopped at max_iter** before meeting it ({fit_names(stopped)}): their scores "
        "depend on where the solver stopped; raise --max_iter."
    )
