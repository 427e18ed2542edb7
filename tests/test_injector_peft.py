"""Row i of a hooked mixed batch equals PEFT's own LoRA layer holding adapter i."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import Adapters, make_adapters, random_ids, select_rows
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from hyperlora.injector import inject
from hyperlora.lora import LoRASpec
from hyperlora.targets import Target, find_targets
from hyperlora.toy.models import tiny_model

ROWS = 3


def _peft_with_row(model: nn.Module, targets: list[Target], adapters: Adapters, spec: LoRASpec, i: int) -> nn.Module:
    """A PEFT-wrapped copy of ``model`` whose LoRA weights are row ``i`` of ``adapters``."""
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        use_rslora=spec.rslora,
        target_modules=[t.name for t in targets],
        lora_dropout=0.0,
        # GPT-2's Conv1D stores its weight [D, O]; PEFT must be told, or it refuses/merges wrongly.
        fan_in_fan_out=any(t.is_conv1d for t in targets),
    )
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    row = select_rows(adapters, i)
    wrapped = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for t in targets:
            A, B = row[t.name]
            layer = wrapped[t.name]
            assert layer.scaling["default"] == pytest.approx(spec.scaling)  # α/R, or α/√R with rsLoRA
            # PEFT keeps A and B as nn.Linear weights: lora_A [R, D], lora_B [O, R].
            assert layer.lora_A["default"].weight.shape == (spec.rank, t.d_in)
            assert layer.lora_B["default"].weight.shape == (t.d_out, spec.rank)
            layer.lora_A["default"].weight.copy_(A[0].T)
            layer.lora_B["default"].weight.copy_(B[0].T)
    return peft_model


@torch.no_grad()
def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids).logits


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3"])
def test_mixed_batch_row_equals_peft(family: str, rslora: bool) -> None:
    spec = LoRASpec(rank=4, alpha=8.0, rslora=rslora)
    model = tiny_model(family)
    targets = find_targets(model)
    adapters = make_adapters(targets, rows=ROWS, spec=spec)
    ids = random_ids(ROWS, 7)
    base = _logits(model, ids)
    with inject(model, adapters, spec):
        mixed = _logits(model, ids)
    for i in range(ROWS):
        peft_model = _peft_with_row(model, targets, adapters, spec, i)
        expected = _logits(peft_model, ids[i : i + 1])[0]
        assert (expected - base[i]).abs().max() > 1e-2  # PEFT really applied a non-zero adapter
        torch.testing.assert_close(mixed[i], expected, atol=1e-5, rtol=1e-4)
