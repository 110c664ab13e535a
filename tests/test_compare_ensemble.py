"""`python -m longtail.compare` and `python -m longtail.ensemble` on hand-made prediction files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import refused, run_as

from longtail.report import SplitResult, save_predictions

LABELS = ["a", "b", "c"]


def one_hot_probs(pred, sharp=0.8):
    probs = np.full((len(pred), 3), (1 - sharp) / 2)
    probs[np.arange(len(pred)), pred] = sharp
    return probs


def make_run(path, split_preds: dict, y: dict, labels=LABELS, row_ids=None):
    path.mkdir(parents=True, exist_ok=True)
    for split, pred in split_preds.items():
        rows = np.arange(len(pred)) if row_ids is None else row_ids
        probs = pred if np.ndim(pred) == 2 else one_hot_probs(np.asarray(pred))
        save_predictions(path, SplitResult(split, np.asarray(y[split]), probs, None, row_ids=rows), labels)
    return str(path)


Y = {"test": [0, 0, 1, 1, 2, 2, 0, 1], "validation": [0, 1, 2, 0, 1, 2]}


def test_compare_table_and_paired_deltas(tmp_path, capsys):
    from longtail.compare import main
    from longtail.metrics import macro_f1

    ref = make_run(tmp_path / "tfidf", {"test": [0, 0, 0, 0, 0, 0, 0, 0]}, Y)
    good = make_run(tmp_path / "probe", {"test": [0, 0, 1, 1, 2, 2, 0, 0]}, Y)
    result = main([good, "--reference", ref, "--output_dir", str(tmp_path / "cmp"), "--n_resamples", "200"])
    rows = {r["run"]: r for r in result["runs"]}
    assert rows["tfidf"]["reference"] and rows["tfidf"]["macro_f1"] == pytest.approx(
        macro_f1(Y["test"], [0] * 8)
    )
    expected = macro_f1(Y["test"], [0, 0, 1, 1, 2, 2, 0, 0]) - macro_f1(Y["test"], [0] * 8)
    assert rows["probe"]["delta_macro_f1"]["delta"] == pytest.approx(expected)
    assert rows["probe"]["delta_accuracy"]["delta"] == pytest.approx(7 / 8 - 3 / 8)
    assert rows["probe"]["zero_f1_classes"] == 0 and rows["tfidf"]["zero_f1_classes"] == 2
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "tfidf **(ref)**" in md and "+0.500 [" in md  # accuracy delta
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["num_rows"] == 8
    assert "Comparison on test" in capsys.readouterr().out
    # a tier with no class among these rows scores NaN: shown as a dash, not "nan"
    from longtail.compare import to_markdown

    result["runs"][0]["macro_f1_tail"] = float("nan")
    assert "nan" not in to_markdown(result) and " / —" in to_markdown(result)


def test_compare_shows_the_calibration_each_run_serves(tmp_path, capsys, monkeypatch):
    """ECE in compare.md is that of the probabilities `predict` serves: the saved raw ones at the run's own
    temperature.json. It showed the raw ones, beside an ensemble's calibrated mix."""
    from longtail.calibration import save_temperature
    from longtail.compare import main
    from longtail.metrics import expected_calibration_error, softmax

    ref = make_run(tmp_path / "tfidf", {"test": [0, 0, 1, 1, 2, 2, 0, 0]}, Y)
    probe = make_run(tmp_path / "probe", {"test": [0, 0, 1, 1, 2, 2, 0, 0]}, Y)
    save_temperature(probe, 2.0)
    result = main([probe, "--reference", ref, "--output_dir", str(tmp_path / "cmp"), "--n_resamples", "50"])
    rows = {r["run"]: r for r in result["runs"]}
    y, raw = np.array(Y["test"]), one_hot_probs(np.array([0, 0, 1, 1, 2, 2, 0, 0]))
    served = softmax(np.log(raw) / 2.0)
    assert rows["probe"]["ece_served"] == pytest.approx(expected_calibration_error(served, y))
    assert (
        rows["probe"]["ece"]
        == pytest.approx(expected_calibration_error(raw, y))
        != rows["probe"]["ece_served"]
    )
    assert rows["tfidf"]["temperature"] == 1.0 and rows["tfidf"]["ece_served"] == pytest.approx(
        rows["tfidf"]["ece"]
    )
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| ECE, served |" in md and f"| {rows['probe']['ece_served']:.3f} |" in md
    (Path(probe) / "temperature.json").write_text("{not json")  # one line, not a JSONDecodeError traceback
    run_as(monkeypatch, "compare.py")
    with pytest.raises(SystemExit) as exit_info:
        main([probe, "--reference", ref, "--n_resamples", "50"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("compare.py: error: ") and "temperature.json holds no readable temperature" in last


def test_compare_names_the_run_validation_picks(tmp_path):
    """On test, compare adds each run's validation macro-F1 and the run with the best one: the honest "best
    of them". Here validation picks the run that is worse on test, and the table says so."""
    from longtail.compare import compare_runs, to_markdown
    from longtail.metrics import macro_f1

    ref = make_run(tmp_path / "tfidf", {"test": [0] * 8, "validation": [0, 1, 2, 0, 0, 0]}, Y)
    a = make_run(tmp_path / "probe", {"test": [0, 0, 1, 1, 2, 2, 0, 0], "validation": [0, 1, 0, 0, 0, 0]}, Y)
    b = make_run(tmp_path / "lpft", {"test": [0, 0, 1, 0, 2, 0, 0, 1], "validation": [0, 1, 2, 0, 1, 2]}, Y)
    result = compare_runs([a, b], ref, n_resamples=50)
    rows = {r["run"]: r for r in result["runs"]}
    assert rows["lpft"]["val_macro_f1"] == 1.0
    assert rows["probe"]["val_macro_f1"] == pytest.approx(macro_f1(Y["validation"], [0, 1, 0, 0, 0, 0]))
    pick = result["validation_pick"]
    assert pick["run"] == "lpft" and pick["dir"] == b and pick["validation_rows"] == 6
    assert pick["test_macro_f1"] == pytest.approx(macro_f1(Y["test"], [0, 0, 1, 0, 2, 0, 0, 1]))
    assert pick["test_macro_f1"] < rows["probe"]["macro_f1"]
    md = to_markdown(result)
    assert (
        "**Chosen on validation**: lpft, the best validation macro-F1 (1.000 on the same 6 validation rows"
        in md
    )
    assert f"which scores **{pick['test_macro_f1']:.3f}** on test" in md and "| validation macro-F1 |" in md
    # a run without validation predictions (or other validation rows): no pick, and the reason
    c = make_run(tmp_path / "old", {"test": [0] * 8}, Y)
    none = compare_runs([a, c], ref, n_resamples=50)
    assert none["validation_pick"]["run"] is None and "old: no predictions_validation.npz" in to_markdown(
        none
    )
    assert "validation macro-F1 |" not in to_markdown(none)
    assert "validation_pick" not in compare_runs([a], ref, split="validation", n_resamples=50)


def test_same_named_runs_keep_distinct_labels(tmp_path):
    """Two seeds' `probe` folders: compare's rows, the validation pick and ensemble.json's per-member temperatures
    and weights name each by its parent folder; keyed by the folder name alone, one would overwrite the other."""
    from longtail.compare import main as compare
    from longtail.compare import run_labels
    from longtail.ensemble import main as ensemble

    assert run_labels(["r/s0/probe", "r/s1/probe", "r/tfidf"]) == ["s0/probe", "s1/probe", "tfidf"]
    assert run_labels(["r/a/probe", "r/b/a/probe"]) == ["r/a/probe", "b/a/probe"]
    assert run_labels(["r/probe", "r/probe", "r/x"]) == ["probe #1", "probe #2", "x"]
    assert run_labels(["/a/probe", "/b/a/probe"]) == ["/a/probe", "b/a/probe"]  # from the root: one slash
    both = {"validation": Y["validation"], "test": Y["test"]}
    # seed 1 is right everywhere and sure, seed 0 right on test only and unsure: different temperatures
    s0 = make_run(tmp_path / "s0" / "probe", {"validation": [1, 2, 0, 1, 2, 0], "test": Y["test"]}, both)
    s1 = make_run(tmp_path / "s1" / "probe", {s: np.eye(3)[y] * 0.9 + 0.1 / 3 for s, y in both.items()}, both)
    result = compare([s1, "--reference", s0, "--n_resamples", "20"])
    assert [r["run"] for r in result["runs"]] == ["s0/probe", "s1/probe"]
    assert result["validation_pick"]["run"] == "s1/probe"
    record = ensemble([s0, s1, "--output_dir", str(tmp_path / "ens"), "--n_resamples", "20"])
    assert list(record["temperatures"]) == ["s0/probe", "s1/probe"] == list(record["weights"])
    assert record["temperatures"]["s0/probe"] != pytest.approx(record["temperatures"]["s1/probe"])
    assert "| s0/probe |" in (tmp_path / "ens" / "report.md").read_text()


def test_an_output_folder_that_is_one_of_the_runs_is_refused_before_anything_goes(tmp_path, capsys):
    """`make ensemble RUNS="a b" ENSEMBLE_OUT=b` passes --overwrite_output_dir: the overwrite once cleared run b's
    predictions, then failed reading them. Nothing is removed now."""
    from longtail.compare import main as compare
    from longtail.ensemble import main as ensemble

    both = {"validation": Y["validation"], "test": Y["test"]}
    a = make_run(tmp_path / "a", {s: y for s, y in both.items()}, both)
    b = make_run(tmp_path / "b", {s: y for s, y in both.items()}, both)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    for tool, argv, what in (
        (ensemble, [a, b, "--output_dir", b, "--overwrite_output_dir"], "the member"),
        (compare, [a, "--reference", b, "--output_dir", b, "--overwrite_output_dir"], "--reference"),
        (compare, [b, "--reference", a, "--output_dir", b, "--overwrite_output_dir"], "the run"),
    ):
        with pytest.raises(SystemExit):
            tool([*argv, "--n_resamples", "20"])
        assert (
            f"{what} {b} is read from {b}, which --overwrite_output_dir would clear first"
            in capsys.readouterr().err
        )
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before


def test_an_output_folder_inside_a_run_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """--output_dir a folder inside a run (a member, the reference, a run compared; however spelt, however deep) was
    written without a word: results about several runs filed in one of them, kept by a rerun of that run beside a
    model they no longer describe. One line now, nothing written; beside the runs is fine."""
    both = {"validation": Y["validation"], "test": Y["test"]}
    a, b = (make_run(tmp_path / n, dict(both), both) for n in "ab")
    before = {n: sorted(p.name for p in (tmp_path / n).iterdir()) for n in "ab"}
    monkeypatch.chdir(tmp_path)
    for tool, argv, out, what in (
        ("ensemble", [a, b], tmp_path / "b" / "ens", f"the member {b}"),
        ("compare", [a, "--reference", b], tmp_path / "b" / "cmp", f"--reference {b}"),
        ("compare", [b, "--reference", a], tmp_path / "b" / "x" / "y", f"the run {b}"),
        ("compare", ["b", "--reference", a], "./b/../b/cmp", "the run b"),
    ):
        assert refused_in_one_line(monkeypatch, capsys, tool, argv, out) == (
            f"{tool}.py: error: --output_dir {out} is inside {what}: write it beside the runs, not in one of their "
            "folders (a rerun of that run would keep it among results it no longer describes)"
        )
    assert {n: sorted(p.name for p in (tmp_path / n).iterdir()) for n in "ab"} == before
    from longtail.compare import main as compare

    compare([a, "--reference", b, "--output_dir", str(tmp_path / "cmp"), "--n_resamples", "20"])
    assert (tmp_path / "cmp" / "compare.json").is_file()


def test_a_refused_rerun_with_overwrite_keeps_the_previous_comparison_and_ensemble(tmp_path, capsys):
    """Runs that do not share their rows are refused after the output folder's check: with --overwrite_output_dir
    the previous compare.json / ensemble.json were removed first, and nothing replaced them."""
    from longtail.compare import main as compare
    from longtail.ensemble import main as ensemble

    both = {"validation": Y["validation"], "test": Y["test"]}
    a = make_run(tmp_path / "a", both, both)
    b = make_run(tmp_path / "b", both, both)
    short = make_run(
        tmp_path / "short", {s: y[:-1] for s, y in both.items()}, {s: y[:-1] for s, y in both.items()}
    )
    cmp, ens = tmp_path / "cmp", tmp_path / "ens"
    compare([a, "--reference", b, "--output_dir", str(cmp), "--n_resamples", "20"])
    ensemble([a, b, "--output_dir", str(ens), "--n_resamples", "20"])
    before = {d: {p.name: p.read_bytes() for p in d.iterdir()} for d in (cmp, ens)}
    assert "compare.json" in before[cmp] and "ensemble.json" in before[ens]
    for tool, argv, role in (
        (compare, [short, "--reference", a, "--output_dir", str(cmp)], "the reference"),
        (ensemble, [a, short, "--output_dir", str(ens)], "the first member"),  # an ensemble has no reference
    ):
        with pytest.raises(SystemExit):
            tool([*argv, "--overwrite_output_dir", "--n_resamples", "20"])
        assert f"error: {short} scored different rows than {role} {a} (" in capsys.readouterr().err
    assert {d: {p.name: p.read_bytes() for p in d.iterdir()} for d in (cmp, ens)} == before


def folder_bytes(folder: Path) -> dict:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_an_earlier_comparison_or_ensemble_never_another_runs_files(
    tmp_path, capsys, monkeypatch
):
    """`--output_dir outputs/probe` (a finished run not among those given) with --overwrite_output_dir deleted the
    run's model, labels, config, report and predictions: every file any of our tools writes. Only the tool's own
    earlier output is replaced; anything else an overwrite would remove is refused in one line, before any work."""
    import longtail.compare
    import longtail.ensemble
    from longtail.compare import COMPARE_FILES
    from longtail.ensemble import ENSEMBLE_FILES

    y = {"train": [0, 1, 2, 0, 1, 2], "validation": Y["validation"], "test": Y["test"]}
    a = make_run(tmp_path / "a", {s: [0, 1, 2, 0, 1, 1] if s != "test" else [0] * 8 for s in y}, y)
    b = make_run(tmp_path / "b", {s: [0, 1, 1, 0, 1, 2] if s != "test" else [1] * 8 for s in y}, y)
    probe = Path(make_run(tmp_path / "probe", {s: y[s] for s in y}, y))  # a finished run, not compared
    for name in ("model.joblib", "labels.json", "splits.json", "run_config.json", "report.md", "README.md"):
        (probe / name).write_bytes(f"the probe's {name}".encode())
    (probe / "checkpoint-10").mkdir()
    (probe / "checkpoint-10" / "model.safetensors").write_bytes(b"weights")
    before = folder_bytes(probe)

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    cmp, ens = tmp_path / "cmp", tmp_path / "ens"
    tools = (
        (longtail.compare, "compare_runs", [a, "--reference", b], cmp, "comparison", COMPARE_FILES),
        (longtail.ensemble, "build_ensemble", [a, b], ens, "ensemble", ENSEMBLE_FILES),
    )
    for module, work, runs, out, what, own in tools:
        with monkeypatch.context() as patch:
            patch.setattr(module, work, no_work)
            argv = [*runs, "--output_dir", str(probe), "--overwrite_output_dir", "--n_resamples", "20"]
            line = refused(module.main, argv, capsys)
        assert f"output_dir '{probe}' holds files that are not an earlier {what}'s (" in line
        assert "model.joblib" in line and "Choose another --output_dir" in line
        assert folder_bytes(probe) == before
        # an earlier output of the tool's own is replaced; what it writes is all it replaces
        module.main([*runs, "--output_dir", str(out), "--n_resamples", "20"])
        module.main([*runs, "--output_dir", str(out), "--overwrite_output_dir", "--n_resamples", "20"])
        assert sorted(p.name for p in out.iterdir()) == sorted(own)
        (out / "README.md").write_text("my notes")  # notes kept beside it are not the tool's to delete
        kept = folder_bytes(out)
        line = refused(module.main, [*runs, "--output_dir", str(out), "--overwrite_output_dir"], capsys)
        assert "(README.md: a run's?)" in line and folder_bytes(out) == kept


def test_overwrite_replaces_only_a_folder_holding_the_tools_own_record(tmp_path, capsys, monkeypatch):
    """A folder of predictions_*.npz and a report.md (hand-made predictions, as these tests make runs) with no
    ensemble.json read as an earlier ensemble with --overwrite_output_dir, and was replaced. What an overwrite
    deletes is an earlier ensemble's, comparison's or score's only beside the record the tool always writes
    (ensemble.json, compare.json, score.json): without it, one line naming the folder and what it holds, before any
    work. Files of the user's own, which an overwrite leaves, are written beside, as before. An earlier ensemble is
    still replaced, one written before `serving` existed too."""
    import longtail.compare
    import longtail.ensemble
    import longtail.score

    both = {"validation": Y["validation"], "test": Y["test"]}
    a = make_run(tmp_path / "a", both, both)
    b = make_run(tmp_path / "b", {s: [1] * len(y) for s, y in both.items()}, both)
    preds = Path(make_run(tmp_path / "preds", both, both))
    (preds / "report.md").write_text("# my predictions")
    fake = tmp_path / "fake_run"  # a folder score takes for a run: it is refused before any model loads
    fake.mkdir()
    (fake / "model.joblib").write_bytes(b"")
    notes, scored = tmp_path / "notes", tmp_path / "scored_only"
    (notes / "sub").mkdir(parents=True)
    (notes / "notes.txt").write_text("mine")
    (scored / "scored" / "x").mkdir(parents=True)

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    for module, work in ((longtail.ensemble, "build_ensemble"), (longtail.compare, "compare_runs"),
                         (longtail.score, "read_rows")):  # fmt: skip
        monkeypatch.setattr(module, work, no_work)
    quick = ["--overwrite_output_dir", "--n_resamples", "20"]
    for tool, runs, out, held in (
        ("ensemble", [a, b], preds, "predictions_test.npz, predictions_validation.npz, report.md"),
        ("score", [str(fake), "--data", a], scored, "scored/"),  # score's own folder, without score.json
    ):
        what, marker = {"ensemble": ("ensemble", "ensemble.json"), "score": ("score", "score.json")}[tool]
        before = folder_bytes(out)
        run_as(monkeypatch, f"{tool}.py")
        line = refused(getattr(longtail, tool).main, [*runs, "--output_dir", str(out), *quick], capsys)
        them, they = ("them", "they are") if out == preds else ("it", "it is")
        assert line == (
            f"{tool}.py: error: output_dir '{out}' holds {held} but no {marker}, so {they} not an earlier "
            f"{what}'s, which is all --overwrite_output_dir replaces. Choose another --output_dir (or, if "
            f"{'an' if tool == 'ensemble' else 'a'} {what} stopped before it wrote {marker}, delete {them} "
            "yourself)."
        ), (tool, out)
        assert folder_bytes(out) == before
    # a run's predictions, or score's scored/, were refused already in compare (and score): another tool's files
    for out, held in ((preds, "(predictions_test.npz"), (scored, "(scored/: a run's?)")):
        line = refused(longtail.compare.main, [a, "--reference", b, "--output_dir", str(out), *quick], capsys)
        assert f"not an earlier comparison's {held}" in line
    monkeypatch.undo()
    # files of the user's own, which an overwrite leaves (a data file beside the score), are no reason to refuse
    for tool, runs, record in (
        ("ensemble", [a, b], "ensemble.json"),
        ("compare", [a, "--reference", b], "compare.json"),
    ):
        out = tmp_path / f"notes_{tool}"
        shutil.copytree(notes, out)
        getattr(longtail, tool).main([*runs, "--output_dir", str(out), *quick])
        assert (
            (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir() and (out / record).is_file()
        )
    ens = tmp_path / "ens"  # a folder holding only a file manager's hidden file is no one's results
    ens.mkdir()
    (ens / ".DS_Store").write_bytes(b"\0")
    longtail.ensemble.main([a, b, "--output_dir", str(ens), *quick])
    assert (ens / "ensemble.json").is_file()
    longtail.ensemble.main([a, b, "--output_dir", str(ens), "--n_resamples", "20", "--overwrite_output_dir"])
    record = json.loads((ens / "ensemble.json").read_text())
    del record["serving"]  # as an ensemble wrote it before serving existed
    (ens / "ensemble.json").write_text(json.dumps(record))
    longtail.ensemble.main([a, b, "--output_dir", str(ens), *quick])
    assert "serving" in json.loads((ens / "ensemble.json").read_text())


def test_compare_aligns_rows_by_id_and_refuses_mismatches(tmp_path):
    from longtail.compare import CompareError, compare_runs

    ref = make_run(tmp_path / "ref", {"test": [0, 1, 2, 0, 1, 2, 0, 1]}, Y)
    order = np.array([7, 6, 5, 4, 3, 2, 1, 0])  # same rows, stored in reverse
    y_rev = {"test": np.asarray(Y["test"])[order]}
    shuffled = make_run(
        tmp_path / "rev", {"test": np.array([0, 1, 2, 0, 1, 2, 0, 1])[order]}, y_rev, row_ids=order
    )
    rows = compare_runs([shuffled], ref, n_resamples=50)["runs"]
    assert rows[1]["delta_macro_f1"]["delta"] == 0.0

    other_labels = make_run(tmp_path / "lab", {"test": [0] * 8}, Y, labels=["a", "c", "b"])
    with pytest.raises(CompareError, match="different label lists.*another order"):
        compare_runs([other_labels], ref)
    fewer = make_run(tmp_path / "few", {"test": [0] * 6}, {"test": Y["test"][:6]})
    with pytest.raises(CompareError, match="different rows.*8 vs 6|6 vs 8"):
        compare_runs([fewer], ref)
    (tmp_path / "unscored").mkdir()
    with pytest.raises(CompareError, match="no predictions_test.npz.*--do_predict"):
        compare_runs([str(tmp_path / "unscored")], ref)
    # a folder that is not there is named as such, not as one that lacks its test predictions
    with pytest.raises(CompareError, match=r"missing: no such run folder$"):
        compare_runs([str(tmp_path / "missing")], ref)


def test_compare_tiers_come_from_the_references_labels_json(tmp_path):
    """labels.json maps label names to tiers; class i is label_names[i]. By hand for the probe, true
    [0, 0, 1, 1, 2, 2, 0, 1], predicted [0, 0, 1, 1, 2, 2, 0, 0]: class a TP 3 FP 1 -> F1 6/7, class b TP 2
    FN 1 -> F1 4/5, class c F1 1."""
    from longtail.compare import compare_runs

    ref = make_run(tmp_path / "tfidf", {"test": [0] * 8}, Y)
    (tmp_path / "tfidf" / "labels.json").write_text(
        json.dumps({"tiers": {"a": "head", "b": "mid", "c": "tail"}})
    )
    good = make_run(tmp_path / "probe", {"test": [0, 0, 1, 1, 2, 2, 0, 0]}, Y)
    rows = {r["run"]: r for r in compare_runs([good], ref, n_resamples=20)["runs"]}
    tiers = {t: rows["probe"][f"macro_f1_{t}"] for t in ("head", "mid", "tail")}
    assert tiers == pytest.approx({"head": 6 / 7, "mid": 4 / 5, "tail": 1.0})


def test_compare_tiers_fall_back_to_a_run_with_labels_json_when_the_reference_is_an_ensemble(tmp_path):
    """An ensemble saves no labels.json: as the reference, every run's tier columns were blank ("—"), silently.
    Tiers then come from the first other run that has one, and compare.md says whose."""
    from longtail.compare import compare_runs, to_markdown

    ens = make_run(tmp_path / "ensemble", {"test": [0] * 8}, Y)
    good = make_run(tmp_path / "probe", {"test": [0, 0, 1, 1, 2, 2, 0, 0]}, Y)
    (tmp_path / "probe" / "labels.json").write_text(
        json.dumps({"tiers": {"a": "head", "b": "mid", "c": "tail"}})
    )
    result = compare_runs([good], ens, n_resamples=20)
    rows = {r["run"]: r for r in result["runs"]}
    assert rows["probe"]["macro_f1_head"] == pytest.approx(6 / 7)
    assert result["tiers_from"] == "probe"
    assert "Tiers: probe's training counts (the reference has no labels.json)." in to_markdown(result)
    (tmp_path / "probe" / "labels.json").unlink()
    result = compare_runs([good], ens, n_resamples=20)
    assert result["tiers_from"] is None and "Tiers: none" in to_markdown(result)


def test_compare_refuses_other_true_labels_and_picks_nothing_on_other_validation_rows(tmp_path):
    from longtail.compare import CompareError, compare_runs

    ref = make_run(tmp_path / "ref", {"test": [0] * 8, "validation": [0] * 6}, Y)
    relabelled = {"test": [0, 0, 1, 1, 2, 2, 0, 2], "validation": Y["validation"]}  # last row differs
    other = make_run(tmp_path / "other", {"test": [0] * 8}, relabelled)
    with pytest.raises(CompareError, match="true labels differ from those of the reference .* on 1 rows"):
        compare_runs([other], ref)
    # same test rows, but validation scored on other row ids: no pick, and why
    shifted = make_run(tmp_path / "shifted", {"test": [0] * 8}, Y)
    make_run(tmp_path / "shifted", {"validation": [0] * 6}, Y, row_ids=np.arange(6) + 100)
    pick = compare_runs([shifted], ref, n_resamples=20)["validation_pick"]
    assert pick["run"] is None and "scored different rows than the reference" in pick["why_none"]


def test_validation_pick_ties_go_to_the_earlier_run(tmp_path):
    """Runs with equal validation macro-F1: the pick is the first of them (the reference comes first)."""
    from longtail.compare import compare_runs

    ref = make_run(tmp_path / "ref", {"test": [0] * 8, "validation": [0, 1, 2, 0, 1, 1]}, Y)
    same = make_run(tmp_path / "same", {"test": [1] * 8, "validation": [0, 1, 2, 0, 1, 1]}, Y)
    result = compare_runs([same], ref, n_resamples=20)
    assert result["runs"][0]["val_macro_f1"] == result["runs"][1]["val_macro_f1"]  # a tie
    assert result["validation_pick"]["run"] == "ref"


def test_compare_cli_error_is_one_line(tmp_path, capsys, monkeypatch):
    from longtail.compare import main

    run_as(monkeypatch, "compare.py")
    ref = make_run(tmp_path / "ref", {"test": [0] * 8}, Y)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nothing"), "--reference", ref])
    assert exit_info.value.code == 2
    assert "compare.py: error:" in capsys.readouterr().err


def test_an_ensemble_without_test_predictions_is_told_how_to_get_them(tmp_path):
    """An ensemble built with --no_test has no predictions_test.npz; compare said to rerun it with --do_predict,
    an option the ensemble does not take."""
    from longtail.compare import CompareError, read_run
    from longtail.ensemble import main as ensemble

    runs = [make_run(tmp_path / name, {"validation": Y["validation"]}, Y) for name in ("a", "b")]
    ensemble([*runs, "--output_dir", str(tmp_path / "ens"), "--no_test", "--n_resamples", "20"])
    with pytest.raises(CompareError, match="without --no_test to score the test split") as err:
        read_run(tmp_path / "ens", "test")
    assert "--do_predict" not in str(err.value)
    with pytest.raises(CompareError, match="Rerun it with --do_predict"):  # a recipe's run: as before
        read_run(runs[0], "test")


def test_repeated_runs_and_too_few_resamples_are_one_line_errors(tmp_path, capsys, monkeypatch):
    """A run folder listed twice (however spelt) and --n_resamples below 2 stop both tools before any output
    is written; compare still shows a reference that is also among its runs once."""
    import longtail.compare
    import longtail.ensemble
    from longtail.compare import compare_runs

    y = {"validation": [0, 1, 2, 0, 1, 2], "test": Y["test"]}
    a = make_run(tmp_path / "a", {"validation": [0, 1, 2, 0, 1, 1], "test": [0] * 8}, y)
    b = make_run(tmp_path / "b", {"validation": [0, 1, 1, 0, 1, 2], "test": [1] * 8}, y)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    cases = {
        "ensemble": [
            (["a", "./a/"], f"{Path(a).resolve()} is given twice (as a and ./a/): list each run once"),
            ([a, b, a], f"{Path(a).resolve()} is given twice: list each run once"),
            ([a, b, "--n_resamples", "0"], "--n_resamples must be >= 2 (a bootstrap CI needs at least two"),
            ([a, b, "--n_resamples", "1"], "--n_resamples must be >= 2"),
        ],
        "compare": [
            (
                ["b", b, "--reference", a],
                f"{Path(b).resolve()} is given twice (as b and {b}): list each run once",
            ),
            ([b, "--reference", a, "--n_resamples", "-1"], "--n_resamples must be >= 2"),
        ],
    }
    for name, tried in cases.items():
        main = getattr(longtail, name).main
        for argv, message in tried:
            with pytest.raises(SystemExit) as exit_info:
                main([*argv, "--output_dir", str(out)])
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and message in err and "Traceback" not in err, (name, argv, err)
            assert not out.exists(), (name, argv)
    rows = compare_runs(["./a", b], str(tmp_path / "a"), n_resamples=20)["runs"]
    assert [r["run"] for r in rows] == ["a", "b"]


def four_runs(tmp_path) -> list[str]:
    """Runs a, b, c, d in tmp_path, each right on another 5 of 6 validation rows."""
    y = {"validation": [0, 1, 2, 0, 1, 2], "test": Y["test"]}
    preds = {
        "a": [0, 1, 2, 0, 1, 1],
        "b": [0, 1, 1, 0, 1, 2],
        "c": [0, 0, 2, 0, 1, 2],
        "d": [0, 1, 2, 2, 1, 2],
    }
    return [make_run(tmp_path / n, {"validation": p, "test": [0] * 8}, y) for n, p in preds.items()]


def test_a_run_inside_a_given_ensemble_is_refused(tmp_path, capsys, monkeypatch):
    """An ensemble of ensembles counted a run twice, silently: given itself and inside a given ensemble (its
    ensemble.json's members, nested ones followed), or inside two given ensembles. One line naming the run and the
    ensemble, before any output, however the paths are spelt; ensembles that share no run still mix."""
    from longtail.ensemble import main

    a, b, c, d = four_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    quick = ["--n_resamples", "20"]
    main(["a", "b", "--output_dir", "ab", *quick])  # members recorded as given: relative paths
    main([c, d, "--output_dir", "cd", *quick])
    main(["ab", c, "--output_dir", "ab_c", *quick])
    run_as(monkeypatch, "ensemble.py")
    end = ": the mix would count it twice. List each run once (--weights search weighs the members)"
    resolved = {n: Path(r).resolve() for n, r in zip("abcd", (a, b, c, d))}
    cases = [
        (["ab", "a"], f"{resolved['a']} is given (as a) and is also a member of the ensemble ab{end}"),
        (
            ["./b/", "./ab/"],
            f"{resolved['b']} is given (as ./b/) and is also a member of the ensemble ./ab/{end}",
        ),
        (
            [str(tmp_path / "cd"), "d"],
            f"{resolved['d']} is given (as d) and is also a member of the ensemble {tmp_path / 'cd'}{end}",
        ),  # fmt: skip
        (
            ["ab_c", "b"],
            f"{resolved['b']} is given (as b) and is also a member of the ensemble "
            f"{(tmp_path / 'ab').resolve()} (inside ab_c){end}",
        ),  # fmt: skip
        (["ab_c", "cd"], f"{resolved['c']} is a member of both ensembles ab_c and cd{end}"),
    ]
    for argv, message in cases:
        assert (
            refused(main, [*argv, "--output_dir", "out", *quick], capsys) == f"ensemble.py: error: {message}"
        )
        assert not (tmp_path / "out").exists(), argv
    # an older ensemble.json, with no serving entry: its members as written (relative), resolved from here; an
    # ensemble that lists itself, and two that list each other (folders overwritten into their own member lists):
    # the cycle is named (no tool can serve them: predict recursed on them without end)
    for name, members in {
        "old_ab": ["a", "b"],
        "loop": [str(tmp_path / "loop"), str(resolved["a"])],
        "x1": [str(tmp_path / "x2")],
        "x2": [str(tmp_path / "x1"), str(resolved["b"])],
    }.items():
        (tmp_path / name).mkdir()
        record = {"members": members} if name == "old_ab" else {"serving": {"members": members}}
        (tmp_path / name / "ensemble.json").write_text(json.dumps(record))
    cycle = (
        "each folder's ensemble.json lists the next as a member (edited by hand, or a folder replaced afterwards), "
        "so no tool can serve or score it; rebuild the ensemble from its runs with python -m longtail.ensemble"
    )
    for argv, message in (
        (
            ["old_ab", "b"],
            f"{resolved['b']} is given (as b) and is also a member of the ensemble old_ab{end}",
        ),
        (["loop", "a"], f"ensembles in a cycle, {tmp_path / 'loop'} -> {tmp_path / 'loop'}: {cycle}"),
        (
            ["x1", "b"],
            f"ensembles in a cycle, {tmp_path / 'x1'} -> {tmp_path / 'x2'} -> {tmp_path / 'x1'}: {cycle}",
        ),
        # given as its resolved path: named once, with no "(as ...)"
        (
            ["ab", str(resolved["a"])],
            f"{resolved['a']} is given and is also a member of the ensemble ab{end}",
        ),
    ):
        assert (
            refused(main, [*argv, "--output_dir", "out", *quick], capsys) == f"ensemble.py: error: {message}"
        )
        assert not (tmp_path / "out").exists(), argv
    # an unreadable ensemble.json lists no member (the folder's predictions do not need it)
    from longtail.ensemble import check_no_run_twice

    for text in ("{not json", "[1, 2]", '{"serving": ["a"]}', '{"members": 5}'):
        (tmp_path / "old_ab" / "ensemble.json").write_text(text)
        check_no_run_twice(["old_ab", "a", "b"])
    # no run shared: an ensemble of two ensembles, and of an ensemble and another run, are built
    assert main(["ab", "cd", "--output_dir", "ab_cd", *quick])["members"] == ["ab", "cd"]
    assert main(["ab_c", "d", "--output_dir", "ab_c_d", *quick])["members"] == ["ab_c", "d"]


def test_ensembles_in_a_cycle_are_one_line_in_ensemble_predict_and_score(tmp_path, capsys, monkeypatch):
    """An ensemble.json whose members lead back to itself (edited by hand, or a folder replaced afterwards): predict
    and score recursed without end (RecursionError), and ensemble built a new ensemble over it that nothing could
    serve. Each is one line naming the folders of the cycle in order, before the input is read or any run scores;
    the walks behind score (its runs' leaves, its nesting order) say the same. An ensemble written into a folder
    inside one of its members would make such a cycle: refused too, the folder left as it was."""
    import longtail.predict
    import longtail.score
    from longtail.ensemble import main as ensemble
    from longtail.predict import main as predict
    from longtail.score import ensemble_depth, leaf_runs
    from longtail.score import main as score

    four_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    quick = ["--n_resamples", "20"]
    ensemble(["a", "b", "--output_dir", "ab", *quick])
    ensemble(["ab", "c", "--output_dir", "ab_c", *quick])
    ab, ab_c = (tmp_path / "ab").resolve(), (tmp_path / "ab_c").resolve()
    before = folder_bytes(ab)
    # ab_c lists ab: an ensemble of it written over ab would list ab_c, which lists ab
    run_as(monkeypatch, "ensemble.py")
    line = refused(ensemble, ["ab_c", "d", "--output_dir", "ab", "--overwrite_output_dir", *quick], capsys)
    assert line == (
        f"ensemble.py: error: --output_dir ab is a member of the ensemble {ab_c}: an ensemble written there would "
        f"be in a cycle, {ab} -> {ab_c} -> {ab}. Choose another --output_dir"
    )
    assert folder_bytes(ab) == before
    record = json.loads((ab / "ensemble.json").read_text())
    record["serving"]["members"] = [str(ab_c), str((tmp_path / "b").resolve())]  # by hand: ab -> ab_c -> ab
    (ab / "ensemble.json").write_text(json.dumps(record))
    (tmp_path / "z").mkdir()  # an ensemble outside the cycle that leads into it
    (tmp_path / "z" / "ensemble.json").write_text(json.dumps({"serving": {"members": ["ab_c", "d"]}}))
    cycle = (
        f"ensembles in a cycle, {ab_c} -> {ab} -> {ab_c}: each folder's ensemble.json lists the next as a member "
        "(edited by hand, or a folder replaced afterwards), so no tool can serve or score it"
    )
    rebuild = "; rebuild the ensemble from its runs with python -m longtail.ensemble"
    (tmp_path / "in.csv").write_text("text,Issue\nlate fee,a\n")

    def not_yet(*args, **kwargs):
        raise AssertionError("the input was read or a run scored before the cycle was found")

    for module, name in ((longtail.predict, "read_texts"), (longtail.predict, "score_texts"),
                         (longtail.score, "read_rows")):  # fmt: skip
        monkeypatch.setattr(module, name, not_yet)
    for tool, script, argv in (
        (ensemble, "ensemble.py", ["ab_c", "d", "--output_dir", "out", *quick]),
        (predict, "predict.py", ["--model_dir", "ab_c", "--input", "in.csv", "--output", "out.csv"]),
        (score, "score.py", ["ab_c", "--data", "in.csv", "--text_column", "text", "--output_dir", "out"]),
    ):
        run_as(monkeypatch, script)
        assert refused(tool, argv, capsys) == f"{script}: error: {cycle}{rebuild}"
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.csv").exists()
    assert f"{cycle} (reached from z){rebuild}" in refused(
        score, ["z", "--data", "in.csv", "--output_dir", "out"], capsys
    )
    for walk in (leaf_runs, ensemble_depth):
        with pytest.raises(ValueError, match=r"ensembles in a cycle, .*ab_c -> .*ab -> .*ab_c: "):
            walk(Path("ab_c"))
    # the walks on ensembles without a cycle: ab_c's runs, and how deep it nests
    record["serving"]["members"] = [str((tmp_path / n).resolve()) for n in "ab"]
    (ab / "ensemble.json").write_text(json.dumps(record))
    assert [p.name for p in leaf_runs(Path("ab_c"))] == ["a", "b", "c"] and ensemble_depth(Path("ab_c")) == 2
    assert leaf_runs(Path("a")) == [Path("a")] and ensemble_depth(Path("a")) == 0


def refused_in_one_line(monkeypatch, capsys, tool: str, argv: list, out) -> str:
    """`compare` or `ensemble` run on argv (writing to `out`, 20 resamples): it must stop with status 2, one line
    and no traceback, writing nothing; that line is returned."""
    import longtail.compare
    import longtail.ensemble

    run_as(monkeypatch, f"{tool}.py")
    with pytest.raises(SystemExit) as exit_info:
        getattr(longtail, tool).main([*argv, "--output_dir", str(out), "--n_resamples", "20"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, (tool, err)
    assert not Path(out).exists(), tool
    return err.strip().splitlines()[-1]


def test_an_ensemble_member_without_validation_predictions_is_told_what_to_do(tmp_path, capsys, monkeypatch):
    """A member with no predictions_validation.npz (a run stopped early, a folder of test predictions alone): the
    line named the file and ended there, with a stray space; it now says why the file is needed and what to do."""
    a = make_run(tmp_path / "a", {"validation": Y["validation"], "test": Y["test"]}, Y)
    b = make_run(tmp_path / "b", {"test": Y["test"]}, Y)
    assert refused_in_one_line(monkeypatch, capsys, "ensemble", [a, b], tmp_path / "ens") == (
        f"ensemble.py: error: {b}: no predictions_validation.npz (found: ['predictions_test.npz']). Every finished "
        "run of these recipes has it (an ensemble is chosen on it, and compare's validation pick reads it): pass a "
        "finished run, or rerun this one."
    )


def test_a_malformed_predictions_file_is_one_line_in_compare_and_ensemble(tmp_path, capsys, monkeypatch):
    """A predictions file these tools did not write as `save_predictions` does: each was a traceback (numpy's
    "pickled data" for a truncated file, a KeyError, an IndexError, a broadcast error, scikit-learn's "empty input")
    or, worse, silently compared (4 probability columns for 3 labels: argmax could pick a class with no name; a row
    id twice: rows aligned in whatever order they came). Now one line naming the file and what is wrong, from both
    tools, and nothing written; a file given for a run folder is named as a file."""
    import longtail.compare
    import longtail.ensemble

    y = {"validation": [0, 1, 2, 0, 1, 2, 0, 1]}
    good = make_run(tmp_path / "good", {"validation": y["validation"]}, y)
    rng = np.random.default_rng(0)

    def npz(**change):
        fields = {
            "row_id": np.arange(8),
            "y_true": np.array(y["validation"]),
            "probs": rng.dirichlet(np.ones(3), 8),
            "label_names": np.array(LABELS),
        }
        fields.update(change)
        return lambda path: np.savez(path, **{k: v for k, v in fields.items() if v is not None})

    def truncated(path):
        npz()(path)
        path.write_bytes(path.read_bytes()[:100])

    def damaged(path):
        import zipfile

        npz()(path)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("row_id.npy")  # the first member, stored uncompressed
        data = bytearray(path.read_bytes())
        header = info.header_offset  # a local file header: 30 bytes, then the name and the extra field
        name_length, extra_length = (
            int.from_bytes(data[header + i : header + i + 2], "little") for i in (26, 28)
        )
        data[header + 30 + name_length + extra_length + info.compress_size - 1] ^= 0xFF  # its last data byte
        path.write_bytes(bytes(data))
        assert zipfile.is_zipfile(path)

    cases = {
        "text": (
            lambda path: path.write_text("row_id,probs\n0,0.5\n"),
            "is not an .npz archive (truncated, or",
        ),
        "truncated": (truncated, "is not an .npz archive (truncated, or not written by these tools)"),
        "logits": (
            npz(probs=None, logits=np.zeros((8, 3))),
            "has no probs (found: label_names, logits, row_id, y_true): not a predictions file of these tools",
        ),
        "width": (
            npz(probs=rng.dirichlet(np.ones(4), 8)),
            "is malformed: 4 probability columns for 3 label names",
        ),
        "short": (
            npz(y_true=np.array(y["validation"][:6])),
            "is malformed: 8 row ids, 6 true labels and 8 rows of probabilities",
        ),
        "empty": (
            npz(row_id=np.arange(0), y_true=np.zeros(0, int), probs=np.zeros((0, 3))),
            "is malformed: no rows",
        ),
        "repeated": (
            npz(row_id=np.array([0, 0, 1, 1, 2, 3, 4, 5])),
            "is malformed: 2 row ids more than once (e.g. [0, 1])",
        ),
        "label_ids": (
            npz(y_true=np.array([0, 1, 5, 0, 1, 2, 0, -1])),
            "is malformed: true label ids [-1, 5] outside its 3",
        ),
        "float_ids": (
            npz(row_id=np.arange(8) + 0.5),
            "is malformed: row ids of type float64 and true labels of type int64",
        ),
        "objects": (
            npz(label_names=np.array(LABELS, dtype=object)),
            "cannot be read as a predictions file (ValueError: Object arrays cannot be loaded when allow_pickle=False",
        ),
        # an archive whole but a member's bytes damaged: zipfile's CRC check, at the read
        "damaged": (
            damaged,
            "cannot be read as a predictions file (BadZipFile: Bad CRC-32 for file 'row_id.npy')",
        ),
        "flat": (
            npz(probs=rng.dirichlet(np.ones(3), 8)[:, 0]),
            "is malformed: probs of shape (8,), row_id (8,), y_true (8,): not one row each",
        ),
        "narrow": (  # fewer columns than names: the last label could never be predicted
            npz(probs=rng.dirichlet(np.ones(2), 8)),
            "is malformed: 2 probability columns for 3 label names",
        ),
        "float_labels": (
            npz(y_true=np.array(y["validation"], dtype=float)),
            "is malformed: row ids of type int64 and true labels of type float64, not integers",
        ),
        "label_id_3": (  # one past the last name
            npz(y_true=np.array([0, 1, 3, 0, 1, 2, 0, 1])),
            "is malformed: true label ids [3] outside its 3 label names",
        ),
        "label_id_negative": (
            npz(y_true=np.array([0, 1, -1, 0, 1, 2, 0, 1])),
            "is malformed: true label ids [-1] outside its 3 label names",
        ),
    }
    out = tmp_path / "out"
    for case, (write, message) in cases.items():
        bad = tmp_path / case
        bad.mkdir()
        write(bad / "predictions_validation.npz")
        for tool, argv in (
            ("compare", [str(bad), "--reference", good, "--split", "validation"]),
            ("compare", [good, "--reference", str(bad), "--split", "validation"]),
            ("ensemble", [good, str(bad), "--no_test"]),
        ):
            assert refused_in_one_line(monkeypatch, capsys, tool, argv, out).startswith(
                f"{tool}.py: error: " + f"{bad / 'predictions_validation.npz'} {message}"
            ), (case, tool)
    run_as(monkeypatch, "compare.py")
    file = tmp_path / "text" / "predictions_validation.npz"
    with pytest.raises(SystemExit):
        longtail.compare.main([str(file), "--reference", good, "--split", "validation"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"compare.py: error: {file} is a file: pass the run folder that holds predictions_validation.npz"
    )


def test_predictions_that_are_not_probabilities_are_refused(tmp_path, capsys, monkeypatch):
    """NaN rows (a run that diverged) were compared as predictions of the first class, and an ensemble mixed them
    into NaN and wrote itself with them; logits saved as `probs` were compared by their argmax, and an ensemble took
    the log of their negative values, all without a word. Now one line naming the file, the rows and the values."""
    import longtail.compare
    import longtail.ensemble

    y = {"validation": [0, 1, 2, 0, 1, 2, 0, 1]}
    rng = np.random.default_rng(1)
    good = make_run(tmp_path / "good", {"validation": rng.dirichlet(np.ones(3), 8)}, y)
    diverged = rng.dirichlet(np.ones(3), 8)
    diverged[[2, 5]] = np.nan
    logits = np.array([[2.0, -1.0, 0.5], [0.5, 0.25, -0.75]] * 4)
    scaled = rng.dirichlet(np.ones(3), 8) * 100  # percentages
    cases = {
        "diverged": (
            diverged,
            "has NaN or infinite probabilities in 2 of 8 rows (row ids [2, 5]): a run that diverged?",
        ),
        "logits": (
            logits,
            "holds rows that are not probabilities (8 of 8, row ids [0, 1, 2, 3, 4], ...: values from -1 to 2, rows "
            "summing to 0 to 1.5): logits or scores saved as probs?",
        ),
        "percent": (scaled, "holds rows that are not probabilities (8 of 8, row ids"),
        # each test alone: a negative value in a row summing to 1, a value past 1 in a row within the sum's
        # tolerance, a row summing to 0.99 (past the tolerance, each value in [0, 1])
        "outside": (
            np.vstack([rng.dirichlet(np.ones(3), 5), [[-0.1, 0.6, 0.5], [1.0005, 0, 0], [0.5, 0.29, 0.2]]]),
            "holds rows that are not probabilities (3 of 8, row ids [5, 6, 7]: values from -0.1 to 1, rows summing "
            "to 0.99 to 1): logits or scores saved as probs? Each row must be probabilities summing to 1.",
        ),
    }
    out = tmp_path / "out"
    for case, (probs, message) in cases.items():
        bad = make_run(tmp_path / case, {"validation": probs}, y)
        for tool, argv in (
            ("compare", [bad, "--reference", good, "--split", "validation"]),
            ("ensemble", [good, bad, "--no_test", "--posthoc_logit_adjustment", "none"]),
        ):
            assert refused_in_one_line(monkeypatch, capsys, tool, argv, out).startswith(
                f"{tool}.py: error: " + f"{Path(bad) / 'predictions_validation.npz'} {message}"
            ), (case, tool)
    # float32 rounding of a float64 softmax, and rows that are one class for sure, are probabilities
    sure = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 0]].astype(np.float32)
    sure[1] = [1e-7, 1 - 2e-7, 1e-7]
    ok = make_run(tmp_path / "sure", {"validation": sure}, y)
    assert longtail.compare.compare_runs([ok], good, "validation", n_resamples=20)["num_rows"] == 8


def test_a_malformed_train_predictions_file_only_loses_the_ensembles_train_predictions(tmp_path, capsys):
    """predictions_train.npz is only the ensemble's teacher output: a malformed one is a note, as members whose
    train rows differ are, and the ensemble is built without it (it stopped the whole ensemble with a traceback)."""
    from longtail.ensemble import main

    y = {"train": [0, 1, 2, 0, 1, 2], "validation": [0, 1, 2, 0, 1, 2], "test": [0, 1, 2, 0, 1, 2]}
    a = make_run(tmp_path / "a", {s: [0, 1, 2, 0, 1, 1] for s in y}, y)
    b = make_run(tmp_path / "b", {s: [0, 1, 1, 0, 1, 2] for s in y}, y)
    (tmp_path / "b" / "predictions_train.npz").write_bytes(b"PK\x03\x04 cut short")
    main([a, b, "--output_dir", str(tmp_path / "ens"), "--n_resamples", "20"])
    assert (
        f"ensemble: no train predictions for the ensemble: {tmp_path / 'b' / 'predictions_train.npz'} is not an "
        ".npz archive" in capsys.readouterr().err
    )
    assert sorted(p.name for p in (tmp_path / "ens").glob("predictions_*.npz")) == [
        "predictions_test.npz",
        "predictions_validation.npz",
    ]


def test_a_malformed_labels_json_is_one_line_in_compare_and_ensemble(tmp_path, capsys, monkeypatch):
    """labels.json gives compare its tiers and the ensemble its prior. Not JSON, a list, or train_counts / tiers
    that are not mappings were tracebacks (JSONDecodeError, AttributeError, a TypeError from a count "many") or,
    for a list of tiers, tier columns silently blank; train_counts naming none of the run's labels (another run's
    file) gave a uniform prior, so a shift that did nothing. Now one line naming the file, with --posthoc_logit_
    adjustment none too (the ensemble then reads labels.json for its tiers only, after the build)."""
    import longtail.compare
    import longtail.ensemble

    rng = np.random.default_rng(2)
    y = {s: [0, 1, 2, 0, 1, 2, 0, 1] for s in ("validation", "test")}
    cases = {
        "not_json": ("{not json", "is not readable JSON (JSONDecodeError: Expecting property name"),
        "list": ("[1, 2]", ": it holds a list, not an object. Rerun the run that wrote it."),
        "counts_list": (
            '{"train_counts": [5, 3, 1]}',
            ": train_counts is not a mapping of label to a count of rows",
        ),
        "counts_text": (
            '{"train_counts": {"a": "many"}}',
            ": train_counts is not a mapping of label to a count",
        ),
        "counts_negative": (
            '{"train_counts": {"a": 5, "b": -3}}',
            ": train_counts is not a mapping of label to a count of rows",
        ),
        "counts_bool": (
            '{"train_counts": {"a": 5, "b": true}}',
            ": train_counts is not a mapping of label to a count of rows",
        ),
        "tiers_list": ('{"tiers": ["head", "mid", "tail"]}', ": tiers is not a mapping of label to tier."),
        "other_run": (
            '{"train_counts": {"x": 5, "y": 3}}',
            ": its train_counts name none of the 3 labels of the run's predictions (e.g. ['x', 'y'] against "
            "['a', 'b', 'c']): another run's labels.json?",
        ),
    }
    out = tmp_path / "out"
    for case, (text, message) in cases.items():
        bad = make_run(tmp_path / case, {s: rng.dirichlet(np.ones(3), 8) for s in y}, y)
        other = make_run(tmp_path / f"{case}_other", {s: rng.dirichlet(np.ones(3), 8) for s in y}, y)
        (Path(bad) / "labels.json").write_text(text)
        for tool, argv in (
            ("compare", [other, "--reference", bad]),
            ("ensemble", [bad, other]),
            ("ensemble", [bad, other, "--posthoc_logit_adjustment", "none"]),
        ):
            assert refused_in_one_line(monkeypatch, capsys, tool, argv, out).startswith(
                f"{tool}.py: error: {Path(bad) / 'labels.json'}{' ' if case == 'not_json' else ''}{message}"
            ), (case, tool)
    # a class with no training rows (all its rows went to validation) is not a mismatch: it counts as one row
    fine = make_run(tmp_path / "fine", {s: rng.dirichlet(np.ones(3), 8) for s in y}, y)
    (Path(fine) / "labels.json").write_text('{"train_counts": {"a": 6, "b": 3}, "tiers": {"a": "head"}}')
    record = longtail.ensemble.main(
        [fine, other, "--output_dir", str(tmp_path / "ens"), "--n_resamples", "20"]
    )
    np.testing.assert_allclose(record["serving"]["log_prior"], np.log([0.6, 0.3, 0.1]))
    # the prior's reader checks the counts against the labels it is given itself (not only the tiers' reader after)
    from longtail.compare import CompareError
    from longtail.ensemble import training_log_prior

    with pytest.raises(CompareError, match=r"labels.json: its train_counts name none of the 3 labels"):
        training_log_prior(tmp_path / "other_run", LABELS)
    np.testing.assert_allclose(training_log_prior(fine, LABELS), np.log([0.6, 0.3, 0.1]))


def test_temperature_and_weights_chosen_on_validation(tmp_path):
    from longtail.ensemble import fit_temperature, main, simplex_grid, temper
    from longtail.metrics import negative_log_likelihood

    # over-confident probabilities: the fitted temperature is > 1 and lowers validation NLL
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.0 * np.eye(3)[y]
    probs = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    t = fit_temperature(probs, y)
    assert t > 1.5
    assert negative_log_likelihood(temper(probs, t), y) < negative_log_likelihood(probs, y)
    assert len(simplex_grid(3, 0.1)) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in simplex_grid(3, 0.25))

    # A is sure and right on validation rows 0-2 and unsure and wrong on rows 3-5; B the other way round. Alone
    # each gets half the rows; mixed, the sure member wins every row, so an even mix scores 1.0
    def member(right_rows, y_split):
        probs = np.full((len(y_split), 3), 0.1)
        for i, label in enumerate(y_split):
            if i in right_rows:
                probs[i, label] = 0.8
            else:
                probs[i] = [0.15] * 3
                probs[i, label], probs[i, (label + 1) % 3] = 0.40, 0.45
        return probs / probs.sum(1, keepdims=True)

    y = {"validation": [0, 1, 2, 0, 1, 2], "test": [0, 1, 2, 0]}
    a = make_run(tmp_path / "a", {s: member({0, 1, 2}, y[s]) for s in y}, y)
    b = make_run(tmp_path / "b", {s: member({3, 4, 5}, y[s]) for s in y}, y)
    record = main(
        [a, b, "--output_dir", str(tmp_path / "ens"), "--weights", "search", "--weight_step", "0.25",
         "--n_resamples", "50"]
    )  # fmt: skip
    assert record["weights"] == {"a": 0.5, "b": 0.5}
    assert record["temperatures"]["a"] == pytest.approx(record["temperatures"]["b"], rel=1e-6)
    assert record["metrics"]["validation"]["macro_f1"] == 1.0
    # on test, B is unsure and wrong on rows 0-2 and A sure and right: the mix follows A (1.0); B alone: 0.25
    assert record["metrics"]["test"]["accuracy"] == 1.0
    out = tmp_path / "ens"
    for name in ("predictions_validation.npz", "predictions_test.npz", "ensemble.json", "report.md"):
        assert (out / name).is_file(), name
    assert "test scored once" in (out / "report.md").read_text()
    # the ensemble's predictions go through compare next to a member
    from longtail.compare import compare_runs

    assert compare_runs([str(out)], a, n_resamples=20)["num_rows"] == 4


def test_equal_weights_by_default_searched_on_request(tmp_path):
    """The default is the plain average of the calibrated members; `--weights search` moves the weight to the
    member that is right on validation, and the record and report say which rule chose them."""
    from longtail.ensemble import main, weight_candidates

    assert (
        weight_candidates(3, "equal", 0.1) == [(1 / 3, 1 / 3, 1 / 3)]
        and len(weight_candidates(3, "search", 0.1)) == 66
    )
    with pytest.raises(ValueError, match="weights must be one of"):
        weight_candidates(2, "best", 0.1)
    # A is right on 5 of 6 validation rows, B on 3, each sure on some (found by a small search, kept by hand):
    # after calibration the even mix still follows B on rows where A is right, so searching moves to A alone
    y = {"validation": [0, 1, 2, 0, 1, 2], "test": [0, 1, 2, 0, 1, 2]}

    def member(spec):  # (right?, confidence) per row
        probs = []
        for label, (right, conf) in zip(y["validation"], spec):
            row = np.full(3, (1 - conf) / 2)
            row[label if right else (label + 1) % 3] = conf
            probs.append(row)
        return {s: np.array(probs) for s in y}

    a = make_run(tmp_path / "a", member([(1, 0.9), (0, 0.9), (1, 0.9), (1, 0.6), (1, 0.6), (1, 0.6)]), y)
    b = make_run(tmp_path / "b", member([(0, 0.4), (0, 0.4), (1, 0.6), (0, 0.9), (1, 0.9), (1, 0.9)]), y)
    args = [a, b, "--n_resamples", "20", "--posthoc_logit_adjustment", "none"]
    equal = main([*args, "--output_dir", str(tmp_path / "equal")])
    search = main(
        [*args, "--output_dir", str(tmp_path / "search"), "--weights", "search", "--weight_step", "0.5"]
    )
    assert equal["weights"] == {"a": 0.5, "b": 0.5} and equal["weights_mode"] == "equal"
    assert search["weights"] == {"a": 1.0, "b": 0.0} and search["weights_mode"] == "search"
    assert search["metrics"]["validation"]["macro_f1"] == pytest.approx(0.8222, abs=1e-4)
    assert equal["metrics"]["validation"]["macro_f1"] == pytest.approx(0.6556, abs=1e-4)
    assert "weights: equal" in equal["selection"] and "simplex grid" in search["selection"]
    assert "| weight (equal) |" in (tmp_path / "equal" / "report.md").read_text()
    # a grid step without the search (the previous default's command line) is refused, not silently ignored
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--output_dir", str(tmp_path / "step"), "--weight_step", "0.25"])
    assert exit_info.value.code == 2 and not (tmp_path / "step").exists()


def test_a_weight_grid_too_large_to_search_is_refused_before_the_search(tmp_path, capsys, monkeypatch):
    """`--weights search` over many members at a fine step grows combinatorially (4 members at 0.02: 23,426 points x
    5 taus, 10+ minutes of scikit-learn macro-F1s, unsaid). Its size (points x taus actually tried) is counted first:
    above the cap, one line naming the count, the members, the step and a step that fits, before any output; at
    the cap, the search runs."""
    import longtail.ensemble
    from longtail.ensemble import MAX_GRID_SCORINGS, check_grid_size, main

    y = {"validation": [0, 1, 2, 0, 1, 2], "test": Y["test"]}
    preds = ([0, 1, 2, 0, 1, 1], [0, 1, 1, 0, 1, 2], [0, 0, 2, 0, 1, 2], [0, 1, 2, 2, 1, 2])
    runs = [
        make_run(tmp_path / name, {"validation": p, "test": [0] * 8}, y) for name, p in zip("abcd", preds)
    ]
    (tmp_path / "a" / "labels.json").write_text(json.dumps({"train_counts": {"a": 60, "b": 30, "c": 10}}))
    monkeypatch.chdir(tmp_path)
    run_as(monkeypatch, "ensemble.py")
    search = ["--weights", "search", "--n_resamples", "20"]
    # the boundary, on a cap made small: 4 members at step 0.1 are 286 points x 5 taus = 1,430 scorings
    monkeypatch.setattr(longtail.ensemble, "MAX_GRID_SCORINGS", 1_430)
    record = main(["a", "b", "c", "d", "--output_dir", "at_cap", *search, "--weight_step", "0.1"])
    assert record["weights_mode"] == "search" and (tmp_path / "at_cap" / "ensemble.json").is_file()
    monkeypatch.setattr(longtail.ensemble, "MAX_GRID_SCORINGS", 1_429)
    assert refused(
        main, ["a", "b", "c", "d", "--output_dir", "over", *search, "--weight_step", "0.1"], capsys
    ) == (
        "ensemble.py: error: --weights search over 4 members (a, b, c, d) at --weight_step 0.1 is 286 weight points "
        "x 5 taus = 1,430 validation scorings, more than the 1,429 it may take (each a validation macro-F1; a "
        "finer grid only fits validation noise): pass a coarser --weight_step (0.125: 165 points), fewer members, "
        "--weights equal, or a larger --max_grid_scorings to wait for it"
    )
    assert not (tmp_path / "over").exists()
    # --max_grid_scorings moves the cap: the same grid refused under 1,429 and built at 1,430; below 1 refused
    monkeypatch.setattr(longtail.ensemble, "MAX_GRID_SCORINGS", 25_000)
    over = ["a", "b", "c", "d", *search, "--weight_step", "0.1", "--max_grid_scorings"]
    assert refused(main, [*over, "1429", "--output_dir", "over2"], capsys).startswith(
        "ensemble.py: error: --weights search over 4 members (a, b, c, d) at --weight_step 0.1 is 286 weight points "
        "x 5 taus = 1,430 validation scorings, more than the 1,429 it may take"
    )
    assert main([*over, "1430", "--output_dir", "lifted"])["weights_mode"] == "search"
    with pytest.raises(SystemExit):
        main([*over, "0", "--output_dir", "zero"])
    assert "--max_grid_scorings must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a cap on no search: a mistake, as --weight_step without one is
        main(["a", "b", "--max_grid_scorings", "10", "--output_dir", "equal_capped"])
    assert (
        "--max_grid_scorings caps --weights search; add --weights search, or drop it"
        in capsys.readouterr().err
    )
    monkeypatch.setattr(longtail.ensemble, "MAX_GRID_SCORINGS", 1_429)
    # only a search is counted: equal weights over the same members are built; and only the taus it tries: with no
    # shift (1 tau) the same grid is 286 scorings, under the cap
    assert (
        main(["a", "b", "c", "d", "--output_dir", "equal", "--n_resamples", "20"])["weights_mode"] == "equal"
    )
    record = main(["a", "b", "c", "d", "--output_dir", "no_shift", *search, "--weight_step", "0.1",
                   "--posthoc_logit_adjustment", "none"])  # fmt: skip
    assert record["weights_mode"] == "search" and record["posthoc_tau"] == 0.0
    monkeypatch.undo()  # the real cap
    monkeypatch.chdir(tmp_path)
    run_as(monkeypatch, "ensemble.py")
    assert MAX_GRID_SCORINGS == 25_000
    line = refused(
        main, ["a", "b", "c", "d", "--output_dir", "fine", *search, "--weight_step", "0.02"], capsys
    )
    assert line.startswith(
        "ensemble.py: error: --weights search over 4 members (a, b, c, d) at --weight_step 0.02 is 23,426 weight "
        "points x 5 taus = 117,130 validation scorings, more than the 25,000 it may take"
    )
    assert line.endswith(
        "pass a coarser --weight_step (0.05: 1,771 points), fewer members, --weights equal, or a larger "
        "--max_grid_scorings to wait for it"
    )
    assert not (tmp_path / "fine").exists()
    # the taus counted are those tried: with no shift, the same 23,426 points are under the cap (the check only)
    check_grid_size(runs, 0.02, 1)
    with pytest.raises(
        longtail.ensemble.UsageError, match=r"is 23,426 weight points x 2 taus = 46,852 validation"
    ):
        check_grid_size(runs, 0.02, 2)
    # a step of 1e-9 divides 1 (the existing check): a billion points, refused at once rather than enumerated
    line = refused(
        main, ["a", "b", "--output_dir", "tiny", "--weights", "search", "--weight_step", "1e-9"], capsys
    )
    assert "at --weight_step 1e-09 is 1,000,000,001 weight points x 5 taus = 5,000,000,005 validation" in line
    assert "pass a coarser --weight_step (0.01: 101 points)" in line
    # one tau: no "x 1 taus", and the coarser step is the first that fits at 1 tau (0.02, not 0.05 as at 5)
    with pytest.raises(longtail.ensemble.UsageError) as info:
        check_grid_size(["a", "b", "c", "d"], 0.01, 1)
    assert str(info.value) == (
        "--weights search over 4 members (a, b, c, d) at --weight_step 0.01 is 176,851 weight points, more than "
        "the 25,000 it may take (each a validation macro-F1; a finer grid only fits validation noise): pass a "
        "coarser --weight_step (0.02: 23,426 points), fewer members, --weights equal, or a larger --max_grid_scorings "
        "to wait for it"
    )
    # a count from 10^12 on in powers of ten
    with pytest.raises(longtail.ensemble.UsageError, match=r"at --weight_step 1e-12 is 1\.0e\+12 weight points x 5 "
                       r"taus = 5\.0e\+12 validation scorings, more than the 25,000"):  # fmt: skip
        check_grid_size(["a", "b"], 1e-12, 5)
    # no coarser step fits (100 members even at 0.5: 5,050 points x 5 taus): none is suggested
    with pytest.raises(longtail.ensemble.UsageError) as info:
        check_grid_size([f"m{i}" for i in range(100)], 0.5, 5)
    assert str(info.value).endswith(
        "at --weight_step 0.5 is 5,050 weight points x 5 taus = 25,250 validation scorings, more than the 25,000 it "
        "may take (each a validation macro-F1; a finer grid only fits validation noise): pass fewer members, "
        "--weights equal, or a larger --max_grid_scorings to wait for it"
    )


def test_the_weight_grid_is_built_point_by_point():
    """simplex_grid filtered every tuple of (1/step + 1)^k: 20 members at step 0.5, 210 points under any cap, took
    3^20 (3.5e9) tuples, hours. Now built point by point, in the same (lexicographic) order, its size known
    beforehand."""
    import itertools
    import signal

    from longtail.ensemble import grid_size, simplex_grid

    def by_filtering(k, step):
        n = round(1 / step)
        return [
            tuple(c / n for c in combo)
            for combo in itertools.product(range(n + 1), repeat=k)
            if sum(combo) == n
        ]

    for k in (1, 2, 3, 4):
        for step in (0.5, 0.25, 0.2, 0.1):
            assert simplex_grid(k, step) == by_filtering(k, step), (k, step)
            assert grid_size(k, step) == len(by_filtering(k, step))

    def too_slow(*_):
        raise TimeoutError("simplex_grid(20, 0.5) took more than 20 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        grid = simplex_grid(20, 0.5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(grid) == grid_size(20, 0.5) == 210 and all(
        sorted(w)[-2:] in ([0.5, 0.5], [0.0, 1.0]) for w in grid
    )


def test_geometric_mix_by_default_arithmetic_on_request(tmp_path):
    """Log-linear pooling keeps a class that one member rules out unlikely; the arithmetic mean lets one confident
    member carry it. Rows of class a: both members give a 0.3, A bets on b and B on c (each nearly ruling out the
    other's bet): the geometric mix says a, the arithmetic one c. The mix's own temperature changes no label."""
    from longtail.ensemble import combine, main
    from longtail.report import load_predictions

    p, q = np.array([[0.3, 0.65, 0.05]]), np.array([[0.3, 0.04, 0.66]])
    geo = np.sqrt(p * q) / np.sqrt(p * q).sum()
    np.testing.assert_allclose(combine([p, q], (0.5, 0.5), "geometric"), geo, rtol=1e-12)
    np.testing.assert_allclose(combine([p, q], (0.5, 0.5), "arithmetic"), [[0.3, 0.345, 0.355]], rtol=1e-12)
    with pytest.raises(ValueError, match="combine must be one of"):
        combine([p, q], (0.5, 0.5), "median")

    y = {"validation": [0, 0, 0, 1, 2, 1, 2], "test": [0, 0, 1, 2]}

    def member(disputed):  # the disputed row for class a, a sure and right row for b and c
        easy = {1: [0.1, 0.8, 0.1], 2: [0.1, 0.1, 0.8]}
        return {s: np.array([disputed if label == 0 else easy[label] for label in y[s]]) for s in y}

    a = make_run(tmp_path / "a", member([0.3, 0.65, 0.05]), y)
    b = make_run(tmp_path / "b", member([0.3, 0.04, 0.66]), y)
    args = [a, b, "--n_resamples", "20", "--posthoc_logit_adjustment", "none"]
    records = {
        "geometric": main([*args, "--output_dir", str(tmp_path / "geometric")]),
        "arithmetic": main([*args, "--output_dir", str(tmp_path / "arithmetic"), "--combine", "arithmetic"]),
    }
    predicted = {
        k: load_predictions(tmp_path / k / "predictions_test.npz")["probs"].argmax(1).tolist()
        for k in records
    }
    assert predicted == {"geometric": [0, 0, 1, 2], "arithmetic": [2, 2, 1, 2]}
    assert records["geometric"]["combine"] == "geometric" and records["arithmetic"]["combine"] == "arithmetic"
    assert records["geometric"]["metrics"]["validation"]["accuracy"] == 1.0
    assert records["arithmetic"]["metrics"]["validation"]["accuracy"] == pytest.approx(4 / 7)
    # the arithmetic mix is under-confident on its right rows: its own temperature (< 1) sharpens it, and the
    # saved probabilities are exactly: members at their temperatures, mixed, then the mix at its temperature
    from longtail.ensemble import temper

    record = records["arithmetic"]
    assert record["mix_temperature"] < 1
    members = [temper(member(spec)["validation"], record["temperatures"][name]) for name, spec in
               (("a", [0.3, 0.65, 0.05]), ("b", [0.3, 0.04, 0.66]))]  # fmt: skip
    expected = temper(combine(members, (0.5, 0.5), "arithmetic"), record["mix_temperature"])
    saved = load_predictions(tmp_path / "arithmetic" / "predictions_validation.npz")["probs"]
    np.testing.assert_allclose(saved, expected, atol=1e-6)
    assert "geometric mean of the calibrated members" in (tmp_path / "geometric" / "report.md").read_text()


def test_test_rows_go_through_the_same_mix_as_validation(tmp_path):
    """Test is scored by `apply_mix` (each member at its own temperature, mixed, then the mix's temperature),
    validation inside `build_ensemble`: on test rows that repeat the validation rows the saved probabilities
    agree. The members' temperatures differ and the mix's is not 1, so a swapped or skipped one shows."""
    from longtail.ensemble import main
    from longtail.report import load_predictions

    y = {"validation": [0, 1, 2, 0, 1, 2], "test": [0, 1, 2, 0, 1, 2]}
    sure = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05]] * 2)  # right, right, wrong
    unsure = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.2, 0.5]] * 2)  # right, wrong, right
    a = make_run(tmp_path / "a", {s: sure for s in y}, y)
    b = make_run(tmp_path / "b", {s: unsure for s in y}, y)
    record = main([a, b, "--output_dir", str(tmp_path / "ens"), "--n_resamples", "20",
                   "--posthoc_logit_adjustment", "none"])  # fmt: skip
    assert record["temperatures"]["a"] != pytest.approx(record["temperatures"]["b"], rel=0.1)
    assert record["mix_temperature"] != pytest.approx(1.0, rel=0.1)
    saved = {s: load_predictions(tmp_path / "ens" / f"predictions_{s}.npz")["probs"] for s in y}
    np.testing.assert_allclose(saved["test"], saved["validation"], atol=1e-6)


