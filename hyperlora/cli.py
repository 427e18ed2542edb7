"""``hyperlora`` command line: one sub-command per job, each a module with ``main(argv)``."""

from __future__ import annotations

import errno
import importlib
import sys

# sub-command -> ("module[:function]", one-line help); the function defaults to main.
# Modules are imported only when chosen,
# so ``hyperlora --help`` stays instant and a job's heavy imports stay its own.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("hyperlora.quickstart", "the main job on SmolLM2: label -> train -> before/after -> side by side -> per-layer table"),
    "train": ("hyperlora.train", "train a hypernetwork against a teacher (Hydra overrides: key=value ...)"),
    "selfcheck": ("hyperlora.selfcheck", "inject random per-row adapters into tiny models and check them against a dense reference"),
    "generate": ("hyperlora.generation", "generate with prompt-conditioned adapters (--prompt/--input or --batch FILE.jsonl)"),
    "inspect": ("hyperlora.inspection", "per-layer adapter statistics, prompt similarity, --json/--csv/--plot DIR"),
    "export": ("hyperlora.export:main", "write one prompt's adapter as a standard PEFT LoRA folder"),
    "merge": ("hyperlora.export:merge_main", "write a full model folder with one prompt's adapter merged into the weights"),
    "playground": ("hyperlora.playground.app", "a local web page: type instructions, see the answers and the adapters they make"),
    "bench": ("hyperlora.bench.main", "every performance benchmark as ratios to in-process baselines, one JSON report (--out FILE)"),
}


def _is_user_error(err: BaseException) -> bool:
    """Errors that describe bad input or the machine's state, not a bug.

    Ours are ValueError/FileNotFoundError/...; Hydra's and OmegaConf's too; and the operating
    system's refusals (a read-only folder, a full disk) that the user fixes outside Python.
    """
    from hyperlora.run_lock import LockedError  # another process holds the output folder: the user waits or moves

    user = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
            ImportError, KeyError, LockedError)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return True
    return isinstance(err, user) or type(err).__module__.split(".")[0] in ("hydra", "omegaconf")


def _message(err: BaseException) -> str:
    """One line: the error's own words, with the fix for the operating system's refusals."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
        return f"no space left on the device{where}; free some space or choose another output path."
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and err.filename:
        return f"no permission to write {err.filename}; choose a folder you can write to."
    return " ".join(str(err).split()) or type(err).__name__


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: hyperlora <command> [args]\n\ncommands:\n{rows}\n\n`hyperlora <command> --help` for a command's options."


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"hyperlora: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[command][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    try:
        return int(entry(rest) or 0)
    except Exception as err:
        if not _is_user_error(err):
            raise  # a bug: keep the traceback
        # Bad input is the user's to fix: one line that names it, no traceback.
        print(f"hyperlora {command}: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
