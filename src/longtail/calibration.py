"""Calibration: temperature scaling fitted on validation, scored honestly, saved with the model.

Contract shared by the recipes, `predict` and the benchmarks: a model folder may hold
`temperature.json` = {"temperature": T, ...}; probabilities are softmax(logits / T). No file means T = 1.

How T is fitted (`calibrate`): validation is cut in two fixed random halves; one T minimises the NLL
(L-BFGS on log T) on the calibration half, and every before/after number is measured on the other,
scoring half, so the gain is not measured on the rows it was fitted to. Temperature scaling never
changes the argmax: accuracy and macro-F1 stay put, only the confidences move.
Works from probabilities as well as logits: softmax(log p / T) is the same family, which lets the
TF-IDF baseline and saved `predictions_<split>.npz` files be calibrated too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longtail import metrics
from longtail.cli import UsageError
from longtail.metrics import (
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    paired_bootstrap,
    softmax,
)

logger = logging.getLogger(__name__)

TEMPERATURE_FILE = "temperature.json"
CALIBRATION_SEED = 0
GATING_THRESHOLDS = (0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
MIN_ROWS = 20  # below this a fitted T says nothing: skip calibration


def save_temperature(model_dir, temperature: float, **info) -> Path:
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    path = Path(model_dir) / TEMPERATURE_FILE
    path.write_text(json.dumps({"temperature": float(temperature), **info}, indent=2) + "\n", "utf-8")
    return path


def load_temperature(model_dir) -> float:
    """The temperature saved in `model_dir`, or 1.0 when it has none."""
    path = Path(model_dir) / TEMPERATURE_FILE
    if not path.is_file():
        return 1.0
    try:
        value = float(json.loads(path.read_text("utf-8"))["temperature"])
    except (ValueError, KeyError, TypeError) as err:  # not JSON, no "temperature", not a number
        raise UsageError(f"{path} holds no readable temperature ({type(err).__name__}: {err})") from None
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"{path}: temperature must be a positive finite number, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Fitting and applying T
# ---------------------------------------------------------------------------------------------


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits that give back `probs` under softmax (up to a per-row constant, which softmax ignores)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T): L-BFGS (scipy) on u = log T, so T stays
    positive, with the exact gradient d NLL / du = mean(z_y - E_p[z]) / T."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one row")
    z_true = z[np.arange(len(y)), y]

    def nll_and_grad(u):
        t = float(np.exp(u[0]))
        lse = logsumexp(z / t, axis=1)
        p = np.exp(z / t - lse[:, None])
        nll = float(np.mean(lse - z_true / t))
        return nll, np.array([np.mean(z_true - (p * z).sum(axis=1)) / t])

    # T in [e^-6, e^6]: beyond that the model is constant or one-hot and T carries no information
    res = minimize(
        nll_and_grad, x0=[0.0], jac=True, method="L-BFGS-B", bounds=[(-6.0, 6.0)], options={"gtol": 1e-10}
    )
    return float(np.exp(res.x[0]))


def calibration_halves(n: int, seed: int = CALIBRATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, scoring rows): a fixed random half each (the fit half gets the smaller one)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def gating_table(
    probs: np.ndarray, y_true: np.ndarray, thresholds: Sequence[float] = GATING_THRESHOLDS
) -> list[dict]:
    """Confidence gating: rows with top probability >= tau are auto-routed, the rest escalated to a human.
    Per tau: coverage (share auto-routed), accuracy on the auto-routed rows, rows escalated."""
    probs, y_true = np.asarray(probs), np.asarray(y_true)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    rows = []
    for tau in thresholds:
        routed = confidence >= tau
        rows.append(
            {
                "threshold": float(tau),
                "coverage": float(routed.mean()) if len(y_true) else float("nan"),
                "accuracy": float(correct[routed].mean()) if routed.any() else float("nan"),
                "escalated": int((~routed).sum()),
            }
        )
    return rows


def score_probs(probs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    y_true = np.asarray(y_true)
    return {
        "ece": expected_calibration_error(probs, y_true),
        "nll": negative_log_likelihood(probs, y_true),
        "macro_f1": macro_f1(y_true, probs.argmax(axis=1)),
        "accuracy": float((probs.argmax(axis=1) == y_true).mean()),
    }


def served_scores(probs: np.ndarray, y_true: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL of the probabilities a run serves, softmax(logits / T) with its saved T (`predict` serves
    those), beside the raw ones every metrics file also holds as `ece` / `nll`."""
    if len(y_true) == 0:
        return {"temperature": temperature, "ece_served": float("nan"), "nll_served": float("nan")}
    served = apply_temperature(log_probs(np.asarray(probs)), temperature)
    return {
        "temperature": float(temperature),
        "ece_served": expected_calibration_error(served, np.asarray(y_true)),
        "nll_served": negative_log_likelihood(served, np.asarray(y_true)),
    }


