"""Row i of a hooked mixed batch equals PEFT's own LoRA layer holding adapter i."""

from __future__ import annotations

import pytest
import torch
from conftest import make_adapters, random_ids
from torch import Tensor, nn

from hyperlora.injector import inject
from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.targets import Target, find_targets
from hyperlora.toy.models import tiny_model
from hyperlora.toy.reference import peft_copy

ROWS = 3


def _peft_with_row(
    model: nn.Module, targets: list[Target], adapters: AdapterBatch, spec: LoRASpec, i: int
) -> nn.Module:
    """A PEFT-wrapped copy of ``model`` whose LoRA weights are row ``i`` of ``adapters``.

    ``peft_copy`` refuses a PEFT scaling other than the spec's (α/R, or α/√R with rsLoRA)
    and LoRA weights of other shapes than ``lora_A [R, D]``, ``lora_B [O, R]``.
    """
    return peft_copy(model, adapters, spec, targets, row=i)


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
