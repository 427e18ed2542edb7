"""``HyperLoRAConfig``: everything needed to rebuild a hypernetwork, validated in one place.

It is what ``save_pretrained`` writes (with the target registry beside it) and
what the Hydra configs in ``conf/`` fill in.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec

__all__ = ["HyperLoRAConfig"]


@dataclass
class HyperLoRAConfig:
    base_model: str | None = None  # local path (or name) of the student; recorded on save
    targets: str | list[str] | None = None  # see hyperlora.targets.find_targets
    lora: LoRASpec = field(default_factory=LoRASpec)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # The prompt-agnostic baseline: every prompt is replaced by one fixed text, so
    # the hypernetwork learns a single LoRA for all tasks (the teacher still reads
    # the real prompts).
    prompt_agnostic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> HyperLoRAConfig:
        """Build from plain data (JSON, OmegaConf).

        Unknown keys and values of the wrong type (``lora: null``, ``lora.alpha: "x"``) are
        a ``ValueError`` that names the key, never a ``TypeError`` from deep inside.
        """
        return _build(cls, data, "")


def _build(cls: Any, data: Any, where: str) -> Any:
    """``cls(**data)`` for a dataclass ``cls``, every value checked against its field's type."""
    if not isinstance(data, Mapping):  # ValueError, as for every bad value: callers report it as bad input
        raise ValueError(  # noqa: TRY004
            f"{where or 'the hyperlora config'} must be a mapping of keys to values, got {_shown(data)}."
        )
    hints = typing.get_type_hints(cls)
    _check_keys(where or "hyperlora config", data, {f.name for f in dataclasses.fields(cls)})
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        hint = hints[key]
        kwargs[key] = _build(hint, value, name) if dataclasses.is_dataclass(hint) else _checked(name, value, hint)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # the dataclass's own checks (ranges, choices)
        raise ValueError(" ".join(str(err).split())) from None


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it has type ``hint`` (ints pass as floats; lists of ``str`` come back as lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _checked(name, value, option)
            except ValueError:
                pass
    elif hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, Sequence) and not isinstance(value, str):
            return [_checked(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    else:
        return value  # a type this checker does not know: the dataclass checks it
    raise ValueError(f"{name} must be {_described(hint)}, got {_shown(value)}.")


def _described(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_described(option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_described(typing.get_args(hint)[0]).split(' ', 1)[-1]}s"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _shown(value: Any) -> str:
    """A value as JSON would name it: ``null``, ``a list``, ``'x' (a string)``."""
    if value is None:
        return "null"
    kinds = {bool: "true or false", str: "a string", int: "an integer", float: "a number"}
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"a list {reprlib.repr(list(value))}"
    kind = next((k for t, k in kinds.items() if isinstance(value, t)), type(value).__name__)
    return f"{reprlib.repr(value)} ({kind})"


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(map(str, set(data) - allowed))
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}.")
