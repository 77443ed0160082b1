"""The property and distance helpers of ``scripts/molecule_representation.py properties`` (real RDKit)."""

from pathlib import Path

import numpy as np
import pytest

from script_loader import load_script

pytest.importorskip("rdkit")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "molecule_representation.py"


@pytest.fixture(scope="module")
def molrep():
    return load_script(str(SCRIPT))


def test_properties_of_known_molecules(molrep):
    values, counts = molrep.molecule_properties(["c1ccccc1", "CCO", "C(C)(C)(C)(C)C", "", "not a smiles", "c1ccccc1Cc1ccncc1"])
    # pentavalent carbon (no valency correction), empty and garbage are skipped and counted
    assert counts == {"n": 6, "n_valid": 3, "n_invalid": 3, "n_property_failed": 0, "validity": 0.5}
    assert set(values) == set(molrep.PROPERTY_NAMES)
    assert all(len(v) == 3 for v in values.values())
    benzene, ethanol, benzylpyridine = (dict(zip(values, col)) for col in zip(*values.values()))
    assert benzene["mw"] == pytest.approx(78.11, abs=0.01)
    assert (benzene["rings"], benzene["aromatic_rings"]) == (1, 1)
    assert ethanol["mw"] == pytest.approx(46.07, abs=0.01)
    assert (ethanol["rings"], ethanol["aromatic_rings"]) == (0, 0)
    assert (benzylpyridine["rings"], benzylpyridine["aromatic_rings"]) == (2, 2)
    assert benzene["logp"] == pytest.approx(1.6866, abs=1e-3)     # Crippen
    assert 0 < ethanol["qed"] < 1
    assert all(1 <= m["sa"] <= 10 for m in (benzene, ethanol, benzylpyridine))


def test_no_valid_molecule(molrep):
    values, counts = molrep.molecule_properties(["", "C1CC"])
    assert counts["n_valid"] == 0 and counts["n_invalid"] == 2
    assert all(v.size == 0 for v in values.values())
    summary = molrep.property_summary(values["mw"], np.array([1.0, 2.0]))
    assert summary["n"] == 0 and np.isnan(summary["mean"]) and np.isnan(summary["wasserstein_to_moses_test"])


def test_wasserstein(molrep):
    assert molrep.wasserstein_1d([0, 1], [1, 2]) == pytest.approx(1.0)
    assert molrep.wasserstein_1d_numpy([0, 1], [1, 2]) == pytest.approx(1.0)
    assert molrep.wasserstein_1d_numpy([0, 0, 0], [3]) == pytest.approx(3.0)
    assert molrep.wasserstein_1d_numpy([5, 1, 2], [2, 5, 1]) == pytest.approx(0.0)
    assert np.isnan(molrep.wasserstein_1d([], [1.0]))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(1.5, 2.0, size=170)
    pytest.importorskip("scipy")
    assert molrep.wasserstein_1d_numpy(a, b) == pytest.approx(molrep.wasserstein_1d(a, b), rel=1e-9)


def test_ring_shares(molrep):
    assert molrep.ring_shares([0, 1, 1, 7, 6]) == [0.2, 0.4, 0.0, 0.0, 0.0, 0.0, 0.4]
    assert len(molrep.ring_shares([])) == molrep.RING_BINS
