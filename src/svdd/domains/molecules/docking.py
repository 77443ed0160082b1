"""Docking reward ``docking:<target>`` with AutoDock Vina (Python API).

reward = max(−DS, 0) where DS is Vina's best binding score (kcal/mol, lower = better) of the
molecule docked into a prepared receptor; invalid molecules and failed or timed-out dockings
get NaN, which the library maps to the invalid value 0 (as the SVDD paper).

Pipeline per ligand: Open Babel (``obabel -p 7.4``) protonation -> RDKit ETKDG 3D embedding (seeded) +
MMFF -> meeko PDBQT -> ``Vina.dock(exhaustiveness, n_poses=1)`` with a fixed Vina seed (never Vina's
"random" 0), so a molecule gets the same score and pose in any process, batch or order. Receptors and boxes are
dockstring's 58 prepared targets (``dockstring/resources/targets/<T>_target.pdbqt`` and
``<T>_conf.txt``), read from an installed ``dockstring`` (never imported) or from its wheel
fetched with ``pip download --no-deps --only-binary=:all: dockstring==0.3.4`` into the cache
(SHA-256 checked; no build code runs).

Workers are separate processes (one Vina each, ``cpu=1``), each computing the receptor's
affinity maps once when it starts; a docking that runs past ``timeout_s`` kills its worker
(Vina cannot be interrupted otherwise), scores NaN, and a fresh worker takes its place. Results
(score and best pose) persist in an SQLite cache keyed by target, settings and canonical SMILES
under ``~/.cache/svdd/docking`` (``$SVDD_CACHE_DIR``), so a molecule is docked once across runs.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import math
import multiprocessing as mp
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import weakref
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ...cache import DataError, fetch_wheel
from ..base import DomainError
from .data import cache_dir

DOCKSTRING_VERSION = "0.3.4"
DOCKSTRING_WHEEL = f"dockstring-{DOCKSTRING_VERSION}-py3-none-any.whl"
DOCKSTRING_SHA256 = "e0e61d4f6f5ff22b3cc2905ea01af5752fe0a14f93b4a148d81ffa1fac661cc5"
_ACTIVE: "weakref.WeakSet[DockingReward]" = weakref.WeakSet()


# -- receptors ----------------------------------------------------------------------------------
def _installed_targets_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("dockstring")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "targets"
    return path if path.is_dir() else None


@lru_cache(maxsize=2)
def targets_dir(download: bool = True) -> Path:
    """Folder with ``<T>_target.pdbqt`` / ``<T>_conf.txt``: the installed dockstring's, or the
    dockstring wheel's, unpacked into the cache. The wheel is fetched with ``pip download
    --no-deps --only-binary=:all:`` and checked against its SHA-256 (``svdd.cache.fetch_wheel``);
    the receptor files are unpacked into a temp folder and renamed into place, so the cache
    holds all of them or none."""
    found = _installed_targets_dir()
    if found is not None:
        return found
    root = cache_dir(f"dockstring-{DOCKSTRING_VERSION}")
    out = root / "targets"
    if out.is_dir() and not out.is_symlink() and any(out.glob("*_target.pdbqt")):
        return out
    try:
        wheel = fetch_wheel(f"dockstring=={DOCKSTRING_VERSION}", DOCKSTRING_WHEEL, DOCKSTRING_SHA256, root, download)
    except DataError as err:
        raise DomainError(f"docking receptors not found: {err}; or pip install 'svdd[molecules]' "
                          "(installs dockstring)") from None
    tmp_out = Path(tempfile.mkdtemp(dir=root, prefix=".targets-"))
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("dockstring/resources/targets/") and not name.endswith("/"):
                    (tmp_out / Path(name).name).write_bytes(z.read(name))
        if out.is_dir() and not out.is_symlink() and not any(out.glob("*_target.pdbqt")):
            shutil.rmtree(out)   # an empty leftover
        try:
            os.replace(tmp_out, out)
        except OSError:
            if not any(out.glob("*_target.pdbqt")):   # not another process that unpacked them first
                raise
    finally:
        if tmp_out.exists():
            shutil.rmtree(tmp_out, ignore_errors=True)
    return out


def list_targets(download: bool = False) -> list[str]:
    """Names of the available receptors (lower case), [] when none are available offline."""
    try:
        folder = targets_dir(download=download)
    except DomainError:
        return []
    return sorted(p.name[: -len("_target.pdbqt")].lower() for p in folder.glob("*_target.pdbqt"))


def read_box(target: str) -> tuple[Path, list[float], list[float]]:
    """(receptor pdbqt, box centre, box size) for a target name (case-insensitive)."""
    folder = targets_dir()
    name = target.upper()
    pdbqt, conf = folder / f"{name}_target.pdbqt", folder / f"{name}_conf.txt"
    if not pdbqt.exists() or not conf.exists():
        raise DomainError(f"unknown docking target {target!r}; choose one of {', '.join(list_targets())}")
    values = {}
    for line in conf.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            values[k.strip()] = float(v)
    center = [values[f"center_{a}"] for a in "xyz"]
    size = [values[f"size_{a}"] for a in "xyz"]
    return pdbqt, center, size


# -- one ligand (runs inside a worker process) ----------------------------------------------------
@lru_cache(maxsize=1)
def _obabel() -> str:
    here = Path(sys.executable).parent / "obabel"
    found = str(here) if here.exists() else shutil.which("obabel")
    if not found:
        raise DomainError("docking needs Open Babel's obabel: run pip install 'svdd[molecules]' (openbabel-wheel)")
    return found


def protonate(smiles: str, ph: float = 7.4) -> str:
    """Dominant protonation state at ``ph`` with the obabel command line (Open Babel's Python
    module cannot be imported after vina in one process, so it runs as its own process)."""
    proc = subprocess.run([_obabel(), f"-:{smiles}", "-ocan", "-p", str(ph)], capture_output=True, text=True,
                          timeout=60)
    out = proc.stdout.split()
    return out[0] if proc.returncode == 0 and out else smiles


def prepare_ligand(smiles: str, seed: int = 0) -> str:
    """SMILES -> PDBQT string: protonate at pH 7.4 (Open Babel), embed in 3D (RDKit), meeko."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    from meeko import MoleculePreparation, PDBQTWriterLegacy

    protonated = protonate(smiles)
    mol = Chem.MolFromSmiles(protonated) or Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError("RDKit cannot parse the molecule")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError("3D embedding failed")
    try:
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    except Exception:
        pass
    setups = MoleculePreparation().prepare(mol)
    pdbqt, ok, err = PDBQTWriterLegacy.write_string(setups[0])
    if not ok:
        raise ValueError(f"meeko: {err.strip()}")
    return pdbqt


