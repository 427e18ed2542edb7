"""Train a hypernetwork: `python scripts/train.py experiment=demo_cpu trainer.max_steps=100`.

Hydra entry point over conf/; `hyperlora train ...` takes the same overrides.
Multi-GPU: `torchrun --nproc_per_node N scripts/train.py experiment=gpu`.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from hyperlora.train import run


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    print(json.dumps(run(cfg), indent=2))


if __name__ == "__main__":
    main()
