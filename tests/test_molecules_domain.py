"""Molecules domain: SELFIES tokenizer, RDKit rewards, MOSES metrics, SDF output, SVDD on a
tiny random-weight model (fast); real data, docking and FCD behind ``slow``."""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

import svdd  # noqa: E402
from svdd.domains import DomainError, get_domain  # noqa: E402
from svdd.domains.molecules import MODEL_DIR, load_tokenizer  # noqa: E402
from svdd.domains.molecules import chem, data  # noqa: E402
from svdd.domains.molecules import metrics as mm  # noqa: E402
from svdd.nn import MaskedTransformer  # noqa: E402
from svdd.process.masked import MaskedProcess  # noqa: E402
from svdd.rewards.base import as_reward  # noqa: E402

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


@pytest.fixture(scope="module")
def dom():
    return get_domain("molecules")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def sample():
    return data.load_sample()


@pytest.fixture(scope="module")
def tiny_process(tok):
    torch.manual_seed(0)
    model = MaskedTransformer(tok.vocab_size, tok.max_len, dim=32, depth=1, heads=2).eval()
    return MaskedProcess(model, tok.max_len, tok.vocab_size, tok.mask_id)


# -- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_layout(tok):
    assert tok.tokens[0] == "[PAD]" and tok.tokens[-1] == "[MASK]"
    assert tok.mask_id == tok.vocab_size - 1 and tok.pad_id == 0
    assert tok.max_len == 48 and 20 <= tok.vocab_size <= 40


def test_tokenizer_round_trip_on_moses(tok, sample):
    smiles = list(sample["train"][:300]) + list(sample["test"][:300])
    ids = tok.encode(smiles)
    assert ids.shape == (600, tok.max_len) and ids.dtype == torch.long
    assert not (ids == tok.mask_id).any()
    back = tok.decode(ids)
    same = sum(chem.canonical_smiles(a) == chem.canonical_smiles(b) for a, b in zip(smiles, back))
    assert same == len(smiles)
    # padding is only at the end and decoding ignores it
    lengths = (ids != tok.pad_id).sum(1)
    assert torch.all(ids[torch.arange(tok.max_len)[None] >= lengths[:, None]] == tok.pad_id)


def test_decode_strips_pad_anywhere(tok):
    ids = tok.encode(ASPIRIN).tolist()
    n = sum(1 for i in ids if i != tok.pad_id)
    shuffled = ids[:3] + [tok.pad_id, tok.pad_id] + ids[3:n] + [tok.pad_id] * (tok.max_len - n - 2)
    assert chem.canonical_smiles(tok.decode_one(shuffled)) == chem.canonical_smiles(ASPIRIN)
    assert tok.decode_one([tok.pad_id] * tok.max_len) == ""
    assert chem.mol_from_smiles(tok.decode_one([tok.pad_id] * tok.max_len)) is None


def test_tokenizer_errors(tok):
    with pytest.raises(DomainError, match="at most"):
        tok.encode("C" * 60)
    with pytest.raises(DomainError, match="vocabulary"):
        tok.encode("[Se]1C=CC=C1")
    with pytest.raises(DomainError, match="cannot encode"):
        tok.encode("C1CC(")


# -- rewards --------------------------------------------------------------------------------------
def test_property_rewards_match_rdkit(dom, tok):
    from rdkit import Chem
    from rdkit.Chem import QED, Crippen

    smiles = [ASPIRIN, "CCO", "c1ccccc1N"]
    x0 = tok.encode(smiles)
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    assert torch.allclose(dom.make_reward("qed")(x0), torch.tensor([QED.qed(m) for m in mols]), atol=1e-5)
    assert torch.allclose(dom.make_reward("logp")(x0), torch.tensor([Crippen.MolLogP(m) for m in mols]), atol=1e-4)
    sa = dom.make_reward("sa")(x0)
    assert abs(float(sa[0]) - (10 - 1.58) / 9) < 0.01  # aspirin SA 1.58 (Ertl & Schuffenhauer)
    combo = dom.make_reward("qed+0.5*logp")(x0)
    assert torch.allclose(combo, dom.make_reward("qed")(x0) + 0.5 * dom.make_reward("logp")(x0), atol=1e-5)