def _pose_molblock(pose_pdbqt: str) -> str:
    from meeko import PDBQTMolecule, RDKitMolCreate
    from rdkit import Chem

    mols = RDKitMolCreate.from_pdbqt_mol(PDBQTMolecule(pose_pdbqt, skip_typing=True))
    return Chem.MolToMolBlock(mols[0]) if mols and mols[0] is not None else ""


def vina_seed(seed: int) -> int:
    """Vina's seed for our ``seed``: never 0, which Vina reads as "pick a random seed" (the same
    molecule then scored differently in every worker process, so a run's result depended on which
    process docked it). Vina reseeds every ``dock`` call, so a molecule's result is independent of
    what its worker docked before."""
    return seed + 1 if seed >= 0 else seed


def _worker_main(receptor: str, center, size, exhaustiveness: int, seed: int, tasks, results) -> None:
    """One Vina process: ``tasks`` and ``results`` are this worker's own pipe ends, so a worker killed
    at any moment can hold no lock another worker needs (a shared queue's write lock can be)."""
    import logging

    import meeko  # noqa: F401  (imported first: it routes RDKit's log to the "rdkit" logger)
    import vina
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")                      # UFF typing notes on exotic valences are noise here
    logging.getLogger("rdkit").setLevel(logging.CRITICAL)
    v = vina.Vina(sf_name="vina", cpu=1, seed=vina_seed(seed), verbosity=0)
    v.set_receptor(receptor)
    v.compute_vina_maps(center=center, box_size=size)
    results.send(("ready", None, None, None))
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):   # the parent is gone
            return
        if task is None:
            return
        idx, smiles = task
        try:
            v.set_ligand_from_string(prepare_ligand(smiles, seed))
            v.dock(exhaustiveness=exhaustiveness, n_poses=1)
            score = float(v.energies(n_poses=1)[0][0])
            try:
                pose = _pose_molblock(v.poses(n_poses=1))
            except Exception:
                pose = ""
            results.send((idx, score, pose, None))
        except Exception as err:  # one ligand failing must not stop the worker
            results.send((idx, None, None, f"{type(err).__name__}: {err}"[:300]))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    tasks: Connection              # parent's sending end
    results: Connection            # parent's receiving end
    busy: Optional[tuple] = None   # (index into the batch, start time) while docking
    ready: bool = False            # receptor maps computed
    dead: bool = False             # its results pipe reached end-of-file

    def gone(self) -> bool:
        return self.dead or not self.process.is_alive()


