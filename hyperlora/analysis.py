"""Per-layer numbers of generated adapters: norms, relative size, spectrum, effective rank.

ΔW = s·(A B)ᵀ has rank ≤ R, so its singular values come from the small R×R core:
with A = Q_a R_a and Bᵀ = Q_b R_b (thin QR), σ(ΔW) = s·σ(R_a R_bᵀ). That is exact
and costs O((D + O)·R²) instead of an SVD of the full [O, D] matrix.

``InspectionReport`` holds these numbers for several prompts (``hyperlora.inspection`` fills
it, ``hyperlora.plots`` draws it; both import it from here, neither imports the other at load).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.targets import Target

__all__ = ["ALL_LAYERS", "AdapterStats", "InspectionReport", "adapter_stats", "delta_singular_values",
           "effective_rank", "format_table"]

# The key of the similarity matrix over all targets together (the others are layer indices).
ALL_LAYERS = "all"


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


@dataclass
class InspectionReport:
    """What ``inspect_adapters`` found.

    ``rows``: one dict per prompt × target (``prompt`` plus ``AdapterStats``'s
    fields), prompt-major, targets in module order. ``similarity``: layer ->
    ``[P, P]`` cosine matrix (nested lists), plus ``"all"`` for all targets together.
    """

    prompts: list[str]
    rows: list[dict[str, Any]]
    similarity: dict[int | str, list[list[float]]] = field(default_factory=dict)
    top_k: int = 4
    # Every singular value (R of them) per row, for the spectrum plots; rows keep the top k.
    spectra: list[list[float]] = field(default_factory=list)

    def stats(self, prompt: str) -> list[dict[str, Any]]:
        """The rows of one prompt."""
        return [r for r in self.rows if r["prompt"] == prompt]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "rows": self.rows,
            "similarity": {str(k): v for k, v in self.similarity.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_csv(self) -> str:
        """One line per prompt × target; singular values in columns ``sv1..svK``."""
        scalar = ["prompt", "name", "layer", "kind", "d_in", "d_out", "norm_a", "norm_b", "norm_delta",
                  "relative_delta", "effective_rank"]
        width = max((len(r["singular_values"]) for r in self.rows), default=0)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(scalar + [f"sv{i + 1}" for i in range(width)])
        for r in self.rows:
            writer.writerow([r[k] for k in scalar] + list(r["singular_values"]))
        return out.getvalue()

    def table(self) -> str:
        """The terminal view: one table per prompt, then the similarity matrices."""
        parts = []
        for prompt in self.prompts:
            stats = [AdapterStats(**{k: v for k, v in r.items() if k != "prompt"}) for r in self.stats(prompt)]
            parts.append(f"prompt: {prompt!r}\n{format_table(stats)}")
        if len(self.prompts) > 1:
            parts.append(self._similarity_table())
        return "\n\n".join(parts)

    def _similarity_table(self) -> str:
        labels = [f"p{i}" for i in range(len(self.prompts))]
        lines = ["cosine similarity of ΔW between prompts (" + ", ".join(
            f"{label} = {p!r}" for label, p in zip(labels, self.prompts)) + ")"]
        pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))]
        lines.append(f"{'layer':>5}  " + " ".join(f"{labels[i] + '~' + labels[j]:>8}" for i, j in pairs))
        for layer, matrix in self.similarity.items():
            lines.append(f"{layer!s:>5}  " + " ".join(f"{matrix[i][j]:8.3f}" for i, j in pairs))
        return "\n".join(lines)
