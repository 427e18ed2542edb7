"""What the playground does, without the web page: answers streamed side by side, the adapter's
figures, exports, and the checks that turn bad input into one readable message.

One ``generate`` call answers everything a click asks for: for instructions ``p_1 … p_n`` and a
message ``x`` the batch is ``2n + 1`` rows::

    rows 0 … n-1     student i   x alone,        the adapter of p_i
    rows n … 2n-1    teacher i   p_i and x,      a zero adapter
    row  2n          base        x alone,        a zero adapter

so every row gets its own adapter (a zero one is the base model, exactly) and all answers stream
together, token by token.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from hyperlora.data.format import end_of_turn_ids, prefix_ids
from hyperlora.decoding import left_padded
from hyperlora.generation import check_generation_settings
from hyperlora.lora import AdapterBatch
from hyperlora.model import HyperLoRA

__all__ = ["MAX_INSTRUCTIONS", "MAX_MESSAGE_CHARS", "Answers", "PlaygroundError", "PlaygroundSession",
           "RowStreamer", "parse_instructions"]

MAX_INSTRUCTIONS = 4  # rows per click: 2n + 1 answers decode together
MAX_MESSAGE_CHARS = 4000


class PlaygroundError(ValueError):
    """Bad input, said in one line for the page (never a stack trace)."""


@dataclass
class Answers:
    """The answers so far: one student and one teacher answer per instruction, and the base's."""

    student: list[str]
    teacher: list[str]
    base: str


def parse_instructions(text: str) -> list[str]:
    """One instruction per non-empty line of ``text``; refuses none and too many."""
    instructions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not instructions:
        raise PlaygroundError("Type an instruction first (one per line; each line gets its own adapter).")
    if len(instructions) > MAX_INSTRUCTIONS:
        raise PlaygroundError(f"{len(instructions)} instructions: give at most {MAX_INSTRUCTIONS}, one per line.")
    return instructions