class DockingPool:
    """``num_workers`` Vina processes for one receptor; ``dock(smiles_list)`` returns
    ``[(score or None, pose molblock, error or None)]`` in order, each docking limited to ``timeout_s``.
    A worker that dies, idle or busy, is replaced; the molecule it held comes back as "worker died"."""

    def __init__(self, target: str, *, exhaustiveness: int = 1, num_workers: Optional[int] = None,
                 timeout_s: float = 120.0, seed: int = 0):
        receptor, center, size = read_box(target)
        self.args = (str(receptor), center, size, int(exhaustiveness), int(seed))
        self.num_workers = int(num_workers or max(1, min(os.cpu_count() or 1, 8)))
        self.timeout_s = float(timeout_s)
        # fork (Linux) needs no __main__ guard in user scripts; workers never touch torch
        self.ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.workers: list[_Worker] = []

    def _spawn(self) -> _Worker:
        task_r, task_w = self.ctx.Pipe(duplex=False)
        res_r, res_w = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker_main, args=(*self.args, task_r, res_w), daemon=True)
        proc.start()
        task_r.close()   # the child's ends: closed here, so the child's death reads as end-of-file
        res_w.close()
        return _Worker(proc, task_w, res_r)

    @staticmethod
    def _stop(w: _Worker) -> None:
        with contextlib.suppress(Exception):
            w.process.kill()
            w.process.join(5)
        for conn in (w.tasks, w.results):
            with contextlib.suppress(Exception):
                conn.close()

    def _replace(self, w: _Worker) -> None:
        self._stop(w)
        self.workers[self.workers.index(w)] = self._spawn()

    def dock(self, smiles: Sequence[str]) -> list[tuple[Optional[float], str, Optional[str]]]:
        while len(self.workers) < self.num_workers:
            self.workers.append(self._spawn())
        out: list = [None] * len(smiles)
        pending = list(range(len(smiles)))[::-1]
        done = startup_deaths = 0
        startup_deadline = time.time() + 120.0 + self.timeout_s
        while done < len(smiles):
            for w in list(self.workers):  # a worker that died while idle is replaced, not handed work
                if w.ready and w.busy is None and w.gone():
                    self._replace(w)
            for w in self.workers:  # hand out work to ready, idle workers
                if w.ready and w.busy is None and pending:
                    i = pending.pop()
                    try:
                        w.tasks.send((i, smiles[i]))
                    except OSError:          # died since the check above: it is replaced next round
                        pending.append(i)
                        w.dead = True
                        continue
                    w.busy = (i, time.time())
            by_conn = {id(w.results): w for w in self.workers}
            for conn in mp_connection.wait([w.results for w in self.workers], timeout=0.2):
                w = by_conn[id(conn)]
                try:
                    idx, score, pose, err = conn.recv()
                except (EOFError, OSError):
                    w.dead = True
                    continue
                if idx == "ready":
                    w.ready = True
                    continue
                if w.busy is not None and w.busy[0] == idx:
                    w.busy = None
                if out[idx] is None:
                    out[idx] = (score, pose or "", err)
                    done += 1
            now = time.time()
            for w in list(self.workers):
                if w.busy is not None and (now - w.busy[1] > self.timeout_s or w.gone()):
                    why = "worker died" if w.gone() else "timeout"
                    i = w.busy[0]
                    if out[i] is None:
                        out[i] = (None, "", f"{why} after {now - w.busy[1]:.0f}s")
                        done += 1
                    self._replace(w)
                elif not w.ready and w.gone():
                    startup_deaths += 1
                    self._replace(w)
            if not any(w.ready for w in self.workers) and (now > startup_deadline or startup_deaths > 2 * self.num_workers):
                raise DomainError("docking workers did not start; check that vina, meeko, gemmi and "
                                  "openbabel-wheel are installed (pip install 'svdd[molecules]')")
        return out

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.tasks.send(None)
        for w in self.workers:
            w.process.join(2)
            self._stop(w)
        self.workers = []


