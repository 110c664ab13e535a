"""Layer-wise learning-rate decay (LLRD; ULMFiT's discriminative fine-tuning, as ELECTRA and BEiT use it).

With `--layer_lr_decay d` (< 1) the head and whatever sits above the last layer (final norm, pooler) train at the
configured learning rate, layer i of L at `lr * d ** (L - i)` and the embeddings (everything before layer 0) at
`lr * d ** (L + 1)`: the lower a layer, the more general its features and the less a few examples per class
should move them. It is the soft form of freezing the lower layers. Layers are found by the numbered module in a
parameter's name (`layer.3.`, `layers.3.`, `h.3.`, `blocks.3.`), which covers BERT, ModernBERT, Qwen2, Llama,
GPT-2 and a PEFT wrapper around any of them; a model with none is a clear error, never a silent no-op.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from longtail.cli import UsageError

logger = logging.getLogger(__name__)
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def parameter_depths(model) -> dict[str, int]:
    """name -> depth for every parameter: 0 for those registered before the first numbered layer (embeddings),
    i + 1 for layer i, L + 1 for those after the layers (final norm, pooler, head)."""
    names = [n for n, _ in model.named_parameters()]
    layers = [int(m.group(1)) if (m := LAYER_INDEX.search(n)) else None for n in names]
    found = [i for i in layers if i is not None]
    if not found:
        raise UsageError(
            f"--layer_lr_decay: no numbered layers (layer.N / layers.N / h.N / blocks.N) in the parameter names "
            f"of {type(model).__name__} (e.g. {names[:3]}); use --layer_lr_decay 1 for this model"
        )
    top = max(found) + 1
    depths, seen_layer = {}, False
    for name, layer in zip(names, layers, strict=True):
        if layer is not None:
            seen_layer = True
            depths[name] = layer + 1
        else:
            depths[name] = top + 1 if seen_layer else 0
    return depths


def layerwise_param_groups(
    model, learning_rate: float, decay: float, weight_decay: float, decay_names
) -> list[dict]:
    """Optimizer groups of the trainable parameters, one per (depth, weight decay or not), each with its
    learning rate; the head's group first (Trainer logs the first group's rate). `decay_names`: the parameters
    that take weight decay (`Trainer.get_decay_parameter_names`)."""
    depths = parameter_depths(model)
    top = max(depths.values())
    decay_names = set(decay_names)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth, decayed = depths[name], name in decay_names
        group = groups.setdefault(
            (depth, decayed),
            {
                "params": [],
                "lr": learning_rate * decay ** (top - depth),
                "weight_decay": weight_decay if decayed else 0.0,
            },
        )
        group["params"].append(p)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]
    layers = {int(m.group(1)) for n in depths if (m := LAYER_INDEX.search(n))}
    logger.info(
        "Layer-wise lr decay %g over %d layers: trainable parameters at %s (the head's first)",
        decay,
        len(layers),
        ", ".join(f"{r:.3g}" for r in sorted({g["lr"] for g in ordered}, reverse=True)),
    )
    return ordered


# ---------------------------------------------------------------------------------------------
# Resuming: the checkpoint's optimizer holds its own per-layer rates
# ---------------------------------------------------------------------------------------------

DECAY_FILE = "layer_lr_decay.json"


class RecordLayerDecay(TrainerCallback):
    """Writes the trainer's `layer_lr_decay` into each checkpoint it saves, for `check_resume`."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            (checkpoint / DECAY_FILE).write_text(json.dumps({"layer_lr_decay": self.trainer.layer_lr_decay}))


def resume_error(checkpoint, decay: float, saved=None) -> UsageError:
    was = (
        f"was written with --layer_lr_decay {saved}" if saved is not None else "has another optimizer layout"
    )
    return UsageError(
        f"--resume_from_checkpoint {checkpoint}: the checkpoint {was}, this run asks for --layer_lr_decay {decay}. "
        "Its optimizer state holds one parameter group per layer rate (and loading it would keep the old rates), "
        "so resume with the options it was written with (the layer decay and the parameters that train), or start "
        "a new run without --resume_from_checkpoint."
    )


def check_resume(checkpoint, decay: float) -> None:
    """Refuse a resume whose checkpoint was trained with another decay. torch would load a same-shaped optimizer
    state silently, with the checkpoint's rates, and fail on any other with its own parameter-group error."""
    path = Path(checkpoint) / DECAY_FILE
    if path.is_file():  # absent from checkpoints written by other trainers: Trainer's own load then decides
        saved = json.loads(path.read_text("utf-8"))["layer_lr_decay"]
        if saved != decay:
            raise resume_error(checkpoint, decay, saved)
