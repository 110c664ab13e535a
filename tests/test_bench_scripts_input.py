"""Bad input to bench/kd_step.py, bench/train_memory.py and bench/scaling.py: one clear line (argparse exit 2)
before any work, no stack trace, and no earlier results overwritten unless --overwrite."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import load_bench, refused, run_as


def load(name: str):
    return load_bench(name, f"bench_input_{name}")


# the bench scripts as modules: the kd_step, train_memory and scaling fixtures (conftest)


def model_folder(path, num_labels: int | None = None):
    """A folder with a config.json: a base model, or a saved classifier with `num_labels` labels."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "bert", "architectures": ["BertModel"]}
    if num_labels:
        config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"],
                  "id2label": {str(i): f"issue {i}" for i in range(num_labels)}}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    return path


# ----------------------------------------------------------------------------------------------- kd_step


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--temperature", "0"], "--temperature must be > 0, got 0.0"),
        (["--temperature", "-2"], "--temperature must be > 0, got -2.0"),
        (["--temperature", "nan"], "--temperature must be > 0, got nan"),
        (["--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
        (["--alpha", "-0.1"], "--alpha must be in [0, 1], got -0.1"),
        (["--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        (["--seq_len", "0"], "--seq_len must be >= 1, got 0"),
        (["--num_labels", "1"], "--num_labels must be >= 2, got 1"),
    ],
)
def test_kd_step_refuses_bad_numbers(kd_step, capsys, tmp_path, argv, message):
    line = refused(kd_step.main, [*argv, "--output_dir", str(tmp_path / "out")], capsys)
    assert line.endswith(message)
    assert not (tmp_path / "out").exists()


def test_kd_step_refuses_folders_that_are_not_a_transformer_student(kd_step, capsys, tmp_path):
    tfidf = tmp_path / "tfidf"
    tfidf.mkdir()
    (tfidf / "model.joblib").write_bytes(b"")
    assert "is a scikit-learn TF-IDF run (model.joblib)" in refused(
        kd_step.main, ["--model_dir", str(tfidf)], capsys
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    assert refused(kd_step.main, ["--model_dir", str(bare)], capsys).endswith(
        f"--model_dir {bare} has no config.json: not a transformers model folder"
    )
    assert refused(kd_step.main, ["--model_dir", str(tmp_path / "typo")], capsys).endswith(
        f"--model_dir {tmp_path / 'typo'} is not a folder"
    )


def test_kd_step_num_labels_follow_a_saved_classifier(kd_step, capsys, tmp_path):
    run = model_folder(tmp_path / "run", num_labels=5)
    out = ["--output_dir", str(tmp_path / "out")]
    assert kd_step.parse_args(["--model_dir", str(run), *out]).num_labels == 5  # read from its config
    line = refused(kd_step.main, ["--model_dir", str(run), "--num_labels", "113", *out], capsys)
    assert line.endswith(
        f"--num_labels 113 does not match the 5 labels of the classifier in {run}; "
        "pass --num_labels 5 or leave it out"
    )
    base = model_folder(tmp_path / "base")  # no classification head: the default, or what is asked
    assert kd_step.parse_args(["--model_dir", str(base), *out]).num_labels == 113
    assert kd_step.parse_args(["--model_dir", str(base), "--num_labels", "7", *out]).num_labels == 7


def test_kd_step_times_a_probe_run_as_the_student(tmp_path, tiny_modernbert):
    """A probe or LP-FT run (model_type longtail_probe) as --model_dir, in a Python that never imported
    longtail.probe: the bench stopped with Transformers' 'does not recognize this architecture', then on the
    probe config's missing vocab_size (its body's config is nested)."""
    import sys

    from conftest import REPO, save_seeded
    from transformers import AutoConfig, AutoTokenizer

    from longtail.probe import ProbeConfig, ProbeForSequenceClassification

    config = ProbeConfig(AutoConfig.from_pretrained(tiny_modernbert), num_labels=4)
    run = save_seeded(
        ProbeForSequenceClassification,
        config,
        AutoTokenizer.from_pretrained(tiny_modernbert),
        tmp_path / "probe",
    )
    out = tmp_path / "out"
    argv = ["--model_dir", str(run), "--warmup", "0", "--rounds", "1", "--batch_size", "2", "--seq_len", "16"]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kd_step.py"), *argv, "--output_dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "kd_step.json").read_text())["num_labels"] == 4


# ------------------------------------------------------------------------------------------ train_memory


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seq_len", "0"], "--seq_len must be >= 1, got 0"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
    ],
)
def test_train_memory_refuses_bad_numbers(train_memory, capsys, tmp_path, argv, message):
    model = model_folder(tmp_path / "model")
    line = refused(
        train_memory.main, [*argv, "--model_dir", str(model), "--output_dir", str(tmp_path / "out")], capsys
    )
    assert line.endswith(message)
    assert not (tmp_path / "out").exists()


