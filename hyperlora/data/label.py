"""Write missing outputs with the teacher (greedy, prompt in context), cached on disk.

Each cached label is keyed by what made it: the teacher (``model_fingerprint``: its config
and weights), the record (prompt and input, as the tokens the teacher read) and the
labelling settings (greedy, ``max_new_tokens``). Another teacher, or other settings, label
again; the same ones decode nothing twice, in a rerun or a resumed run.

The cache is a JSONL file of ``{"key", "output"}`` rows, appended (and flushed to disk) as
each batch is decoded, so a kill during labelling loses at most the batch in flight. A line
a kill cut short is ignored on reload and cut off before the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from hyperlora.data.format import prefix_ids
from hyperlora.data.records import Record
from hyperlora.decoding import greedy_decode
from hyperlora.fingerprint import model_fingerprint

__all__ = ["label_missing", "read_cache"]


def _key(teacher: str, prefix: list[int], record: Record, max_new_tokens: int) -> str:
    what = {"teacher": teacher, "prompt": record.prompt, "input": record.input, "prefix": prefix,
            "decode": "greedy", "max_new_tokens": max_new_tokens}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def read_cache(cache_file: str | Path) -> dict[str, str]:
    """``{key: output}`` of a cache file; rows that do not parse (a line cut by a kill) are left out."""
    cache: dict[str, str] = {}
    path = Path(cache_file)
    if not path.is_file():
        return cache
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("output"), str):
            cache[row["key"]] = row["output"]
    return cache


def _cut_partial_line(path: Path) -> None:
    """Drop a last line without its newline (a kill mid-append), so the next append starts a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def label_missing(records: list[Record], teacher: nn.Module, tokenizer: Any, cache_file: str | Path,
                  max_new_tokens: int = 128, batch_size: int = 32) -> list[Record]:
    """``records`` with every ``output=None`` filled by the teacher's greedy answer."""
    missing = [r for r in records if r.output is None]
    if not missing:
        return list(records)
    cache_file = Path(cache_file)
    fingerprint = model_fingerprint(teacher)
    prefixes = {id(r): prefix_ids(tokenizer, r.prompt, r.input) for r in missing}
    keys = {id(r): _key(fingerprint, prefixes[id(r)], r, max_new_tokens) for r in missing}
    cache = read_cache(cache_file)
    todo = list({keys[id(r)]: r for r in missing if keys[id(r)] not in cache}.values())
    if todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _cut_partial_line(cache_file)
        with cache_file.open("a") as handle:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                texts = greedy_decode(teacher, tokenizer, [prefixes[id(r)] for r in chunk], max_new_tokens)
                rows = {keys[id(r)]: text for r, text in zip(chunk, texts)}
                # One write per batch, on disk before the next batch starts.
                handle.write("".join(json.dumps({"key": k, "output": v}) + "\n" for k, v in rows.items()))
                handle.flush()
                os.fsync(handle.fileno())
                cache.update(rows)
    return [r if r.output is not None else replace(r, output=cache[keys[id(r)]]) for r in records]
