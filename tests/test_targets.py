"""The target registry finds the right projections in every family, with the right shapes."""

from __future__ import annotations

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from hyperlora.targets import find_targets, group_by_shape
from hyperlora.toy.models import MODEL_FAMILIES, tiny_model

_LLAMA_ATTN = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
# Written out per family rather than derived, so a registry change shows up here.
EXPECTED_KINDS: dict[str, set[str]] = {
    "llama": _LLAMA_ATTN,
    "qwen2": _LLAMA_ATTN,
    "qwen3": _LLAMA_ATTN,
    "mistral": _LLAMA_ATTN,
    "gemma": _LLAMA_ATTN,
    "phi3": {"self_attn.qkv_proj", "self_attn.o_proj"},
    "gpt2": {"attn.c_attn", "attn.c_proj"},
    "gpt_neox": {"attention.query_key_value", "attention.dense"},
}


def test_every_family_has_expected_kinds() -> None:
    assert set(MODEL_FAMILIES) == set(EXPECTED_KINDS)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_default_targets_are_attention_projections(family: str) -> None:
    model = tiny_model(family)
    found = find_targets(model)
    assert {t.kind for t in found} == EXPECTED_KINDS[family]
    assert len(found) == 2 * len(EXPECTED_KINDS[family])  # each kind once per layer, no duplicates
    assert len({t.name for t in found}) == len(found)
    assert sorted({t.layer for t in found}) == [0, 1]
    modules = dict(model.named_modules())
    for t in found:
        assert modules[t.name] is t.module
        assert f".{t.layer}.{t.kind}" in t.name
        # Shapes read independently of the registry, from the weight layout of each class.
        if isinstance(t.module, Conv1D):
            assert t.is_conv1d and (t.d_in, t.d_out) == tuple(t.module.weight.shape)
        else:
            assert isinstance(t.module, nn.Linear) and not t.is_conv1d
            assert (t.d_in, t.d_out) == (t.module.weight.shape[1], t.module.weight.shape[0])


def test_gpt2_conv1d_shapes_and_mlp_excluded() -> None:
    found = {t.kind: t for t in find_targets(tiny_model("gpt2"))}
    assert found["attn.c_attn"].is_conv1d and found["attn.c_attn"].shape == (32, 96)  # fused q, k, v
    assert found["attn.c_proj"].is_conv1d and found["attn.c_proj"].shape == (32, 32)
    assert "mlp.c_proj" not in found  # same leaf name as attn.c_proj, but not attention


def test_llama_gqa_shapes() -> None:
    shapes = {t.kind: t.shape for t in find_targets(tiny_model("llama"))}
    # 4 query heads, 2 KV heads of width 8: k and v project 32 -> 16.
    assert shapes == {
        "self_attn.q_proj": (32, 32),
        "self_attn.k_proj": (32, 16),
        "self_attn.v_proj": (32, 16),
        "self_attn.o_proj": (32, 32),
    }


def test_group_by_shape_llama() -> None:
    found = find_targets(tiny_model("llama"))
    groups = group_by_shape(found)
    assert list(groups) == [(32, 32), (32, 16)]  # first seen: q_proj before k_proj
    names = {shape: [t.name for t in members] for shape, members in groups.items()}
    assert names[(32, 32)] == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "o")]
    assert names[(32, 16)] == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("k", "v")]


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_group_by_shape_keeps_first_seen_order(family: str) -> None:
    found = find_targets(tiny_model(family), "all-linear")
    groups = group_by_shape(found)
    first_seen: list[tuple[int, int]] = []
    for t in found:
        if t.shape not in first_seen:
            first_seen.append(t.shape)
    assert list(groups) == first_seen
    assert sum(len(g) for g in groups.values()) == len(found)
    for shape, members in groups.items():
        assert all(t.shape == shape for t in members)
        assert members == [t for t in found if t.shape == shape]  # module order inside a group


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_all_linear_includes_mlp_but_never_lm_head(family: str) -> None:
    model = tiny_model(family)
    names = [t.name for t in find_targets(model, "all-linear")]
    head = model.get_output_embeddings()
    every_linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not head]
    assert names == every_linear
    assert not any(n.endswith("lm_head") or n.endswith("embed_out") for n in names)
    assert any(".mlp." in n for n in names)
    assert {t.name for t in find_targets(model)} < set(names)


def test_all_linear_skips_tied_gpt2_head() -> None:
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: the head is no separate weight
    kinds = [t.kind for t in find_targets(model, "all-linear")]
    assert kinds == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] * 2


def test_suffix_list() -> None:
    found = find_targets(tiny_model("llama"), ["q_proj", "v_proj"])
    assert [t.name for t in found] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    # A dotted suffix disambiguates GPT-2's two c_proj.
    gpt2 = [t.name for t in find_targets(tiny_model("gpt2"), ["attn.c_proj"])]
    assert gpt2 == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    # A suffix matches whole name components only ("proj" is no suffix of "q_proj").
    with pytest.raises(ValueError):
        find_targets(tiny_model("llama"), ["proj"])


def test_regex() -> None:
    found = find_targets(tiny_model("llama"), r"layers\.1\..*(q|v)_proj$")
    assert [t.name for t in found] == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert all(t.layer == 1 for t in found)


@pytest.mark.parametrize("spec", ["nothing_here", ["nothing_here"]])
def test_no_match_lists_linear_names(spec: str | list[str]) -> None:
    with pytest.raises(ValueError) as info:
        find_targets(tiny_model("llama"), spec)
    message = str(info.value)
    for name in ("q_proj", "o_proj", "down_proj"):
        assert name in message
    assert "lm_head" not in message


@pytest.mark.parametrize("bad", ["(", "[a-", ["q_proj", ""], []])
def test_invalid_spec_raises(bad: str | list[str]) -> None:
    with pytest.raises(ValueError):
        find_targets(tiny_model("llama"), bad)
