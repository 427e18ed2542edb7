"""Loading a checkpoint for the use-it commands (generate, inspect, export, merge).

Every command takes the same options: ``--checkpoint DIR`` (written by
``HyperLoRA.save_pretrained``), ``--base-model DIR`` (the student, when it has
moved since training; the checkpoint records its absolute path and its fingerprint,
and a model with another fingerprint is refused unless ``--allow-other-base-model``),
``--device`` and ``--dtype``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from hyperlora.base_models import DTYPES, is_base_model_name, load_base_model
from hyperlora.model import HyperLoRA, read_checkpoint_config

__all__ = ["add_checkpoint_arguments", "load_from_args", "load_hyperlora", "resolve_device"]

DEVICE_FORMS = "cpu, cuda, cuda:N or mps"


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="folder written by HyperLoRA.save_pretrained")
    parser.add_argument("--base-model", default=None,
                        help="the student: a local folder, a .gguf file, smollm2-135m-instruct or toy:<family> "
                             "(default: the one the checkpoint records)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of the student's weights (default: as saved)")
    parser.add_argument("--allow-other-base-model", action="store_true",
                        help="load even when the base model's fingerprint is not the one the checkpoint was trained on "
                             "(a fine-tuned variant, on purpose)")


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine (default: cuda when available), or a one-line error."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", device.strip())
    if match is None:
        raise ValueError(f"--device {device!r} is not a device; use one of {DEVICE_FORMS}.")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device here; use --device cpu.")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: no MPS device here; use --device cpu.")
    elif kind == "cpu" and index not in (None, "0"):
        raise ValueError(f"--device {device!r} is not a device; use one of {DEVICE_FORMS}.")
    return device.strip()


def load_hyperlora(checkpoint: str | Path, base_model: str | Path | None = None, device: str | None = None,
                   dtype: torch.dtype | None = None, allow_other_base_model: bool = False) -> HyperLoRA:
    """A checkpoint bound to its student, in eval mode on ``device``.

    Raises:
        FileNotFoundError: the checkpoint or ``base_model`` folder is missing.
        ValueError: the checkpoint was made for another student (another architecture, or
            another fingerprint without ``allow_other_base_model``), is corrupt, or ``device``
            is not one this machine has.
    """
    # The device and the checkpoint's config first: a wrong path fails before the student loads.
    device = resolve_device(device)
    read_checkpoint_config(Path(checkpoint))
    kwargs = {"dtype": dtype} if dtype is not None else {}
    student = tokenizer = None
    if base_model is not None:
        if not is_base_model_name(base_model):
            # Checked here: transformers would take a missing path for a Hub id and go online.
            raise FileNotFoundError(f"--base-model {base_model} is not a local folder or .gguf file (nor a toy: or "
                                    "packaged name such as smollm2-135m-instruct).")
        student, tokenizer = load_base_model(base_model, **kwargs)
        kwargs = {}
    hyper = HyperLoRA.from_pretrained(checkpoint, student, tokenizer, allow_other_base_model=allow_other_base_model,
                                      **kwargs)
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
    return load_hyperlora(args.checkpoint, args.base_model, args.device, DTYPES.get(args.dtype) if args.dtype else None,
                          getattr(args, "allow_other_base_model", False))
