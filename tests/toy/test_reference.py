"""The reference itself, against computations written out here: the merged copy's projections are
``F.linear(x, W0 + s·(AB)ᵀ)``, the PEFT copy computes what the merged copy does, the draws are seeded.

Axis letters: B batch (rows), T tokens, D in-features, O out-features, R rank.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyperlora.lora import LoRASpec
from hyperlora.targets import find_targets
from hyperlora.toy.models import VOCAB_SIZE, tiny_model
from hyperlora.toy.reference import (
    hook_snapshot,
    merged_copy,
    peft_copy,
    random_adapters,
    random_ids,
    select_rows,
)

SPEC = LoRASpec(rank=4, alpha=8.0)


def test_random_adapters_are_seeded_draws_in_target_order() -> None:
    model = tiny_model("llama")
    targets = find_targets(model)
    adapters = random_adapters(targets, 3, SPEC.rank, seed=5, scale=0.3)
    gen = torch.Generator().manual_seed(5)
    assert list(adapters) == [t.name for t in targets]
    for t in targets:  # per target: A, then B, from one generator
        A = torch.randn(3, t.d_in, SPEC.rank, generator=gen) * 0.3
        B = torch.randn(3, SPEC.rank, t.d_out, generator=gen) * 0.3
        assert torch.equal(adapters[t.name][0], A) and torch.equal(adapters[t.name][1], B), t.name
        assert not adapters[t.name][0].requires_grad


def test_random_adapters_default_scale_dtype_and_grad() -> None:
    targets = find_targets(tiny_model("llama"))
    adapters = random_adapters(targets, 2, SPEC.rank, torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    for t in targets:  # default: A ~ N(0, 1/D), B ~ N(0, 0.01²)
        A = torch.randn(2, t.d_in, SPEC.rank, generator=gen) / t.d_in**0.5
        B = torch.randn(2, SPEC.rank, t.d_out, generator=gen) * 0.01
        a, b = adapters[t.name]
        assert a.dtype == b.dtype == torch.float64 and a.is_leaf and a.requires_grad and b.requires_grad
        assert torch.equal(a.detach(), A.double()) and torch.equal(b.detach(), B.double())


def test_select_rows_keeps_the_row_axis() -> None:
    targets = find_targets(tiny_model("llama"))
    adapters = random_adapters(targets, 3, SPEC.rank, scale=0.3)
    picked = select_rows(adapters, [2, 0])
    one = select_rows(adapters, 1)
    for name, (A, B) in adapters.items():
        assert torch.equal(picked[name][0], A[[2, 0]]) and torch.equal(picked[name][1], B[[2, 0]])
        assert one[name][0].shape == (1, *A.shape[1:]) and torch.equal(one[name][1][0], B[1])


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # nn.Linear [O, D] and Conv1D [D, O]
def test_merged_copy_projection_is_dense_linear(family: str) -> None:
    model = tiny_model(family)
    targets = find_targets(model)
    adapters = random_adapters(targets, 3, SPEC.rank, scale=0.3)
    merged = merged_copy(model, adapters, SPEC, targets, row=1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in targets:
            A, B = adapters[t.name]
            base = model.get_submodule(t.name)
            w0 = base.weight.T if t.is_conv1d else base.weight  # [O, D] whatever the layout
            x = torch.randn(5, t.d_in, generator=gen)
            expected = F.linear(x, w0 + SPEC.scaling * (A[1] @ B[1]).T, base.bias)
            torch.testing.assert_close(merged.get_submodule(t.name)(x), expected, atol=1e-6, rtol=1e-5)
            # A copy: the model itself keeps its base weights.
            assert not torch.equal(merged.get_submodule(t.name).weight, base.weight), t.name
    # Row 1 of the batch is the same as a one-row batch holding it.
    again = merged_copy(model, select_rows(adapters, 1), SPEC, targets)
    for t in targets:
        assert torch.equal(again.get_submodule(t.name).weight, merged.get_submodule(t.name).weight)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_copy_equals_merged_copy(family: str, rslora: bool) -> None:
    spec = LoRASpec(rank=4, alpha=8.0, rslora=rslora)
    model = tiny_model(family)
    targets = find_targets(model)
    adapters = random_adapters(targets, 2, spec.rank, scale=0.3)
    ids = random_ids(1, 7)
    with torch.no_grad():
        base = model(ids).logits
        peft = peft_copy(model, adapters, spec, targets, row=1)(ids).logits
        merged = merged_copy(model, adapters, spec, targets, row=1)(ids).logits
    assert (merged - base).abs().max() > 1e-2  # the adapter really acts
    torch.testing.assert_close(peft, merged, atol=1e-5, rtol=1e-4)


def test_random_ids_avoid_special_ids() -> None:
    ids = random_ids(4, 50, seed=3)
    assert ids.shape == (4, 50) and int(ids.min()) >= 3 and int(ids.max()) < VOCAB_SIZE
    assert torch.equal(ids, random_ids(4, 50, seed=3))
    assert int(random_ids(2, 50, vocab_size=5).max()) < 5


def test_hook_snapshot_sees_hooks() -> None:
    model = tiny_model("llama")
    before = hook_snapshot(model)
    handle = model.get_submodule("model.layers.0.self_attn.q_proj").register_forward_hook(lambda *_: None)
    assert hook_snapshot(model) != before
    handle.remove()
    assert hook_snapshot(model) == before
