"""report.py on a tiny hand-made case: 4 classes, 40 rows, planted confusions."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from longtail import report as report_module
from longtail.data import PreparedData
from longtail.metrics import assign_tiers, classification_metrics
from longtail.report import (
    SplitResult,
    load_predictions,
    plot_confusions,
    plot_reliability,
    redact_secrets,
    save_predictions,
    save_results_json,
    score_split,
    write_per_class_csv,
    write_run_outputs,
)

LABELS = ["Billing dispute", "Fraud or scam", "Late fee", "Rare tail issue"]
TRAIN_COUNTS = {0: 50, 1: 30, 2: 15, 3: 5}
TOKEN = "hf_" + "a" * 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_RESAMPLES = 50  # the default 1000 bootstrap resamples take seconds per split


def make_result(split: str = "test") -> SplitResult:
    """40 rows, 10 per class. Planted errors: 6 of class 1 -> 0 (the most confused pair),
    2 of class 2 -> 1, and every row of class 3 -> 2 (class 3 gets F1 = 0)."""
    y_true = np.repeat([0, 1, 2, 3], 10)
    y_pred = y_true.copy()
    y_pred[10:16] = 0
    y_pred[20:22] = 1
    y_pred[30:40] = 2
    probs = np.full((40, 4), 0.1)
    probs[np.arange(40), y_pred] = 0.7
    probs[::3] = probs[::3] ** 2  # vary the confidence a little
    probs /= probs.sum(axis=1, keepdims=True)
    texts = pd.Series(
        [
            f"complaint {i} "
            + ("XXXX " if i % 2 else "")
            + "word " * (i * 3)
            + ("$120" if i % 5 == 0 else "")
            for i in range(40)
        ]
    )
    return SplitResult(split=split, y_true=y_true, probs=probs, texts=texts)


def strict_json(text: str):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture
def tiers():
    return assign_tiers(TRAIN_COUNTS, head=1, mid=2)  # head: 0, mid: 1-2, tail: 3


def test_results_json_equals_metrics_and_merges(tmp_path, tiers):
    result = make_result("validation")
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_loss": 1.5, "accuracy": -1.0}))
    score_split(result, tiers, n_resamples=N_RESAMPLES)
    path = save_results_json(tmp_path, result)
    assert path.name == "eval_results.json"
    saved = strict_json(path.read_text())
    expected = classification_metrics(result.y_true, result.probs, tiers, n_resamples=N_RESAMPLES)
    assert saved["eval_loss"] == 1.5  # kept from the existing file
    assert set(saved) == set(expected) | {"slices", "eval_loss"}
    for key, value in expected.items():
        assert saved[key] == value, key  # ours win over the stale 'accuracy'
    assert saved["zero_f1_classes"] == 1 and saved["classes_scored"] == 4
    assert set(saved["slices"]) >= {"redacted", "numeric", "length<35"}


def test_nan_becomes_null(tmp_path, tiers):
    result = make_result("test")
    result.y_true = np.zeros(40, dtype=int)  # only the head class: mid/tail macro-F1 are NaN
    score_split(result, tiers, n_resamples=N_RESAMPLES)
    assert np.isnan(result.metrics["macro_f1_tail"])
    saved = strict_json(save_results_json(tmp_path, result).read_text())
    assert saved["macro_f1_tail"] is None and saved["macro_f1_mid"] is None


def test_per_class_csv(tmp_path, tiers):
    results = [make_result("validation"), make_result("test")]
    df = pd.read_csv(write_per_class_csv(tmp_path, results, LABELS, tiers, TRAIN_COUNTS))
    assert len(df) == 8
    assert {
        "split",
        "label_id",
        "label",
        "tier",
        "train_count",
        "precision",
        "recall",
        "f1",
        "support",
    } <= set(df.columns)
    row = df[(df.split == "test") & (df.label_id == 0)].iloc[0]
    # class 0: tp 10, fp 6, fn 0 -> precision 10/16, recall 1, F1 = 2*10 / (2*10 + 6 + 0)
    assert row.f1 == pytest.approx(20 / 26)
    assert row.train_count == 50 and row.tier == "head"
    assert df[df.label_id == 3].f1.eq(0).all()


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots(tmp_path):
    a, b = make_result("validation"), make_result("test")
    assert is_png(plot_confusions(tmp_path / "confusion.png", b, LABELS))
    arms = {
        "vanilla": (a.probs, a.y_true),
        "sharpened": (b.probs**2 / (b.probs**2).sum(1, keepdims=True), b.y_true),
    }
    assert is_png(plot_reliability(tmp_path / "sub" / "reliability.png", arms))


def test_confusion_plot_many_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"A fairly long CFPB issue name number {i} that goes on" for i in range(113)]
    y = rng.integers(0, 113, 2000)
    probs = rng.dirichlet(np.ones(113), 2000)
    result = SplitResult("test", y, probs, pd.Series(["x"] * 2000))
    assert is_png(plot_confusions(tmp_path / "c.png", result, names))


def test_run_outputs_report_and_card(tmp_path, monkeypatch):
    # write_run_outputs scores unscored splits itself: make that fast too
    monkeypatch.setattr(report_module, "score_split", functools.partial(score_split, n_resamples=N_RESAMPLES))
    results = [make_result("validation"), make_result("test")]
    data = PreparedData(
        splits={},
        label_names=LABELS,
        train_counts=TRAIN_COUNTS,
        log={"rows": {"train": 100, "validation": 40, "test": 40}, "dropped_rare_classes": {"Tiny": 2}},
    )
    command = f"python recipes/train.py --model_name_or_path distilbert-base-uncased --hub_token {TOKEN}"
    run_info = {
        "recipe": "fine-tune",
        "model": "distilbert-base-uncased",
        "learning_rate": 5e-5,
        "token_note": f"token={TOKEN}",
        "selection": "checkpoint: best validation macro_f1 (epoch 3); test scored once at the end",
    }
    paths = write_run_outputs(
        tmp_path / "out",
        title="Tiny run",
        base_model="distilbert-base-uncased",
        run_info=run_info,
        data=data,
        results=results,
        command=command,
        sections=["## Extra\n\nplanted section text"],
    )
    out = tmp_path / "out"
    for name in (
        "eval_results.json",
        "test_results.json",
        "per_class.csv",
        "confusion.png",
        "reliability.png",
        "report.md",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert set(paths) >= {
        "eval_results",
        "test_results",
        "per_class",
        "confusion",
        "reliability",
        "report",
        "card",
    }

    report = (out / "report.md").read_text()
    m = results[1].metrics
    ci = f"{m['macro_f1']:.3f} [{m['macro_f1_ci_low']:.3f}, {m['macro_f1_ci_high']:.3f}]"
    assert ci in report
    assert f"{m['accuracy']:.3f} [{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}]" in report
    assert "| Fraud or scam | Billing dispute | 6 | 60.0% |" in report  # the planted top pair
    worst = report.split("## Worst classes")[1]
    assert "1 of 4 scored classes have F1 = 0" in worst
    assert worst.index("Rare tail issue") < worst.index("Late fee")  # worst class listed first
    assert "planted section text" in report and "![Most confused pairs](confusion.png)" in report
    assert "best validation macro_f1" in report and "rare classes dropped: 1" in report

    # the served calibration beside the raw one: softmax(logits / T) at the saved temperature
    from longtail.calibration import apply_temperature, load_temperature, log_probs
    from longtail.metrics import expected_calibration_error, negative_log_likelihood

    t = load_temperature(out)
    saved = json.loads((out / "test_results.json").read_text())
    served = apply_temperature(log_probs(results[1].probs), t)
    assert saved["temperature"] == t != 1.0
    assert saved["ece_served"] == pytest.approx(expected_calibration_error(served, results[1].y_true))
    assert saved["nll_served"] == pytest.approx(negative_log_likelihood(served, results[1].y_true))
    assert saved["ece"] == pytest.approx(expected_calibration_error(results[1].probs, results[1].y_true))
    assert f"| ECE, served (T = {t:.3f}) | " in report and "| ECE (15 bins), raw | " in report

    card = (out / "README.md").read_text()
    assert f"ECE of the served probabilities (T = {t:.3f}) {saved['ece_served']:.3f}" in card
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "distilbert-base-uncased"
    assert front["pipeline_tag"] == "text-classification" and "long-tail" in front["tags"]
    assert "python recipes/train.py --model_name_or_path distilbert-base-uncased" in card
    assert 'pipeline("text-classification"' in card and ci in card
    # the pipeline's scores are at T = 1: the card says which temperature predict serves and how to apply it
    assert (
        f"`longtail.predict` serves them at this run's temperature, T = {t:.3f} (`temperature.json`)" in card
    )

    for path in out.iterdir():
        assert TOKEN.encode() not in path.read_bytes(), path.name


def test_redact_secrets():
    assert redact_secrets(f"x {TOKEN} y") == "x hf_<redacted> y"
    assert "secret123" not in redact_secrets("--hub_token secret123 --push_to_hub")
    assert redact_secrets("hf_short stays") == "hf_short stays"


def test_predictions_round_trip(tmp_path):
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    result = SplitResult(
        "test", np.array([0, 1, 1]), probs, pd.Series(["a", "b", "c"]), row_ids=np.array([9, 4, 7])
    )
    path = save_predictions(tmp_path, result, ["x", "y"])
    assert path.name == "predictions_test.npz"
    loaded = load_predictions(path)
    assert loaded["row_id"].tolist() == [9, 4, 7]
    assert loaded["y_true"].tolist() == [0, 1, 1]
    assert loaded["label_names"].tolist() == ["x", "y"]
    np.testing.assert_allclose(loaded["probs"], probs, atol=1e-7)


def test_grid_table_best_first_chosen_marked():
    from longtail.report import grid_table

    rows = [
        {"C": 1.0, "weighting": "none", "val_macro_f1": 0.1, "fit_s": 2.5},
        {"C": 10.0, "weighting": "balanced", "val_macro_f1": 0.25, "fit_s": 3.0},
    ]
    table = grid_table(
        rows, {"C": "C", "class weighting": "weighting", "validation macro-F1": "val_macro_f1"}, rows[1]
    )
    assert table.splitlines() == [
        "| C | class weighting | validation macro-F1 |",
        "|---|---|---|",
        "| 10.0 | balanced | 0.2500 **(chosen)** |",
        "| 1.0 | none | 0.1000 |",
    ]


def test_headline_split_confused_pair_ties_jsonable_and_unseen_train_counts(tmp_path, tiers):
    """The headline split is test when scored, else validation; confused pairs with equal counts are ordered
    by true then predicted class id; JSON gets null for NaN and for +-inf; a class without a training count
    gets 0 in per_class.csv."""
    from longtail.report import _primary, confused_pairs, jsonable

    val, test = make_result("validation"), make_result("test")
    assert _primary([val, test]) is test and _primary([test, val]) is test
    assert _primary([val]) is val and _primary([]) is None
    # (1 -> 0) twice; (0 -> 2), (2 -> 0), (0 -> 1) once each: the single errors by (true, predicted)
    y_true = np.array([1, 1, 2, 0, 0, 2])
    y_pred = np.array([0, 0, 0, 2, 1, 2])
    assert confused_pairs(y_true, y_pred, 3) == [(1, 0, 2), (0, 1, 1), (0, 2, 1), (2, 0, 1)]
    assert jsonable({"a": [np.float32(np.inf), -np.inf, np.nan, np.int64(3), 0.5]}) == {
        "a": [None, None, None, 3, 0.5]
    }
    df = pd.read_csv(write_per_class_csv(tmp_path, [test], LABELS, tiers, {0: 50, 1: 30, 2: 15}))
    assert df["train_count"].tolist() == [50, 30, 15, 0]


def test_data_summary_names_each_splits_drops_merges_and_respellings():
    """The report's data lines: read/kept, each nonzero drop, merged wordings, and respelled labels only when any."""
    from longtail.report import _data_summary

    log = {
        "train": {
            "rows_read": 1200,
            "dropped_empty_text": 0,
            "dropped_missing_label": 100,
            "labels_respelled": 7,
            "labels_merged": 3,
            "dropped_outside_taxonomy": 2,
            "rows_kept": 1098,
        },
        "test": {
            "rows_read": 10,
            "dropped_missing_label": 0,
            "labels_respelled": 0,
            "labels_merged": 0,
            "rows_kept": 10,
        },
    }
    assert _data_summary(log) == [
        "- train: read 1,200, kept 1,098 (dropped: missing_label 100, outside_taxonomy 2; old label wordings merged: "
        "3; labels respelled: 7)",
        "- test: read 10, kept 10 (dropped: none; old label wordings merged: 0)",
    ]
    # validation rows that repeat a test text, and training labels split by spelling: lines only when any
    assert _data_summary({"dropped_validation_duplicates_of_test": 0, "labels_split_by_spelling": 0}) == [
        "- (no data log recorded)"
    ]
    assert _data_summary({"dropped_validation_duplicates_of_test": 12, "labels_split_by_spelling": 2}) == [
        "- validation rows dropped as duplicates of test text: 12",
        "- training labels written in more than one case or spacing (each spelling a class of its own): 2",
    ]