# -- persistent cache ---------------------------------------------------------------------------------
class DockingCache:
    """SQLite table (key, smiles) -> (score, pose, error); ``key`` names target and settings."""

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path else cache_dir("docking") / "vina.sqlite"
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS docking (key TEXT, smiles TEXT, score REAL, pose TEXT, "
                       "error TEXT, PRIMARY KEY (key, smiles))")

    @contextlib.contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def get(self, key: str, smiles: Sequence[str]) -> dict:
        found = {}
        with self._connect() as db:
            for i in range(0, len(smiles), 500):
                chunk = list(smiles[i:i + 500])
                q = f"SELECT smiles, score, pose, error FROM docking WHERE key=? AND smiles IN ({','.join('?' * len(chunk))})"
                for s, score, pose, err in db.execute(q, [key, *chunk]):
                    found[s] = (score, pose or "", err)
        return found

    def put(self, key: str, rows: dict) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO docking VALUES (?, ?, ?, ?, ?)",
                           [(key, s, sc, pose, err) for s, (sc, pose, err) in rows.items()])


# -- the reward ------------------------------------------------------------------------------------------
class DockingReward:
    """``reward_fn(x0 tokens) -> max(−Vina score, 0)`` per molecule (NaN when invalid/failed)."""

    differentiable = False
    invalid_value = 0.0

    def __init__(self, target: str, tokenizer=None, *, exhaustiveness: int = 1, num_workers: Optional[int] = None,
                 timeout_s: float = 120.0, seed: int = 0, cache: bool = True, cache_path: Optional[Path] = None):
        if not target:
            raise DomainError(f"name a docking target, e.g. docking:parp1 (targets: {', '.join(list_targets())})")
        if int(exhaustiveness) < 1:
            raise DomainError(f"exhaustiveness must be >= 1, got {exhaustiveness}")
        read_box(target)  # unknown target -> one-line error now, not in a worker
        self.target = target.lower()
        self.name = f"docking:{self.target}"
        self.tokenizer = tokenizer
        self.exhaustiveness = int(exhaustiveness)
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.seed = int(seed)
        # 'vseed': Vina's own seed (vina_seed); results under older keys used a random Vina seed
        self.key = f"vina1.2|{self.target}|ex{self.exhaustiveness}|seed{self.seed}|vseed{vina_seed(self.seed)}|n_poses1"
        self.cache = DockingCache(cache_path) if cache else None
        self.memory: dict[str, tuple] = {}  # canonical SMILES -> (score, pose, error)
        self.dockings = 0  # ligands actually docked (cache misses)
        self.failures = 0
        self.dock_time_s = 0.0
        self._pool: Optional[DockingPool] = None
        _ACTIVE.add(self)

    @property
    def pool(self) -> DockingPool:
        if self._pool is None:
            self._pool = DockingPool(self.target, exhaustiveness=self.exhaustiveness, num_workers=self.num_workers,
                                     timeout_s=self.timeout_s, seed=self.seed)
        return self._pool

    def dock_smiles(self, smiles: Sequence[str]) -> list[tuple[Optional[float], str, Optional[str]]]:
        """Raw Vina results ``(score kcal/mol or None, pose molblock, error)`` per SMILES."""
        from .chem import canonical_smiles

        canon = [canonical_smiles(s) for s in smiles]
        todo = sorted({c for c in canon if c and c not in self.memory})
        if todo and self.cache is not None:
            self.memory.update(self.cache.get(self.key, todo))
            todo = [c for c in todo if c not in self.memory]
        if todo:
            start = time.time()
            results = self.pool.dock(todo)
            self.dock_time_s += time.time() - start
            self.dockings += len(todo)
            fresh = dict(zip(todo, results))
            self.failures += sum(1 for r in results if r[0] is None)
            self.memory.update(fresh)
            if self.cache is not None:  # timeouts and killed workers are not cached (they may succeed next time)
                self.cache.put(self.key, {k: v for k, v in fresh.items()
                                          if not (v[2] or "").startswith(("timeout", "worker died"))})
        return [self.memory[c] if c else (None, "", "invalid molecule") for c in canon]

    def score_smiles(self, smiles: Sequence[str]) -> list[float]:
        """Reward max(−score, 0) per SMILES; NaN for invalid molecules and failed dockings."""
        out = []
        for score, _, _ in self.dock_smiles(smiles):
            out.append(float("nan") if score is None or not math.isfinite(score) else max(-float(score), 0.0))
        return out

    def load_cached(self, smiles: Sequence[str]) -> None:
        """Fill ``memory`` from the SQLite cache for ``smiles`` not docked in this process — the
        results of worker processes (``--reward-workers``, ``--backend process``) with the same
        target and settings, so their poses reach ``molecules.sdf``."""
        from .chem import canonical_smiles

        if self.cache is None:
            return
        missing = sorted({c for c in (canonical_smiles(s) for s in smiles) if c and c not in self.memory})
        if missing:
            self.memory.update(self.cache.get(self.key, missing))

    def pose(self, smiles: str) -> Optional[str]:
        """The best docked pose (MDL mol block) of ``smiles``, from this process or the cache."""
        from .chem import canonical_smiles

        canon = canonical_smiles(smiles) or ""
        if canon and canon not in self.memory:
            self.load_cached([canon])
        hit = self.memory.get(canon)
        return hit[1] if hit and hit[1] else None

    def __call__(self, x0: Tensor) -> Tensor:
        if self.tokenizer is None:
            raise DomainError("this docking reward has no tokenizer; use score_smiles(list_of_smiles)")
        return torch.tensor(self.score_smiles(self.tokenizer.decode(x0)), dtype=torch.float32, device=x0.device)

    def stats(self) -> dict:
        return {"dockings": self.dockings, "docking_failures": self.failures, "docking_time_s": self.dock_time_s}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"DockingReward({self.target!r}, exhaustiveness={self.exhaustiveness})"


