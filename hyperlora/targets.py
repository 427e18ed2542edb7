"""Target registry: which projections of a causal LM receive a LoRA adapter.

A *target* is one ``nn.Linear`` (or transformers' ``Conv1D``, GPT-2's transposed
linear) inside the student. The registry knows each target's shape, the decoder
layer it sits in and its *kind* (its name with the layer prefix removed, e.g.
``self_attn.q_proj``), which is what the generator embeds.

Axis letters used across the package: B batch, T tokens, D in-features,
O out-features, R rank.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["Target", "TargetSpec", "find_targets", "group_by_shape", "linear_features", "linear_module_names"]

# ``None`` / "attention": every projection inside an attention block.
# "all-linear": every linear except the LM head. A list: module-name suffixes.
# Any other string: a regular expression searched in the full module name.
TargetSpec = str | Sequence[str] | None

# A module is "inside attention" when one of its parents' names is one of these.
# This covers q/k/v/o under every family's naming (Llama's self_attn.q_proj,
# GPT-2's attn.c_attn, GPT-NeoX's attention.query_key_value, Phi-3's qkv_proj)
# without a per-family table of projection names.
_ATTENTION_SCOPES = re.compile(r"^(self_attn|attn|attention|self_attention|mixer)$")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Target:
    """One adapted projection.

    ``d_in``/``d_out`` are the mathematical in/out features (D, O) whatever the
    weight layout: ``nn.Linear`` stores ``[O, D]``, ``Conv1D`` stores ``[D, O]``.
    """

    name: str
    module: nn.Module
    d_in: int
    d_out: int
    layer: int
    kind: str
    is_conv1d: bool

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, O)``: the key of this target's shape group."""
        return (self.d_in, self.d_out)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """``(D, O)`` of an ``nn.Linear`` or a transformers ``Conv1D``."""
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape  # Conv1D keeps the weight as [D, O]
        return int(d_in), int(d_out)
    return int(module.in_features), int(module.out_features)


def _lm_head_ids(model: nn.Module) -> set[int]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {id(head)} if head is not None else set()


def _linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    skip = _lm_head_ids(model)
    return [(n, m) for n, m in model.named_modules() if _is_linear(m) and id(m) not in skip]


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct linear module names of ``model`` with layer indices folded to ``*``.

    Used in error messages, so a 32-layer model lists its ~7 kinds of
    projection instead of 224 names.
    """
    seen: dict[str, None] = {}
    for name, _ in _linear_modules(model):
        seen.setdefault(_LAYER_INDEX.sub(".*.", name), None)
    return list(seen)


def _layer_and_kind(name: str) -> tuple[int, str]:
    match = _LAYER_INDEX.search(f".{name}.")
    if match is None:
        return -1, name
    # The kind is what follows the layer index: it is the same in every layer.
    return int(match.group(1)), f".{name}."[match.end() :].strip(".")


def _in_attention(name: str) -> bool:
    return any(_ATTENTION_SCOPES.match(part) for part in name.split(".")[:-1])


def _matcher(targets: TargetSpec):
    if targets is None or targets == "attention":
        return _in_attention, "the attention projections"
    if targets == "all-linear":
        return (lambda name: True), "all-linear"
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise ValueError(f"targets={targets!r} is not a valid regular expression: {err}") from err
        return (lambda name: pattern.search(name) is not None), f"the regex {targets!r}"
    suffixes = list(targets)
    if not suffixes or not all(isinstance(s, str) and s for s in suffixes):
        raise ValueError(f"targets={targets!r}: give non-empty module-name suffixes, a regex, or 'all-linear'.")

    def by_suffix(name: str) -> bool:
        return any(name == s or name.endswith("." + s) for s in suffixes)

    return by_suffix, f"the suffixes {suffixes}"


def find_targets(model: nn.Module, targets: TargetSpec = None) -> list[Target]:
    """Return the target projections of ``model`` in module order.

    Args:
        model: any Hugging Face causal LM (or any module holding linears).
        targets: ``None``/``"attention"`` (default: q, k, v, o under the family's
            names, fused or not), ``"all-linear"`` (every linear but the LM head),
            a list of module-name suffixes (``["q_proj", "attn.c_proj"]``), or a
            regex searched in the full module name.

    Raises:
        ValueError: nothing matched; the message lists the model's linear names.
    """
    accept, described = _matcher(targets)
    found: list[Target] = []
    for name, module in _linear_modules(model):
        if not accept(name):
            continue
        d_in, d_out = linear_features(module)
        layer, kind = _layer_and_kind(name)
        found.append(Target(name, module, d_in, d_out, layer, kind, isinstance(module, Conv1D)))
    if not found:
        names = ", ".join(linear_module_names(model)) or "(none)"
        raise ValueError(
            f"No target projection matched {described}. The model's linear modules are: {names}. "
            "Pass targets= as suffixes of these names, a regex, or 'all-linear'."
        )
    return found


def group_by_shape(targets: Iterable[Target]) -> dict[tuple[int, int], list[Target]]:
    """``{(D, O): [targets]}``, groups and members in first-seen module order."""
    groups: dict[tuple[int, int], list[Target]] = {}
    for target in targets:
        groups.setdefault(target.shape, []).append(target)
    return groups
