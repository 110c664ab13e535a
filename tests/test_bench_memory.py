"""Smoke test of bench/train_memory.py on a tiny Qwen2 (the real benchmark is not a unit test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = str(REPO / "bench" / "train_memory.py")


def test_skips_cleanly_without_the_shared_folder(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--shared_dir",
            str(tmp_path / "absent"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("skip:")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_memory_on_a_tiny_model(tiny_qwen2, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--model_dir", tiny_qwen2, "--variants", "lora", "qlora", "--batch_size", "2",
         "--seq_len", "16", "--output_dir", str(out)],
        capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "train_memory.json").read_text())
    by = {r["variant"]: r for r in report["results"]}
    assert set(by) == {"lora", "qlora"} and all(r["peak_bytes"] > 0 for r in by.values())
    assert by["qlora"]["gradient_checkpointing"] and 0 < by["lora"]["trainable_share_pct"] < 100
    assert "qlora_vs_lora_peak_bytes" in report["ratios"]
    assert "| LoRA r16 q/k/v/o + head |" in (out / "train_memory.md").read_text()
