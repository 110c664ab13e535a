"""Cross-fitted train predictions (`longtail.crossfit`, `--predict_train` of the TF-IDF and probe recipes): each
training row is scored by a fit that never saw it, so a distillation teacher's targets are honest."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import REPO
from test_probe import probe_args
from test_recipes import load_recipe

from longtail.crossfit import check_folds, cross_fitted_probs


def memorisable_files(tmp_path, n_train: int = 150) -> tuple[str, str]:
    """Rows whose words occur in no other row, under random labels: a model can memorise its training rows and
    learn nothing that carries to another row."""
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = ["Late fee", "Wrong balance", "Lost card"]
    paths = []
    for name, n, start in (("train", n_train, 0), ("test", 30, 1000)):
        texts = [" ".join(f"tok{start + i}x{j}" for j in range(6)) for i in range(n)]
        path = tmp_path / f"{name}.csv"
        pd.DataFrame({"Consumer complaint narrative": texts, "Issue": rng.choice(labels, n)}).to_csv(
            path, index=False
        )
        paths.append(str(path))
    return paths[0], paths[1]


def test_each_row_is_scored_once_by_a_fit_on_every_other_row(caplog):
    y = np.repeat([0, 1, 2, 3], [30, 12, 6, 3])  # class 3 has fewer rows than folds
    fits = []

    def fit_predict(fit_rows, scored):
        fits.append((set(fit_rows.tolist()), scored.copy()))
        out = np.zeros((len(scored), 5))
        out[np.arange(len(scored)), len(fits) % 5] = 1.0  # which fold scored the row
        return out

    with caplog.at_level(logging.WARNING, logger="longtail.crossfit"):
        probs = cross_fitted_probs(fit_predict, y, num_labels=5, folds=5, seed=0)
    assert "1 classes have fewer than 5 training rows" in caplog.text
    assert len(fits) == 5 and probs.shape == (len(y), 5)
    scored = np.concatenate([s for _, s in fits])
    assert sorted(scored.tolist()) == list(range(len(y)))  # every row scored exactly once
    for fit_rows, rows in fits:
        assert fit_rows.isdisjoint(rows.tolist()) and len(fit_rows) + len(rows) == len(y)  # the others, all
        assert abs((y[rows] == 0).sum() - 6) <= 1  # stratified: a fifth of class 0 in each fold
    np.testing.assert_array_equal(probs.argmax(1)[fits[0][1]], 1)  # rows keep the fold that scored them
    with pytest.raises(ValueError, match="no class has 40 training rows"):
        cross_fitted_probs(fit_predict, y, 5, 40, 0)
    for bad in (1, -1):
        with pytest.raises(ValueError, match="0 \\(in-sample\\) or at least 2"):
            check_folds(bad)


def test_fold_count_boundaries_and_the_seed(caplog):
    """A class with exactly `folds` rows fills every fold: neither refused nor warned about; the folds follow
    the seed."""
    y = np.repeat([0, 1], [3, 3])
    with caplog.at_level(logging.WARNING, logger="longtail.crossfit"):
        probs = cross_fitted_probs(lambda fit, scored: np.ones((len(scored), 2)) / 2, y, 2, 3, seed=0)
    assert probs.shape == (6, 2) and "fewer than" not in caplog.text
    with pytest.raises(ValueError, match="no class has 4 training rows \\(at most 3\\)"):
        cross_fitted_probs(lambda fit, scored: None, y, 2, 4, seed=0)

    def folds_of(seed):
        folds = []
        cross_fitted_probs(
            lambda fit, scored: folds.append(scored.tolist()) or 0.0, np.repeat([0, 1], 20), 2, 4, seed
        )
        return folds

    assert folds_of(1) == folds_of(1) and folds_of(1) != folds_of(2)


def test_how_train_predictions_were_made_is_read_back(tmp_path):
    from longtail.crossfit import combined_folds, train_prediction_folds, train_prediction_note

    assert train_prediction_note(3, refit=False) == (
        "cross-fitted: each row scored by the chosen setting fit on the other 2 of 3 stratified folds of train"
    )
    assert train_prediction_note(0, refit=True) == (
        "in-sample: the saved model (fit on train + validation) on its own rows"
    )
    assert train_prediction_note(0, refit=False) == "in-sample: the saved model on its own rows"
    # an ensemble's are as held out as its least held-out member's; unknown if any member does not say
    assert combined_folds([5, 3]) == 3 and combined_folds([5, 0]) == 0
    assert combined_folds([5, None]) is None and combined_folds([0, None]) is None
    assert train_prediction_folds(tmp_path) is None
    (tmp_path / "run_config.json").write_text(
        json.dumps({"data": {"seed": 1}, "baseline": {"predict_train_folds": 4}})
    )
    assert train_prediction_folds(tmp_path) == 4
    (tmp_path / "run_config.json").unlink()
    (tmp_path / "ensemble.json").write_text(json.dumps({"train_predictions": {"predict_train_folds": None}}))
    assert train_prediction_folds(tmp_path) is None


def train_accuracy(out, folds: int) -> float:
    """Accuracy of a run's saved train predictions, after checking their rows, that they are probabilities, and
    that the report says how they were made."""
    from longtail.report import load_predictions

    pred = load_predictions(out / "predictions_train.npz")
    assert sorted(pred["row_id"].tolist()) == sorted(json.loads((out / "splits.json").read_text())["train"])
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, atol=1e-6)
    note = (
        "cross-fitted: each row scored by the chosen setting fit on the other 2 of 3"
        if folds
        else "in-sample"
    )
    assert note in (out / "report.md").read_text()
    return float((pred["probs"].argmax(1) == pred["y_true"]).mean())


def assert_served_as_saved(out, train_csv: str, tmp_path) -> None:
    """In-sample train predictions are the saved model's own: `predict` on the run folder, over the training
    rows' texts, returns them (calibrated by the folder's temperature; predictions_*.npz stay raw)."""
    import pandas as pd

    from longtail.calibration import load_temperature
    from longtail.predict import main as predict
    from longtail.report import load_predictions

    saved = load_predictions(out / "predictions_train.npz")
    texts = pd.read_csv(train_csv)["Consumer complaint narrative"].to_numpy()[
        saved["row_id"]
    ]  # row_id: CSV row
    src, dst = tmp_path / "train_texts.csv", tmp_path / "served.jsonl"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    predict(["--model_dir", str(out), "--input", str(src), "--output", str(dst), "--top_k", "1",
             "--no_progress", "--device", "cpu"])  # fmt: skip
    served = pd.read_json(dst, lines=True)
    t = load_temperature(out)
    calibrated = saved["probs"] ** (1 / t) / (saved["probs"] ** (1 / t)).sum(1, keepdims=True)
    assert served["label"].tolist() == [str(saved["label_names"][i]) for i in saved["probs"].argmax(1)]
    np.testing.assert_allclose(served["confidence"].to_numpy(), calibrated.max(1), atol=1e-4)


def test_baseline_train_predictions_for_a_teacher_are_cross_fitted(tmp_path):
    """`--predict_train` (a distillation teacher) scores each training row with a fit that never saw it: on rows a
    model can only memorise, in-sample predictions are right (near) everywhere and cross-fitted ones at chance."""
    train, test = memorisable_files(tmp_path)
    recipe = load_recipe("baseline_tfidf")
    args = [
        "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", train, "--test_file", test,
        "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none", "--char_ngram_max", "0",
        "--grid_C", "10.0", "--grid_sublinear_tf", "false", "--predict_train", "true",
    ]  # fmt: skip
    accuracy = {}
    for folds in (0, 3):
        out = tmp_path / f"folds{folds}"
        recipe.main([*args, "--predict_train_folds", str(folds), "--output_dir", str(out)])
        accuracy[folds] = train_accuracy(out, folds)
    assert accuracy[0] > 0.95 and accuracy[3] < 0.6, accuracy  # measured: 1.0 and 0.35 of 135 rows
    for bad in ("1", "200"):  # one fold is no cross-fit; more folds than any class has rows
        with pytest.raises(ValueError, match="predict_train_folds"):
            recipe.main([*args, "--predict_train_folds", bad, "--output_dir", str(tmp_path / f"bad{bad}")])
        assert not list((tmp_path / f"bad{bad}").glob("*")), "refused before anything was fit or written"


def test_probe_train_predictions_are_cross_fitted(
    tiny_modernbert, tmp_path, fast_bootstrap, one_torch_thread
):
    """On rows a head can only memorise (words in no other row, random labels), the probe's in-sample train
    predictions beat chance by far and the cross-fitted ones do not; `--predict_train_folds 0` is the saved
    model's own, and the report says which."""
    train, test = memorisable_files(tmp_path, n_train=45)
    recipe = load_recipe("probe_encoder")
    accuracy = {}
    for folds in (0, 3):
        out = tmp_path / f"folds{folds}"
        args = probe_args(tiny_modernbert, train, test, out, tmp_path / "cache", "--long_text", "truncate")
        extra = ["--grid_C", "100", "--feature_layers", "0", "1", "2", "--predict_train", "true"]
        recipe.main([*args, *extra, "--predict_train_folds", str(folds)])
        accuracy[folds] = train_accuracy(out, folds)
    assert_served_as_saved(tmp_path / "folds0", train, tmp_path)
    assert accuracy[0] > 0.55 and accuracy[3] < 0.45, accuracy  # measured: 0.68 and 0.27 of 41 rows
    bad = probe_args(
        tiny_modernbert, train, test, tmp_path / "bad", tmp_path / "other_cache", "--long_text", "truncate"
    )
    with pytest.raises(ValueError, match="no class has 200 training rows"):
        recipe.main([*bad, "--predict_train", "true", "--predict_train_folds", "200"])
    assert not (tmp_path / "other_cache").exists(), "refused before embedding"
