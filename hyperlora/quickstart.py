"""The main job on the built-in default, end to end on a CPU in minutes.

1. pretrain the CPU teacher on the instruction suite (skipped when it exists);
2. train the hypernetwork against it (context distillation, experiment=demo_cpu);
3. generate for an instruction worded as training never worded it (heldout_phrasing);
4. print the per-layer summary of that adapter.

It prints the student's exact match before and after training. Extra arguments
are Hydra overrides for step 2 (``hyperlora quickstart trainer.max_steps=50``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hyperlora.analysis import adapter_stats, format_table
from hyperlora.data.format import prefix_ids
from hyperlora.decoding import greedy_decode
from hyperlora.model import HyperLoRA
from hyperlora.train import compose_config, run

TEACHER_DIR = Path("runs/teacher-cpu")


def main(argv: list[str] | None = None) -> int:
    overrides = list(argv or [])
    if overrides and overrides[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    start = time.time()
    if not (TEACHER_DIR / "config.json").is_file():
        from hyperlora.toy.teacher import PRESETS, pretrain_teacher

        print(f"[1/4] pretraining the CPU teacher into {TEACHER_DIR} ...")
        report = pretrain_teacher(PRESETS["cpu"], TEACHER_DIR)
        print(json.dumps(report, indent=2))
    else:
        print(f"[1/4] using the teacher in {TEACHER_DIR}")

    print("[2/4] training the hypernetwork (experiment=demo_cpu) ...")
    # The demo's own run folder is replaced on every run (only what a run writes is deleted there),
    # unless the caller asks to continue it.
    fresh = [] if any(o.startswith(("trainer.resume=", "trainer.overwrite=")) for o in overrides) else [
        "trainer.overwrite=true"]
    cfg = compose_config(["experiment=demo_cpu", f"model.path={TEACHER_DIR}", *fresh, *overrides])
    result = run(cfg)
    out_dir = Path(cfg.trainer.out_dir)

    print("\n[3/4] generating for a held-out phrasing")
    from hyperlora.toy.tasks import build_split

    example = build_split("heldout_phrasing", 1, seed=123)[0]
    hyper = HyperLoRA.from_pretrained(out_dir / "hyperlora")
    tok = hyper.tokenizer
    adapters = hyper.adapters([example.prompt])
    bare, with_prompt = prefix_ids(tok, None, example.input), prefix_ids(tok, example.prompt, example.input)
    student = greedy_decode(hyper.student, tok, [bare], 64, hyper.inject(adapters))[0]
    base = greedy_decode(hyper.student, tok, [bare], 64)[0]
    teacher = greedy_decode(hyper.student, tok, [with_prompt], 64)[0]
    print(f"  prompt:   {example.prompt}\n  input:    {example.input}\n  expected: {example.output}")
    print(f"  student (prompt as adapter): {student}\n  teacher (prompt in context): {teacher}\n  base (no prompt):            {base}")

    print("\n[4/4] the adapter, layer by layer")
    with torch.no_grad():
        print(format_table(adapter_stats(hyper.targets, adapters, hyper.spec)))

    print("\nstudent exact match (greedy, no prompt in context, generated adapter):")
    for split in cfg.data.eval_splits:
        before, after = result["before"].get(f"{split}/em_student"), result.get(f"{split}/em_student")
        teacher_em, base_em = result.get(f"{split}/em_teacher"), result.get(f"{split}/em_base")
        print(f"  {split:<20} before {before:6.1%}  after {after:6.1%}   (teacher {teacher_em:6.1%}, base {base_em:6.1%})")
    print(f"\ndone in {time.time() - start:.0f} s; checkpoint: {out_dir / 'hyperlora'}")
    return 0
