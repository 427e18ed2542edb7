"""Chat-template format on a real BPE tokenizer: end of turn, prompt layouts, and generation stopping at the turn's end.

The tokenizer is built here with ``tokenizers`` (byte-level BPE, trained in milliseconds) and a
Llama-3-like chat template whose end of turn (``<|eot_id|>``) is not its EOS (``<|end_of_text|>``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from bpe_fixture import bpe_tokenizer as shared_bpe_tokenizer
from model_helpers import always_says
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import (
    end_of_turn_ids,
    prefix_ids,
    prefix_text,
    prompt_prefix_text,
    response_ids,
    supports_system_turn,
)
from hyperlora.data.records import Record
from hyperlora.decoding import decode_batch, greedy_decode
from hyperlora.toy.models import tiny_config
from hyperlora.toy.tokenizer import char_tokenizer

SPECIALS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Gemma-2 style: no system role, the template refuses one.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["Reverse the order of the words.", "Answer in capitals.", "the cat sat on the mat", "hello world",
          "user assistant system", "Write a short answer about the sea and the sun."] * 4


def bpe_tokenizer(template: str | None = LLAMA3_TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Llama-3's (and ChatML's) special tokens; EOS is ``<|end_of_text|>``, not
    ``<|eot_id|>``."""
    return shared_bpe_tokenizer(CORPUS, 300, SPECIALS, template)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return bpe_tokenizer()


def _id(tok, token: str) -> int:
    return tok.convert_tokens_to_ids(token)


def test_end_of_turn_is_read_off_the_template(tok) -> None:
    eot, eos = _id(tok, "<|eot_id|>"), tok.eos_token_id
    assert eot != eos
    assert end_of_turn_ids(tok) == [eot, eos]
    assert end_of_turn_ids(bpe_tokenizer(CHATML_TEMPLATE)) == [_id(tok, "<|im_end|>"), eos]
    assert end_of_turn_ids(bpe_tokenizer(None)) == [eos]  # no template: EOS alone
    char = char_tokenizer()
    assert end_of_turn_ids(char) == [char.eos_token_id]  # the template writes EOS itself: listed once


def test_a_response_ends_with_the_end_of_turn_unless_it_was_cut(tok) -> None:
    text = tok("hello world", add_special_tokens=False)["input_ids"]
    assert response_ids(tok, "hello world") == text + [_id(tok, "<|eot_id|>")]
    assert response_ids(tok, "hello world", complete=False) == text
    # The response is what the template renders after the generation prompt, up to and with the end of turn.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello world"}]
    full = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    assert full == prefix_ids(tok, None, "hi") + response_ids(tok, "hello world")


def test_user_layout_puts_the_prompt_before_the_input_in_the_user_turn(tok) -> None:
    text = prefix_text(tok, "Answer in capitals.", "hello world")
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAnswer in capitals.\n\nhello world"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prefix_text(tok, "Answer in capitals.", "hello world", layout="user") == text


def test_system_layout_puts_the_prompt_in_a_system_turn(tok) -> None:
    assert supports_system_turn(tok)
    text = prefix_text(tok, "Answer in capitals.", "hello world", layout="system")
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in capitals.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nhello world"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # Without a prompt (the student) the layouts agree.
    assert prefix_text(tok, None, "hello world", layout="system") == prefix_text(tok, None, "hello world")
    # The encoder's view of the instruction stops where the input starts, in either layout.
    assert prompt_prefix_text(tok, "Answer in capitals.", layout="system") == text[: text.index("hello world")]
    with pytest.raises(ValueError, match="prompt_layout"):
        prefix_text(tok, "Answer.", "x", layout="assistant")


def test_system_layout_falls_back_to_the_user_turn_where_the_template_has_none() -> None:
    # Refused (raise_exception), no template, or rendered as if it were an assistant's message (the toy template).
    for tok in (bpe_tokenizer(NO_SYSTEM_TEMPLATE), bpe_tokenizer(None), char_tokenizer()):
        assert not supports_system_turn(tok)
        with pytest.warns(UserWarning, match="no system turn"):
            text = prefix_text(tok, "Answer in capitals.", "hello world", layout="system")
        assert text == prefix_text(tok, "Answer in capitals.", "hello world", layout="user")


