"""Timing and memory helpers shared by the sections: synchronised wall-clock medians, peak memory, MFU.

On CUDA every timed region is bracketed by `torch.cuda.synchronize()`, so host clocks measure device work; warm-up
calls (compilation, autotuning, allocator growth) are never timed.

    stats = time_calls(lambda: unet(x, t, c), warmup=3, repeat=10)   # {"median_ms": ..., "min_ms": ..., ...}
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

H100_SXM_BF16_DENSE = 989e12
"""H100 SXM (HBM3) dense bf16 tensor-core peak, FLOP/s (NVIDIA datasheet, no sparsity)."""

PEAK_BY_NAME: dict[str, float] = {
    "H100 80GB HBM3": H100_SXM_BF16_DENSE,
    "H100 SXM": H100_SXM_BF16_DENSE,
    "H200": 989e12,
}


def peak_flops(device_name: str) -> float:
    """The dense bf16 peak of the named GPU; H100 SXM's 989 TFLOP/s for any unlisted device (stated in the doc)."""
    for key, value in PEAK_BY_NAME.items():
        if key in device_name:
            return value
    return H100_SXM_BF16_DENSE


def sync() -> None:
    """Wait for the GPU (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], warmup: int = 2, repeat: int = 5) -> dict[str, float]:
    """Median / min / mean wall time in ms of `fn()` over `repeat` synchronised calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "mean_ms": statistics.fmean(times),
        "repeat": repeat,
    }


def free_memory() -> None:
    """Collect garbage and return cached blocks, so the next section starts from what it allocates itself."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    """Start a new peak-memory window."""
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    """Peak allocated GPU memory since the last `reset_peak`, GiB (None on CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


@contextmanager
def memory_cap(gib: float | None):
    """Limit this process's CUDA allocations to `gib` (as on a smaller GPU); no-op on CPU or for None."""
    if gib is None or not torch.cuda.is_available():
        yield
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def training_flops(non_embedding_params: int, num_layers: int, hidden: int, sample_lengths: list[int]) -> float:
    """Model FLOPs of one training pass over samples of these lengths (forward + backward).

    6 x N per token (N: LLM parameters without the input embedding) plus attention 12 x layers x hidden x context per
    token, where a token's context is the length of its own sample: 12 x L x d x s^2 per sample of s tokens.
    """
    tokens = sum(sample_lengths)
    attention = sum(12 * num_layers * hidden * s * s for s in sample_lengths)
    return 6.0 * non_embedding_params * tokens + attention


def measure_matmul_peak(size: int = 8192, repeat: int = 50) -> float | None:
    """Measured dense bf16 matmul throughput of this GPU, FLOP/s (a square GEMM back to back); None on CPU.

    MFU against it says how close a step comes to what the GPU really sustains, next to the datasheet number.
    """
    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync()
    return 2 * size**3 * repeat / (time.perf_counter() - start)


def device_busy_ms(fn: Callable[[], Any]) -> float | None:
    """Milliseconds the GPU spends in kernels during one call of `fn` (None without CUDA): set against the call's wall
    time it says whether the call is bound by the GPU (close to it) or by the host (well under it)."""
    if not torch.cuda.is_available():
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sum(e.device_time_total for e in kernels) / 1e3  # us -> ms


def profile_top_kernels(
    fn: Callable[[], Any], steps: int = 2, rows: int = 12, sort_by_host: bool = False, inclusive: bool = False
) -> str:
    """torch.profiler table of the most expensive device kernels over `steps` calls of `fn` (CPU ops on CPU; with
    `sort_by_host`, the ops that cost the host the most time, for steps the host bounds; with `inclusive` too, by
    host time including callees, so compiled regions and autograd nodes show what they cost as a whole)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
        sort_by = "self_cpu_time_total" if sort_by_host else "self_cuda_time_total"
    if sort_by_host and inclusive:
        sort_by = "cpu_time_total"
    sync()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync()
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)
