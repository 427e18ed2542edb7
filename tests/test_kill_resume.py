"""The kill test at a small size (issue 14): SIGKILL a training run several times, resume it, compare.

``hyperlora train experiment=tiny_test trainer.max_steps=8 trainer.save_every=2`` runs in a
subprocess and is killed (SIGKILL, nothing gets to clean up):

1. at a random moment (a seeded RNG picks after how many logged steps, and how long after);
2. at a save boundary: inside ``atomic_directory`` once the writer returned, before the
   finished temporary folder is renamed (``.tmp`` complete, not yet ``.done``);
3. between the renames: the folder is ``.done``, not yet in place;
4. at another random moment;
5. then resumed (``trainer.resume=true``) until it finishes;
6. then resumed once more, killed right after the old final folder was moved aside
   (``.old``) and before the new one took its place; and resumed to the end again.

The killed runs are forked from a small server started with ``python -c`` that imported
hyperlora once (each run is a child process running ``hyperlora.cli.main``; forking saves
the seconds of imports per run); the uninterrupted run is a plain ``python -m hyperlora.cli
train``. The save-boundary kills: in the child, ``os.replace`` is wrapped so that the child
kills itself at the chosen rename (``tmp``, ``done`` or ``old``).

Then: the final hypernetwork weights equal those of an uninterrupted run bit for bit, every
loss logged in ``metrics.jsonl`` equals the uninterrupted run's loss of that step (a step
re-run after a kill is logged again, and must give the same loss), every step 1..8 is there,
and no ``.tmp``/``.done``/``.old`` leftover remains anywhere under the run folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

CHECKOUT = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
ARGS = ["train", "experiment=tiny_test", f"trainer.max_steps={MAX_STEPS}", "trainer.save_every=2",
        "data.n_eval=2", "trainer.eval_examples=2"]  # eval every 3 steps (tiny_test): kills may land in it

# A small fork server: it imports hyperlora once, then forks one child per run (each child runs
# ``hyperlora.cli.main`` with its output in a log file), so the kills cost no import time. In a child,
# ``os.replace`` is wrapped so that the child kills itself at the n-th matching rename of a folder
# replace (``hyperlora.atomic``): KILL_AT tmp (complete, not yet .done), done (not yet in place) or old
# (right after the old folder was moved aside).
SERVER = r"""
import json, os, signal, sys, traceback
import hyperlora.cli, hyperlora.train, hyperlora.trainer, hyperlora.model

real = os.replace

def patched(point, nth):
    seen = [0]
    def replace(src, dst, *args, **kwargs):
        s, d = os.fspath(src), os.fspath(dst)
        before = (point == "tmp" and s.endswith(".tmp") and d.endswith(".done")) or (point == "done" and s.endswith(".done"))
        after = point == "old" and d.endswith(".old")
        if before or after:
            seen[0] += 1
        if before and seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(src, dst, *args, **kwargs)
        if after and seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return replace

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if job.get("kill_at"):
            point, nth = job["kill_at"].split(":")
            os.replace = patched(point, int(nth))
        try:
            code = hyperlora.cli.main(job["args"])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH", "")) if p)
    return env


def _args(out: Path, resume: bool) -> list[str]:
    return [*ARGS, f"trainer.out_dir={out}"] + (["trainer.resume=true"] if resume else [])


