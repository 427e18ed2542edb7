"""LoRA maths: scaling, validation, ΔW layouts, exact parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
from transformers.pytorch_utils import Conv1D

from hyperlora.lora import LoRASpec, count_lora_params, delta_weight
from hyperlora.targets import find_targets
from hyperlora.toy.models import tiny_model

D, O, R = 6, 5, 3


def _manual_delta(A: Tensor, B: Tensor, s: float) -> Tensor:
    """ΔW[o, d] = s · Σ_r A[d, r] B[r, o], summed by hand over the rank: ``[O, D]``."""
    out = torch.zeros(B.shape[1], A.shape[0], dtype=torch.float64)
    for r in range(A.shape[1]):
        out += torch.outer(B[r].double(), A[:, r].double())
    return s * out


@pytest.mark.parametrize(
    ("rank", "alpha", "rslora", "expected"),
    [(4, 8.0, False, 2.0), (4, 8.0, True, 4.0), (16, 32.0, False, 2.0), (16, 32.0, True, 8.0), (8, 1.0, False, 0.125)],
)
def test_scaling(rank: int, alpha: float, rslora: bool, expected: float) -> None:
    assert LoRASpec(rank=rank, alpha=alpha, rslora=rslora).scaling == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rank=0), dict(rank=-1), dict(rank=2.5), dict(rank=True),
        dict(alpha=0.0), dict(alpha=-1.0), dict(alpha=math.nan), dict(alpha=math.inf),
        dict(dropout=1.0), dict(dropout=-0.1),
    ],
)
def test_bad_spec_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LoRASpec(**kwargs)


def test_delta_weight_linear_and_conv1d_layouts() -> None:
    A, B, s = torch.randn(D, R), torch.randn(R, O), 1.5
    expected = _manual_delta(A, B, s)
    linear = delta_weight(A, B, s)
    assert linear.shape == (O, D)
    torch.testing.assert_close(linear.double(), expected, atol=1e-5, rtol=1e-5)
    conv = delta_weight(A, B, s, conv1d=True)
    assert conv.shape == (D, O)
    torch.testing.assert_close(conv.double(), expected.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv1d", [False, True])
def test_delta_weight_batched(conv1d: bool) -> None:
    A, B, s = torch.randn(4, D, R), torch.randn(4, R, O), 0.5
    batched = delta_weight(A, B, s, conv1d=conv1d)
    assert batched.shape == ((4, D, O) if conv1d else (4, O, D))
    for i in range(4):
        expected = _manual_delta(A[i], B[i], s)
        torch.testing.assert_close(batched[i].double(), expected.T if conv1d else expected, atol=1e-5, rtol=1e-5)


def test_delta_weight_rank_mismatch() -> None:
    with pytest.raises(ValueError):
        delta_weight(torch.randn(D, R), torch.randn(R + 1, O), 1.0)


def test_merged_linear_equals_lora_forward() -> None:
    x, W, A, B, s = torch.randn(7, D), torch.randn(O, D), torch.randn(D, R), torch.randn(R, O), 2.0
    merged = W + delta_weight(A, B, s)
    torch.testing.assert_close(x @ merged.T, x @ W.T + s * x @ A @ B, atol=1e-5, rtol=1e-5)


def test_merged_conv1d_equals_lora_forward() -> None:
    conv = Conv1D(nf=O, nx=D)  # weight [D, O]
    torch.nn.init.normal_(conv.bias)
    x, A, B, s = torch.randn(2, 7, D), torch.randn(D, R), torch.randn(R, O), 2.0
    expected = conv(x) + s * x @ A @ B
    with torch.no_grad():
        conv.weight += delta_weight(A, B, s, conv1d=True)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def _meta_model(config):
    # Shapes only: a 7B model costs no memory on the meta device.
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_count_llama2_7b_rank16_qkvo() -> None:
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
    )
    model = _meta_model(config)
    assert count_lora_params(model, rank=16) == 16_777_216  # default targets: q, k, v, o
    targets = find_targets(model, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert count_lora_params(model, targets, rank=16) == 16_777_216


def test_count_gpt2_small_rank8() -> None:
    model = _meta_model(GPT2Config())
    targets = find_targets(model, ["attn.c_attn", "attn.c_proj"])
    assert count_lora_params(model, targets, rank=8) == 442_368


def test_count_matches_peft() -> None:
    model = tiny_model("llama")
    ours = count_lora_params(model, find_targets(model), rank=8)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert ours == trainable == 2 * 8 * (2 * (32 + 32) + 2 * (32 + 16))
