"""SELFIES with byte-pair-merged fragment tokens (issue 18): the BPE learner is exact (incremental
counts equal a from-scratch recount every merge), the encoder matches Hugging Face ``tokenizers``'
BPE given the same merges, MOSES molecules round-trip with their aromatic rings, whole rings
become single tokens, and any id sequence still decodes to a valid molecule."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

import selfies as sf  # noqa: E402
from rdkit import Chem  # noqa: E402
from rdkit.Chem import rdMolDescriptors  # noqa: E402

from svdd.domains import DomainError  # noqa: E402
from svdd.domains.molecules import data  # noqa: E402
from svdd.domains.molecules.tokenizer import (  # noqa: E402
    SelfiesBpeTokenizer, learn_bpe_merges, load_tokenizer_file)

BENZENE = "[C][=C][C][=C][C][=C][Ring1][=Branch1]"


def _naive_merges(seqs, n):
    """Reference BPE: recount every pair from scratch before each merge, same tie rule."""
    words, merges = [list(w) for w in seqs], []
    for _ in range(n):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts or max(counts.values()) < 2:
            break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        merges.append(pair)
        new = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new.append(out)
        words = new
    return merges


@pytest.fixture(scope="module")
def molecules():
    s = data.load_sample()
    return list(s["train"]) + list(s["test"])


@pytest.fixture(scope="module")
def tok(molecules):
    return SelfiesBpeTokenizer.build([sf.encoder(s) for s in molecules[:1500]], 32, vocab_size=160)


def test_bpe_learner_on_a_hand_counted_corpus():
    # (a,b) occurs 3 times, everything else once: one merge, then no pair repeats
    assert learn_bpe_merges([["a", "b", "a", "b"], ["a", "b", "c"]], 10) == [("a", "b")]
    # ties go to the pair that sorts first: (x,y) and (y,z) both twice -> (x,y) first
    assert learn_bpe_merges([["x", "y", "z"], ["x", "y", "z"]], 1) == [("x", "y")]
    # overlapping runs merge left to right, as the encoder does: a a a -> aa a
    assert learn_bpe_merges([["a", "a", "a"], ["a", "a", "a"]], 5) == [("a", "a"), ("aa", "a")]


def test_incremental_bpe_equals_recounting_from_scratch():
    rng = random.Random(0)
    for trial in range(5):
        seqs = [[rng.choice("abcd") for _ in range(rng.randint(1, 12))] for _ in range(60)]
        assert learn_bpe_merges(seqs, 25) == _naive_merges(seqs, 25), trial


def test_round_trip_keeps_every_molecule_and_its_aromatic_rings(tok, molecules):
    held_out = molecules[2000:2600]          # the committed test part: not used to learn the merges
    ids = tok.encode(held_out)
    assert ids.shape == (len(held_out), 32) and not (ids == tok.mask_id).any()
    for s, b in zip(held_out, tok.decode(ids)):
        m0, m1 = Chem.MolFromSmiles(s), Chem.MolFromSmiles(b)
        assert Chem.MolToSmiles(m1) == Chem.MolToSmiles(m0)
        assert rdMolDescriptors.CalcNumAromaticRings(m1) == rdMolDescriptors.CalcNumAromaticRings(m0)
    # sequences are much shorter than plain SELFIES (~35 symbols for a MOSES molecule)
    plain = [len(list(sf.split_selfies(sf.encoder(s)))) for s in held_out]
    merged = [len(tok.split(sf.encoder(s))) for s in held_out]
    assert sum(merged) < 0.5 * sum(plain)


def test_a_benzene_ring_is_one_token(tok):
    assert BENZENE in tok.index
    assert tok.split(sf.encoder("c1ccccc1")) == [BENZENE]
    mol = Chem.MolFromSmiles(tok.decode_one([tok.index[BENZENE]]))
    assert rdMolDescriptors.CalcNumAromaticRings(mol) == 1


def test_any_id_sequence_decodes_to_a_valid_molecule(tok):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, tok.vocab_size, (200, tok.max_len), generator=g)
    out = tok.decode(x)
    assert all(s and Chem.MolFromSmiles(s) is not None for s in out)


def test_save_load_dispatch_and_errors(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer_file(tmp_path / "tokenizer.json")
    assert isinstance(again, SelfiesBpeTokenizer)
    assert again.tokens == tok.tokens and again.merges == tok.merges and again.max_len == tok.max_len
    with pytest.raises(DomainError, match="vocabulary"):
        tok.encode("C[Se]C")
    paracetamol = "CC(=O)Nc1ccc(O)cc1"
    n = len(tok.split(sf.encoder(paracetamol)))
    short = SelfiesBpeTokenizer(tok.tokens, n - 1, tok.merges)
    with pytest.raises(DomainError, match=f"at most {n - 1}"):
        short.encode(paracetamol)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        SelfiesBpeTokenizer(["[PAD]", "[C]", "[MASK]"], 8, [["[C]", "[C]"]])


def test_encoder_matches_hugging_face_bpe_with_the_same_merges(tok, molecules):
    tokenizers = pytest.importorskip("tokenizers")
    base = [t for t in tok.tokens[1:-1] if t.count("[") == 1]
    char = {t: chr(0xE000 + i) for i, t in enumerate(base)}

    def to_chars(token):
        return "".join(char[s] for s in sf.split_selfies(token))

    vocab = {to_chars(t): i for i, t in enumerate(tok.tokens[1:-1])}
    merges = [(to_chars(a), to_chars(b)) for a, b in tok.merges]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    for s in molecules[2000:2400]:
        selfies = sf.encoder(s)
        want = hf.encode(to_chars(selfies)).tokens
        assert [to_chars(t) for t in tok.split(selfies)] == want


# -- the shipped fragment-token model ----------------------------------------------------------------
@pytest.fixture
def bpe_process():
    from svdd.domains import get_domain
    from svdd.domains import molecules as mol_domain

    if not (mol_domain.ASSETS / mol_domain.BPE_MODEL_NAME / "model.safetensors").exists():
        pytest.skip("moses-selfies-bpe weights not shipped in this checkout")
    yield get_domain("molecules").load_process(mol_domain.BPE_MODEL_NAME)
    mol_domain._ACTIVE.clear()      # loading a model sets the active tokenizer; restore the default


def test_fragment_model_loads_by_name_and_samples_valid_molecules(bpe_process):
    import svdd
    from svdd.domains import get_domain
    from svdd.domains import molecules as mol_domain

    dom = get_domain("molecules")
    assert mol_domain.BPE_MODEL_NAME in dom.models and dom.default_model == "moses-selfies"
    assert isinstance(bpe_process.tokenizer, SelfiesBpeTokenizer) and bpe_process.seq_len == 24
    folder = mol_domain.ASSETS / mol_domain.BPE_MODEL_NAME
    assert all(p.stat().st_size <= 20e6 for p in folder.iterdir())
    res = svdd.sample(bpe_process, lambda x: torch.zeros(x.shape[0]), method="ancestral", num_samples=16,
                      num_steps=16, generator=torch.Generator().manual_seed(0))
    smiles = dom.decode(res.x0)              # decodes with the model loaded last
    assert all(s and Chem.MolFromSmiles(s) is not None for s in smiles)   # SELFIES: valid by construction
    # (aromatic share, FCD and the rest are model quality, measured in docs/molecules.md)


def test_values_and_surrogates_of_another_model_are_refused_in_one_line(bpe_process):
    from svdd.domains import get_domain
    from svdd.domains import molecules as mol_domain
    from svdd.values.learned import ValueLoadError, check_value_fits, load_value

    shipped = mol_domain.ASSETS / "value-qed"          # fitted on moses-selfies (28 ids, length 48)
    value = load_value(shipped)
    with pytest.raises(ValueLoadError, match="vocab_size 28 .*this model has vocab_size 256"):
        check_value_fits(value, bpe_process, shipped)
    dom = get_domain("molecules")
    dom.load_process(mol_domain.SMILES_MODEL_NAME)     # ships no surrogates
    with pytest.raises(DomainError, match="'moses-smiles' has no surrogate:qed; train one with python scripts/"):
        dom.make_reward("surrogate:qed")
    mol_domain._ACTIVE.clear()
    check_value_fits(value, dom.load_process(), shipped)    # its own model: fine
    assert dom.make_reward("surrogate:qed").net.config["vocab_size"] == 28


def test_a_surrogate_that_does_not_read_the_models_tokens_is_refused(tmp_path):
    """A model folder whose surrogate-qed was trained on other tokens (here: the default model's,
    copied into a BPE model folder) is refused in one line, not fed the wrong ids."""
    import shutil

    from svdd.domains import get_domain
    from svdd.domains import molecules as mol_domain

    folder = tmp_path / "my-bpe"
    shutil.copytree(mol_domain.ASSETS / mol_domain.BPE_MODEL_NAME, folder)
    shutil.copytree(mol_domain.ASSETS / "surrogate-qed", folder / "surrogate-qed", dirs_exist_ok=True)
    mol_domain.load_model(path=str(folder))
    try:
        with pytest.raises(DomainError, match="reads 28 token ids of length 48; the loaded model has 256 ids of length 24"):
            get_domain("molecules").make_reward("surrogate:qed")
    finally:
        mol_domain._ACTIVE.clear()


# measured 0.707 (QED) and 0.751 (SA) on these 500 molecules; s.e. of r ≈ (1 − r²)/√500 ≈ 0.02,
# so the floors sit ≥ 4 s.e. below
BPE_SURROGATE_FLOOR = {"qed": 0.6, "sa": 0.65}


@pytest.mark.parametrize("prop", ["qed", "sa"])
def test_the_bpe_model_has_its_own_differentiable_surrogates(bpe_process, prop):
    """With moses-selfies-bpe loaded, surrogate:<prop> is the one trained on its tokens (256 ids,
    24 positions; assets/moses-selfies-bpe/surrogate-<prop>): a one-hot row gives the id row's value,
    the gradient w.r.t. the probabilities is finite, and it tracks RDKit on 500 MOSES test molecules."""
    from svdd.domains import get_domain
    from svdd.domains.molecules import chem
    from svdd.domains.molecules import data as mol_data

    tok = bpe_process.tokenizer
    r = get_domain("molecules").make_reward(f"surrogate:{prop}")
    assert (r.net.config["vocab_size"], r.net.config["seq_len"]) == (256, 24)
    assert r.meta["model"] == "moses-selfies-bpe"
    smiles = mol_data.load_sample()["test"][:500]
    x = torch.cat([tok.encode([s]) for s in smiles])
    mols = [chem.mol_from_smiles(s) for s in smiles]
    ys = torch.tensor([chem.qed(m) if prop == "qed" else chem.sa_normalised(m) for m in mols])
    p = torch.nn.functional.one_hot(x, tok.vocab_size).float().requires_grad_(True)
    out = r(p)
    assert torch.allclose(out, r(x), atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), p)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert float(torch.corrcoef(torch.stack([out.detach(), ys]))[0, 1]) > BPE_SURROGATE_FLOOR[prop]


def test_svdd_mc_on_the_bpe_model_uses_its_own_shipped_value(bpe_process, tmp_path):
    """`svdd sample --method svdd-mc --model moses-selfies-bpe` finds the value fitted on that model's
    rollouts (benchmarks/molecules-bpe.yaml), not the default model's, and it decodes with the BPE
    tokenizer: RDKit QED of the decoded molecules is what samples.csv reports."""
    import csv
    import json

    from svdd.cli import main
    from svdd.domains import get_domain
    from svdd.domains import molecules as mol_domain
    from svdd.domains.molecules import chem

    dom = get_domain("molecules")
    for reward in ("qed", "sa"):
        path = dom.shipped_value(mol_domain.BPE_MODEL_NAME, reward)
        assert path == mol_domain.ASSETS / mol_domain.BPE_MODEL_NAME / f"value-{reward}"
        assert json.loads((path / "value.json").read_text())["model"] == mol_domain.BPE_MODEL_NAME
    assert dom.shipped_value(mol_domain.SMILES_MODEL_NAME, "qed") is None
    out = tmp_path / "mc"
    assert main(["sample", "--domain", "molecules", "--model", mol_domain.BPE_MODEL_NAME, "--reward", "qed",
                 "--method", "svdd-mc", "--num-samples", "4", "--num-steps", "8", "--num-candidates", "2",
                 "--no-baseline", "--quiet", "--seed", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["value"].endswith("moses-selfies-bpe/value-qed"), summary["value"]
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert len(rows) == 4
    for row in rows:
        assert float(row["reward"]) == pytest.approx(chem.qed(chem.mol_from_smiles(row["smiles"])), abs=1e-6)
    mol_domain._ACTIVE.clear()