def test_a_finished_output_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """A rerun into a used folder stops at once with one line (no traceback, no minutes of bootstrap first)."""
    import longtail.compare
    import longtail.ensemble

    y = {"validation": [0, 1, 2, 0, 1, 2], "test": Y["test"]}
    a = make_run(tmp_path / "a", {"validation": [0, 1, 2, 0, 1, 1], "test": [0] * 8}, y)
    b = make_run(tmp_path / "b", {"validation": [0, 1, 1, 0, 1, 2], "test": [1] * 8}, y)
    used = tmp_path / "used"
    used.mkdir()
    (used / "report.md").write_text("an earlier result")

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    monkeypatch.setattr(longtail.compare, "compare_runs", no_work)
    monkeypatch.setattr(longtail.ensemble, "build_ensemble", no_work)
    for main, name in ((longtail.compare.main, "compare"), (longtail.ensemble.main, "ensemble")):
        run_as(monkeypatch, f"{name}.py")
        with pytest.raises(SystemExit) as exit_info:
            main([a, b if name == "ensemble" else "--reference", *([] if name == "ensemble" else [b]),
                  "--output_dir", str(used)])  # fmt: skip
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        # a run's report.md is no earlier comparison's or ensemble's: refused as such, not told to pass
        # --overwrite_output_dir (which was then refused with this line)
        said = {
            "compare": "holds files that are not an earlier comparison's (report.md: a run's?)",
            "ensemble": "holds report.md but no ensemble.json, so it is not an earlier ensemble's",  # one of its files
        }[name]
        assert f"{name}.py: error: output_dir '{used}' {said}" in err and "Traceback" not in err
    assert (used / "report.md").read_text() == "an earlier result"