@dataclass
class Calibration:
    """T fitted on the calibration half of validation, and before/after scores on the scoring half."""

    fitted: float  # T minimising NLL on the calibration half
    fit_rows: np.ndarray
    score_rows: np.ndarray
    raw: dict  # metrics of the raw probabilities on the scoring half
    calibrated: dict  # the same with the fitted T applied
    gating_raw: list = field(default_factory=list)
    gating_calibrated: list = field(default_factory=list)

    @property
    def applied(self) -> bool:
        """T is kept only when it lowers NLL on the scoring half: a T fitted on a few rows can make held-out
        probabilities worse, and serving it would then be a loss, not a calibration."""
        return self.calibrated["nll"] < self.raw["nll"]

    @property
    def temperature(self) -> float:
        """The temperature saved and served: the fitted one, or 1 (the raw probabilities) when it did not help."""
        return self.fitted if self.applied else 1.0

    def info(self) -> dict:
        """What temperature.json records next to T."""
        return {
            "fitted_on": f"validation, calibration half ({len(self.fit_rows)} rows, seed {CALIBRATION_SEED})",
            "method": "one temperature, NLL minimised by LBFGS",
            "scored_on": f"validation, other half ({len(self.score_rows)} rows)",
            "fitted_temperature": self.fitted,
            "applied": self.applied,
            "rule": "kept only if it lowers NLL on the scoring half; else T = 1",
            "ece_before": self.raw["ece"],
            "ece_after": self.calibrated["ece"],
            "nll_before": self.raw["nll"],
            "nll_after": self.calibrated["nll"],
        }


def temperature_note(validation_rows: int) -> str:
    """The report's word on the temperature, as `calibrate` will decide it."""
    if validation_rows < MIN_ROWS:
        return f"temperature: none fitted ({validation_rows} validation rows, {MIN_ROWS} needed)"
    return (
        "temperature: fitted on half of validation, kept only if it lowers NLL on the other half "
        "(temperature.json, see Temperature scaling)"
    )


def calibrate(probs: np.ndarray, y_true: np.ndarray, seed: int = CALIBRATION_SEED) -> Calibration | None:
    """Fit T on one half of validation, score raw and calibrated on the other. None when too few rows."""
    y_true = np.asarray(y_true)
    if len(y_true) < MIN_ROWS:
        logger.warning("Only %d validation rows: no temperature fitted (needs %d)", len(y_true), MIN_ROWS)
        return None
    logits = log_probs(probs)
    fit_rows, score_rows = calibration_halves(len(y_true), seed)
    temperature = fit_temperature(logits[fit_rows], y_true[fit_rows])
    raw = softmax(logits[score_rows])
    scaled = apply_temperature(logits[score_rows], temperature)
    y = y_true[score_rows]
    return Calibration(
        fitted=temperature,
        fit_rows=fit_rows,
        score_rows=score_rows,
        raw=score_probs(raw, y),
        calibrated=score_probs(scaled, y),
        gating_raw=gating_table(raw, y),
        gating_calibrated=gating_table(scaled, y),
    )


