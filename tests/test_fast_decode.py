"""The decode fast path (``hyperlora.fast_decode``): which targets are grouped, that grouping saves shrinks,
that a grouped injection gives the dense merged-weight reference whatever the inputs do, and that the
injector without the fast path decodes the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SPEC, make_adapters, merged_copy, random_ids, select_rows
from torch import Tensor, nn

from hyperlora.fast_decode import MAX_TOKENS
from hyperlora.injection_state import INJECTION_STATE
from hyperlora.injector import inject
from hyperlora.lora import delta_weight
from hyperlora.targets import find_targets
from hyperlora.toy.models import MODEL_FAMILIES, tiny_model

ATOL = 1e-5


@torch.no_grad()
def _logits(model: nn.Module, ids: Tensor, adapters: dict | None = None, **kw: object) -> Tensor:
    if adapters is None:
        return model(ids).logits
    with inject(model, adapters, SPEC, **kw):
        return model(ids).logits


def _learn(model: nn.Module, adapters: dict) -> None:
    _logits(model, random_ids(adapters[next(iter(adapters))][0].shape[0], 5), adapters)


def test_first_injection_learns_the_targets_that_read_one_tensor() -> None:
    """Llama: q, k and v of each layer read the normed hidden states; o reads the attention output;
    with every linear targeted, gate and up read one tensor too, down another."""
    model = tiny_model("llama")
    for targets, per_layer in ((None, [("q_proj", "k_proj", "v_proj")]),
                               ("all-linear", [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")])):
        chosen = find_targets(model, targets)
        names = [t.name for t in chosen]
        assert INJECTION_STATE.learned_groups(model, names) is None
        _learn(model, make_adapters(chosen, 2))
        groups = INJECTION_STATE.learned_groups(model, names)
        layers = model.config.num_hidden_layers
        expected = {tuple(f"model.layers.{i}.{part}.{m}" for m in members)
                    for i in range(layers) for members in per_layer
                    for part in (("self_attn",) if members[0] == "q_proj" else ("mlp",))}
        assert set(groups) == expected


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_grouped_rows_equal_merged_weights(family: str) -> None:
    """After learning, every row of a mixed batch equals the dense reference with its ΔW merged, and the
    ungrouped injector's output, on every family (some have no groups: fused qkv)."""
    model = tiny_model(family)
    targets = find_targets(model, "all-linear")
    adapters = make_adapters(targets, rows=3)
    _learn(model, adapters)
    ids = random_ids(3, 7)
    grouped = _logits(model, ids, adapters)
    separate = _logits(model, ids, adapters, share_inputs=False)
    torch.testing.assert_close(grouped, separate, atol=ATOL, rtol=1e-4)
    base = _logits(model, ids)
    for i in range(3):
        reference = _logits(merged_copy(model, select_rows(adapters, i), SPEC, targets), ids[i : i + 1])[0]
        assert (reference - base[i]).abs().max() > 1e-2
        torch.testing.assert_close(grouped[i], reference, atol=ATOL, rtol=1e-4)


def test_groups_halve_the_shrinks_of_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """q, k, v, o per layer: four shrinks separately, two grouped (one for q/k/v, one for o) in short
    steps; and the same greedy generation with beams (rows expanded), grouped or not."""
    model = tiny_model("llama").eval()
    adapters = make_adapters(find_targets(model), rows=2)
    _learn(model, adapters)
    calls: list[tuple[int, ...]] = []
    real_bmm = torch.bmm

    def counting_bmm(a: Tensor, b: Tensor, *args: object, **kwargs: object) -> Tensor:
        calls.append(tuple(b.shape))
        return real_bmm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting_bmm)  # hooks bind torch.bmm when they are made
    layers, ids = model.config.num_hidden_layers, random_ids(2, 6)
    for share, shrinks in ((False, 4), (True, 2)):
        calls.clear()
        _logits(model, ids, adapters, share_inputs=share)
        assert len(calls) == shrinks * layers
    calls.clear()  # longer steps (a prefill, a forward) keep a shrink per target
    _logits(model, random_ids(2, MAX_TOKENS + 1), adapters)
    assert len(calls) == 4 * layers
    calls.clear()
    _logits(model, ids, adapters)
    rank = SPEC.rank
    assert sorted({shape[-1] for shape in calls}) == [rank, 3 * rank]  # o alone; q|k|v together
    outs = []
    for share in (True, False):
        with torch.no_grad(), inject(model, adapters, SPEC, share_inputs=share):
            outs.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                                       num_beams=2, num_return_sequences=2, do_sample=False, pad_token_id=0))
    assert torch.equal(outs[0], outs[1])