def test_ensemble_logit_adjustment_chosen_on_validation(tmp_path, capsys):
    """Members that lean to the head class: a small post-hoc shift (tau) recovers the tail rows on validation;
    a large one breaks the head rows; ties go to the smaller tau. `none` keeps the unshifted mix."""
    from longtail.ensemble import main
    from longtail.metrics import macro_f1

    head_row, tail_row = [0.55, 0.15, 0.30], [0.45, 0.15, 0.40]  # true label a / true label c
    y = {"validation": [0, 0, 0, 2, 2, 2], "test": [0, 2, 2, 0]}
    probs = {s: np.array([head_row if label == 0 else tail_row for label in y[s]]) for s in y}
    runs = [make_run(tmp_path / name, probs, y) for name in ("m1", "m2")]
    for run in runs:  # the prior comes from the first member's training counts
        (tmp_path / run / "labels.json").write_text(json.dumps({"train_counts": {"a": 80, "b": 15, "c": 5}}))

    def ens(name, *extra):
        return main([*runs, "--output_dir", str(tmp_path / name), "--n_resamples", "20", *extra])

    shifted, plain = ens("shifted"), ens("plain", "--posthoc_logit_adjustment", "none")
    assert shifted["posthoc_tau"] == 0.25 and plain["posthoc_tau"] == 0.0
    assert shifted["metrics"]["validation"]["macro_f1"] == 1.0
    assert plain["metrics"]["validation"]["macro_f1"] == pytest.approx(macro_f1(y["validation"], [0] * 6))
    assert shifted["metrics"]["test"]["accuracy"] == 1.0 and plain["metrics"]["test"]["accuracy"] == 0.5
    assert "tau = 0.25" in (tmp_path / "shifted" / "report.md").read_text()
    # tau 1 moves the head rows to c as well: every row is predicted c
    one = ens("one", "--posthoc_logit_adjustment", "1")
    assert one["metrics"]["validation"]["macro_f1"] == pytest.approx(macro_f1(y["validation"], [2] * 6))
    # each report names what set tau: it said "best validation macro-F1" for a fixed tau and for none as well
    for name, record, rule in (
        ("shifted", shifted, "validation macro-F1"),
        ("plain", plain, "fixed by --posthoc_logit_adjustment none"),
        ("one", one, "fixed by --posthoc_logit_adjustment 1"),
    ):
        report = (tmp_path / name / "report.md").read_text()
        assert f"post-hoc logit adjustment ({rule}): tau = " in report, name
        searched = "post-hoc tau: best validation macro-F1 (ties: smaller tau)" in record["selection"]
        assert searched == (name == "shifted") and (
            searched or f"post-hoc tau: {rule}; test scored" in record["selection"]
        ), name
    searched_weights = ens("search", "--posthoc_logit_adjustment", "1", "--weights", "search")
    assert (
        "weights: best validation macro-F1 over the simplex grid (ties: lower NLL); post-hoc tau: fixed"
        in (searched_weights["selection"])
    )

    # without training counts: auto says it does no shift; a fixed tau is a one-line error
    capsys.readouterr()
    bare = [make_run(tmp_path / name, probs, y) for name in ("b1", "b2")]
    assert main([*bare, "--output_dir", str(tmp_path / "bare"), "--n_resamples", "20"])["posthoc_tau"] == 0.0
    assert "no training counts" in capsys.readouterr().err
    assert "post-hoc logit adjustment (none, no training counts in any member's labels.json)" in (
        (tmp_path / "bare" / "report.md").read_text()
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*bare, "--output_dir", str(tmp_path / "bare2"), "--posthoc_logit_adjustment", "0.5"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: no training counts in any member's labels.json ({bare[0]}, {bare[1]}), so no class prior for the "
        "post-hoc logit adjustment; pass --posthoc_logit_adjustment none"
    )  # one line naming the members (the README's Bad input table)
    with pytest.raises(SystemExit):
        main([*bare, "--output_dir", str(tmp_path / "bare3"), "--posthoc_logit_adjustment", "lots"])
    # nan (or inf) parsed as a number: every mixed logit NaN, all predicted as the first class, and the ensemble
    # written with a validation macro-F1 of 0.006; now refused like any word that is not a number
    for tau in ("nan", "inf"):
        with pytest.raises(SystemExit) as exit_info:
            main([*runs, "--output_dir", str(tmp_path / f"tau_{tau}"), "--posthoc_logit_adjustment", tau])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.strip().splitlines()[-1].endswith(
            f"error: --posthoc_logit_adjustment must be auto, none or a number, got '{tau}'"
        ), err
        assert not (tmp_path / f"tau_{tau}").exists()


