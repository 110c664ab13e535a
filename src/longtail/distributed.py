"""Multi-process launches: parse a recipe's arguments so that `torchrun`/`accelerate launch` on a machine
without GPUs trains with one gloo process group, and refuse a launch the Trainer would not distribute.

Without this, TrainingArguments sets up its devices for CUDA (it does so while the arguments are parsed),
finds none and falls back to a single process: every launched process then trains alone on all the data
and writes (and pushes) the results, each over the others'.
"""

from __future__ import annotations

import gc
import os

import torch
from transformers import TrainingArguments

from longtail.cli import LaunchError, parse_config


def launched_world_size() -> int:
    """Processes started by the launcher (torchrun and accelerate set WORLD_SIZE), 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_recipe_args(parser_types, argv: list[str] | None):
    """TrlParser(parser_types).parse_args_and_config(argv), on gloo when launched on CPUs only."""
    from trl import TrlParser

    if launched_world_size() > 1 and not torch.cuda.is_available():
        # what `--use_cpu true` does; it has to be set before TrainingArguments is built
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    parser = TrlParser(parser_types)
    parsed = parse_config(parser, argv)
    for args in parsed:
        if isinstance(args, TrainingArguments):
            problem = (
                schedule_problem(args) or early_stopping_problem(parsed, args) or best_metric_problem(args)
            )
            if problem:
                parser.error(problem)
    return parsed


def early_stopping_problem(parsed, args) -> str | None:
    """--early_stopping_patience without evaluations to count (Transformers' AssertionError once training began),
    below 1 (0 turned it off unsaid), or without --load_best_model_at_end (the model past the best was kept)."""
    patience = next(
        (a.early_stopping_patience for a in parsed if hasattr(a, "early_stopping_patience")), None
    )
    if patience is None:
        return None
    if patience < 1:
        return f"--early_stopping_patience must be >= 1 (evaluations without improvement), got {patience}"
    if args.eval_strategy == "no" or args.metric_for_best_model is None:
        return (
            f"--early_stopping_patience {patience} counts evaluations of --metric_for_best_model: set "
            f"--eval_strategy steps or epoch (got {args.eval_strategy.value}) and --metric_for_best_model "
            f"(got {args.metric_for_best_model})"
        )
    if not args.load_best_model_at_end:
        # Transformers only warns: the run stops `patience` evaluations past the best one and kept that last model
        return (
            f"--early_stopping_patience {patience} stops {patience} evaluation(s) past the best one: without "
            "--load_best_model_at_end true the run would save and score that last model, not the best. Pass "
            "--load_best_model_at_end true (with --save_strategy as --eval_strategy)"
        )
    return None


def best_metric_problem(args) -> str | None:
    """A --metric_for_best_model the evaluations do not compute (Transformers' KeyError at the first evaluation, an
    epoch into training), or one whose better direction --greater_is_better contradicts: the YAMLs set it true for
    macro_f1, and `--metric_for_best_model nll` alone kept the checkpoint with the worst NLL, silently."""
    from longtail.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER

    metric = args.metric_for_best_model
    if metric is None:
        return None
    name = metric.removeprefix("eval_")  # Trainer reads both spellings
    if name not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        return (
            f"--metric_for_best_model {metric} is not a validation metric the run computes: choose one of "
            f"{', '.join(HIGHER_IS_BETTER)} (higher is better) or {', '.join(LOWER_IS_BETTER)} (lower is better)"
        )
    higher = name in HIGHER_IS_BETTER
    if args.greater_is_better is not None and bool(args.greater_is_better) != higher:
        # true: the YAMLs' (for macro_f1), or Transformers' default for a name not ending in "loss"
        given = "true (the YAMLs' setting, or Transformers' default)" if args.greater_is_better else "false"
        return (
            f"--metric_for_best_model {metric} is better when {'higher' if higher else 'lower'}, but "
            f"--greater_is_better is {given}: the run would keep the checkpoint with the worst {name}. Pass "
            f"--greater_is_better {str(higher).lower()}"
        )
    return None


def schedule_problem(args) -> str | None:
    """What in the schedule options would train nothing or fail inside torch, in the options' own terms."""
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        return (
            f"--num_train_epochs {args.num_train_epochs} trains nothing (and --max_steps is unset): the run would "
            "save its untrained model and report it"
        )
    if (
        not args.learning_rate > 0
    ):  # torch's optimizer refuses a negative one ("Invalid learning rate"); 0 trains nothing
        return f"--learning_rate must be > 0, got {args.learning_rate}"
    if args.weight_decay < 0:
        return f"--weight_decay must be >= 0, got {args.weight_decay}"
    small = {
        name: getattr(args, name)
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        )
        if getattr(args, name) < 1
    }
    if small:
        return f"{', '.join(f'--{k} {v}' for k, v in small.items())}: must be at least 1"
    return None


def check_distributed(training_args) -> None:
    """Stop a launch of N processes that the Trainer would run as N independent single-process runs."""
    launched = launched_world_size()
    if launched > 1 and training_args.world_size != launched:
        raise LaunchError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the Trainer runs each on its own "
            f"(world size {training_args.world_size}, device {training_args.device}): each would train on all "
            "the data and write the same outputs. Parse arguments with longtail.distributed.parse_recipe_args, "
            "or pass --use_cpu true on a machine without GPUs."
        )


def end_training(trainer, *more_trainers) -> None:
    """Leave the process group a multi-process launch set up, once the run's results are written (Accelerate's
    `end_training`, which every Accelerate script ends with; nothing to do for one process). Pass every trainer
    that trained in this process (the selection run, then its refit or None): the first one's accelerator ends the
    run. A process that exits still in a gloo group can abort as the interpreter shuts down, its gloo threads
    outliving it ("terminate called without an active exception"; gloo workers freeing Python-held tensors as the
    interpreter finalises, pytorch/pytorch#179291): a failed exit code for a run that finished.

    How the group goes matters as much (a deadlock seen twice in CI, the non-main rank stuck in
    ~ProcessGroupGloo joining its worker threads). A gloo worker releases each finished collective, and with it
    the Python-held tensors of that gather (a barrier keeps the collectives before it), which takes the GIL. The
    group's last owner joins those threads: when that owner is a DDP wrapper's Reducer, freed as a trainer goes,
    it joins them holding the GIL, and a worker still releasing its last gather waits for the GIL forever. A
    Python ProcessGroup object releases the GIL before it joins (pytorch/pytorch#56297). So: wait for every
    process (the non-main ranks idle in the barrier while the main rank writes the results), leave the group,
    free the trainers' DDP wrappers while a Python reference still owns the group, and drop that reference last.
    """
    trainers = [trainer, *(t for t in more_trainers if t is not None)]
    trainer.accelerator.wait_for_everyone()
    group = torch.distributed.group.WORLD if torch.distributed.is_initialized() else None
    trainer.accelerator.end_training()
    if group is None:  # one process: no group to leave
        return
    for t in trainers:
        t.accelerator.free_memory()  # the accelerator's reference to the DDP wrapper
        t.model_wrapped = t.model  # the trainer's
    gc.collect()  # wrappers of trainings already gone (a head warm-up, a vanilla arm) held in reference cycles
    del group  # the group's last owner: its threads are joined here, with the GIL released
