"""``hyperlora playground``: a local web page (Gradio) to type instructions and see the adapters they make.

    hyperlora playground                                   # the shipped SmolLM2 checkpoint, http://127.0.0.1:7860
    hyperlora playground --checkpoint runs/smollm2-cpu/hyperlora --port 7861 --device cuda

The page streams, side by side, the student (the instruction as an adapter), the teacher (the
instruction in context) and the base (neither); shows the adapter layer by layer (the heatmap,
spectra and similarity plots of ``hyperlora inspect``); and exports an instruction's adapter as a
PEFT folder or a safetensors file. Bad input is answered in the page, in one line. The server
listens on 127.0.0.1 unless ``--host`` says otherwise. Needs ``pip install 'hyperlora[playground]'``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hyperlora.playground.session import PlaygroundError, PlaygroundSession, parse_instructions

__all__ = ["DEFAULT_CHECKPOINT", "build_app", "main"]

# The checkpoint the repository ships (checkpoints/smollm2-if), when run from a checkout.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "smollm2-if"
STUDENT, TEACHER, BASE = "Student: instruction as adapter", "Teacher: instruction in context", "Base: no instruction"


def _format(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else "\n\n".join(f"[{i}] {t}" for i, t in enumerate(texts, 1))


def _settings(max_new_tokens: float, do_sample: bool, temperature: float, top_p: float, top_k: float,
              repetition_penalty: float) -> dict[str, Any]:
    """transformers' names; sliders give floats where generate wants integers."""
    return {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample), "temperature": float(temperature),
            "top_p": float(top_p), "top_k": int(top_k), "repetition_penalty": float(repetition_penalty)}


def _load(checkpoint: str, base_model: str | None, device: str | None, dtype: str | None) -> PlaygroundSession:
    import torch

    from hyperlora.loading import load_hyperlora

    try:
        hyper = load_hyperlora(checkpoint, base_model=base_model or None, device=device,
                               dtype=getattr(torch, dtype) if dtype else None)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise PlaygroundError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return PlaygroundSession(hyper, checkpoint)


def build_app(session: PlaygroundSession, base_model: str | None = None, device: str | None = None,
              dtype: str | None = None) -> Any:
    """The page (a ``gradio.Blocks``) bound to ``session``; "Load" swaps in another checkpoint."""
    import gradio as gr

    state = {"session": session}

    def answer(instructions: str, message: str, *sampling: Any) -> Iterator[tuple[str, str, str, str]]:
        try:
            items = parse_instructions(instructions)
            for now in state["session"].stream(items, message, _settings(*sampling)):
                yield _format(now.student), _format(now.teacher), now.base, ""
        except PlaygroundError as err:
            yield "", "", "", f"**{err}**"

    def figures(instructions: str) -> tuple[Any, Any, Any, str]:
        try:
            found = state["session"].figures(parse_instructions(instructions))
        except PlaygroundError as err:
            return None, None, None, f"**{err}**"
        return (str(found["heatmap"]), str(found["spectra"]),
                str(found["similarity"]) if "similarity" in found else None, "")

    def export(instructions: str, kind: str) -> tuple[Any, str]:
        try:
            first = parse_instructions(instructions)[0]
            session = state["session"]
            path = session.export_peft(first) if kind == "peft" else session.export_safetensors(first)
        except PlaygroundError as err:
            return None, f"**{err}**"
        return str(path), f"The adapter of “{first}”."

    def load(checkpoint: str) -> str:
        try:
            state["session"] = _load(checkpoint.strip(), base_model, device, dtype)
        except PlaygroundError as err:
            return f"**{err}**"
        return f"Loaded {checkpoint.strip()}."

    with gr.Blocks(title="hyperlora playground") as app:
        gr.Markdown("# hyperlora playground\nType an instruction (or several, one per line: each gets its own "
                    "adapter) and a message. The student reads only the message, with the adapter the "
                    "hypernetwork made from the instruction.")
        with gr.Row():
            checkpoint = gr.Textbox(label="Checkpoint", value=str(session.source), scale=4, elem_id="checkpoint")
            load_button = gr.Button("Load", scale=1, elem_id="load")
        instructions = gr.Textbox(label="Instructions (one per line)", lines=3, elem_id="instructions",
                                  value="Please reply entirely in capital letters.")
        message = gr.Textbox(label="Message", lines=2, elem_id="message", value="How do I keep basil fresh?")
        with gr.Accordion("Sampling", open=False):
            max_new_tokens = gr.Slider(1, 512, value=96, step=1, label="max_new_tokens")
            do_sample = gr.Checkbox(value=False, label="do_sample")
            temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p")
            top_k = gr.Slider(0, 200, value=50, step=1, label="top_k")
            repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="repetition_penalty")
        generate = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            student = gr.Textbox(label=STUDENT, lines=8, elem_id="student")
            teacher = gr.Textbox(label=TEACHER, lines=8, elem_id="teacher")
            base = gr.Textbox(label=BASE, lines=8, elem_id="base")
        with gr.Accordion("The adapter, layer by layer", open=True):
            show = gr.Button("Show the adapters", elem_id="show")
            heatmap = gr.Image(label="|dW| / |W| per layer and module", elem_id="heatmap", type="filepath")
            with gr.Row():
                spectra = gr.Image(label="singular values of dW", elem_id="spectra", type="filepath")
                similarity = gr.Image(label="similarity between instructions", elem_id="similarity",
                                      type="filepath")
        with gr.Row():
            peft_button = gr.Button("Export the first instruction's adapter as a PEFT folder (.zip)",
                                    elem_id="export_peft")
            tensors_button = gr.Button("Download it as safetensors", elem_id="export_safetensors")
        download = gr.File(label="Download", elem_id="download")

        sampling = [max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty]
        generate.click(answer, [instructions, message, *sampling], [student, teacher, base, status])
        show.click(figures, [instructions], [heatmap, spectra, similarity, status])
        peft_button.click(lambda text: export(text, "peft"), [instructions], [download, status])
        tensors_button.click(lambda text: export(text, "safetensors"), [instructions], [download, status])
        load_button.click(load, [checkpoint], [status])
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperlora playground", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="a folder written by HyperLoRA.save_pretrained (default: the shipped SmolLM2 one)")
    parser.add_argument("--base-model", default=None, help="the student (default: the one the checkpoint records)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("hyperlora playground: gradio is not installed; pip install 'hyperlora[playground]'.", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"hyperlora playground: --port {args.port} is not a port (1-65535).", file=sys.stderr)
        return 2
    try:
        session = _load(args.checkpoint, args.base_model, args.device, args.dtype)
    except PlaygroundError as err:
        print(f"hyperlora playground: {err}", file=sys.stderr)
        return 2
    app = build_app(session, args.base_model, args.device, args.dtype)
    print(f"hyperlora playground: http://{args.host}:{args.port}", flush=True)
    app.queue().launch(server_name=args.host, server_port=args.port, show_error=False)
    return 0
