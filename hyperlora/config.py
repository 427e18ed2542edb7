"""``HyperLoRAConfig``: everything needed to rebuild a hypernetwork, validated in one place.

It is what ``save_pretrained`` writes (with the target registry beside it) and
what the Hydra configs in ``conf/`` fill in.
"""

from __future__ import annotations

import dataclasses
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
    def from_dict(cls, data: dict[str, Any]) -> HyperLoRAConfig:
        """Build from plain data (JSON, OmegaConf); unknown keys are an error that names them."""
        parts = {"lora": LoRASpec, "encoder": EncoderConfig, "generator": GeneratorConfig}
        _check_keys("hyperlora config", data, {f.name for f in dataclasses.fields(cls)})
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in parts and isinstance(value, dict):
                part = parts[key]
                _check_keys(key, value, {f.name for f in dataclasses.fields(part)})
                value = part(**value)
            elif key == "targets" and isinstance(value, (list, tuple)):
                value = list(value)
            kwargs[key] = value
        return cls(**kwargs)


def _check_keys(where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}.")
