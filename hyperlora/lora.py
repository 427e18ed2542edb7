"""The LoRA maths shared by the injector, the generator, export and merge.

For one target and one sample the adapted projection is

    y = x W0ᵀ (+ bias) + s · dropout(x) A B,   A: [D, R], B: [R, O],

with ``s = α / R`` (or ``α / √R`` with rsLoRA). Written as a weight update,
``ΔW = s · (A B)ᵀ`` in ``nn.Linear``'s ``[O, D]`` layout (``s · A B`` in
``Conv1D``'s ``[D, O]`` layout).

A batch of adapters, one per row, is an ``AdapterBatch``: ``{target name: (A [B, D, R], B [B, R, O])}``
(axis letters as in ``docs/architecture.md``: B rows, T tokens, D in-features, O out-features, R rank).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from hyperlora.targets import Target

__all__ = ["AdapterBatch", "LoRASpec", "delta_weight", "count_lora_params"]

# The one name for a batch of per-row adapters: target name -> (A [B, D, R], B [B, R, O]).
AdapterBatch = dict[str, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class LoRASpec:
    """Rank, scale and dropout of every generated adapter."""

    rank: int = 8
    alpha: float = 16.0
    rslora: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}.")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a positive finite number, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")

    @property
    def scaling(self) -> float:
        """``α/R``, or ``α/√R`` with rsLoRA (stable updates at high rank)."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def delta_weight(A: Tensor, B: Tensor, scaling: float, conv1d: bool = False) -> Tensor:
    """ΔW in the base layer's weight layout.

    Args:
        A: ``[D, R]`` or batched ``[B, D, R]``.
        B: ``[R, O]`` or batched ``[B, R, O]``.
        scaling: ``LoRASpec.scaling``.
        conv1d: the base is a transformers ``Conv1D`` (weight stored ``[D, O]``).

    Returns:
        ``[O, D]`` for ``nn.Linear`` (``[D, O]`` for ``Conv1D``), with a leading
        ``B`` axis when the inputs are batched.
    """
    if A.shape[-1] != B.shape[-2]:
        raise ValueError(f"A {tuple(A.shape)} and B {tuple(B.shape)} disagree on the rank axis.")
    product = (A @ B) * scaling  # [.., D, O]
    return product if conv1d else product.transpose(-1, -2)


def count_lora_params(model: torch.nn.Module, targets: Iterable[Target] | None = None, rank: int = 8) -> int:
    """What PEFT's LoRA trains for these targets at this rank: ``Σ R·(D + O)``.

    Reads shapes only, so a model built on the meta device (a 7B config) costs
    no memory. ``targets`` defaults to the attention projections of ``model``.
    """
    from hyperlora.targets import find_targets

    chosen = list(targets) if targets is not None else find_targets(model)
    return sum(rank * (t.d_in + t.d_out) for t in chosen)
