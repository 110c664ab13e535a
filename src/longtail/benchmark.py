"""Measurement helpers shared by the inference benchmark and the scaling study (bench/*.py).

- `timed`: warm-up runs, then >= 5 timed runs (CUDA synchronised), the median and the spread;
- `gemm_peak_gflops`: the machine's measured fp32 matmul throughput, the physical limit every model is
  compared with;
- `forward_flops`: model FLOPs of a forward pass, 2 x non-embedding parameters x real tokens plus attention
  (QK^T and AV: 4 x layers x hidden x length^2 per sequence), so padding counts as waste, not work;
- `peak_memory_bytes`: process peak RSS on CPU (VmHWM), CUDA max allocated on GPU;
- `earlier_results`: the refusal of a rerun into a folder holding a benchmark's earlier results;
- `UNSTABLE`, `gemm_drift`: the bench reports' one instability threshold, and how far a GEMM peak measured again
  within a run moved.

torch is imported where used: the bench scripts read `UNSTABLE` when they load.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# above this, a measure repeated within one run moved too much for differences of that size to mean anything (the
# bench reports warn): timed repeats ((max - min) / median) or the GEMM peak measured again (`gemm_drift`)
UNSTABLE = 0.10


def gemm_drift(peaks: Iterable[float]) -> float:
    """(max - min) / max of the GEMM peaks (GFLOP/s) measured within one run; 0 where none is above 0."""
    peaks = list(peaks)
    return (max(peaks) - min(peaks)) / max(peaks) if max(peaks) > 0 else 0.0


def sync(device: str = "cpu") -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Seconds per call of `fn`: median, min, max and all runs, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    runs = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - start)
    return {"median_s": float(np.median(runs)), "min_s": min(runs), "max_s": max(runs), "runs_s": runs}


def gemm_peak_gflops(size: int = 2048, repeats: int = 5, device: str = "cpu", dtype=None) -> dict:
    """fp32 (or `dtype`) GEMM throughput of an n x n x n matmul: 2 n^3 FLOPs per call, median of `repeats`."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    t = timed(lambda: torch.mm(a, b), repeats=repeats, warmup=2, device=device)
    flops = 2.0 * size**3
    return {
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "gflops": flops / t["median_s"] / 1e9,
        "best_gflops": flops / t["min_s"] / 1e9,
        "threads": torch.get_num_threads(),
    }


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables (a lookup costs no FLOPs)."""
    import torch

    embedding = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    )
    return sum(p.numel() for p in model.parameters()) - embedding


def forward_flops(non_embedding_params: int, config, lengths) -> float:
    """Model FLOPs of one forward pass over sequences of the given real lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    return float(2.0 * non_embedding_params * lengths.sum() + 4.0 * layers * hidden * (lengths**2).sum())


def reset_peak_memory(device: str = "cpu") -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes(device: str = "cpu") -> int:
    """CUDA max allocated since the last reset on GPU; the process's peak RSS on CPU."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    # VmHWM is this process's own high-water mark; ru_maxrss can carry the parent's peak across fork + exec
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def earlier_results(output_dir, names, overwrite: bool) -> str | None:
    """Why a benchmark may not write into `output_dir` (its earlier `names` there, no --overwrite), or None."""
    earlier = [name for name in names if (Path(output_dir) / name).exists()]
    if earlier and not overwrite:
        return (
            f"{output_dir} holds earlier results ({', '.join(earlier)}); pass --overwrite or choose another "
            "--output_dir"
        )
    return None
