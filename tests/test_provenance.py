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
    splits.pop("text_digests")  # the ids' texts, checked by --split_indices (tests/test_data.py)
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
    (tmp_path / "outputs.csv").write_text("a run's own output\n")  # untracked files leave the checkout clean
    assert source_revision()["git_dirty"] is False
    (tmp_path / "README.md").write_text("edited\n")  # a tracked file that differs from the commit
    assert source_revision() == {"version": longtail.__version__, "git_commit": head, "git_dirty": True}


def test_package_versions_lists_every_installed_library_that_can_change_the_numbers(monkeypatch):
    """Each of these libraries, when installed, with its installed version and Python's; an absent one is left out
    (not recorded as None)."""
    import platform
    from importlib import metadata

    from longtail.provenance import package_versions

    libraries = ["numpy", "scipy", "scikit-learn", "pandas", "torch", "transformers", "tokenizers", "accelerate",
                 "datasets", "safetensors", "peft", "trl", "bitsandbytes"]  # fmt: skip
    installed = {}
    for name in libraries:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    assert package_versions() == {"python": platform.python_version(), **installed}
    version = metadata.version

    def without_peft(name):
        if name == "peft":
            raise metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(metadata, "version", without_peft)
    assert "peft" not in package_versions() and package_versions()["numpy"] == installed["numpy"]


def test_environment_records_the_machine_and_torchs_threads_and_device(monkeypatch):
    import platform
    import sys

    import torch

    from longtail.provenance import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = torch.get_num_threads()
    torch.set_num_threads(torch.get_num_interop_threads() + 1)  # not the inter-op pool's size
    try:
        env = environment()
        assert env["torch_threads"] == torch.get_num_interop_threads() + 1
    finally:
        torch.set_num_threads(threads)
    assert env["platform"] == platform.platform() and env["machine"] == platform.machine()
    assert env["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"Fake GPU {index}")
    assert environment()["device"] == "Fake GPU 0"
    monkeypatch.delitem(sys.modules, "torch")  # a run that never imported torch (the TF-IDF recipe)
    env = environment()
    assert (
        "torch_threads" not in env and "device" not in env and env["versions"]["torch"] == torch.__version__
    )


def test_source_revision_without_git_records_no_commit(monkeypatch):
    """No git executable (an OSError from subprocess): the version alone, no commit, no traceback."""
    import longtail
    from longtail.provenance import source_revision

    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert source_revision() == {"version": longtail.__version__, "git_commit": None, "git_dirty": None}


def test_data_fingerprint_is_the_documented_sha256_of_each_split():
    """The hash by hand: the label list as JSON (UTF-8, not escaped), then per row in row-id order
    `row_id NUL label_id NUL text NUL` (a lone surrogate kept as it is); each split hashed on its own."""
    import hashlib

    texts = pd.Series(
        ["frais été", "x\ud800y", "late"], dtype=object
    )  # object: Arrow strings refuse a surrogate
    train = pd.DataFrame({"text": texts, "label": ["b", "café", "b"],
                          "label_id": [1, 0, 1], "row_id": [12, 3, 1]})  # fmt: skip
    test = pd.DataFrame({"text": ["wrong"], "label": ["café"], "label_id": [0], "row_id": [5]})
    data = PreparedData({"train": train, "test": test}, ["café", "b"], {0: 1, 1: 2})
    labels = b'["caf\xc3\xa9", "b"]'
    rows = b"1\x001\x00late\x00" + b"3\x000\x00x\xed\xa0\x80y\x00" + b"12\x001\x00frais \xc3\xa9t\xc3\xa9\x00"
    assert data_fingerprint(data) == {
        "train": {"rows": 3, "sha256": hashlib.sha256(labels + rows).hexdigest()},
        "test": {"rows": 1, "sha256": hashlib.sha256(labels + b"5\x000\x00wrong\x00").hexdigest()},
    }
