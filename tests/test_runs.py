"""Run bookkeeping: the output-folder guard, overwriting, the recorded command, early --do_predict errors."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import REPO

from longtail.data import DataArguments, DataError, prepare_data, require_test_split
from longtail.runs import OutputDirError, command_line, prepare_output_dir, public_model_name, write_json


def test_non_empty_output_dir_is_refused_unless_asked(tmp_path):
    (tmp_path / "eval_results.json").write_text("{}")
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        prepare_output_dir(tmp_path, overwrite=False)
    assert prepare_output_dir(tmp_path, overwrite=False, resuming=True) == tmp_path  # resuming is allowed
    assert prepare_output_dir(tmp_path / "new", overwrite=False).is_dir()


def test_overwrite_removes_stale_results_only(tmp_path):
    for name in ("test_results.json", "report.md", "selection_head.safetensors", "notes.txt"):
        (tmp_path / name).write_text("old")
    prepare_output_dir(tmp_path, overwrite=True)
    assert not (tmp_path / "test_results.json").exists() and not (tmp_path / "report.md").exists()
    assert not (tmp_path / "selection_head.safetensors").exists()  # else LP-FT would start from a stale head
    assert (tmp_path / "notes.txt").read_text() == "old"  # not ours: left alone


def test_overwrite_leaves_no_previous_model_to_serve(tmp_path):
    """A TF-IDF run written over a fine-tuning run's folder, and the other way round: `predict` decides what a
    folder serves by model.joblib / ensemble.json / config.json, so the old run's must go, with its merged
    adapter, exports and checkpoints; a folder that is this run's --vanilla_run and files not ours stay."""
    from longtail.predict import run_kind

    for name in ("model.joblib", "ensemble.json", "config.json", "model.safetensors", "tokenizer.json",
                 "adapter_config.json", "notes.txt"):  # fmt: skip
        (tmp_path / name).write_text("old")
    for folder in ("merged", "onnx/fp32", "checkpoint-10", "head_warmup", "vanilla", "mine"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("old")
    assert run_kind(tmp_path) == "ensemble"
    prepare_output_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt", "vanilla"]
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        prepare_output_dir(tmp_path / "notes.txt", overwrite=True)


def test_command_line_redacts_tokens():
    token = "hf_" + "x" * 30
    cmd = command_line("recipes/r.py", ["--hub_token", token, "--x", "a b", f"--hub_token={token}", token])
    # exact: every value hidden, shell quoting intact (a redaction once swallowed a closing quote)
    assert (
        cmd == "python recipes/r.py --hub_token '<redacted>' --x 'a b' '--hub_token=<redacted>' hf_<redacted>"
    )


def test_write_json_is_valid_and_scrubbed(tmp_path):
    import json

    path = write_json(tmp_path / "x.json", {"nan": float("nan"), "secret": "hf_" + "y" * 25})
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert data["nan"] is None and "y" * 25 not in path.read_text()


def test_public_model_name(tmp_path):
    assert public_model_name("answerdotai/ModernBERT-base") == "answerdotai/ModernBERT-base"
    (tmp_path / "pkg" / "model").mkdir(parents=True)
    assert public_model_name(str(tmp_path / "pkg" / "model")) == "pkg/model"  # no absolute local path


def test_do_predict_without_test_split_fails_before_training():
    train = pd.DataFrame({"text": [f"text {i}" for i in range(20)], "label": ["a", "b"] * 10})
    data = prepare_data(
        DataArguments(text_column="text", label_column="label", label_merge_map="none"), raw={"train": train}
    )
    require_test_split(data, do_predict=False)
    with pytest.raises(DataError, match="--do_predict needs a test split"):
        require_test_split(data, do_predict=True)


def test_overwrite_never_clears_what_the_new_run_reads(tmp_path):
    """LP-FT from the probe in the same folder, a rerun reusing its own splits.json: the overwrite would delete the
    model or file first and the run would fail on a folder it had just emptied. Refused, nothing removed; inputs
    the overwrite leaves alone (distill's vanilla/, a file not ours) are fine."""
    from types import SimpleNamespace

    from longtail.runs import input_paths

    for name in ("config.json", "model.safetensors", "splits.json", "report.md", "notes.csv"):
        (tmp_path / name).write_text("old")
    (tmp_path / "vanilla").mkdir()
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "model.safetensors").write_text("old")
    before = sorted(p.name for p in tmp_path.iterdir())
    for option, value in (
        ("head_init_from", tmp_path),
        ("split_indices", tmp_path / "splits.json"),
        ("model_name_or_path", tmp_path / "checkpoint-2"),
    ):
        with pytest.raises(
            OutputDirError, match=rf"--{option} .* is read from .*, which --overwrite_output_dir"
        ):
            prepare_output_dir(tmp_path, overwrite=True, inputs={f"--{option}": str(value)})
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    args = SimpleNamespace(vanilla_run=str(tmp_path / "vanilla"), train_file=str(tmp_path / "notes.csv"),
                           model_name_or_path="org/hub-model", head_init_from=None)  # fmt: skip
    inputs = input_paths(args)
    assert inputs == {"--vanilla_run": str(tmp_path / "vanilla"), "--train_file": str(tmp_path / "notes.csv")}
    prepare_output_dir(tmp_path, overwrite=True, inputs=inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv", "vanilla"]


def test_overwrite_never_deletes_a_model_that_is_not_one_of_our_runs(tmp_path):
    """--output_dir pointed at a downloaded model's folder with --overwrite_output_dir: our results may go, its
    weights may not (nothing says they are a run of ours: no run_config.json, report.md, ...)."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval_results.json"):
        (tmp_path / name).write_text("theirs")
    with pytest.raises(OutputDirError, match=r"holds model files \(config.json, model.safetensors, tokenizer.json\) "
                       "but no run of these recipes"):  # fmt: skip
        prepare_output_dir(tmp_path, overwrite=True)
    assert len(list(tmp_path.iterdir())) == 4
    (tmp_path / "run_config.json").write_text("{}")  # one of ours: replaced as a whole
    prepare_output_dir(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_a_comparisons_report_is_a_result_not_a_model_file(tmp_path):
    """compare.md was listed among model files (`MODEL_FILES`): a folder holding only it (a comparison stopped
    between compare.md and compare.json, which `write_report` writes in that order) was refused by an overwrite as
    "model files ... but no run of these recipes", and a downloaded model's refusal named it as one of its model
    files. It is a result, as score.md is: an overwrite replaces it, and the refusal names the model's files only."""
    (tmp_path / "compare.md").write_text("old")
    prepare_output_dir(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    for name in ("config.json", "compare.md"):
        (tmp_path / name).write_text("theirs")
    with pytest.raises(
        OutputDirError, match=r"holds model files \(config.json\) but no run of these recipes"
    ):
        prepare_output_dir(tmp_path, overwrite=True)


def test_overwrite_never_clears_a_folder_holding_what_the_new_run_reads(tmp_path):
    """A file inside a folder the overwrite removes (an ONNX export, a checkpoint's weights) is read too."""
    (tmp_path / "report.md").write_text("old")
    (tmp_path / "onnx" / "fp32").mkdir(parents=True)
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "model.safetensors").write_text("old")
    for value in (tmp_path / "onnx" / "fp32", tmp_path / "checkpoint-4" / "model.safetensors"):
        with pytest.raises(OutputDirError, match="which --overwrite_output_dir would clear first"):
            prepare_output_dir(tmp_path, overwrite=True, inputs={"--model_name_or_path": str(value)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "onnx", "report.md"]


def test_without_overwrite_the_refusals_an_overwrite_would_meet_come_first(tmp_path):
    """Without --overwrite_output_dir a folder the overwrite would refuse was told "Pass --overwrite_output_dir to
    replace its results", and the user who did was then refused: the run's own input read from it, a downloaded
    model's folder, a tool's `also_refuse`. Each is said first now; the plain non-empty folder still asks for it."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("theirs")
    (model / "model.safetensors").write_text("theirs")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError) as info:
            prepare_output_dir(model, overwrite, inputs={"--model_name_or_path": str(model)})
        assert str(info.value) == (
            f"--model_name_or_path {model} is read from {model}, which --overwrite_output_dir would clear first: "
            "write this run to another --output_dir."
        )
        with pytest.raises(OutputDirError, match=r"^output_dir '.*' holds model files \(config.json, "):
            prepare_output_dir(model, overwrite)
    seen = []

    def refuse(path):
        seen.append(path)
        raise OutputDirError("not ours")

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text("a run's")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match="^not ours$"):
            prepare_output_dir(run, overwrite, clear=False, also_refuse=refuse)
    assert seen == [run, run]
    with pytest.raises(OutputDirError, match="exists and is not empty. Pass --overwrite_output_dir"):
        prepare_output_dir(run, False, also_refuse=seen.append)
    assert prepare_output_dir(run, True, also_refuse=seen.append) == run and seen[-2:] == [run, run]
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    assert list(run.iterdir()) == []  # the overwrite cleared the run's report once nothing refused


def test_overwrite_logs_what_it_removed(tmp_path, caplog):
    import logging

    for name in ("report.md", "eval_results.json", "config.json"):
        (tmp_path / name).write_text("old")
    for folder in ("merged", "checkpoint-3"):
        (tmp_path / folder).mkdir()
    with caplog.at_level(logging.WARNING, logger="longtail.runs"):
        prepare_output_dir(tmp_path, overwrite=True)
    assert "removed 3 files and 2 folders of the previous run (checkpoint-3, merged)" in caplog.text


def test_checking_the_folder_and_clearing_it_are_two_steps(tmp_path):
    """prepare_output_dir(clear=False) refuses what it always refused but removes and makes nothing; the run
    clears with replace_previous_run once its own inputs pass, which never clears a resumed run's folder."""
    from longtail.runs import replace_previous_run

    out = tmp_path / "run"
    out.mkdir()
    for name in ("report.md", "notes.txt"):
        (out / name).write_text("old")
    (out / "checkpoint-2").mkdir()
    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        prepare_output_dir(out, overwrite=False, clear=False)
    assert prepare_output_dir(out, overwrite=True, clear=False) == out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "notes.txt", "report.md"]
    assert prepare_output_dir(tmp_path / "new", overwrite=False, clear=False) == tmp_path / "new"
    assert not (tmp_path / "new").exists()

    replace_previous_run(out, overwrite=True, resuming=True)  # the run goes on in its folder
    replace_previous_run(out, overwrite=False)  # the folder was empty when checked: nothing of an old run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "notes.txt", "report.md"]
    assert replace_previous_run(out, overwrite=True) == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert replace_previous_run(tmp_path / "new", overwrite=False).is_dir()


def test_command_line_reads_sys_argv_without_the_program(monkeypatch):
    monkeypatch.setattr("sys.argv", ["recipes/r.py", "--a", "b c"])
    assert command_line("recipes/r.py", None) == "python recipes/r.py --a 'b c'"


def test_source_description_hides_local_paths():
    from types import SimpleNamespace

    from longtail.runs import source_description

    def describe(**kw):
        fields = dict(train_file=None, validation_file=None, test_file=None, dataset_name="org/complaints")
        return source_description(SimpleNamespace(**{**fields, **kw}))

    assert describe(train_file="/home/me/data/train.csv", test_file="/srv/x/test.jsonl") == (
        "local files `train.csv`, `test.jsonl`"
    )
    assert describe(dataset_name="synthetic").startswith("the built-in synthetic")
    assert describe() == "`org/complaints`"


def test_public_model_name_of_a_local_folder_is_its_last_component(tmp_path):
    (tmp_path / "pkg" / "my-model").mkdir(parents=True)
    assert public_model_name(str(tmp_path / "pkg" / "my-model")) == "my-model"


def test_write_run_files_names_counts_by_class_id(tmp_path):
    """train_counts arrives in value_counts order (most frequent first), not by class id."""
    import hashlib
    import json

    from longtail.data import PreparedData
    from longtail.runs import write_run_files

    splits = {
        "train": pd.DataFrame({"row_id": [4, 0, 2], "label_id": [2, 0, 2], "text": ["x", "y", "z"]}),
        "validation": pd.DataFrame({"row_id": [3, 1], "label_id": [1, 0], "text": ["u", "v"]}),
    }
    data = PreparedData(splits, ["a", "b", "c"], {2: 5, 0: 3, 1: 1}, log={"num_classes": 3})
    write_run_files(tmp_path, data, "python r.py", {"seed": 7})
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert labels["train_counts"] == {"a": 3, "b": 1, "c": 5}
    assert labels["tiers"] == {"a": "head", "b": "head", "c": "head"}
    assert labels["data_log"] == {"num_classes": 3}
    splits = json.loads((tmp_path / "splits.json").read_text())
    # the digest of each id's normalised text, by id: what --split_indices checks the ids still name
    assert splits.pop("text_digests") == {
        "train": {i: hashlib.sha256(t.encode()).hexdigest()[:16] for i, t in zip("024", "yzx")},
        "validation": {i: hashlib.sha256(t.encode()).hexdigest()[:16] for i, t in zip("13", "vu")},
    }
    assert splits == {"train": [0, 2, 4], "validation": [1, 3]}
    config = json.loads((tmp_path / "run_config.json").read_text())
    # the environment and the fingerprints themselves: tests/test_provenance.py
    assert list(config) == ["command", "seed", "environment", "data_fingerprint"]
    assert (config["command"], config["seed"]) == ("python r.py", 7)
    assert {k: v["rows"] for k, v in config["data_fingerprint"].items()} == {"train": 3, "validation": 2}


def test_push_folder_skips_checkpoints_and_names_the_repo_after_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    from longtail.runs import push_folder

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create_repo"] = (repo_id, private, exist_ok)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/me/{repo_id}")

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls["upload_folder"] = (folder_path, repo_id, kwargs["ignore_patterns"])

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "my-run"
    assert push_folder(out, None, token="t", private=True) == "me/my-run"
    assert calls["token"] == "t" and calls["create_repo"] == ("my-run", True, True)
    folder, repo_id, ignored = calls["upload_folder"]
    assert folder == str(out) and repo_id == "me/my-run"
    assert {"checkpoint-*", "checkpoint-*/**", "runs/**"} <= set(ignored)


