"""MOSES metrics (moses_metrics.py): hand-checkable cases, the formulas against direct computations,
the cached reference statistics (checked on read, never unpickled) and the wiring into molecule_metrics.

The reference set here is the committed sample (assets/moses_sample.csv.gz), passed as a parameter:
no network, no full MOSES test set."""

import math

import numpy as np
import pytest

pytest.importorskip("rdkit")

from rdkit import DataStructs  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402

from svdd.cache import DataError  # noqa: E402
from svdd.domains.molecules import data, metrics as mm, moses_metrics as M  # noqa: E402
from svdd.domains.molecules.chem import mol_from_smiles  # noqa: E402

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"
RHODANINE = "S=C1SC(=Cc2ccccc2)C(=O)N1"   # 5-benzylidene rhodanine: PAINS ene_rhod_A
CATECHOL = "Oc1ccccc1O"                   # PAINS catechol_A


@pytest.fixture(scope="module")
def sample():
    return data.load_sample()


@pytest.fixture(scope="module")
def reference(sample):
    return M.reference_from_smiles(sample["test"][:600], name="sample-test-600")


@pytest.fixture(scope="module")
def patterns():
    try:
        return M.filter_patterns(download=False)
    except (DataError, M.DomainError) as err:
        pytest.skip(f"the molsets wheel is not cached ({err})")


def _rdkit_fps(smiles):
    return [AllChem.GetMorganFingerprintAsBitVect(mol_from_smiles(s), 2, nBits=1024) for s in smiles]


# -- IntDiv -----------------------------------------------------------------------------------------
def test_intdiv_of_one_molecule_repeated_is_zero():
    fps = M.fingerprints([mol_from_smiles(ASPIRIN)] * 5)
    assert M.intdiv(fps, p=1) == pytest.approx(0.0, abs=1e-12)
    assert M.intdiv(fps, p=2) == pytest.approx(0.0, abs=1e-12)
    assert M.intdiv(fps[:1], p=1) == pytest.approx(0.0, abs=1e-12)   # one molecule: the diagonal alone
    out = M.moses_metrics([ASPIRIN] * 4, reference=[ASPIRIN], filters=False)
    assert out["moses_intdiv"] == pytest.approx(0.0, abs=1e-12) and out["moses_snn"] == pytest.approx(1.0)


def test_intdiv_matches_a_direct_computation(sample):
    smiles = list(sample["train"][:60]) + [sample["train"][0]] * 3   # duplicates count, as in MOSES
    rd = _rdkit_fps(smiles)
    sim = np.array([DataStructs.BulkTanimotoSimilarity(a, rd) for a in rd])   # |G| x |G|, diagonal included
    assert np.allclose(np.diag(sim), 1.0)
    fps = M.fingerprints([mol_from_smiles(s) for s in smiles])
    assert np.array_equal(fps, np.array([list(f) for f in rd], dtype=np.uint8))  # same bits as MOSES's call
    direct1 = 1 - sim.mean()
    direct2 = 1 - np.mean(np.sqrt((sim ** 2).mean(1)))    # molsets: root per molecule, then the mean
    paper2 = 1 - np.sqrt((sim ** 2).mean())                # the paper's formula
    assert M.intdiv(fps, p=1, chunk=7) == pytest.approx(direct1, abs=1e-12)
    assert M.intdiv(fps, p=2, chunk=7) == pytest.approx(direct2, abs=1e-12)
    assert M.intdiv_paper(fps, p=2, chunk=7) == pytest.approx(paper2, abs=1e-12)
    assert M.intdiv_paper(fps, p=1) == pytest.approx(direct1, abs=1e-12)
    assert M.intdiv(fps, p=2) > M.intdiv_paper(fps, p=2)   # Jensen: the two forms differ for p = 2
    # svdd's internal_diversity leaves the diagonal out (and uses 2048 bits): a different number
    n = len(smiles)
    off = (sim.sum() - n) / (n * (n - 1))
    assert direct1 == pytest.approx(1 - ((n - 1) / n * off + 1 / n), abs=1e-12)
    assert mm.internal_diversity(smiles) > M.intdiv(fps)


# -- SNN, Frag, Scaf --------------------------------------------------------------------------------
def test_identical_sets_give_snn_frag_scaf_one(sample):
    smiles = list(sample["test"][:100])
    out = M.moses_metrics(smiles, reference=smiles, filters=False)
    assert out["moses_snn"] == pytest.approx(1.0)
    assert out["moses_frag"] == pytest.approx(1.0)
    assert out["moses_scaf"] == pytest.approx(1.0)
    other = M.moses_metrics(list(sample["train"][:100]), reference=smiles, filters=False)
    assert other["moses_snn"] < 0.6 and other["moses_scaf"] < 0.9   # a different set is not similar everywhere


