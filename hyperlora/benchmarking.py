"""Timing helpers for the benchmarks: every figure is a ratio to a baseline timed in the same process."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from hyperlora.atomic import atomic_write_text

__all__ = ["device_name", "time_ms", "peak_memory_mib", "reset_peak_memory", "report"]


def _sync(device: torch.device) -> None:
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
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1000.0 / iters)
    return statistics.median(samples)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset (CUDA only; ``None`` on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def report(payload: dict[str, Any], path: str | None = None) -> None:
    """Print ``payload`` as JSON and optionally write it to ``path``."""
    text = json.dumps(payload, indent=2)
    print(text)
    if path:
        atomic_write_text(path, text + "\n")