def paired_delta(
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int | None = None,
) -> dict[str, float]:
    """metric(a) - metric(b) on the same rows with a paired bootstrap CI; `metric(probs, y)` may use the
    probabilities (NLL, ECE), not only the argmax. Rows are resampled through their indices."""
    n = len(y_true)
    stacked = np.concatenate([np.asarray(probs_a), np.asarray(probs_b)])

    def by_index(y, idx):
        return metric(stacked[idx], y)

    return paired_bootstrap(
        np.asarray(y_true),
        np.arange(n),
        np.arange(n) + n,
        metric=by_index,
        n_resamples=n_resamples or metrics.BOOTSTRAP_RESAMPLES,
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _f(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.3f}"


def gating_markdown(arms: dict[str, list[dict]]) -> str:
    """One table: a row per threshold, coverage / accuracy of auto-routed rows per arm."""
    names = list(arms)
    header = "| τ | " + " | ".join(f"{n}: coverage | {n}: accuracy" for n in names) + " |"
    lines = [header, "|---|" + "---|---|" * len(names)]
    for i, row in enumerate(next(iter(arms.values()))):
        cells = [f"{_f(arms[n][i]['coverage'])} | {_f(arms[n][i]['accuracy'])}" for n in names]
        lines.append(f"| {row['threshold']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_section(cal: Calibration, test: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """The report's temperature-scaling section; `test` = (probs, y_true) adds test before/after."""
    t = cal.fitted
    if cal.applied:
        verdict = (
            f"It lowered NLL on the scoring half ({_f(cal.raw['nll'])} → {_f(cal.calibrated['nll'])}), so it is "
            f"saved as `{TEMPERATURE_FILE}` and served: probabilities = softmax(logits / T). "
            + (
                "T > 1: the raw model was over-confident."
                if t > 1
                else "T < 1: the raw model was under-confident."
            )
        )
    else:
        verdict = (
            f"It did **not** lower NLL on the scoring half ({_f(cal.raw['nll'])} → {_f(cal.calibrated['nll'])}): "
            f"fitted on {len(cal.fit_rows)} rows, it does not carry over, so `{TEMPERATURE_FILE}` holds T = 1 and "
            "the raw probabilities are served. The +T rows below show what it would have done."
        )
    lines = [
        "## Temperature scaling",
        "",
        f"One temperature **T = {t:.3f}** was fitted by LBFGS on the NLL of a fixed random half of validation "
        f"({len(cal.fit_rows)} rows) and is scored on the other half ({len(cal.score_rows)} rows). {verdict} "
        "Scaling never changes the predicted class, so macro-F1 and accuracy do not move.",
        "",
        "| rows | ECE | NLL | macro-F1 |",
        "|---|---|---|---|",
        f"| validation scoring half, raw | {_f(cal.raw['ece'])} | {_f(cal.raw['nll'])} | {_f(cal.raw['macro_f1'])} |",
        f"| validation scoring half, +T | {_f(cal.calibrated['ece'])} | {_f(cal.calibrated['nll'])} | "
        f"{_f(cal.calibrated['macro_f1'])} |",
    ]
    if test is not None:
        probs, y = test
        raw, scaled = score_probs(probs, y), score_probs(apply_temperature(log_probs(probs), t), y)
        lines += [
            f"| test, raw | {_f(raw['ece'])} | {_f(raw['nll'])} | {_f(raw['macro_f1'])} |",
            f"| test, +T | {_f(scaled['ece'])} | {_f(scaled['nll'])} | {_f(scaled['macro_f1'])} |",
        ]
    lines += [
        "",
        "### Confidence gating (validation scoring half)",
        "",
        "Auto-route a prediction when its top probability is at least τ, escalate the rest to a person. "
        "Coverage = share auto-routed; accuracy = accuracy of the auto-routed rows, with the raw and the +T "
        "probabilities (a threshold means what it says only where the probabilities are calibrated).",
        "",
        gating_markdown({"raw": cal.gating_raw, "+T": cal.gating_calibrated}),
    ]
    return "\n".join(lines) + "\n"


def calibrate_run(output_dir, results) -> str | None:
    """Fit T on the validation result of a run, save temperature.json into `output_dir` (the model folder)
    and return the report section; None when there is no (big enough) validation split."""
    by_split = {r.split: r for r in results}
    val = by_split.get("validation")
    if val is None:
        return None
    cal = calibrate(val.probs, val.y_true)
    if cal is None:
        return None
    save_temperature(output_dir, cal.temperature, **cal.info())
    logger.info(
        "Temperature scaling: T=%.3f fitted, %s; validation scoring half ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        cal.fitted,
        "kept" if cal.applied else "not kept (NLL rose on the scoring half: T = 1 saved)",
        cal.raw["ece"],
        cal.calibrated["ece"],
        cal.raw["nll"],
        cal.calibrated["nll"],
    )
    test = by_split.get("test")
    return calibration_section(cal, (np.asarray(test.probs), np.asarray(test.y_true)) if test else None)


# ---------------------------------------------------------------------------------------------
# Several models on the same validation rows (the distillation comparison)
# ---------------------------------------------------------------------------------------------

DELTA_METRICS = {
    "ECE": lambda p, y: expected_calibration_error(p, y),
    "NLL": lambda p, y: negative_log_likelihood(p, y),
    "macro-F1": lambda p, y: macro_f1(y, p.argmax(axis=1)),
}


@dataclass
class Comparison:
    arms: dict  # name -> probabilities on the scoring half (raw and +T arms)
    y_true: np.ndarray  # gold labels of the scoring half
    temperatures: dict  # raw arm name -> fitted T
    scores: dict  # arm name -> score_probs(...)
    deltas: list  # (a, b, metric, paired_bootstrap dict)
    markdown: str


def compare_arms(
    probs: Mapping[str, np.ndarray],
    y_true: np.ndarray,
    deltas: Sequence[tuple[str, str]],
    reference: Mapping[str, np.ndarray] | None = None,
    seed: int = CALIBRATION_SEED,
) -> Comparison:
    """Each model of `probs` (validation probabilities, same rows) raw and temperature-scaled ('<name>+T',
    T fitted on the calibration half); everything scored on the scoring half; paired-bootstrap CIs on the
    `deltas` (a, b) = metric(a) - metric(b). `reference` arms (e.g. the teacher) are scored, not scaled."""
    y_true = np.asarray(y_true)
    fit_rows, score_rows = calibration_halves(len(y_true), seed)
    y = y_true[score_rows]
    arms, temperatures = {}, {}
    for name, p in probs.items():
        logits = log_probs(p)
        temperatures[name] = fit_temperature(logits[fit_rows], y_true[fit_rows])
        arms[name] = softmax(logits[score_rows])
        arms[f"{name}+T"] = apply_temperature(logits[score_rows], temperatures[name])
    scores = {name: score_probs(p, y) for name, p in arms.items()}
    for name, p in (reference or {}).items():
        scores[name] = score_probs(np.asarray(p)[score_rows], y)
    rows, memo = [], {}
    for a, b in deltas:
        for metric, fn in DELTA_METRICS.items():
            pred_a, pred_b = arms[a].argmax(axis=1), arms[b].argmax(axis=1)
            if metric == "macro-F1":
                # depends on the predictions only: +T arms share their raw arm's, so most pairs repeat
                key = (pred_a.tobytes(), pred_b.tobytes())
                if (pred_a == pred_b).all():
                    memo[key] = {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
                if key not in memo:
                    memo[key] = paired_bootstrap(y, pred_a, pred_b, n_resamples=metrics.BOOTSTRAP_RESAMPLES)
                rows.append((a, b, metric, memo[key]))
            else:
                rows.append((a, b, metric, paired_delta(y, arms[a], arms[b], fn)))
    lines = [
        "| arm | T | ECE | NLL | macro-F1 | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in scores.items():
        t = temperatures.get(name.removesuffix("+T")) if name.endswith("+T") else None
        lines.append(
            f"| {name} | {'—' if t is None else f'{t:.3f}'} | {_f(s['ece'])} | {_f(s['nll'])} | "
            f"{_f(s['macro_f1'])} | {_f(s['accuracy'])} |"
        )
    lines += [
        "",
        "Deltas (a − b) on the same rows, 95% paired-bootstrap CIs; lower is better for ECE and NLL, higher "
        "for macro-F1. p: share of resamples with delta <= 0.",
        "",
        "| a − b | metric | delta | 95% CI | p |",
        "|---|---|---|---|---|",
    ]
    for a, b, metric, d in rows:
        lines.append(
            f"| {a} − {b} | {metric} | {d['delta']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | "
            f"{d['p_value']:.3f} |"
        )
    lines += [
        "",
        "### Confidence gating",
        "",
        gating_markdown({name: gating_table(p, y) for name, p in arms.items()}),
    ]
    return Comparison(arms, y, temperatures, scores, rows, "\n".join(lines) + "\n")