def test_snn_matches_rdkit_bulk_tanimoto(sample, reference):
    gen = list(sample["train"][:40])
    ref_smiles = list(sample["test"][:600])
    gen_rd, ref_rd = _rdkit_fps(gen), _rdkit_fps(ref_smiles)
    direct = np.array([max(DataStructs.BulkTanimotoSimilarity(g, ref_rd)) for g in gen_rd])
    fps = M.fingerprints([mol_from_smiles(s) for s in gen])
    got = M.nearest_neighbour_similarity(fps, reference.fingerprints, reference.bit_counts, chunk=97)
    assert np.allclose(got, direct, atol=1e-12)
    out = M.moses_metrics(gen, reference=reference, filters=False)
    assert out["moses_snn"] == pytest.approx(direct.mean(), abs=1e-12)
    assert out["moses_reference"] == "sample-test-600"


def test_cosine_fragments_and_scaffolds_by_hand():
    assert M.cosine_similarity({"a": 1, "b": 1}, {"a": 1}) == pytest.approx(1 / math.sqrt(2))
    assert M.cosine_similarity({"a": 2, "b": 4}, {"a": 1, "b": 2}) == pytest.approx(1.0)
    assert M.cosine_similarity({"a": 1}, {"b": 1}) == 0.0
    assert math.isnan(M.cosine_similarity({}, {"a": 1}))
    ester = mol_from_smiles("CCOC(=O)c1ccccc1")   # three BRICS bonds: ethyl | O | C(=O) | phenyl
    assert M.fragments([ester, ester]) == {"[4*]CC": 2, "[3*]O[3*]": 2, "[1*]C([6*])=O": 2, "[16*]c1ccccc1": 2}
    assert M.fragments([mol_from_smiles("CCO")]) == {"CCO": 1}   # no BRICS bond: the molecule itself
    # a scaffold needs 2 rings: benzene and ethanol have none that count, biphenyl does
    assert M.scaffold(mol_from_smiles("Cc1ccccc1")) is None and M.scaffold(mol_from_smiles("CCO")) is None
    assert M.scaffold(mol_from_smiles("Cc1ccc(-c2ccccc2)cc1")) == "c1ccc(-c2ccccc2)cc1"
    out = M.moses_metrics(["CCO", "Cc1ccccc1"], reference=["c1ccc(-c2ccccc2)cc1"], filters=False)
    assert out["moses_scaf"] is None   # no scaffold with 2 rings on one side: undefined (MOSES: NaN)
    assert M.moses_metrics([], reference=["CCO"], filters=False)["moses_intdiv"] is None


# -- Filters ----------------------------------------------------------------------------------------
def test_filter_csv_parsing_and_counts(patterns):
    text = 'names,smarts\nMCF1,[#6]=&!@[#6]-[#6]#[#7]\nMCF4,"[H]C([H])([#6])[F,Cl,Br,I]"\n'
    assert M.parse_filter_csv(text, header=True) == [("MCF1", "[#6]=&!@[#6]-[#6]#[#7]"),
                                                     ("MCF4", "[H]C([H])([#6])[F,Cl,Br,I]")]
    pains = '"c:1:c:c:c:c:c:1-[#7]=[#7]"      ,"<regId=azo(1)>"\n'
    assert M.parse_filter_csv(pains, header=False) == [("azo(1)", "c:1:c:c:c:c:c:1-[#7]=[#7]")]
    names = [n for n, _ in patterns]
    assert sum(n.startswith("MCF") for n in names) == 22 and len(names) == 22 + 480


@pytest.mark.parametrize("smiles,why", [(RHODANINE, "ene_rhod_A(235)"), (CATECHOL, "catechol_A(92)"),
                                        ("C1CCCCCCC1", "ring_size"), ("C[N+](C)(C)C", "charge"),
                                        ("CCP(C)C", "atoms"), ("CCCl", "MCF4")])
def test_known_bad_molecules_fail_filters(patterns, smiles, why):
    mol = mol_from_smiles(smiles)
    assert not M.passes_filters(mol, patterns)
    assert why in M.failed_filters(mol, patterns)


def test_drugs_pass_and_filters_is_a_fraction(patterns, sample):
    for s in (ASPIRIN, IBUPROFEN, "CCOC(=O)c1ccc(N(C)C)cc1"):
        assert M.passes_filters(mol_from_smiles(s), patterns) and M.failed_filters(mol_from_smiles(s), patterns) == []
    out = M.moses_metrics([ASPIRIN, RHODANINE, IBUPROFEN, CATECHOL], reference=[ASPIRIN])
    assert out["moses_filters"] == pytest.approx(0.5)
    # MOSES built its data set with these filters: every molecule of it passes
    assert all(M.passes_filters(m, patterns) for m in M._mols(sample["train"][:60]))


