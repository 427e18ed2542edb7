"""A character-level tokenizer built locally, for tiny students and the from-scratch teacher.

It is a real ``PreTrainedTokenizerFast`` (saved and loaded like any Hugging Face
tokenizer, with a chat template), so nothing downstream special-cases it. Special
ids match ``hyperlora.toy.models``'s configs: pad 0, bos 1, eos 2, unk 3.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "CHARACTERS", "char_tokenizer"]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,:;!?'\"-+*/=()[]_&#%<>\n"

# Role markers are single tokens so the student's and teacher's sequences stay short.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}\n"
    "{% else %}<|assistant|>{{ message['content'] }}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """One token per character of ``CHARACTERS``; 6 special tokens first (ids 0-5)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character is its own piece, newlines included ("." alone would leave "\n\n" whole).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
        model_max_length=model_max_length,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
