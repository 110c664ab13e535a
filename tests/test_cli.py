"""A mistake in what the user gave a recipe (options, data, folders, a model) ends the script with one line and
status 2, as argparse does; a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, refused, run_as

from longtail.cli import MissingInputError, UsageError, run


def test_run_prints_a_usage_error_as_one_line_and_keeps_tracebacks_for_bugs(monkeypatch, capsys):
    from longtail.data import DataError
    from longtail.export import ExportError
    from longtail.runs import OutputDirError

    monkeypatch.setattr(sys, "argv", ["recipes/some_recipe.py", "--seed", "3"])
    seen = []

    def refuses(argv, error=DataError):
        seen.append(argv)
        raise error("Column(s) ['body'] not found")

    for error in (DataError, OutputDirError, ExportError, MissingInputError, UsageError):
        with pytest.raises(SystemExit) as exit_info:
            run(lambda argv, error=error: refuses(argv, error))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == "some_recipe.py: error: Column(s) ['body'] not found\n"
    assert seen == [["--seed", "3"]] * 5  # the command line, without the script

    def bug(argv):
        raise ValueError("an index went wrong")  # not a UsageError: a bug in our code, shown whole

    with pytest.raises(ValueError, match="an index went wrong"):
        run(bug)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LONGTAIL_TRACEBACK", "1")  # the whole traceback of a usage error too, when asked
    with pytest.raises(DataError, match=r"Column\(s\) \['body'\] not found"):
        run(refuses)
    assert issubclass(MissingInputError, FileNotFoundError)  # callers that catch a missing file still do


def recipe_script(tmp_path, script: str, *argv: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, str(REPO / "recipes" / script), *argv, "--output_dir", str(tmp_path / "out")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "script, argv, message",
    [
        # a dataclass's own check, raised while TRL parses the options
        (
            "full_ft_encoder.py",
            ["--config", "recipes/configs/full_ft_encoder_demo.yaml", "--max_length", "0"],
            "max_length must be >= 1 (tokens), got 0",
        ),
        # after the data is read: a model path that is not there (was huggingface_hub's HFValidationError)
        (
            "probe_encoder.py",
            ["--config", "recipes/configs/probe_encoder_demo.yaml", "--model_name_or_path", "{tmp}/no_model"],
            "--model_name_or_path {tmp}/no_model is neither a local folder nor available in the Hugging Face "
            "cache, and the Hub is offline (HF_HUB_OFFLINE)",
        ),
    ],
)
def test_recipe_scripts_end_an_input_mistake_with_one_line(script, argv, message, tmp_path):
    argv = [str(REPO / a) if a.startswith("recipes/") else a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = recipe_script(tmp_path, script, *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == f"{script}: error: {message.replace('{tmp}', str(tmp_path))}"
    assert not any((tmp_path / "out").glob("*"))  # nothing written (the probe has made its folder by then)


def test_model_options_that_name_nothing_loadable_are_usage_errors(tiny_modernbert, tmp_path):
    """Each was a traceback from inside huggingface_hub or Transformers (HFValidationError for a path that is
    not there, OSError for an uncached repo id, "Unrecognized model" for a folder without config.json)."""
    from longtail.runs import TOKENIZER_FILES
    from longtail.training import ModelArguments, load_tokenizer

    (tmp_path / "weights.bin").write_text("x")
    (tmp_path / "empty").mkdir()
    runs = {
        "model.joblib": "a scikit-learn TF-IDF run (model.joblib)",
        "ensemble.json": "an ensemble (ensemble.json)",
    }
    for name in runs:  # a TF-IDF run, an ensemble: named as predict names them
        (tmp_path / name.split(".")[0]).mkdir()
        (tmp_path / name.split(".")[0] / name).write_text("{}")
    offline = "is neither a local folder nor available in the Hugging Face cache, and the Hub is offline (HF_HUB_OFFLINE)"
    no_tokenizer = f"has no {' or '.join(TOKENIZER_FILES)}: not a model folder"
    cases = {
        str(tmp_path / "absent"): offline,
        "nobody/no-such-model": offline,
        str(tmp_path / "weights.bin"): "is a file: pass a model folder or a Hugging Face Hub repo id",
        str(tmp_path / "empty"): no_tokenizer,
    }
    for name, what in runs.items():
        cases[str(tmp_path / name.split(".")[0])] = (
            f"is {what}, not a Transformers model: pass a model folder or a Hugging Face Hub repo id (such a run "
            "serves with python -m longtail.predict, and teaches through distill.py --teacher_logits)"
        )
    for name, expected in cases.items():
        with pytest.raises(UsageError) as info:
            load_tokenizer(ModelArguments(model_name_or_path=name))
        assert str(info.value) == f"--model_name_or_path {name} {expected}"
    with pytest.raises(
        UsageError, match=f"^--tokenizer_name {tmp_path / 'empty'} has no tokenizer_config.json or"
    ):
        load_tokenizer(
            ModelArguments(model_name_or_path=tiny_modernbert, tokenizer_name=str(tmp_path / "empty"))
        )
    assert load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert)).pad_token is not None
    # a config but no tokenizer files (Transformers failed converting one), then no weights (its OSError)
    import shutil

    from longtail.training import load_classifier

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(Path(tiny_modernbert) / "config.json", partial)
    with pytest.raises(UsageError, match=f"^--model_name_or_path {partial} has no tokenizer_config.json or"):
        load_tokenizer(ModelArguments(model_name_or_path=str(partial)))
    for name in Path(tiny_modernbert).iterdir():
        if "token" in name.name or name.name == "vocab.txt":
            shutil.copy(name, partial)
    args = ModelArguments(model_name_or_path=str(partial))
    with pytest.raises(
        UsageError, match=f"^--model_name_or_path {partial} has no model.safetensors or model"
    ):
        load_classifier(args, ["a", "b"], load_tokenizer(args))


def test_max_length_beyond_the_models_positions_is_refused_before_training(
    tiny_bert, tiny_modernbert, tmp_path, caplog
):
    """Past a learned position table the first text that long failed inside the model, mid-training. A rotary
    model (ModernBERT, Qwen2) runs past its trained length: that is only warned about."""
    import logging

    from test_recipes import encoder_args, load_recipe, synthetic_files
    from transformers import AutoConfig, RobertaConfig

    from longtail.inference import check_max_length
    from longtail.probe import ProbeConfig

    # first: a recipe's logging setup (basicConfig, force) drops caplog's handler
    with caplog.at_level(logging.WARNING, logger="longtail.inference"):  # rotary: runs on, with a warning
        check_max_length(AutoConfig.from_pretrained(tiny_modernbert), 513, "mb")
    assert "--max_length 513 is beyond the 512 positions mb was trained on" in caplog.text
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(UsageError) as info:
        load_recipe("full_ft_encoder").main(encoder_args(tiny_bert, train, test, out, "--max_length", "65"))
    assert str(info.value) == f"--max_length 65 exceeds the 64 positions of {tiny_bert}; use at most that"
    assert not list(out.glob("*.safetensors")) and not list(out.glob("checkpoint-*"))
    body = AutoConfig.from_pretrained(tiny_bert)
    check_max_length(body, 64, "m")  # the limit itself is allowed
    with pytest.raises(
        UsageError, match="^--teacher_max_length 70 exceeds the 64 positions of t; use at most that$"
    ):
        check_max_length(body, 70, "t", option="--teacher_max_length")
    with pytest.raises(UsageError, match="exceeds the 64 positions of p"):  # a probe: its body's table
        check_max_length(ProbeConfig(encoder_config=body.to_dict(), num_labels=3), 65, "p")
    check_max_length(ProbeConfig(num_labels=3), 10**6, "no table")  # nothing to check against
    roberta = RobertaConfig(max_position_embeddings=514, pad_token_id=1)  # positions 2..513: 512 tokens
    check_max_length(roberta, 512, "r")
    with pytest.raises(UsageError, match="^--max_length 513 exceeds the 512 positions of r"):
        check_max_length(roberta, 513, "r")


class WeightsLoaded(Exception):
    """Raised by any weight load under `refuse_weight_loads`."""


def refuse_weight_loads(monkeypatch) -> None:
    """Every weight load raises WeightsLoaded: Transformers' `from_pretrained` of any model class (the Auto classes
    and the probe's call it) and safetensors' `load_file`. Configs and tokenizers still load."""
    import safetensors.torch
    from transformers.modeling_utils import PreTrainedModel

    def loading(*args, **kwargs):
        raise WeightsLoaded

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(loading))
    monkeypatch.setattr(safetensors.torch, "load_file", loading)


@pytest.mark.parametrize(
    "case",
    ["full_ft", "full_ft_from_probe", "lora", "qlora", "probe", "probe_of_probe", "probe_roberta", "distill"],
)
def test_max_length_beyond_the_positions_is_refused_before_any_weight_loads(
    case, tiny_bert, tmp_path, monkeypatch
):
    """Each recipe reads the position table from the config: a --max_length past it is refused before the weights
    load (full FT, LoRA and QLoRA checked the loaded model, and the probe its loaded body: a large model took
    minutes to load before the one-line refusal). Also with --head_init_from a probe, and with a probe folder as the
    probe's model (its body's table). At the limit the same run goes on to load the weights (the guard's control).
    Distill already read its student's config first (no teacher exists here)."""
    from conftest import decoder_args
    from test_distill import distill_args
    from test_probe import probe_args
    from test_recipes import encoder_args, load_recipe, synthetic_files
    from transformers import AutoConfig, AutoTokenizer

    from longtail.adapters import bitsandbytes_available
    from longtail.data import prepare_data
    from longtail.distributed import parse_recipe_args
    from longtail.probe import ProbeConfig, ProbeForSequenceClassification

    if case == "qlora" and not bitsandbytes_available():
        pytest.skip("bitsandbytes is not usable here")
    train, test = synthetic_files(tmp_path)
    out, probe = tmp_path / "run", tmp_path / "probe"
    if case.endswith("probe"):  # a probe run on the BERT body, over this run's labels
        argv = encoder_args(tiny_bert, train, test, out)
        labels = prepare_data(
            parse_recipe_args(load_recipe("full_ft_encoder").PARSER_TYPES, argv)[0]
        ).label_names
        config = ProbeConfig(
            encoder_config=AutoConfig.from_pretrained(tiny_bert).to_dict(),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
        ProbeForSequenceClassification(config).save_pretrained(probe)
        AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(probe)
    if (
        case == "probe_roberta"
    ):  # RoBERTa numbers positions from its config's pad id + 1 (5 + 1 here), whatever
        from transformers import (
            RobertaConfig,
            RobertaModel,
        )  # the tokenizer pads with (0): 70 - 6 = 64 usable

        tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
        assert tokenizer.pad_token_id == 0
        RobertaModel(
            RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=70, pad_token_id=5)
        ).save_pretrained(tmp_path / "roberta")  # fmt: skip
        tokenizer.save_pretrained(tmp_path / "roberta")
    recipe, model, argv = {
        "full_ft": ("full_ft_encoder", tiny_bert, encoder_args(tiny_bert, train, test, out)),
        "full_ft_from_probe": (
            "full_ft_encoder",
            tiny_bert,
            encoder_args(tiny_bert, train, test, out, "--head_init_from", str(probe)),
        ),
        "lora": ("lora_decoder", tiny_bert, decoder_args("lora_decoder", tiny_bert, train, test, out)),
        "qlora": ("qlora_decoder", tiny_bert, decoder_args("qlora_decoder", tiny_bert, train, test, out)),
        "probe": ("probe_encoder", tiny_bert, probe_args(tiny_bert, train, test, out, tmp_path / "cache")),
        "probe_of_probe": (
            "probe_encoder",
            str(probe),
            probe_args(str(probe), train, test, out, tmp_path / "c"),
        ),
        "probe_roberta": (
            "probe_encoder",
            str(tmp_path / "roberta"),
            probe_args(str(tmp_path / "roberta"), train, test, out, tmp_path / "r"),
        ),
        "distill": (
            "distill",
            tiny_bert,
            distill_args(tiny_bert, str(tmp_path / "no_teacher"), train, test, out),
        ),
    }[case]
    refuse_weight_loads(monkeypatch)
    with pytest.raises(UsageError) as info:
        load_recipe(recipe).main([*argv, "--max_length", "65"])
    assert str(info.value).startswith(
        f"--max_length 65 exceeds the 64 positions of {model}; use at most that"
    )
    if case != "distill":  # (its control would need a teacher)
        with pytest.raises(WeightsLoaded):  # the guard sees the recipe's load
            load_recipe(recipe).main([*argv, "--max_length", "64"])


def test_online_load_failures_keep_the_hubs_reason(monkeypatch):
    """With the Hub reachable, "not available" would misreport a gated repo or one that needs remote code."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    from longtail.cli import model_source_error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert str(
        model_source_error("--model_name_or_path", "/no/such/dir", HFValidationError("Repo id must"))
    ) == ("--model_name_or_path /no/such/dir is neither a local folder nor a valid Hugging Face Hub repo id")
    gated = OSError("You are trying to access a gated repo.\nMake sure to have access to it.")
    assert str(model_source_error("--model_name_or_path", "org/gated", gated)) == (
        "--model_name_or_path org/gated cannot be loaded: You are trying to access a gated repo. Make sure to have "
        "access to it."
    )


def test_max_length_past_debertas_relative_positions_is_only_warned(caplog):
    """DeBERTa-v2/v3 read positions relatively (position_biased_input false): past max_position_embeddings it
    runs on, with a warning; with absolute positions (position_biased_input true) it is refused."""
    import logging

    from transformers import DebertaV2Config

    from longtail.inference import check_max_length

    relative = DebertaV2Config(max_position_embeddings=64, position_biased_input=False)
    with caplog.at_level(logging.WARNING, logger="longtail.inference"):
        check_max_length(relative, 65, "deb")
    assert "--max_length 65 is beyond the 64 positions deb was trained on" in caplog.text
    with pytest.raises(UsageError, match="^--max_length 65 exceeds the 64 positions of deb"):
        check_max_length(DebertaV2Config(max_position_embeddings=64, position_biased_input=True), 65, "deb")


def test_predict_and_bench_name_themselves_alike_in_argparse_errors_and_their_own(tmp_path):
    """An option argparse refuses and a mistake found later (a folder that is no model) start with the same
    program name: `predict.py` once said `predict.py: error:` for the first and `predict: error:` for the second,
    the inference bench `inference.py: error:` and `bench: error:`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    (tmp_path / "in.csv").write_text("text\nmy card was charged twice\n")
    (tmp_path / "empty").mkdir()
    tools = {
        "predict.py": [sys.executable, "-m", "longtail.predict", "--input", "in.csv", "--output", "out.csv"],
        "inference.py": [sys.executable, str(REPO / "bench" / "inference.py"), "--output_dir", "bench"],
    }
    for program, command in tools.items():
        for extra, message in (
            (["--max_length", "0"], "--max_length must be >= 1"),  # argparse's, at parse time
            ([], "empty has no config.json: not a trained classifier folder"),  # ours, on reading the folder
        ):
            argv = [*command, "--model_dir", "empty", *extra]
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 2, done.stderr[-2000:]
            line = done.stderr.strip().splitlines()[-1]
            assert line.startswith(f"{program}: error: ") and message in line, line
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("tool", ["holdout", "compare", "ensemble"])
def test_holdout_compare_ensemble_name_themselves_alike_in_argparse_errors_and_their_own(
    tool, tmp_path, capsys, monkeypatch
):
    """An option argparse refuses and a mistake found later (a missing file or run folder) start with the same
    program name, the file name of the command: argparse's was `python -m longtail.<tool>` (its prog) and ours
    `<tool>: error:`."""
    import importlib

    main = importlib.import_module(f"longtail.{tool}").main
    run_as(monkeypatch, f"{tool}.py")  # as `python -m longtail.<tool>` names itself
    missing = str(tmp_path / "missing")
    argv = {
        "holdout": ([f"{missing}.csv", "--output_dir", str(tmp_path / "d"), "--fraction", "1.5"],
                    [f"{missing}.csv", "--output_dir", str(tmp_path / "d")]),
        "compare": ([missing, "--reference", missing, "--n_resamples", "1"], [missing, "--reference", missing]),
        "ensemble": ([missing, "--output_dir", str(tmp_path / "e")],
                     [missing, f"{missing}2", "--output_dir", str(tmp_path / "e")]),
    }[tool]  # fmt: skip
    ours = {
        "holdout": f"Data file not found: {missing}.csv",
        "compare": "no such run folder",
        "ensemble": "no such run folder",
    }
    for args, message in zip(argv, ("", ours[tool]), strict=True):
        line = refused(main, args, capsys)
        assert line.startswith(f"{tool}.py: error: ") and message in line, line
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_bitsandbytes_kernels_hint_is_dropped_and_its_other_messages_pass(caplog):
    """On a CPU with AVX512-BF16, importing Trainer (which imports peft, which imports bitsandbytes) logged
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure you
    already `pip install kernels`" in every recipe run and test, a missing dependency to the reader."""
    import logging

    import longtail  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        log.warning("Failed to load the CPU library: %s", "libbitsandbytes_cpu.so")
    assert [r.getMessage() for r in caplog.records] == [
        "Failed to load the CPU library: libbitsandbytes_cpu.so"
    ]


def test_reading_model_turns_each_load_failure_into_one_line(tmp_path):
    """Inside `reading_model`: a model folder's own failure (OSError, ValueError, TypeError) becomes one line
    naming the option, whitespace folded; a UsageError from inside passes as it is; a folder of sharded pickles is
    named as pickles; a name that is nowhere offline is a MissingInputError (a FileNotFoundError too)."""
    from longtail.cli import model_source_error, reading_model

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for error in (
        OSError("weights\n   are   broken"),
        ValueError("weights\nare broken"),
        TypeError("weights are broken"),
    ):
        with pytest.raises(UsageError) as info:
            with reading_model("--model_name_or_path", str(folder)):
                raise error
        assert (
            str(info.value)
            == f"--model_name_or_path {folder} cannot be read as a model folder: weights are broken"
        )
        assert info.value.__cause__ is error
    with pytest.raises(
        UsageError
    ) as info:  # one of the files asked for is enough to read it as a model folder
        with reading_model("--tokenizer_name", str(folder), needs=("tokenizer.json", "config.json")):
            raise OSError("no vocabulary")
    assert str(info.value) == f"--tokenizer_name {folder} cannot be read as a model folder: no vocabulary"
    ours = UsageError("--max_length 65 exceeds the 64 positions of m; use at most that")
    with pytest.raises(UsageError) as info:
        with reading_model("--model_name_or_path", str(folder)):
            raise ours
    assert info.value is ours
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"")  # a sharded pickle
    ran = []
    with pytest.raises(UsageError, match="has no model.safetensors: its weights are only a pickle"):
        with reading_model("--model_name_or_path", str(folder), needs=("model.safetensors",)):
            ran.append(True)  # never reached: the folder is checked first
    assert not ran
    assert str(model_source_error("--m", str(folder), None, needs=("model.safetensors",))) == (
        f"--m {folder} has no model.safetensors: its weights are only a pickle (pytorch_model.bin), which is never "
        "loaded; save them as safetensors"
    )
    with pytest.raises(MissingInputError, match="is neither a local folder nor available"):
        with reading_model("--model_name_or_path", "nobody/no-such-model"):
            raise OSError("not in the cache")