# -- the cached reference ---------------------------------------------------------------------------
def test_reference_cache_round_trip_and_damage(tmp_path, reference):
    path = tmp_path / "ref.npz"
    M.save_reference(path, reference, key="k1")
    back = M.load_reference(path, "k1")
    assert back.name == reference.name and back.size == reference.size
    assert np.array_equal(back.fingerprints, reference.fingerprints) and np.array_equal(back.bit_counts,
                                                                                        reference.bit_counts)
    assert back.fragments == reference.fragments and back.scaffolds == reference.scaffolds
    with pytest.raises(DataError, match="key or checksum"):
        M.load_reference(path, "k2")
    with np.load(path, allow_pickle=False) as z:   # one flipped bit, same key: the checksum catches it
        arrays = {k: z[k] for k in z.files}
    arrays["fingerprints"][0, 0] ^= 1
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(DataError, match="key or checksum"):
        M.load_reference(tmp_path / "tampered.npz", "k1")
    arrays["fragment_keys"] = np.array([object()] * len(arrays["fragment_keys"]), dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)   # an object array needs pickle: refused, never loaded
    with pytest.raises(DataError, match="cannot be read"):
        M.load_reference(tmp_path / "pickled.npz", "k1")
    (tmp_path / "torn.npz").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot be read"):
        M.load_reference(tmp_path / "torn.npz", "k1")


def test_test_set_reference_is_computed_once_and_recomputed_when_damaged(tmp_path, monkeypatch, sample, capsys):
    monkeypatch.setenv("SVDD_CACHE_DIR", str(tmp_path))
    small = tuple(sample["test"][:50])
    calls = []
    monkeypatch.setattr(data, "load_moses", lambda split, download=True: calls.append(split) or small)
    build = M.moses_test_reference.__wrapped__   # past the in-process memo
    first = build()
    path = M.reference_cache_path()
    assert path.parent == tmp_path / "moses-metrics" and path.is_file() and calls == ["test"]
    assert first.size == 50 and first.name == "moses-test (50)"
    again = build()
    assert calls == ["test"] and np.array_equal(again.fingerprints, first.fingerprints)   # read, not recomputed
    path.write_bytes(path.read_bytes()[:-40])
    capsys.readouterr()
    third = build()
    assert calls == ["test", "test"] and "damaged" in capsys.readouterr().err
    assert third.fragments == first.fragments
    elsewhere = tmp_path / "elsewhere.npz"   # a planted symlink is neither read nor written through
    path.unlink()
    path.symlink_to(elsewhere)
    fourth = build()
    assert calls == ["test"] * 3 and not elsewhere.exists() and path.is_symlink()
    assert np.array_equal(fourth.fingerprints, first.fingerprints) and "could not cache" in capsys.readouterr().err


def test_default_reference_falls_back_to_the_committed_sample(monkeypatch):
    def unavailable(download=True):
        raise DataError("molsets is not cached")

    monkeypatch.setattr(M, "moses_test_reference", unavailable)
    monkeypatch.setattr(data, "load_sample", lambda: {"train": (ASPIRIN,), "test": (ASPIRIN, IBUPROFEN, CATECHOL)})
    M._sample_reference.cache_clear()
    try:
        ref = M.default_reference()
    finally:
        M._sample_reference.cache_clear()
    assert ref.size == 3 and ref.name == "moses-test sample (3; full set unavailable)"
    assert M.moses_metrics([IBUPROFEN], filters=False)["moses_snn"] == pytest.approx(1.0)


# -- molecule_metrics -------------------------------------------------------------------------------
def test_molecule_metrics_reports_both_diversities_and_the_moses_set(sample, reference, patterns):
    smiles = list(sample["train"][:48]) + ["", "C1CC"]
    out = mm.molecule_metrics(smiles, novelty_reference=set(sample["train"]), moses_reference=reference)
    for key in ("moses_intdiv", "moses_intdiv2", "moses_snn", "moses_frag", "moses_scaf", "moses_filters"):
        assert isinstance(out[key], float) and 0.0 <= out[key] <= 1.0, key
    assert out["moses_reference"] == "sample-test-600" and out["moses_filters"] == 1.0
    assert out["internal_diversity"] > out["moses_intdiv"] > out["moses_intdiv2"]   # both shown, both named
    valid = [mm.canonical_smiles(s) for s in smiles[:48]]
    fps = M.fingerprints([mol_from_smiles(s) for s in valid])
    assert out["moses_intdiv"] == pytest.approx(M.intdiv(fps))


def test_command_line_prints_the_metrics_of_a_samples_csv(tmp_path, monkeypatch, capsys, reference):
    import json

    monkeypatch.setattr(M, "default_reference", lambda: reference)
    path = tmp_path / "samples.csv"
    path.write_text("index,smiles,reward\n0,CCOC(=O)c1ccccc1,0.5\n1,not-a-smiles,0.1\n2,Cc1ccc(-c2ccccc2)cc1,0.2\n")
    M.main([str(path), "--no-filters"])
    out = json.loads(capsys.readouterr().out)
    assert out["num_molecules"] == 3 and out["num_valid"] == 2 and out["moses_reference"] == "sample-test-600"
    assert out["moses_intdiv"] < out["internal_diversity"] and "moses_filters" not in out
    with pytest.raises(SystemExit) as err:
        M.main([str(tmp_path / "missing.txt")])
    assert err.value.code == 2