def test_train_memory_explicit_model_dir_typo_is_an_error_not_a_skip(train_memory, capsys, tmp_path):
    typo = tmp_path / "Qwen2.5-0.5b"
    line = refused(train_memory.main, ["--model_dir", str(typo)], capsys)
    assert line.endswith(f"--model_dir {typo} does not exist") and "shared folder" not in line
    typo.mkdir()
    assert refused(train_memory.main, ["--model_dir", str(typo)], capsys).endswith(
        f"--model_dir {typo} has no config.json: not a transformers model folder"
    )
    # without --model_dir, an absent shared folder stays a clean skip
    out = tmp_path / "out"
    assert train_memory.main(["--shared_dir", str(tmp_path / "absent"), "--output_dir", str(out)]) == 0
    assert capsys.readouterr().out.startswith("skip:") and not out.exists()


def test_train_memory_fails_and_keeps_the_old_report_when_every_variant_fails(
    train_memory, capsys, tmp_path, monkeypatch
):
    model = model_folder(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_memory.json").write_text("good")
    monkeypatch.setattr(
        train_memory, "_subprocess", lambda argv, timeout, *a: subprocess.CompletedProcess(argv, 0, "", "")
    )
    calls = []  # the environment (its load average) is taken before the variants run, as in the other benches
    environment = train_memory.environment
    monkeypatch.setattr(train_memory, "environment", lambda: calls.append("environment") or environment())
    monkeypatch.setattr(
        train_memory,
        "run_worker",
        lambda variant, *a: calls.append(variant) or {"variant": variant, "error": "failed (exit 1): boom"},
    )
    argv = ["--model_dir", str(model), "--output_dir", str(out), "--variants", "lora", "full", "--overwrite"]
    assert train_memory.main(argv) == 1
    assert calls[0] == "environment" and calls.count("environment") == 1
    # the CPU named with its ISA flags, as the inference and scaling benches record it
    assert {"cpu", "avx2", "avx512_vnni", "amx", "load_average"} <= set(environment())
    assert "every variant failed, nothing measured" in capsys.readouterr().err
    assert (out / "train_memory.json").read_text() == "good" and not (out / "train_memory.md").exists()


# ----------------------------------------------------------------------------------------------- scaling


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        (["--seq_len", "0"], "--seq_len must be >= 1, got 0"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--models", "ettin-17m", "--onnx_model", "modernbert-base"],
         "--onnx_model modernbert-base is not among the models run (ettin-17m); add it to --models or pass "
         "--onnx_model '' to skip that section"),
        (["--models", "ettin-17m", "ettin-32m", "--mfu_model", "qwen2.5-0.5b"],
         "--mfu_model qwen2.5-0.5b is not among the models run (ettin-17m, ettin-32m); add it to --models or "
         "pass --mfu_model '' to skip that section"),
        # once a traceback from inside torch at the first tensor moved there
        (["--device", "gpu"], "--device must be cpu, cuda or cuda:N (got 'gpu')"),
    ],
)  # fmt: skip
def test_scaling_refuses_bad_input(scaling, capsys, tmp_path, argv, message):
    line = refused(scaling.main, [*argv, "--output_dir", str(tmp_path / "out")], capsys)
    assert line.endswith(message)
    assert not (tmp_path / "out").exists()