class Runs:
    """Runs of ``hyperlora train`` forked from one server process; each may be killed."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0
        self.server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=root, env=_env(), text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def start(self, out: Path, resume: bool, kill_at: str | None = None) -> int:
        self.count += 1
        self.log = self.root / f"run-{self.count}.log"
        job = {"args": _args(out, resume), "kill_at": kill_at, "log": str(self.log)}
        self.server.stdin.write(json.dumps(job) + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline())["pid"]

    def wait(self) -> tuple[int, str]:
        line = self.server.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)["code"], self.log.read_text()[-2000:]

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


def _logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_text(errors="replace").count("\n") if path.is_file() else 0


def _kill_after(runs: Runs, pid: int, out: Path, lines: int, delay: float, timeout: float = 60) -> int:
    """SIGKILL run ``pid`` ``delay`` seconds after metrics.jsonl holds ``lines`` lines (unless it ended)."""
    deadline = time.monotonic() + timeout
    while _logged(out) < lines and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    time.sleep(delay)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended (or died) first
    return runs.wait()[0]


def _alive(pid: int) -> bool:
    try:  # the server reaps its children: a zombie still counts as alive here, which only shortens the wait
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][:1] not in ("Z", "X")
    except OSError:
        return False


def _losses(out: Path) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    for number, line in enumerate((out / "metrics.jsonl").read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"metrics.jsonl:{number} is not JSON (a half-written line kept): {line[:80]!r}")
        if "loss" in row:
            losses.setdefault(int(row["step"]), []).append(row["loss"])
    return losses


def _leftovers(out: Path) -> list[str]:
    pattern = re.compile(r".*\.(tmp|done|old)$")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if pattern.fullmatch(p.name))


def test_killed_runs_resume_bit_identically_and_leave_nothing(tmp_path: Path) -> None:
    rng = random.Random(14)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # The uninterrupted run: a plain `python -m hyperlora.cli train`, in parallel with the kills.
    uninterrupted = subprocess.Popen([sys.executable, "-m", "hyperlora.cli", *_args(reference, False)], cwd=tmp_path,
                                     env=_env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = Runs(tmp_path)
    kills: list[str] = []
    try:
        # 1. a random moment of the fresh run
        pid = runs.start(killed, resume=False)
        code = _kill_after(runs, pid, killed, rng.randint(1, 3), rng.uniform(0.0, 0.5))
        kills.append(f"random: exit {code}")
        # 2.-3. the save boundaries: a checkpoint complete but not renamed; renamed .done but not in place
        for point in ("tmp:1", "done:1"):
            runs.start(killed, resume=True, kill_at=point)
            code, log = runs.wait()
            assert code in (-signal.SIGKILL, 0), f"resume before the kill at {point} failed ({code}): {log}"
            kills.append(f"{point}: exit {code}")
        # 4. another random moment
        pid = runs.start(killed, resume=True)
        code = _kill_after(runs, pid, killed, _logged(killed) + rng.randint(1, 2), rng.uniform(0.0, 0.5))
        kills.append(f"random: exit {code}")
        # 5. resume until done
        for _ in range(3):
            runs.start(killed, resume=True)
            code, log = runs.wait()
            if code == 0:
                break
        assert code == 0, f"the resumed run did not finish ({code}): {log}"
        # 6. resume the finished run, killed between the two renames of the final folder; then to the end again
        runs.start(killed, resume=True, kill_at="old:1")
        code, log = runs.wait()
        assert code in (-signal.SIGKILL, 0), f"resuming the finished run failed ({code}): {log}"
        kills.append(f"old:1: exit {code}")
        runs.start(killed, resume=True)
        code, log = runs.wait()
        assert code == 0, f"the last resume failed ({code}): {log}"
    finally:
        runs.close()
        _, err = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, f"the uninterrupted run failed: {err[-2000:]}"
    assert sum(k.endswith(f"exit {-signal.SIGKILL}") for k in kills) >= 3, f"too few kills landed: {kills}"

    expected = load_file(str(reference / "hyperlora" / "hypernet.safetensors"))
    got = load_file(str(killed / "hyperlora" / "hypernet.safetensors"))
    assert sorted(got) == sorted(expected)
    differ = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differ, f"final weights differ from the uninterrupted run's in {differ[:5]} (kills: {kills})"

    want, have = _losses(reference), _losses(killed)
    assert sorted(want) == list(range(1, MAX_STEPS + 1)) and all(len(v) == 1 for v in want.values())
    assert sorted(have) == sorted(want), f"steps logged {sorted(have)} (kills: {kills})"
    wrong = {step: (values, want[step][0]) for step, values in have.items() if any(v != want[step][0] for v in values)}
    assert not wrong, f"losses differ from the uninterrupted run's: {wrong} (kills: {kills})"

    print(f"kills: {kills}")
    assert _leftovers(killed) == [], f"leftovers of crashed saves: {_leftovers(killed)} (kills: {kills})"
    assert _leftovers(reference) == []
