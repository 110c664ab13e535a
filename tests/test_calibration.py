"""Temperature scaling: the fit, the halves, the gating table, paired deltas, and the file every run writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CFPB_CSV, needs_shared
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from longtail.calibration import (
    CALIBRATION_SEED,
    TEMPERATURE_FILE,
    Calibration,
    apply_temperature,
    calibrate,
    calibrate_run,
    calibration_halves,
    compare_arms,
    fit_temperature,
    gating_table,
    load_temperature,
    log_probs,
    paired_delta,
    temperature_note,
)
from longtail.metrics import negative_log_likelihood, softmax


def overconfident(n=1500, k=8, true_t=2.0, seed=0):
    """Logits whose labels are drawn from softmax(logits / true_t): the best temperature is about true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 3
    p = softmax(z / true_t)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


def test_fit_temperature_minimises_nll(one_torch_thread):
    z, y = overconfident()
    t = fit_temperature(z, y)
    reference = minimize_scalar(
        lambda T: -log_softmax(z / T, axis=1)[np.arange(len(y)), y].mean(),
        bounds=(0.05, 20),
        method="bounded",
        options={"xatol": 1e-10},
    ).x
    assert t == pytest.approx(reference, rel=1e-5)
    assert t == pytest.approx(2.0, abs=0.15)  # recovers the temperature the labels were drawn at
    # an under-confident model gets T < 1
    assert fit_temperature(z / 4, y) == pytest.approx(reference / 4, rel=1e-5)
    # from probabilities: softmax(log p / T) is the same family, the same T comes out
    assert fit_temperature(log_probs(softmax(z)), y) == pytest.approx(t, rel=1e-5)


def test_fit_temperature_stops_at_its_bounds():
    """T is searched in [e^-6, e^6]: labels no logit explains push T to the top bound (NLL falls towards
    log 2 as T grows), labels every logit explains push it to the bottom one."""
    coin = np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(coin, np.array([0, 0, 1, 1])) == pytest.approx(np.exp(6.0), rel=1e-9)
    sure = np.array([[0.01, 0.0], [0.0, 0.01]])
    assert fit_temperature(sure, np.array([0, 1])) == pytest.approx(np.exp(-6.0), rel=1e-9)


def test_halves_are_fixed_disjoint_and_cover():
    fit, score = calibration_halves(11)
    assert len(fit) == 5 and len(score) == 6
    assert sorted([*fit, *score]) == list(range(11))
    again = calibration_halves(11)
    assert fit.tolist() == again[0].tolist() and score.tolist() == again[1].tolist()


def test_gating_table_by_hand():
    # confidences 0.9 (right), 0.6 (wrong), 0.8 (right), 0.4 (right)
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.4, 0.35, 0.25]])
    y = np.array([0, 1, 1, 0])
    rows = {r["threshold"]: r for r in gating_table(probs, y, thresholds=(0.3, 0.7, 0.85, 0.95))}
    assert rows[0.3] == {"threshold": 0.3, "coverage": 1.0, "accuracy": 0.75, "escalated": 0}
    assert rows[0.7] == {"threshold": 0.7, "coverage": 0.5, "accuracy": 1.0, "escalated": 2}
    assert rows[0.85] == {"threshold": 0.85, "coverage": 0.25, "accuracy": 1.0, "escalated": 3}
    assert rows[0.95]["coverage"] == 0.0 and np.isnan(rows[0.95]["accuracy"])


def test_gating_table_routes_a_confidence_equal_to_the_threshold():
    """Top probability >= tau is auto-routed: a confidence of exactly tau (0.75, exact in binary) is not escalated."""
    probs = np.array([[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]])
    rows = gating_table(probs, np.array([0, 1, 0]), thresholds=(0.75,))
    assert rows == [{"threshold": 0.75, "coverage": 2 / 3, "accuracy": 0.5, "escalated": 1}]


