"""The SmolLM2 quality tables (markdown) and the goals of the quality run, from the four runs' final metrics.

    python scripts/smollm2_table.py runs      # reads runs/smollm2-{teacher,verified}[-agnostic]/final_metrics.json

Instruction following is IFEval's strict prompt-level rate (instruction-level in brackets).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

SPLITS = ("train_unseen_questions", "heldout_phrasing", "heldout_param", "heldout_type", "heldout_compose")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def _rate(m: dict, split: str, who: str) -> str:
    return f"{_pct(m.get(f'{split}/if_{who}'))} ({_pct(m.get(f'{split}/if_instr_{who}'))})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.0%}" if a is not None and b else "n/a"


def tables(runs: Path) -> tuple[str, list[str]]:
    """(the markdown tables, one line per goal saying whether it was met)."""
    ctx, ctx_a, ver, ver_a = (json.loads((runs / f"smollm2-{n}" / "final_metrics.json").read_text())
                              for n in ("teacher", "teacher-agnostic", "verified", "verified-agnostic"))
    lines = ["**Context distillation** (targets: the teacher's answers with the instruction in context; KL)", "",
             "| split | student | teacher | student / teacher | base | prompt-agnostic LoRA | KL gap closed: student "
             "| agnostic | ROUGE-L to teacher: student | agnostic |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in SPLITS:
        lines.append(f"| {s} | {_rate(ctx, s, 'student')} | {_rate(ctx, s, 'teacher')} | "
                     f"{_ratio(ctx.get(f'{s}/if_student'), ctx.get(f'{s}/if_teacher'))} | {_rate(ctx, s, 'base')} | "
                     f"{_rate(ctx_a, s, 'student')} | {_pct(ctx.get(f'{s}/gap_closed'))} | "
                     f"{_pct(ctx_a.get(f'{s}/gap_closed'))} | {ctx.get(f'{s}/rouge_student', math.nan):.3f} | "
                     f"{ctx_a.get(f'{s}/rouge_student', math.nan):.3f} |")
    lines += ["", "**Verified targets** (targets: the model's own answer without the instruction, rewritten to pass "
              "the verifiers, or the teacher's passing answer where no rewrite is made; cross-entropy)", "",
              "| split | student | teacher | base | prompt-agnostic LoRA | on topic (ROUGE-L to the base's answer): "
              "student | agnostic |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in SPLITS:
        lines.append(f"| {s} | {_rate(ver, s, 'student')} | {_rate(ver, s, 'teacher')} | {_rate(ver, s, 'base')} | "
                     f"{_rate(ver_a, s, 'student')} | {ver.get(f'{s}/on_topic_student', math.nan):.3f} | "
                     f"{ver_a.get(f'{s}/on_topic_student', math.nan):.3f} |")

    def get(m: dict, key: str) -> float:
        return float(m.get(key, math.nan))

    u, p = "train_unseen_questions", "heldout_phrasing"
    goals = [
        ("context: student >= 90% of teacher, unseen questions",
         get(ctx, f"{u}/if_student") >= 0.9 * get(ctx, f"{u}/if_teacher")),
        ("context: student >= 75% of teacher, heldout_phrasing",
         get(ctx, f"{p}/if_student") >= 0.75 * get(ctx, f"{p}/if_teacher")),
        ("context: KL gap closed >= 80%, unseen questions", get(ctx, f"{u}/gap_closed") >= 0.8),
        ("verified: student >= 80%, unseen questions", get(ver, f"{u}/if_student") >= 0.8),
        ("verified: student >= 60%, heldout_phrasing", get(ver, f"{p}/if_student") >= 0.6),
        ("context: ahead of the prompt-agnostic LoRA on every split",
         all(get(ctx, f"{s}/if_student") > get(ctx_a, f"{s}/if_student") for s in SPLITS)),
        ("verified: ahead of the prompt-agnostic LoRA on every split",
         all(get(ver, f"{s}/if_student") > get(ver_a, f"{s}/if_student") for s in SPLITS)),
    ]
    return "\n".join(lines), [f"- [{'x' if ok else ' '}] {name}" for name, ok in goals]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    table, goals = tables(Path(argv[0]))
    print(table + "\n\n**Goals**\n\n" + "\n".join(goals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