def test_a_gguf_file_in_any_case_is_pointed_to_the_converter_and_a_folder_named_gguf_is_not(tmp_path):
    """llama.cpp's files are .gguf, but a download or a copy may say .GGUF; a folder that happens to be named
    x.gguf is a folder, with a folder's message."""
    from longtail.cli import model_source_error

    upper = tmp_path / "m.Q8_0.GGUF"
    upper.write_bytes(b"GGUF")
    assert str(model_source_error("--model_name_or_path", str(upper), None)) == (
        f"--model_name_or_path {upper} is a GGUF file: convert it once to a model folder with python -m "
        f"longtail.from_gguf {upper} --output_dir <folder>, and pass that folder"
    )
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    assert str(model_source_error("--model_name_or_path", str(folder), None)) == (
        f"--model_name_or_path {folder} has no config.json: not a model folder"
    )


def test_typed_options_leave_out_the_config_file(tmp_path):
    """`--config x.yaml` is trl's option, not the parser's: left in, argparse takes `--config` as an abbreviation
    of the one option it starts (here --config_name), which would read as typed."""
    import argparse

    from longtail.cli import typed_options

    parser = argparse.ArgumentParser()
    parser.add_argument("--config_name")
    parser.add_argument("--C", type=float, default=1.0)
    assert typed_options(parser, ["--config", "x.yaml", "--C", "3"]) == {"C"}
    # a value equal to the default, typed, is typed all the same
    assert typed_options(parser, ["--config_name", "x", "--C=1"]) == {"config_name", "C"}


