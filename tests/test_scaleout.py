"""Scale-out and fault tolerance: accelerate configs, real two-process runs over gloo, resume after SIGKILL,
half-written checkpoints, seeds, safetensors and trust_remote_code.

One uninterrupted single-process run per recipe (module-scoped) is the reference for the two-process run
(same global batch), the killed-and-resumed run and the repeated run; the encoder and LoRA runs refit on
train + validation, so each of those checks covers the refit too. To add a recipe, add one line to RECIPES.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, decoder_args
from test_distill import _data as distill_data
from test_distill import distill_args, save_teacher
from test_recipes import encoder_args, load_recipe, synthetic_files

ACCELERATE_CONFIGS = REPO / "accelerate_configs"
LAUNCHER = REPO / "tests" / "launch_recipe.py"
STEPS, SAVE_STEPS, GLOBAL_BATCH = 6, 2, 16
# every run: 6 optimizer steps of 16 rows, a checkpoint every 2 steps, no evaluation until the recipe's own
QUICK = [
    "--max_steps", str(STEPS), "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS),
    "--eval_strategy", "no", "--load_best_model_at_end", "false", "--save_total_limit", "3",
    "--logging_steps", "2", "--seed", "7", "--data_seed", "11",
]  # fmt: skip


def distill_scaleout_args(models, train, test, out, *extra):
    student, teacher = models
    return distill_args(student, teacher, train, test, out, *extra)


@dataclass(frozen=True)
class Recipe:
    model_fixture: str
    args: object  # (model, train, test, out, *extra) -> argv
    launcher: str  # how the two-process test starts it: "accelerate" (cpu_multi_process.yaml) or "torchrun"
    extra: tuple = ()  # options every run of this recipe adds
    ddp_extra: tuple = ()  # options only the two-process run adds


# The encoder and LoRA runs refit on train + validation, so every test below covers the refit as well: under two
# processes (a second DDP wrapper, the refit's trainer passed to end_training), after a resume (the selection run
# resumes, the refit runs whole) and from the same seeds.
REFIT = ("--refit_with_validation", "true")
RECIPES = {
    "full_ft_encoder": Recipe("tiny_modernbert", encoder_args, "accelerate", extra=REFIT),
    "lora_decoder": Recipe(
        "tiny_qwen2",
        functools.partial(decoder_args, "lora_decoder"),
        "torchrun",
        extra=("--lora_dropout", "0", *REFIT),  # dropout draws differ per process; the comparisons need none
        ddp_extra=("--gradient_checkpointing", "true"),  # + LoRA + DDP: needs use_reentrant=False
    ),
    # a tiny Qwen2 teacher into a tiny ModernBERT student; the vanilla arm is not needed here
    "distill": Recipe(
        "distill_models", distill_scaleout_args, "torchrun", extra=("--train_vanilla", "false")
    ),
}
RESUMED = ("full_ft_encoder", "lora_decoder")  # the issue asks resume for full fine-tuning and LoRA adapters


@pytest.fixture(scope="module")
def distill_models(tiny_modernbert, tiny_qwen2, files, tmp_path_factory):
    """(student, teacher): a teacher classifier with the synthetic data's label maps."""
    data = distill_data(*files, max_train_samples=240)
    return tiny_modernbert, save_teacher(
        tiny_qwen2, tmp_path_factory.mktemp("teacher") / "t", data.label_names
    )


def recipe_argv(request, name: str, files, out: Path, *extra: str) -> list[str]:
    recipe = RECIPES[name]
    model = request.getfixturevalue(recipe.model_fixture)
    return recipe.args(model, *files, out, *QUICK, *recipe.extra, *extra)


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"
    )
    env.update(extra)
    return env