def test_collator_ends_complete_responses_at_the_end_of_turn_and_follows_the_layout(tok) -> None:
    records = [Record("Answer in capitals.", "hello world", "the sun"),
               Record("Answer in capitals.", "hello world", "the sun", complete=False)]
    eot = _id(tok, "<|eot_id|>")
    for layout in ("user", "system"):
        batch = DistillCollator(tok, max_length=128, prompt_layout=layout)(records)
        body = tok("the sun", add_special_tokens=False)["input_ids"]
        assert batch["labels"].tolist() == body + [eot] + body
        assert eot not in batch["labels"].tolist()[len(body) + 1:]
        assert tok.eos_token_id not in batch["labels"].tolist()
        for who in ("teacher", "student"):
            ids, mask = batch[f"{who}_input_ids"], batch[f"{who}_loss_mask"]
            assert torch.equal(ids[:, 1:][mask[:, :-1]], batch["labels"]), who
        n = int(batch["teacher_attention_mask"][0].sum())
        teacher = batch["teacher_input_ids"][0, :n].tolist()
        assert teacher == prefix_ids(tok, "Answer in capitals.", "hello world", layout) + body + [eot]
        assert ("<|start_header_id|>system" in tok.decode(teacher)) == (layout == "system")


def _model_that_always_says(tok, token_id: int) -> nn.Module:
    """A tiny llama over ``tok``'s vocabulary whose head always prefers ``token_id``."""
    config = tiny_config("llama")
    config.vocab_size = len(tok)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    return always_says(AutoModelForCausalLM.from_config(config).eval(), token_id)


def test_generation_stops_at_the_end_of_turn_and_says_whether_a_row_finished(tok) -> None:
    prefixes = [prefix_ids(tok, None, "hello world"), prefix_ids(tok, "Answer.", "hi")]
    stops = _model_that_always_says(tok, _id(tok, "<|eot_id|>"))
    texts, finished = decode_batch(stops, tok, prefixes, max_new_tokens=6)
    assert texts == ["", ""] and finished == [True, True]
    # Stopped at once: an EOS-only stop would have written six <|eot_id|>.
    batch = {"input_ids": torch.tensor([prefixes[0]])}
    out = stops.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=end_of_turn_ids(tok),
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] == len(prefixes[0]) + 1
    word = tok("the", add_special_tokens=False)["input_ids"][0]
    runs_on = _model_that_always_says(tok, word)
    texts, finished = decode_batch(runs_on, tok, prefixes, max_new_tokens=3)
    assert finished == [False, False] and texts == [tok.decode([word] * 3).strip()] * 2
    assert greedy_decode(runs_on, tok, prefixes, 3) == texts


def test_seeded_sampling_depends_on_the_seed_not_the_batch(tok) -> None:
    config = tiny_config("llama")
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prefixes = [prefix_ids(tok, None, "hello world"), prefix_ids(tok, "Answer.", "hi"), prefix_ids(tok, None, "sun")]
    options = dict(do_sample=True, temperature=1.5, top_p=0.95)
    batched, _ = decode_batch(model, tok, prefixes, 8, seeds=[1, 2, 3], **options)
    alone = [decode_batch(model, tok, [p], 8, seeds=[s], **options)[0][0] for p, s in zip(prefixes, [1, 2, 3])]
    assert batched == alone
    torch.manual_seed(123)  # the global generator plays no part
    assert decode_batch(model, tok, prefixes, 8, seeds=[1, 2, 3], **options)[0] == batched
    other, _ = decode_batch(model, tok, prefixes, 8, seeds=[4, 5, 6], **options)
    assert other != batched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        greedy = greedy_decode(model, tok, prefixes, 8)
    assert greedy != batched
    with pytest.raises(ValueError, match="one seed per prefix"):
        decode_batch(model, tok, prefixes, 8, do_sample=True)
