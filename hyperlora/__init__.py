"""hyperlora: turn a prompt into LoRA weights for a frozen causal language model."""

from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig, ShapeGroupedLoRAGenerator
from hyperlora.injector import inject
from hyperlora.lora import AdapterBatch, LoRASpec, count_lora_params, delta_weight
from hyperlora.model import HyperLoRA
from hyperlora.targets import Target, find_targets, group_by_shape

__all__ = [
    "AdapterBatch", "EncoderConfig", "GeneratorConfig", "HyperLoRA", "HyperLoRAConfig", "LoRASpec", "ShapeGroupedLoRAGenerator",
    "Target", "count_lora_params", "delta_weight", "find_targets", "group_by_shape", "inject",
]
__version__ = "0.1.0"
