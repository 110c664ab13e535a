"""`python -m longtail.score`: finished runs scored on a new labelled file, side by side."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import refused, run_as
from test_recipes import REPO, load_recipe, synthetic_files

from longtail import score
from longtail.compare import compare_runs
from longtail.report import load_predictions

TEXT, LABEL = "Consumer complaint narrative", "Issue"


@pytest.fixture(scope="module")
def runs(tiny_modernbert, tmp_path_factory):
    """A TF-IDF run, a probe run (whole texts in windows) and their ensemble, on the synthetic CSVs."""
    import functools

    import torch

    import longtail.report as report
    from longtail.ensemble import main as ensemble_main

    tmp = tmp_path_factory.mktemp("score")
    train, test = synthetic_files(tmp)
    common = ["--train_file", train, "--test_file", test, "--text_column", TEXT, "--label_taxonomy", "none"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(report, "score_split", functools.partial(report.score_split, n_resamples=100))
            load_recipe("baseline_tfidf").main(
                ["--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), *common,
                 "--output_dir", str(tmp / "tfidf"), "--do_predict", "--grid_C", "1.0"]
            )  # fmt: skip
            load_recipe("probe_encoder").main(
                ["--config", str(REPO / "recipes/configs/probe_encoder.yaml"), *common,
                 "--model_name_or_path", tiny_modernbert, "--output_dir", str(tmp / "probe"), "--do_predict",
                 "--max_length", "16", "--embedding_cache_dir", str(tmp / "cache"), "--grid_C", "0.1", "10"]
            )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    ensemble_main(
        [
            str(tmp / "probe"),
            str(tmp / "tfidf"),
            "--output_dir",
            str(tmp / "ensemble"),
            "--n_resamples",
            "100",
        ]
    )
    return {"tmp": tmp, "train": train, "test": test, **{k: tmp / k for k in ("tfidf", "probe", "ensemble")}}


def count_passes(monkeypatch) -> list[str]:
    """The names of the run folders `predict` scores from now on, one entry per pass (appended as they go)."""
    import longtail.predict

    passes = []
    real = longtail.predict._score_texts

    def counted(args, folder, *rest):
        passes.append(Path(folder).name)
        return real(args, folder, *rest)

    monkeypatch.setattr(longtail.predict, "_score_texts", counted)
    return passes


def score_args(runs, data, out, *extra):
    return [str(runs["probe"]), str(runs["ensemble"]), str(runs["tfidf"]), "--reference", str(runs["tfidf"]),
            "--data", str(data), "--output_dir", str(out), "--n_resamples", "100", "--no_progress", *extra]  # fmt: skip


def test_scoring_the_runs_own_test_file_gives_their_test_predictions_and_comparison(
    runs, tmp_path, monkeypatch
):

    passes = count_passes(monkeypatch)
    out = tmp_path / "scored"
    result = score.main(score_args(runs, runs["test"], out))
    # every run scored once: the ensemble's members were scored as runs, and the ensemble mixed those scores
    assert sorted(passes) == ["ensemble", "probe", "tfidf"]
    names = ("probe", "ensemble", "tfidf")
    for name in names:
        own = load_predictions(runs[name] / "predictions_test.npz")
        new = load_predictions(out / "scored" / name / "predictions_test.npz")
        np.testing.assert_array_equal(new["row_id"], own["row_id"])  # the same rows, in the same order
        np.testing.assert_array_equal(new["y_true"], own["y_true"])
        np.testing.assert_array_equal(new["label_names"], own["label_names"])
        np.testing.assert_allclose(new["probs"], own["probs"], atol=2e-5)
        # beside them what compare reads of the run: its validation predictions, labels and temperature
        for copied in ("predictions_validation.npz", "labels.json", "temperature.json"):
            assert (out / "scored" / name / copied).is_file() == (runs[name] / copied).is_file()
        assert json.loads((out / "scored" / name / "scored.json").read_text())["run"] == str(
            runs[name].resolve()
        )
    # the comparison is compare's on the runs themselves, row for row
    own = compare_runs([runs["probe"], runs["ensemble"]], runs["tfidf"], n_resamples=100)
    new = result["compare"]
    assert [r["run"] for r in new["runs"]] == ["tfidf", "probe", "ensemble"]
    assert [r["dir"] for r in new["runs"]] == [str(runs[n]) for n in ("tfidf", "probe", "ensemble")]
    for a, b in zip(own["runs"], new["runs"]):
        for key in (
            "accuracy",
            "macro_f1",
            "zero_f1_classes",
            "macro_f1_ci_low",
            "ece_served",
            "val_macro_f1",
        ):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
        if not a["reference"]:
            assert b["delta_macro_f1"] == a["delta_macro_f1"]
    assert new["validation_pick"]["run"] == own["validation_pick"]["run"]
    assert new["validation_pick"]["dir"] == own["validation_pick"]["dir"]  # the run's folder, as each row's
    counts = result["counts"]
    n = new["num_rows"]
    assert (
        counts["rows_scored"] == n == len(load_predictions(runs["tfidf"] / "predictions_test.npz")["row_id"])
    )
    assert counts["in_run_test"] == n and counts["in_run_train"] == counts["in_run_validation"] == 0
    assert counts["excluded_seen"] == 0
    text = (out / "score.md").read_text()
    assert (
        f"**{n:,} scored**" in text
        and "# Comparison on the scored file" in text
        and "on the scored file. Each validation" in text
    )
    assert "--keep_seen_rows" not in text  # no row a run trained or chose on: none kept
    assert json.loads((out / "score.json").read_text())["counts"] == counts
    # each run's info records the temperature it is served at: a run's own, an ensemble's that of its mix (not that
    # of a temperature.json it does not have: 1)
    served = {
        "tfidf": json.loads((runs["tfidf"] / "temperature.json").read_text())["temperature"],
        "ensemble": json.loads((runs["ensemble"] / "ensemble.json").read_text())["serving"][
            "mix_temperature"
        ],
    }
    assert {name: result["runs"][name]["temperature"] for name in served} == served
    # the scored folders are runs to compare: compare on them gives the same table
    again = compare_runs(
        [out / "scored" / "probe", out / "scored" / "ensemble"], out / "scored" / "tfidf", n_resamples=100
    )
    assert [r["macro_f1"] for r in again["runs"]] == [r["macro_f1"] for r in new["runs"]]


def splits_of(run: Path) -> dict:
    return json.loads((run / "splits.json").read_text())


def test_rows_without_text_or_label_unseen_labels_and_texts_a_run_read_are_left_out_and_counted(
    runs, tmp_path
):
    from longtail.data import load_merge_map

    train, test = pd.read_csv(runs["train"]), pd.read_csv(runs["test"])
    ids = splits_of(runs["tfidf"])
    names = json.loads((runs["tfidf"] / "labels.json").read_text())["id2label"].values()
    old, new = next((o, n) for o, n in load_merge_map("cfpb_2017").items() if n in names)
    rows = [
        *test.iloc[ids["test"][:5]][[TEXT, LABEL]].values.tolist(),  # 0-4: scored
        *train.iloc[ids["train"][:3]][[TEXT, LABEL]].values.tolist(),  # 5-7: the runs trained on them
        *train.iloc[ids["validation"][:2]][[TEXT, LABEL]].values.tolist(),  # 8-9: chose on them
        ["a complaint about something no run has heard of", "Not a label any run knows"],  # 10
        ["   ", test.iloc[ids["test"][5]][LABEL]],  # 11: no text
        ["my report lists a loan I never took", None],  # 12: no label
        ["someone pulled my credit report without any reason", old],  # 13: an old wording, merged
    ]
    data = tmp_path / "new.csv"
    pd.DataFrame(rows, columns=[TEXT, LABEL]).assign(Product="x").to_csv(data, index=False)
    result = score.main(score_args(runs, data, tmp_path / "out"))
    counts = result["counts"]
    old_wordings = sum(
        label in load_merge_map("cfpb_2017") for _, label in rows[:10]
    )  # the synthetic set has some
    assert {k: counts[k] for k in ("rows_read", "dropped_empty_text", "dropped_missing_label", "labels_merged",
                                   "excluded_unseen_labels", "in_run_train", "in_run_validation", "in_run_test",
                                   "excluded_seen", "rows_scored")} == {
        "rows_read": 14, "dropped_empty_text": 1, "dropped_missing_label": 1, "labels_merged": 1 + old_wordings,
        "excluded_unseen_labels": 1, "in_run_train": 3, "in_run_validation": 2, "in_run_test": 5,
        "excluded_seen": 5, "rows_scored": 6,
    }  # fmt: skip
    pred = load_predictions(tmp_path / "out" / "scored" / "probe" / "predictions_test.npz")
    np.testing.assert_array_equal(pred["row_id"], [0, 1, 2, 3, 4, 13])  # positions in the new file
    label_names = list(pred["label_names"])
    assert pred["y_true"][-1] == label_names.index(new)
    # the five test rows score as the run scored them
    own = load_predictions(runs["probe"] / "predictions_test.npz")
    where = [int(np.flatnonzero(own["row_id"] == i)[0]) for i in ids["test"][:5]]
    np.testing.assert_allclose(pred["probs"][:5], own["probs"][where], atol=2e-5)
    text = (tmp_path / "out" / "score.md").read_text()
    assert (
        "14 rows read, **6 scored**. Left out: 1 with no text, 1 with no label, 1 with a label the runs were not "
        "trained on, 5 with a text a run trained or was selected on. "
        f"Labels merged by the merge map: {1 + old_wordings}." in text
    )
    kept = score.main(score_args(runs, data, tmp_path / "kept", "--keep_seen_rows"))
    assert kept["counts"]["rows_scored"] == 11 and kept["counts"]["excluded_seen"] == 0
    np.testing.assert_array_equal(
        load_predictions(tmp_path / "kept" / "scored" / "tfidf" / "predictions_test.npz")["row_id"],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13],
    )
    assert (
        "(the train and validation ones scored: --keep_seen_rows)"
        in (tmp_path / "kept" / "score.md").read_text()
    )


def copy_run(run: Path, to: Path, edit: str, change) -> Path:
    shutil.copytree(run, to)
    path = to / edit
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return to


def reversed_labels(run: Path, to: Path) -> Path:
    """A copy of `run` whose labels.json names its labels in the other order."""

    def reverse(record):
        record["id2label"] = dict(zip(record["id2label"], reversed(record["id2label"].values())))

    return copy_run(run, to, "labels.json", reverse)


def test_mistakes_are_one_line_before_any_run_scores(runs, tmp_path, capsys, monkeypatch):
    import torch

    import longtail.predict

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the check")

    monkeypatch.setattr(longtail.predict, "score_texts", no_scoring)
    probe, tfidf, test = str(runs["probe"]), str(runs["tfidf"]), runs["test"]

    def args(*run_dirs, data=test, out=tmp_path / "out"):
        return [*map(str, run_dirs), "--data", str(data), "--output_dir", str(out)]

    other = copy_run(runs["tfidf"], tmp_path / "taxonomy", "run_config.json",
                     lambda r: r["data"].update(label_taxonomy="cfpb_issue_113"))  # fmt: skip
    line = refused(score.main, args(probe, other), capsys)
    assert (
        "trained with different --label_taxonomy" in line
        and str(other) in line
        and "pass --label_taxonomy" in line
    )
    fewer = copy_run(runs["tfidf"], tmp_path / "fewer", "labels.json",
                     lambda r: r["id2label"].pop(str(len(r["id2label"]) - 1)))  # fmt: skip
    assert "different label lists" in refused(score.main, args(probe, fewer), capsys)
    line = refused(score.main, args(probe, reversed_labels(runs["tfidf"], tmp_path / "reordered")), capsys)
    assert "different label lists" in line and "same labels in another order" in line
    assert "Data file not found" in refused(score.main, args(probe, data=tmp_path / "nope.csv"), capsys)
    # a folder given as --data: named as a folder (it said "Data file not found" of a folder that is there)
    (tmp_path / "data_folder").mkdir()
    assert refused(score.main, args(probe, data=tmp_path / "data_folder"), capsys).endswith(
        f"{tmp_path / 'data_folder'} is a folder, not a data file: pass the .csv, .json, .jsonl or .parquet file "
        "in it"
    )
    # a device this machine lacks, before the file is read (it was refused only when a model's turn came)
    if not torch.cuda.is_available():
        assert "CUDA is not available here" in refused(score.main, [*args(probe), "--device", "cuda"], capsys)
    assert "no such run folder" in refused(score.main, args(probe, tmp_path / "nope"), capsys)
    # a folder no run kind serves, an export's top folder, an ensemble with a member gone: before the file is read
    (tmp_path / "empty").mkdir()
    assert "empty is not a finished run" in refused(score.main, args(probe, tmp_path / "empty"), capsys)
    (tmp_path / "with_export" / "onnx" / "fp32").mkdir(parents=True)
    (tmp_path / "with_export" / "onnx" / "fp32" / "model.onnx").write_bytes(b"")
    line = refused(score.main, args(probe, tmp_path / "with_export" / "onnx"), capsys)
    assert "an ONNX export; pass one of its variants" in line and "onnx/{fp32}" in line
    gone = copy_run(runs["ensemble"], tmp_path / "gone", "ensemble.json",
                    lambda r: r["serving"].update(members=[probe, str(tmp_path / "deleted")]))  # fmt: skip
    line = refused(score.main, args(gone), capsys)
    assert f"ensemble member {tmp_path / 'deleted'}" in line and "is not a folder" in line
    hollow = copy_run(runs["ensemble"], tmp_path / "hollow", "ensemble.json",
                      lambda r: r["serving"].update(members=[probe, str(tmp_path / "empty")]))  # fmt: skip
    assert "empty is not a finished run" in refused(score.main, args(hollow), capsys)  # its members too
    no_label = tmp_path / "no_label.csv"
    pd.read_csv(test).rename(columns={LABEL: "issue"}).to_csv(no_label, index=False)
    line = refused(score.main, args(probe, tfidf, data=no_label), capsys)
    assert "Issue" in line and "'issue'" in line  # the column, and the one meant
    unseen = tmp_path / "unseen.csv"
    pd.DataFrame({TEXT: ["a text"], LABEL: ["No such issue"]}).to_csv(unseen, index=False)
    assert "no row left to score" in refused(score.main, args(probe, data=unseen), capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert "exists and is not empty" in refused(score.main, args(probe, out=tmp_path / "full"), capsys)
    # a run's folder (here one not scored) is refused as such: "Pass --overwrite_output_dir" sent the user on to
    # this refusal
    line = refused(score.main, args(probe, out=runs["tfidf"]), capsys)
    assert "holds files that are not an earlier score's" in line and "Pass --overwrite" not in line
    # the output folder may not be a run being scored, even when asked to overwrite
    line = refused(score.main, [*args(probe, tfidf, out=runs["tfidf"]), "--overwrite_output_dir"], capsys)
    assert "would clear first" in line
    assert (runs["tfidf"] / "model.joblib").is_file()


def test_a_rerun_replaces_the_previous_scores_only_when_asked(runs, tmp_path, capsys):
    out = tmp_path / "out"
    score.main([str(runs["tfidf"]), "--data", str(runs["test"]), "--output_dir", str(out), "--no_progress"])
    assert (out / "scored" / "tfidf" / "predictions_test.npz").is_file()
    line = refused(
        score.main, [str(runs["probe"]), "--data", str(runs["test"]), "--output_dir", str(out)], capsys
    )
    assert "--overwrite_output_dir" in line and (out / "scored" / "tfidf").is_dir()
    score.main([str(runs["probe"]), "--data", str(runs["test"]), "--output_dir", str(out), "--no_progress",
                "--overwrite_output_dir"])  # fmt: skip
    assert sorted(p.name for p in (out / "scored").iterdir()) == ["probe"]  # the old run's scores went
    result = json.loads((out / "score.json").read_text())
    assert result["compare"]["reference"] == "probe"  # one run: its own reference


def test_runs_trained_with_no_taxonomy_spelt_none_or_left_unset_read_the_file_alike(runs, tmp_path):
    """`--label_taxonomy none` (recorded "none") and a config without one (recorded null) are the same option: the
    runs were refused as trained with different taxonomies."""
    unset = copy_run(runs["tfidf"], tmp_path / "unset", "run_config.json",
                     lambda r: r["data"].update(label_taxonomy=None, label_merge_map="cfpb_2017"))  # fmt: skip
    spelt = copy_run(runs["tfidf"], tmp_path / "spelt", "run_config.json",
                     lambda r: r["data"].update(label_taxonomy="", label_merge_map="cfpb_2017"))  # fmt: skip
    result = score.main([str(runs["tfidf"]), str(unset), str(spelt), "--data", str(runs["test"]),
                         "--output_dir", str(tmp_path / "out"), "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert result["options"]["label_taxonomy"] is None
    own = load_predictions(runs["tfidf"] / "predictions_test.npz")
    assert result["counts"]["rows_scored"] == len(own["row_id"])


def test_an_option_given_reads_the_file_for_every_run_and_a_run_without_options_takes_the_defaults(
    runs, tmp_path
):
    """--label_taxonomy given reads the file one way for runs trained with different ones (refused without it); a
    run without run_config.json takes the recipes' defaults for the options not given; a key an older
    run_config.json lacks is no value, not null against the runs that recorded one."""
    tfidf = runs["tfidf"]
    n = len(load_predictions(tfidf / "predictions_test.npz")["row_id"])

    def scored(*argv, out):
        return score.main([*map(str, argv), "--data", str(runs["test"]), "--output_dir", str(tmp_path / out),
                           "--n_resamples", "100", "--no_progress"])  # fmt: skip

    other = copy_run(tfidf, tmp_path / "taxonomy", "run_config.json",
                     lambda r: r["data"].update(label_taxonomy="cfpb_issue_113"))  # fmt: skip
    result = scored(tfidf, other, "--label_taxonomy", "none", out="given")
    assert result["options"]["label_taxonomy"] == "none" and result["counts"]["rows_scored"] == n
    assert (
        result["options_from"]
        == "given: --label_taxonomy; as 2 trained runs recorded them in run_config.json"
    )
    bare = shutil.copytree(tfidf, tmp_path / "no_config")
    (bare / "run_config.json").unlink()
    result = scored(bare, "--text_column", TEXT, out="defaults")
    assert result["options"] == {"text_column": TEXT, "label_column": "Issue", "label_merge_map": "cfpb_2017",
                                 "label_taxonomy": None}  # fmt: skip
    assert (
        result["options_from"] == "given: --text_column; the recipes' defaults for 1 trained runs without one"
    )
    assert result["counts"]["rows_scored"] == n
    older = copy_run(tfidf, tmp_path / "older", "run_config.json", lambda r: r["data"].pop("label_merge_map"))
    result = scored(tfidf, older, out="older_out")
    assert result["options"]["label_merge_map"] == "cfpb_2017" and result["counts"]["rows_scored"] == n


def seen_and_new(runs, run: Path, path: Path) -> dict:
    """Writes `path`: four rows `run` trained on, two it chose on, then six of its test rows; returns its splits."""
    ids = splits_of(run)
    train, test = pd.read_csv(runs["train"]), pd.read_csv(runs["test"])
    pd.concat([train.iloc[ids["train"][:4] + ids["validation"][:2]], test.iloc[ids["test"][:6]]]).to_csv(
        path, index=False
    )
    return ids


def test_an_onnx_export_is_scored_without_the_rows_its_run_trained_on(runs, tmp_path):
    """An export's variant folder (`<run>/onnx/fp32`) holds copies of labels.json and run_config.json but not
    splits.json: the rows its run trained and chose on were scored as new ones, with only a warning."""
    import torch

    from longtail.export import ExportArguments, export_onnx

    probe = shutil.copytree(runs["probe"], tmp_path / "probe")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(ExportArguments(model_dir=str(probe), optimize=False, quantize=False, parity_rows=8))
    finally:
        torch.set_num_threads(threads)
    data = tmp_path / "new.csv"
    ids = seen_and_new(runs, probe, data)
    result = score.main([str(probe / "onnx" / "fp32"), "--data", str(data), "--output_dir", str(tmp_path / "out"),
                         "--n_resamples", "100", "--no_progress"])  # fmt: skip
    counts = result["counts"]
    assert (counts["in_run_train"], counts["in_run_validation"], counts["excluded_seen"]) == (4, 2, 6)
    assert counts["rows_scored"] == 6 and result["unchecked_runs"] == []
    # the six test rows score as the run scored them
    own = load_predictions(probe / "predictions_test.npz")
    new = load_predictions(tmp_path / "out" / "scored" / "fp32" / "predictions_test.npz")
    where = [int(np.flatnonzero(own["row_id"] == i)[0]) for i in ids["test"][:6]]
    np.testing.assert_allclose(new["probs"], own["probs"][where], atol=2e-5)
    # beside another run, validation picks between them: the export's validation predictions are its run's (it was
    # never scored on validation; no run was picked, for any of them, when one had none)
    both = score.main([str(probe / "onnx" / "fp32"), str(runs["tfidf"]), "--data", str(data), "--output_dir",
                       str(tmp_path / "both"), "--n_resamples", "100", "--no_progress"])  # fmt: skip
    copied = tmp_path / "both" / "scored" / "fp32" / "predictions_validation.npz"
    assert copied.read_bytes() == (probe / "predictions_validation.npz").read_bytes()
    assert both["compare"]["validation_pick"]["run"] in ("fp32", "tfidf")
    assert both["runs"]["fp32"]["copied_from_source_run"] == {
        "predictions_validation.npz": str(probe.resolve())
    }
    assert (
        "Validation predictions: fp32's are probe's, the run it serves"
        in (tmp_path / "both" / "score.md").read_text()
    )
    # an export whose parity.json has no model_dir (written before it) is its run's, two folders up; one written
    # elsewhere (export --output_dir) finds its run through model_dir
    args = ["--data", str(data), "--n_resamples", "100", "--no_progress"]
    parity = probe / "onnx" / "parity.json"
    record = json.loads(parity.read_text())
    parity.write_text(json.dumps({k: v for k, v in record.items() if k != "model_dir"}))
    for variant, out in (
        (probe / "onnx" / "fp32", "older"),
        (tmp_path / "exports" / "onnx" / "fp32", "elsewhere"),
    ):
        if out == "elsewhere":
            parity.write_text(json.dumps(record))
            (tmp_path / "exports").mkdir()
            shutil.move(probe / "onnx", tmp_path / "exports" / "onnx")
        result = score.main([str(variant), *args, "--output_dir", str(tmp_path / out)])
        assert (result["counts"]["excluded_seen"], result["unchecked_runs"]) == (6, []), out
        copied = result["runs"]["fp32"]["copied_from_source_run"]
        assert copied["predictions_validation.npz"] == str(probe.resolve()), out


def test_a_runs_files_are_looked_for_where_the_absolute_path_says(tmp_path, monkeypatch):
    """`score.run_file` for a merged/ given as `.`: the folder, the run above it; never the folder above the run
    (read as an export's source run and its parent, a splits.json there was taken for the run's)."""
    run = tmp_path / "adapter"
    (run / "merged").mkdir(parents=True)
    (run / "adapter_config.json").write_text("{}")
    (run / "labels.json").write_text("{}")
    (tmp_path / "splits.json").write_text("{}")  # not the run's
    monkeypatch.chdir(run / "merged")
    assert score.run_file(Path("."), "labels.json") == run / "labels.json"
    assert score.run_file(Path("."), "splits.json") is None


def test_a_merged_adapter_is_scored_as_the_run_it_serves(runs, tmp_path, monkeypatch):
    """An adapter run's `merged/` holds the merged model and its tokenizer alone, the run's files (splits.json,
    labels.json, validation predictions, temperature.json) its parent's: the rows the run trained and chose on are
    left out, and validation picks among runs by the run's validation predictions."""
    run = tmp_path / "adapter"
    merged = shutil.copytree(runs["probe"], run / "merged")
    model = (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    )
    for path in merged.iterdir():
        if path.name not in model:
            shutil.move(path, run / path.name)
    (run / "adapter_config.json").write_text("{}")
    data = tmp_path / "new.csv"
    ids = seen_and_new(runs, run, data)
    result = score.main([str(merged), "--data", str(data), "--output_dir", str(tmp_path / "out"), "--n_resamples",
                         "100", "--no_progress"])  # fmt: skip
    counts = result["counts"]
    assert (counts["in_run_train"], counts["in_run_validation"], counts["excluded_seen"]) == (4, 2, 6)
    assert counts["rows_scored"] == 6 and result["unchecked_runs"] == []
    assert result["runs"]["merged"]["copied_from_source_run"] == {
        name: str(run.resolve()) for name in score.COPIED
    }
    own = load_predictions(run / "predictions_test.npz")
    new = load_predictions(tmp_path / "out" / "scored" / "merged" / "predictions_test.npz")
    where = [int(np.flatnonzero(own["row_id"] == i)[0]) for i in ids["test"][:6]]
    np.testing.assert_allclose(new["probs"], own["probs"][where], atol=2e-5)
    assert "merged's are adapter's, the run it serves" in (tmp_path / "out" / "score.md").read_text()
    # given as `.` from inside merged/: the run's files were looked for in `.` alone (its parent, itself)
    monkeypatch.chdir(merged)
    result = score.main([".", "--data", str(data), "--output_dir", str(tmp_path / "dot"), "--n_resamples", "100",
                         "--no_progress"])  # fmt: skip
    assert (result["counts"]["excluded_seen"], result["counts"]["rows_scored"], result["unchecked_runs"]) == (
        6,
        6,
        [],
    )
    assert result["runs"]["merged"]["copied_from_source_run"] == {
        name: str(run.resolve()) for name in score.COPIED
    }


