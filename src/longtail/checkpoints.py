"""Resuming a run: find the last complete checkpoint in output_dir, and tell a complete checkpoint from
one a killed run left half-written.

`--resume_from_checkpoint true` picks the newest checkpoint that passes `checkpoint_problem`; a corrupt or
partial newer one is skipped with a warning. An explicit path must be complete, or the run stops with the
reason. Trainer writes `trainer_state.json` last, after the weights, optimizer, scheduler and RNG states, so
a checkpoint without it (or with a truncated one) was interrupted.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from longtail.cli import UsageError

logger = logging.getLogger(__name__)

TRUE = {"true", "yes", "1", "last", "auto"}
FALSE = {"", "false", "no", "0", "none"}
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
TORCH_STATES = ("optimizer.pt", "scheduler.pt", "scaler.pt")  # Trainer loads these with weights_only=True
TRAIN_LOSS_FILE = "train_loss.json"  # the training loss summed over a checkpoint's steps (RecordTrainLoss)
LABELS_FILE = (
    "checkpoint_labels.json"  # an adapter checkpoint has no config.json to say which labels it learnt
)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """output_dir's checkpoint-N folders, oldest first (by step number, not by mtime)."""
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    path = Path(output_dir)
    if not path.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:  # reads the header and checks that the data it announces is all there
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as err:  # noqa: BLE001 (any failure here means an unreadable file)
        return f"{path.name} is unreadable ({err})"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` cannot be resumed from (None when it is complete)."""
    path = Path(path)
    if not path.is_dir():
        return "it is not a folder"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing (the run stopped while saving it)"
    try:
        json.loads(state.read_text("utf-8"))["global_step"]
    except (ValueError, KeyError) as err:
        return f"trainer_state.json is unreadable ({err!r})"
    sharded = any(path.glob("pytorch_model_fsdp_*")) or any(path.glob("global_step*"))
    if not sharded:  # FSDP and DeepSpeed write their own layouts, which their loaders check
        present = [name for name in WEIGHTS if (path / name).is_file()]
        if not present:
            return f"no safetensors weights ({' or '.join(WEIGHTS)})"
        names = [p for p in present if p.endswith(".safetensors")]
        if "model.safetensors.index.json" in present:
            try:
                index = json.loads((path / "model.safetensors.index.json").read_text("utf-8"))
                names += sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                return f"model.safetensors.index.json is unreadable ({err!r})"
        for name in names:
            if not (path / name).is_file():
                return f"{name} is missing"
            if problem := _safetensors_problem(path / name):
                return problem
    for name in TORCH_STATES:  # torch.save writes a zip whose directory sits at the end: a cut file has none
        if (path / name).is_file() and not zipfile.is_zipfile(path / name):
            return f"{name} is truncated or corrupt"
    return None


def resolve_resume(value, output_dir: str | Path) -> str | None:
    """The checkpoint folder to resume from, or None to start from scratch.

    `value` is --resume_from_checkpoint: unset/false -> None; true -> the newest complete checkpoint in
    `output_dir` (None, with a warning, when there is none); anything else -> that folder, which must be
    complete.
    """
    if value is None or isinstance(value, bool) and not value:
        return None
    text = str(value).strip()
    if value is True or text.lower() in TRUE:
        candidates = checkpoints(output_dir)
        for candidate in reversed(candidates):
            problem = checkpoint_problem(candidate)
            if problem is None:
                logger.info("Resuming from %s", candidate)
                return str(candidate)
            logger.warning("Skipping checkpoint %s: %s; trying the one before", candidate, problem)
        logger.warning(
            "--resume_from_checkpoint true: no complete checkpoint in %s%s; starting from scratch",
            output_dir,
            f" (skipped {len(candidates)} incomplete)" if candidates else "",
        )
        return None
    if text.lower() in FALSE:
        return None
    if problem := checkpoint_problem(text):
        raise UsageError(
            f"Cannot resume from --resume_from_checkpoint '{text}': {problem}. Pass "
            "--resume_from_checkpoint true to pick the newest complete checkpoint in output_dir."
        )
    return text


class RecordLabels(TrainerCallback):
    """Writes the run's label names into each checkpoint it saves, for `fit_problem`."""

    def __init__(self, label_names: list[str]):
        self.label_names = list(label_names)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            (checkpoint / LABELS_FILE).write_text(json.dumps({"label_names": self.label_names}))


class RecordTrainLoss(TrainerCallback):
    """Keeps Trainer's `train_loss` (train_results.json: the mean training loss over every step) right across a
    resume. Trainer sums the loss of the steps it runs *in this session* and divides by every step, so a run
    resumed at step 22 of 66 reported 1.566 where the uninterrupted run reported 2.572 (the demo). Each checkpoint
    records the loss summed over its steps (`train_loss.json`), and a run resumed from it starts from that sum.
    The trainer passes its running loss in (`pending`: the part not yet logged) and calls `save` for each
    checkpoint."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.pending = None  # the loop's loss summed since its last log (a tensor), set by the trainer
        self.resume_from = None  # the checkpoint the next training resumes from, set by the trainer

    def save(self, checkpoint: Path, state) -> None:
        """Write train_loss.json into `checkpoint` (every process calls this: the gather is collective). The
        trainer calls it before Trainer's own files, so that a checkpoint complete by `checkpoint_problem` (its
        trainer_state.json, written last) holds it: a callback's on_save came after, and a kill in between left a
        checkpoint that resumed with the wrong sum."""
        pending = 0.0
        if self.pending is not None:  # every process takes part in the gather, as Trainer's own logging does
            pending = self.trainer._nested_gather(self.pending).mean().item()
        if state.is_world_process_zero:
            checkpoint.mkdir(parents=True, exist_ok=True)
            record = {"global_step": state.global_step, "loss_sum": self.trainer._total_loss_scalar + pending}
            (checkpoint / TRAIN_LOSS_FILE).write_text(json.dumps(record))

    def on_train_begin(self, args, state, control, **kwargs):
        # Trainer has just set its sum to 0 (and its step to the checkpoint's): put the checkpoint's sum back
        if not self.resume_from:
            return
        path = Path(self.resume_from) / TRAIN_LOSS_FILE
        saved = json.loads(path.read_text("utf-8")) if path.is_file() else None
        if saved is None or saved.get("global_step") != state.global_step:
            logger.warning(
                "%s has no %s (written before it existed): train_loss in train_results.json will cover only the "
                "steps run after the resume, divided by every step",
                self.resume_from,
                TRAIN_LOSS_FILE,
            )
            return
        self.trainer._total_loss_scalar = float(saved["loss_sum"])


def label_names_of(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def saved_label_names(checkpoint: Path) -> list[str] | None:
    if (checkpoint / LABELS_FILE).is_file():
        return json.loads((checkpoint / LABELS_FILE).read_text("utf-8"))["label_names"]
    if (checkpoint / "config.json").is_file():  # a whole model's checkpoint (from before the record existed)
        id2label = json.loads((checkpoint / "config.json").read_text("utf-8")).get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=int)] or None
    return None


def fit_problem(checkpoint, model) -> str | None:
    """Why this run's model cannot continue from `checkpoint` (None when it can): a LoRA adapter against whole
    weights, another rank, alpha or target modules, other labels. Trainer would fail on some of these deep in
    torch or PEFT ("size mismatch", "can't find a checkpoint index") and resume others silently (renamed labels)."""
    path = Path(checkpoint)
    if problem := checkpoint_problem(path):
        return problem
    adapter = (path / "adapter_config.json").is_file()
    peft_config = getattr(model, "peft_config", None)
    if adapter and not peft_config:
        return "it holds a LoRA adapter (adapter_config.json) and this run trains the whole model"
    if peft_config and not adapter:
        return "it holds a whole model's weights and this run trains a LoRA adapter"
    if adapter:
        saved = json.loads((path / "adapter_config.json").read_text("utf-8"))
        current = peft_config["default"]

        def norm(targets):
            return sorted(targets) if isinstance(targets, list | set | tuple) else targets

        changed = [
            f"--{option} {norm(saved.get(key))} (this run: {norm(getattr(current, key))})"
            for key, option in (
                ("r", "lora_r"),
                ("lora_alpha", "lora_alpha"),
                ("target_modules", "lora_target_modules"),
            )
            if norm(saved.get(key)) != norm(getattr(current, key))
        ]
        if changed:
            return "it was written with " + ", ".join(changed)
    saved_names, names = saved_label_names(path), label_names_of(model)
    if saved_names is not None and saved_names != names:
        only_saved = sorted(set(saved_names) - set(names))
        only_run = sorted(set(names) - set(saved_names))
        return (
            f"its labels are not this run's ({len(saved_names)} vs {len(names)} classes; only in the checkpoint: "
            f"{only_saved[:5]}; only in this run: {only_run[:5]}"
            + ("; the same labels in another order" if not only_saved and not only_run else "")
            + ")"
        )
    return None