def test_calibrate_scores_on_the_other_half(tmp_path, one_torch_thread):
    z, y = overconfident()
    cal = calibrate(softmax(z), y)
    assert cal.temperature == pytest.approx(fit_temperature(z[cal.fit_rows], y[cal.fit_rows]), rel=1e-5)
    assert not set(cal.fit_rows) & set(cal.score_rows)
    scored = apply_temperature(z[cal.score_rows], cal.temperature)
    assert cal.calibrated["nll"] == pytest.approx(negative_log_likelihood(scored, y[cal.score_rows]))
    assert cal.calibrated["ece"] < cal.raw["ece"] / 3 and cal.calibrated["nll"] < cal.raw["nll"]
    assert cal.calibrated["macro_f1"] == cal.raw["macro_f1"]  # the argmax does not move
    assert calibrate(softmax(z[:10]), y[:10]) is None  # too few rows to say anything

    class Result:  # the SplitResult fields calibrate_run reads
        def __init__(self, split, probs, y_true):
            self.split, self.probs, self.y_true = split, probs, y_true

    section = calibrate_run(
        tmp_path, [Result("validation", softmax(z), y), Result("test", softmax(z[:50]), y[:50])]
    )
    saved = json.loads((tmp_path / TEMPERATURE_FILE).read_text())
    assert load_temperature(tmp_path) == pytest.approx(cal.temperature) == saved["temperature"]
    assert saved["ece_after"] < saved["ece_before"]
    assert f"T = {cal.temperature:.3f}" in section and "| test, +T |" in section and "τ" in section
    assert "T > 1: the raw model was over-confident." in section  # T is about 2
    assert calibrate_run(tmp_path / "none", [Result("test", softmax(z), y)]) is None
    assert cal.applied and saved["applied"] and saved["fitted_temperature"] == saved["temperature"]


def test_a_temperature_that_does_not_carry_over_is_not_served(tmp_path, one_torch_thread):
    """Fitted on one half of validation, T is kept only if it lowers NLL on the other: here the fitting half is
    over-confident and the scoring half under-confident, so T > 1 would make served probabilities worse."""
    z, y = overconfident()
    fit_rows, score_rows = calibration_halves(len(y), CALIBRATION_SEED)
    z = z.copy()
    z[score_rows] /= 4  # under-confident there: the fitted T > 1 flattens them further
    cal = calibrate(softmax(z), y)
    assert cal.fitted > 1.5 and cal.calibrated["nll"] > cal.raw["nll"]
    assert not cal.applied and cal.temperature == 1.0

    class Result:
        def __init__(self, split, probs, y_true):
            self.split, self.probs, self.y_true = split, probs, y_true

    section = calibrate_run(tmp_path, [Result("validation", softmax(z), y)])
    saved = json.loads((tmp_path / TEMPERATURE_FILE).read_text())
    assert load_temperature(tmp_path) == 1.0 and saved["applied"] is False
    assert saved["fitted_temperature"] == pytest.approx(cal.fitted)
    assert (
        f"T = {cal.fitted:.3f}" in section and "did **not** lower NLL" in section and "holds T = 1" in section
    )
    assert "over-confident" not in section  # T alone no longer speaks for the raw model


def test_a_temperature_is_kept_only_if_it_lowers_the_scoring_nll():
    def cal(nll_after):
        rows = np.arange(4)
        return Calibration(2.0, rows, rows, raw={"nll": 1.0}, calibrated={"nll": nll_after})

    assert cal(0.995).applied and cal(0.995).temperature == 2.0
    assert not cal(1.005).applied and cal(1.005).temperature == 1.0  # a small rise is a rise: T = 1
    assert not cal(1.0).applied and cal(1.0).temperature == 1.0  # no gain is no reason to change the scores


