"""Calibration: the fitted softmax temperature saved with a model and applied at prediction time.

Contract shared by the recipes, `predict` and the benchmarks: a model folder may hold
`temperature.json` = {"temperature": T, ...}; probabilities are softmax(logits / T). No file means T = 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEMPERATURE_FILE = "temperature.json"


def save_temperature(model_dir, temperature: float, **info) -> Path:
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    path = Path(model_dir) / TEMPERATURE_FILE
    path.write_text(json.dumps({"temperature": float(temperature), **info}, indent=2) + "\n", "utf-8")
    return path


def load_temperature(model_dir) -> float:
    """The temperature saved in `model_dir`, or 1.0 when it has none."""
    path = Path(model_dir) / TEMPERATURE_FILE
    if not path.is_file():
        return 1.0
    value = float(json.loads(path.read_text("utf-8"))["temperature"])
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{path}: temperature must be a positive finite number, got {value}")
    return value
