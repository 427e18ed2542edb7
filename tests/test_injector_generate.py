"""generate() under inject: each row follows its own adapter through padding, cache and beams.

Beams and ``num_return_sequences`` make generate() expand a batch of B prompts
to k·B rows (row-major); the injector must expand the adapters the same way.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SPEC, make_adapters, random_ids, select_rows
from torch import Tensor, nn

from hyperlora.injector import inject
from hyperlora.lora import AdapterBatch
from hyperlora.targets import find_targets
from hyperlora.toy.models import tiny_model

NEW = 5
PAD = 0
LENGTHS = (6, 3)  # different prompt lengths: row 1 is left-padded


def _left_padded(prompts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``ids [B, T]`` and ``attention_mask [B, T]`` with padding on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


def _generate(model: nn.Module, ids: Tensor, mask: Tensor, **settings: object) -> Tensor:
    """The new tokens only, ``[B·k, NEW]``; min_new_tokens pins every length to NEW."""
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=PAD, **settings
    )
    return out[:, ids.shape[1] :]


def _setup() -> tuple[nn.Module, AdapterBatch, list[Tensor]]:
    model = tiny_model("llama")
    # Larger adapters than elsewhere, so each row's greedy continuation visibly depends on its adapter.
    adapters = make_adapters(find_targets(model), rows=2, scale=0.6)
    prompts = [random_ids(1, n, seed=10 + n)[0] for n in LENGTHS]
    return model, adapters, prompts


SETTINGS = {
    "greedy_cache": dict(do_sample=False, use_cache=True),
    "greedy_no_cache": dict(do_sample=False, use_cache=False),
    "beams": dict(do_sample=False, num_beams=2),
    "beams_return_2": dict(do_sample=False, num_beams=2, num_return_sequences=2),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_batched_generate_equals_rows_alone(name: str) -> None:
    settings = SETTINGS[name]
    model, adapters, prompts = _setup()
    ids, mask = _left_padded(prompts)
    with inject(model, adapters, SPEC):
        batched = _generate(model, ids, mask, **settings)
    per_prompt = settings.get("num_return_sequences", 1)
    assert batched.shape == (2 * per_prompt, NEW)
    for i, prompt in enumerate(prompts):
        alone_ids = prompt[None]  # batch of 1, no padding
        with inject(model, select_rows(adapters, i), SPEC):
            alone = _generate(model, alone_ids, torch.ones_like(alone_ids), **settings)
        assert torch.equal(batched[i * per_prompt : (i + 1) * per_prompt], alone)


def test_adapters_change_what_is_generated() -> None:
    # Guards the test above: if adapters did not matter it would pass vacuously.
    model, adapters, prompts = _setup()
    ids, mask = _left_padded(prompts)
    base = _generate(model, ids, mask, do_sample=False)
    with inject(model, adapters, SPEC):
        adapted = _generate(model, ids, mask, do_sample=False)
        swapped_ids, swapped_mask = _left_padded(prompts[::-1])
        swapped = _generate(model, swapped_ids, swapped_mask, do_sample=False)
    assert not torch.equal(base, adapted)
    # Same prompts, other adapters: row 0 now carries adapter 0 with prompt 1.
    assert not torch.equal(swapped.flip(0), adapted)
