"""Kill a `r1rm` run with SIGKILL at a named phase, or at a random, replayable moment (the kill-and-resume
fault tests).

`kill_at_phase` sets _R1RM_TEST_KILL_AT="phase:n" and the run kills itself the n-th time it reaches that
point (r1rm.runtime.checkpoint.kill_point: load, step, checkpoint, end, record): the moment does not
depend on the machine's speed. The helpers below draw moments at random instead.

Every draw comes from a `random.Random` seeded by R1RM_KILL_SEED (default 1729), the test's
label and the attempt number, and every kill is reported as `kill <label>#<attempt>
(R1RM_KILL_SEED=<seed>): ...` in the tests' messages: rerun a failing test with that seed to
draw the same moments again. The draw fixes the moment (a fraction of a measured duration,
a record count); what the run was doing then also depends on the machine's speed.

    from killing import kill_rng, run_and_kill
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILL_SEED = int(os.environ.get("R1RM_KILL_SEED", "1729"))


def kill_rng(label: str, attempt: int = 0) -> random.Random:
    """The generator for kill `attempt` of test `label` (string seeds are stable across processes)."""
    return random.Random(f"{KILL_SEED}/{label}/{attempt}")


@dataclass
class Kill:
    label: str
    attempt: int
    delay_s: float        # drawn: seconds after the start (after `trigger` when one was given)
    killed: bool          # the run was still going when SIGKILL was sent
    returncode: int
    elapsed_s: float      # start to end of the process
    stderr_tail: str
    note: str = ""
    left: str = ""        # what the run left behind, as the test describes it

    def __str__(self) -> str:
        what = "killed" if self.killed else f"had already exited (rc {self.returncode})"
        return (f"kill {self.label}#{self.attempt} (R1RM_KILL_SEED={KILL_SEED}): {self.note}delay {self.delay_s:.2f}s, "
                f"{what} after {self.elapsed_s:.2f}s" + (f"; left {self.left}" if self.left else ""))


def run_and_kill(args: list, *, label: str, attempt: int, delay_s: float, trigger: Callable[[], bool] | None = None,
                 left: Callable[[], str] | None = None, note: str = "", timeout_s: float = 600,
                 cwd: Path = REPO) -> Kill:
    """Start `python -m r1rm.cli ARGS`; wait for `trigger()` (if given), then `delay_s` more; SIGKILL it
    if it is still running; describe what it left with `left()`. A run that ends by itself first is
    not an error here: the caller checks `kill.returncode` (it must be 0 then) and its invariants
    either way."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = t0 + timeout_s
            while trigger is not None and proc.poll() is None and not trigger():
                assert time.monotonic() < deadline, f"{label}#{attempt}: the trigger never fired"
                time.sleep(0.01)
            until = time.monotonic() + delay_s
            while proc.poll() is None and time.monotonic() < until:
                time.sleep(min(0.01, max(0.0, until - time.monotonic())))
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # an assertion above: do not leave the run behind
                proc.kill()
                proc.wait()
        elapsed = time.monotonic() - t0
        err.seek(0)
        tail = err.read()[-3000:]
    kill = Kill(label, attempt, delay_s, killed, rc, elapsed, tail, note, left() if left else "")
    print(kill)
    return kill


def kill_at_random_moment(args: list, *, label: str, attempt: int, duration_s: float, lo: float = 0.05,
                          hi: float = 0.95, **kw) -> Kill:
    """SIGKILL at a moment drawn uniformly between `lo` and `hi` of `duration_s` (an uninterrupted
    run's measured wall time) after the start."""
    frac = kill_rng(label, attempt).uniform(lo, hi)
    return run_and_kill(args, label=label, attempt=attempt, delay_s=frac * duration_s,
                        note=f"{100 * frac:.0f}% of {duration_s:.1f}s, ", **kw)


def kill_at_phase(args: list, *, label: str, phase: str, left: Callable[[], str] | None = None,
                  timeout_s: float = 600, cwd: Path = REPO) -> Kill:
    """Run `python -m r1rm.cli ARGS` with _R1RM_TEST_KILL_AT=`phase` ("name:n", r1rm.runtime.checkpoint.kill_point):
    the run SIGKILLs itself the n-th time it reaches that point — the same moment on a fast or a slow
    machine. `killed` says whether it did (returncode -9); a run that never reached the point ends by itself."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1", "_R1RM_TEST_KILL_AT": phase}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout_s)
    kill = Kill(label, 0, 0.0, proc.returncode == -signal.SIGKILL, proc.returncode, time.monotonic() - t0,
                proc.stderr[-3000:], f"at {phase}, ", left() if left else "")
    print(kill)
    return kill


def training_state(out: Path) -> str:
    """What a killed sft / rl run left: metrics rows and the checkpoints folder."""
    m = out / "metrics.jsonl"
    n = m.read_bytes().count(b"\n") if m.exists() else 0
    root = out / "checkpoints"
    return f"{n} metrics rows, checkpoints {sorted(p.name for p in root.iterdir()) if root.is_dir() else []}"


def complete_rows(out: Path) -> list[dict]:
    """The complete rows of `out/metrics.jsonl` (a line cut by a kill is not one)."""
    found = []
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return found


def timed(fn: Callable, *a, **kw):
    """(fn(*a, **kw), seconds it took)."""
    t0 = time.monotonic()
    result = fn(*a, **kw)
    return result, time.monotonic() - t0


# ---------------------------------------------------------------- checkpoints (sft, rl)
_STEP = re.compile(r"^step-(\d{7})$")


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def assert_checkpoints_complete(out: Path, reference: Path, why: str = "", *, mid_run: bool = False) -> None:
    """Every `out/checkpoints/step-N` is complete: the same files as `reference` (a checkpoint an
    uninterrupted run wrote), a trainer_state.json for step N, weights that load. After a finished
    run nothing else is there (no `.tmp-` half-written or `.del-` half-deleted folder); `mid_run`
    (after a kill) allows those, and no checkpoint at all."""
    from safetensors.torch import load_file

    root = out / "checkpoints"
    if mid_run and not root.is_dir():
        return
    names = sorted(p.name for p in root.iterdir())
    others = [n for n in names if not _STEP.match(n)]
    if mid_run:
        others = [n for n in others if not re.match(r"^\.(tmp|del)-step-\d{7}$", n)]
    else:
        assert names, f"no checkpoint in {root}\n{why}"
    assert not others, f"leftovers in {root}: {others}\n{why}"
    want = _files(reference)
    for n in filter(_STEP.match, names):
        d = root / n
        assert _files(d) == want, f"{d} is not complete: {sorted(want ^ _files(d))}\n{why}"
        assert json.loads((d / "trainer_state.json").read_text())["step"] == int(_STEP.match(n).group(1)), why
        load_file(d / "model.safetensors")


def assert_same_weights(a: Path, b: Path, why: str = "", atol: float = 1e-5) -> None:
    """The model.safetensors in folders `a` and `b` hold the same tensors (to `atol`)."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(wa) == set(wb), why
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, f"{a} and {b} differ by up to {worst}\n{why}"
