"""What every probe runs on: the device, its dtype, the bench size and the LoRA spec.

Full size in bf16 on CUDA, the tests' tiny size in fp32 on CPU; a size name as the first
argument overrides the size (``python experiments/probes/<probe>.py small``).
"""

from __future__ import annotations

import sys

import torch

from hyperlora.bench.common import SIZES
from hyperlora.lora import LoRASpec

__all__ = ["CUDA", "DEVICE", "DTYPE", "SIZE", "SPEC"]

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
SIZE = SIZES[sys.argv[1] if len(sys.argv) > 1 else ("full" if CUDA else "tiny")]
SPEC = LoRASpec(rank=16, alpha=32.0, dropout=0.0)
