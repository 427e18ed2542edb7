"""One prompt's adapter, out of hyperlora: a standard PEFT LoRA folder, or a merged model.

    export_peft(hyper, "Answer in French.", "adapters/french")   # PeftModel.from_pretrained(base, dir)
    merge(hyper, "Answer in French.", "models/french")           # AutoModelForCausalLM.from_pretrained(dir)

Both write into a temporary sibling folder that is renamed into place only when
complete, and refuse a non-empty ``out_dir`` unless ``force``.

Axis letters: D in-features, O out-features, R rank.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from hyperlora.atomic import atomic_directory, check_replaceable
from hyperlora.base_models import loadable_path
from hyperlora.encoder import check_prompts
from hyperlora.lora import AdapterBatch, delta_weight
from hyperlora.model import HyperLoRA
from hyperlora.ownership import EXPORT_MARK, is_export

__all__ = ["export_peft", "merge", "peft_state_dict", "main", "merge_main"]

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


@torch.no_grad()
def _adapter(hyper: HyperLoRA, prompt: str) -> AdapterBatch:
    """``{target name: (A [D, R], B [R, O])}`` for one prompt."""
    check_prompts([prompt])
    return {name: (A[0], B[0]) for name, (A, B) in hyper.adapters([prompt]).items()}


def peft_state_dict(hyper: HyperLoRA, prompt: str) -> dict[str, Tensor]:
    """The prompt's adapter under PEFT's names and layouts (float32, CPU).

    PEFT keeps A and B as ``nn.Linear`` weights, ``lora_A [R, D]`` and
    ``lora_B [O, R]``: our ``A [D, R]`` and ``B [R, O]`` transposed. Saved files
    drop the adapter name (``default``); PEFT puts it back on load.
    """
    state = {}
    for name, (A, B) in _adapter(hyper, prompt).items():
        prefix = f"base_model.model.{name}"
        state[f"{prefix}.lora_A.weight"] = A.T.float().contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = B.T.float().contiguous().cpu()
    return state


def _mark(folder: Path, kind: str, prompt: str, hyper: HyperLoRA) -> None:
    """The export's mark (``ownership.EXPORT_MARK``): what made it, and that ``--force`` may replace it."""
    record = {"format": "hyperlora-export/1", "kind": kind, "prompt": prompt, "base_model": hyper.config.base_model}
    (folder / EXPORT_MARK).write_text(json.dumps(record, indent=2) + "\n")


def export_peft(hyper: HyperLoRA, prompt: str, out_dir: str | Path, force: bool = False) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for ``prompt`` into ``out_dir``.

    ``PeftModel.from_pretrained(base, out_dir)`` then computes what the hooked
    student computes with this prompt's adapter.
    """
    from peft import LoraConfig

    state = peft_state_dict(hyper, prompt)  # before any folder exists: a bad prompt leaves nothing
    spec = hyper.spec
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        use_rslora=spec.rslora,
        # Full module names: a suffix such as "q_proj" could match more than we adapted.
        target_modules=[t.name for t in hyper.targets],
        lora_dropout=0.0,
        # GPT-2's Conv1D stores its weight [D, O]; PEFT must know to merge and compute correctly.
        fan_in_fan_out=any(t.is_conv1d for t in hyper.targets),
        bias="none",
        task_type="CAUSAL_LM",
        # A GGUF student (or smollm2-135m-instruct) is named by its converted folder: PEFT and transformers
        # load that without gguf_file=; a toy: name stays as it is.
        base_model_name_or_path=loadable_path(hyper.config.base_model),
    )
    with atomic_directory(out_dir, overwrite=force, replaceable=is_export, what="export folder") as tmp:
        config.save_pretrained(str(tmp))
        _mark(tmp, "peft", prompt, hyper)
        save_file(state, str(tmp / PEFT_WEIGHTS_NAME), metadata={"format": "pt", "hyperlora_prompt": prompt})
    return Path(out_dir)


@torch.no_grad()
def merge(hyper: HyperLoRA, prompt: str, out_dir: str | Path, force: bool = False) -> Path:
    """Write a full Hugging Face model folder with the prompt's ΔW added into the target weights.

    The tokenizer is saved beside it, so ``AutoModelForCausalLM`` /
    ``AutoTokenizer.from_pretrained(out_dir)`` is all a user needs.
    """
    adapter = _adapter(hyper, prompt)
    student = hyper.student
    # Add ΔW in place and restore the saved originals afterwards, rather than deep-copying
    # the student: a copy of a 7B model doubles its memory, the targets alone are a fraction.
    originals = {t.name: t.module.weight.detach().clone() for t in hyper.targets}
    with atomic_directory(out_dir, overwrite=force, replaceable=is_export, what="export folder") as tmp:
        _mark(tmp, "merged", prompt, hyper)
        try:
            for t in hyper.targets:
                A, B = adapter[t.name]
                weight = t.module.weight
                # Summed in float32, rounded once to the weight's dtype (bf16 students).
                merged = weight.float() + delta_weight(A.float(), B.float(), hyper.spec.scaling, conv1d=t.is_conv1d)
                weight.copy_(merged.to(weight.dtype))
            student.save_pretrained(str(tmp))
        finally:
            for t in hyper.targets:
                t.module.weight.copy_(originals[t.name])
        if hyper.tokenizer is not None:
            hyper.tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


# -- command line ------------------------------------------------------------

def _parser(job: str) -> argparse.ArgumentParser:
    from hyperlora.loading import add_checkpoint_arguments

    what = {
        "export": "Write one prompt's adapter as a standard PEFT LoRA folder.",
        "merge": "Write a full model folder with one prompt's adapter merged into the weights.",
    }[job]
    parser = argparse.ArgumentParser(prog=f"hyperlora {job}", description=what)
    add_checkpoint_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the prompt whose adapter is written")
    parser.add_argument("--out", required=True, help="output folder (must be absent or empty unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier export or merge (never a folder hyperlora did not write)")
    return parser


def _run(job: str, argv: list[str] | None) -> int:
    from hyperlora.loading import load_from_args

    args = _parser(job).parse_args(argv)
    check_prompts([args.prompt])
    out = Path(args.out)
    # Refuse before the (slow) load; atomic_directory checks again right before writing.
    # A file is never replaced by a folder, --force or not: say so rather than advise --force.
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"is inside {path}, a file"
            raise FileExistsError(f"--out {out} {where}; choose another path for the {job} folder "
                                  "(a file is never replaced by a folder).")
    check_replaceable(out, args.force, is_export, what=f"{job} folder")
    hyper = load_from_args(args)
    written = (export_peft if job == "export" else merge)(hyper, args.prompt, out, force=args.force)
    print(f"wrote {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``hyperlora export --checkpoint DIR --prompt TEXT --out DIR [--force]``."""
    return _run("export", argv)


def merge_main(argv: list[str] | None = None) -> int:
    """``hyperlora merge --checkpoint DIR --prompt TEXT --out DIR [--force]``."""
    return _run("merge", argv)