def test_paired_delta_and_compare_arms(monkeypatch):
    import longtail.metrics

    monkeypatch.setattr(longtail.metrics, "BOOTSTRAP_RESAMPLES", 200)
    z, y = overconfident(n=400)
    a, b = softmax(z), softmax(z / 2)
    d = paired_delta(y, a, b, lambda p, yy: negative_log_likelihood(p, yy), n_resamples=200)
    assert d["delta"] == pytest.approx(negative_log_likelihood(a, y) - negative_log_likelihood(b, y))
    assert d["ci_low"] <= d["delta"] <= d["ci_high"] and d["delta"] > 0
    same = paired_delta(y, a, a, lambda p, yy: negative_log_likelihood(p, yy), n_resamples=50)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0.0

    comp = compare_arms({"x": a, "y": b}, y, deltas=[("x+T", "x"), ("y", "x")], reference={"r": b})
    assert list(comp.arms) == ["x", "x+T", "y", "y+T"] and set(comp.scores) == {*comp.arms, "r"}
    # both arms are the same logits at different scales: the same temperature-scaled result
    assert comp.temperatures["x"] == pytest.approx(2 * comp.temperatures["y"], rel=1e-4)
    np.testing.assert_allclose(comp.arms["x+T"], comp.arms["y+T"], atol=1e-4)
    assert "| x+T − x | macro-F1 | +0.0000 | [+0.0000, +0.0000]" in comp.markdown
    # T is fitted on the calibration half, and every arm (the reference too) is scored on the other half
    fit, score = calibration_halves(len(y))
    reference_t = minimize_scalar(
        lambda T: -log_softmax(z[fit] / T, axis=1)[np.arange(len(fit)), y[fit]].mean(),
        bounds=(0.05, 20),
        method="bounded",
        options={"xatol": 1e-10},
    ).x
    assert comp.temperatures["x"] == pytest.approx(reference_t, rel=1e-5)
    hand_nll = -np.log(b[score, y[score]]).mean()
    assert comp.scores["r"]["nll"] == pytest.approx(hand_nll, rel=1e-12)
    assert comp.scores["y"]["nll"] == pytest.approx(hand_nll, rel=1e-9)  # the same probabilities as a raw arm


@pytest.mark.slow
@needs_shared
def test_temperature_scaling_on_real_cfpb(one_torch_thread):
    """TF-IDF + logistic regression on real complaints (capped for speed). Such a model is close to calibrated
    already (measured: T ~ 0.9, ECE does not improve), so what must hold is that T minimises the NLL of
    the rows it was fitted on and does not hurt the other half."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from longtail.data import DataArguments, prepare_data

    data = prepare_data(
        DataArguments(
            train_file=str(CFPB_CSV), text_column="Consumer complaint narrative", max_train_samples=1500
        )
    )
    train, val = data.splits["train"], data.splits["validation"]
    model = make_pipeline(
        TfidfVectorizer(max_features=3000, sublinear_tf=True),
        LogisticRegression(C=10, max_iter=100, tol=1e-3),
    )
    model.fit(train["text"], train["label_id"])
    probs = np.zeros((len(val), len(data.label_names)))
    probs[:, model.classes_] = model.predict_proba(val["text"])
    y = val["label_id"].to_numpy()
    cal = calibrate(probs, y)
    assert len(cal.score_rows) > 350 and 0.3 < cal.fitted < 3

    def fit_nll(t):
        rows = cal.fit_rows
        return negative_log_likelihood(apply_temperature(log_probs(probs[rows]), t), y[rows])

    t = cal.fitted
    assert fit_nll(t) <= min(fit_nll(1.0), fit_nll(t * 1.05), fit_nll(t / 1.05))
    assert cal.calibrated["nll"] <= cal.raw["nll"] + 0.01


def test_the_report_says_whether_a_temperature_was_fitted():
    """The run's selection line once said "fitted" when too few validation rows meant none was (and no
    temperature.json existed): the note and `calibrate` decide from the same row count."""
    rng = np.random.default_rng(0)
    for n in (19, 20):
        probs = rng.dirichlet(np.ones(3), size=n)
        fitted = calibrate(probs, rng.integers(0, 3, n)) is not None
        note = temperature_note(n)
        assert fitted == (n == 20) and fitted == note.startswith(
            "temperature: fitted on half of validation, kept"
        )
    assert temperature_note(19) == "temperature: none fitted (19 validation rows, 20 needed)"