def test_config_files_that_cannot_be_read_and_single_dash_leftovers(tmp_path, capsys):
    """The whole line for a folder given as --config (the OS's reason), a file that is not UTF-8 text, and an
    unknown single-dash leftover (no `--name` to list: the leftovers as TRL gives them)."""
    from trl import TrlParser

    from longtail.cli import parse_config
    from longtail.data import DataArguments

    def parse(argv):
        return parse_config(TrlParser((DataArguments,)), argv)

    assert refused(parse, ["--config", str(tmp_path)], capsys).endswith(
        f"error: --config {tmp_path} cannot be read: Is a directory"
    )
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("text_column: r\xe9clamation\n".encode("latin-1"))
    assert refused(parse, ["--config", str(latin)], capsys).endswith(
        f"error: --config {latin} is not UTF-8 text"
    )
    assert refused(parse, ["-x"], capsys).endswith(
        "error: options this recipe does not take: ['-x'] (`--help` lists its options)"
    )


def test_an_options_own_usage_error_keeps_its_class(tmp_path):
    """A dataclass check that raises a UsageError subclass (a MissingDependencyError, also an ImportError) reaches
    the caller as that class; a plain ValueError becomes a UsageError with the same words."""
    from dataclasses import dataclass

    from trl import TrlParser

    from longtail.cli import MissingDependencyError, parse_config

    @dataclass
    class Options:
        path: str = "absent.csv"
        size: int = 1

        def __post_init__(self):
            if self.size < 1:
                raise ValueError(f"--size must be >= 1, got {self.size}")
            raise MissingDependencyError(f"--path {self.path} needs pyarrow")

    with pytest.raises(MissingDependencyError, match="^--path absent.csv needs pyarrow$"):
        parse_config(TrlParser((Options,)), [])
    with pytest.raises(UsageError, match="^--size must be >= 1, got 0$") as info:
        parse_config(TrlParser((Options,)), ["--size", "0"])
    assert type(info.value) is UsageError and isinstance(info.value.__cause__, ValueError)


