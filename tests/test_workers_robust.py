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


def once_then_crash_on_start(marker_dir: str):
    """Squares in the first worker; every later worker crashes its interpreter while starting."""
    marker = Path(marker_dir) / "first"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        os._exit(1)

    def reward(x):
        return x.flatten(1).double().pow(2).sum(1)
    reward.name = "square"
    return reward


def _pids_in_order(marker: Path, prefix: str) -> list[int]:
    """Distinct pids that wrote ``prefix_*`` markers, in the order they first did."""
    files = sorted(marker.glob(f"{prefix}_*"), key=lambda p: p.stat().st_mtime_ns)
    return list(dict.fromkeys(int(p.name.split("_")[1]) for p in files))


# -- real kills ---------------------------------------------------------------------------------
# slow (run by make test-slow, which CI runs): keeps the default suite under 5 minutes on 2 cores
@pytest.mark.slow
def test_worker_killed_while_starting_busy_and_idle_is_replaced_and_counted(tmp_path):
    """One worker slot, five workers: the 1st is killed inside its factory while the pool is being
    built, the 2nd in its first call, the 3rd (its replacement) inside its factory during the
    call, the 4th while idle between calls; the 5th finishes. Every result is exact."""
    x = torch.arange(5, dtype=torch.float64).reshape(5, 1)
    log: list = []
    killer = _killer(tmp_path, [("start", 0), ("busy", 0), ("start", 2)], log)
    factory = _partial(marked_square, str(tmp_path), start_delay=0.5, call_delay=0.2)
    with RewardPool(factory, 1, backend="process", chunk_size=1, max_retries=2, cache=False) as pool:
        c = pool.counters()
        assert (c["worker_deaths"], c["worker_restarts"]) == (1, 1)     # killed while starting
        assert torch.equal(pool(x), x[:, 0].pow(2).float())             # killed busy, then while starting
        killer.join(DEADLINE_S)
        assert [k for k, _ in log] == ["start", "busy", "start"], log
        c = pool.counters()
        assert (c["worker_deaths"], c["worker_restarts"], c["retries"]) == (3, 3, 1)
        idle = pool._backend.procs[0].pid
        _kill(idle)                                                      # killed while idle
        assert torch.equal(pool(x + 1), (x[:, 0] + 1).pow(2).float())
        c = pool.counters()
        assert pool._backend.procs[0].pid not in {idle, *(pid for _, pid in log)}
    assert (c["worker_deaths"], c["worker_restarts"]) == (4, 4)
    # the idle death was found before a task was handed to the dead worker: no attempt lost
    assert c["retries"] == 1 and c["failures"] == 0 and c["completed"] == 10


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


def test_a_pool_that_cannot_replace_its_workers_stops_the_run_with_a_resume_hint(tmp_path):
    from svdd.distributed import RewardPoolError
    from svdd.rewards.base import as_reward

    x = torch.arange(3, dtype=torch.float64).reshape(3, 1)
    with RewardPool(_partial(once_then_crash_on_start, str(tmp_path)), 1, backend="process", cache=False) as pool:
        pool._backend.max_start_failures = 1      # retire the slot at the first replacement that crashes
        reward = as_reward(pool)
        assert torch.equal(reward(x), x[:, 0].pow(2).float())
        _kill(pool._backend.procs[0].pid)
        with pytest.raises(RewardPoolError) as info:   # a RewardError: not swallowed as "invalid samples"
            reward(x + 1)
        c = pool.counters()
    message = str(info.value)
    assert "no worker is available" in message and "--resume" in message and "\n" not in message
    assert c["worker_deaths"] == 2 and c["worker_restarts"] == 1


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