def test_overwrite_replaces_an_earlier_score_never_another_runs_files(runs, tmp_path, capsys):
    """--output_dir another run's folder (not one scored) with --overwrite_output_dir deleted that run's model,
    labels and predictions (every file a recipe writes), and a README.md kept beside earlier scores."""
    other = shutil.copytree(runs["tfidf"], tmp_path / "other_run")
    before = sorted(p.name for p in other.iterdir())
    argv = [str(runs["tfidf"]), "--data", str(runs["test"]), "--no_progress", "--overwrite_output_dir",
            "--n_resamples", "100"]  # fmt: skip
    line = refused(score.main, [*argv, "--output_dir", str(other)], capsys)
    assert "not an earlier score's" in line and "model.joblib" in line and "another --output_dir" in line
    assert sorted(p.name for p in other.iterdir()) == before
    out = tmp_path / "out"
    score.main([*argv, "--output_dir", str(out)])
    score.main([*argv, "--output_dir", str(out)])  # an earlier score alone is replaced
    (out / "README.md").write_text("my notes on these scores")
    assert "README.md" in refused(score.main, [*argv, "--output_dir", str(out)], capsys)
    assert (out / "README.md").is_file() and (out / "scored" / "tfidf" / "predictions_test.npz").is_file()


def test_rows_a_run_started_from_trained_on_are_left_out_too(runs, tmp_path):
    """A run whose model started from another run's (LP-FT `--head_init_from` a probe, `--model_name_or_path` a
    finished run, distill's teacher) holds what that run trained on: its rows were scored as new ones."""
    from longtail.data import TEXTS_KEY, text_digest

    ids = splits_of(runs["tfidf"])
    test = pd.read_csv(runs["test"])
    texts = test.iloc[ids["test"][:5]][TEXT].str.strip()

    def other_split(record):  # the earlier run trained on five of these rows (another split of the data)
        record[TEXTS_KEY]["train"] = {str(1000 + i): text_digest(t) for i, t in enumerate(texts)}
        record[TEXTS_KEY]["heldout"] = {"0": "0123456789abcdef"}  # a split the recipes do not write: not read

    earlier = copy_run(runs["tfidf"], tmp_path / "earlier", "splits.json", other_split)
    later = copy_run(runs["tfidf"], tmp_path / "later", "run_config.json",
                     lambda r: r.update(model={"model_name_or_path": str(earlier)}))  # fmt: skip
    result = score.main([str(later), "--data", str(runs["test"]), "--output_dir", str(tmp_path / "out"),
                         "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert result["counts"]["in_run_train"] == 5 and result["counts"]["excluded_seen"] == 5
    kept = load_predictions(tmp_path / "out" / "scored" / "later" / "predictions_test.npz")["row_id"]
    assert not set(ids["test"][:5]) & set(kept.tolist())
    # a run started from that one (LP-FT from a fine-tuned run) holds what the earlier run trained on too
    latest = copy_run(runs["tfidf"], tmp_path / "latest", "run_config.json",
                      lambda r: r.update(lpft={"head_init_from": str(later)}))  # fmt: skip
    result = score.main([str(latest), "--data", str(runs["test"]), "--output_dir", str(tmp_path / "out2"),
                         "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert result["counts"]["in_run_train"] == 5 and result["counts"]["excluded_seen"] == 5


def test_a_distilled_runs_teacher_logits_run_counts_and_a_start_that_is_not_here_is_named(
    runs, tmp_path, caplog
):
    """Distill's `--teacher_logits` may name a run folder (its saved predictions): the student learnt from what that
    run trained on, whose rows were scored as new. A start recorded as a path that is not here (relative to where
    the run was trained) is named in a warning: its rows cannot be told."""
    from longtail.data import TEXTS_KEY, text_digest

    ids = splits_of(runs["tfidf"])
    texts = pd.read_csv(runs["test"]).iloc[ids["test"][:4]][TEXT].str.strip()

    def taught_on(record):  # the teacher trained on four of these rows (another split of the data)
        record[TEXTS_KEY]["train"] = {str(2000 + i): text_digest(t) for i, t in enumerate(texts)}

    teacher = copy_run(runs["tfidf"], tmp_path / "teacher", "splits.json", taught_on)
    student = copy_run(runs["tfidf"], tmp_path / "student", "run_config.json",
                       lambda r: r.update(distill={"teacher_logits": str(teacher)}))  # fmt: skip
    args = ["--data", str(runs["test"]), "--n_resamples", "100", "--no_progress"]
    result = score.main([str(student), *args, "--output_dir", str(tmp_path / "out")])
    assert result["counts"]["in_run_train"] == 4 and result["counts"]["excluded_seen"] == 4
    gone = copy_run(runs["tfidf"], tmp_path / "gone", "run_config.json",
                    lambda r: r.update(lpft={"head_init_from": "outputs/elsewhere/probe"}))  # fmt: skip
    with caplog.at_level("WARNING", logger="longtail.score"):
        score.main([str(gone), *args, "--output_dir", str(tmp_path / "out2")])
    assert "records --head_init_from outputs/elsewhere/probe, which is not here" in caplog.text
    hub = copy_run(runs["tfidf"], tmp_path / "hub", "run_config.json",
                   lambda r: r.update(model={"model_name_or_path": "answerdotai/ModernBERT-base"}))  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING", logger="longtail.score"):
        score.main([str(hub), *args, "--output_dir", str(tmp_path / "out3")])
    assert "which is not here" not in caplog.text  # a Hub id: no local path to tell it from


def test_an_ensemble_without_serving_or_a_run_config_without_data_options_is_one_line_first(
    runs, tmp_path, capsys, monkeypatch
):
    import longtail.predict

    monkeypatch.setattr(
        longtail.predict, "score_texts", lambda *a, **k: pytest.fail("scored before the check")
    )
    old = copy_run(runs["ensemble"], tmp_path / "old", "ensemble.json", lambda r: r.pop("serving"))
    listed = copy_run(runs["ensemble"], tmp_path / "listed", "ensemble.json", lambda r: r.update(serving=[1]))
    odd = copy_run(runs["tfidf"], tmp_path / "odd", "run_config.json", lambda r: r.update(data=["Issue"]))
    for run, expected in ((old, "has no 'serving' entry (it predates serving): rerun"), (listed, "(it holds a list)"),
                          (odd, "its 'data' entry is a list")):  # fmt: skip
        args = [
            str(runs["tfidf"]),
            str(run),
            "--data",
            str(runs["test"]),
            "--output_dir",
            str(tmp_path / "out" / run.name),
        ]
        assert expected in refused(score.main, args, capsys)


def test_a_text_a_run_read_saved_again_in_another_case_or_spacing_is_left_out_and_older_digests_still_work(
    runs, tmp_path
):
    """The digests were of the exact stripped text, though the recipes' leak guard ignores case and spacing: a file
    re-saved by Excel (CRLF inside narratives) had its seen rows scored as new, silently. They are now of the
    normalised text (16 hex digits); a run written before (8 hex digits of the stripped text) is still read."""
    from longtail.data import TEXTS_KEY

    ids = splits_of(runs["tfidf"])
    train, test = pd.read_csv(runs["train"]), pd.read_csv(runs["test"])

    def resaved(text, how):
        text = text.strip()
        return {
            "crlf": text.replace(" ", "\r\n", 2),
            "spaces": text.replace(" ", "  "),
            "case": text.upper(),
        }[how]

    hows = ["crlf", "spaces", "case"]
    trained = train.iloc[ids["train"][:3]][[TEXT, LABEL]].values.tolist()
    chosen = train.iloc[ids["validation"][:2]][[TEXT, LABEL]].values.tolist()
    rows = [
        *test.iloc[ids["test"][:3]][[TEXT, LABEL]].values.tolist(),  # 0-2: scored
        *[[resaved(t, how), label] for (t, label), how in zip(trained, hows)],  # 3-5: the run trained on them
        *[[resaved(t, how), label] for (t, label), how in zip(chosen, hows)],  # 6-7: it chose on them
        *trained,  # 8-10: as the run read them
    ]
    data = tmp_path / "resaved.csv"
    pd.DataFrame(rows, columns=[TEXT, LABEL]).to_csv(data, index=False)

    def scored(run, out):
        result = score.main([str(run), "--data", str(data), "--output_dir", str(tmp_path / out),
                             "--n_resamples", "100", "--no_progress"])  # fmt: skip
        kept = load_predictions(tmp_path / out / "scored" / run.name / "predictions_test.npz")["row_id"]
        return result["counts"], kept.tolist()

    counts, kept = scored(runs["tfidf"], "new")
    assert {k: counts[k] for k in ("in_run_train", "in_run_validation", "excluded_seen", "rows_scored")} == {
        "in_run_train": 6, "in_run_validation": 2, "excluded_seen": 8, "rows_scored": 3,
    }  # fmt: skip
    assert kept == [0, 1, 2]

    def old_digests(record):  # as splits.json was written before: 8 hex digits of the stripped text
        record[TEXTS_KEY] = {
            split: {
                str(i): hashlib.sha256(str(source[TEXT].iloc[i]).strip().encode()).hexdigest()[:8]
                for i in record[split]
            }
            for split, source in (("train", train), ("validation", train), ("test", test))
        }

    older = copy_run(runs["tfidf"], tmp_path / "older", "splits.json", old_digests)
    counts, kept = scored(older, "old")  # the exact texts are still told; the re-saved ones cannot be
    assert (counts["in_run_train"], counts["in_run_validation"], counts["excluded_seen"]) == (3, 0, 3)
    assert kept == [0, 1, 2, 3, 4, 5, 6, 7]


def test_a_file_with_nothing_to_score_says_why_and_score_md_names_labels_spelt_another_way(
    runs, tmp_path, capsys
):
    """ "No row left to score" said to check the columns whatever the cause: a file of headers alone, a file whose
    every row a run trained on (--keep_seen_rows is the way), a model whose labels are not the file's (a folder saved
    without label names: LABEL_0, ...). Labels the runs know in another case were left out with a hint in the log
    alone: score.md counted them as labels the runs were not trained on."""
    tfidf, train, test = runs["tfidf"], pd.read_csv(runs["train"]), pd.read_csv(runs["test"])

    def args(data, run=tfidf, out="out"):
        return [str(run), "--data", str(data), "--output_dir", str(tmp_path / out), "--n_resamples", "100",
                "--no_progress"]  # fmt: skip

    headers = tmp_path / "headers.csv"
    test.iloc[:0].to_csv(headers, index=False)
    assert refused(score.main, args(headers), capsys).endswith("the file has no rows")
    seen = tmp_path / "seen.csv"
    train.iloc[splits_of(tfidf)["train"][:20]].to_csv(seen, index=False)
    assert "--keep_seen_rows scores them anyway" in refused(score.main, args(seen), capsys)
    unnamed = copy_run(tfidf, tmp_path / "unnamed", "labels.json",
                       lambda r: r.update(id2label={k: f"LABEL_{k}" for k in r["id2label"]}))  # fmt: skip
    n = len(json.loads((unnamed / "labels.json").read_text())["id2label"])
    assert f"the runs know {n} labels ('LABEL_0', 'LABEL_1', 'LABEL_2', ...)" in refused(
        score.main, args(runs["test"], unnamed), capsys
    )
    lower = tmp_path / "lower.csv"
    test.assign(**{LABEL: test[LABEL].str.lower()}).to_csv(lower, index=False)
    result = score.main(args(lower, out="lower"))
    assert (
        result["counts"]["unseen_label_hint"]
        and "match a training label written differently" in (tmp_path / "lower" / "score.md").read_text()
    )


def test_an_ensemble_inside_another_is_scored_before_it_whatever_the_order_given(runs, tmp_path, monkeypatch):
    """Given before the ensemble inside it, an outer ensemble scored the inner one's members as its own (its time
    theirs), and the inner one was then timed as a look-up of its cached scores."""
    from longtail.ensemble import main as ensemble_main

    other = shutil.copytree(runs["tfidf"], tmp_path / "other")
    outer = tmp_path / "outer"
    ensemble_main([str(runs["ensemble"]), str(other), "--output_dir", str(outer), "--n_resamples", "100"])
    passes = count_passes(monkeypatch)
    result = score.main([str(outer), str(runs["ensemble"]), "--data", str(runs["test"]), "--output_dir",
                         str(tmp_path / "out"), "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert sorted(passes) == ["ensemble", "other", "outer", "probe", "tfidf"]  # each once
    assert passes.index("ensemble") < passes.index("outer")
    own = load_predictions(outer / "predictions_test.npz")
    new = load_predictions(tmp_path / "out" / "scored" / "outer" / "predictions_test.npz")
    np.testing.assert_allclose(new["probs"], own["probs"], atol=2e-5)
    assert list(result["runs"]) == ["outer", "ensemble"]
    text = (tmp_path / "out" / "score.md").read_text()
    assert re.search(r"Scoring time \([^)]*\): outer [\d.]+ s, ensemble [\d.]+ s\.", text)  # as given


def test_a_taxonomy_file_the_runs_recorded_that_is_not_here_names_where_it_came_from(runs, tmp_path, capsys):
    """A merge map or taxonomy file recorded relative to where the runs were trained was refused as "neither a
    built-in nor a file", though no option named it."""
    moved = copy_run(runs["tfidf"], tmp_path / "moved", "run_config.json",
                     lambda r: r["data"].update(label_taxonomy="configs/my_taxonomy.txt"))  # fmt: skip
    line = refused(
        score.main, [str(moved), "--data", str(runs["test"]), "--output_dir", str(tmp_path / "out")], capsys
    )
    assert "'configs/my_taxonomy.txt'" in line and "the runs were trained with" in line and str(moved) in line
    assert "pass --label_taxonomy" in line


def test_score_md_says_when_a_run_records_no_text_digests(runs, tmp_path):
    """A run without splits.json (an older run, a folder not written by the recipes): the rows it trained on cannot
    be left out, which only the log said; score.md read as if every run had been checked."""
    bare = shutil.copytree(runs["tfidf"], tmp_path / "bare")
    (bare / "splits.json").unlink()
    result = score.main([str(bare), "--data", str(runs["test"]), "--output_dir", str(tmp_path / "out"),
                         "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert result["unchecked_runs"] == [str(bare)]
    text = (tmp_path / "out" / "score.md").read_text()
    assert f"**1 runs record no text digests** (no splits.json: {bare})" in text and "scored as new" in text


def test_a_run_not_scored_is_never_the_output_folder(runs, tmp_path, capsys):
    """--overwrite_output_dir replaces earlier scores, never a run: a run folder given as --output_dir by mistake
    (not one of the runs scored) was deleted whole, its model and predictions replaced by score.md."""
    probe = tmp_path / "probe"
    shutil.copytree(runs["probe"], probe)
    before = sorted(p.name for p in probe.iterdir())
    args = [str(runs["tfidf"]), "--data", str(runs["test"]), "--output_dir", str(probe), "--no_progress"]
    line = refused(score.main, [*args, "--overwrite_output_dir"], capsys)
    assert "not an earlier score's" in line and "Choose another --output_dir" in line
    assert sorted(p.name for p in probe.iterdir()) == before and (probe / "model.safetensors").is_file()
    ensemble = tmp_path / "ensemble"  # an ensemble's folder (no model files of its own) too
    shutil.copytree(runs["ensemble"], ensemble)
    args[args.index(str(probe))] = str(ensemble)
    assert "not an earlier score's" in refused(score.main, [*args, "--overwrite_output_dir"], capsys)
    assert (ensemble / "ensemble.json").is_file()


def test_a_run_given_by_itself_and_as_an_ensembles_member_counts_once(runs, tmp_path, monkeypatch):
    """An ensemble records its members by absolute path; a member given too, spelt relative (as `make cfpb-score`
    gives them), was counted twice: score.md read "as 4 trained runs recorded them" for 2 runs, and a member
    without splits.json was named twice among the runs that record no text digests."""
    from longtail.ensemble import main as ensemble_main

    bare = shutil.copytree(runs["tfidf"], tmp_path / "bare")
    (bare / "splits.json").unlink()
    ensemble_main(
        [str(runs["probe"]), str(bare), "--output_dir", str(tmp_path / "ens"), "--n_resamples", "100"]
    )
    monkeypatch.chdir(tmp_path)
    result = score.main(["bare", "ens", str(runs["probe"]), "--data", str(runs["test"]), "--output_dir", "out",
                         "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert result["unchecked_runs"] == ["bare"]
    assert result["options_from"] == "as 2 trained runs recorded them in run_config.json"
    assert (
        "**1 runs record no text digests** (no splits.json: bare)"
        in (tmp_path / "out" / "score.md").read_text()
    )


def known_rows(runs, path: Path) -> Path:
    """Writes `path`: the test file's rows with a text and a label the runs were trained on."""
    test = pd.read_csv(runs["test"]).dropna(subset=[TEXT, LABEL])
    names = json.loads((runs["tfidf"] / "labels.json").read_text())["id2label"].values()
    test[test[LABEL].isin(set(names))].to_csv(path, index=False)
    return path


def test_a_reference_not_among_the_runs_is_scored_too(runs, tmp_path):
    data = known_rows(runs, tmp_path / "known.csv")
    result = score.main([str(runs["probe"]), "--reference", str(runs["tfidf"]), "--data", str(data),
                         "--output_dir", str(tmp_path / "out"), "--n_resamples", "100", "--no_progress"])  # fmt: skip
    assert list(result["runs"]) == ["probe", "tfidf"] and result["compare"]["reference"] == "tfidf"
    assert [r["run"] for r in result["compare"]["runs"]] == ["tfidf", "probe"]
    assert "Left out: none." in (tmp_path / "out" / "score.md").read_text()


def test_runs_that_say_their_labels_only_once_scored_are_checked_then(runs, tmp_path, capsys, monkeypatch):
    """Runs none of whose files names their labels before scoring (ensemble.json, labels.json, config.json): their
    label lists are compared, and rows with labels they were not trained on refused, once they have scored."""
    monkeypatch.setattr(score, "label_names_of", lambda folder: None)
    args = ["--data", str(known_rows(runs, tmp_path / "known.csv")), "--n_resamples", "100", "--no_progress"]
    reordered = reversed_labels(runs["tfidf"], tmp_path / "reordered")
    line = refused(score.main, [str(runs["tfidf"]), str(reordered), *args, "--output_dir", str(tmp_path / "a")],
                   capsys)  # fmt: skip
    assert "different label lists" in line and "same labels in another order" in line
    unseen = tmp_path / "unseen.csv"
    known = pd.read_csv(tmp_path / "known.csv")
    known.assign(**{LABEL: [*["No such issue"] * 3, *known[LABEL][3:]]}).to_csv(unseen, index=False)
    args[1] = str(unseen)
    line = refused(score.main, [str(runs["tfidf"]), *args, "--output_dir", str(tmp_path / "b")], capsys)
    assert f"3 rows carry labels {runs['tfidf']} was not trained on (['No such issue'])" in line


def test_a_batch_size_below_one_or_too_few_resamples_are_refused_as_the_options_are_read(capsys):
    from longtail.compare import MIN_RESAMPLES, RESAMPLES_ERROR

    argv = ["run", "--data", "new.csv", "--output_dir", "out"]
    assert refused(score.main, [*argv, "--batch_size", "0"], capsys).endswith(
        "--batch_size must be >= 1, got 0"
    )
    few = MIN_RESAMPLES - 1
    assert refused(score.main, [*argv, "--n_resamples", str(few)], capsys).endswith(
        RESAMPLES_ERROR.format(few)
    )


def test_a_merge_map_or_taxonomy_given_that_is_no_file_fails_before_the_data_file_is_read(
    tmp_path, monkeypatch
):
    """labelled_rows loads --label_merge_map and --label_taxonomy before it reads the file: a typo in one was an
    error only after the whole --data file (the CFPB export is gigabytes) was read, once the reader was split out
    for the export."""
    import longtail.data

    def never(*_, **__):
        raise AssertionError("the data file was read before the options were checked")

    monkeypatch.setattr(longtail.data, "read_table", never)
    columns = {"text_column": "text", "label_column": "label"}
    for name in ("label_merge_map", "label_taxonomy"):
        options = {
            **columns,
            "label_merge_map": None,
            "label_taxonomy": None,
            name: str(tmp_path / "typo.csv"),
        }
        with pytest.raises(longtail.data.DataError, match="typo.csv"):
            score.read_rows(str(tmp_path / "data.csv"), options, None, False, [])


def test_an_explicit_device_no_run_uses_is_refused_before_the_file_is_read(
    runs, tmp_path, capsys, monkeypatch
):
    """--device cuda (or mps) when every run scored is a TF-IDF run, or an ensemble of TF-IDF runs alone, is one line
    before the file is read, as `predict` refuses it (scikit-learn runs on the CPU: on a GPU machine it was ignored
    without a word); with a Transformers run among them the device serves that one. A GPU machine is faked, so the
    check does not depend on this one's."""
    import torch

    import longtail.predict

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the check")

    run_as(monkeypatch, "score.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(longtail.predict, "score_texts", no_scoring)
    tfidf, other = runs["tfidf"], shutil.copytree(runs["tfidf"], tmp_path / "tfidf2")
    alone = tmp_path / "tfidf_ensemble"  # an ensemble of TF-IDF runs alone
    alone.mkdir()
    (alone / "ensemble.json").write_text(json.dumps({"serving": {"members": [str(tfidf), str(other)]}}))
    never = tmp_path / "never-read.csv"
    for given, what in (
        ([tfidf], f"{tfidf} is a scikit-learn run (TF-IDF), which runs on the CPU"),
        ([alone], f"{alone} is an ensemble of scikit-learn runs (TF-IDF) alone, which runs on the CPU"),
        ([tfidf, alone], f"every run given ({tfidf}, {alone}) is a scikit-learn run (TF-IDF) or an ensemble of "
                         "them, which run on the CPU"),
    ):  # fmt: skip
        for device in ("cuda", "cuda:1", "mps"):
            argv = [
                *map(str, given),
                "--data",
                str(never),
                "--output_dir",
                str(tmp_path / "out"),
                "--device",
                device,
            ]
            assert refused(score.main, argv, capsys) == (
                f"score.py: error: --device {device} sets where a Transformers model runs; {what}"
            )
    assert not (tmp_path / "out").exists()
    # a Transformers run among them: the device is the one it runs on (scoring starts: the guard above stops it)
    argv = [
        str(tfidf),
        str(runs["probe"]),
        "--data",
        str(runs["test"]),
        "--output_dir",
        str(tmp_path / "mixed"),
    ]
    with pytest.raises(AssertionError, match="scored before the check"):
        score.main([*argv, "--device", "cuda", "--no_progress"])
    # the default device and --device cpu score TF-IDF runs alone
    monkeypatch.undo()
    for i, extra in enumerate(([], ["--device", "cpu"])):
        result = score.main([str(tfidf), "--data", str(runs["test"]), "--output_dir", str(tmp_path / f"cpu{i}"),
                             "--n_resamples", "100", "--no_progress", *extra])  # fmt: skip
        assert list(result["runs"]) == ["tfidf"] and result["runs"]["tfidf"]["backend"] == "scikit-learn"


def test_an_output_folder_inside_a_run_is_refused_before_the_file_is_read(
    runs, tmp_path, capsys, monkeypatch
):
    """--output_dir inside one of the runs scored (or the reference) was written without a word, score.md and
    scored/ filed among that run's files; one line now, before the file is read, nothing written."""
    run = shutil.copytree(runs["tfidf"], tmp_path / "tfidf")
    before = sorted(p.name for p in run.iterdir())
    run_as(monkeypatch, "score.py")
    for argv, out, what in (
        ([str(run)], run / "new_scores", "the run"),
        ([str(runs["probe"]), "--reference", str(run)], run / "a" / "b", "the run"),
    ):
        line = refused(
            score.main, [*argv, "--data", str(tmp_path / "never-read.csv"), "--output_dir", str(out)], capsys
        )
        assert line == (
            f"score.py: error: --output_dir {out} is inside {what} {run}: write it beside the runs, not in one of "
            "their folders (a rerun of that run would keep it among results it no longer describes)"
        )
    assert sorted(p.name for p in run.iterdir()) == before
