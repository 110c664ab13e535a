"""Tests for longtail.metrics: exact values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longtail.metrics import (
    accuracy,
    assign_tiers,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    paired_bootstrap,
    per_class_table,
    reliability_bins,
    slice_metrics,
    softmax,
    tier_macro_f1,
    trainer_compute_metrics,
)

# Five rows, five classes in the label space; class 3 is predicted but never true, class 4 neither.
#   class 0: TP 1, FP 0, FN 1 -> P 1,   R 1/2 -> F1 2/3
#   class 1: TP 2, FP 1, FN 0 -> P 2/3, R 1   -> F1 4/5
#   class 2: TP 0, FN 1                       -> F1 0
#   class 3: TP 0, FP 1                       -> F1 0
Y_TRUE = np.array([0, 0, 1, 1, 2])
Y_PRED = np.array([0, 1, 1, 1, 3])
MACRO_F1 = (2 / 3 + 4 / 5 + 0 + 0) / 4  # union of true and predicted labels: {0, 1, 2, 3}
WEIGHTED_F1 = (2 * 2 / 3 + 2 * 4 / 5 + 1 * 0) / 5  # supports 2, 2, 1 (class 3 has support 0)


def one_hot_probs(y_pred: np.ndarray, num_classes: int = 5, top: float = 0.8) -> np.ndarray:
    probs = np.full((len(y_pred), num_classes), (1 - top) / (num_classes - 1))
    probs[np.arange(len(y_pred)), y_pred] = top
    return probs


def test_accuracy_exact():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(3 / 5)


def test_macro_f1_exact_over_union_of_true_and_predicted():
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(MACRO_F1)
    assert MACRO_F1 == pytest.approx(0.3666667, abs=1e-6)


def test_tiers_by_frequency_with_ties_broken_by_id():
    tiers = assign_tiers({5: 3, 2: 3, 7: 3, 1: 9}, head=2, mid=1)
    assert tiers == {1: "head", 2: "head", 5: "mid", 7: "tail"}


def test_tier_macro_f1_exact():
    # order by (-count, id): 0, 1, 3, 2 -> head {0}, mid {1, 3}, tail {2}
    tiers = assign_tiers({0: 10, 1: 10, 2: 1, 3: 5}, head=1, mid=2)
    assert tiers == {0: "head", 1: "mid", 3: "mid", 2: "tail"}
    out = tier_macro_f1(Y_TRUE, Y_PRED, tiers)
    # mid counts class 1 only: class 3 is predicted but never true, so it is not scored in a tier
    assert out == pytest.approx({"macro_f1_head": 2 / 3, "macro_f1_mid": 4 / 5, "macro_f1_tail": 0.0})


def test_tier_macro_f1_empty_tier_is_nan():
    tiers = {0: "head", 1: "head", 2: "mid", 3: "tail"}
    out = tier_macro_f1(Y_TRUE, Y_PRED, tiers)
    assert out["macro_f1_head"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert out["macro_f1_mid"] == 0.0
    assert math.isnan(out["macro_f1_tail"])


# ECE example: 15 bins, bin b holds confidences in (b/15, (b+1)/15].
#   row 0: confidence 0.6 = 9/15 exactly (upper edge of bin 8), correct
#   row 1: confidence 0.58 (bin 8), wrong
#   row 2: confidence 1.0 (bin 14), correct
#   row 3: confidence 0.5 (bin 7: 7.5/15), wrong
ECE_PROBS = np.array(
    [
        [0.6, 0.4, 0.0],
        [0.58, 0.42, 0.0],
        [0.0, 1.0, 0.0],
        [0.2, 0.3, 0.5],
    ]
)
ECE_TRUE = np.array([0, 1, 1, 0])
# bin 8: 2 rows, accuracy 1/2, mean confidence 0.59; bin 14: 1 row, |1 - 1|; bin 7: 1 row, |0 - 0.5|
ECE = 2 / 4 * abs(0.5 - 0.59) + 1 / 4 * 0.0 + 1 / 4 * 0.5


def test_ece_exact_with_bin_edge_and_full_confidence():
    assert ECE == pytest.approx(0.17)
    assert expected_calibration_error(ECE_PROBS, ECE_TRUE) == pytest.approx(ECE, abs=1e-12)


def test_reliability_bins_agree_with_ece():
    bins = reliability_bins(ECE_PROBS, ECE_TRUE)
    assert len(bins) == 15
    assert {b: d["count"] for b, d in enumerate(bins) if d["count"]} == {7: 1, 8: 2, 14: 1}
    assert bins[8]["confidence"] == pytest.approx(0.59)
    assert bins[8]["accuracy"] == 0.5
    assert (bins[8]["low"], bins[8]["high"]) == (8 / 15, 9 / 15)
    assert math.isnan(bins[0]["confidence"])


def test_ece_perfectly_calibrated_is_zero():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == 0.0


def test_nll_exact_and_clipped():
    expected = -(math.log(0.6) + math.log(0.42) + math.log(1.0) + math.log(0.2)) / 4
    assert negative_log_likelihood(ECE_PROBS, ECE_TRUE) == pytest.approx(expected)
    # a zero probability on the true class is clipped at 1e-12, not infinite
    probs = np.array([[1.0, 0.0]])
    assert negative_log_likelihood(probs, np.array([1])) == pytest.approx(-math.log(1e-12))


def test_softmax_exact():
    probs = softmax(np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]]))
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5]])


def test_classification_metrics_exact_values_and_keys():
    tiers = assign_tiers({0: 10, 1: 10, 2: 1, 3: 5, 4: 1}, head=1, mid=2)
    probs = one_hot_probs(Y_PRED, top=0.8)
    out = classification_metrics(Y_TRUE, probs, tiers, n_resamples=50)
    assert set(out) == {
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "zero_f1_classes",
        "classes_scored",
        "macro_f1_head",
        "macro_f1_mid",
        "macro_f1_tail",
        "ece",
        "nll",
        "num_examples",
        "num_classes",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "macro_f1_ci_low",
        "macro_f1_ci_high",
    }
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["macro_f1"] == pytest.approx(MACRO_F1)
    assert out["weighted_f1"] == pytest.approx(WEIGHTED_F1)
    assert out["zero_f1_classes"] == 2  # classes 2 and 3; class 4 (never true nor predicted) not scored
    assert out["classes_scored"] == 4
    assert out["num_examples"] == 5
    assert out["num_classes"] == 5
    # tiers {0: head, 1: mid, 3: mid, 2: tail, 4: tail}
    assert out["macro_f1_head"] == pytest.approx(2 / 3)
    assert out["macro_f1_mid"] == pytest.approx(4 / 5)
    assert out["macro_f1_tail"] == 0.0
    # every row has confidence 0.8 (bin 11), accuracy 3/5
    assert out["ece"] == pytest.approx(abs(0.6 - 0.8))
    assert out["nll"] == pytest.approx(-(3 * math.log(0.8) + 2 * math.log(0.05)) / 5)
    assert out["accuracy_ci_low"] <= out["accuracy"] <= out["accuracy_ci_high"]


def test_classification_metrics_without_ci():
    out = classification_metrics(Y_TRUE, one_hot_probs(Y_PRED), {}, with_ci=False)
    assert not any("_ci_" in k for k in out)


def test_slice_metrics_exact():
    masks = {"first3": np.array([1, 1, 1, 0, 0], bool), "none": np.zeros(5, bool)}
    out = slice_metrics(Y_TRUE, Y_PRED, masks)
    # first three rows: true [0, 0, 1], pred [0, 1, 1]: class 0 F1 2/3, class 1 F1 2/3
    assert out["first3"] == pytest.approx({"num_examples": 3, "accuracy": 2 / 3, "macro_f1": 2 / 3})
    assert out["none"]["num_examples"] == 0
    assert math.isnan(out["none"]["accuracy"]) and math.isnan(out["none"]["macro_f1"])


def test_per_class_table_exact():
    """Every class of the label space, precision and recall each in its own column (the F1 column alone
    cannot tell them apart), and the predicted count from the predictions, not the true labels."""
    names = ["a", "b", "c", "d", "e"]
    df = per_class_table(Y_TRUE, Y_PRED, names, {0: "head", 1: "head", 2: "mid", 3: "tail"})
    assert list(df.label_id) == [0, 1, 2, 3, 4]
    assert list(df.label) == names
    assert list(df.tier) == ["head", "head", "mid", "tail", ""]  # class 4 has no tier
    np.testing.assert_allclose(df.precision, [1, 2 / 3, 0, 0, 0])
    np.testing.assert_allclose(df.recall, [1 / 2, 1, 0, 0, 0])
    np.testing.assert_allclose(df.f1, [2 / 3, 4 / 5, 0, 0, 0])
    assert list(df.support) == [2, 2, 1, 0, 0]
    assert list(df.predicted) == [1, 3, 0, 1, 0]


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def noisy_predictions(n: int, correct_rate: float, seed: int, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    wrong = rng.random(n) > correct_rate
    pred = np.where(wrong, (y + rng.integers(1, num_classes, size=n)) % num_classes, y)
    return y, pred


def test_bootstrap_ci_contains_point_deterministic_and_narrows_with_n():
    y, pred = noisy_predictions(60, 0.7, seed=0)
    point = accuracy(y, pred)
    low, high = bootstrap_ci(accuracy, y, pred, n_resamples=150, seed=1)
    assert low < point < high
    assert bootstrap_ci(accuracy, y, pred, n_resamples=150, seed=1) == (low, high)
    assert bootstrap_ci(accuracy, y, pred, n_resamples=150, seed=2) != (low, high)
    y_big, pred_big = noisy_predictions(2400, 0.7, seed=0)
    low_big, high_big = bootstrap_ci(accuracy, y_big, pred_big, n_resamples=150, seed=1)
    assert low_big < accuracy(y_big, pred_big) < high_big
    # width shrinks roughly as 1/sqrt(n): 40x rows -> about 6x narrower
    assert (high_big - low_big) < (high - low) / 3


def test_paired_bootstrap_identical_systems():
    y, pred = noisy_predictions(80, 0.6, seed=3)
    out = paired_bootstrap(y, pred, pred.copy(), n_resamples=50)
    assert out["delta"] == 0.0
    assert out["ci_low"] == out["ci_high"] == 0.0
    assert out["p_value"] == 1.0  # every resample has delta <= 0: no evidence a beats b
    assert out["n_resamples"] == 50


def test_paired_bootstrap_clearly_better_system():
    y, weak = noisy_predictions(200, 0.4, seed=4)
    strong = np.where(np.random.default_rng(5).random(len(y)) < 0.9, y, weak)
    out = paired_bootstrap(y, strong, weak, n_resamples=100, seed=0)
    assert out["delta"] == pytest.approx(macro_f1(y, strong) - macro_f1(y, weak))
    assert out["delta"] > 0.3
    assert out["ci_low"] > 0
    assert out["ci_low"] <= out["delta"] <= out["ci_high"]
    assert out["p_value"] < 0.05
    # and the other way round: b worse than a gives no evidence at all
    # (accuracy from here on: cheaper than macro-F1 per resample)
    reverse = paired_bootstrap(y, weak, strong, metric=accuracy, n_resamples=100, seed=0)
    assert reverse["ci_high"] < 0 and reverse["p_value"] == 1.0
    by_accuracy = paired_bootstrap(y, strong, weak, metric=accuracy, n_resamples=100, seed=0)
    assert by_accuracy["delta"] == pytest.approx(accuracy(y, strong) - accuracy(y, weak))
    assert paired_bootstrap(y, strong, weak, metric=accuracy, n_resamples=100, seed=0) == by_accuracy


@pytest.mark.parametrize("shift", [-3, 5], ids=["negative-labels", "class-ids"])
def test_batched_metrics_equal_sklearn_on_every_resample(shift):
    """The bootstrap's batched macro-F1 and accuracy score each row of a (resamples, n) array as sklearn
    scores it alone: labels that are not 0..k-1 (negative ones are mapped first, class ids counted as they
    are), classes absent from a resample, predicted but never true."""
    from sklearn.metrics import accuracy_score, f1_score

    from longtail.metrics import _accuracy_batched, _macro_f1_batched

    assert _macro_f1_batched(Y_TRUE, Y_PRED) == pytest.approx(MACRO_F1, abs=1e-15)  # the hand-worked case
    rng = np.random.default_rng(0)
    y, pred = noisy_predictions(40, 0.5, seed=6, num_classes=9)
    y, pred = y * 7 + shift, np.where(pred == 8, 100, pred * 7 + shift)  # 100: a label that is never true
    idx = rng.integers(0, len(y), size=(300, len(y)))
    want_f1 = [f1_score(y[i], pred[i], average="macro", zero_division=0) for i in idx]
    want_acc = [accuracy_score(y[i], pred[i]) for i in idx]
    np.testing.assert_allclose(_macro_f1_batched(y[idx], pred[idx]), want_f1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(_accuracy_batched(y[idx], pred[idx]), want_acc, rtol=0, atol=1e-15)
    assert len(set(np.round(want_f1, 12))) > 50  # the resamples differ, so the check compares something
    # the resample axis may come last, as scipy's `axis` allows
    np.testing.assert_allclose(_macro_f1_batched(y[idx].T, pred[idx].T, axis=0), want_f1, rtol=0, atol=1e-15)


@pytest.mark.parametrize("metric", [macro_f1, accuracy])
def test_bootstrap_gives_the_cis_of_scipy_with_sklearn_per_resample(metric):
    """bootstrap_ci and paired_bootstrap use the batched statistics: the same resamples, the same CIs and
    p-value as scipy calling the sklearn metric once per resample."""
    from longtail.metrics import _bootstrap

    y, a = noisy_predictions(120, 0.5, seed=7, num_classes=12)
    b = np.where(np.random.default_rng(8).random(len(y)) < 0.3, y, a)
    old = _bootstrap(metric, (y, a), 200, 0.95, 3).confidence_interval
    assert bootstrap_ci(metric, y, a, n_resamples=200, seed=3) == pytest.approx(
        (old.low, old.high), abs=1e-15
    )

    def delta(yy, aa, bb):
        return metric(yy, aa) - metric(yy, bb)

    old = _bootstrap(delta, (y, a, b), 200, 0.95, 3)
    got = paired_bootstrap(y, a, b, metric=metric, n_resamples=200, seed=3)
    assert got["delta"] == delta(y, a, b)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(
        (old.confidence_interval.low, old.confidence_interval.high), abs=1e-15
    )
    assert got["p_value"] == (old.bootstrap_distribution <= 0).mean()


def test_bootstrap_in_batches_draws_the_resamples_of_one_draw(monkeypatch):
    """A large split's resamples are drawn a batch at a time (bounded memory): the CIs equal scipy's with
    every resample drawn at once."""
    from scipy.stats import bootstrap

    import longtail.metrics

    y, a = noisy_predictions(90, 0.5, seed=9, num_classes=7)
    monkeypatch.setattr(longtail.metrics, "BOOTSTRAP_BATCH_CELLS", 90 * 7)  # batches of 7 resamples
    batches = []

    def spy(*args, **kwargs):
        batches.append(kwargs["batch"])
        return bootstrap(*args, **kwargs)

    monkeypatch.setattr(longtail.metrics, "bootstrap", spy)
    got = bootstrap_ci(macro_f1, y, a, n_resamples=100, seed=4)
    assert batches == [7]
    whole = bootstrap(
        (y, a), macro_f1, paired=True, vectorized=False, n_resamples=100, method="percentile",
        random_state=np.random.default_rng(4),
    ).confidence_interval  # fmt: skip
    assert got == pytest.approx((whole.low, whole.high), abs=1e-15)
    assert (
        bootstrap_ci(macro_f1, y, a, n_resamples=100, seed=5) != got
    )  # the seed matters: the check has teeth


def test_trainer_compute_metrics_on_eval_prediction():
    from transformers.trainer_utils import EvalPrediction

    logits = np.log(one_hot_probs(Y_PRED, top=0.8))
    compute = trainer_compute_metrics({0: "head", 1: "head", 2: "tail", 3: "tail", 4: "tail"})
    out = compute(EvalPrediction(predictions=logits, label_ids=Y_TRUE))
    assert out["macro_f1"] == pytest.approx(MACRO_F1)
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert not any("_ci_" in k for k in out)
    # models that return extra outputs give a tuple of predictions: logits come first
    out_tuple = compute(EvalPrediction(predictions=(logits, np.zeros((5, 2))), label_ids=Y_TRUE))
    assert out_tuple == pytest.approx(out, nan_ok=True)