def test_the_prior_comes_from_the_first_member_with_training_counts(tmp_path, capsys):
    """An ensemble saves no labels.json: listed first (or in an ensemble of ensembles), the post-hoc shift was
    dropped ("no training counts") though the next member had them, and a fixed tau was refused. The prior now
    comes from the first member that has counts, as the tiers already did, and the note, ensemble.json and the
    report name it; with no member's counts, auto still does no shift and a fixed tau is still refused."""
    from longtail.ensemble import main
    from longtail.report import load_predictions

    head_row, tail_row = [0.55, 0.15, 0.30], [0.45, 0.15, 0.40]
    y = {"validation": [0, 0, 0, 2, 2, 2], "test": [0, 2, 2, 0]}
    probs = {s: np.array([head_row if label == 0 else tail_row for label in y[s]]) for s in y}
    m1, m2, m3, m4 = (make_run(tmp_path / name, probs, y) for name in ("m1", "m2", "m3", "m4"))
    for run in (m1, m2, m4):
        (Path(run) / "labels.json").write_text(json.dumps({"train_counts": {"a": 80, "b": 15, "c": 5}}))
    shifted = main([m1, m2, "--output_dir", str(tmp_path / "shifted"), "--n_resamples", "20"])
    assert shifted["posthoc_tau"] == 0.25
    inner = main([m1, m2, "--output_dir", str(tmp_path / "inner"), "--n_resamples", "20",
                  "--posthoc_logit_adjustment", "none"])  # fmt: skip
    inner_dir = str(tmp_path / "inner")
    capsys.readouterr()
    # the unshifted inner ensemble first (with m4, not m2: an ensemble may not hold a run twice): it leans to class
    # a, as its members do, and only the shift by m4's prior (tau chosen on validation) recovers the c rows
    outer = main([inner_dir, m4, "--output_dir", str(tmp_path / "outer"), "--n_resamples", "20"])
    err = capsys.readouterr().err
    assert outer["posthoc_tau"] == 0.25 and outer["metrics"]["validation"]["macro_f1"] == 1.0
    assert (
        f"ensemble: the class prior of the post-hoc logit adjustment is {m4}'s training counts (labels.json; "
        f"{inner_dir} has none)" in err
    )
    assert "no post-hoc logit adjustment" not in err
    assert outer["posthoc_prior_from"] == m4 and shifted["posthoc_prior_from"] == m1
    assert inner["posthoc_prior_from"] is None
    np.testing.assert_allclose(outer["serving"]["log_prior"], np.log([0.8, 0.15, 0.05]))
    assert "renormalised; the prior: m4's training counts)" in (tmp_path / "outer" / "report.md").read_text()
    fixed = main([inner_dir, m4, "--output_dir", str(tmp_path / "fixed"), "--n_resamples", "20",
                  "--posthoc_logit_adjustment", "0.5"])  # fmt: skip
    predicted = load_predictions(tmp_path / "fixed" / "predictions_validation.npz")["probs"].argmax(1)
    assert predicted.tolist() == [0, 0, 0, 2, 2, 2]
    assert fixed["posthoc_tau"] == 0.5 and fixed["posthoc_prior_from"] == m4
    # no member with counts: as before, auto does no shift and says so; a fixed tau is one line naming them all
    capsys.readouterr()
    bare = main([inner_dir, m3, "--output_dir", str(tmp_path / "bare"), "--n_resamples", "20"])
    assert bare["posthoc_tau"] == 0.0 and bare["posthoc_prior_from"] is None
    assert "ensemble: no training counts in any member's labels.json: no post-hoc logit adjustment" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main([inner_dir, m3, "--output_dir", str(tmp_path / "bare2"), "--posthoc_logit_adjustment", "1"])
    assert (
        exit_info.value.code == 2
        and (
            f"error: no training counts in any member's labels.json ({inner_dir}, {m3}), so no class prior for the "
            "post-hoc logit adjustment; pass --posthoc_logit_adjustment none"
        )
        in capsys.readouterr().err
    )


