"""Greedy decoding of left-padded prefixes: each row continues as it would alone."""

from __future__ import annotations

import torch

from hyperlora.decoding import decode_new, greedy_decode, left_padded
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer


def test_left_padded_puts_every_row_at_the_right_edge():
    batch = left_padded([[5, 6, 7], [8]], pad=0, device=torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    wide = left_padded([[5, 6, 7], [8]], pad=0, device=torch.device("cpu"), multiple=4)
    assert wide["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]


def test_decode_new_drops_the_prefix_and_special_tokens():
    tok = char_tokenizer()
    out = torch.tensor([tok.encode("xy") + tok.encode("ab") + [tok.eos_token_id]])
    assert decode_new(tok, out, 2) == ["ab"]


def test_greedy_decode_of_a_batch_equals_each_row_alone_and_a_manual_argmax():
    model, tok = tiny_model("llama"), char_tokenizer()
    prefixes = [tok.encode("hello"), tok.encode("a")]
    batched = greedy_decode(model, tok, prefixes, max_new_tokens=4)
    alone = [greedy_decode(model, tok, [p], max_new_tokens=4)[0] for p in prefixes]
    assert batched == alone
    ids = torch.tensor([prefixes[0]])
    with torch.no_grad():
        for _ in range(4):
            next_id = model(input_ids=ids).logits[0, -1].argmax()
            if int(next_id) == tok.eos_token_id:
                break
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    assert alone[0] == tok.decode(ids[0, len(prefixes[0]):], skip_special_tokens=True).strip()