def test_yaml_values_of_the_wrong_type_and_nan_are_one_line_usage_errors(tmp_path, capsys):
    """argparse converts only a text default, so a YAML value went into the options as it was: a list or a fraction
    for an integer (a failure deep in Transformers or torch), one word for a list (its letters iterated: "class
    weighting must be 'none' or 'balanced', got ['a', 'b', 'c', ...]"), text in a list (YAML reads 1e-4 as text:
    a TypeError from our checks), null for a number; NaN passed every `x <= 0` check."""
    from dataclasses import dataclass, field

    from trl import TrlParser

    from longtail.cli import parse_config

    @dataclass
    class Options:
        size: int = 1
        rate: float = 1.0
        cap: int | None = None
        grid: list[float] = field(default_factory=lambda: [1.0])
        weights: list[str] = field(default_factory=lambda: ["none"])
        merge: str | None = "cfpb_2017"
        max_grad_norm: float = 1.0
        limit: float = float("inf")  # a default that is itself infinite
        floor: float | None = 0.5  # may be set to null, as its type says
        unset: int = None  # an older style of the same (no `| None`, so argparse's type is int)

    def parse(argv):
        return parse_config(TrlParser((Options,)), argv)

    config = tmp_path / "c.yaml"
    cases = {
        "size: 12.5": "size takes an integer, got 12.5",
        "size: [32]": "size takes an integer, got [32]",
        "size: true": "size takes an integer, got True",
        "rate: null": "rate is null: it takes a number",
        "grid: 1.0": "grid takes a list, e.g. [1.0], got 1.0",
        "weights: balanced": "weights takes a list, e.g. [balanced], got 'balanced'",
        "grid: [1e-4, 1]": "grid: '1e-4' is text, not a number (YAML reads 1e-4 as text: write 1.0e-4)",
        "grid: [high]": "grid: 'high' is text, not a number",
        "grid: ['0.5']": "grid: '0.5' is text, not a number (drop the quotes)",
        "size: 2.5\nrate: [1]": "size takes an integer, got 2.5; rate takes a number, got [1]",
        "weights: null": "weights is null: it takes a list",
        "grid: [1E-4]": "grid: '1E-4' is text, not a number (YAML reads 1e-4 as text: write 1.0e-4)",
        # an option that may be unset (`int | None`, whose type trl wraps to read null) is checked alike
        "cap: [32]": "cap takes an integer, got [32]",
        "cap: 2.5": "cap takes an integer, got 2.5",
        "floor: [0.5]": "floor takes a number, got [0.5]",
    }
    for text, message in cases.items():
        config.write_text(text + "\n")
        assert refused(parse, ["--config", str(config)], capsys).endswith(
            f"error: --config {config}: {message}"
        )
    for text, name in (("rate: .nan", "--rate"), ("grid: [1.0, .nan]", "--grid")):
        config.write_text(text + "\n")
        assert refused(parse, ["--config", str(config)], capsys).endswith(
            f"error: {name}: not a finite number (nan or inf)"
        )
    for value in ("nan", "inf", "-inf"):
        assert refused(parse, [f"--rate={value}"], capsys).endswith(
            "error: --rate: not a finite number (nan or inf)"
        )
    # the command line wins over the YAML: a value it sets again is not read
    config.write_text("size: 12.5\nrate: null\n")
    (options,) = parse(["--config", str(config), "--size", "4", "--rate=0.5"])
    assert (options.size, options.rate) == (4, 0.5)
    # what argparse converts, a number for a number option, null for an option that may be unset, stay valid
    # and max_grad_norm: null, which Trainer reads as no clipping
    config.write_text(
        "size: '3'\nrate: 2\ncap: null\ngrid: [0.1, 1]\nweights: [balanced]\nmerge: null\nmax_grad_norm: null\n"
        "floor: null\nunset: null\n"
    )
    (options,) = parse(["--config", str(config)])
    assert (options.size, options.rate, options.cap, options.grid, options.weights, options.merge,
            options.max_grad_norm, options.limit, options.floor, options.unset) == (
        3, 2, None, [0.1, 1], ["balanced"], None, None, float("inf"), None, None)  # fmt: skip
    config.write_text("cap: '7'\nfloor: 1\n")
    (options,) = parse(["--config", str(config)])
    assert (options.cap, options.floor) == (7, 1)


