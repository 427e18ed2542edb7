"""How a prompt, an input and a response become token ids, for the teacher and the student.

The teacher reads ``prompt`` and ``input``; the student reads ``input`` alone (its
prompt arrives as weights). Both continue with the same response ids, so the
loss can compare the two models token for token. With a chat template the user
turn holds ``prompt\\n\\ninput`` (or ``input``), or with ``layout="system"`` the prompt is
a system turn of its own where the template has one; without a template, plain lines.

A response ends with the token the chat template writes after an assistant message
(``end_of_turn_ids``: Llama-3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``, ChatML's
``<|im_end|>``; the tokenizer's EOS where the template writes none), unless it was cut
at a length limit: a cut response gets no end token, so no model learns to stop there.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["PROMPT_LAYOUTS", "end_of_turn_ids", "prefix_ids", "prefix_text", "prompt_prefix_text", "response_ids",
           "supports_system_turn"]

# Where the teacher reads the instruction: before the input in the user turn, or as a system turn.
PROMPT_LAYOUTS = ("user", "system")

# A character no prompt or template holds: where the input (or an assistant message) would start.
_INPUT_MARKER = "\ue000"


def _user_text(prompt: str | None, text: str) -> str:
    return f"{prompt}\n\n{text}" if prompt else text


def supports_system_turn(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message as one (some raise, some drop it, some make it any other)."""
    if not getattr(tokenizer, "chat_template", None):
        return False

    def render(role: str) -> str:
        messages = [{"role": role, "content": _INPUT_MARKER}, {"role": "user", "content": "x"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    try:
        rendered = render("system")
        as_other = render("assistant")
    except Exception:  # noqa: BLE001 - templates refuse with raise_exception (a jinja TemplateError) or anything else
        return False
    return _INPUT_MARKER in rendered and rendered != as_other


def _messages(tokenizer: Any, prompt: str | None, text: str, layout: str) -> list[dict[str, str]]:
    if layout not in PROMPT_LAYOUTS:
        raise ValueError(f"prompt_layout={layout!r}; choose one of {', '.join(PROMPT_LAYOUTS)}.")
    if layout == "system" and prompt:
        if supports_system_turn(tokenizer):
            return [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
        warnings.warn("The chat template has no system turn: the prompt goes into the user turn (prompt_layout=user).",
                      stacklevel=3)
    return [{"role": "user", "content": _user_text(prompt, text)}]


def prefix_text(tokenizer: Any, prompt: str | None, text: str, layout: str = "user") -> str:
    """The text that precedes the response (ends where generation starts).

    ``layout``: ``user`` puts ``prompt`` before ``text`` in the user turn; ``system`` makes it a
    system turn where the template has one (else as ``user``, with a warning).
    """
    messages = _messages(tokenizer, prompt, text, layout)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _user_text(prompt, text) + "\n"


def prefix_ids(tokenizer: Any, prompt: str | None, text: str, layout: str = "user") -> list[int]:
    """Token ids of ``prefix_text`` (the template already holds any special tokens)."""
    return list(tokenizer(prefix_text(tokenizer, prompt, text, layout), add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The ids that end an assistant's answer: ``[end of turn, EOS]`` (one of them when they are the same).

    The end of turn is the special token the chat template writes right after an assistant
    message, read off a rendered two-message chat; without a template, or where the template
    writes no special token there, the tokenizer's EOS alone. Generation stops at any of them;
    a response is ended by the first.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if not getattr(tokenizer, "chat_template", None):
        return eos
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _INPUT_MARKER}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render an answer has nothing to say about its end
        return eos
    if _INPUT_MARKER not in rendered:
        return eos
    after = rendered[rendered.index(_INPUT_MARKER) + 1 :].lstrip(" ")
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if not ids or ids[0] not in special:
        return eos
    return [ids[0]] + [e for e in eos if e != ids[0]]


def response_ids(tokenizer: Any, response: str, complete: bool = True) -> list[int]:
    """Token ids of the response, ended by the end-of-turn token so models learn to stop.

    ``complete=False`` (a response cut at a length limit, not ended by its writer): no end token.
    """
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + end_of_turn_ids(tokenizer)[:1] if complete else ids


def prompt_prefix_text(tokenizer: Any, prompt: str, layout: str = "user") -> str:
    """The teacher's context up to where the input starts: ``prefix_text`` cut before the input.

    A causal teacher's states over these tokens do not depend on what follows, so
    they are exactly its reading of the instruction.
    """
    full = prefix_text(tokenizer, prompt, _INPUT_MARKER, layout)
    if _INPUT_MARKER not in full:
        raise ValueError("The tokenizer's chat template drops the user's message; use encoder.prompt_layout=bare.")
    return full[: full.index(_INPUT_MARKER)]
