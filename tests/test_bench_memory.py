"""Smoke test of bench/train_memory.py on a tiny Qwen2 (the real benchmark is not a unit test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, load_bench, memory_markdown

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


@pytest.fixture
def train_memory():
    return load_bench("train_memory")


@pytest.mark.slow
def test_train_memory_on_a_tiny_model(train_memory, tiny_qwen2, tmp_path, monkeypatch, capsys):
    """QLoRA, the variant with every piece (4-bit base, gradient checkpointing, LoRA, fp32 head), in a fresh
    process as the benchmark measures it; the driver and the checkpoint's preparation (through the script's own
    --_prepare entry) run in this process, where torch and transformers are loaded already. A process costs
    ~8 s of imports, the tiny model's step nothing: the former 4 processes (LoRA too) took 27-45 s. How two
    variants compare is test_two_variants_are_compared, on known numbers."""
    real = train_memory._subprocess

    def run(argv, timeout, malloc_mmap_threshold=0):
        if "--_prepare" in argv:
            return subprocess.CompletedProcess(argv, train_memory.main(argv), "", "")
        return real(argv, timeout, malloc_mmap_threshold)

    monkeypatch.setattr(train_memory, "_subprocess", run)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker's environment
    out = tmp_path / "bench"
    argv = ["--model_dir", tiny_qwen2, "--variants", "qlora", "--batch_size", "2", "--seq_len", "16",
            "--output_dir", str(out)]  # fmt: skip
    assert train_memory.main(argv) == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "train_memory.json").read_text())
    [qlora] = report["results"]
    assert (
        qlora["variant"] == "qlora"
        and qlora["peak_bytes"] >= qlora["load_peak_bytes"] >= qlora["baseline_bytes"] > 0
    )
    assert qlora["peak_bytes_runs"] == [qlora["peak_bytes"]]  # one run, the median of one
    assert qlora["gradient_checkpointing"] and 0 < qlora["trainable_share_pct"] < 100
    assert report["settings"]["batch_size"] == 2 and report["settings"]["seq_len"] == 16
    md = (out / "train_memory.md").read_text()
    assert "| QLoRA: 4-bit NF4 base + LoRA + fp32 head, gradient checkpointing |" in md
    assert "batch 2 x 16 tokens" in md


def test_two_variants_are_compared(train_memory):
    """The ratios and the verdict line of a LoRA and a QLoRA result (GiB: baseline 0.5; LoRA load 2, step 3,
    peak 4; QLoRA load 1.5, step 0.75, peak 1.5)."""
    gib = train_memory.GIB

    def result(variant, load, step, peak):
        return {"variant": variant, "description": train_memory.DESCRIPTIONS[variant], "measure": "peak RSS",
                "trainable_params": 10, "total_params": 100, "trainable_share_pct": 10.0,
                "baseline_bytes": gib // 2, "load_peak_bytes": int(load * gib), "step_peak_bytes": int(step * gib),
                "peak_bytes": int(peak * gib), "load_s": 0.1, "step_s": 0.1}  # fmt: skip

    results = [result("lora", 2, 3, 4), result("qlora", 1.5, 0.75, 1.5)]
    ratios = train_memory.summarise(results)
    assert ratios == {"qlora_vs_lora_peak_bytes": 0.375, "qlora_vs_lora_step_peak_bytes": 0.25,
                      "qlora_vs_lora_peak_above_baseline_bytes": 0.286}  # fmt: skip
    md = memory_markdown(train_memory, results, ratios, "python bench/train_memory.py")
    assert (
        "- QLoRA / LoRA: **0.25x** training-step peak (the CPU analogue of CUDA max_memory_allocated after "
        "loading; target <= 0.35x: met); 0.375x whole-process peak, loading included (target: NOT met); "
        "0.286x above baseline." in md
    )
    assert (
        "| LoRA r16 q/k/v/o + head | 10 (10.000 %) | 0.50 | 2.00 | 3.00 | **4.00** | 3.50 | — | 1.0 |" in md
    )


def test_a_step_peak_not_measured_reads_as_a_dash(train_memory):
    """Where the RSS high-water mark cannot be reset (/proc/self/clear_refs refused), the step-only peaks are
    unknown: their ratios are None, never a division by None, and train_memory.md says a dash where it read
    "**Nonex** training-step peak" and "Nonex step only"."""
    gib = train_memory.GIB

    def result(variant, peak):
        return {"variant": variant, "description": train_memory.DESCRIPTIONS[variant], "measure": "peak RSS",
                "trainable_params": 10, "total_params": 100, "trainable_share_pct": 10.0, "baseline_bytes": gib // 2,
                "load_peak_bytes": 2 * gib, "step_peak_bytes": None, "peak_bytes": int(peak * gib), "load_s": 0.1,
                "step_s": 0.1}  # fmt: skip

    results = [result("full", 8), result("lora_gc", 2.8), result("lora", 4), result("qlora", 1.4)]
    ratios = train_memory.summarise(results)
    assert ratios["qlora_vs_lora_step_peak_bytes"] is None and ratios["qlora_vs_lora_peak_bytes"] == 0.35
    md = memory_markdown(train_memory, results, ratios)
    assert (
        "- QLoRA / LoRA: **—** training-step peak" in md and "target <= 0.35x: —); 0.35x whole-process" in md
    )
    assert "- QLoRA / LoRA with gradient checkpointing: 0.5x process peak; — step only" in md
    assert "- LoRA / full fine-tuning: **0.5x** process peak; — step only; 0.467x above baseline." in md
    assert "| 2.00 | — | **4.00** |" in md and "None" not in md


def test_a_workers_peak_is_its_own_not_its_parents(train_memory):
    """ru_maxrss carries the parent's peak across fork + exec: a worker started by a process that once held
    256 MiB more read at least that as its own load and step peaks. The worker's high-water mark is its own."""
    held = bytearray(256 * 1024**2)
    held[::4096] = b"\1" * len(held[::4096])  # resident, page by page
    # the worker's CPU peak read (run_variant): longtail.benchmark.peak_memory_bytes
    code = "from longtail.benchmark import peak_memory_bytes; print(peak_memory_bytes('cpu'))"
    child = int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    del held
    assert child < 128 * 1024**2  # a bare interpreter (this one's peak is above 256 MiB)


def test_the_peak_read_is_vmhwm_in_bytes_else_ru_maxrss(monkeypatch):
    """The worker's CPU peak (longtail.benchmark.peak_memory_bytes): /proc/self/status gives kB (KiB): VmHWM
    2048 kB is 2 MiB, not the current VmRSS. Without /proc, ru_maxrss (KiB on Linux) is the fallback."""
    from types import SimpleNamespace

    import longtail.benchmark as benchmark

    status = "VmPeak:\t  9000 kB\nVmRSS:\t   100 kB\nVmHWM:\t  2048 kB\n"
    monkeypatch.setattr(
        benchmark, "Path", lambda path: SimpleNamespace(is_file=lambda: True, read_text=lambda: status)
    )
    assert benchmark.peak_memory_bytes("cpu") == 2 * 1024**2
    monkeypatch.setattr(benchmark, "Path", lambda path: SimpleNamespace(is_file=lambda: False))
    monkeypatch.setattr(benchmark.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3072))
    monkeypatch.setattr(benchmark.sys, "platform", "linux")
    assert benchmark.peak_memory_bytes("cpu") == 3 * 1024**2
