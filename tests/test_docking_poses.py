"""Docked poses reach ``molecules.sdf`` whether the docking ran in this process or in reward
workers (``--reward-workers``): workers persist score and pose in the docking SQLite cache (keyed
by target, settings and canonical SMILES) and ``write_files`` reads them back, so the SDF is
byte-identical. The fast test docks with a stand-in Vina (RDKit 3D embedding, a made-up score)
through the real ``DockingReward``, cache and worker pool; the slow one docks with Vina."""

from __future__ import annotations

import gc
import hashlib

import pytest
import torch

pytest.importorskip("rdkit")

from svdd.distributed import DomainRewardFactory, RewardPool  # noqa: E402

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC"]


class FakeVina:
    """``DockingPool.dock`` stand-in: a seeded RDKit 3D pose and score −(heavy atoms)/2."""

    def dock(self, smiles):
        from rdkit import Chem
        from rdkit.Chem import AllChem

        out = []
        for s in smiles:
            mol = Chem.AddHs(Chem.MolFromSmiles(s))
            AllChem.EmbedMolecule(mol, randomSeed=7)
            out.append((-mol.GetNumHeavyAtoms() / 2.0, Chem.MolToMolBlock(mol), None))
        return out

    def close(self):
        pass


def fake_docking_reward():
    """A real ``DockingReward`` for parp1 whose Vina is ``FakeVina`` (picklable factory)."""
    from svdd.domains.molecules import load_tokenizer
    from svdd.domains.molecules.docking import DockingReward

    reward = DockingReward("parp1", load_tokenizer())
    reward._pool = FakeVina()
    return reward


def _skip_without_vina():
    """Skip unless vina is installed — without importing it here: Vina workers are forked from this
    process, and one forked after vina was imported in the parent hangs while starting."""
    import importlib.util

    if importlib.util.find_spec("vina") is None:
        pytest.skip("vina is not installed")


def _sdf(out_dir, x0, rewards):
    from svdd.domains.molecules import decode, write_files

    (path,) = write_files(out_dir, x0, decode(x0), rewards, {"reward": "docking:parp1"})
    return path.read_text()


def _tokens():
    from svdd.domains.molecules import load_tokenizer

    return load_tokenizer().encode(SMILES)


def _in_process_and_pooled(tmp_path, monkeypatch, factory):
    x0 = _tokens()
    monkeypatch.setenv("SVDD_CACHE_DIR", str(tmp_path / "cache-in-process"))
    reward = factory()
    scores = reward(x0)
    local = _sdf(tmp_path / "in-process", x0, scores)
    reward.close()
    del reward
    gc.collect()   # no docking reward left alive in this process: poses must come from the workers
    monkeypatch.setenv("SVDD_CACHE_DIR", str(tmp_path / "cache-workers"))   # an empty cache for them
    with RewardPool(factory, 1, backend="process") as pool:
        pooled_scores = pool(x0)
    pooled = _sdf(tmp_path / "workers", x0, pooled_scores)
    return scores, local, pooled_scores, pooled


def test_reward_workers_write_the_same_docked_poses_as_in_process(tmp_path, monkeypatch):
    from svdd.domains.molecules.docking import read_box

    try:
        read_box("parp1")
    except Exception as err:   # noqa: BLE001
        pytest.skip(f"dockstring receptors unavailable: {err}")
    scores, local, pooled_scores, pooled = _in_process_and_pooled(tmp_path, monkeypatch, fake_docking_reward)
    assert torch.equal(scores, pooled_scores)
    assert local.count("vina_score") == len(SMILES) and local.count("docking_target") == len(SMILES)
    assert "0.0000    0.0000    0.0000" not in local.split("$$$$")[0]   # 3D, not 2D coordinates
    assert hashlib.sha256(local.encode()).hexdigest() == hashlib.sha256(pooled.encode()).hexdigest()
    # and without a cache entry there is no pose to show (2D coordinates, no score): not made up
    monkeypatch.setenv("SVDD_CACHE_DIR", str(tmp_path / "cache-empty"))
    empty = _sdf(tmp_path / "none", _tokens(), scores)
    assert "vina_score" not in empty and empty.count("$$$$") == len(SMILES)


@pytest.mark.slow
def test_reward_workers_write_the_same_vina_poses_as_in_process(tmp_path, monkeypatch):
    _skip_without_vina()
    factory = DomainRewardFactory("molecules", "docking:parp1", num_workers=1)
    scores, local, pooled_scores, pooled = _in_process_and_pooled(tmp_path, monkeypatch, factory)
    assert torch.equal(scores, pooled_scores)
    assert local.count("vina_score") >= 3
    assert local == pooled


@pytest.mark.slow
def test_cli_reward_workers_output_equals_in_process(tmp_path):
    """`svdd sample --reward-workers 1` writes the same samples.csv and molecules.sdf as in-process."""
    from svdd.cli import main

    argv = ["sample", "--domain", "molecules", "--reward", "qed", "--num-samples", "4", "--num-steps", "4",
            "--num-candidates", "2", "--no-baseline", "--quiet", "--seed", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--reward-workers", "1", "--out", str(tmp_path / "b")]) == 0
    for name in ("samples.csv", "molecules.sdf"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.slow
def test_a_vina_worker_killed_while_idle_is_replaced_before_it_is_given_a_molecule():
    import os
    import signal
    import time

    _skip_without_vina()
    from svdd.domains.molecules.docking import DockingReward

    reward = DockingReward("parp1", cache=False, num_workers=1)
    try:
        first = reward.score_smiles(["CCO"])
        pid = reward.pool.workers[0].process.pid
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        reward.memory.clear()
        again = reward.score_smiles(["CCO", "c1ccccc1O"])
        assert again[0] == first[0] and again[1] == again[1]   # exact, and not NaN ("worker died")
        assert reward.pool.workers[0].process.pid != pid
    finally:
        reward.close()


@pytest.mark.slow
def test_a_vina_worker_killed_while_busy_loses_only_its_molecule_and_the_other_worker_goes_on():
    """Each worker has its own pipes, so killing one mid-docking cannot block the other (a shared
    result queue's write lock, held by the killed process, could): the batch finishes, the killed
    worker's molecule reads "worker died", every other score equals its in-order docking."""
    import os
    import signal
    import threading

    _skip_without_vina()
    from svdd.domains.molecules.docking import DockingPool

    batch = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "OCCO"]
    reference = DockingPool("parp1", num_workers=1)
    try:
        expected = [r[0] for r in reference.dock(batch)]
    finally:
        reference.close()
    pool = DockingPool("parp1", num_workers=2)
    killed: list = []

    def kill_first_busy():
        while not killed:
            for w in list(pool.workers):
                if w.busy is not None:
                    killed.append(w.busy[0])
                    os.kill(w.process.pid, signal.SIGKILL)
                    return
            threading.Event().wait(0.01)

    try:
        threading.Thread(target=kill_first_busy, daemon=True).start()
        got = pool.dock(batch)
    finally:
        pool.close()
    assert len(killed) == 1
    for i, (score, _, err) in enumerate(got):
        if i == killed[0]:
            assert score is None and err.startswith("worker died"), got[i]
        else:
            assert err is None and score == expected[i], (i, got[i], expected[i])