def active_docking_rewards() -> list[DockingReward]:
    return list(_ACTIVE)


def docking_targets(reward_spec: Optional[str]) -> list[str]:
    """Docking targets named in a reward spec (``"docking:parp1+0.5*qed"`` -> ``["parp1"]``)."""
    if not reward_spec:
        return []
    found = re.findall(r"(?:^|[+*\s])docking:([A-Za-z0-9_.-]+)", str(reward_spec))
    return list(dict.fromkeys(t.lower() for t in found))


def pose_sources(reward_spec: Optional[str], smiles: Sequence[str] = ()) -> list[DockingReward]:
    """Docking rewards to take poses from for ``smiles``: those alive in this process, plus, for
    each target of ``reward_spec`` without one, a reader of the SQLite cache with the settings a
    worker would have used (the same environment variables), so a run whose docking happened in
    worker processes writes the same poses and Vina scores as an in-process run. Poses of workers
    on other machines (a Ray cluster) reach the SDF only if ``$SVDD_CACHE_DIR`` is shared."""
    sources = [d for d in active_docking_rewards() if d.cache is not None or d.memory]
    have = {d.target for d in sources}
    for target in docking_targets(reward_spec):
        if target in have:
            continue
        from . import _docking_factory

        try:
            sources.append(_docking_factory(target, tokenizer=None))
        except DomainError:
            continue   # an unknown target: the run itself said so already
    for d in sources:
        d.load_cached(smiles)
    return sources


@atexit.register
def _close_all() -> None:
    for r in list(_ACTIVE):
        r.close()
