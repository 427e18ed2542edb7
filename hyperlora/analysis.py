"""Per-layer numbers of generated adapters: norms, relative size, spectrum, effective rank.

ΔW = s·(A B)ᵀ has rank ≤ R, so its singular values come from the small R×R core:
with A = Q_a R_a and Bᵀ = Q_b R_b (thin QR), σ(ΔW) = s·σ(R_a R_bᵀ). That is exact
and costs O((D + O)·R²) instead of an SVD of the full [O, D] matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.targets import Target

__all__ = ["AdapterStats", "adapter_stats", "delta_singular_values", "effective_rank", "format_table"]


def delta_singular_values(A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """Singular values of ``s · (A B)ᵀ`` for ``A [D, R]``, ``B [R, O]``, descending, ``[R]``."""
    _, r_a = torch.linalg.qr(A.double())
    _, r_b = torch.linalg.qr(B.double().T)
    return torch.linalg.svdvals(r_a @ r_b.T) * abs(scaling)


def effective_rank(singular_values: Tensor) -> float:
    """exp(entropy of σ/Σσ) (Roy & Vetterli, 2007); 0 for ΔW = 0."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass(frozen=True)
class AdapterStats:
    name: str
    layer: int
    kind: str
    d_in: int
    d_out: int
    norm_a: float
    norm_b: float
    norm_delta: float
    relative_delta: float  # ‖ΔW‖_F / ‖W0‖_F
    singular_values: tuple[float, ...]
    effective_rank: float


def adapter_stats(targets: list[Target], adapters: AdapterBatch, spec: LoRASpec,
                  row: int = 0, top_k: int = 4) -> list[AdapterStats]:
    """One ``AdapterStats`` per target for row ``row`` of a batch of adapters."""
    rows = []
    for t in targets:
        A, B = (x[row].detach() for x in adapters[t.name])
        sigma = delta_singular_values(A, B, spec.scaling)
        norm_delta = float(sigma.square().sum().sqrt())  # ‖ΔW‖_F² = Σσ²
        norm_w0 = float(t.module.weight.detach().double().norm())
        rows.append(AdapterStats(
            t.name, t.layer, t.kind, t.d_in, t.d_out, float(A.double().norm()), float(B.double().norm()),
            norm_delta, norm_delta / norm_w0 if norm_w0 else float("inf"),
            tuple(float(s) for s in sigma[:top_k]), effective_rank(sigma),
        ))
    return rows


def format_table(stats: list[AdapterStats]) -> str:
    """A fixed-width terminal table, one line per target."""
    header = f"{'layer':>5}  {'module':<28} {'shape':>11}  {'|A|':>8} {'|B|':>8} {'|dW|':>9} {'|dW|/|W0|':>9} {'eff.rank':>8}  top singular values"
    lines = [header, "-" * len(header)]
    for s in stats:
        sv = " ".join(f"{v:.2e}" for v in s.singular_values)
        lines.append(
            f"{s.layer:>5}  {s.kind:<28} {f'{s.d_in}x{s.d_out}':>11}  {s.norm_a:8.3f} {s.norm_b:8.4f} "
            f"{s.norm_delta:9.2e} {s.relative_delta:9.2e} {s.effective_rank:8.2f}  {sv}"
        )
    return "\n".join(lines)
