"""Inspect generated adapters per layer and module, and compare them across prompts.

    report = inspect_adapters(hyper, ["Reverse the words.", "Answer in French."])
    print(report.table());  report.to_csv();  report.similarity[0]   # layer 0: [P, P]

Per prompt and target: shape, ‖A‖, ‖B‖, ‖ΔW‖_F, ‖ΔW‖_F / ‖W0‖_F, the top singular
values of ΔW and its effective rank (exact, from the R×R core: ``hyperlora.analysis``).
Across prompts: per layer, the cosine similarity of the layer's ΔW (all its targets
flattened together), computed without forming any ΔW:

    ⟨ΔW_p, ΔW_q⟩_F = s² · tr((A_pᵀ A_q)(B_q B_pᵀ))       (R×R matrices)

Axis letters: P prompts, D in-features, O out-features, R rank.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from hyperlora.analysis import adapter_stats, format_table
from hyperlora.atomic import atomic_write_text
from hyperlora.encoder import check_prompts
from hyperlora.model import HyperLoRA

__all__ = ["InspectionReport", "inspect_adapters", "delta_gram", "main"]

ALL_LAYERS = "all"


def delta_gram(A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """``G[p, q] = ⟨ΔW_p, ΔW_q⟩_F`` for ``A [P, D, R]``, ``B [P, R, O]``; ``[P, P]`` in float64.

    ``tr((A_pᵀA_q)(B_q B_pᵀ)) = Σ_rs (A_pᵀA_q)[r, s] · (B_p B_qᵀ)[r, s]``: two R×R
    Gram blocks per pair, O(P²·R²·(D + O)) instead of O(P²·D·O).
    """
    A, B = A.double(), B.double()
    gram_a = torch.einsum("pdr,qds->pqrs", A, A)
    gram_b = torch.einsum("pro,qso->pqrs", B, B)
    return (gram_a * gram_b).sum(dim=(-1, -2)) * scaling**2


def _cosine(gram: Tensor) -> Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    # A zero adapter is similar to nothing (not NaN, which JSON cannot hold).
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))


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
        from hyperlora.analysis import AdapterStats

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


@torch.no_grad()
def inspect_adapters(hyper: HyperLoRA, prompts: list[str], top_k: int = 4) -> InspectionReport:
    """Per-target statistics of each prompt's adapter and per-layer prompt × prompt similarity."""
    prompts = list(dict.fromkeys(check_prompts(prompts)))  # a repeated prompt adds nothing
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}.")
    adapters = hyper.adapters(prompts)  # {name: (A [P, D, R], B [P, R, O])}
    rows, spectra = [], []
    for p, prompt in enumerate(prompts):
        for s in adapter_stats(hyper.targets, adapters, hyper.spec, row=p, top_k=hyper.spec.rank):
            row = {"prompt": prompt, **asdict(s)}
            row["singular_values"] = list(s.singular_values[:top_k])
            rows.append(row)
            spectra.append(list(s.singular_values))
    grams: dict[int | str, Tensor] = {}
    for t in hyper.targets:  # a layer's targets flattened together: their Gram matrices add up
        gram = delta_gram(*adapters[t.name], hyper.spec.scaling).cpu()
        grams[t.layer] = grams[t.layer] + gram if t.layer in grams else gram
    grams[ALL_LAYERS] = sum(grams.values())
    similarity = {k: _cosine(g).tolist() for k, g in grams.items()}
    return InspectionReport(prompts, rows, similarity, top_k, spectra)


# -- command line ------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from hyperlora.loading import add_checkpoint_arguments

    parser = argparse.ArgumentParser(
        prog="hyperlora inspect",
        description="Per layer and module: norms, relative size, spectrum and effective rank of each prompt's ΔW; "
                    "with several prompts, their per-layer cosine similarity.",
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="JSON to FILE (or stdout)")
    parser.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="CSV to FILE (or stdout)")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    parser.add_argument("--top-k", type=int, default=4, help="singular values listed per target")
    return parser


def _emit(text: str, where: str) -> None:
    if where == "-":
        print(text, end="")
    else:
        atomic_write_text(where, text)


def main(argv: list[str] | None = None) -> int:
    from hyperlora.loading import load_from_args

    args = _parser().parse_args(argv)
    if args.json == "-" and args.csv == "-":
        raise ValueError("--json and --csv cannot both go to stdout: give one of them a FILE.")
    check_prompts(args.prompt)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be positive, got {args.top_k}.")
    report = inspect_adapters(load_from_args(args), args.prompt, top_k=args.top_k)
    if args.json:
        _emit(report.to_json(), args.json)
    if args.csv:
        _emit(report.to_csv(), args.csv)
    if "-" not in (args.json, args.csv):
        print(report.table())
    if args.plot:
        from hyperlora.plots import plot_report

        machine_readable = "-" in (args.json, args.csv)
        for path in plot_report(report, args.plot):
            # Kept off stdout when stdout carries JSON or CSV.
            print(f"wrote {path}", file=sys.stderr if machine_readable else sys.stdout)
    return 0