def test_precision_auto_resolves_by_hardware_and_an_explicit_flag_wins(tmp_path, monkeypatch):
    import torch
    from transformers import TrainingArguments

    from longtail.training import apply_precision, auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision() == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda capability=capability: capability)
        assert auto_precision() == expected, capability
    monkeypatch.undo()
    # bf16/fp16 TrainingArguments set ACCELERATE_MIXED_PRECISION: conftest's no_leaked_accelerate_env restores it

    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert apply_precision(plain, "auto") is plain and apply_precision(plain, "no") is plain  # CPU: fp32
    bf16 = apply_precision(plain, "bf16")
    assert (bf16.bf16, bf16.fp16) == (True, False) and (plain.bf16, plain.fp16) == (False, False)
    fp16 = apply_precision(plain, "fp16")
    assert (fp16.bf16, fp16.fp16) == (False, True)
    explicit = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=True)
    assert apply_precision(explicit, "fp16") is explicit and (explicit.bf16, explicit.fp16) == (True, False)


def test_a_mixed_precision_the_machine_lacks_is_one_line_naming_the_option(tiny_modernbert, tmp_path, capsys):
    """--mixed_precision bf16 on a machine without bf16 (a CPU run without --use_cpu): Transformers refuses it while
    the precision is applied, which came after the options were parsed, so it was a ValueError traceback ("Your
    setup doesn't support bf16/gpu"), where `--bf16 true` was already one line. Now a UsageError naming the option,
    before any data is read."""
    import torch
    from test_recipes import load_recipe

    from longtail.cli import UsageError, run

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bf16 may be supported")
    recipe = load_recipe("full_ft_encoder")
    argv = ["--config", str(REPO / "recipes/configs/full_ft_encoder_demo.yaml"), "--model_name_or_path",
            tiny_modernbert, "--mixed_precision", "bf16", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(UsageError) as err:
        recipe.main(argv)
    assert str(err.value).startswith("--mixed_precision bf16: Your setup doesn't support bf16/gpu.")
    assert str(err.value).endswith("(auto, the default, picks what this machine supports)")
    with pytest.raises(SystemExit) as exit_info:
        run(recipe.main, argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_early_stopping_callback_only_when_asked():
    from transformers import EarlyStoppingCallback

    from longtail.training import ModelArguments, callbacks

    assert callbacks(ModelArguments()) == []
    (callback,) = callbacks(ModelArguments(early_stopping_patience=3))
    assert isinstance(callback, EarlyStoppingCallback) and callback.early_stopping_patience == 3


def test_run_info_counts_the_global_batch_and_says_what_chose_the_checkpoint():
    import time
    from types import SimpleNamespace

    from longtail.training import run_info

    def info(load_best, do_predict, best="out/checkpoint-30", epoch=3.0, max_steps=-1, patience=None):
        args = SimpleNamespace(learning_rate=2e-5, num_train_epochs=3, per_device_train_batch_size=8, world_size=2,
                               seed=7, metric_for_best_model="macro_f1", load_best_model_at_end=load_best,
                               do_predict=do_predict, max_steps=max_steps)  # fmt: skip
        log = [
            {"eval_macro_f1": 0.2, "epoch": 1.0, "step": 10},
            {"eval_macro_f1": 0.3, "epoch": 2.0, "step": 20},
            {"eval_macro_f1": 0.25, "epoch": 3.0, "step": 30},
            {"train_loss": 0.1, "epoch": 3.0, "step": 30},
        ]
        trainer = SimpleNamespace(args=args, state=SimpleNamespace(best_model_checkpoint=best, epoch=epoch,
                                                                   log_history=log))  # fmt: skip
        return run_info(
            "full_ft_encoder", trainer, SimpleNamespace(metrics={"train_runtime": 12.34}),
            SimpleNamespace(model_name_or_path="org/model", early_stopping_patience=patience),
            SimpleNamespace(max_length=64),
            SimpleNamespace(loss="focal", class_weighting="none"), time.time(),
        )  # fmt: skip

    full = info(True, True)
    assert {k: v for k, v in full.items() if k != "total_runtime_s"} == {
        "recipe": "full_ft_encoder",
        "model": "org/model",
        "loss": "focal",
        "class_weighting": "none",
        "learning_rate": 2e-5,
        "epochs": 3,
        "batch_size": 16,
        "max_length": 64,
        "seed": 7,
        "train_runtime_s": 12.3,
        "selection": "checkpoint: best validation macro_f1 (checkpoint-30, epoch 3); test scored once at the end",
    }
    # the epoch of the evaluation logged at the checkpoint's step (the step alone did not say which epoch was kept)
    assert info(True, False, best="out/checkpoint-20")["selection"] == (
        "checkpoint: best validation macro_f1 (checkpoint-20, epoch 2)"
    )
    assert info(True, False, best="out/checkpoint-7")["selection"] == (
        "checkpoint: best validation macro_f1 (checkpoint-7)"
    )  # no evaluation logged at that step: the name alone
    last = "checkpoint: last epoch (no model selection)"
    assert info(False, False)["selection"] == last  # a best checkpoint was tracked but not loaded
    assert info(True, False, best=None)["selection"] == last
    # the epochs trained, where early stopping or --max_steps ended the run before --num_train_epochs
    assert info(True, True, epoch=2.0, patience=1)["epochs"] == "2 of 3 (early stopping, patience 1)"
    assert info(True, True, epoch=0.24, max_steps=4)["epochs"] == "0.24 (--max_steps 4)"


def test_refuse_foreign_outputs_names_what_an_overwrite_would_delete_beside_the_tools_own(tmp_path):
    """score, compare and ensemble with --overwrite_output_dir replace only their own earlier output: anything else
    an overwrite removes is named (the first five), with what the tool replaces, with or without
    --overwrite_output_dir (without it, prepare_output_dir's "Pass --overwrite_output_dir" pointed to this refusal);
    a folder not there is not checked."""
    from longtail.runs import refuse_foreign_outputs

    own = (("score.md", "score.json"), ("scored",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "score.md").write_text("earlier")
    (out / "scored").mkdir()
    refuse_foreign_outputs(out, *own, what="score")  # its own earlier output alone
    refuse_foreign_outputs(tmp_path / "missing", *own, what="score")
    for name in ("README.md", "labels.json", "model.joblib", "report.md", "splits.json"):
        (out / name).write_text("a run's")
    message = (
        f"output_dir '{out}' holds files that are not an earlier score's (README.md, labels.json, model.joblib, "
        "report.md, splits.json{}: a run's?), which --overwrite_output_dir would delete: it replaces only score.md, "
        "score.json and scored/. Choose another --output_dir."
    )
    with pytest.raises(OutputDirError) as info:
        refuse_foreign_outputs(out, *own, what="score")
    assert str(info.value) == message.format("")
    (out / "checkpoint-5").mkdir()  # a sixth: named after the files, so left out
    with pytest.raises(OutputDirError) as info:
        refuse_foreign_outputs(out, *own, what="score")
    assert str(info.value) == message.format(", ...")
    with pytest.raises(OutputDirError, match=r"it replaces only ensemble\.json\. Choose"):
        refuse_foreign_outputs(out, ("ensemble.json",), what="ensemble")
    # the marker: score.md alone is no earlier score's; a data file beside it (an overwrite leaves it) counts not
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "new_complaints.csv").write_text("text,label\n")
    (mine / ".DS_Store").write_bytes(b"")
    refuse_foreign_outputs(mine, *own, what="score", marker="score.json")
    (mine / "score.md").write_text("hand-made")
    with pytest.raises(OutputDirError) as info:
        refuse_foreign_outputs(mine, *own, what="score", marker="score.json")
    assert str(info.value) == (
        f"output_dir '{mine}' holds score.md but no score.json, so it is not an earlier score's, which is all "
        "--overwrite_output_dir replaces. Choose another --output_dir (or, if a score stopped before it wrote "
        "score.json, delete it yourself)."
    )
    (mine / "score.json").write_text("{}")
    refuse_foreign_outputs(mine, *own, what="score", marker="score.json")


def test_write_report_records_the_command_and_replaces_a_linked_report(tmp_path):
    """`<tool>.md` and `<tool>.json`: the JSON with the exact command (the tool's module, the arguments given,
    shell-quoted) and the environment; a `<tool>.md` hard-linked to another file (a folder copied with `cp -al`)
    is replaced, the other file left as it was."""
    import json
    import os

    import numpy as np

    from longtail.runs import write_report

    notes = tmp_path / "notes.md"
    notes.write_text("mine")
    os.link(notes, tmp_path / "score.md")
    result = {"counts": {"rows_read": 3}}
    write_report(tmp_path, "score", "# Scored", result, ["runs/a", "--data", "new file.csv"])
    assert notes.read_text() == "mine" and (tmp_path / "score.md").read_text() == "# Scored"
    record = json.loads((tmp_path / "score.json").read_text())
    assert record["command"] == "python -m longtail.score runs/a --data 'new file.csv'"
    assert record["counts"] == {"rows_read": 3}
    assert record["environment"]["versions"]["numpy"] == np.__version__


def test_a_folder_holding_only_hidden_files_is_empty_to_a_run(tmp_path):
    """A folder a file manager has been in (.DS_Store) was 'not empty': a run into it needed
    --overwrite_output_dir. Hidden files are no run's; a visible file still is a reason to ask."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"")
    assert prepare_output_dir(out, overwrite=False) == out
    assert (out / ".DS_Store").is_file()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="exists and is not empty"):
        prepare_output_dir(out, overwrite=False)


def test_the_run_above_a_model_folder_is_found_however_its_path_is_spelt(tmp_path, monkeypatch):
    """`adapter_run_above` and `serving_defaults` read a folder's name and parent: `.` or `..` from inside an
    adapter run's merged/, or a link to it, found no run (`Path(".").name` is ""); a merged/ that is itself a link
    elsewhere is still its run's; an export's variant given as `.` finds its parity.json one folder up.
    `checkpoint_run_above`: only `<run>/checkpoint-N` with the run's run_config.json."""
    import json
    from pathlib import Path

    from longtail.inference import serving_defaults
    from longtail.runs import adapter_run_above, checkpoint_run_above, source_run

    run, other = tmp_path / "run", tmp_path / "other"
    (run / "merged" / "notes").mkdir(parents=True)
    other.mkdir()
    for folder, length in ((run, 48), (other, 40)):
        (folder / "adapter_config.json").write_text("{}")
        (folder / "run_config.json").write_text(json.dumps({"data": {"max_length": length}}))
    (tmp_path / "link").symlink_to(run / "merged", target_is_directory=True)
    (tmp_path / "store" / "model").mkdir(parents=True)
    (other / "merged").symlink_to(tmp_path / "store" / "model", target_is_directory=True)
    spelt = (
        (run / "merged", "."),
        (run / "merged" / "notes", ".."),
        (tmp_path, "link"),
        (tmp_path, "run/merged"),
    )
    for where, given in spelt:
        monkeypatch.chdir(where)
        assert adapter_run_above(given) == run, given
        assert serving_defaults(given)["max_length"] == 48, given
    monkeypatch.chdir(tmp_path)
    assert adapter_run_above("other/merged") == other and serving_defaults("other/merged")["max_length"] == 40
    assert adapter_run_above("store/model") is None and serving_defaults("store/model")["max_length"] == 512

    for name in ("checkpoint-6", "checkpoint-best", "head_warmup"):
        (run / name).mkdir()
    (other / "checkpoint-6").mkdir()
    (other / "run_config.json").unlink()
    monkeypatch.chdir(run / "checkpoint-6")
    assert checkpoint_run_above(".") == run
    assert (
        checkpoint_run_above(run / "checkpoint-best") is None
        and checkpoint_run_above(run / "head_warmup") is None
    )
    assert checkpoint_run_above(other / "checkpoint-6") is None  # no run record above it

    # an export's variant given as `.`: its parity.json, one folder up, names the run it was made from
    (run / "onnx" / "fp32").mkdir(parents=True)
    (run / "onnx" / "fp32" / "model.onnx").write_bytes(b"")
    (run / "onnx" / "parity.json").write_text(json.dumps({"model_dir": str(run / "merged")}))
    monkeypatch.chdir(run / "onnx" / "fp32")
    assert source_run(Path(".")) == run / "merged"


def test_checkpoint_and_source_runs_only_for_their_exact_folders(tmp_path):
    """`checkpoint_run_above` takes Trainer's `checkpoint-<step>` alone (not `checkpoint-6-old`, a copy kept aside);
    `source_run` reads parity.json only for a folder holding a .onnx (a variant), and a `model_dir` there that is no
    longer a folder gives the export's default place, two folders up."""
    import json

    from longtail.runs import checkpoint_run_above, source_run

    run = tmp_path / "run"
    for name in ("checkpoint-6", "checkpoint-6-old", "checkpoint-60"):
        (run / name).mkdir(parents=True)
    (run / "run_config.json").write_text("{}")
    assert [checkpoint_run_above(run / n) for n in ("checkpoint-6", "checkpoint-6-old", "checkpoint-60")] == [
        run,
        None,
        run,
    ]
    onnx = run / "onnx"
    (onnx / "fp32").mkdir(parents=True)
    (onnx / "fp32" / "model.onnx").write_bytes(b"")
    (onnx / "notes").mkdir()
    (onnx / "parity.json").write_text(json.dumps({"model_dir": str(tmp_path / "moved")}))
    assert source_run(onnx / "fp32") == run  # the recorded folder is gone: two folders up
    assert source_run(onnx / "notes") is None  # no .onnx: not a variant
    (tmp_path / "moved").mkdir()
    assert source_run(onnx / "fp32") == tmp_path / "moved"
