"""Train a hypernetwork: `python scripts/train.py experiment=demo_cpu trainer.max_steps=100`.

The same as `hyperlora train ...` (the configs ship inside the package, hyperlora/conf/), for
launchers that want a script path. Multi-GPU: `torchrun --nproc_per_node N scripts/train.py experiment=gpu`.
"""

from __future__ import annotations

import sys

from hyperlora.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
