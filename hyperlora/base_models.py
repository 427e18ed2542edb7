"""Base models by name: the one place a student (or teacher) and its tokenizer are loaded.

A name is either

* a local Hugging Face folder (``config.json`` + weights + tokenizer), or
* ``toy:<family>``: a randomly initialised tiny model of ``family`` (see
  ``hyperlora.toy.models.MODEL_FAMILIES``) with the character tokenizer. Seeded, so the
  same name always gives the same weights: a checkpoint trained on ``toy:llama`` reloads
  onto the same student. Runs with nothing on disk (the tests, a fresh install).

Nothing goes online: a name that is neither is refused before transformers sees it
(it would take a missing path for a Hub id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DTYPES", "TOY_PREFIX", "TOY_SEED", "is_base_model_name", "load_base_model"]

# The weight dtypes a base model may be loaded in, by the names configs and options use.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TOY_PREFIX = "toy:"
TOY_SEED = 0  # part of what a toy: name means: never change it, or saved toy checkpoints stop fitting


def is_base_model_name(name: str | Path | None) -> bool:
    """Whether ``load_base_model`` can load ``name`` here (a ``toy:`` name or an existing folder)."""
    if name is None:
        return False
    text = str(name)
    return text.startswith(TOY_PREFIX) or Path(text).is_dir()


def load_base_model(name: str | Path, dtype: torch.dtype | str | None = None, attn_implementation: str | None = None,
                    device: torch.device | str | None = None, what: str = "base model",
                    tokenizer: bool = True, **model_kwargs: Any) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for ``name``, the model in eval mode with no gradients.

    Args:
        name: a local Hugging Face folder or ``toy:<family>``.
        dtype: ``torch.float32`` or its name; None keeps the folder's own (float32 for toys).
        attn_implementation: e.g. ``sdpa``; None: transformers' default.
        what: how the caller names the setting, for the error message (``model.path``).
        tokenizer: False to skip loading the tokenizer (then None is returned for it).
        model_kwargs: more arguments of ``AutoModelForCausalLM.from_pretrained`` (folders only).

    Raises:
        FileNotFoundError: ``name`` is not a local folder (nor a ``toy:`` name).
        ValueError: an unknown toy family.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} for {what}; choose one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    text = str(name)
    if text.startswith(TOY_PREFIX):
        if model_kwargs:
            raise TypeError(f"A {TOY_PREFIX} model takes no {sorted(model_kwargs)}: only dtype and attn_implementation.")
        model, tok = _load_toy(text[len(TOY_PREFIX):], dtype, attn_implementation, tokenizer)
    else:
        model, tok = _load_folder(text, dtype, attn_implementation, what, tokenizer, model_kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval().requires_grad_(False), tok


def _load_toy(family: str, dtype: torch.dtype | None, attn_implementation: str | None,
              tokenizer: bool) -> tuple[nn.Module, Any]:
    from hyperlora.toy.models import MODEL_FAMILIES, tiny_model
    from hyperlora.toy.tokenizer import char_tokenizer

    if family not in MODEL_FAMILIES:
        raise ValueError(f"Unknown toy model {TOY_PREFIX}{family}; choose one of "
                         f"{', '.join(TOY_PREFIX + f for f in MODEL_FAMILIES)}.")
    with torch.random.fork_rng(devices=[]):  # tiny_model seeds the global RNG: leave the caller's alone
        model = tiny_model(family, seed=TOY_SEED, dtype=dtype or torch.float32,
                           attn_implementation=attn_implementation or "sdpa")
    # Recorded by HyperLoRA as its base model when no name is given: the name reloads it.
    model.config._name_or_path = TOY_PREFIX + family
    return model, char_tokenizer() if tokenizer else None


def _load_folder(path: str, dtype: torch.dtype | None, attn_implementation: str | None, what: str,
                 tokenizer: bool, model_kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    if not Path(path).is_dir():
        hint = " Run `python scripts/pretrain_teacher.py --preset cpu` first." if "teacher-" in path else ""
        raise FileNotFoundError(
            f"{what}={path!r} is not a local model directory.{hint} Set {what}=/path/to/model or {what}=toy:llama."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tok = AutoTokenizer.from_pretrained(path) if tokenizer else None
    except (OSError, ValueError, KeyError) as err:
        # transformers says "not a valid JSON file" / "Unrecognized model" as OSError/ValueError with no
        # errno: a damaged or foreign folder, which is the user's to fix, not a bug of ours.
        raise ValueError(f"{what}={path!r} cannot be loaded as a Hugging Face causal LM: "
                         f"{' '.join(str(err).split())}") from None
    return model, tok