def test_ensemble_refuses_a_negative_tau_and_warns_about_a_large_one(tmp_path, capsys, caplog, monkeypatch):
    """A negative tau was taken: the mix shifted towards the head classes, the opposite of the option's purpose,
    and the ensemble written with it. Now one line naming the option and value, status 2, no output folder. A tau
    above 2 (over-correcting past tau = 1, the balanced-error rule) is built, with one warning."""
    import longtail.posthoc
    from longtail.ensemble import main

    monkeypatch.setattr(longtail.posthoc, "_warned_taus", set(), raising=False)
    y = {"validation": [0, 0, 0, 2, 2, 2], "test": [0, 2, 2, 0]}
    probs = {
        s: np.array([[0.55, 0.15, 0.30] if label == 0 else [0.45, 0.15, 0.40] for label in y[s]]) for s in y
    }
    runs = [make_run(tmp_path / name, probs, y) for name in ("m1", "m2")]
    for run in runs:
        (tmp_path / run / "labels.json").write_text(json.dumps({"train_counts": {"a": 80, "b": 15, "c": 5}}))
    run_as(monkeypatch, "ensemble.py")
    for given in (["--posthoc_logit_adjustment", "-0.5"], ["--posthoc_logit_adjustment=-2"]):
        value = given[-1].split("=")[-1]
        with pytest.raises(SystemExit) as exit_info:
            main([*runs, "--output_dir", str(tmp_path / "neg"), "--n_resamples", "20", *given])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            f"ensemble.py: error: --posthoc_logit_adjustment must be >= 0, got '{value}': a negative tau shifts "
            "predictions towards the head classes (tau = 1 is the Bayes rule for balanced error)"
        )
    assert not (tmp_path / "neg").exists()
    with caplog.at_level("WARNING", logger="longtail.posthoc"):
        record = main([*runs, "--output_dir", str(tmp_path / "big"), "--n_resamples", "20",
                       "--posthoc_logit_adjustment", "4"])  # fmt: skip
    assert record["posthoc_tau"] == 4.0
    warned = [r.getMessage() for r in caplog.records if r.name == "longtail.posthoc"]
    assert warned == [  # once, though the option is read twice (the arguments, then the prior)
        "--posthoc_logit_adjustment 4 is above 2.0: it over-corrects past the balanced-error rule (tau = 1 is its "
        "Bayes rule), so predictions lean to the tail classes"
    ]


