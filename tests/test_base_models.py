"""``load_base_model``: a local folder or a built-in ``toy:<family>``, reproducible, never online."""

from __future__ import annotations

import pytest
import torch

from hyperlora.base_models import is_base_model_name, load_base_model
from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.loading import load_hyperlora
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_model


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_toy_name_is_the_seeded_tiny_model_with_the_char_tokenizer():
    model, tok = load_base_model("toy:llama")
    _assert_same_weights(model, tiny_model("llama"))
    _assert_same_weights(model, load_base_model("toy:llama")[0])  # the same name, the same weights
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tok("ab")["input_ids"] and tok.pad_token == "<pad>"
    assert model.config._name_or_path == "toy:llama"  # what HyperLoRA records as its base model
    gpt2, _ = load_base_model("toy:gpt2", dtype="bfloat16")
    assert type(gpt2).__name__ == "GPT2LMHeadModel" and next(gpt2.parameters()).dtype == torch.bfloat16


def test_toy_loading_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_base_model("toy:qwen2", tokenizer=False)
    assert torch.equal(torch.rand(3), expected)


def test_local_folder_loads_with_its_tokenizer(model_dir):
    model, tok = load_base_model(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    _assert_same_weights(model, tiny_model("llama"))
    assert tok.pad_token == "<pad>"
    assert load_base_model(str(model_dir), tokenizer=False)[1] is None


def test_bad_names_are_refused_in_words(tmp_path):
    with pytest.raises(ValueError, match="toy:nope.*toy:llama"):
        load_base_model("toy:nope")
    with pytest.raises(FileNotFoundError, match="model.path='.*missing'.*toy:llama"):
        load_base_model(tmp_path / "missing", what="model.path")
    with pytest.raises(FileNotFoundError, match="not a local model directory"):
        load_base_model("someone/some-hub-model")  # never taken for a Hub id
    assert is_base_model_name("toy:llama") and is_base_model_name(tmp_path)
    assert not is_base_model_name(tmp_path / "missing") and not is_base_model_name(None)


def test_a_checkpoint_on_a_toy_model_reloads_by_its_name(tmp_path):
    student, tok = load_base_model("toy:llama")
    config = HyperLoRAConfig(base_model="toy:llama", encoder=EncoderConfig(d_ctx=32, d_model=32, max_length=64))
    hyper = HyperLoRA(student, tok, config)
    hyper.save_pretrained(tmp_path / "ckpt")
    for loaded in (HyperLoRA.from_pretrained(tmp_path / "ckpt"),  # from the recorded name
                   load_hyperlora(tmp_path / "ckpt", device="cpu"),
                   load_hyperlora(tmp_path / "ckpt", base_model="toy:llama", device="cpu")):
        assert loaded.config.base_model == "toy:llama"
        _assert_same_weights(loaded.student, student)
        _assert_same_weights(loaded.hypernet, hyper.hypernet)
    # A name recorded by HyperLoRA itself when none is given: the model's own.
    assert HyperLoRA(load_base_model("toy:llama")[0], tok, HyperLoRAConfig(encoder=config.encoder)).config.base_model \
        == "toy:llama"