class RowStreamer(BaseStreamer):
    """``generate``'s streamer for a whole batch: after each step, every row's text so far, on ``texts``.

    ``generate`` first puts the prompt ids ``[B, T]`` (skipped), then each step's new ids ``[B]``. A row
    stops growing at its first end-of-turn id; ``None`` on the queue marks the end.
    """

    def __init__(self, tokenizer: Any, rows: int, stop_ids: list[int]) -> None:
        self.tokenizer, self.stop = tokenizer, set(stop_ids)
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.texts: queue.Queue[list[str] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for i, token in enumerate(value.reshape(len(self.ids), -1)[:, -1].tolist()):
            if self.finished[i]:
                continue
            if token in self.stop:
                self.finished[i] = True
            else:
                self.ids[i].append(token)
        self.texts.put([self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in self.ids])

    def end(self) -> None:
        self.texts.put(None)


def _padded_adapters(adapters: AdapterBatch, extra_rows: int) -> AdapterBatch:
    """``adapters`` with ``extra_rows`` zero adapters appended (rows that must read as the base model)."""
    return {name: (torch.cat([A, A.new_zeros((extra_rows, *A.shape[1:]))]),
                   torch.cat([B, B.new_zeros((extra_rows, *B.shape[1:]))]))
            for name, (A, B) in adapters.items()}


class PlaygroundSession:
    """A loaded checkpoint and what the page asks of it; one generation at a time (hooks are per model)."""

    def __init__(self, hyper: HyperLoRA, source: str = "", work_dir: str | Path | None = None) -> None:
        """``source``: where the checkpoint was loaded from (shown in the page)."""
        if hyper.tokenizer is None:
            raise PlaygroundError("The checkpoint has no tokenizer: load it with its base model's tokenizer.")
        self.hyper, self.source = hyper.eval(), source
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="hyperlora-play-"))
        self._lock = threading.Lock()

    # -- checks -------------------------------------------------------------------------------
    def check(self, instructions: list[str], message: str) -> None:
        """Refuse, in one line, input the models would cut or choke on."""
        if not (message or "").strip():
            raise PlaygroundError("Type a message for the model to answer.")
        if len(message) > MAX_MESSAGE_CHARS:
            raise PlaygroundError(f"The message is {len(message)} characters; keep it under {MAX_MESSAGE_CHARS}.")
        self.check_instructions(instructions)

    def check_instructions(self, instructions: list[str]) -> None:
        """Refuse an instruction longer than the hypernetwork reads (it would be cut without a word)."""
        limit = self.hyper.hypernet.encoder.max_length
        for i, text in enumerate(instructions, 1):
            tokens = len(self.hyper.tokenizer(text, add_special_tokens=False)["input_ids"])
            if tokens > limit:
                raise PlaygroundError(f"Instruction {i} is {tokens} tokens; the hypernetwork reads at most {limit}. "
                                      "Shorten it.")

    # -- answers --------------------------------------------------------------------------------
    def stream(self, instructions: list[str], message: str, settings: dict[str, Any]) -> Iterator[Answers]:
        """Answers of student, teacher and base, growing token by token (see the module docstring)."""
        self.check(instructions, message)
        settings = {k: v for k, v in settings.items() if v is not None}
        try:
            check_generation_settings(settings)
        except ValueError as err:
            raise PlaygroundError(str(err)) from None
        if not settings.get("do_sample"):
            settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_p", "top_k")}
        hyper, tok = self.hyper, self.hyper.tokenizer
        n = len(instructions)
        bare = prefix_ids(tok, None, message)
        prefixes = [bare] * n + [prefix_ids(tok, p, message) for p in instructions] + [bare]
        device = next(hyper.student.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        batch = left_padded(prefixes, pad, device)
        stop = end_of_turn_ids(tok)
        streamer = RowStreamer(tok, len(prefixes), stop)
        with self._lock:
            with torch.no_grad():
                adapters = _padded_adapters(hyper.adapters(instructions), n + 1)
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.no_grad(), hyper.inject(adapters):
                        hyper.student.generate(**batch, streamer=streamer, pad_token_id=pad,
                                               eos_token_id=stop or None, **settings)
                except BaseException as err:  # noqa: BLE001 - handed to the caller's thread below
                    failure.append(err)
                    streamer.end()

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            try:
                while (texts := streamer.texts.get()) is not None:
                    yield Answers(texts[:n], texts[n : 2 * n], texts[2 * n])
            finally:  # also when the page stops listening: the hooks go before the next click may inject
                worker.join()
        if failure:
            raise failure[0]

    # -- the adapter, layer by layer ----------------------------------------------------------------
    def figures(self, instructions: list[str]) -> dict[str, Path]:
        """PNG files: ``heatmap`` (‖ΔW‖/‖W‖ per layer and module), ``spectra`` and, for two or more
        instructions, ``similarity`` (cosine of ΔW between instructions)."""
        from hyperlora.inspection import inspect_adapters
        from hyperlora.plots import plot_relative_heatmap, plot_similarity, plot_spectra

        self.check_instructions(instructions)
        with self._lock, torch.no_grad():
            report = inspect_adapters(self.hyper, instructions)
        folder = Path(tempfile.mkdtemp(prefix="figures-", dir=self._dir()))
        out = {"heatmap": plot_relative_heatmap(report, folder / "heatmap.png"),
               "spectra": plot_spectra(report, folder / "spectra.png")}
        if len(instructions) > 1:
            out["similarity"] = plot_similarity(report, folder / "similarity.png")
        return out

    # -- exports ------------------------------------------------------------------------------
    def export_peft(self, instruction: str) -> Path:
        """The instruction's adapter as a PEFT folder, zipped for download."""
        from hyperlora.export import export_peft

        self.check_instructions([instruction])
        folder = Path(tempfile.mkdtemp(prefix="peft-", dir=self._dir()))
        with self._lock:
            export_peft(self.hyper, instruction, folder / "adapter")
        return Path(shutil.make_archive(str(folder / "hyperlora-adapter"), "zip", folder / "adapter"))

    def export_safetensors(self, instruction: str) -> Path:
        """The instruction's adapter under PEFT's tensor names, one safetensors file."""
        from safetensors.torch import save_file

        from hyperlora.export import peft_state_dict

        self.check_instructions([instruction])
        folder = Path(tempfile.mkdtemp(prefix="tensors-", dir=self._dir()))
        with self._lock:
            state = peft_state_dict(self.hyper, instruction)
        path = folder / "adapter_model.safetensors"
        save_file(state, str(path), metadata={"format": "pt", "hyperlora_prompt": instruction})
        return path

    def _dir(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir
