"""Fingerprints tell models and files apart, and stay the same across a save and reload."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hyperlora.fingerprint import file_sha256, model_fingerprint
from hyperlora.toy.models import tiny_model


def test_same_weights_same_fingerprint_across_save_reload_and_dtype(tmp_path: Path) -> None:
    model = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model_fingerprint(reloaded) == model_fingerprint(model) == model_fingerprint(tiny_model("llama", seed=0))
    # bf16 changes the values themselves, so it is another model.
    assert model_fingerprint(tiny_model("llama", seed=0, dtype=torch.bfloat16)) != model_fingerprint(model)


def test_another_model_of_the_same_shape_differs() -> None:
    assert model_fingerprint(tiny_model("llama", seed=0)) != model_fingerprint(tiny_model("llama", seed=1))


def test_one_changed_weight_in_the_sample_or_one_changed_config_field_differs() -> None:
    model = tiny_model("llama", seed=0)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.view(-1)[-1] += 1.0  # the last value is always sampled
    assert model_fingerprint(model) != before
    other = tiny_model("llama", seed=0)
    other.config.rope_theta = 1234.0
    assert model_fingerprint(other) != model_fingerprint(tiny_model("llama", seed=0))


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 9000
    path.write_bytes(data)
    assert file_sha256(path, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_a_tensor_past_two_to_the_24_elements_is_sampled_in_bounds() -> None:
    # float32 linspace rounds n - 1 up to n past 2**24: SmolLM2's embedding (28.3 M values) hit it.
    model = torch.nn.Linear(4096, 4097, bias=False)  # 16,781,312 > 2**24 values
    first = model_fingerprint(model)
    with torch.no_grad():
        model.weight.view(-1)[-1] += 1.0
    assert model_fingerprint(model) != first
