"""The shape-grouped generator: shapes per family, zero start, exact parameter counts.

Axis letters: B batch, D in-features, O out-features, R rank, H trunk width (d_hidden).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlora.generator import GeneratorConfig, ShapeGroupedLoRAGenerator
from hyperlora.lora import LoRASpec
from hyperlora.targets import Target, find_targets
from hyperlora.toy.models import tiny_model

SPEC = LoRASpec(rank=4, alpha=8.0)
R = SPEC.rank
D_CTX = 16
CONFIG = GeneratorConfig(d_emb=8, d_hidden=32)

# (D, O) of each projection kind, written by hand from the tiny configs (width 32,
# MLP 64, 4 query heads over 2 KV heads of size 8): independent of the registry code.
LLAMA_SHAPES = {
    "q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32),
    "gate_proj": (32, 64), "up_proj": (32, 64), "down_proj": (64, 32),
}
GPT2_SHAPES = {"c_attn": (32, 96), "c_proj": (32, 32)}  # Conv1D, fused q|k|v
PHI3_SHAPES = {"qkv_proj": (32, 32 + 16 + 16), "o_proj": (32, 32)}  # fused, GQA

CASES = [
    ("llama", None, LLAMA_SHAPES, 8),
    ("llama", "all-linear", LLAMA_SHAPES, 14),
    ("gpt2", None, GPT2_SHAPES, 4),
    ("phi3", None, PHI3_SHAPES, 4),
]
CASE_IDS = ["llama", "llama-all-linear", "gpt2", "phi3"]


def build(
    family: str, targets: str | None = None, config: GeneratorConfig = CONFIG
) -> tuple[ShapeGroupedLoRAGenerator, list[Target]]:
    found = find_targets(tiny_model(family), targets)
    torch.manual_seed(0)
    return ShapeGroupedLoRAGenerator(found, SPEC, D_CTX, config), found


def expected_shape(name: str, table: dict[str, tuple[int, int]]) -> tuple[int, int]:
    return table[name.rsplit(".", 1)[-1]]


# -- shapes -------------------------------------------------------------------


@pytest.mark.parametrize(("family", "targets", "table", "n_targets"), CASES, ids=CASE_IDS)
def test_shapes_and_groups(
    family: str, targets: str | None, table: dict[str, tuple[int, int]], n_targets: int
) -> None:
    gen, found = build(family, targets)
    out = gen(torch.randn(3, D_CTX))
    assert len(found) == n_targets
    assert set(out) == {t.name for t in found}
    for name, (A, B) in out.items():
        d, o = expected_shape(name, table)
        assert A.shape == (3, d, R), name
        assert B.shape == (3, R, o), name
    # One head per distinct shape, no more.
    assert len(gen.heads) == len({expected_shape(t.name, table) for t in found})


@pytest.mark.parametrize(("family", "targets", "table", "n_targets"), CASES, ids=CASE_IDS)
def test_output_keys_follow_target_order(
    family: str, targets: str | None, table: dict[str, tuple[int, int]], n_targets: int
) -> None:
    # Readers (analysis, export) walk the adapters layer by layer: module order, not group order.
    gen, found = build(family, targets)
    out = gen(torch.randn(2, D_CTX))
    assert list(out) == [t.name for t in found]


# -- zero start ----------------------------------------------------------------


@pytest.mark.parametrize("head_rank", [None, 4])
def test_zero_start(head_rank: int | None) -> None:
    gen, _ = build("llama", "all-linear", GeneratorConfig(d_emb=8, d_hidden=32, head_rank=head_rank))
    out = gen(torch.randn(3, D_CTX))
    for name, (A, B) in out.items():
        assert torch.count_nonzero(B) == 0, name
        # A is full rank for every row, so x·A carries signal as soon as B moves.
        assert (torch.linalg.matrix_rank(A) == R).all(), name


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.2)


def test_different_contexts_give_different_adapters() -> None:
    gen, _ = build("llama", "all-linear")
    _randomise(gen.heads)
    c = torch.randn(2, D_CTX)
    out = gen(c)
    for name, (A, B) in out.items():
        assert not torch.allclose(A[0], A[1]), name
        assert not torch.allclose(B[0], B[1]), name
    # The batch rows are independent: each row alone gives the same adapter.
    alone = gen(c[1:])
    for name, (A, B) in out.items():
        torch.testing.assert_close(alone[name][0][0], A[1])
        torch.testing.assert_close(alone[name][1][0], B[1])


# -- parameter counts ------------------------------------------------------------


def _head_params(h: int, d: int, o: int, k: int | None) -> int:
    """One group's head: an A side (H -> D·R) and a B side (H -> R·O), each with a bias."""
    if k is None:
        return (h * d * R + d * R) + (h * R * o + R * o)
    return (h * k + k * d * R + d * R) + (h * k + k * R * o + R * o)


def _trunk_params(h: int, e: int, n_layer_rows: int, n_kinds: int) -> int:
    embeddings = n_layer_rows * e + n_kinds * e
    from_ctx = D_CTX * h + h
    from_target = 2 * e * h  # no bias
    hidden = h * h + h
    norm = 2 * h
    return embeddings + from_ctx + from_target + hidden + norm


@pytest.mark.parametrize("head_rank", [None, 4])
def test_parameter_count_by_hand(head_rank: int | None) -> None:
    h, e = 32, 8
    gen, _ = build("llama", "all-linear", GeneratorConfig(d_emb=e, d_hidden=h, head_rank=head_rank))
    # 2 layers + the "outside any layer" row; 7 kinds of projection.
    trunk = _trunk_params(h, e, n_layer_rows=3, n_kinds=7)
    shapes = [(32, 32), (32, 16), (32, 64), (64, 32)]
    heads = {s: _head_params(h, *s, head_rank) for s in shapes}
    total = sum(p.numel() for p in gen.parameters())
    assert total == trunk + sum(heads.values())
    report = gen.parameter_report()
    assert sum(report.values()) == total
    assert report["trunk"] == trunk
    assert sorted(v for k, v in report.items() if k != "trunk") == sorted(heads.values())


def test_factorised_heads_are_smaller() -> None:
    full, _ = build("llama", "all-linear", GeneratorConfig(d_emb=8, d_hidden=32))
    low, _ = build("llama", "all-linear", GeneratorConfig(d_emb=8, d_hidden=32, head_rank=4))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(low) < count(full)
    assert count(low.heads) < count(full.heads)


# -- config validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        (dict(d_emb=0), "d_emb"), (dict(d_hidden=-1), "d_hidden"),
        (dict(head_rank=0), "head_rank"), (dict(head_rank=-3), "head_rank"),
    ],
)
def test_bad_config_raises(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        GeneratorConfig(**kwargs)


def test_no_targets_raises() -> None:
    with pytest.raises(ValueError, match="target"):
        ShapeGroupedLoRAGenerator([], SPEC, D_CTX, CONFIG)
