"""Nested training state (optimiser, schedule, data stream, RNG) saved without pickle.

``torch.save``/``torch.load`` pickle Python objects, and unpickling a planted file runs its
code. Here a state is split in two files: every tensor goes to a safetensors file (raw
bytes, nothing executable), everything else to JSON. Loading rebuilds the same nested
structure, tuples, integer keys and non-finite floats included, and accepts nothing
but dicts, lists, tuples, strings, numbers, booleans, ``None`` and tensors.

    save_state(state, folder / "trainer_state")   # trainer_state.json + trainer_state.safetensors
    state = load_state(folder / "trainer_state")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["StateError", "save_state", "load_state", "state_files"]

FORMAT = "hyperlora-state/1"


class StateError(ValueError):
    """A state file that is missing, truncated, or holds something other than plain data and tensors."""


def state_files(stem: str | Path) -> tuple[Path, Path]:
    """``(STEM.json, STEM.safetensors)``."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        # safetensors refuses views into shared storage; a private contiguous copy is what gets saved.
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__tensor__" not in value and "__items__" not in value:
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # inf, -inf, nan: JSON has no literal for them
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"Cannot save a {type(value).__name__} in a training state: only plain data and tensors.")


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        key = value["__tensor__"]
        if key not in tensors:
            raise StateError(f"{where} refers to tensor {key!r}, which its .safetensors file does not hold.")
        return tensors[key]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, where) for v in value["__tuple__"])
    if "__float__" in value:
        if value["__float__"] not in ("inf", "-inf", "nan"):
            raise StateError(f"{where} holds an unknown float {value['__float__']!r}.")
        return float(value["__float__"])
    if "__items__" in value:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value["__items__"]}
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def save_state(state: dict[str, Any], stem: str | Path) -> tuple[Path, Path]:
    """Write ``state`` as ``STEM.json`` and ``STEM.safetensors``; returns both paths.

    Raises:
        TypeError: ``state`` holds an object that is neither plain data nor a tensor.
    """
    tensors: dict[str, torch.Tensor] = {}
    body = {"format": FORMAT, "state": _encode(state, tensors)}
    json_path, tensor_path = state_files(stem)
    save_file(tensors, str(tensor_path))
    json_path.write_text(json.dumps(body) + "\n")
    return json_path, tensor_path


def load_state(stem: str | Path) -> dict[str, Any]:
    """The state ``save_state`` wrote at ``stem``; nothing in the files is executed.

    Raises:
        StateError: a file is missing, truncated or not of this format.
    """
    json_path, tensor_path = state_files(stem)
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise StateError(f"{path} is missing.")
    try:
        body = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StateError(f"{json_path} is not valid JSON ({err}); the file is damaged.") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("state"), dict):
        raise StateError(f"{json_path} is not a hyperlora training state (format {FORMAT}).")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise StateError(f"{tensor_path} cannot be read ({err}); the file is damaged.") from None
    return _decode(body["state"], tensors, str(json_path))
