"""Device memory per section: an estimate from the size alone, and the guard that skips what would not fit.

The estimate is arithmetic on the ``BenchSize`` (no model is built), deliberately on the
high side, so that a section is skipped with a reason in the report before it allocates
anything rather than dying of an out-of-memory error half-way (``main.run`` catches those
too, as a last resort). With E bytes per element of the student's dtype:

* weights W: the exact parameter count of the Llama student × E; ``injector`` and ``decode``
  hold three copies at once (the shared student, the merged copy, the PEFT copy), the other
  sections one (``train_step`` wraps the student in PEFT in place);
* forward without grad on ``[B, T]``: the logits ``B·T·V·E`` plus one layer's largest
  temporaries (the MLP's three ``[B, T, mlp]`` tensors and four ``[B, T, hidden]``);
* forward + backward: per token and layer, what autograd keeps, about ``8·hidden + 4·mlp +
  3·kv_width`` elements of E bytes (norm inputs and outputs, q/k/v, attention output, the MLP's
  gate, up, activation and product) plus the two RMSNorms' fp32 copies; and the logits four times
  (bf16 logits, fp32 copy, their two gradients);
* decoding: the KV cache ``2·layers·kv_width·(prompt + new)·rows·E``.

The figures for every section are in the report (``memory_estimate_gib``), beside the measured
peaks of the sections that record one, so the estimate can be checked on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hyperlora.bench.common import BenchSize

__all__ = ["STUDENT_COPIES", "MemoryEstimate", "available_bytes", "estimate", "parameter_count", "shortfall"]

GIB = 2**30

# Copies of the student a section holds at once. decode_compiled and generator use the shared
# student only; train_step wraps it in PEFT in place and unloads it.
STUDENT_COPIES: dict[str, int] = {"injector": 3, "generator": 1, "decode": 3, "decode_compiled": 1, "train_step": 1}

# Room left for what the estimate does not count (allocator fragmentation, cuBLAS workspaces,
# the hypernetwork and its optimizer, compiled graphs' pools).
HEADROOM = 1.10


def parameter_count(size: BenchSize) -> int:
    """The Llama student's exact parameter count (a tied head counted once)."""
    kv = size.kv_heads * size.head_dim
    attention = size.hidden * size.heads * size.head_dim * 2 + size.hidden * kv * 2  # q, o; k, v
    layer = attention + 3 * size.hidden * size.mlp + 2 * size.hidden  # + gate, up, down; two norms
    embeddings = size.vocab * size.hidden * (1 if size.tie_embeddings else 2)
    return embeddings + size.layers * layer + size.hidden  # + the final norm


def _forward(size: BenchSize, rows: int, tokens: int, e: int) -> int:
    """No grad: the logits and one layer's temporaries."""
    return rows * tokens * (size.vocab + 3 * size.mlp + 4 * size.hidden) * e


def _forward_backward(size: BenchSize, rows: int, tokens: int, e: int) -> int:
    """With grad: what autograd keeps for every layer, and the logits with their fp32 copy and gradients."""
    kv = size.kv_heads * size.head_dim
    per_token_layer = (8 * size.hidden + 4 * size.mlp + 3 * kv) * e + 2 * size.hidden * 4
    return rows * tokens * (size.layers * per_token_layer + size.vocab * (2 * e + 8))


def _kv_cache(size: BenchSize, rows: int, tokens: int, e: int) -> int:
    return 2 * size.layers * size.kv_heads * size.head_dim * tokens * rows * e


@dataclass(frozen=True)
class MemoryEstimate:
    """A section's estimated peak: ``copies`` students of ``weights`` bytes each plus ``activations``."""

    section: str
    copies: int
    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.copies * self.weights + self.activations

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB ({self.copies} × {self.weights / GIB:.1f} GiB of student weights "
                f"+ {self.activations / GIB:.1f} GiB of activations)")

    def to_dict(self) -> dict[str, float | int]:
        return {"copies": self.copies, "weights_gib": round(self.weights / GIB, 2),
                "activations_gib": round(self.activations / GIB, 2), "total_gib": round(self.total / GIB, 2)}


def estimate(section: str, size: BenchSize, dtype: torch.dtype) -> MemoryEstimate:
    """The estimated peak of ``section`` at ``size`` in ``dtype`` (see the module's docstring).

    Where a section's phases differ (``injector``: three copies forward, then one copy
    forward + backward), the larger phase is the estimate, expressed as extra activations.
    """
    e = torch.empty((), dtype=dtype).element_size()
    weights = parameter_count(size) * e
    copies = STUDENT_COPIES.get(section, 1)
    decode_rows, decode_tokens = size.decode_batch, size.decode_prompt + size.decode_new
    if section == "injector":
        forward = copies * weights + _forward(size, size.batch, size.tokens, e)
        backward = weights + _forward_backward(size, size.batch, size.tokens, e)
        activations = max(forward, backward) - copies * weights
    elif section == "decode":
        activations = (_forward(size, decode_rows, size.decode_prompt, e)
                       + _kv_cache(size, decode_rows, decode_tokens, e))
    elif section == "decode_compiled":  # the static cache and the eager reference's dynamic one
        activations = (_forward(size, decode_rows, size.decode_prompt, e)
                       + 2 * _kv_cache(size, decode_rows, decode_tokens, e))
    elif section == "train_step":  # the teacher's logits (no grad) live through the student's backward
        activations = (_forward_backward(size, size.train_batch, size.train_tokens, e)
                       + _forward(size, size.train_batch, size.train_tokens + size.train_prompt, e))
    else:  # generator, and anything new: one forward of the shared student
        activations = _forward(size, size.batch, size.tokens, e)
    return MemoryEstimate(section, copies, weights, max(activations, 0))


def available_bytes(device: torch.device) -> int | None:
    """Bytes this process could still allocate on ``device``: free device memory plus what PyTorch's
    allocator holds unused (CUDA), ``MemAvailable`` (CPU, Linux); ``None`` where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def shortfall(need: MemoryEstimate, device: torch.device, student_resident: bool) -> str | None:
    """``None`` when ``need`` fits on ``device``; else the reason a section is skipped, in words.

    ``student_resident``: the shared student is already allocated (then it is part of ``need``
    but no longer of what is available).
    """
    available = available_bytes(device)
    if available is None:
        return None
    if student_resident:
        available += need.weights
    if need.total * HEADROOM <= available:
        return None
    return (f"not enough memory: {need.section} needs about {need.describe()}, with {HEADROOM - 1:.0%} headroom, "
            f"and {available / GIB:.1f} GiB are available on {device.type}; a smaller --size runs it")
