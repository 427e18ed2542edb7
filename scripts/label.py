"""Label once, train many: write the labels a train config needs into its data.label_cache, and stop.

    python scripts/label.py experiment=smollm2_gpu data.targets=mix

Runs that share the teacher and the labelling settings (a hypernetwork and its prompt-agnostic
baseline; context-distillation and verified-target runs with data.targets=mix here) then find
every label in the cache and decode nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from hyperlora.base_models import load_base_model
from hyperlora.loading import resolve_device
from hyperlora.train import compose_config, load_data
from hyperlora.train_config import train_config


def main(argv: list[str]) -> int:
    config = train_config(compose_config(argv))
    if not config.data.label_cache:
        print("scripts/label.py writes to data.label_cache; set it (e.g. data.label_cache=runs/labels.jsonl).",
              file=sys.stderr)
        return 2
    start = time.time()
    device = torch.device(resolve_device(None))
    model, tokenizer = load_base_model(config.model.path, config.model.dtype, config.model.attn_implementation,
                                       device, "model.path")
    teacher = model
    if config.teacher.path:
        teacher, _ = load_base_model(config.teacher.path, config.model.dtype, config.model.attn_implementation,
                                     device, "teacher.path", tokenizer=False)
    train, evals = load_data(config.data, teacher, tokenizer, Path(config.trainer.out_dir))
    sizes = ", ".join(f"{split} {len(records)}" for split, records in evals.items())
    print(f"labelled into {config.data.label_cache} in {time.time() - start:.0f} s: train {len(train)}; {sizes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
