"""Print the quality table (markdown) from a hypernetwork run and a prompt-agnostic baseline run.

    python scripts/quality_table.py runs/hyperlora-gpu runs/baseline-gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPLITS = ("train_unseen_inputs", "heldout_phrasing", "heldout_param", "heldout_compose")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run, baseline = (json.loads((Path(p) / "final_metrics.json").read_text()) for p in argv)
    print("| split | student (prompt as adapter) | teacher (prompt in context) | student / teacher | base (no prompt) | prompt-agnostic LoRA |")
    print("| --- | --- | --- | --- | --- | --- |")
    for split in SPLITS:
        s, t, b = (run[f"{split}/em_{who}"] for who in ("student", "teacher", "base"))
        agnostic = baseline[f"{split}/em_student"]
        ratio = f"{s / t:.0%}" if t else "n/a"
        print(f"| {split} | {s:.1%} | {t:.1%} | {ratio} | {b:.1%} | {agnostic:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