def run_child(cmd: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a launch; a process of it still running a minute before `timeout` prints its threads' stacks and exits
    (launch_recipe.py), so that a hang fails with where it hung instead of a bare TimeoutExpired."""
    env = {**env, "LONGTAIL_TEST_STACKS_AFTER": str(timeout - 60)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def failure(done: subprocess.CompletedProcess) -> str:
    """A failed launch's output for the assertion message: the stack dumps of a hang come before the launcher's
    own error report, so keep more than the last lines."""
    return done.stdout[-3000:] + done.stderr[-30000:]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def assert_left_process_group(exits: Path) -> None:
    """Both processes returned from main() out of their gloo group, its worker threads gone: one still in it when the
    interpreter exits can abort ("terminate called without an active exception") after the run's results are
    written. The group went inside end_training, while the recipe still held its trainers: its last owner was
    end_training's Python reference, which joins the gloo threads with the GIL released, not a trainer's DDP
    wrapper, which joins them holding it (a deadlock seen in CI: a worker releasing a gather's tensors waits for
    the GIL). The main process returned the scored validation metrics; the other scores nothing. Neither returned
    before the main process wrote the results: the other rank waits for it, gloo-idle."""
    keys = ("rank", "in_process_group", "gloo_threads", "gloo_threads_after_end_training", "scored")
    seen = sorted(tuple(e[k] for k in (*keys, "results_written")) for e in events(exits))
    assert seen == [(0, False, 0, 0, True, True), (1, False, 0, 0, False, True)]


def predictions(out: Path, split: str = "validation") -> np.ndarray:
    with np.load(out / f"predictions_{split}.npz") as npz:
        return npz["probs"]


def losses(out: Path) -> list[float]:
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return synthetic_files(tmp_path_factory.mktemp("scaleout-data"))


@pytest.fixture(scope="module")
def reference(request, files, tmp_path_factory):
    """name -> output folder of one uninterrupted, single-process run (global batch 16), made once."""
    import torch

    import longtail.report

    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"ref-{name}") / "run"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(
                        longtail.report,
                        "score_split",
                        functools.partial(longtail.report.score_split, n_resamples=100),
                    )
                    argv = recipe_argv(request, name, files, out, "--per_device_train_batch_size", "16")
                    load_recipe(name).main(argv)
            finally:
                torch.set_num_threads(threads)
            runs[name] = out
        return runs[name]

    return get


# ---------------------------------------------------------------------------------------------
# accelerate configs
# ---------------------------------------------------------------------------------------------


def launch_args(config: Path):
    """What `accelerate launch --config_file config` resolves to (accelerate's own parsing and checks)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "recipes/full_ft_encoder.py"])
    return _validate_launch_command(args)[0]


def test_accelerate_configs_parse():
    """Every config loads with accelerate's own config classes (unknown keys raise) and resolves to the
    launcher and settings its name promises; the README documents each."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    configs = {p.stem: p for p in ACCELERATE_CONFIGS.glob("*.yaml")}
    expected = {"single_gpu", "multi_gpu", "cpu_multi_process", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    assert expected <= configs.keys() and any("node" in name for name in configs)
    readme = (REPO / "README.md").read_text()
    for name, path in configs.items():
        config = load_config_from_file(str(path))
        assert config.compute_environment.value == "LOCAL_MACHINE"
        assert f"accelerate_configs/{path.name}" in readme, f"README does not document {path.name}"
        args = launch_args(path)
        if name == "fsdp":
            assert config.distributed_type == DistributedType.FSDP and args.use_fsdp
            fsdp = config.fsdp_config
            assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
            assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
            assert fsdp["fsdp_use_orig_params"] is True  # LoRA mixes frozen and trainable parameters
        elif name.startswith("deepspeed_zero"):
            assert config.distributed_type == DistributedType.DEEPSPEED and args.use_deepspeed
            assert config.deepspeed_config["zero_stage"] == int(name[-1]) == args.zero_stage
        elif name == "cpu_multi_process":
            # torchrun with 2 processes (accelerate's MULTI_CPU type would start only one without mpirun)
            assert args.multi_gpu and not args.cpu and args.num_processes == 2
        elif "node" in name:
            assert config.num_machines > 1 and config.num_processes > config.num_machines
        else:
            assert config.num_processes == (1 if name == "single_gpu" else 2)


# ---------------------------------------------------------------------------------------------
# Two processes over gloo == one process with the same global batch
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_two_processes_match_one(name, request, files, reference, tmp_path):
    recipe = RECIPES[name]
    out, log = tmp_path / "ddp", tmp_path / "events.jsonl"
    argv = recipe_argv(request, name, files, out, "--per_device_train_batch_size", str(GLOBAL_BATCH // 2))
    argv += [*recipe.ddp_extra, "--push_to_hub", "--hub_model_id", "me/ddp-test"]
    port = str(free_port())  # not the default 29500: other runs on this machine may hold it
    if recipe.launcher == "accelerate":
        config = str(ACCELERATE_CONFIGS / "cpu_multi_process.yaml")
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
        launch += ["--main_process_port", port]
    else:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
        ]
    exits = tmp_path / "exits.jsonl"
    env = child_env(LONGTAIL_TEST_EVENTS=str(log), LONGTAIL_TEST_EXITS=str(exits))
    done = run_child([*launch, str(LAUNCHER), name, *argv], env)
    assert done.returncode == 0, failure(done)
    assert_left_process_group(exits)

    # both processes trained together: 6 steps of 16 rows, as the single process
    seen = events(log)
    ref = reference(name)
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    ref_state = json.loads((ref / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(ref_state["epoch"], abs=1e-9)
    if "--gradient_checkpointing" in recipe.ddp_extra:
        training = json.loads((out / "run_config.json").read_text())["training"]
        assert training["gradient_checkpointing"] and training["gradient_checkpointing_kwargs"] == {
            "use_reentrant": False
        }
    # results, reports and the Hub push happen once, on the main process
    assert sorted(e["event"] for e in seen) == sorted(
        ["write_run_outputs", "write_run_files", "hub_login", "hub_create_repo", "hub_upload_folder"]
    ), seen
    assert {e["rank"] for e in seen} == {0}
    # the same training and the same final evaluation as one process with the same global batch
    assert losses(out) == pytest.approx(losses(ref), abs=1e-4)
    np.testing.assert_allclose(predictions(out), predictions(ref), atol=1e-4)
    np.testing.assert_allclose(predictions(out, "test"), predictions(ref, "test"), atol=1e-4)
    for split in ("eval", "test"):
        got = json.loads((out / f"{split}_results.json").read_text())
        want = json.loads((ref / f"{split}_results.json").read_text())
        for key in ("accuracy", "macro_f1", "nll"):
            assert got[key] == pytest.approx(want[key], abs=1e-4), (split, key)
    if REFIT[0] in recipe.extra:  # validation is the selection run's, test the refit's, in both processes
        got, want = (json.loads((d / "train_results.json").read_text()) for d in (out, ref))
        assert got["refit_rows"] == want["refit_rows"] > 0
        assert got["refit_epochs"] == pytest.approx(want["refit_epochs"], abs=1e-9)


@pytest.mark.slow
def test_dropping_the_last_python_group_reference_joins_gloo_workers_without_the_gil():
    """end_training relies on it: a Python ProcessGroup's destructor releases the GIL before it joins the gloo
    workers, so a worker still releasing a gather's Python-held tensors (which takes the GIL) finishes instead of
    deadlocking. Rank 1 drops its group while its worker still waits for rank 0's half of a gather."""
    script = REPO / "tests" / "gloo_group_teardown.py"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = run_child([*launch, "--master_port", str(free_port()), str(script)], child_env(), timeout=120)
    assert done.returncode == 0, failure(done)
    waited = dict(re.findall(r"rank (\d) done in ([\d.]+) s", done.stdout))
    assert sorted(waited) == ["0", "1"], done.stdout
    assert float(waited["1"]) >= 1.0  # the drop did wait for the busy worker: the race was exercised


@pytest.mark.slow
def test_a_refused_output_folder_ends_each_process_with_its_one_line(files, tiny_modernbert, tmp_path):
    """Two processes into a folder holding other files, without --overwrite_output_dir: each process refuses with
    the one line. The main process alone used to check, so the other waited in the data block's barrier and died
    with a gloo "Connection closed by peer" traceback once the main process had exited."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = encoder_args(tiny_modernbert, *files, out, *QUICK)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    done = run_child(
        [*launch, str(free_port()), str(REPO / "recipes" / "full_ft_encoder.py"), *argv], child_env()
    )
    line = (
        f"full_ft_encoder.py: error: output_dir '{out}' exists and is not empty. Pass --overwrite_output_dir"
    )
    assert done.returncode != 0 and done.stderr.count(line) == 2, failure(done)
    assert "Connection closed" not in done.stderr and "[rank1]: Traceback" not in done.stderr, failure(done)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_multi_process_launch_without_gloo_is_refused(monkeypatch, tmp_path):
    """N launched processes that the Trainer would run as N independent runs (each writing and pushing
    the same outputs) stop with the fix in the message."""
    from transformers import TrainingArguments

    from longtail.cli import LaunchError, UsageError
    from longtail.distributed import check_distributed, launched_world_size

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.world_size == 1
    check_distributed(args)  # not launched: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_world_size() == 2
    with pytest.raises(LaunchError, match="WORLD_SIZE=2.*--use_cpu true") as raised:
        check_distributed(args)
    # one line from the command line (a UsageError), still a RuntimeError for code that catches those
    assert isinstance(raised.value, UsageError) and isinstance(raised.value, RuntimeError)


def test_parse_recipe_args_selects_gloo_on_cpu(monkeypatch):
    import torch

    from longtail.data import DataArguments
    from longtail.distributed import parse_recipe_args

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    (data_args,) = parse_recipe_args((DataArguments,), ["--max_length", "32"])
    assert data_args.max_length == 32 and "ACCELERATE_USE_CPU" not in os.environ  # one process: untouched
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parse_recipe_args((DataArguments,), [])
    assert os.environ["ACCELERATE_USE_CPU"] == "true"


def test_launch_settings_for_one_process_and_a_users_own_choice(monkeypatch):
    """Not launched: a world of 1 (WORLD_SIZE unset) and the environment untouched, as with a launch of one
    process; a launch of 2 on CPUs keeps a user's own ACCELERATE_USE_CPU. A launched process that is part of the
    Trainer's world passes; the refusal names the launch and the Trainer's world and device as they are."""
    from types import SimpleNamespace

    import torch

    from longtail.cli import LaunchError
    from longtail.data import DataArguments
    from longtail.distributed import check_distributed, launched_world_size, parse_recipe_args

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: one process, no group to set up
    parse_recipe_args((DataArguments,), [])
    assert "ACCELERATE_USE_CPU" not in os.environ
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    parse_recipe_args((DataArguments,), [])
    assert os.environ["ACCELERATE_USE_CPU"] == "false"
    check_distributed(SimpleNamespace(world_size=2, device="cpu"))  # the Trainer distributes it: fine
    with pytest.raises(LaunchError) as raised:
        check_distributed(SimpleNamespace(world_size=1, device="cuda:0"))
    assert str(raised.value) == (
        "2 processes were launched (WORLD_SIZE=2) but the Trainer runs each on its own (world size 1, device "
        "cuda:0): each would train on all the data and write the same outputs. Parse arguments with "
        "longtail.distributed.parse_recipe_args, or pass --use_cpu true on a machine without GPUs."
    )


def test_schedule_problem_names_every_option_that_trains_nothing():
    from types import SimpleNamespace

    from longtail.distributed import schedule_problem

    def args(**changed):
        base = dict(max_steps=-1, num_train_epochs=3.0, per_device_train_batch_size=8,
                    per_device_eval_batch_size=8, gradient_accumulation_steps=1, learning_rate=5e-5,
                    weight_decay=0.0)  # fmt: skip
        return SimpleNamespace(**{**base, **changed})

    assert schedule_problem(args()) is None
    assert schedule_problem(args(num_train_epochs=0.5)) is None  # half an epoch still trains
    assert schedule_problem(args(num_train_epochs=0.0, max_steps=4)) is None  # steps instead of epochs
    # --max_steps 0 is unset for the Trainer too: with 0 epochs nothing is trained
    assert schedule_problem(args(num_train_epochs=0.0, max_steps=0)) == (
        "--num_train_epochs 0.0 trains nothing (and --max_steps is unset): the run would save its untrained model "
        "and report it"
    )
    assert schedule_problem(args(per_device_eval_batch_size=0)) == (
        "--per_device_eval_batch_size 0: must be at least 1"
    )
    assert schedule_problem(args(per_device_train_batch_size=-2, gradient_accumulation_steps=0)) == (
        "--per_device_train_batch_size -2, --gradient_accumulation_steps 0: must be at least 1"
    )
    # a negative rate or decay was a traceback from torch's optimizer ("Invalid learning rate: -1.0"), after the
    # model was loaded; a rate of 0 trains nothing
    # only the option that is out of range is named
    assert schedule_problem(args(learning_rate=-1.0)) == "--learning_rate must be > 0, got -1.0"
    assert schedule_problem(args(learning_rate=0.0)) == "--learning_rate must be > 0, got 0.0"
    assert schedule_problem(args(weight_decay=-0.01)) == "--weight_decay must be >= 0, got -0.01"
    assert schedule_problem(args(weight_decay=0.0)) is None


def test_early_stopping_without_evaluations_is_refused_while_the_options_are_parsed(tmp_path, capsys):
    """--early_stopping_patience with --eval_strategy no was Transformers' AssertionError ("EarlyStoppingCallback
    requires IntervalStrategy of steps or epoch") once the data was read and the model built; 0 turned it off."""
    from test_recipes import load_recipe

    from longtail.distributed import parse_recipe_args

    config = str(REPO / "recipes/configs/full_ft_encoder_demo.yaml")
    types = load_recipe("full_ft_encoder").PARSER_TYPES
    base = ["--config", config, "--output_dir", str(tmp_path / "out")]
    for extra, message in (
        (["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"],
         "--early_stopping_patience 2 counts evaluations of --metric_for_best_model: set --eval_strategy steps or "
         "epoch (got no) and --metric_for_best_model (got macro_f1)"),
        (["--early_stopping_patience", "0"], "--early_stopping_patience must be >= 1"),
        # Transformers only warned, and the saved and scored model was the last, 2 evaluations past the best
        (["--load_best_model_at_end", "false"],
         "--early_stopping_patience 2 stops 2 evaluation(s) past the best one: without --load_best_model_at_end true "
         "the run would save and score that last model, not the best. Pass --load_best_model_at_end true (with "
         "--save_strategy as --eval_strategy)"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            parse_recipe_args(types, [*base, "--early_stopping_patience", "2", *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    parsed = parse_recipe_args(
        types, [*base, "--early_stopping_patience", "2"]
    )  # the YAML evaluates each epoch
    assert [a.early_stopping_patience for a in parsed if hasattr(a, "early_stopping_patience")] == [2]


@pytest.mark.parametrize("recipe", ["full_ft_encoder", "lora_decoder", "distill"])
def test_metric_for_best_model_is_checked_while_the_options_are_parsed(recipe, tmp_path, capsys):
    """A misspelt --metric_for_best_model (f1) was Transformers' KeyError traceback at the first evaluation, an
    epoch into training; a lower-is-better one (loss, nll) under the YAMLs' `greater_is_better: true` kept the
    checkpoint with the *worst* value, silently. Both are refused while the options are parsed; with the
    direction given, the metric is taken (with or without Trainer's `eval_` prefix)."""
    from test_recipes import load_recipe

    from longtail.distributed import parse_recipe_args

    config = {
        "full_ft_encoder": "full_ft_encoder_demo",
        "lora_decoder": "lora_decoder",
        "distill": "distill_demo",
    }
    types = load_recipe(recipe).PARSER_TYPES
    base = [
        "--config",
        str(REPO / f"recipes/configs/{config[recipe]}.yaml"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    for extra, message in (
        (["--metric_for_best_model", "f1"],
         "--metric_for_best_model f1 is not a validation metric the run computes: choose one of accuracy, "
         "macro_f1, weighted_f1, macro_f1_head, macro_f1_mid, macro_f1_tail (higher is better) or loss, nll, ece, "
         "zero_f1_classes (lower is better)"),
        (["--metric_for_best_model", "eval_num_examples"], "--metric_for_best_model eval_num_examples is not"),
        (["--metric_for_best_model", "nll"],
         "--metric_for_best_model nll is better when lower, but --greater_is_better is true (the YAMLs' "
         "setting, or Transformers' default): the run would keep the checkpoint with the worst nll. Pass "
         "--greater_is_better false"),
        (["--metric_for_best_model", "eval_loss"], "--metric_for_best_model eval_loss is better when lower"),
        (["--greater_is_better", "false"],
         "--metric_for_best_model macro_f1 is better when higher, but --greater_is_better is false"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            parse_recipe_args(types, [*base, *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    for extra, metric in (
        (["--metric_for_best_model", "nll", "--greater_is_better", "false"], "nll"),
        (["--metric_for_best_model", "eval_macro_f1_tail"], "eval_macro_f1_tail"),
        (["--metric_for_best_model", "zero_f1_classes", "--greater_is_better", "false"], "zero_f1_classes"),
        ([], "macro_f1"),
    ):
        parsed = parse_recipe_args(types, [*base, *extra])
        assert [a.metric_for_best_model for a in parsed if hasattr(a, "metric_for_best_model")] == [metric]


def test_end_training_waits_leaves_the_group_then_frees_every_trainers_wrapper(monkeypatch):
    """The order end_training's docstring gives, on fakes: wait for every process, leave the group (the first
    trainer's accelerator), free each trainer's DDP wrapper (None for a run without a refit is skipped), collect
    the cycles. One process: the barrier and end_training only."""
    from types import SimpleNamespace

    import longtail.distributed as distributed

    log = []

    class Accelerator:
        def __init__(self, name):
            self.name = name

        def wait_for_everyone(self):
            log.append(f"{self.name} waits")

        def end_training(self):
            log.append(f"{self.name} ends")

        def free_memory(self):
            log.append(f"{self.name} frees")

    def trainer(name):
        return SimpleNamespace(
            accelerator=Accelerator(name), model=f"{name} model", model_wrapped=f"{name} DDP"
        )

    fake_dist = SimpleNamespace(is_initialized=lambda: True, group=SimpleNamespace(WORLD=object()))
    monkeypatch.setattr(distributed, "torch", SimpleNamespace(distributed=fake_dist))
    monkeypatch.setattr(distributed, "gc", SimpleNamespace(collect=lambda: log.append("collected")))
    selection, refit = trainer("selection"), trainer("refit")
    distributed.end_training(selection, None, refit)
    assert log == ["selection waits", "selection ends", "selection frees", "refit frees", "collected"]
    assert (selection.model_wrapped, refit.model_wrapped) == ("selection model", "refit model")

    log.clear()
    fake_dist.is_initialized = lambda: False
    alone = trainer("alone")
    distributed.end_training(alone, None)
    assert log == ["alone waits", "alone ends"] and alone.model_wrapped == "alone DDP"


# ---------------------------------------------------------------------------------------------
# Resume after SIGKILL; half-written checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", RESUMED)
def test_resume_after_sigkill_matches_uninterrupted(
    name, request, files, reference, tmp_path, fast_bootstrap, one_torch_thread
):
    out = tmp_path / "run"
    argv = recipe_argv(request, name, files, out, "--per_device_train_batch_size", str(GLOBAL_BATCH))
    killed = run_child(
        [sys.executable, str(LAUNCHER), name, *argv], child_env(LONGTAIL_TEST_KILL_AFTER_SAVES="2")
    )
    assert killed.returncode == -9, killed.stderr[-5000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "eval_results.json").exists()
    # a later checkpoint the kill cut short: weights half-written, no trainer_state.json
    partial = out / "checkpoint-5"
    partial.mkdir()
    weights = (out / "checkpoint-4" / next(iter(weights_files(out / "checkpoint-4")))).read_bytes()
    (partial / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    if (
        name == "lora_decoder"
    ):  # a merged model from an earlier, finished run into this folder (trained further now)
        (out / "merged").mkdir()
        (out / "merged" / "model.safetensors").write_bytes(b"stale")

    # the same command again, with --resume_from_checkpoint true (the recipe resets the root log handlers,
    # so listen on the module's own logger)
    logged = RecordingHandler()
    logger = logging.getLogger("longtail.checkpoints")
    logger.addHandler(logged)
    try:
        load_recipe(name).main([*argv, "--resume_from_checkpoint", "true"])
    finally:
        logger.removeHandler(logged)
    assert any("Skipping checkpoint" in m and "checkpoint-5" in m for m in logged.messages), logged.messages
    assert f"Resuming from {out / 'checkpoint-4'}" in logged.messages
    # without --merge_adapter, no merged model is left that the resumed adapter no longer matches
    assert not (out / "merged").exists()

    ref = reference(name)
    assert losses(out) == losses(ref)  # steps 1-4 before the kill, 5-6 after it
    np.testing.assert_allclose(predictions(out), predictions(ref), rtol=0, atol=1e-6)
    np.testing.assert_allclose(predictions(out, "test"), predictions(ref, "test"), rtol=0, atol=1e-6)
    got, want = (json.loads((d / "eval_results.json").read_text()) for d in (out, ref))
    for key in ("accuracy", "macro_f1", "nll", "ece"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    # the refit ran whole after the resume, for as many epochs as the uninterrupted run's
    got, want = (json.loads((d / "train_results.json").read_text()) for d in (out, ref))
    assert got["refit_rows"] == want["refit_rows"] > 0 and got["refit_epochs"] == want["refit_epochs"]
    # the mean training loss over all 6 steps, not the 2 run after the resume divided by 6 (Trainer's own sum
    # starts again at 0 on resume; the checkpoint's train_loss.json carries it over)
    assert json.loads((out / "checkpoint-4" / "train_loss.json").read_text())["global_step"] == 4
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)


def test_checkpoints_carry_the_training_loss_summed_so_far(tmp_path, caplog):
    """train_loss.json holds the loss logged so far plus the part the loop has not logged yet (a save between two
    logs, as the demo's epoch-end checkpoints at step 22 with a log every 10 steps), and a resumed run starts its
    sum there; a checkpoint without the file (written before it existed) leaves Trainer's sum, with a warning."""
    from types import SimpleNamespace

    import torch

    from longtail.checkpoints import TRAIN_LOSS_FILE, RecordTrainLoss

    class Trainer:  # what the callback reads of a Trainer
        def __init__(self, total):
            self._total_loss_scalar = total

        def _nested_gather(self, tensor):
            return tensor

    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=22, is_world_process_zero=True)
    record = RecordTrainLoss(Trainer(50.0))  # steps 1-20 logged
    record.pending = torch.tensor(4.5)  # steps 21-22, not logged yet
    record.save(tmp_path / "checkpoint-22", state)  # before Trainer's files: it makes the folder
    assert json.loads((tmp_path / "checkpoint-22" / TRAIN_LOSS_FILE).read_text()) == {
        "global_step": 22,
        "loss_sum": 54.5,
    }

    resumed = Trainer(0.0)  # Trainer sets its sum to 0 before on_train_begin
    record = RecordTrainLoss(resumed)
    record.resume_from = str(tmp_path / "checkpoint-22")
    record.on_train_begin(args, state, None)
    assert resumed._total_loss_scalar == 54.5

    (tmp_path / "checkpoint-22" / TRAIN_LOSS_FILE).unlink()
    resumed = Trainer(0.0)
    record = RecordTrainLoss(resumed)
    record.resume_from = str(tmp_path / "checkpoint-22")
    with caplog.at_level(logging.WARNING, logger="longtail.checkpoints"):
        record.on_train_begin(args, state, None)
    assert resumed._total_loss_scalar == 0.0 and "cover only the steps run after the resume" in caplog.text


class RecordingHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def weights_files(folder: Path) -> list[str]:
    return [n for n in ("model.safetensors", "adapter_model.safetensors") if (folder / n).is_file()]


def fake_checkpoint(folder: Path, step: int, weights: str = "model.safetensors") -> Path:
    """A checkpoint folder shaped like Trainer's: weights, optimizer/scheduler states, trainer_state.json."""
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights.endswith(".safetensors"):
        save_file({"w": torch.arange(64, dtype=torch.float32)}, path / weights)
    else:
        torch.save({"w": torch.arange(64, dtype=torch.float32)}, path / weights)
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resolve_resume_skips_incomplete_checkpoints(tmp_path, caplog):
    from longtail.checkpoints import checkpoint_problem, resolve_resume

    out = tmp_path / "run"
    assert resolve_resume(None, out) is None and resolve_resume("false", out) is None
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("true", out) is None  # nothing to resume: start from scratch, say so
    assert "no complete checkpoint" in caplog.text

    good = fake_checkpoint(out, 10)
    fake_checkpoint(out, 9)  # older, complete
    assert resolve_resume("true", out) == str(good) == resolve_resume(True, out)
    assert resolve_resume(str(good), out) == str(good)

    # each way a kill or a full disk leaves a newer checkpoint incomplete
    no_state = fake_checkpoint(out, 20)
    (no_state / "trainer_state.json").unlink()
    cut_state = fake_checkpoint(out, 30)
    (cut_state / "trainer_state.json").write_text('{"global_st')
    cut_weights = fake_checkpoint(out, 40, "adapter_model.safetensors")
    truncate(cut_weights / "adapter_model.safetensors")
    cut_optimizer = fake_checkpoint(out, 50)
    truncate(cut_optimizer / "optimizer.pt")
    pickled = fake_checkpoint(out, 60, "pytorch_model.bin")  # safetensors only
    (out / "checkpoint-70").mkdir()  # created, nothing written yet
    (out / "checkpoint-notes").mkdir()  # not a checkpoint name: ignored
    problems = {
        no_state: "trainer_state.json is missing",
        cut_state: "trainer_state.json is unreadable",
        cut_weights: "adapter_model.safetensors is unreadable",
        cut_optimizer: "optimizer.pt is truncated",
        pickled: "no safetensors weights",
    }
    for path, reason in problems.items():
        assert reason in checkpoint_problem(path), path

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("true", out) == str(good)
    skipped = [r.getMessage() for r in caplog.records if "Skipping checkpoint" in r.getMessage()]
    assert len(skipped) == 6 and "checkpoint-70" in skipped[0] and "checkpoint-20" in skipped[-1]

    # an explicit path must be complete: stop with the reason, never train from a half-written state
    with pytest.raises(ValueError, match="optimizer.pt is truncated.*--resume_from_checkpoint true"):
        resolve_resume(str(cut_optimizer), out)
    with pytest.raises(ValueError, match="not a folder"):
        resolve_resume(str(out / "checkpoint-999"), out)


def test_checkpoint_problem_of_sharded_and_distributed_layouts(tmp_path):
    """A sharded model is complete only with every shard its index names; a corrupt index is a problem, not a
    crash (it used to raise JSONDecodeError out of resolve_resume). DeepSpeed and FSDP layouts are left to their
    loaders; every torch state is checked, and a trainer_state.json without global_step is unreadable."""
    import torch
    from safetensors.torch import save_file

    from longtail.checkpoints import checkpoint_problem, resolve_resume

    sharded = fake_checkpoint(tmp_path, 1, "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert checkpoint_problem(sharded) == "model-00002-of-00002.safetensors is missing"
    save_file({"b": torch.zeros(2)}, sharded / "model-00002-of-00002.safetensors")
    assert checkpoint_problem(sharded) is None
    for text in ('{"weight_map": {"a": "model-000', "{}"):
        (sharded / "model.safetensors.index.json").write_text(text)
        assert checkpoint_problem(sharded).startswith("model.safetensors.index.json is unreadable")
    assert resolve_resume("true", tmp_path) is None  # skipped with a warning

    for layout in ("global_step7", "pytorch_model_fsdp_0"):
        path = fake_checkpoint(tmp_path / layout, 7, "none")
        (path / "none").unlink()
        (path / layout).mkdir()
        assert checkpoint_problem(path) is None, layout
    for name in ("scheduler.pt", "scaler.pt"):
        path = fake_checkpoint(tmp_path / name, 3)
        torch.save({"scale": 1.0}, path / "scaler.pt")
        truncate(path / name)
        assert checkpoint_problem(path) == f"{name} is truncated or corrupt"
    no_step = fake_checkpoint(tmp_path / "no_step", 2)
    (no_step / "trainer_state.json").write_text('{"epoch": 1.0}')
    assert checkpoint_problem(no_step) == "trainer_state.json is unreadable (KeyError('global_step'))"


def test_resolve_resume_spellings_and_skip_count(tmp_path, caplog):
    from longtail.checkpoints import resolve_resume

    out = tmp_path / "run"
    for step in (3, 4):
        (fake_checkpoint(out, step) / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("true", out) is None
    assert f"no complete checkpoint in {out} (skipped 2 incomplete); starting from scratch" in caplog.text
    good = fake_checkpoint(out, 2)
    for value in ("True", " LAST ", "Auto", "1"):
        assert resolve_resume(value, out) == str(good), value
    for value in ("False", " none ", "0", ""):
        assert resolve_resume(value, out) is None, value


def test_fit_problem_reads_labels_from_config_json_in_class_id_order(tmp_path):
    """A checkpoint from before checkpoint_labels.json: config.json's id2label, ordered by id as a number
    (ten classes and more: "10" sorts before "2" as text)."""
    from types import SimpleNamespace

    from longtail.checkpoints import fit_problem, saved_label_names

    names = [f"class {i}" for i in range(12)]
    path = fake_checkpoint(tmp_path, 5)
    (path / "config.json").write_text(json.dumps({"id2label": {str(i): n for i, n in enumerate(names)}}))
    assert saved_label_names(path) == names

    def model(labels):
        return SimpleNamespace(
            config=SimpleNamespace(id2label=dict(enumerate(labels)), num_labels=len(labels))
        )

    assert fit_problem(path, model(names)) is None
    assert fit_problem(path, model(names[:11])) == (
        "its labels are not this run's (12 vs 11 classes; only in the checkpoint: ['class 11']; only in this "
        "run: [])"
    )
    assert fit_problem(path, model(names[::-1])).endswith("; the same labels in another order)")


def test_a_resumed_run_keeps_counting_evaluations_without_improvement(
    tiny_modernbert, tmp_path, fast_bootstrap
):
    """--early_stopping_patience across an interruption: Trainer restarts the count at 0 on resume unless told to
    restore it, so a run resumed one evaluation before it would have stopped trained on past that point. A rate
    too small to move the metric: step 1 sets the best, steps 2 and 3 do not beat it, patience 2 stops at 3."""
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "run"
    argv = encoder_args(
        tiny_modernbert, train, test, out, "--learning_rate", "1e-12", "--max_steps", "8", "--eval_strategy", "steps",
        "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "10",
        "--early_stopping_patience", "2",
    )  # fmt: skip
    load_recipe("full_ft_encoder").main(argv)
    assert json.loads((out / "train_results.json").read_text())["epoch"] > 0
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and not (out / "checkpoint-4").exists()  # stopped at 3
    shutil.rmtree(out / "checkpoint-3")  # interrupted right after checkpoint-2 (one evaluation without gain)
    load_recipe("full_ft_encoder").main([*argv, "--resume_from_checkpoint", "true"])
    assert (out / "checkpoint-3").is_dir() and not (out / "checkpoint-4").exists()  # stopped at 3 again
    from longtail.cli import UsageError

    # another patience on resume: the checkpoint's callback state (its patience with its count) would be restored
    # over it, silently; refused before training, naming both
    with pytest.raises(UsageError) as refused:
        load_recipe("full_ft_encoder").main(
            [*argv, "--resume_from_checkpoint", "true", "--early_stopping_patience", "3"]
        )
    assert str(refused.value) == (
        f"--resume_from_checkpoint {out / 'checkpoint-3'}: the checkpoint counts evaluations without improvement "
        "against --early_stopping_patience 2, this run asks for 3; the checkpoint's would be kept. Resume with "
        "--early_stopping_patience 2, or start a new run without --resume_from_checkpoint."
    )


def test_resume_true_without_checkpoint_keeps_the_output_guard(tmp_path):
    """`--resume_from_checkpoint true` with no checkpoint must not let a fresh run overwrite old results."""
    from longtail.checkpoints import resolve_resume
    from longtail.runs import OutputDirError, prepare_output_dir

    out = tmp_path / "done"
    out.mkdir()
    (out / "eval_results.json").write_text("{}")
    resume = resolve_resume("true", out)
    assert resume is None
    with pytest.raises(OutputDirError):
        prepare_output_dir(out, overwrite=False, resuming=resume is not None)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_seeds_make_cpu_runs_repeatable(
    request, files, reference, tmp_path, fast_bootstrap, one_torch_thread
):
    """The same --seed/--data_seed: identical metrics and probabilities; another --data_seed (another data
    order) changes them, so the comparison can fail."""
    name = "full_ft_encoder"
    ref = reference(name)
    again = tmp_path / "again"
    load_recipe(name).main(recipe_argv(request, name, files, again, "--per_device_train_batch_size", "16"))
    assert json.loads((again / "eval_results.json").read_text()) == json.loads(
        (ref / "eval_results.json").read_text()
    )
    np.testing.assert_array_equal(predictions(again), predictions(ref))

    other = tmp_path / "other-order"
    argv = recipe_argv(
        request, name, files, other, "--per_device_train_batch_size", "16", "--data_seed", "12"
    )
    load_recipe(name).main(argv)
    assert losses(other) != losses(ref)
    assert not np.allclose(predictions(other), predictions(ref), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Safety: safetensors only, no remote code unless asked
# ---------------------------------------------------------------------------------------------


def test_pickled_weights_are_refused(tiny_modernbert, tmp_path):
    """A model folder with only pytorch_model.bin (a pickle, which can run code when loaded) is refused."""
    from transformers import AutoModel

    from longtail.cli import UsageError
    from longtail.training import ModelArguments, load_classifier, load_tokenizer

    pickled = tmp_path / "pickled"
    AutoModel.from_pretrained(tiny_modernbert).save_pretrained(pickled, safe_serialization=False)
    for f in Path(tiny_modernbert).glob("*token*"):
        shutil.copy(f, pickled / f.name)
    assert (pickled / "pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    args = ModelArguments(model_name_or_path=str(pickled))
    tokenizer = load_tokenizer(args)
    with pytest.raises(
        UsageError, match="its weights are only a pickle .pytorch_model.bin., which is never loaded"
    ):
        load_classifier(args, ["a", "b"], tokenizer)


def test_remote_code_is_not_run_unless_asked(tiny_modernbert, tmp_path):
    """A model folder that ships its own code (config auto_map) is refused by default, and its code never
    runs; ModelArguments.trust_remote_code defaults to False."""
    from longtail.training import ModelArguments, classifier_config, load_tokenizer

    assert ModelArguments().trust_remote_code is False
    remote = tmp_path / "remote"
    shutil.copytree(tiny_modernbert, remote)
    marker = tmp_path / "code-ran"
    (remote / "custom_config.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import ModernBertConfig\n\n"
        "class CustomConfig(ModernBertConfig):\n    model_type = 'custom-longtail'\n"
    )
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="custom-longtail", auto_map={"AutoConfig": "custom_config.CustomConfig"})
    (remote / "config.json").write_text(json.dumps(config))
    args = ModelArguments(model_name_or_path=str(remote))
    tokenizer = load_tokenizer(args)
    with pytest.raises(ValueError, match="trust_remote_code"):
        classifier_config(args, ["a", "b"], tokenizer)
    assert not marker.exists()


def test_posthoc_shift_is_not_folded_into_a_sharded_bias():
    """Under FSDP / ZeRO-3 a process holds a shard of the head's bias: folding the shift into it would
    fail or corrupt the head, so it is skipped (with a warning) and the report says it is not in the model."""
    import torch

    from longtail.posthoc import fold_into_head

    log_prior = np.log(np.array([0.7, 0.2, 0.1]))
    head = torch.nn.Linear(4, 3)
    bias = head.bias.detach().clone()
    assert fold_into_head(head, log_prior, 0.5)
    torch.testing.assert_close(head.bias.detach(), bias - 0.5 * torch.tensor(log_prior, dtype=torch.float32))
    head.bias = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside a forward pass
    assert fold_into_head(head, log_prior, 0.5) is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_train_epochs", "-1"], "--num_train_epochs -1.0 trains nothing"),
        (["--num_train_epochs", "0"], "--num_train_epochs 0.0 trains nothing"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be at least 1"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: must be at least 1"),
    ],
)
def test_schedules_that_train_nothing_are_usage_errors(extra, message, tmp_path, capsys):
    """Once: -1 epochs saved the untrained model with a full report, a batch size of 0 failed in torch's sampler
    after the model loaded. Now the options' parse stops it, before any folder exists."""
    from longtail.distributed import parse_recipe_args

    types = load_recipe("full_ft_encoder").PARSER_TYPES
    with pytest.raises(SystemExit):
        parse_recipe_args(types, ["--output_dir", str(tmp_path / "out"), *extra])
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
    parsed = parse_recipe_args(types, ["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "0",
                                       "--max_steps", "3"])  # fmt: skip
    assert parsed[-1].max_steps == 3  # steps instead of epochs is fine


def resume_trainer(base: str, out, labels=("a", "b", "c"), lora_r: int | None = None):
    """A LongTailTrainer on tiny Qwen2 (whole, or LoRA of rank `lora_r`) that saves a checkpoint every step."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    from transformers import TrainingArguments as Args

    from longtail.adapters import AdapterArguments, add_lora
    from longtail.losses import LongTailTrainer, LossArguments

    folder = save_teacher(base, Path(out).parent / f"base-{'-'.join(labels)}", labels)  # labels and pad token
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    if lora_r:
        model = add_lora(model, AdapterArguments(lora_r=lora_r, lora_target_modules="q_proj,v_proj"))
    rows = Dataset.from_dict({**tokenizer([f"complaint {i}" for i in range(6)]), "labels": [0, 1, 2] * 2})
    args = Args(output_dir=str(out), max_steps=2, save_strategy="steps", save_steps=1, report_to=[], use_cpu=True,
                per_device_train_batch_size=6, label_names=["labels"])  # fmt: skip
    return LongTailTrainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer),
                           loss_args=LossArguments(), train_counts={0: 2, 1: 2, 2: 2})  # fmt: skip


def test_a_checkpoint_that_does_not_fit_the_run_is_refused_before_training(tiny_qwen2, tmp_path):
    """Resuming from another run's checkpoint failed deep in PEFT or torch ("size mismatch", "can't find a
    checkpoint index", or a layer-decay error naming an option neither run used), or, with renamed labels, went
    on silently with the old head. Each checkpoint now records its labels; the kind, the adapter's shape and the
    labels are compared first."""
    resume_trainer(tiny_qwen2, tmp_path / "whole").train()
    resume_trainer(tiny_qwen2, tmp_path / "lora", lora_r=4).train()
    whole, lora = tmp_path / "whole" / "checkpoint-1", tmp_path / "lora" / "checkpoint-1"
    assert json.loads((lora / "checkpoint_labels.json").read_text()) == {"label_names": ["a", "b", "c"]}
    cases = [
        (dict(lora_r=4), whole, "holds a whole model's weights and this run trains a LoRA adapter"),
        ({}, lora, r"holds a LoRA adapter \(adapter_config.json\) and this run trains the whole model"),
        (dict(lora_r=8), lora, r"written with --lora_r 4 \(this run: 8\)"),
        (dict(labels=("a", "b", "d")), whole, r"only in the checkpoint: \['c'\]; only in this run: \['d'\]"),
        (dict(labels=("a", "b", "d"), lora_r=4), lora, r"only in the checkpoint: \['c'\]"),
        (dict(labels=("c", "b", "a")), whole, "the same labels in another order"),
        (dict(labels=("a", "b")), whole, r"3 vs 2 classes"),
    ]
    for options, checkpoint, message in cases:
        trainer = resume_trainer(tiny_qwen2, tmp_path / "again", **options)
        with pytest.raises(ValueError, match=rf"--resume_from_checkpoint .*checkpoint-1: it.*{message}"):
            trainer.train(resume_from_checkpoint=str(checkpoint))
        assert trainer.state.global_step == 0, options
    trainer = resume_trainer(tiny_qwen2, tmp_path / "again", lora_r=4)
    with pytest.raises(ValueError, match="checkpoint-9: it is not a folder"):  # not "holds a whole model"
        trainer.train(resume_from_checkpoint=str(tmp_path / "lora" / "checkpoint-9"))
    for options, checkpoint in ((dict(lora_r=4), lora), ({}, whole)):  # the same options resume
        trainer = resume_trainer(tiny_qwen2, tmp_path / "again", **options)
        trainer.train(resume_from_checkpoint=str(checkpoint))
        assert trainer.state.global_step == 2


def test_resuming_from_another_folders_checkpoint_keeps_the_output_guard(tmp_path):
    """A checkpoint from elsewhere starts a new run in output_dir: a finished run there is not written over
    unasked (resuming once skipped the guard whatever the checkpoint's folder)."""
    import torch
    from safetensors.torch import save_file
    from transformers import TrainingArguments

    from longtail.runs import OutputDirError
    from longtail.training import start_run

    done = tmp_path / "done"
    done.mkdir()
    (done / "eval_results.json").write_text("{}")
    checkpoint = tmp_path / "elsewhere" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    checkpoint.joinpath("trainer_state.json").write_text('{"global_step": 1}')
    save_file({"w": torch.zeros(1)}, str(checkpoint / "model.safetensors"))
    args = TrainingArguments(
        output_dir=str(done), resume_from_checkpoint=str(checkpoint), use_cpu=True, report_to=[]
    )
    with pytest.raises(OutputDirError, match="exists and is not empty"):
        start_run(args, "no")
    inside = done / "checkpoint-1"
    shutil.copytree(checkpoint, inside)
    args = TrainingArguments(
        output_dir=str(done), resume_from_checkpoint=str(inside), use_cpu=True, report_to=[]
    )
    start_run(args, "no")  # its own checkpoint: the run continues
    assert (done / "eval_results.json").exists()
