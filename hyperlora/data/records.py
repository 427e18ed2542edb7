"""The JSONL dataset format: one object per line with ``prompt``, ``input`` and an optional ``output``.

A line that is not valid UTF-8 or not valid JSON, or lacks a field, is reported
with its file and line number (and the column, where there is one).
``on_error="skip"`` warns and goes on with the good lines; ``on_error="fail"``
stops before any training work is done.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

TARGETS = ("distill", "verified")

__all__ = ["TARGETS", "Record", "RecordError", "parse_record", "read_jsonl", "scan_jsonl", "write_jsonl"]


@dataclass(frozen=True)
class Record:
    prompt: str
    input: str
    output: str | None = None
    complete: bool = True  # False: the output was cut at a length limit (a teacher's label), so it gets no end token
    # What the output is a target of: "distill" (the teacher's logits, KL) or "verified" (a rewritten answer that
    # passes the instruction's verifier: cross-entropy on it; the teacher's logits are no target for it).
    target: str = "distill"
    # A verified target only: the model's own answer without the instruction that the target departs from (for a
    # rewrite, the cut of it the rewrite started from; hyperlora.data.verified). The collator marks the output's
    # tokens that differ from it, so the loss can weight what the instruction changed.
    rewritten_from: str | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"Record target={self.target!r}; choose one of {', '.join(TARGETS)}.")


class RecordError(ValueError):
    """A malformed line, named by file and line number."""


def parse_record(line: str, where: str) -> Record:
    """One JSONL line -> ``Record``; ``where`` (``FILE:LINE``) prefixes any error."""
    # Without its line ending: json would place an error at the end of a truncated line on "line 2, column 1".
    line = line.rstrip("\r\n")
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        at = " " if err.msg.endswith(" at") else " at "  # "Unterminated string starting at"
        truncated = err.pos >= len(line.rstrip()) or err.msg.startswith("Unterminated string")
        ends_early = "; the line ends early: truncated?" if truncated else ""
        raise RecordError(f"{where}: not valid JSON ({err.msg}{at}column {err.colno}{ends_early}).") from None
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object with 'prompt' and 'input', got {type(data).__name__}.")
    for field in ("prompt", "input"):
        if not isinstance(data.get(field), str):
            raise RecordError(f"{where}: field '{field}' is missing or not a string.")
    if not data["prompt"].strip():
        raise RecordError(f"{where}: 'prompt' is empty; every example needs an instruction.")
    output = data.get("output")
    if output is not None and not isinstance(output, str):
        raise RecordError(f"{where}: field 'output' must be a string when present.")
    complete = data.get("complete", True)  # false: an output cut short (no end-of-turn token is trained on it)
    if not isinstance(complete, bool):
        raise RecordError(f"{where}: field 'complete' must be true or false when present.")
    target = data.get("target", "distill")
    if target not in TARGETS:
        raise RecordError(f"{where}: field 'target' must be one of {', '.join(TARGETS)} when present.")
    source = data.get("rewritten_from")
    if source is not None and not isinstance(source, str):
        raise RecordError(f"{where}: field 'rewritten_from' must be a string when present.")
    return Record(data["prompt"], data["input"], output, complete=complete, target=target, rewritten_from=source)


def scan_jsonl(path: str | Path, what: str = "Dataset file") -> tuple[list[Record], list[str]]:
    """The good records of ``path`` and one ``"FILE:LINE: reason"`` per malformed line."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a JSONL file.")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    records: list[Record] = []
    errors: list[str] = []
    # Bytes, decoded line by line: one bad byte costs its line, not the whole file.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading BOM is not data
            except UnicodeDecodeError as err:
                errors.append(f"{where}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                              "save the file as UTF-8.")
                continue
            if not line.strip():
                continue
            try:
                records.append(parse_record(line, where))
            except RecordError as err:
                errors.append(str(err))
    return records, errors


def read_jsonl(path: str | Path, on_error: str = "fail") -> list[Record]:
    """All records of ``path``; malformed lines raise (``fail``) or are skipped with a warning (``skip``).

    The whole file is checked before anything is returned, so a bad line stops
    a run before any training work is spent.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}; choose 'fail' or 'skip'.")
    records, errors = scan_jsonl(path)
    if errors and on_error == "fail":
        more = f" (and {len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise RecordError(f"{errors[0]}{more} Fix the line, or set data.on_error=skip to leave it out.")
    for error in errors:
        warnings.warn(f"skipped {error}", stacklevel=2)
    if not records:
        raise ValueError(f"{path} holds no usable records.")
    return records


def write_jsonl(records: list[Record], path: str | Path) -> None:
    """Write records atomically (fields at their defaults left out: ``output`` and ``rewritten_from`` when
    ``None``, ``complete`` when true, ``target`` when distill)."""
    from hyperlora.atomic import atomic_write_text

    defaults = {"output": None, "complete": True, "target": "distill", "rewritten_from": None}
    rows = ({k: v for k, v in asdict(r).items() if k not in defaults or v != defaults[k]} for r in records)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
