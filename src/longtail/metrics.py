"""Metrics that tell the truth about a long-tail classifier.

Everything is computed from integer labels and class probabilities with sklearn/scipy.
Macro averages follow sklearn's default: they run over the classes present in the true labels
or the predictions of the rows scored (a class never seen and never predicted does not count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

TIERS = ("head", "mid", "tail")
ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_BATCH_CELLS = 10_000_000  # resamples x rows per batch: 80 MB of int64 indices per array


def bootstrap_settings(n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """How the CIs and paired deltas were drawn, for the outputs that report them (the same seed and resamples
    give the same numbers)."""
    return {
        "method": "percentile",
        "n_resamples": n_resamples,
        "confidence_level": BOOTSTRAP_CONFIDENCE,
        "seed": seed,
        "rng": "numpy.random.default_rng(seed)",
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(accuracy_score(y_true, y_pred))


# Batched forms of the two metrics above for scipy's vectorised bootstrap: one resample per row of
# (resamples, n) arrays. sklearn validates its inputs on every call (~5 ms), which made 1,000 resamples
# cost seconds per metric and split; these count all resamples at once from the same definitions
# (tests/test_metrics.py checks them against sklearn on every resample), so the CIs are unchanged.
def _macro_f1_batched(y_true: np.ndarray, y_pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """sklearn's macro-F1 of each resample (zero_division=0): the mean of 2TP / (T + P) over the classes in
    the resample's true labels or predictions."""
    y_true, y_pred = np.moveaxis(y_true, axis, -1), np.moveaxis(y_pred, axis, -1)
    batch, n = y_true.shape[:-1], y_true.shape[-1]
    codes = np.stack([y_true, y_pred])
    if not (np.issubdtype(codes.dtype, np.integer) and 0 <= codes.min() and codes.max() < 2**20):
        _, codes = np.unique(codes, return_inverse=True)  # other labels -> 0..k-1 (a sort: slower)
    true_codes, pred_codes = codes.reshape(2, -1, n)
    resamples, k = true_codes.shape[0], int(codes.max()) + 1
    slots = true_codes + np.arange(resamples)[:, None] * k  # class c of resample r counts at r * k + c

    def counts(at: np.ndarray) -> np.ndarray:
        return np.bincount(at, minlength=resamples * k).reshape(resamples, k)

    true = counts(slots.ravel())
    pred = counts((pred_codes + np.arange(resamples)[:, None] * k).ravel())
    hits = counts(slots[true_codes == pred_codes])
    present = (true + pred) > 0
    f1 = np.divide(2.0 * hits, true + pred, out=np.zeros(true.shape), where=present)
    return (f1.sum(-1) / present.sum(-1)).reshape(batch)


def _accuracy_batched(y_true: np.ndarray, y_pred: np.ndarray, axis: int = -1) -> np.ndarray:
    return (np.asarray(y_true) == np.asarray(y_pred)).mean(axis=axis)


_BATCHED = {macro_f1: _macro_f1_batched, accuracy: _accuracy_batched}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to bin 0
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per-bin mean confidence, accuracy and count, for reliability diagrams."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        in_bin = bins == b
        out.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": int(in_bin.sum()),
                "confidence": float(confidence[in_bin].mean()) if in_bin.any() else float("nan"),
                "accuracy": float(correct[in_bin].mean()) if in_bin.any() else float("nan"),
            }
        )
    return out


def negative_log_likelihood(probs: np.ndarray, y_true: np.ndarray, eps: float = 1e-12) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, None)).mean())


def assign_tiers(train_counts: Mapping[int, int], head: int = 20, mid: int = 40) -> dict[int, str]:
    """Tier each class by training frequency: top `head` classes, the next `mid`, then the tail.

    Ties are broken by class id so the assignment is deterministic.
    """
    order = sorted(train_counts, key=lambda c: (-train_counts[c], c))
    return {c: ("head" if i < head else "mid" if i < head + mid else "tail") for i, c in enumerate(order)}


def tier_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, tiers: Mapping[int, str]) -> dict[str, float]:
    """Macro-F1 over the classes of each tier that occur in the true labels (NaN for an empty tier).

    Per-tier scores use the true-label classes only: a head-class prediction for a tail row hurts the
    tail class's recall, and is not counted again as an extra zero in the head tier.
    """
    out = {}
    present = np.unique(y_true)
    for tier in TIERS:
        labels = [c for c in present if tiers.get(int(c)) == tier]
        out[f"macro_f1_{tier}"] = (
            float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
            if labels
            else float("nan")
        )
    return out


