"""Write missing outputs with the teacher (prompt in context; greedy or sampled), cached on disk.

Each cached label is keyed by what made it: the teacher (``model_fingerprint``: its config
and weights), the record (prompt and input, as the tokens the teacher read, so the prompt
layout too) and the labelling settings (``LabelSettings``: length, sampling, temperature,
top-p, repetition penalty, seed, and the ids that stop an answer). Another teacher, or other
settings, label again; the same ones decode nothing twice, in a rerun or a resumed run.
Sampling draws each record from its own seed, derived from its key, so a label does not
depend on the batch it was decoded in: a resumed run writes the same labels.

A label that ran into ``max_new_tokens`` before the teacher ended its turn is *incomplete*
(``Record.complete=False``): the collator gives it no end token, so no student learns to stop
where the teacher was cut.

A record with ``prompt=None`` is labelled from its input alone (the model's own answer to the bare
request, which ``hyperlora.data.verified`` rewrites into a verified target); its key differs from
any prompted one.

The cache is a JSONL file of ``{"key", "output", "finished", "prompted"}`` rows, appended (and flushed to
disk) as each batch is decoded, so a kill during labelling loses at most the batch in flight.
A line a kill cut short is ignored on reload and cut off before the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from hyperlora.data.format import end_of_turn_ids, prefix_ids
from hyperlora.data.records import Record
from hyperlora.decoding import decode_batch
from hyperlora.fingerprint import model_fingerprint

__all__ = ["LabelSettings", "check_cache_file", "label_missing", "read_cache"]


@dataclass(frozen=True)
class LabelSettings:
    """How the teacher writes a label; all of it is part of the label's cache key."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0  # sampling only
    top_p: float = 1.0  # sampling only
    repetition_penalty: float = 1.0
    seed: int = 0  # sampling only: record r is drawn from a seed made of this and r's key

    def __post_init__(self) -> None:
        checks = {"max_new_tokens": self.max_new_tokens >= 1, "temperature": self.temperature > 0,
                  "top_p": 0 < self.top_p <= 1, "repetition_penalty": self.repetition_penalty > 0,
                  "seed": self.seed >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"Labelling {name}={getattr(self, name)!r} is out of range "
                                 "(max_new_tokens >= 1, temperature > 0, 0 < top_p <= 1, repetition_penalty > 0, "
                                 "seed >= 0).")


def _key(teacher: str, prefix: list[int], record: Record, settings: LabelSettings, stop: list[int]) -> str:
    decode = asdict(settings)
    if not settings.do_sample:  # greedy: these change nothing, so they relabel nothing
        decode.update(temperature=None, top_p=None, seed=None)
    what = {"teacher": teacher, "prompt": record.prompt, "input": record.input, "prefix": prefix,
            "decode": decode, "stop": stop}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _seed(key: str) -> int:
    """A record's sampling seed: its key holds the labelling seed, so another ``seed`` draws anew."""
    return int(key[:15], 16)  # 60 bits: within a torch.Generator's seed range


def read_cache(cache_file: str | Path) -> dict[str, tuple[str, bool]]:
    """``{key: (output, finished)}`` of a cache file; rows that do not parse (a line cut by a kill) are left out."""
    cache: dict[str, tuple[str, bool]] = {}
    path = Path(cache_file)
    if not path.is_file():
        return cache
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if (isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("output"), str)
                and isinstance(row.get("finished"), bool)):
            cache[row["key"]] = (row["output"], row["finished"])
    return cache


def check_cache_file(cache_file: str | Path) -> Path:
    """``cache_file`` as a ``Path``, refused (one line) when it is not a label cache we may append to.

    A missing or empty file is fine (labelling creates it); an existing one must start with a label row,
    so that a file the project did not write is never appended to.
    """
    path = Path(cache_file)
    if path.exists() and not path.is_file():
        raise ValueError(f"The label cache {path} is a folder; give a file path (e.g. {path / 'labels.jsonl'}).")
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            first = handle.readline().decode("utf-8", errors="replace")
        try:
            row = json.loads(first)
        except ValueError:
            row = None
        # A first line cut by a kill during the first append (no newline yet) is ours too: labelling cuts it.
        cut_first = not first.endswith("\n") and first.startswith('{"key": ')
        if not cut_first and not (isinstance(row, dict) and {"key", "output", "finished"} <= row.keys()):
            raise ValueError(f"{path} is not a hyperlora label cache (its first line is not a label row); it was left "
                             "untouched. Choose a new file for data.label_cache.")
    return path


def _cut_partial_line(path: Path) -> None:
    """Drop a last line without its newline (a kill mid-append), so the next append starts a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def label_missing(records: list[Record], teacher: nn.Module, tokenizer: Any, cache_file: str | Path,
                  max_new_tokens: int = 128, batch_size: int = 32, *, do_sample: bool = False,
                  temperature: float = 1.0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0,
                  prompt_layout: str = "user", progress: bool | None = True) -> list[Record]:
    """``records`` with every ``output=None`` filled by the teacher's answer (``complete`` says whether it ended).

    ``prompt_layout``: where the teacher reads the prompt (``hyperlora.data.format.prefix_text``).
    ``progress``: a progress bar over the records to decode (``None``: only on a terminal).
    """
    missing = [r for r in records if r.output is None]
    if not missing:
        return list(records)
    settings = LabelSettings(max_new_tokens, do_sample, temperature, top_p, repetition_penalty, seed)
    cache_file = Path(cache_file)
    fingerprint = model_fingerprint(teacher)
    stop = end_of_turn_ids(tokenizer)
    prefixes = {id(r): prefix_ids(tokenizer, r.prompt, r.input, prompt_layout) for r in missing}
    keys = {id(r): _key(fingerprint, prefixes[id(r)], r, settings, stop) for r in missing}
    cache = read_cache(cache_file)
    todo = list({keys[id(r)]: r for r in missing if keys[id(r)] not in cache}.values())
    if todo:
        from tqdm.auto import tqdm

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _cut_partial_line(cache_file)
        with cache_file.open("a") as handle, tqdm(total=len(todo), desc="label", unit="record",
                                                  disable=None if progress is None else not progress) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                texts, finished = decode_batch(
                    teacher, tokenizer, [prefixes[id(r)] for r in chunk], max_new_tokens,
                    do_sample=do_sample, temperature=temperature, top_p=top_p,
                    repetition_penalty=repetition_penalty, seeds=[_seed(keys[id(r)]) for r in chunk])
                rows = {keys[id(r)]: (text, done) for r, text, done in zip(chunk, texts, finished)}
                # "prompted": whether the answer was written with the prompt in context (false: the bare input,
                # the source of verified targets); for a reader of the file only, the key already says it.
                prompted = {keys[id(r)]: r.prompt is not None for r in chunk}
                # One write per batch, on disk before the next batch starts.
                handle.write("".join(json.dumps({"key": k, "output": v, "finished": f, "prompted": prompted[k]})
                                     + "\n" for k, (v, f) in rows.items()))
                handle.flush()
                os.fsync(handle.fileno())
                cache.update(rows)
                bar.update(len(chunk))
    out = []
    for r in records:
        if r.output is None:
            text, finished = cache[keys[id(r)]]
            r = replace(r, output=text, complete=finished)
        out.append(r)
    return out
