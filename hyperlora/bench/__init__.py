"""Performance benchmarks, each a ratio to a baseline timed in the same process.

``hyperlora bench`` (``hyperlora.bench.main``) runs the sections and writes one
JSON report. One file per concept: ``timing`` (clocks, memory, ratios),
``common`` (sizes, the random student, the context; adapters and references from ``hyperlora.toy.reference``),
and the sections ``injector``, ``generator``, ``decode``, ``train_step``.
"""
