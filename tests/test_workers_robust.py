"""Worker robustness of the process backend: a worker killed with SIGKILL while it starts up
(during its handler's construction), while idle or while busy is replaced and counted, the
results stay exact, and when no worker can be started any more the error says to --resume.

Real worker processes are killed here (``os.kill(pid, SIGKILL)``); every wait has a deadline so
nothing can hang."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from svdd.distributed import DistributedError, PoolCounters, RewardPool
from svdd.distributed.pool import RESUME_HINT, Task, run_tasks

DEADLINE_S = 60.0


# -- picklable helpers (the workers import this module) ---------------------------------------
def marked_square(marker_dir: str, start_delay: float = 0.0, call_delay: float = 0.0):
    """Squares; marks ``start_<pid>`` when its construction begins (then sleeps ``start_delay``)
    and ``busy_<pid>_<n>`` when a call begins (then sleeps ``call_delay``)."""
    marker = Path(marker_dir)
    pid = os.getpid()
    (marker / f"start_{pid}").touch()
    time.sleep(start_delay)
    calls = [0]

    def reward(x):
        calls[0] += 1
        (marker / f"busy_{pid}_{calls[0]}").touch()
        time.sleep(call_delay)
        return x.flatten(1).double().pow(2).sum(1)
    reward.name = "square"
    return reward


def _wait_for(condition, what: str, deadline_s: float = DEADLINE_S):
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    try:  # our own child: wait until it has exited without reaping it (the pool reaps it)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass


def _killer(marker: Path, plan: list[tuple[str, int]], log: list) -> threading.Thread:
    """Kill, in order, the ``k``-th distinct pid that marks ``prefix`` (``plan = [(prefix, k)]``)."""
    def run():
        try:
            for prefix, k in plan:
                pid = _wait_for(lambda: (lambda p: p[k] if len(p) > k else None)(_pids_in_order(marker, prefix)),
                                f"{prefix} #{k}")
                _kill(pid)
                log.append((prefix, pid))
        except AssertionError as err:
            log.append(("error", str(err)))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _pids_in_order(marker: Path, prefix: str) -> list[int]:
    """Distinct pids that wrote ``prefix_*`` markers, in the order they first did."""
    files = sorted(marker.glob(f"{prefix}_*"), key=lambda p: p.stat().st_mtime_ns)
    return list(dict.fromkeys(int(p.name.split("_")[1]) for p in files))


# -- real kills ---------------------------------------------------------------------------------
def test_worker_killed_while_starting_and_while_idle_is_replaced_and_counted(tmp_path):
    x = torch.arange(6, dtype=torch.float64).reshape(6, 1)
    log: list = []
    killer = _killer(tmp_path, [("start", 0)], log)   # the first worker dies inside its factory
    factory = _partial(marked_square, str(tmp_path), start_delay=0.6)
    with RewardPool(factory, 1, backend="process", chunk_size=2, cache=False) as pool:
        killer.join(DEADLINE_S)
        assert log and log[0][0] == "start", log
        assert pool.counters()["worker_deaths"] == 1 and pool.counters()["worker_restarts"] == 1
        assert torch.equal(pool(x), x[:, 0].pow(2).float())
        idle = pool._backend.procs[0].pid
        assert idle != log[0][1]
        _kill(idle)                                    # now kill it while it waits for work
        assert torch.equal(pool(x + 1), (x[:, 0] + 1).pow(2).float())
        c = pool.counters()
        assert pool._backend.procs[0].pid not in (idle, log[0][1])
    assert c["worker_deaths"] == 2 and c["worker_restarts"] == 2
    # the idle death was found before a task was handed to the dead worker: no attempt lost
    assert c["retries"] == 0 and c["failures"] == 0 and c["completed"] == 6


def test_worker_killed_while_busy_then_its_replacement_killed_while_starting(tmp_path):
    x = torch.arange(5, dtype=torch.float64).reshape(5, 1)
    log: list = []
    factory = _partial(marked_square, str(tmp_path), start_delay=0.4, call_delay=0.3)
    with RewardPool(factory, 1, backend="process", chunk_size=1, max_retries=2, cache=False) as pool:
        first = pool._backend.procs[0].pid
        # kill the worker in its first call, then the next worker while it builds its reward
        killer = _killer(tmp_path, [("busy", 0), ("start", 1)], log)
        out = pool(x)
        killer.join(DEADLINE_S)
        c = pool.counters()
    assert [k for k, _ in log] == ["busy", "start"] and log[0][1] == first, log
    assert torch.equal(out, x[:, 0].pow(2).float())
    assert c["worker_deaths"] == 2 and c["worker_restarts"] == 2
    assert c["retries"] == 1 and c["failures"] == 0 and c["completed"] == 5


@pytest.mark.slow
def test_random_kill_trials_never_change_the_result(tmp_path):
    """25 trials: SIGKILL a random worker at a random moment of a call (busy, idle or still
    starting after an earlier kill); every call returns the exact squares."""
    rng = random.Random(0)
    survived = 0
    factory = _partial(marked_square, str(tmp_path), start_delay=0.0, call_delay=0.05)
    with RewardPool(factory, 2, backend="process", chunk_size=1, max_retries=3, cache=False) as pool:
        for trial in range(25):
            x = torch.arange(10, dtype=torch.float64).reshape(10, 1) + 10 * trial
            delay = rng.uniform(0.0, 0.6)
            victim = rng.randrange(pool.num_workers)
            timer = threading.Timer(delay, lambda: _kill_quietly(pool._backend.procs[victim].pid))
            timer.start()
            out = pool(x)
            timer.join(DEADLINE_S)
            survived += bool(torch.equal(out, x[:, 0].pow(2).float()))
        c = pool.counters()
    assert survived == 25
    assert c["failures"] == 0 and c["worker_deaths"] >= 20 and c["worker_restarts"] == c["worker_deaths"]


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _partial(fn, *args, **kwargs):
    import functools

    return functools.partial(fn, *args, **kwargs)


# -- the scheduler's final error (pure logic, a fake backend) -----------------------------------
class _GoneBackend:
    """Every worker slot retired: what a backend looks like when no worker can start any more."""

    num_workers = 2
    last_failure = "worker process exited with code -9 while starting; 3 workers in a row died while starting"

    def ready_workers(self):
        return []

    def starting(self):
        return []

    def take_counts(self):
        return {"worker_deaths": 6, "worker_restarts": 4}


def test_no_worker_left_error_says_why_and_suggests_resume():
    counters = PoolCounters()
    with pytest.raises(DistributedError) as info:
        run_tasks(_GoneBackend(), [Task(0, None), Task(1, None)], counters=counters,
                  on_result=lambda t, v: None, on_failure=lambda t: None)
    message = str(info.value)
    assert "no worker is available" in message and "2 remaining tasks" in message
    assert "--resume" in message and RESUME_HINT in message and "died while starting" in message
    assert "\n" not in message
    assert counters.worker_deaths == 6 and counters.worker_restarts == 4   # counted even on failure
