"""How a prompt, an input and a response become token ids, for the teacher and the student.

The teacher reads ``prompt`` and ``input``; the student reads ``input`` alone (its
prompt arrives as weights). Both continue with the same response ids, so the
loss can compare the two models token for token. With a chat template the user
turn holds ``prompt\\n\\ninput`` (or ``input``); without one, plain lines.
"""

from __future__ import annotations

from typing import Any

__all__ = ["prefix_ids", "response_ids", "prefix_text", "prompt_prefix_text"]


def _user_text(prompt: str | None, text: str) -> str:
    return f"{prompt}\n\n{text}" if prompt else text


def prefix_text(tokenizer: Any, prompt: str | None, text: str) -> str:
    """The text that precedes the response (ends where generation starts)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": _user_text(prompt, text)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _user_text(prompt, text) + "\n"


def prefix_ids(tokenizer: Any, prompt: str | None, text: str) -> list[int]:
    """Token ids of ``prefix_text`` (the template already holds any special tokens)."""
    return list(tokenizer(prefix_text(tokenizer, prompt, text), add_special_tokens=False)["input_ids"])


def response_ids(tokenizer: Any, response: str) -> list[int]:
    """Token ids of the response, ended by EOS so models learn to stop."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


# A character no prompt or template holds: where the input would start.
_INPUT_MARKER = "\ue000"


def prompt_prefix_text(tokenizer: Any, prompt: str) -> str:
    """The teacher's context up to where the input starts: ``prefix_text`` cut before the input.

    A causal teacher's states over these tokens do not depend on what follows, so
    they are exactly its reading of the instruction.
    """
    full = prefix_text(tokenizer, prompt, _INPUT_MARKER)
    if _INPUT_MARKER not in full:
        raise ValueError("The tokenizer's chat template drops the user's message; use encoder.prompt_layout=bare.")
    return full[: full.index(_INPUT_MARKER)]
