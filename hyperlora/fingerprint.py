"""Fingerprints: short hashes that tell whether a model, or a file, is the one we saw before.

``model_fingerprint`` identifies a loaded model by its config and its weights: every
parameter's and buffer's name, shape and dtype, and a fixed sample of its values (the
first and last 64 and 256 evenly strided ones). Two models of one shape with different
weights differ in the sample with overwhelming probability, while hashing only the sample
costs milliseconds where hashing every byte of an 8B model would take a minute.
``file_sha256`` is the full checksum of a file (a checkpoint's weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["model_fingerprint", "file_sha256"]

_EDGE = 64  # values taken from each end of a tensor
_STRIDED = 256  # values taken at even strides in between

# Config fields that say how a model was saved or loaded, not what it computes.
_VOLATILE = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "_attn_implementation_autoset",
             "_attn_implementation", "attn_implementation", "use_cache", "architectures", "_commit_hash",
             "quantization_config"}


def _config_json(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None:
        return "{}"
    data: dict[str, Any] = config.to_dict()
    return json.dumps({k: v for k, v in sorted(data.items()) if k not in _VOLATILE}, sort_keys=True, default=str)


def _sample(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n <= 2 * _EDGE + _STRIDED:
        picked = flat
    else:
        # clamp: in float32, linspace rounds the last index up to n past 2**24 elements (an embedding matrix)
        index = torch.linspace(0, n - 1, _STRIDED, device=flat.device).long().clamp_(max=n - 1)
        picked = torch.cat([flat[:_EDGE], flat[index], flat[-_EDGE:]])
    # float32 on the CPU: the same weights give the same bytes whatever device or dtype they were loaded in.
    return picked.to("cpu", torch.float32).numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """A 16-hex-digit hash of ``model``'s config and weights (see the module's docstring)."""
    digest = hashlib.sha256(_config_json(model).encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type == "meta":
            raise ValueError(f"Cannot fingerprint {name}: it has no values (meta device).")
        digest.update(f"{name}|{tuple(tensor.shape)}|".encode())
        digest.update(_sample(tensor))
    return digest.hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