def test_compare_and_ensemble_repeat_exactly_and_record_their_bootstrap(tmp_path):
    """Twice on the same runs: byte-identical outputs (the bootstrap is seeded). compare.json and ensemble.json
    record how the CIs were drawn (seed, resamples, confidence), the command and the environment, and the
    reports say the seed: without them a reader cannot redraw the same CIs and p-values."""
    from longtail.compare import main as compare
    from longtail.ensemble import main as ensemble
    from longtail.metrics import BOOTSTRAP_SEED

    rng = np.random.default_rng(3)
    y = {s: rng.integers(0, 3, 40).tolist() for s in ("validation", "test")}
    runs = [
        make_run(tmp_path / name, {s: rng.dirichlet(np.ones(3), len(y[s])) for s in y}, y)
        for name in ("a", "b", "c")
    ]
    for i in (1, 2):
        compare(
            [
                runs[1],
                "--reference",
                runs[0],
                "--output_dir",
                str(tmp_path / f"cmp{i}"),
                "--n_resamples",
                "30",
            ]
        )
        ensemble([runs[1], runs[2], "--output_dir", str(tmp_path / f"ens{i}"), "--n_resamples", "30"])
    for folder, names in (("cmp", ("compare.md", "compare.json")),
                          ("ens", ("ensemble.json", "report.md", "predictions_test.npz"))):  # fmt: skip
        for name in names:
            first, second = (tmp_path / f"{folder}{i}" / name for i in (1, 2))
            # the records name their own output folder in the command; nothing else may differ
            assert (
                first.read_bytes().replace(b"cmp1", b"cmp2").replace(b"ens1", b"ens2") == second.read_bytes()
            )

    want = {"method": "percentile", "n_resamples": 30, "confidence_level": 0.95, "seed": BOOTSTRAP_SEED}
    record = json.loads((tmp_path / "cmp1" / "compare.json").read_text())
    assert want.items() <= record["bootstrap"].items()
    assert (
        record["command"].startswith("python -m longtail.compare ")
        and "--n_resamples 30" in record["command"]
    )
    assert record["environment"]["versions"]["numpy"] == np.__version__
    assert f"30 resamples, seed {BOOTSTRAP_SEED}" in (tmp_path / "cmp1" / "compare.md").read_text()
    record = json.loads((tmp_path / "ens1" / "ensemble.json").read_text())
    assert want.items() <= record["bootstrap"].items()
    assert record["command"].startswith("python -m longtail.ensemble ") and record["environment"]["versions"]
    assert f"30 resamples, seed {BOOTSTRAP_SEED}" in (tmp_path / "ens1" / "report.md").read_text()
