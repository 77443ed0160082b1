"""RNA domain wiring: rewards, metrics, FASTA, data helpers, and sampling with a tiny model."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch

import svdd
from svdd.domains import get_domain
from svdd.domains.base import DomainError
from svdd.domains.rna import data as rdata
from svdd.domains.rna import metrics as M
from svdd.domains.rna.models import available_models, load_utr_process
from svdd.domains.rna.oracle import ENV_VAR
from svdd.domains.rna.tokens import MASK_ID, SEQ_LEN, VOCAB_SIZE, encode
from svdd.nn import MaskedTransformer, save_model
from svdd.process.masked import MaskedProcess

ROOT = Path(__file__).resolve().parents[1]
UTR_DIR = Path(os.environ.get(ENV_VAR) or ROOT.parent / "shared" / "data" / "utr")
needs_oracle = pytest.mark.skipif(not (UTR_DIR / "evolution_model.hdf5").exists(),
                                  reason=f"Optimus 5-Prime weights not found in {UTR_DIR} (set {ENV_VAR})")
DOMAIN = get_domain("rna")




def tiny_process(seed: int = 0) -> MaskedProcess:
    torch.manual_seed(seed)
    model = MaskedTransformer(VOCAB_SIZE, SEQ_LEN, dim=32, depth=1, heads=2).eval()
    return MaskedProcess(model, SEQ_LEN, VOCAB_SIZE, MASK_ID)


class UniformModel(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros(*x.shape, VOCAB_SIZE)


def test_domain_lists_models_and_rewards():
    assert set(DOMAIN.models) == {"utr-random", "utr-genomic"}
    assert set(DOMAIN.rewards) >= {"mrl", "mrl-eval", "stability"}
    assert DOMAIN.default_reward == "mrl" and DOMAIN.extra["evaluation_reward"] == "mrl-eval"
    with pytest.raises(DomainError, match="unknown reward"):
        DOMAIN.make_reward("ribosome")
    with pytest.raises(DomainError, match="unknown model"):
        DOMAIN.load_process("utr-human")


def test_uaug_gc_and_diversity():
    x = encode(["ATG" + "C" * 44 + "ATG", "A" * 50, "ATGATG" + "G" * 44])
    assert M.uaug_count(x).tolist() == [2, 0, 2]
    assert torch.allclose(M.gc_content(x), torch.tensor([46 / 50, 0.0, 46 / 50]))
    assert M.pairwise_diversity(x[[1, 1, 1]]) == 0.0
    # brute force on random sequences: 1 − mean pairwise identity, ≈ 3/4 for uniform letters
    r = torch.randint(0, 4, (40, 50), generator=torch.Generator().manual_seed(0))
    brute = 1 - sum(float((r[i] == r[j]).float().mean()) for i, j in itertools.combinations(range(40), 2)) / 780
    assert M.pairwise_diversity(r) == pytest.approx(brute, abs=1e-9)
    assert abs(M.pairwise_diversity(r) - 0.75) < 0.02
    assert math.isnan(M.pairwise_diversity(r[:1]))


def test_stability_reward_prefers_hairpins():
    pytest.importorskip("RNA")
    hairpin = "GGGGGGGGGGCCCCAAAAGGGGCCCCCCCCCCAAAAAAAAAAAAAAAAAA"
    reward = DOMAIN.make_reward("stability")
    r = reward(encode([hairpin, "A" * 50]))
    assert r[0] > 10 and r[1] == 0.0
    assert torch.allclose(M.mfe(encode([hairpin])), -r[:1])
    assert reward.calls == 2 and bool(reward(encode([hairpin]))[0] == r[0]) and reward.cache_hits == 1
    with pytest.raises(DomainError, match="no argument"):
        DOMAIN.make_reward("stability:5")


@needs_oracle
def test_weighted_combination_and_oracle_dir_option(monkeypatch):
    pytest.importorskip("RNA")
    monkeypatch.delenv(ENV_VAR, raising=False)
    x = torch.randint(0, 4, (8, 50), generator=torch.Generator().manual_seed(1))
    mrl = DOMAIN.make_reward("mrl", oracle_dir=str(UTR_DIR))
    stab = DOMAIN.make_reward("stability")
    combo = DOMAIN.make_reward("mrl+-0.05*stability", oracle_dir=str(UTR_DIR))
    assert torch.allclose(combo(x), mrl(x) - 0.05 * stab(x), atol=1e-5)
    via_arg = DOMAIN.make_reward(f"mrl-eval:{UTR_DIR}")
    monkeypatch.setenv(ENV_VAR, str(UTR_DIR))
    assert torch.allclose(via_arg(x), DOMAIN.make_reward("mrl-eval")(x))
    assert getattr(mrl, "differentiable", False)


def test_elbo_of_uniform_model_is_uniform_log_likelihood():
    proc = MaskedProcess(UniformModel(), SEQ_LEN, VOCAB_SIZE, MASK_ID)
    x = torch.randint(0, 4, (256, 50), generator=torch.Generator().manual_seed(0))
    e = M.elbo(proc, x, num_t_samples=16)
    assert e.shape == (256,)
    # the size-biased estimator has no 1/t weight: a uniform denoiser gives L·ln 4 for every draw
    assert torch.allclose(e, torch.full_like(e, M.UNIFORM_LOG_LIKELIHOOD), atol=1e-3)
    legacy = -proc.nelbo(x, num_t_samples=16, generator=torch.Generator().manual_seed(0))
    assert abs(float(legacy.mean()) - M.UNIFORM_LOG_LIKELIHOOD) < 1.0  # same integral, plain estimator
    assert torch.equal(e, M.elbo(proc, x, num_t_samples=16))  # fixed seed: deterministic


def test_fasta_u_or_t_and_sample_columns(tmp_path):
    x = encode(["ACGT" * 12 + "AT", "T" * 50])
    decoded = DOMAIN.decode(x)
    assert decoded[0].startswith("ACGU") and "T" not in "".join(decoded)
    files = DOMAIN.write_files(tmp_path, x, decoded, torch.tensor([1.0, 2.0]), {})
    text = files[0].read_text().splitlines()
    assert text[0].startswith(">sample_00000 reward=1.0000") and text[1] == decoded[0] and "T" not in text[3]
    dna = DOMAIN.write_files(tmp_path, x, decoded, torch.tensor([1.0, 2.0]), {"fasta_alphabet": "T"})[0]
    assert dna.read_text().splitlines()[3] == "T" * 50
    with pytest.raises(DomainError, match="alphabet"):
        DOMAIN.write_files(tmp_path, x, decoded, None, {}, alphabet="X")
    cols = DOMAIN.sample_columns(x, decoded, None, oracle_dir=str(tmp_path / "no-oracle"))
    assert cols["uaug_count"] == [0, 0] and cols["gc_content"][1] == 0.0 and "mrl_eval" not in cols
    if (UTR_DIR / "retrained_evolution_model.hdf5").exists():
        cols = DOMAIN.sample_columns(x, decoded, None, oracle_dir=str(UTR_DIR))
        expected = DOMAIN.make_reward("mrl-eval", oracle_dir=str(UTR_DIR))(x)
        assert torch.allclose(torch.tensor(cols["mrl_eval"]), expected, atol=1e-4)


def test_set_metrics_with_a_tiny_model():
    proc = tiny_process()
    x = torch.randint(0, 4, (12, 50), generator=torch.Generator().manual_seed(3))
    m = DOMAIN.metrics(x, DOMAIN.decode(x), proc)
    assert m["num_sequences"] == 12 and m["uniqueness"] == 1.0
    assert 0.6 < m["diversity"] < 0.9 and m["elbo_mean"] < 0
    assert 0 <= m["uaug_free_fraction"] <= 1


def test_load_process_from_model_dir(monkeypatch, tmp_path):
    proc = tiny_process()
    save_model(proc.model, tmp_path / "utr-random", extra={"schedule": "loglinear"}, half=True)
    monkeypatch.setenv("SVDD_RNA_MODEL_DIR", str(tmp_path))
    loaded = DOMAIN.load_process("utr-random")
    x = torch.randint(0, 5, (4, 50), generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.5)
    assert loaded.kind == "masked" and loaded.model_name == "utr-random"
    assert torch.allclose(loaded.predict_x0(x, t), proc.predict_x0(x, t), atol=2e-2)
    save_model(MaskedTransformer(VOCAB_SIZE, 40, dim=16, depth=1, heads=2), tmp_path / "utr-genomic")
    with pytest.raises(DomainError, match="not a 50-nt UTR model"):
        load_utr_process("utr-genomic")


@needs_oracle
def test_svdd_pm_beats_ancestral_on_mrl_with_a_tiny_model():
    proc = tiny_process(1)
    reward = DOMAIN.make_reward("mrl", oracle_dir=str(UTR_DIR))
    kw = dict(num_samples=16, num_steps=8)
    base = svdd.sample(proc, reward, method="ancestral", generator=torch.Generator().manual_seed(0), **kw)
    pm = svdd.sample(proc, reward, method="svdd-pm", num_candidates=4, generator=torch.Generator().manual_seed(0), **kw)
    assert pm.x0.shape == (16, 50) and int(pm.x0.max()) < 4  # clean sequences, no mask left
    assert float(pm.rewards.median()) > float(base.rewards.median()) + 0.3
    assert torch.allclose(pm.rewards, reward(pm.x0))


def test_pack_unpack_and_windows():
    tok = torch.randint(0, 4, (5, 200), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert torch.equal(rdata.unpack(rdata.pack(tok)), tok)
    w = rdata.windows(tok, stride=50)
    assert w.shape == (5 * 4 * 2, 50) and w.dtype == torch.long
    assert torch.equal(w[0], tok[0, :50].long())
    # first reverse-complement window = complement of the last 50 bases, reversed
    assert torch.equal(w[20], (3 - tok[0, 150:].long()).flip(0))


@pytest.mark.slow
def test_dhs_wheel_download_and_parse():
    tokens, split = rdata.dhs_sequences()
    assert tokens.shape == (47872, 200) and int(tokens.max()) <= 3
    assert torch.bincount(split.long()).tolist() == [39254, 4053, 4565]


@pytest.mark.skipif(not available_models(), reason="trained UTR weights not installed (scripts/gpu/rna.sh)")
@pytest.mark.parametrize("name", ["utr-random", "utr-genomic"])
def test_shipped_models_sample_clean_sequences(name):
    if name not in available_models():
        pytest.skip(f"{name} weights not installed")
    proc = DOMAIN.load_process(name)
    res = svdd.sample(proc, lambda x: M.gc_content(x), method="ancestral", num_samples=32, num_steps=20,
                      generator=torch.Generator().manual_seed(0))
    assert int(res.x0.max()) < 4 and res.x0.shape == (32, 50)
    assert M.pairwise_diversity(res.x0) > 0.5


def test_value_network_fits_saves_and_loads(tmp_path):
    from svdd.values import fit_value, load_value

    proc = tiny_process(2)
    net = DOMAIN.extra["value_network"](proc)
    reward = lambda x: M.gc_content(x)  # noqa: E731  (cheap, position-free target)
    value, cost = fit_value(proc, reward, num_rollouts=16, num_steps=5, network=net, train_steps=60, batch_size=32,
                            lr=3e-3, generator=torch.Generator().manual_seed(0))
    assert cost["nfe"] == 16 * 5 and cost["reward_calls"] == 16
    value.save(tmp_path / "v")
    loaded = load_value(tmp_path / "v")
    assert type(loaded.network).__name__ == "UTRValueNet"
    x = torch.randint(0, 5, (8, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded(x, torch.full((8,), 0.3)), value(x, torch.full((8,), 0.3)), atol=1e-5)
    # near t = 0 the fitted value must track the reward it was regressed on
    clean = torch.randint(0, 4, (64, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = loaded(clean, torch.zeros(64))
    assert torch.corrcoef(torch.stack([v, reward(clean)]))[0, 1] > 0.3
    res = svdd.sample(proc, reward, method="svdd-mc", value_fn=loaded, num_samples=4, num_steps=5, num_candidates=2,
                      generator=torch.Generator().manual_seed(0))
    assert res.x0.shape == (4, 50) and int(res.x0.max()) < 4


def test_shipped_dhs_windows():
    w = rdata.dhs_test_windows()
    assert w.shape == (512, 50) and int(w.max()) <= 3
    cg = ((w[:, :-1] == 1) & (w[:, 1:] == 2)).float().mean()
    assert cg < 0.04  # CpG depletion of genomic DNA (1/16 = 0.0625 if letters were independent)


@pytest.mark.skipif(not {"utr-random", "utr-genomic"} <= set(available_models()),
                    reason="trained UTR weights not installed (scripts/gpu/rna.sh)")
def test_shipped_models_likelihoods():
    dhs = rdata.dhs_test_windows()[:256]
    rnd = torch.randint(0, 4, (256, 50), generator=torch.Generator().manual_seed(0))
    uniform, genomic = load_utr_process("utr-random"), load_utr_process("utr-genomic")
    # the uniform-data model sits at the uniform log-likelihood on anything
    assert abs(float(M.elbo(uniform, rnd, num_t_samples=4).mean()) - M.UNIFORM_LOG_LIKELIHOOD) < 0.5
    # the DHS model prefers held-out DHS windows to random sequences (measured: −68.6 vs −69.7)
    assert float(M.elbo(genomic, dhs, num_t_samples=4).mean()) > float(M.elbo(genomic, rnd, num_t_samples=4).mean()) + 0.5