def test_sa_matches_reference_scores():
    from rdkit.Chem import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "data", "zim.100.txt")
    rows = [line.split("\t") for line in open(path).read().splitlines()[1:21]]
    for smi, _, ref in rows:
        assert abs(chem.sa_score(chem.mol_from_smiles(smi)) - float(ref)) < 0.05


def test_invalid_molecules_get_invalid_value(dom, tok):
    x0 = torch.full((2, tok.max_len), tok.pad_id)  # empty molecules
    x0[1] = tok.encode("CCO")
    raw = dom.make_reward("qed")
    assert math.isnan(float(raw(x0)[0]))
    for name, invalid in (("qed", 0.0), ("sa", 0.0), ("logp", -10.0)):
        r = as_reward(dom.make_reward(name))
        out = r(x0)
        assert float(out[0]) == invalid and float(out[1]) != invalid and r.invalid == 1


def test_unknown_reward_and_target(dom):
    with pytest.raises(DomainError, match="unknown reward"):
        dom.make_reward("qedd")
    with pytest.raises(DomainError, match="no argument"):
        dom.make_reward("qed:3")
    from svdd.domains.molecules.docking import list_targets

    if not list_targets():
        pytest.skip("dockstring receptors not installed")
    assert {"parp1", "jak2", "drd2"} <= set(list_targets())
    assert "parp1" in dom.rewards["docking"][1]
    with pytest.raises(DomainError, match="unknown docking target"):
        dom.make_reward("docking:nosuchprotein")
    with pytest.raises(DomainError, match="name a docking target"):
        dom.make_reward("docking")


# -- metrics --------------------------------------------------------------------------------------
def test_set_metrics_known_values(sample):
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    train = set(sample["train"])
    known = sample["train"][0]
    smiles = [known, known, "CCO", "", "C1CC"]  # dup, novel, empty, unparsable ring
    out = mm.molecule_metrics(smiles, novelty_reference=train)
    assert out["validity"] == pytest.approx(3 / 5)
    assert out["uniqueness"] == pytest.approx(2 / 3)
    assert out["novelty"] == pytest.approx(1 / 2)
    assert out["fcd_moses_test"] is None
    assert mm.internal_diversity([known, known]) == pytest.approx(0.0)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    a, b = (gen.GetFingerprint(chem.mol_from_smiles(s)) for s in (ASPIRIN, known))
    assert mm.internal_diversity([ASPIRIN, known]) == pytest.approx(1 - DataStructs.TanimotoSimilarity(a, b))


def test_moses_sample_is_diverse_and_novel_against_itself(sample):
    smiles = list(sample["test"][:200])
    assert mm.internal_diversity(smiles) > 0.8  # MOSES IntDiv ~0.86
    assert mm.novelty(smiles, reference=set(sample["train"])) > 0.95
    assert mm.novelty(smiles, reference=set(smiles)) == 0.0


# -- SVDD end to end on a tiny random model ----------------------------------------------------------------
def test_svdd_pm_beats_pretrained_on_qed(dom, tiny_process):
    reward = dom.make_reward("qed")
    kw = dict(num_samples=16, num_steps=8)
    base = svdd.sample(tiny_process, reward, method="ancestral", generator=torch.Generator().manual_seed(0), **kw)
    best = svdd.sample(tiny_process, reward, method="svdd-pm", num_candidates=8,
                       generator=torch.Generator().manual_seed(0), **kw)
    assert best.x0.shape == (16, tiny_process.seq_len)
    assert float(best.rewards.mean()) > float(base.rewards.mean()) + 0.05
    decoded = dom.decode(best.x0)
    assert torch.allclose(torch.tensor(reward.score_smiles(decoded)), best.rewards, atol=1e-4)


