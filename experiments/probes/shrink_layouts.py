"""Probe: GPU time of a decode step's adapter GEMMs by operand layout, inside a CUDA graph.

A decode step's adapters are tiny GEMMs (``[16, 1, 2048] x [16, 2048, 16]``): their cost is the
kernel cuBLAS picks, which depends on the operands' layout. This times, per call, the shrink with
``A`` stored R-contiguous (as generated) and D-contiguous, the q/k/v group's shrink (rank 48), the
shrink as one dense ``mm`` over every row's ``A`` side by side (each row then reads its own block:
a strided view, no kernel), and the expand with ``B`` unpadded, zero-padded to the group's rank,
and with its left operand a strided view. Each variant is captured 200 times in a CUDA graph and
the graph replayed: the per-call time includes the ~2 µs a graph node costs, as in compiled decoding.
On CPU (the tests) the calls run in a plain loop in fp32: the checks hold, the times mean nothing.

    python experiments/probes/shrink_layouts.py      # CUDA (a CUDA graph) or CPU; JSON to $OUT
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from hyperlora.atomic import atomic_write_text

ROWS, D, R, G = 16, 2048, 16, 3
CUDA = torch.cuda.is_available()
CALLS = 200 if CUDA else 5
dev, dt = (torch.device("cuda"), torch.bfloat16) if CUDA else (torch.device("cpu"), torch.float32)


def graph_us(fn: Callable[[], object]) -> float:
    """GPU µs per call of ``fn``, from a CUDA graph of CALLS calls replayed (best of 5); CPU: a loop."""
    if not CUDA:
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        return round((time.perf_counter() - start) * 1e6 / CALLS, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1000 / CALLS)
    return round(best, 2)


def d_contiguous(t: Tensor) -> Tensor:
    """The same values with the middle axis contiguous: ``[B, D, R]`` stored as ``[B, R, D]``."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def block_view(full: Tensor, rows: int, rank: int, offset: int = 0) -> Tensor:
    """Row b's block of ``full [rows, rows·rank·k]`` at ``offset``: ``[rows, 1, rank]``, a view."""
    width = full.shape[1]
    return full.as_strided((rows, 1, rank), (width + rank, width, 1), full.storage_offset() + offset)


def measure(x: Tensor, O: int) -> tuple[dict[str, float], dict[str, float]]:
    """``({variant: µs per call}, {check: max abs difference})`` for ``O`` out-features.

    Shapes: x ``[ROWS, 1, D]``; A ``[ROWS, D, R]``; the group's A ``[ROWS, D, G·R]``; B ``[ROWS, R, O]``.
    """
    A = torch.randn(ROWS, D, R, device=dev, dtype=dt) * 0.02
    Ag = torch.randn(ROWS, D, G * R, device=dev, dtype=dt) * 0.02
    B = torch.randn(ROWS, R, O, device=dev, dtype=dt) * 0.02
    Bpad = torch.zeros(ROWS, G * R, O, device=dev, dtype=dt)
    Bpad[:, :R] = B
    out = torch.randn(ROWS, 1, O, device=dev, dtype=dt)
    W = torch.randn(O, D, device=dev, dtype=dt)
    xa, xag = torch.bmm(x, A), torch.bmm(x, Ag)
    A_d, Ag_d, B_r = d_contiguous(A), d_contiguous(Ag), d_contiguous(B)
    A_all = A.permute(1, 0, 2).reshape(D, ROWS * R).contiguous()  # [D, ROWS·R]: row b's A at columns b·R
    A_all_t = A_all.t().contiguous()
    Ag_all = torch.cat([A_all] * G, dim=1).contiguous()  # member-major: member i's rows at i·ROWS·R
    x2 = x.view(ROWS, D)
    full, fullg = x2 @ A_all, x2 @ Ag_all
    buf = torch.empty(ROWS, ROWS * R, device=dev, dtype=dt)
    view = block_view(full, ROWS, R)
    # The dense forms' block views give the batched shrinks (member 1 of the group: its second block).
    checks = {"max_abs_block_view_vs_bmm": float((view - xa).abs().max()),
              "max_abs_group_block_view_vs_bmm": float((block_view(fullg, ROWS, R, offset=ROWS * R) - xa).abs().max())}
    times = {
        "shrink_bmm_r_contiguous": graph_us(lambda: torch.bmm(x, A)),
        "shrink_bmm_d_contiguous": graph_us(lambda: torch.bmm(x, A_d)),
        "shrink_group_bmm_r_contiguous": graph_us(lambda: torch.bmm(x, Ag)),
        "shrink_group_bmm_d_contiguous": graph_us(lambda: torch.bmm(x, Ag_d)),
        "shrink_dense_mm": graph_us(lambda: torch.mm(x2, A_all)),
        "shrink_dense_mm_out": graph_us(lambda: torch.mm(x2, A_all, out=buf)),
        "shrink_group_dense_mm": graph_us(lambda: torch.mm(x2, Ag_all)),
        "shrink_dense_mm_t": graph_us(lambda: torch.mm(x2, A_all_t.t())),
        "expand_baddbmm": graph_us(lambda: out.baddbmm_(xa, B, alpha=2.0)),
        "expand_baddbmm_padded": graph_us(lambda: out.baddbmm_(xag, Bpad, alpha=2.0)),
        "expand_baddbmm_view": graph_us(lambda: out.baddbmm_(view, B, alpha=2.0)),
        "expand_baddbmm_b_r_contiguous": graph_us(lambda: out.baddbmm_(xa, B_r, alpha=2.0)),
        "linear_base": graph_us(lambda: torch.nn.functional.linear(x, W)),
    }
    return times, checks


report: dict[str, object] = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "rows": ROWS, "D": D,
                             "R": R}
inputs = torch.randn(ROWS, 1, D, device=dev, dtype=dt)
for out_features in (2048, 1024):
    us, diffs = measure(inputs, out_features)
    report[f"O{out_features}_us"] = us
    report.update({f"O{out_features}_{name}": value for name, value in diffs.items()})
    print(out_features, json.dumps(us), flush=True)
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "shrink_layouts.json", json.dumps(report, indent=1) + "\n")
