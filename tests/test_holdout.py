"""`python -m longtail.holdout`: a seeded held-out file, never overwritten by accident."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import CFPB_CSV, needs_shared, run_as

from longtail.holdout import main


def write_source(path, n=40):
    frame = pd.DataFrame(
        {
            "Consumer complaint narrative": [f"complaint number {i}" if i % 7 else "" for i in range(n)],
            "Issue": [f"issue {i % 3}" for i in range(n)],
        }
    )
    frame.to_csv(path, index=False)
    return frame


def test_split_is_the_seeded_sample_and_loses_no_row(tmp_path):
    source = write_source(tmp_path / "all.csv")
    record = main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "d"), "--fraction", "0.25"])
    train = pd.read_csv(tmp_path / "d" / "train.csv", dtype=str, keep_default_na=False)
    heldout = pd.read_csv(tmp_path / "d" / "heldout.csv", dtype=str, keep_default_na=False)
    expected = source.astype(str).sample(frac=0.25, random_state=7)
    assert (
        heldout["Consumer complaint narrative"].tolist() == expected["Consumer complaint narrative"].tolist()
    )
    assert len(heldout) == 10 and len(train) == 30  # rows with no narrative are kept: recipes count them
    assert sorted(
        train["Consumer complaint narrative"].tolist() + heldout["Consumer complaint narrative"].tolist()
    ) == sorted(source["Consumer complaint narrative"].fillna("").tolist())
    assert list(train.columns) == list(source.columns)
    assert record == {
        "source": str(tmp_path / "all.csv"),
        "fraction": 0.25,
        "seed": 7,
        "rows": {"train": 30, "heldout": 10},
    }
    assert json.loads((tmp_path / "d" / "holdout.json").read_text()) == record


def test_an_existing_split_is_not_replaced_unless_asked(tmp_path, capsys):
    source = write_source(tmp_path / "all.csv")
    out = str(tmp_path / "d")
    main([str(tmp_path / "all.csv"), "--output_dir", out])
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "all.csv"), "--output_dir", out, "--seed", "8"])
    assert exc.value.code == 2
    assert "already holds train.csv" in capsys.readouterr().err
    main([str(tmp_path / "all.csv"), "--output_dir", out, "--seed", "8", "--overwrite"])
    assert json.loads((tmp_path / "d" / "holdout.json").read_text())["seed"] == 8
    # the replacement is the sample of the new seed (default fraction 0.15)
    heldout = pd.read_csv(tmp_path / "d" / "heldout.csv", dtype=str, keep_default_na=False)
    expected = source.astype(str).sample(frac=0.15, random_state=8)
    assert (
        heldout["Consumer complaint narrative"].tolist() == expected["Consumer complaint narrative"].tolist()
    )


def test_an_overwrite_that_changes_the_split_warns_that_earlier_runs_saw_the_new_held_out_rows(
    tmp_path, capsys, monkeypatch
):
    """--overwrite with another seed replaced heldout.csv without a word, while runs trained on the earlier
    train.csv hold most of its rows; the same seed (what `make cfpb-study` reruns) rewrites the same files."""
    rows = pd.DataFrame(
        {"text": [f"complaint {i}" for i in range(40)], "Issue": [f"issue {i % 3}" for i in range(40)]}
    )
    rows.to_csv(tmp_path / "all.csv", index=False)  # rows all different: a row is compared whole
    out = tmp_path / "d"
    main([str(tmp_path / "all.csv"), "--output_dir", str(out)])
    first = {name: (out / name).read_bytes() for name in ("train.csv", "heldout.csv")}
    capsys.readouterr()
    read = []
    read_csv = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda f, *a, **k: read.append(str(f)) or read_csv(f, *a, **k))
    main([str(tmp_path / "all.csv"), "--output_dir", str(out), "--overwrite"])
    assert capsys.readouterr().err == ""
    assert {name: (out / name).read_bytes() for name in first} == first
    assert str(out / "train.csv") not in read  # the same held-out file: the earlier train.csv is not read
    # 40 rows, 6 held out; none of seed 8's six is among seed 7's, so the earlier train.csv holds all six
    index = pd.RangeIndex(40).to_frame()
    before, after = (set(index.sample(frac=0.15, random_state=s).index) for s in (7, 8))
    assert len(after - before) == 6
    main([str(tmp_path / "all.csv"), "--output_dir", str(out), "--seed", "8", "--overwrite"])
    assert capsys.readouterr().err == (
        "holdout: warning: 6 of the 6 new held-out rows are in the train.csv this replaces: runs trained on it "
        "would be scored on rows they trained on; retrain them on the new train.csv\n"
    )
    # a larger fraction of the same seed: the new held-out rows that were held out before are no concern
    wider = set(index.sample(frac=0.3, random_state=8).index)
    assert (len(wider), len(wider - after)) == (12, 6)
    main(
        [
            str(tmp_path / "all.csv"),
            "--output_dir",
            str(out),
            "--seed",
            "8",
            "--fraction",
            "0.3",
            "--overwrite",
        ]
    )
    assert capsys.readouterr().err.startswith(
        "holdout: warning: 6 of the 12 new held-out rows are in the train.csv"
    )


def test_a_zipped_or_gzipped_export_is_split_as_the_plain_file(tmp_path, capsys):
    """CFPB's download (complaints.csv.zip) and a .csv.gz are split as the file inside, byte-order mark and CRLF
    ends read through (they were "Unsupported data file type '.zip'")."""
    import gzip
    import zipfile

    source = write_source(tmp_path / "all.csv")
    payload = b"\xef\xbb\xbf" + source.to_csv(index=False, lineterminator="\r\n").encode("utf-8")
    with zipfile.ZipFile(tmp_path / "complaints.csv.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("complaints.csv", payload)
    (tmp_path / "complaints.csv.gz").write_bytes(gzip.compress(payload))
    main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "plain")])
    for name in ("complaints.csv.zip", "complaints.csv.gz"):
        main([str(tmp_path / name), "--output_dir", str(tmp_path / name.replace(".", "_"))])
        for written in ("train.csv", "heldout.csv"):
            got = (tmp_path / name.replace(".", "_") / written).read_text("utf-8")
            assert got == (tmp_path / "plain" / written).read_text("utf-8"), (name, written)
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.csv", payload)
        archive.writestr("b.csv", payload)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "two.zip"), "--output_dir", str(tmp_path / "d")])
    assert "two.zip holds 2 files (a.csv, b.csv), not one data file: unzip it" in capsys.readouterr().err


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.csv"), "--output_dir", str(tmp_path / "d")])
    assert exc.value.code == 2 and "Data file not found" in capsys.readouterr().err
    # a folder given as the input file: named as a folder (it said "Data file not found" of a folder that is there)
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a_folder"), "--output_dir", str(tmp_path / "d")])
    assert exc.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: {tmp_path / 'a_folder'} is a folder, not a data file: pass the .csv, .json, .jsonl or .parquet "
        "file in it"
    )
    assert not (tmp_path / "d").exists()
    write_source(tmp_path / "all.csv", n=3)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "d"), "--fraction", "1.5"])
    assert "--fraction must be in (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "d"), "--fraction", "0.01"])
    assert "empty train or held-out" in capsys.readouterr().err
    # every row held out (0.9 of 3 rows rounds to 3) leaves no train file; 0 and 1 are outside (0, 1)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "d"), "--fraction", "0.9"])
    assert "--fraction 0.9 of 3 rows leaves an empty train or held-out file" in capsys.readouterr().err
    for edge in ("0", "1"):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "d"), "--fraction", edge])
        assert f"--fraction must be in (0, 1), got {float(edge)}" in capsys.readouterr().err
    write_source(tmp_path / "one.csv", n=2).iloc[1:].to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "one.csv"), "--output_dir", str(tmp_path / "d"), "--fraction", "0.5"])
    assert "one.csv has 1 row(s): nothing to hold out" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    # an output "folder" that is a file; the input inside the output folder, which --overwrite would replace
    with pytest.raises(SystemExit):
        main([str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "all.csv")])
    assert "all.csv is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    write_source(tmp_path / "data" / "train.csv")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "data" / "train.csv"), "--output_dir", str(tmp_path / "data"), "--overwrite"])
    assert "is the input and one of the files written to" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "data" / "train.csv")) == 40


def test_a_run_or_model_folder_is_refused_even_with_overwrite(tmp_path, capsys, monkeypatch):
    """`--output_dir` a finished run's folder (or an ensemble's, a model's, sharded or an adapter, a run stopped at a
    checkpoint) got the split's train.csv / heldout.csv / holdout.json among the run's results. Now one line naming
    the folder and what was found in it (the first five), with or without --overwrite, and the folder is left as it
    was; a data folder with notes of its own is still written to."""
    run_as(monkeypatch, "holdout.py")
    write_source(tmp_path / "all.csv")
    folders = {
        "run": [
            "run_config.json",
            "labels.json",
            "eval_results.json",
            "predictions_validation.npz",
            "model.safetensors",
        ],
        "ensemble": ["ensemble.json", "report.md", "predictions_test.npz"],
        "tfidf": ["model.joblib"],
        "downloaded": ["config.json", "model.safetensors", "tokenizer.json"],
        "export": ["model.onnx", "config.json"],
        "stopped": ["checkpoint-40/"],
        "shards": ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        "adapter": ["adapter_config.json", "adapter_model.safetensors"],
        # a model's or an adapter's config alone (runs.MODEL_FILES: they were missed), a run's per-class table
        "config": ["config.json"],
        "adapter_config": ["adapter_config.json"],
        "per_class": ["per_class.csv", "confusion.png"],
        "calibrated": ["temperature.json"],
        "results": ["all_results.json"],
        "finished": [  # more than five: the first five named
            "all_results.json",
            "eval_results.json",
            "labels.json",
            "predictions_test.npz",
            "report.md",
            "run_config.json",
            "test_results.json",
        ],
    }
    for name, contents in folders.items():
        folder = tmp_path / name
        folder.mkdir()
        for item in contents:
            (folder / item).mkdir() if item.endswith("/") else (folder / item).write_text("{}")
        before = sorted(p.name for p in folder.iterdir())
        named = ", ".join(sorted(contents))
        if name == "finished":
            named = "all_results.json, eval_results.json, labels.json, predictions_test.npz, report.md, ..."
        for extra in ([], ["--overwrite"]):
            with pytest.raises(SystemExit) as exc:
                main([str(tmp_path / "all.csv"), "--output_dir", str(folder), *extra])
            err = capsys.readouterr().err
            assert exc.value.code == 2 and "Traceback" not in err
            assert err.strip().splitlines()[-1] == (
                f"holdout.py: error: --output_dir {folder} is a run or model folder (it holds "
                f"{named}): the split's files would be mixed into it; choose another "
                "--output_dir, e.g. a data/ folder of its own"
            ), name
        assert sorted(p.name for p in folder.iterdir()) == before, name
    # a folder of data and notes is not a run: written as before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("where the data came from")
    (notes / "splits.json").write_text("{}")  # e.g. ids for --split_indices: data, not a run
    assert main([str(tmp_path / "all.csv"), "--output_dir", str(notes)])["rows"] == {
        "train": 34,
        "heldout": 6,
    }
    # and the holdout's own folder (as `make cfpb-study` reruns it) is written again with --overwrite
    assert (
        main([str(tmp_path / "all.csv"), "--output_dir", str(notes), "--overwrite", "--seed", "3"])["seed"]
        == 3
    )
    assert sorted(p.name for p in notes.iterdir()) == [
        "README.md",
        "heldout.csv",
        "holdout.json",
        "splits.json",
        "train.csv",
    ]


@pytest.mark.shared
@needs_shared
def test_real_cfpb_holdout_gives_the_readme_study_rows(tmp_path):
    """The README's real-data study: the held-out split and the recipes' data options give its row counts."""
    from longtail.data import DataArguments, prepare_data

    main([str(CFPB_CSV), "--output_dir", str(tmp_path)])
    data = prepare_data(
        DataArguments(
            train_file=str(tmp_path / "train.csv"),
            test_file=str(tmp_path / "heldout.csv"),
            text_column="Consumer complaint narrative",
            label_taxonomy="cfpb_issue_113",
        )
    )
    sizes = {split: len(frame) for split, frame in data.splits.items()}
    assert sizes == {"train": 6046, "validation": 679, "test": 1180}
    assert len(data.label_names) == 63


def test_an_overwrite_without_an_earlier_train_csv_or_of_other_columns_warns_nothing(tmp_path, capsys):
    """--overwrite where only a held-out file of another split is left (no train.csv to compare with), or where the
    earlier train.csv holds the same rows under other column names (another file's split): no warning, no
    traceback."""
    write_source(tmp_path / "all.csv")
    out = tmp_path / "d"
    out.mkdir()
    (out / "heldout.csv").write_text("text,label\nan older held-out row,x\n")
    main([str(tmp_path / "all.csv"), "--output_dir", str(out), "--overwrite"])
    assert capsys.readouterr().err == ""
    train = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    train.set_axis([f"{c}_renamed" for c in train.columns], axis=1).to_csv(out / "train.csv", index=False)
    main([str(tmp_path / "all.csv"), "--output_dir", str(out), "--seed", "8", "--overwrite"])
    assert capsys.readouterr().err == ""


def test_an_earlier_train_csv_that_cannot_be_read_is_no_earlier_split(tmp_path):
    """rows_seen_before only warns: an empty or damaged earlier train.csv (EmptyDataError, a byte that is not
    UTF-8) made an --overwrite stop in pandas' traceback; it is no earlier split to count against."""
    from longtail.holdout import rows_seen_before

    heldout = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    for content in (b"", b"text,label\ncaf\xe9,x\n"):
        (tmp_path / "train.csv").write_bytes(content)
        assert rows_seen_before(tmp_path, heldout) is None
    (tmp_path / "train.csv").write_text("text,label\na,x\nc,z\n", "utf-8")
    assert rows_seen_before(tmp_path, heldout) == 1
