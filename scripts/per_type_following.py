"""How often a checkpoint's student follows each instruction type, beside the teacher and the base (greedy).

    python scripts/per_type_following.py checkpoints/smollm2-if --split train_unseen_questions --per-type 5

Prints a markdown table (type, n, student, teacher, base) and the totals; the teacher is the base model with the
instruction in context. Runs on the CPU in minutes for a 135M model (three decodes of every request).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch

from hyperlora.answer_metrics import AnswerCache, compare_models
from hyperlora.instruct import build_split
from hyperlora.loading import load_hyperlora
from hyperlora.open_eval import instruct_follows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="train_unseen_questions")
    parser.add_argument("--per-type", type=int, default=5, help="requests per instruction type")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    hyper = load_hyperlora(args.checkpoint, device=args.device, dtype=torch.float32)
    chosen: dict[str, list] = defaultdict(list)
    for example in build_split(args.split, 2000, args.seed):  # single-instruction examples, n per type
        if len(example.types) == 1 and len(chosen[example.types[0]]) < args.per_type:
            chosen[example.types[0]].append(example)
    examples = [e for kind in sorted(chosen) for e in chosen[kind]]
    from hyperlora.instruct import as_records

    records = as_records(examples)
    results = compare_models(hyper, hyper.student, records, instruct_follows(examples), cache=AnswerCache(),
                             batch_size=16, max_new_tokens=args.max_new_tokens)
    who = ("student", "teacher", "base")
    print("| type | n | student | teacher | base |\n| --- | --- | --- | --- | --- |")
    for kind in sorted(chosen):
        rows = [i for i, e in enumerate(examples) if e.types[0] == kind]
        rates = [sum(examples[i].check(results[w].answers[i]) for i in rows) / len(rows) for w in who]
        print(f"| {kind} | {len(rows)} | " + " | ".join(f"{r:.0%}" for r in rates) + " |")
    print(f"| all | {len(examples)} | " + " | ".join(f"{results[w].prompt_level:.1%}" for w in who) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
