"""Experiments run only on request: ``pytest experiments/tests`` (``make test`` collects ``tests/`` alone).

The probes are scripts that import their shared setup (``probe_setup``, ``static_decode``) as top-level
modules, as Python does when it runs a script from its own folder; putting that folder on ``sys.path``
lets a test import them the same way from the repository root.
"""

import sys
from pathlib import Path

PROBES = Path(__file__).resolve().parent / "probes"
if str(PROBES) not in sys.path:
    sys.path.insert(0, str(PROBES))