@pytest.mark.parametrize("recipe", ["baseline_tfidf", "probe_encoder", "full_ft_encoder"])
def test_a_seed_outside_what_numpy_takes_is_refused_while_the_options_are_parsed(recipe, tmp_path, capsys):
    """--seed -1 was numpy's "Seed must be between 0 and 2**32 - 1" traceback (Trainer's set_seed) or scikit-learn's
    InvalidParameterError once the features were built (TF-IDF), and --split_seed -1 numpy's "expected non-negative
    integer" from the data split; each is now one line naming the option, before any data is read."""
    from test_recipes import load_recipe

    module = load_recipe(recipe)
    config = {"baseline_tfidf": "baseline_tfidf_demo", "probe_encoder": "probe_encoder_demo"}.get(
        recipe, recipe
    )
    base = ["--config", str(REPO / f"recipes/configs/{config}.yaml"), "--output_dir", str(tmp_path / "out")]
    for option, value in (("--seed", "-1"), ("--split_seed", "-1"), ("--seed", str(2**32))):
        assert refused(module.main, [*base, option, value], capsys).endswith(
            f"error: {option} must be a whole number from 0 to 4294967295 (2**32 - 1), got {value}"
        )
    assert not (tmp_path / "out").exists()


def test_holdout_refuses_a_negative_seed(tmp_path, capsys):
    """`python -m longtail.holdout --seed -1` was numpy's ValueError traceback, after the file was read."""
    from longtail.holdout import main

    (tmp_path / "all.csv").write_text("text,label\na,x\nb,y\nc,x\n", "utf-8")
    argv = [str(tmp_path / "all.csv"), "--output_dir", str(tmp_path / "d"), "--seed", "-1"]
    assert refused(main, argv, capsys).endswith(
        "error: --seed must be a whole number from 0 to 4294967295 (2**32 - 1), got -1"
    )
    assert not (tmp_path / "d").exists()
