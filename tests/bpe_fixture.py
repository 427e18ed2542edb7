"""A tiny random Llama with a real byte-level BPE tokenizer and a Llama-3-like chat template.

Shared by the tests of the instruct suite's data (``tests/data/test_instruct_source.py``) and of the
open-answer evaluation: the tokenizer is trained with ``tokenizers`` on the suite's own text, its EOS
``<|end_of_text|>`` is not the end of turn ``<|eot_id|>``, and the model's vocabulary matches it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hyperlora.instruct import build_split
from hyperlora.toy.models import tiny_config

__all__ = ["LLAMA3_TEMPLATE", "SPECIALS", "bpe_model", "bpe_tokenizer", "save_bpe_model"]

SPECIALS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def bpe_tokenizer(corpus: list[str] | None = None, vocab_size: int = 600, specials: list[str] | None = None,
                  template: str | None = LLAMA3_TEMPLATE) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``corpus`` (default: the suite's own text); EOS ``<|end_of_text|>`` is not the
    end of turn ``<|eot_id|>``; ``template`` the chat template (None: none)."""
    if corpus is None:
        corpus = [f"{e.instruction} {e.question}" for e in build_split("train", 200, 0)]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials or SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                  pad_token="<|pad|>", padding_side="left")
    tok.chat_template = template
    return tok


def bpe_model(tok: PreTrainedTokenizerFast, seed: int = 0, init: float | None = None) -> torch.nn.Module:
    """A tiny random Llama whose vocabulary matches ``tok``, long enough for the suite's prompts (eval mode).

    ``init``: the initializer range (None: the config's); a larger one gives sharper next-token
    distributions, so that the models of a test answer differently.
    """
    config = tiny_config("llama")
    config.vocab_size = len(tok)
    config.max_position_embeddings = 1024
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    if init is not None:
        config.initializer_range = init
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def save_bpe_model(path: Path) -> Path:
    """``bpe_model`` (seed 0) and ``bpe_tokenizer`` saved as a local Hugging Face folder at ``path``."""
    tok = bpe_tokenizer()
    bpe_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path
