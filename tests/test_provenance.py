"""What a run records so that it can be reproduced: library versions, the source revision, the command and
options, and a fingerprint of the rows of each split."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import sklearn
from conftest import REPO
from test_recipes import load_recipe, synthetic_files

import longtail
from longtail.data import PreparedData
from longtail.provenance import data_fingerprint


def test_a_run_records_its_environment_and_data(tmp_path):
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "run"
    load_recipe("baseline_tfidf").main(
        [
            "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", train,
            "--test_file", test, "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
            "--output_dir", str(out), "--do_predict", "--grid_C", "1.0", "--grid_sublinear_tf", "true",
            "--char_ngram_max", "0", "--refit_with_validation", "false",
        ]
    )  # fmt: skip
    config = json.loads((out / "run_config.json").read_text())
    env = config["environment"]
    # the library that fits the TF-IDF head, and the ones under the metrics, with their installed versions
    assert env["versions"]["scikit-learn"] == sklearn.__version__
    assert env["versions"]["numpy"] == np.__version__ and env["versions"]["scipy"]
    assert env["longtail"]["version"] == longtail.__version__
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        head = None
    if head is not None and head.returncode == 0:
        assert env["longtail"]["git_commit"] == head.stdout.strip()
        assert isinstance(env["longtail"]["git_dirty"], bool)
    # the seed and the command were there before; the model card names scikit-learn's version too
    assert config["baseline"]["seed"] == 42 and config["command"].startswith(
        "python recipes/baseline_tfidf.py"
    )
    assert f"- scikit-learn: {sklearn.__version__}" in (out / "README.md").read_text()

    # one fingerprint per split, over the rows splits.json lists
    splits = json.loads((out / "splits.json").read_text())
    fingerprint = config["data_fingerprint"]
    assert set(fingerprint) == set(splits) == {"train", "validation", "test"}
    for split, ids in splits.items():
        assert fingerprint[split]["rows"] == len(ids) and len(fingerprint[split]["sha256"]) == 64


def test_data_fingerprint_follows_the_rows_not_their_order():
    frame = pd.DataFrame(
        {"text": ["late fee", "closed account", "wrong balance"], "label": ["a", "b", "a"],
         "label_id": [0, 1, 0], "row_id": [3, 1, 2]}
    )  # fmt: skip

    def data(train, labels=("a", "b")):
        return PreparedData({"train": train, "test": frame}, list(labels), {0: 2, 1: 1})

    base = data_fingerprint(data(frame))
    assert base == data_fingerprint(data(frame.iloc[::-1]))  # the same rows in another order
    edited = frame.assign(text=["late fee", "closed account", "wrong balance!"])
    changed = data_fingerprint(data(edited))
    assert changed["train"] != base["train"] and changed["test"] == base["test"]
    relabelled = frame.assign(label_id=[0, 1, 1])
    assert data_fingerprint(data(relabelled))["train"] != base["train"]
    assert data_fingerprint(data(frame, ("b", "a")))["train"] != base["train"]  # another label order
    assert base["train"]["rows"] == 3


def test_a_copy_of_the_package_untracked_in_an_enclosing_checkout_records_no_commit(tmp_path, monkeypatch):
    """A non-editable install into a .venv inside some git checkout: that checkout's commit is not this code's."""
    import shutil

    import longtail
    from longtail.provenance import source_revision

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "README.md").write_text("another project\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    package = tmp_path / ".venv" / "site-packages" / "longtail"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(longtail, "__file__", str(package / "__init__.py"))
    assert source_revision()["git_commit"] is None
    subprocess.run([*git, "add", "-f", str(package / "__init__.py")], check=True)  # now tracked: its checkout
    subprocess.run([*git, "commit", "-q", "-m", "track"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert source_revision() == {"version": longtail.__version__, "git_commit": head, "git_dirty": False}
