"""Multi-process launches: parse a recipe's arguments so that `torchrun`/`accelerate launch` on a machine
without GPUs trains with one gloo process group, and refuse a launch the Trainer would not distribute.

Without this, TrainingArguments sets up its devices for CUDA (it does so while the arguments are parsed),
finds none and falls back to a single process: every launched process then trains alone on all the data
and writes (and pushes) the results, each over the others'.
"""

from __future__ import annotations

import os

import torch


def launched_world_size() -> int:
    """Processes started by the launcher (torchrun and accelerate set WORLD_SIZE), 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_recipe_args(parser_types, argv: list[str] | None):
    """TrlParser(parser_types).parse_args_and_config(argv), on gloo when launched on CPUs only."""
    from trl import TrlParser

    if launched_world_size() > 1 and not torch.cuda.is_available():
        # what `--use_cpu true` does; it has to be set before TrainingArguments is built
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return TrlParser(parser_types).parse_args_and_config(argv)


def check_distributed(training_args) -> None:
    """Stop a launch of N processes that the Trainer would run as N independent single-process runs."""
    launched = launched_world_size()
    if launched > 1 and training_args.world_size != launched:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the Trainer runs each on its own "
            f"(world size {training_args.world_size}, device {training_args.device}): each would train on all "
            "the data and write the same outputs. Parse arguments with longtail.distributed.parse_recipe_args, "
            "or pass --use_cpu true on a machine without GPUs."
        )


def end_training(trainer) -> None:
    """Leave the process group a multi-process launch set up, once the run's results are written (Accelerate's
    `end_training`, which every Accelerate script ends with; nothing to do for one process). A process that exits
    still in a gloo group can abort as the interpreter shuts down, its gloo threads outliving it ("terminate called
    without an active exception"; gloo workers freeing Python-held tensors as the interpreter finalises,
    pytorch/pytorch#179291): a failed exit code for a run that finished.

    The barrier first: a gloo worker thread frees each finished collective's tensors, which takes the GIL. A rank
    with nothing left to write (every rank but the main one) would otherwise return straight after its last gather
    and free the DDP wrapper, whose process group joins those threads while holding the GIL: a deadlock (seen
    once in CI, the non-main rank stuck in ~ProcessGroupGloo). Waiting here releases the GIL until the main rank
    has written the results, so the workers are idle when the group goes."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