class Siblings(nn.Module):
    """Two projections under one parent, fed one tensor or two, or one changed in place between them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 6, bias=False), nn.Linear(8, 5, bias=False)

    def forward(self, x: Tensor, other: Tensor | None = None, scale_between: float | None = None) -> Tensor:
        ya = self.a(x)
        if scale_between is not None:
            x.mul_(scale_between)
        yb = self.b(x if other is None else other)
        return torch.cat([ya, yb], dim=-1)


def test_shared_shrink_is_used_only_for_the_tensor_it_was_made_from() -> None:
    torch.manual_seed(0)
    model = Siblings()
    gen = torch.Generator().manual_seed(1)
    adapters = {name: (torch.randn(3, 8, SPEC.rank, generator=gen), torch.randn(3, SPEC.rank, d, generator=gen))
                for name, d in (("a", 6), ("b", 5))}
    x, y = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    with torch.no_grad(), inject(model, adapters, SPEC):
        model(x)  # a and b read one tensor: learnt
    assert INJECTION_STATE.learned_groups(model, ["a", "b"]) == (("a", "b"),)

    def reference(xa: Tensor, xb: Tensor) -> Tensor:
        rows = []
        for i in range(3):
            wa = model.a.weight + delta_weight(adapters["a"][0][i], adapters["a"][1][i], SPEC.scaling)
            wb = model.b.weight + delta_weight(adapters["b"][0][i], adapters["b"][1][i], SPEC.scaling)
            rows.append(torch.cat([F.linear(xa[i], wa), F.linear(xb[i], wb)], dim=-1))
        return torch.stack(rows)

    with torch.no_grad(), inject(model, adapters, SPEC):
        same = model(x)
        different = model(x, other=y)  # b reads another tensor: its own shrink
        changed = x.clone()
        in_place = model(changed, scale_between=3.0)  # same object, changed in place between a and b
    torch.testing.assert_close(same, reference(x, x), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(different, reference(x, y), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(in_place, reference(x, x * 3.0), atol=ATOL, rtol=1e-4)


def test_inference_mode_and_mixed_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.inference_mode (no version counters) the shrinks are not shared and nothing fails;
    under autocast, where the inputs are in another dtype than the projections' outputs, they are
    shared, matched on the input before its cast."""
    model = tiny_model("llama").eval()
    adapters = make_adapters(find_targets(model), rows=2)
    _learn(model, adapters)
    ids = random_ids(2, 6)
    expected = _logits(model, ids, adapters, share_inputs=False)
    with torch.inference_mode(), inject(model, adapters, SPEC):
        torch.testing.assert_close(model(ids).logits, expected, atol=ATOL, rtol=1e-4)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                             pad_token_id=0)
    assert out.shape == (2, 9)

    calls: list[int] = []
    real_bmm = torch.bmm

    def counting_bmm(a: Tensor, b: Tensor, *args: object, **kwargs: object) -> Tensor:
        calls.append(b.shape[-1])
        return real_bmm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting_bmm)
    # Autocast: float32 hidden states into bfloat16 matmuls, so each hook casts its input.
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared_logits = _logits(model, ids, adapters)
        assert len(calls) == 2 * model.config.num_hidden_layers  # one shrink for q, k, v; one for o
        separate_logits = _logits(model, ids, adapters, share_inputs=False)
    assert shared_logits.dtype == torch.bfloat16
    torch.testing.assert_close(shared_logits.float(), separate_logits.float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_injector_without_the_fast_path_decodes_the_same(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``inject.fast_decode = None``, as if ``hyperlora.fast_decode`` were deleted: every call takes the
    reference hook. Greedy decoding (per-step logits) and beam search (rows expanded) give what the fast
    path gives, and each row's logits equal the dense merged-weight reference's."""
    model = tiny_model(family).eval()
    targets = find_targets(model, "all-linear")
    adapters = make_adapters(targets, rows=2)
    _learn(model, adapters)  # groups learnt: the fast path shares shrinks where the family allows
    ids = random_ids(2, 6)
    greedy = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    beams = {**greedy, "num_beams": 2, "num_return_sequences": 2}
    shrink_ranks: list[int] = []
    real_bmm = torch.bmm

    def counting_bmm(a: Tensor, b: Tensor, *args: object, **kwargs: object) -> Tensor:
        shrink_ranks.append(b.shape[-1])
        return real_bmm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting_bmm)

    @torch.no_grad()
    def decode(net: nn.Module, rows: Tensor, adapters_: dict | None) -> tuple[Tensor, Tensor, Tensor]:
        """Greedy tokens, their per-step logits ``[B, steps, V]``, and beam-search tokens."""
        mask = torch.ones_like(rows)
        with inject(net, adapters_, SPEC) if adapters_ is not None else torch.no_grad():
            out = net.generate(rows, attention_mask=mask, output_logits=True, return_dict_in_generate=True, **greedy)
            with_beams = net.generate(rows, attention_mask=mask, **beams)
        return out.sequences, torch.stack(out.logits, dim=1), with_beams

    shrink_ranks.clear()
    fast = decode(model, ids, adapters)
    shared = any(rank > SPEC.rank for rank in shrink_ranks)  # a shrink of a whole group ran
    assert shared == (family == "llama")  # gpt2's fused c_attn has no siblings that read its input
    monkeypatch.setattr(inject, "fast_decode", None)
    shrink_ranks.clear()
    reference = decode(model, ids, adapters)
    assert shrink_ranks and all(rank == SPEC.rank for rank in shrink_ranks)  # one shrink per target
    torch.testing.assert_close(reference[1], fast[1], atol=ATOL, rtol=1e-4)
    assert torch.equal(reference[0], fast[0]) and torch.equal(reference[2], fast[2])
    base_tokens = decode(model, ids, None)[0]
    for i in range(2):
        dense = decode(merged_copy(model, select_rows(adapters, i), SPEC, targets), ids[i : i + 1], None)
        torch.testing.assert_close(fast[1][i], dense[1][0], atol=ATOL, rtol=1e-4)
        assert torch.equal(fast[0][i], dense[0][0])
        assert torch.equal(fast[2][2 * i : 2 * i + 2], dense[2])
    assert not torch.equal(fast[0], base_tokens)  # the adapters change what is decoded