def test_columns_metrics_and_sdf(dom, tiny_process, tmp_path):
    from rdkit import Chem

    res = svdd.sample(tiny_process, dom.make_reward("qed"), method="ancestral", num_samples=12, num_steps=6,
                      generator=torch.Generator().manual_seed(1))
    x0 = torch.cat([res.x0, torch.full((1, tiny_process.seq_len), 0)])  # + one empty (invalid) molecule
    decoded = dom.decode(x0)
    cols = dom.sample_columns(x0, decoded, tiny_process)
    assert cols["valid"][-1] is False and sum(cols["valid"]) == 12 and cols["qed"][-1] is None
    met = dom.metrics(x0, decoded, tiny_process)
    assert met["validity"] == pytest.approx(12 / 13) and met["nelbo_num_samples"] == 13
    assert met["nelbo_nats_per_molecule"] > 0
    rewards = torch.cat([res.rewards, torch.zeros(1)])
    (path,) = dom.write_files(tmp_path, x0, decoded, rewards, res.info)
    mols = [m for m in Chem.SDMolSupplier(str(path))]
    assert len(mols) == 12
    assert [round(m.GetDoubleProp("reward"), 4) for m in mols] == [round(float(r), 4) for r in res.rewards]


def test_shipped_model_loads(dom):
    if not (MODEL_DIR / "model.safetensors").exists():
        with pytest.raises(DomainError, match="no molecule model weights"):
            dom.load_process()
        pytest.skip("weights not shipped yet")
    proc = dom.load_process()
    assert isinstance(proc, MaskedProcess) and proc.seq_len == 48
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 20e6
    x = proc.prior(4)
    probs = proc.predict_x0(x, torch.tensor(1.0))
    assert torch.allclose(probs.sum(-1), torch.ones(4, 48)) and float(probs[..., proc.mask_id].max()) == 0.0


# -- slow: real data, FCD, docking ------------------------------------------------------------------------
@pytest.mark.slow
def test_moses_download_and_counts():
    train = data.load_moses("train")
    assert len(train) == 1_584_663
    assert len(data.load_moses("test")) == 176_074
    assert set(data.load_sample()["train"]) <= set(train)


@pytest.mark.slow
def test_fcd_of_test_sample_is_small(sample):
    smiles = list(sample["test"])
    fcd_test = mm.fcd_to_moses_test(smiles)
    fcd_shuffled = mm.fcd_to_moses_test(["C" * (1 + i % 12) for i in range(500)])
    assert fcd_test < 2.0 < fcd_shuffled


@pytest.mark.slow
def test_docking_aspirin_into_parp1(tmp_path, tok):
    pytest.importorskip("vina")
    from svdd.domains.molecules.docking import DockingReward

    r = DockingReward("parp1", tok, exhaustiveness=1, num_workers=1, timeout_s=120, cache_path=tmp_path / "c.sqlite")
    try:
        out = r.score_smiles([ASPIRIN, "", ASPIRIN])
        assert 3.0 < out[0] < 9.0 and math.isnan(out[1]) and out[2] == out[0]
        assert r.dockings == 1 and r.pose(ASPIRIN).count("\n") > 10
        again = DockingReward("parp1", tok, exhaustiveness=1, num_workers=1, cache_path=tmp_path / "c.sqlite")
        assert again.score_smiles([ASPIRIN]) == [out[0]] and again.dockings == 0  # persistent cache
        slow = DockingReward("parp1", tok, num_workers=1, timeout_s=0.01, cache=False)
        assert math.isnan(slow.score_smiles(["CCN(CC)CCNC(=O)c1ccc(N)cc1"])[0])
        slow.close()
    finally:
        r.close()


def _encoded_with_labels(tok, smiles, prop):
    """Token ids of the molecules the tokenizer can encode, and their RDKit QED or SA."""
    rows, ys = [], []
    for smi in smiles:
        try:
            rows.append(tok.encode([smi]))
        except Exception:
            continue
        mol = chem.mol_from_smiles(smi)
        ys.append(chem.qed(mol) if prop == "qed" else chem.sa_normalised(mol))
    return torch.cat(rows), ys


