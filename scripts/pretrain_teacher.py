"""Train the from-scratch teacher on the built-in suite and save it with its accuracy report.

    python scripts/pretrain_teacher.py --preset cpu --out runs/teacher-cpu            # ~3.5-4 min on 2 cores
    python scripts/pretrain_teacher.py --preset gpu --out runs/teacher-gpu --device cuda  # ~5 min on an H100

Prints the loss every ~10% of the steps, then the report (also written to
OUT/teacher_report.json): greedy exact match on every split, and on
train_unseen_inputs without the prompt.
"""

from __future__ import annotations

import argparse
import json
import sys

from hyperlora.loading import resolve_device
from hyperlora.toy.teacher import PRESETS, get_preset, pretrain_teacher


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", required=True,
                        help="a new or empty folder, or a teacher this script wrote (replaced atomically when done)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    # Overrides of single preset fields, for quick checks and sweeps.
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--eval-examples", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)

    overrides = {name: getattr(args, name) for name in ("steps", "batch_size", "lr", "n_train", "eval_examples", "seed")
                 if getattr(args, name) is not None}
    preset = get_preset(args.preset)
    if "steps" in overrides:  # keep warmup a fixed share of the run, so --steps 5 stays valid
        overrides["warmup"] = round(preset.warmup * overrides["steps"] / preset.steps)
    device = resolve_device(args.device)  # before the (minutes-long) training: a bad --device fails now
    report = pretrain_teacher(preset.replace(**overrides), args.out, device=device)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileExistsError, FileNotFoundError, PermissionError) as err:
        # Bad input (a folder that is not a teacher, a bad override): one line, no traceback.
        print(f"pretrain_teacher: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