def _bootstrap(statistic, arrays, n_resamples, confidence_level, seed, vectorized=False):
    """scipy's percentile bootstrap, resampling rows jointly across `arrays` (the same resamples whether
    or not `statistic` is vectorised). Resamples are drawn in batches of at most BOOTSTRAP_BATCH_CELLS
    row indices, so a large split does not hold every resample in memory at once."""
    return bootstrap(
        arrays,
        statistic,
        paired=True,
        vectorized=vectorized,
        n_resamples=n_resamples,
        batch=max(1, BOOTSTRAP_BATCH_CELLS // max(1, len(arrays[0]))),
        confidence_level=confidence_level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence_level: float = BOOTSTRAP_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(*arrays)` resampling rows (paired across arrays)."""
    batched = _BATCHED.get(statistic)
    res = _bootstrap(batched or statistic, arrays, n_resamples, confidence_level, seed, batched is not None)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float] = macro_f1,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence_level: float = BOOTSTRAP_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """Compare two systems scored on the same rows: delta = metric(a) - metric(b).

    Returns the observed delta, its percentile CI, and the one-sided bootstrap p-value that
    a is not better than b (share of resamples with delta <= 0).
    """
    batched = _BATCHED.get(metric)

    def delta(y, a, b, axis=-1):
        if batched is None:
            return metric(y, a) - metric(y, b)
        return batched(y, a, axis=axis) - batched(y, b, axis=axis)

    vectorized = batched is not None
    res = _bootstrap(delta, (y_true, pred_a, pred_b), n_resamples, confidence_level, seed, vectorized)
    return {
        "delta": float(metric(y_true, pred_a) - metric(y_true, pred_b)),
        "ci_low": float(res.confidence_interval.low),
        "ci_high": float(res.confidence_interval.high),
        "p_value": float((res.bootstrap_distribution <= 0).mean()),
        "n_resamples": n_resamples,
    }


def per_class_table(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str], tiers: Mapping[int, str]
):
    """Precision/recall/F1/support for every class of the label space, as a DataFrame."""
    import pandas as pd

    labels = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    predicted = np.bincount(y_pred, minlength=len(labels))
    return pd.DataFrame(
        {
            "label_id": labels,
            "label": list(label_names),
            "tier": [tiers.get(c, "") for c in labels],
            "precision": p,
            "recall": r,
            "f1": f,
            "support": s,
            "predicted": predicted[: len(labels)],
        }
    )


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    tiers: Mapping[int, str],
    *,
    with_ci: bool = True,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """The full metric set written to `<split>_results.json`."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    present = np.union1d(y_true, y_pred)
    f1_per_class = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    out = {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "zero_f1_classes": int((f1_per_class == 0).sum()),
        "classes_scored": len(present),
        **tier_macro_f1(y_true, y_pred, tiers),
        "ece": expected_calibration_error(probs, y_true),
        "nll": negative_log_likelihood(probs, y_true),
        "num_examples": len(y_true),
        "num_classes": probs.shape[1],
    }
    if with_ci and len(y_true) > 1:
        out["accuracy_ci_low"], out["accuracy_ci_high"] = bootstrap_ci(
            accuracy, y_true, y_pred, n_resamples=n_resamples, seed=seed
        )
        out["macro_f1_ci_low"], out["macro_f1_ci_high"] = bootstrap_ci(
            macro_f1, y_true, y_pred, n_resamples=n_resamples, seed=seed
        )
    return out


def slice_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, slices: Mapping[str, np.ndarray]
) -> dict[str, dict]:
    """Accuracy and macro-F1 on boolean row masks (length, redaction, numeric slices)."""
    out = {}
    for name, mask in slices.items():
        mask = np.asarray(mask, dtype=bool)
        n = int(mask.sum())
        out[name] = {
            "num_examples": n,
            "accuracy": accuracy(y_true[mask], y_pred[mask]) if n else float("nan"),
            "macro_f1": macro_f1(y_true[mask], y_pred[mask]) if n else float("nan"),
        }
    return out


# What `trainer_compute_metrics` (and Trainer's own eval_loss) give an evaluation that can choose a checkpoint
# (`--metric_for_best_model`), by the direction that is better; the rest (counts) choose nothing
HIGHER_IS_BETTER = ("accuracy", "macro_f1", "weighted_f1", "macro_f1_head", "macro_f1_mid", "macro_f1_tail")
LOWER_IS_BETTER = ("loss", "nll", "ece", "zero_f1_classes")


def trainer_compute_metrics(tiers: Mapping[int, str]) -> Callable:
    """`compute_metrics` for Trainer: cheap metrics every evaluation (no bootstrap), keyed for
    `metric_for_best_model: macro_f1`."""

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return classification_metrics(
            labels, softmax(np.asarray(logits, dtype=np.float64)), tiers, with_ci=False
        )

    return compute
