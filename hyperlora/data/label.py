"""Write missing outputs with the teacher (greedy, prompt in context), cached on disk.

The cache is a JSONL file per teacher, keyed by a hash of (prompt, input), so a
second run, or a resumed one, decodes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from hyperlora.atomic import atomic_write_text
from hyperlora.data.format import prefix_ids
from hyperlora.data.records import Record
from hyperlora.decoding import greedy_decode

__all__ = ["label_missing"]


def _key(record: Record) -> str:
    return hashlib.sha256(json.dumps([record.prompt, record.input]).encode()).hexdigest()


def label_missing(records: list[Record], teacher: nn.Module, tokenizer: Any, cache_file: str | Path,
                  max_new_tokens: int = 128, batch_size: int = 32) -> list[Record]:
    """``records`` with every ``output=None`` filled by the teacher's greedy answer."""
    cache_file = Path(cache_file)
    cache: dict[str, str] = {}
    if cache_file.is_file():
        cache = {row["key"]: row["output"] for row in map(json.loads, cache_file.read_text().splitlines()) if row}
    todo = [r for r in records if r.output is None and _key(r) not in cache]
    todo = list({_key(r): r for r in todo}.values())
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prefixes = [prefix_ids(tokenizer, r.prompt, r.input) for r in chunk]
        for record, text in zip(chunk, greedy_decode(teacher, tokenizer, prefixes, max_new_tokens)):
            cache[_key(record)] = text
    if todo:
        atomic_write_text(cache_file, "".join(json.dumps({"key": k, "output": v}) + "\n" for k, v in cache.items()))
    return [r if r.output is not None else replace(r, output=cache[_key(r)]) for r in records]
