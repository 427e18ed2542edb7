"""Timing and memory helpers: every figure is a ratio to a baseline timed in the same process."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["device_kernels", "device_ms", "device_name", "figures", "free_cached_memory", "kernel_ratio",
           "paired_ratios", "peak_memory_mib", "reset_peak_memory", "rotation", "sync", "time_interleaved", "time_ms"]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU), so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 3, iters: int = 10, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean wall time of ``iters`` calls of ``fn``, in ms.

    Calls are queued back to back and synchronised once per repeat, so launch
    overhead counts as it would in a real loop, and the median damps the
    occasional stall from another process.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        samples.append((time.perf_counter() - start) * 1000.0 / iters)
    return statistics.median(samples)


def rotation(names: list[str], repeat: int) -> list[str]:
    """``names`` starting at a different one each ``repeat``: the order variants are timed in."""
    start = repeat % len(names)
    return names[start:] + names[:start]


def time_interleaved(fns: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int = 3, iters: int = 10,
                     repeats: int = 5) -> dict[str, float]:
    """``time_ms`` of several functions, their repeats interleaved: ``{name: median ms}``.

    Repeat r times every function once, starting at a different one each repeat
    (rotation), so clock drift, a neighbour's burst or allocator warm-up lands on
    all of them alike instead of on whichever was timed last. Ratios between the
    medians are what the benchmarks report.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotation(names, r):
            start = time.perf_counter()
            for _ in range(iters):
                fns[name]()
            sync(device)
            samples[name].append((time.perf_counter() - start) * 1000.0 / iters)
    return {name: statistics.median(values) for name, values in samples.items()}


def device_kernels(fn: Callable[[], Any], device: torch.device, iters: int = 3) -> tuple[float, float] | None:
    """``(kernel ms, kernel launches)`` of one call of ``fn``, means over ``iters`` (profiler); ``None`` on CPU.

    Sums the kernels' own durations, so it ignores host-side launch overhead and
    time the GPU sat idle or served another process: the work, where wall time
    (``time_ms``) is the experience. The two together say whether a gap is the
    kernels' or the Python around them; the launch count says how much host work
    each call queues.
    """
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: no first-call autotuning in the window
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        sync(device)
    # Device-side rows only (kernels, memcpy, memset). The profiler also copies a kernel's duration
    # onto the host call it can link to the launch (cudaLaunchKernel); summing every row with device
    # time would count those kernels twice and the others once.
    events = [e for e in prof.key_averages()
              if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    total_us = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    return total_us / 1000.0 / iters, launches / iters


def device_ms(fn: Callable[[], Any], device: torch.device, iters: int = 3) -> float | None:
    """GPU kernel time of one call of ``fn`` in ms (``device_kernels``); ``None`` on CPU."""
    measured = device_kernels(fn, device, iters)
    return None if measured is None else measured[0]


def kernel_ratio(value: float | None, base: float | None) -> float | None:
    """``value / base`` of two ``device_ms`` figures, rounded; ``None`` where either is (on CPU)."""
    return round(value / base, 4) if value is not None and base else None


def free_cached_memory(device: torch.device) -> None:
    """Hand the allocator's cached blocks back (CUDA), so the next section's peak is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset (CUDA only; ``None`` on CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def figures(times: Mapping[str, float], baselines: Mapping[str, str]) -> dict[str, Any]:
    """``{"times_ms", "ratios", "baselines"}`` of a section.

    ``baselines`` maps each timed name to the name of the baseline it is divided
    by; the ratio is computed from the rounded times as stored, so a reader can
    recompute every ratio from the report.
    """
    stored = {name: round(ms, 4) for name, ms in times.items()}
    for name, base in baselines.items():
        if name not in stored or base not in stored:
            raise RuntimeError(f"ratio {name!r} / {base!r}: both must be timed")
        if not stored[base] > 0:
            raise ValueError(f"baseline {base!r} took {stored[base]} ms: too short to divide by; use a larger --size")
    ratios = {name: round(stored[name] / stored[base], 4) for name, base in baselines.items()}
    return {"times_ms": stored, "ratios": ratios, "baselines": dict(baselines)}


def paired_ratios(samples: Mapping[str, list[float]], baselines: Mapping[str, str]) -> dict[str, float]:
    """``{name: median over repeats of samples[name][r] / samples[baseline][r]}``, rounded.

    Each repeat times every variant back to back, so a variant and its baseline in one repeat
    share the host's state of the moment; dividing within the repeat cancels what is common to
    both before the median, which matters on shared hosts where whole decode calls vary from one
    repeat to the next (docs/performance.md gives the measured spread of both estimators).
    """
    ratios: dict[str, float] = {}
    for name, base in baselines.items():
        pairs = [value / reference for value, reference in zip(samples[name], samples[base], strict=True)]
        if not pairs:
            raise ValueError(f"paired ratio {name!r} / {base!r}: no repeats")
        ratios[name] = round(statistics.median(pairs), 4)
    return ratios
