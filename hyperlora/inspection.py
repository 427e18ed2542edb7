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
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

# The report type lives in analysis, which plots imports too: no inspection <-> plots cycle.
from hyperlora.analysis import ALL_LAYERS, InspectionReport, adapter_stats
from hyperlora.atomic import atomic_write_text
from hyperlora.cli_checks import check_int, check_output_file
from hyperlora.encoder import check_prompts
from hyperlora.model import HyperLoRA

__all__ = ["InspectionReport", "inspect_adapters", "delta_gram", "main"]


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
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing --json/--csv files; write --plot figures into a folder holding others")
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
    # Every output is checked before the (slow) load: a taken path costs nothing and loses nothing.
    check_int(args.top_k, "--top-k")
    check_output_file(args.json, "--json", args.force)
    check_output_file(args.csv, "--csv", args.force)
    files = [Path(f).resolve() for f in (args.json, args.csv) if f not in (None, "-")]
    if len(files) == 2 and files[0] == files[1]:
        raise ValueError(f"--json and --csv both name {args.csv}; give them different files.")
    if args.plot:
        from hyperlora.plots import check_plot_dir

        check_plot_dir(args.plot, args.force)
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
        for path in plot_report(report, args.plot, force=args.force):
            # Kept off stdout when stdout carries JSON or CSV.
            print(f"wrote {path}", file=sys.stderr if machine_readable else sys.stdout)
    return 0
