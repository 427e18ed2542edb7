"""Loading a checkpoint for the use-it commands (generate, inspect, export, merge).

Every command takes the same three options: ``--checkpoint DIR`` (written by
``HyperLoRA.save_pretrained``), ``--base-model DIR`` (the student, when it has
moved since training; the checkpoint records its path) and ``--device``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hyperlora.base_models import DTYPES, is_base_model_name, load_base_model
from hyperlora.model import HyperLoRA, read_checkpoint_config

__all__ = ["add_checkpoint_arguments", "load_hyperlora", "load_from_args"]


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="folder written by HyperLoRA.save_pretrained")
    parser.add_argument("--base-model", default=None,
                        help="local folder of the student, or toy:<family> (default: the one the checkpoint records)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of the student's weights (default: as saved)")


def load_hyperlora(checkpoint: str | Path, base_model: str | Path | None = None, device: str | None = None,
                   dtype: torch.dtype | None = None) -> HyperLoRA:
    """A checkpoint bound to its student, in eval mode on ``device``.

    Raises:
        FileNotFoundError: the checkpoint or ``base_model`` folder is missing.
        ValueError: the checkpoint was made for another student, or is corrupt.
    """
    # Read the checkpoint's config first: a wrong path fails before the student loads.
    read_checkpoint_config(Path(checkpoint))
    kwargs = {"dtype": dtype} if dtype is not None else {}
    student = tokenizer = None
    if base_model is not None:
        if not is_base_model_name(base_model):
            # Checked here: transformers would take a missing path for a Hub id and go online.
            raise FileNotFoundError(f"--base-model {base_model} is not a local folder (nor a toy: name).")
        student, tokenizer = load_base_model(base_model, **kwargs)
        kwargs = {}
    hyper = HyperLoRA.from_pretrained(checkpoint, student, tokenizer, **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if hyper.tokenizer is None:
        raise ValueError(f"No tokenizer next to the base model of {checkpoint}: save one with the student.")
    return hyper.to(device).eval()


def load_from_args(args: argparse.Namespace) -> HyperLoRA:
    """``load_hyperlora`` for a command: without transformers' progress bars.

    A command's stdout carries its results and its stderr one line per problem;
    loading bars in between would make both harder to read and to parse.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return load_hyperlora(args.checkpoint, args.base_model, args.device, DTYPES.get(args.dtype) if args.dtype else None)
