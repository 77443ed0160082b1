"""Reward throughput of ``svdd.distributed.RewardPool``: calls per second with 1, 2, ... workers and
the speedup over one worker, for a real CPU-bound molecule reward.

Rewards (both the molecules domain's own, on SELFIES token ids):
- ``qed+sa`` (default): RDKit QED + normalised SA score of each decoded molecule;
- ``docking:<target>``: AutoDock Vina (exhaustiveness 1), one Vina process per pool worker, each
  computing the receptor's affinity maps once; the docking result cache is switched off so every
  call really docks.

The molecules are the first ``--num-molecules`` MOSES SMILES shipped with the molecules domain
(``moses_sample.csv.gz``). For each worker count the pool is started and warmed up (every worker
scores one molecule: imports, SA fragment table, receptor maps), then timed calls score all
molecules, ``--repeats`` times, interleaved across worker counts so that a change in background
load hits every count alike; the median is reported. Caching is off so nothing is skipped. The
in-process reward (no pool) is timed too. As a control, ``machine_ceiling`` times k plain
processes of busy work (no svdd code) against one: on a shared machine that, not the pool,
bounds the speedup.

    python benchmarks/reward_throughput.py --workers 1 2 --num-molecules 1000 --out runs/throughput.json
    python benchmarks/reward_throughput.py --reward docking:parp1 --workers 1 2 --num-molecules 8
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def machine_ceiling(num_procs: int, repeats: int = 3, work: int = 3_000_000) -> float:
    """Speedup of ``num_procs`` processes over one on pure-Python busy work (no svdd code): what
    this machine gives right now, under its current background load."""
    from concurrent.futures import ProcessPoolExecutor

    ratios = []
    with ProcessPoolExecutor(num_procs) as ex:
        list(ex.map(_spin, [10] * num_procs))
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(num_procs):
                _spin(work)
            serial = time.perf_counter() - start
            start = time.perf_counter()
            list(ex.map(_spin, [work] * num_procs))
            ratios.append(serial / (time.perf_counter() - start))
    return statistics.median(ratios)


def load_molecules(n: int) -> torch.Tensor:
    import pandas as pd

    from svdd.domains.molecules import ASSETS, load_tokenizer
    from svdd.domains.base import DomainError

    tok = load_tokenizer()
    smiles = pd.read_csv(ASSETS / "moses_sample.csv.gz")["SMILES"].tolist()
    rows = []
    for s in smiles:
        try:
            rows.append(tok.encode(s))
        except DomainError:   # outside the model's vocabulary or length
            continue
        if len(rows) == n:
            break
    return torch.stack(rows)


class FreshDocking:
    """The molecules domain's Vina reward with one Vina process and no result cache: neither the
    SQLite cache nor the reward's in-memory table, which is emptied before every call, so repeated
    timed calls dock every molecule again."""

    def __init__(self, target: str):
        from svdd.domains.molecules import load_tokenizer
        from svdd.domains.molecules.docking import DockingReward

        self.reward = DockingReward(target, load_tokenizer(), num_workers=1, cache=False)

    def __call__(self, x):
        self.reward.memory.clear()
        return self.reward(x)


def docking_reward(target: str):
    return FreshDocking(target)


def make_factory(reward: str):
    from svdd.distributed import DomainRewardFactory

    if reward.startswith("docking:"):
        return functools.partial(docking_reward, reward.split(":", 1)[1])
    return DomainRewardFactory("molecules", reward)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reward", default="qed+sa")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-molecules", type=int, default=1000)
    p.add_argument("--backend", default="process", choices=["process", "ray"])
    p.add_argument("--chunk-size", type=int, default=None, help="molecules per task (default: n / (4 workers))")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per worker count (median reported)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from svdd.distributed import RewardPool

    if args.backend == "ray":   # all pools stay up (interleaved timing): one logical CPU per worker of each
        from svdd.distributed import ensure_ray

        ensure_ray(num_cpus=sum(args.workers))
    x = load_molecules(args.num_molecules)
    factory = make_factory(args.reward)
    load_before = os.getloadavg()

    serial = None
    if not args.reward.startswith("docking:"):   # in-process reference (docking always uses a process)
        reward = factory()
        reward(x[:4])
        start = time.perf_counter()
        serial_values = reward(x)
        serial = len(x) / (time.perf_counter() - start)
    pools = {}
    times: dict[int, list[float]] = {w: [] for w in args.workers}
    counters = {}
    try:
        for w in args.workers:
            pools[w] = RewardPool(factory, w, backend=args.backend, cache=False, threads_per_worker=1,
                                  chunk_size=args.chunk_size)
            pools[w](x[:w])   # one molecule per worker: start-up costs stay out of the timing
        for _ in range(args.repeats):   # interleaved, so a change in background load hits every count
            for w in args.workers:
                start = time.perf_counter()
                values = pools[w](x)
                times[w].append(time.perf_counter() - start)
                if serial is not None:
                    assert torch.allclose(values.nan_to_num(-1), serial_values.nan_to_num(-1)), \
                        "the pool's rewards differ from the in-process reward"
        counters = {w: pool.counters() for w, pool in pools.items()}
    finally:
        for pool in pools.values():
            pool.close()
    rows = []
    for w in args.workers:
        seconds = statistics.median(times[w])
        rows.append({"workers": w, "seconds": seconds, "seconds_all": times[w], "calls_per_s": len(x) / seconds,
                     "failures": counters[w]["failures"], "retries": counters[w]["retries"]})
    ceiling = {w: machine_ceiling(w) for w in args.workers if w > 1}
    base = rows[0]["calls_per_s"] if rows and rows[0]["workers"] == 1 else None
    for r in rows:
        r["speedup"] = None if base is None else r["calls_per_s"] / base
        r["efficiency"] = None if base is None else r["speedup"] / r["workers"]
        r["machine_ceiling_speedup"] = ceiling.get(r["workers"], 1.0)
    result = {
        "reward": args.reward, "backend": args.backend, "num_molecules": len(x),
        "in_process_calls_per_s": serial, "rows": rows,
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    print(f"{args.reward}: {len(x)} molecules, backend {args.backend}, {os.cpu_count()} CPUs ({cpu_model()}), "
          f"load average {load_before[0]:.1f} before")
    if serial is not None:
        print(f"  in-process: {serial:8.1f} calls/s")
    for r in rows:
        sp = "" if r["speedup"] is None else (f"  speedup {r['speedup']:.2f}x  efficiency {r['efficiency']:.2f}"
                                              f"  (machine ceiling now: {r['machine_ceiling_speedup']:.2f}x)")
        print(f"  {r['workers']} worker(s): {r['calls_per_s']:8.1f} calls/s ({r['seconds']:.2f} s){sp}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
