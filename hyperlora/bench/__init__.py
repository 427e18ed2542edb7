"""Performance benchmarks, each a ratio to a baseline timed in the same process.

``hyperlora bench`` (``hyperlora.bench.main``) runs the sections and writes one
JSON report. One file per concept: ``timing`` (clocks, memory, ratios),
``common`` (sizes, the random student, the context; adapters and references from ``hyperlora.toy.reference``),
``memory`` (each section's memory need, the guard that skips what would not fit),
and the sections ``injector``, ``generator``, ``decode``, ``decode_compiled``, ``train_step``.
"""