def test_scaling_refuses_a_model_whose_base_folder_is_missing(scaling, capsys, tmp_path):
    """A shared folder with ModernBERT-base but no Qwen2.5-0.5B: the encoders were timed, then Qwen's config
    failed to load (an OSError traceback) and nothing was written; now one line before any work."""
    (tmp_path / "models" / "ModernBERT-base").mkdir(parents=True)
    (tmp_path / "models" / "ModernBERT-base" / "config.json").write_text("{}")
    (tmp_path / "models" / "Qwen2.5-0.5B").mkdir()  # a folder, but no model in it
    out = tmp_path / "out"
    argv = ["--shared_dir", str(tmp_path), "--mfu_model", "", "--onnx_model", "", "--output_dir", str(out)]
    line = refused(scaling.main, [*argv, "--models", "ettin-17m", "qwen2.5-0.5b"], capsys)
    assert line.endswith(
        f"--models qwen2.5-0.5b is built from {tmp_path / 'models' / 'Qwen2.5-0.5B'}, which has no config.json: "
        "leave it out of --models"
    )
    assert not out.exists()
    assert scaling.parse_args([*argv, "--models", "ettin-17m"]).names == ["ettin-17m"]


def test_scaling_report_says_which_default_sections_were_not_run(scaling):
    args = scaling.parse_args(["--models", "ettin-17m", "--shared_dir", "/nonexistent"])
    assert set(args.not_run) == {"mfu", "onnx"}
    report = {"machine_text": "m", "gemm": {"gflops": 1.0}, "repeats": 1, "warmup": 0, "results": [],
              "claims": {}, "mfu": None, "onnx": None, "not_run": args.not_run, "texts": "t"}  # fmt: skip
    md = scaling.markdown(report)
    assert (
        "ONNX vs PyTorch: not run: --onnx_model defaults to modernbert-base, which is not among the models run "
        "(ettin-17m)." in md
    )
    assert "Share of the GEMM peak at a large batch: not run: --mfu_model defaults to modernbert-base" in md
    assert scaling.parse_args(["--shared_dir", "/nonexistent"]).not_run == {}  # the defaults run both


def test_scaling_too_few_long_texts_names_both_remedies(scaling, monkeypatch):
    def tokenizer(texts, truncation, max_length):
        return {"input_ids": [[1] * min(len(t), max_length) for t in texts]}

    run_as(monkeypatch, "scaling.py")
    with pytest.raises(SystemExit) as exc:
        scaling.real_inputs(tokenizer, ["a" * 20, "a" * 20, "a" * 3], batch_size=3, seq_len=16)
    assert str(exc.value) == (
        "scaling.py: error: only 2 of 3 texts reach 16 tokens, fewer than the batch of 3; lower --seq_len or the "
        "batch size"
    )
    assert exc.value.code == 2  # as the script's other refusals (was 1)


@pytest.mark.parametrize(
    "script, earlier, extra",
    [
        ("kd_step", "kd_step.json", []),
        ("train_memory", "train_memory.md", []),
        ("scaling", "scaling.png", ["--mfu_model", "tiny", "--onnx_model", ""]),
        ("inference", "results.json", []),  # its onnx/ without results: test_bench_inference_input
        # its other outputs alone (a results.md of someone's, a plot) were overwritten or deleted without asking
        ("inference", "results.md", []),
        ("inference", "pareto_memory.png", []),
    ],
)
def test_each_script_keeps_earlier_results_unless_overwrite(script, earlier, extra, capsys, tmp_path):
    """A second run into the same folder once replaced the first's results silently (longtail.benchmark's
    earlier_results is the one guard of every bench script)."""
    module = load(script)
    model = model_folder(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / earlier).write_text("earlier")
    where = ["--model_dirs", f"tiny={model}"] if script == "scaling" else ["--model_dir", str(model)]
    argv = [*where, *extra, "--output_dir", str(out)]
    assert refused(module.main, argv, capsys).endswith(
        f"{out} holds earlier results ({earlier}); pass --overwrite or choose another --output_dir"
    )
    assert module.parse_args([*argv, "--overwrite"]).overwrite
    assert (out / earlier).read_text() == "earlier"


def test_scaling_refuses_cuda_where_torch_has_none(scaling, capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(scaling.main, ["--device", "cuda", "--output_dir", str(tmp_path / "out")], capsys)
    assert line.endswith("--device cuda: CUDA is not available here (use --device cpu)")
    assert not (tmp_path / "out").exists()
