"""WiSE-FT (Wortsman et al. 2022): interpolate the fine-tuned weights with the weights fine-tuning started from.

LP-FT starts from a model that already classifies (the probe, or a warmed-up head); fine-tuning moves the
body towards the training rows, and on a long tail the few rows of a rare class pull it far. The
weight-space average theta(alpha) = (1 - alpha) * theta_start + alpha * theta_fine_tuned keeps part of the
starting model's features: it is one model of the same architecture (served, exported and benchmarked
like any run), not an ensemble. alpha is chosen on validation macro-F1 from a small grid that always
contains 1 (the fine-tuned model itself; ties go to the larger alpha), so validation scores after the choice
are slightly optimistic and test is not used.

Only meaningful when the start already classifies, so the recipes require `--head_init_from` or
`--head_warmup_epochs` (a fresh random head is no endpoint to average with). Full fine-tuning only: with
LoRA the adapter's start is a zero update, and interpolating its factors is not interpolating weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from longtail.cli import MissingInputError, UsageError
from longtail.metrics import macro_f1

logger = logging.getLogger(__name__)

# The weights the main run started from, kept in output_dir while the run lasts (a resumed run needs them).
START_WEIGHTS = "wise_ft_start.safetensors"


@dataclass
class WiseFTArguments:
    wise_ft_alphas: list[float] | None = field(
        default=None,
        metadata={
            "help": "WiSE-FT: after fine-tuning, try theta = (1-alpha)*theta_start + alpha*theta_ft for each "
            "alpha (1 is always tried) and keep the best validation macro-F1. Needs --head_init_from or "
            "--head_warmup_epochs (a start that already classifies). Off when unset or 1."
        },
    )

    def __post_init__(self):
        if self.wise_ft_alphas is not None:
            bad = [a for a in self.wise_ft_alphas if not 0 <= a <= 1]
            if bad:
                raise ValueError(f"--wise_ft_alphas must lie in [0, 1], got {bad}")

    @property
    def enabled(self) -> bool:
        # `--wise_ft_alphas 1` (the fine-tuned model only) turns a YAML's WiSE-FT off, e.g. for plain FT
        return any(a < 1 for a in self.wise_ft_alphas or ())

    def grid(self) -> tuple[float, ...]:
        return tuple(sorted({float(a) for a in self.wise_ft_alphas} | {1.0}))


def check_start(wise_args: WiseFTArguments, lpft_args) -> None:
    """A clear error when WiSE-FT has no classifying start to interpolate with."""
    if wise_args.enabled and not (lpft_args.head_init_from or lpft_args.head_warmup_epochs > 0):
        raise UsageError(
            "--wise_ft_alphas interpolates with the model fine-tuning started from, which must already "
            "classify: pass --head_init_from <probe run> or --head_warmup_epochs N (LP-FT), or --wise_ft_alphas 1 "
            "to turn WiSE-FT off (plain fine-tuning)"
        )


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # contiguous CPU copies of the floating tensors (integer buffers such as position ids are not averaged)
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }


def snapshot_start(
    model: torch.nn.Module, output_dir: str, resuming: bool, is_main: bool
) -> dict[str, torch.Tensor]:
    """The starting weights: taken now (and saved in output_dir for a resume), or read back when resuming."""
    path = Path(output_dir) / START_WEIGHTS
    if resuming:
        if not path.is_file():
            raise MissingInputError(
                f"--wise_ft_alphas with --resume_from_checkpoint needs {path}, saved when the run started; "
                "it is missing (rerun without resuming, or without --wise_ft_alphas)"
            )
        return load_file(str(path))
    state = float_state(model)
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
    return state


def interpolate(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict:
    """(1 - alpha) * start + alpha * end for every tensor in both (shapes must match)."""
    missing = sorted(set(end) - set(start))
    if missing:
        raise ValueError(f"WiSE-FT: the starting weights lack {missing[:5]}")
    return {k: torch.lerp(start[k].to(v.dtype), v, alpha) for k, v in end.items()}


def apply_alpha(model: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """Load (1 - alpha) * start + alpha * (the model's current weights) into the model."""
    model.load_state_dict(interpolate(start, float_state(model), alpha), strict=False)


def choose_alpha(trainer, datasets: dict, y_val: np.ndarray, start: dict, grid: tuple[float, ...]):
    """Score every alpha on validation, load the best into trainer.model and re-save it.

    Returns (alpha, rows); rows hold alpha, validation macro-F1 and accuracy."""
    model = trainer.model
    end = float_state(model)
    rows = []
    for alpha in grid:
        model.load_state_dict(interpolate(start, end, alpha), strict=False)
        out = trainer.predict(datasets["validation"], metric_key_prefix="wise_ft")
        logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        pred = np.asarray(logits).argmax(axis=1)
        rows.append(
            {
                "alpha": alpha,
                "val_macro_f1": macro_f1(y_val, pred),
                "val_accuracy": float((pred == y_val).mean()),
            }
        )
    best = max(rows, key=lambda r: (round(r["val_macro_f1"], 12), r["alpha"]))
    model.load_state_dict(interpolate(start, end, best["alpha"]), strict=False)
    logger.info("WiSE-FT: alpha=%s chosen on validation macro-F1 (%s)", best["alpha"], rows)
    trainer.save_model()  # the served model is the interpolated one
    return best["alpha"], rows


def finish(output_dir: str, is_main: bool) -> None:
    """Drop the saved starting weights once the run has chosen (they are the probe's or a warm-up's)."""
    path = Path(output_dir) / START_WEIGHTS
    if is_main and path.is_file():
        path.unlink()


def report_section(rows: list[dict], alpha: float) -> str:
    from longtail.report import grid_table

    chosen = next(r for r in rows if r["alpha"] == alpha)
    columns = {"alpha": "alpha", "validation macro-F1": "val_macro_f1", "validation accuracy": "val_accuracy"}
    return "\n".join(
        [
            "## WiSE-FT weight interpolation",
            "",
            "theta = (1 - alpha) * theta_start + alpha * theta_fine_tuned (Wortsman et al. 2022); the start is the "
            "model fine-tuning began from (the probe, or the warmed-up head). alpha chosen by validation macro-F1, "
            "ties to the larger alpha (so validation scores after the choice are slightly optimistic; test is not "
            "used).",
            "",
            grid_table(rows, columns, chosen),
        ]
    )
