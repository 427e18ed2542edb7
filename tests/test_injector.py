"""The injector: per-row exactness against merged weights, clean exit, dtype, dropout, errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import SPEC, hook_snapshot, make_adapters, merged_copy, random_ids, select_rows
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from hyperlora.injector import inject
from hyperlora.lora import LoRASpec
from hyperlora.targets import find_targets
from hyperlora.toy.models import MODEL_FAMILIES, tiny_model

ATOL = 1e-5


@torch.no_grad()
def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(ids).logits


# -- per-sample exactness -----------------------------------------------------
@pytest.mark.parametrize("path", ["fast decode", "reference hook alone"])
@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_mixed_batch_equals_merged_weights_and_rows_alone(family: str, path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "reference hook alone":  # as if hyperlora.fast_decode were deleted
        monkeypatch.setattr(inject, "fast_decode", None)
    model = tiny_model(family)
    targets = find_targets(model)
    adapters = make_adapters(targets, rows=3)
    ids = random_ids(3, 7)
    base = _logits(model, ids)
    with inject(model, adapters, SPEC):
        mixed = _logits(model, ids)
    for i in range(3):
        with inject(model, select_rows(adapters, i), SPEC):  # batch of 1, its own adapter only
            alone = _logits(model, ids[i : i + 1])[0]
        reference = _logits(merged_copy(model, select_rows(adapters, i), SPEC, targets), ids[i : i + 1])[0]
        # The adapter must matter, or the comparison would prove nothing.
        assert (reference - base[i]).abs().max() > 1e-2
        torch.testing.assert_close(mixed[i], reference, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(mixed[i], alone, atol=ATOL, rtol=1e-4)


def test_permuting_the_batch_permutes_the_outputs() -> None:
    model = tiny_model("llama")
    adapters = make_adapters(find_targets(model), rows=3)
    ids = random_ids(3, 7)
    perm = [2, 0, 1]
    with inject(model, adapters, SPEC):
        out = _logits(model, ids)
    with inject(model, select_rows(adapters, perm), SPEC):
        permuted = _logits(model, ids[perm])
    torch.testing.assert_close(permuted, out[perm], atol=ATOL, rtol=1e-4)
    # Permuting the inputs but not the adapters gives something else.
    with inject(model, adapters, SPEC):
        mismatched = _logits(model, ids[perm])
    assert (mismatched - out[perm]).abs().max() > 1e-2


@pytest.mark.parametrize("layer_cls", [nn.Linear, Conv1D])
def test_two_dimensional_activations(layer_cls: type[nn.Module]) -> None:
    d, o, rows = 8, 6, 4
    layer = nn.Linear(d, o) if layer_cls is nn.Linear else Conv1D(nf=o, nx=d)
    nn.init.normal_(layer.bias)
    holder = nn.Sequential(layer)
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(rows, d, SPEC.rank, generator=gen)
    B = torch.randn(rows, SPEC.rank, o, generator=gen)
    x = torch.randn(rows, d, generator=gen)  # [B, D]: no token axis
    with torch.no_grad(), inject(holder, {"0": (A, B)}, SPEC):
        out = holder[0](x)
    assert out.shape == (rows, o)
    W0 = layer.weight.detach() if layer_cls is nn.Linear else layer.weight.detach().T  # as [O, D]
    for i in range(rows):
        dense = W0 + SPEC.scaling * (A[i] @ B[i]).T
        torch.testing.assert_close(out[i], F.linear(x[i], dense, layer.bias.detach()), atol=ATOL, rtol=1e-4)


def test_bf16_activations_with_fp32_adapters() -> None:
    model32 = tiny_model("llama")
    model16 = tiny_model("llama", dtype=torch.bfloat16)
    targets = find_targets(model32)
    adapters = make_adapters(targets, rows=2)  # fp32
    ids = random_ids(2, 7)
    with inject(model16, adapters, SPEC):
        out = _logits(model16, ids)
    assert out.dtype == torch.bfloat16
    for i in range(2):
        reference = _logits(merged_copy(model32, select_rows(adapters, i), SPEC, targets), ids[i : i + 1])[0]
        effect = (reference - _logits(model32, ids[i : i + 1])[0]).abs().max()
        # bf16 has ~3 significant digits: the error must be small next to the adapter's effect.
        assert (out[i].float() - reference).abs().max() < 0.1 * effect


def test_hooked_linear_keeps_activation_dtype() -> None:
    layer = nn.Linear(8, 6).to(torch.bfloat16)
    A, B = torch.randn(2, 8, SPEC.rank), torch.randn(2, SPEC.rank, 6)
    with torch.no_grad(), inject(nn.Sequential(layer), {"0": (A, B)}, SPEC):
        out = layer(torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


# -- dropout ------------------------------------------------------------------
def _twice(model: nn.Module, spec: LoRASpec) -> tuple[Tensor, Tensor]:
    adapters = make_adapters(find_targets(model), rows=2, spec=spec)
    ids = random_ids(2, 7)
    with inject(model, adapters, spec):
        return _logits(model, ids), _logits(model, ids)


def test_dropout_only_in_training() -> None:
    model = tiny_model("llama")  # attention dropout is 0: any randomness is LoRA dropout
    first, second = _twice(model.eval(), LoRASpec(rank=4, alpha=8.0, dropout=0.5))
    assert torch.equal(first, second)
    first, second = _twice(model.train(), LoRASpec(rank=4, alpha=8.0, dropout=0.5))
    assert not torch.allclose(first, second)
    first, second = _twice(model.train(), LoRASpec(rank=4, alpha=8.0, dropout=0.0))
    assert torch.equal(first, second)


def test_eval_dropout_equals_merged_reference() -> None:
    model = tiny_model("llama")
    targets = find_targets(model)
    spec = LoRASpec(rank=4, alpha=8.0, dropout=0.5)
    adapters = make_adapters(targets, rows=1, spec=spec)
    ids = random_ids(1, 7)
    with inject(model, adapters, spec):
        out = _logits(model, ids)
    torch.testing.assert_close(out, _logits(merged_copy(model, adapters, spec, targets), ids), atol=ATOL, rtol=1e-4)


# -- clean exit ---------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_clean_exit(family: str) -> None:
    model = tiny_model(family)
    user_hook = model.get_submodule(find_targets(model)[0].name).register_forward_hook(lambda *a: None)
    before = hook_snapshot(model)
    ids = random_ids(2, 7)
    base = _logits(model, ids)
    with inject(model, make_adapters(find_targets(model), rows=2), SPEC):
        assert hook_snapshot(model) != before
        assert not torch.allclose(_logits(model, ids), base)
    assert hook_snapshot(model) == before  # the user's own hook survives, ours are gone
    assert torch.equal(_logits(model, ids), base)
    user_hook.remove()


def test_clean_exit_when_the_body_raises() -> None:
    model = tiny_model("llama")
    before = hook_snapshot(model)
    ids = random_ids(2, 7)
    base = _logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with inject(model, make_adapters(find_targets(model), rows=2), SPEC):
            _logits(model, ids)
            raise RuntimeError("boom")
    assert hook_snapshot(model) == before
    assert torch.equal(_logits(model, ids), base)


@pytest.mark.parametrize("grad", [False, True])
def test_batch_mismatch_raises_in_forward_and_exits_clean(grad: bool) -> None:
    model = tiny_model("llama")
    before = hook_snapshot(model)
    ids = random_ids(5, 7)
    base = _logits(model, ids)
    with pytest.raises(ValueError) as info:
        with inject(model, make_adapters(find_targets(model), rows=2), SPEC), torch.set_grad_enabled(grad):
            model(ids)
    message = str(info.value)
    assert re.search(r"\b5\b", message) and re.search(r"\b2\b", message)  # both counts, in words
    assert hook_snapshot(model) == before
    assert torch.equal(_logits(model, ids), base)


def test_checkpoint_functions_restored_after_exception() -> None:
    model = tiny_model("llama").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if "_gradient_checkpointing_func" in m.__dict__]
    assert layers
    originals = [m.__dict__["_gradient_checkpointing_func"] for m in layers]
    with pytest.raises(RuntimeError):
        with inject(model, make_adapters(find_targets(model), rows=2), SPEC):
            assert any(m.__dict__["_gradient_checkpointing_func"] is not f for m, f in zip(layers, originals))
            raise RuntimeError("boom")
    assert all(m.__dict__["_gradient_checkpointing_func"] is f for m, f in zip(layers, originals))


def test_reentering_an_active_injection_is_refused() -> None:
    model = tiny_model("llama")
    ids = random_ids(2, 7)
    injection = inject(model, make_adapters(find_targets(model), rows=2), SPEC)
    with injection:
        injected = _logits(model, ids)
        with pytest.raises(RuntimeError, match="already active"):
            with injection:
                pass
        torch.testing.assert_close(_logits(model, ids), injected)  # the outer block keeps its adapters
    with injection:  # entered again after it ended: fine
        torch.testing.assert_close(_logits(model, ids), injected)


# -- bad input ----------------------------------------------------------------
def _llama_and_adapters() -> tuple[nn.Module, dict]:
    model = tiny_model("llama")
    return model, make_adapters(find_targets(model), rows=3)


def _refused(model: nn.Module, adapters: dict, match: str, spec: LoRASpec = SPEC) -> None:
    before = hook_snapshot(model)
    with pytest.raises(ValueError, match=match):
        with inject(model, adapters, spec):
            pass
    assert hook_snapshot(model) == before  # refused before any hook exists


def test_unknown_target_name() -> None:
    model, adapters = _llama_and_adapters()
    adapters["model.layers.0.self_attn.nope_proj"] = adapters["model.layers.0.self_attn.q_proj"]
    _refused(model, adapters, "nope_proj")


def test_target_that_is_not_linear() -> None:
    model, adapters = _llama_and_adapters()
    _refused(model, {"model.layers.0.self_attn": adapters["model.layers.0.self_attn.q_proj"]}, "not a linear")


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((3, 31, 4), (3, 4, 16)), ((3, 32, 4), (3, 4, 32)), ((3, 32, 5), (3, 5, 16)), ((32, 4), (4, 16))],
)
def test_wrong_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    model, adapters = _llama_and_adapters()
    adapters["model.layers.0.self_attn.k_proj"] = (torch.randn(a_shape), torch.randn(b_shape))  # k: 32 -> 16
    _refused(model, adapters, r"self_attn\.k_proj")


def test_rows_disagree() -> None:
    model, adapters = _llama_and_adapters()
    A, B = adapters["model.layers.1.self_attn.o_proj"]
    adapters["model.layers.1.self_attn.o_proj"] = (A[:2], B[:2])
    _refused(model, adapters, "rows")


def test_empty_adapters() -> None:
    _refused(tiny_model("llama"), {}, "adapters")


def test_batch_multiple_of_rows_repeats_each_adapter() -> None:
    # 2 adapters, 4 rows: rows are expanded row-major as generate() does (0, 0, 1, 1).
    model = tiny_model("llama")
    adapters = make_adapters(find_targets(model), rows=2)
    ids = random_ids(2, 7)
    with inject(model, adapters, SPEC):
        small = _logits(model, ids)
        large = _logits(model, ids.repeat_interleave(2, dim=0))
    torch.testing.assert_close(large, small.repeat_interleave(2, dim=0), atol=ATOL, rtol=1e-4)