@pytest.mark.parametrize("reward,floor", [("qed", 0.2), ("sa", 0.35)])
def test_shipped_values_track_the_reward_on_moses_molecules(dom, tok, sample, reward, floor):
    """The shipped SVDD-MC values (MoleculeValueNet, fitted on 2,048 rollouts of the shipped model)
    at t = 0 on 500 MOSES test molecules — off the rollout distribution — correlate with the
    RDKit reward (measured 0.36 QED, 0.54 SA; with n = 500 the s.e. of r is ≈ 0.04, so the floors
    sit ≥ 4 s.e. below). The all-mask state gets one value for every row."""
    from svdd.domains.molecules import ASSETS
    from svdd.values.learned import load_value

    value = load_value(dom.extra["values"][reward])
    assert type(value.network).__name__ == "MoleculeValueNet" and value.meta["model"] == "moses-selfies"
    x, ys = _encoded_with_labels(tok, sample["test"][:500], reward)
    pred = value(x, torch.tensor(0.0)).detach()
    assert len(ys) > 450 and torch.corrcoef(torch.stack([pred, torch.tensor(ys)]))[0, 1] > floor
    out = value(torch.full((3, 48), tok.mask_id), torch.tensor(1.0))
    assert torch.isfinite(out).all() and torch.allclose(out, out[0].expand(3))
    assert ASSETS in dom.extra["values"][reward].parents


def test_molecule_value_net_reads_the_partial_molecule(dom, tok, tmp_path):
    """Descriptors are RDKit's (aspirin: MW 180.16, 1 donor, 1 aromatic ring); a masked sequence
    decodes to its unmasked part, an all-mask one to nothing (all-zero features); the network
    is the domain's SVDD-MC network and round-trips through save/load_value."""
    from svdd.domains.molecules.value import NUM_DESCRIPTORS, MoleculeValueNet, descriptors
    from svdd.values.learned import LearnedValue, load_value

    d = descriptors(ASPIRIN)
    assert len(d) == NUM_DESCRIPTORS and d[0] == pytest.approx(180.16, abs=0.01)
    assert (d[3], d[6], d[8], d[-1]) == (1.0, 1.0, 13.0, 1.0)     # HBD, aromatic rings, heavy atoms, valid
    assert descriptors("") == [0.0] * NUM_DESCRIPTORS
    x = tok.encode([ASPIRIN, ASPIRIN])
    x[1, 6:] = tok.mask_id
    x_all = torch.full_like(x[:1], tok.mask_id)
    net = dom.extra["value_network"](dom.load_process())
    assert isinstance(net, MoleculeValueNet)
    feats = net._features(torch.cat([x, x_all]))
    assert feats[0].tolist() == pytest.approx(d, rel=1e-5)
    assert 0 < feats[1, 8] < 13 and feats[2].abs().sum() == 0
    value = LearnedValue(net, 1.0, 0.5, 0.2)
    out = value(torch.cat([x, x_all]), torch.tensor([0.0, 0.5, 1.0]))
    value.save(tmp_path / "v")
    again = load_value(tmp_path / "v")
    assert torch.allclose(again(torch.cat([x, x_all]), torch.tensor([0.0, 0.5, 1.0])), out)


# measured 0.815 (QED) and 0.881 (SA) on these 500 molecules; s.e. of r ≈ (1 − r²)/√500 ≤ 0.016
SURROGATE_FLOOR = {"qed": 0.7, "sa": 0.75}


@pytest.mark.parametrize("prop", ["qed", "sa"])
def test_surrogates_are_differentiable_stand_ins_for_the_rdkit_rewards(dom, tok, sample, prop):
    """surrogate:<prop> reads token ids or probabilities (a one-hot row gives the same value), has
    a finite gradient w.r.t. the probabilities (what DPS follows), and tracks RDKit's reward on
    500 MOSES test molecules (held out of its training; floors ≥ 4 s.e. of r below the measured
    correlations, which its config.json records)."""
    r = dom.make_reward(f"surrogate:{prop}")
    assert r.differentiable and r.name == f"surrogate:{prop}"
    x, ys = _encoded_with_labels(tok, sample["test"][:500], prop)
    p = torch.nn.functional.one_hot(x, tok.vocab_size).float().requires_grad_(True)
    out = r(p)
    assert torch.allclose(out, r(x), atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), p)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    corr = float(torch.corrcoef(torch.stack([out.detach(), torch.tensor(ys)]))[0, 1])
    assert corr > SURROGATE_FLOOR[prop]
    with pytest.raises(DomainError, match="surrogate:qed"):
        dom.make_reward("surrogate:logp")
