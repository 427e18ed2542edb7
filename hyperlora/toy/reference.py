"""The one reference implementation that tests, ``hyperlora selfcheck`` and the bench compare against.

Random per-row adapters (non-zero A *and* B: with PEFT's zero-initialised B a wrong
row, layout or scale would go unnoticed), the dense merged-weight reference
``F.linear(x, W0 + ΔW)`` (no hook involved), the same adapter under PEFT's own LoRA
layer, and the small helpers around them.

Axis letters (as in ``docs/architecture.md``): B batch (rows), T tokens, D in-features,
O out-features, R rank.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hyperlora.lora import AdapterBatch, LoRASpec, delta_weight
from hyperlora.targets import Target
from hyperlora.toy.models import VOCAB_SIZE

__all__ = [
    "HookSnapshot",
    "hook_snapshot",
    "merged_copy",
    "peft_copy",
    "random_adapters",
    "random_ids",
    "select_rows",
    "wrap_lora",
]

# {module name: (forward-hook ids, forward-pre-hook ids)}
HookSnapshot = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


def random_adapters(
    targets: Sequence[Target],
    rows: int,
    rank: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    requires_grad: bool = False,
    seed: int = 0,
    scale: float | None = None,
) -> AdapterBatch:
    """``{name: (A [B, D, R], B [B, R, O])}``: a different random adapter for each of ``rows`` rows.

    Per target, A then B are drawn in float32 from one ``torch.Generator`` on ``device``
    seeded with ``seed``, then cast to ``dtype``.

    Args:
        scale: ``None``: A ~ N(0, 1/D) and B ~ N(0, 0.01²), so ``x·A`` has unit-scale columns and
            ΔW moves the outputs by a few percent (enough to change greedy tokens, not to blow up);
            a number: both factors ~ N(0, scale²).
        requires_grad: make A and B leaves that collect gradients.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    adapters: AdapterBatch = {}
    for t in targets:
        A = torch.randn(rows, t.d_in, rank, generator=gen, device=device)
        B = torch.randn(rows, rank, t.d_out, generator=gen, device=device)
        if scale is None:
            A, B = A / t.d_in**0.5, B * 0.01
        else:
            A, B = A * scale, B * scale
        adapters[t.name] = (A.to(dtype).requires_grad_(requires_grad), B.to(dtype).requires_grad_(requires_grad))
    return adapters


def select_rows(adapters: AdapterBatch, index: int | list[int] | Tensor) -> AdapterBatch:
    """The adapters of the given rows, keeping the row axis: ``A [k, D, R]``, ``B [k, R, O]``."""
    idx = torch.as_tensor([index] if isinstance(index, int) else index)
    return {name: (A[idx], B[idx]) for name, (A, B) in adapters.items()}


def _row(adapters: AdapterBatch, name: str, row: int) -> tuple[Tensor, Tensor]:
    """``(A [D, R], B [R, O])`` of one row; 2-D factors are taken as that row already."""
    A, B = adapters[name]
    return (A[row], B[row]) if A.dim() == 3 else (A, B)


@torch.no_grad()
def merged_copy(
    model: nn.Module, adapters: AdapterBatch, spec: LoRASpec, targets: Sequence[Target], row: int = 0
) -> nn.Module:
    """A deep copy of ``model`` with row ``row``'s ΔW added into each target's weight.

    The dense reference: each target then computes ``F.linear(x, W0 + ΔW)`` with
    ``ΔW = s · (A B)ᵀ`` (``s · A B`` in ``Conv1D``'s ``[D, O]`` layout), no hook involved.
    ``adapters`` holds ``A [B, D, R]`` / ``B [B, R, O]``, or one row's ``A [D, R]`` / ``B [R, O]``.
    """
    merged = copy.deepcopy(model)
    for t in targets:
        A, B = _row(adapters, t.name, row)
        weight = merged.get_submodule(t.name).weight
        weight += delta_weight(A, B, spec.scaling, conv1d=t.is_conv1d).to(weight.dtype)
    return merged


def wrap_lora(model: nn.Module, targets: Sequence[Target], spec: LoRASpec) -> nn.Module:
    """``model`` under PEFT's LoRA on ``targets``, in place (``.unload()`` gives the model back).

    PEFT initialises B to zero; ``peft_copy`` fills in a given adapter.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        use_rslora=spec.rslora,
        target_modules=[t.name for t in targets],
        lora_dropout=0.0,
        # GPT-2's Conv1D stores its weight [D, O]; PEFT must be told, or it refuses/merges wrongly.
        fan_in_fan_out=any(t.is_conv1d for t in targets),
    )
    with warnings.catch_warnings():
        # PEFT asks transformers a deprecated question; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


@torch.no_grad()
def peft_copy(
    model: nn.Module, adapters: AdapterBatch, spec: LoRASpec, targets: Sequence[Target], row: int = 0
) -> nn.Module:
    """A copy of ``model`` under PEFT's own LoRA layers holding row ``row``'s adapter, in eval mode.

    PEFT keeps A and B as ``nn.Linear`` weights, ``lora_A [R, D]`` and ``lora_B [O, R]``;
    ``adapters`` is laid out as for ``merged_copy``.
    """
    wrapped = wrap_lora(copy.deepcopy(model), targets, spec)
    modules = dict(wrapped.base_model.model.named_modules())
    for t in targets:
        A, B = _row(adapters, t.name, row)
        layer = modules[t.name]
        if not math.isclose(layer.scaling["default"], spec.scaling, rel_tol=1e-6):
            raise ValueError(f"{t.name}: PEFT scales by {layer.scaling['default']}, the spec by {spec.scaling}.")
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if a.shape != (spec.rank, t.d_in) or b.shape != (t.d_out, spec.rank):
            raise ValueError(f"{t.name}: PEFT's lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not match "
                             f"D={t.d_in}, O={t.d_out}, R={spec.rank}.")
        a.copy_(A.T)
        b.copy_(B.T)
    return wrapped.eval()


def random_ids(rows: int, tokens: int, seed: int = 0, vocab_size: int = VOCAB_SIZE) -> Tensor:
    """Token ids ``[B, T]`` in ``[3, vocab_size)``: never the special ids 0-2 (pad, bos, eos)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (rows, tokens), generator=gen)


def hook_snapshot(model: nn.Module) -> HookSnapshot:
    """``{module name: (forward-hook ids, forward-pre-hook ids)}``, to compare before and after."""
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for name, m in model.named_modules()}
