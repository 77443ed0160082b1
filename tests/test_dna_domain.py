"""The regulatory-DNA pack: tokens, k-mers, diversity, motifs, oracles, rewards, domain wiring.

Fast CPU checks with tiny random-weight networks; the checks on the shipped weights skip
until they are installed, and the data download is behind ``slow``.
"""

import math

import numpy as np
import pytest
import torch

import svdd
from svdd.domains import DomainError, get_domain
from svdd.domains.dna import data as D
from svdd.domains.dna import kmers, metrics, models, random_process, read_fasta, write_fasta
from svdd.domains.dna.rewards import GCReward, OracleReward, oracle_available
from svdd.domains.dna.training import auroc, train_oracle

pytest.importorskip("pyjaspar")


# -- tokens ---------------------------------------------------------------------------------
def test_encode_decode_roundtrip_and_errors():
    seqs = ["ACGT" * 50, "TTGCA" * 40]
    x = D.encode(seqs)
    assert x.shape == (2, 200) and x.dtype == torch.long
    assert D.decode(x) == seqs
    assert D.decode(torch.tensor([[0, 1, 2, 3, 4]])) == ["ACGTN"]
    with pytest.raises(DomainError, match="A, C, G, T"):
        D.encode(["ACGN" * 50])
    with pytest.raises(DomainError, match="length 200"):
        D.encode(["ACGT"])


def test_reverse_complement_tokens_and_one_hot_agree(gen):
    x = torch.randint(0, 4, (5, 200), generator=gen)
    rc = D.reverse_complement(x)
    assert D.decode(rc[:1])[0] == D.decode(x[:1])[0][::-1].translate(str.maketrans("ACGT", "TGCA"))
    assert torch.equal(D.reverse_complement(rc), x)
    assert torch.equal(D.one_hot(rc), D.reverse_complement(D.one_hot(x)))
    masked = x.clone()
    masked[:, :3] = D.MASK_ID
    assert (D.reverse_complement(masked)[:, -3:] == D.MASK_ID).all()
    assert D.one_hot(masked)[:, :3].sum() == 0   # a mask is an all-zero row


def test_subset_is_the_chr1_test_split():
    s = D.load_subset()
    assert len(s["sequence"]) == 4565
    assert set(s["chr"]) == {"chr1"} and set(s["split"]) == {"test"}
    assert np.bincount(s["cell_type"]).tolist() == [1044, 1242, 1321, 958]
    assert set(D.ORACLE_HALVES["guidance"]).isdisjoint(D.ORACLE_HALVES["evaluation"])
    assert not {"chr1", "chr2"} & set(D.ORACLE_HALVES["guidance"] + D.ORACLE_HALVES["evaluation"])


# -- k-mers, diversity, AUROC --------------------------------------------------------------
def test_kmer_counts_exact_and_divergences():
    x = D.encode(["AC" * 100])
    c2 = kmers.kmer_counts(x, 2)
    assert c2[0 * 4 + 1] == 100 and c2[1 * 4 + 0] == 99 and c2.sum() == 199       # AC, CA
    c3 = kmers.kmer_counts(torch.tensor([[0, 1, 2, 4, 3, 3, 3]]), 3)               # mask breaks windows
    assert c3.sum() == 2 and c3[0 * 16 + 1 * 4 + 2] == 1 and c3[63] == 1
    p = np.random.default_rng(0).random(64)
    q = np.random.default_rng(1).random(64)
    assert kmers.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert kmers.js_divergence(p, q) == pytest.approx(kmers.js_divergence(q, p))
    assert kmers.js_divergence(np.eye(2)[0], np.eye(2)[1]) == pytest.approx(math.log(2))


def test_diversity_matches_definition(gen):
    same = torch.zeros(4, 200, dtype=torch.long)
    assert metrics.diversity(same) == pytest.approx(0.0, abs=1e-12)
    disjoint = torch.stack([torch.full((200,), k) for k in range(4)])
    assert metrics.diversity(disjoint) == pytest.approx(1.0)
    x = torch.randint(0, 4, (64, 200), generator=gen)
    oh = D.one_hot(x).flatten(1)
    cos = torch.nn.functional.cosine_similarity(oh[:, None], oh[None], dim=-1)
    expected = 1 - (cos.sum() - 64) / (64 * 63)
    assert metrics.diversity(x) == pytest.approx(float(expected), rel=1e-6)
    assert abs(metrics.diversity(x) - 0.75) < 0.01          # uniform sequences: 1 − 1/4


def test_auroc_matches_pairwise_definition(gen):
    s = torch.randint(0, 5, (300,), generator=gen).float()     # many ties
    y = torch.rand(300, generator=gen) < 0.3
    pos, neg = s[y], s[~y]
    expected = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert auroc(s, y) == pytest.approx(float(expected), abs=1e-12)
    assert auroc(torch.arange(10.0), torch.arange(10) >= 5) == 1.0


# -- motifs -------------------------------------------------------------------------------------
def test_motif_scan_matches_biopython_on_both_strands():
    from Bio.Seq import Seq

    from svdd.domains.dna.motifs import _jaspar, get_motif

    m = get_motif("HNF4A")
    assert m.matrix_id == "MA0114.5" and get_motif("ma0114.5").matrix_id == "MA0114.5"
    jm = _jaspar().fetch_motif_by_id("MA0114.5")
    pssm = jm.counts.normalize(pseudocounts=0.5).log_odds({b: 0.25 for b in "ACGT"})
    seqs = D.load_subset()["sequence"][:20]
    ours = m.scores(D.encode(seqs)).numpy()
    for i, s in enumerate(seqs):
        ref = np.maximum(pssm.calculate(Seq(s)), pssm.reverse_complement().calculate(Seq(s)))
        np.testing.assert_allclose(ours[i], ref, atol=1e-4)
    # a planted consensus is a hit, on either strand
    site = "".join("ACGT"[int(np.argmax([pssm[b][j] for b in "ACGT"]))] for j in range(pssm.length))
    bg = "T" * 200
    fwd = D.encode([bg[:50] + site + bg[50 + len(site):]])
    rev = D.reverse_complement(fwd)
    assert m.count(fwd).item() >= 1 and m.count(rev).item() >= 1
    with pytest.raises(DomainError, match="JASPAR"):
        get_motif("NOT_A_FACTOR_XYZ")


def test_real_hepg2_dhs_are_enriched_for_liver_factors():
    out = metrics.motif_metrics(metrics.real_subset()[0][:10])
    for tf in ("HNF4A", "HNF1A", "FOXA2", "CEBPA"):
        assert out[f"motif_{tf}_log2_enrichment_real_hepg2"] > 1.0    # > 2x over other cell types


# -- oracle networks and rewards ----------------------------------------------------------------
def test_oracle_is_strand_symmetric_and_log_odds_is_exact(gen):
    torch.manual_seed(0)
    oracle = models.ActivityOracle(dim=16, dilations=(1, 2)).eval()
    x = torch.randint(0, 4, (6, 200), generator=gen)
    with torch.no_grad():
        a, b = oracle(x), oracle(D.reverse_complement(x))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        p = torch.softmax(a, dim=1)[:, D.HEPG2]
        torch.testing.assert_close(oracle.log_odds(x, D.HEPG2), torch.log(p / (1 - p)), atol=1e-4, rtol=1e-4)


def test_oracle_reward_accepts_relaxed_one_hot_with_gradients(gen):
    torch.manual_seed(0)
    reward = OracleReward(models.ActivityOracle(dim=16, dilations=(1,)).eval())
    x = torch.randint(0, 4, (3, 200), generator=gen)
    probs = torch.nn.functional.one_hot(x, 5).float().requires_grad_(True)
    r = reward(probs)
    torch.testing.assert_close(r.detach(), reward(x))
    r.sum().backward()
    assert probs.grad is not None and probs.grad[..., :4].abs().sum() > 0
    from svdd.rewards.base import as_reward

    assert as_reward(reward).differentiable


def test_gc_reward_exact():
    x = D.encode(["GC" * 50 + "AT" * 50, "G" * 200])
    assert GCReward()(x).tolist() == [0.5, 1.0]
    assert GCReward(0.6)(x).tolist() == pytest.approx([-0.1, -0.4])
    with pytest.raises(DomainError):
        GCReward(1.5)


def test_train_oracle_learns_a_planted_motif():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (512, 200), generator=g)
    y = torch.randint(0, 3, (512,), generator=g)
    site = D.encode(["TGGACTTTGGAC" + "A" * 188])[0, :12]
    pos = torch.rand(512, generator=g) < 0.4
    y[pos] = D.HEPG2
    x[pos, 90:102] = site
    model, hist = train_oracle(x[:384], y[:384], x[384:], y[384:], epochs=12, batch_size=32, lr=3e-3, evals=12,
                               model_kwargs=dict(dim=16, dilations=(1,)), log=lambda s: None)
    assert len(hist) == 12 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    with torch.no_grad():
        logits = model(D.one_hot(x[384:]))
    lo = logits[:, D.HEPG2] - torch.logsumexp(logits[:, :3], dim=1)
    assert auroc(lo, y[384:] == D.HEPG2) > 0.9


# -- domain wiring ----------------------------------------------------------------------------
def test_domain_rewards_and_errors():
    dom = get_domain("dna")
    assert dom.default_reward == "hepg2" and dom.default_num_steps == 128
    assert {"hepg2", "hepg2-eval", "gc", "motif"} <= set(dom.rewards)
    assert dom.make_reward("motif:FOXA2").name == "motif:FOXA2"
    for bad, msg in (("nope", "unknown reward"), ("motif", "transcription factor"), ("gc:abc", "number")):
        with pytest.raises(DomainError, match=msg):
            dom.make_reward(bad)


def test_svdd_pm_on_gc_beats_pretrained_and_outputs_are_written(tmp_path):
    torch.manual_seed(0)
    dom = get_domain("dna")
    proc = random_process()
    reward = dom.make_reward("gc")
    kw = dict(num_samples=12, num_steps=12, generator=torch.Generator().manual_seed(0))
    base = svdd.sample(proc, reward, method="ancestral", **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    guided = svdd.sample(proc, reward, method="svdd-pm", num_candidates=4, **kw)
    assert guided.info["nfe"] == 12 * (1 + 11 * 4)
    assert guided.rewards.mean() > base.rewards.mean() + 0.03
    decoded = dom.decode(guided.x0)
    cols = dom.sample_columns(guided.x0, decoded, proc)
    assert cols["gc"] == pytest.approx(guided.rewards.tolist(), abs=1e-3)
    assert len(cols["motif_HNF4A"]) == 12
    m = dom.metrics(guided.x0, decoded, proc)
    for key in ("diversity", "log_likelihood_mean", "kmer3_js", "kmer6_js", "kmer6_js_real_baseline",
                "motif_HNF4A_log2_enrichment", "motif_HNF4A_log2_enrichment_real_hepg2"):
        assert math.isfinite(m[key]), key
    (path,) = dom.write_files(tmp_path, guided.x0, decoded, guided.rewards, {"reward": "gc"})
    assert read_fasta(path) == decoded
    assert path.read_text().startswith(">sample_00000 gc=")


def test_model_and_value_network_roundtrip(tmp_path, gen):
    from svdd.nn import load_model, save_model
    from svdd.values import fit_value, load_value

    torch.manual_seed(0)
    den = models.DilatedConvDenoiser(dim=16, dilations=(1, 2)).eval()
    save_model(den, tmp_path / "m")
    back = load_model(tmp_path / "m")
    x, t = torch.randint(0, 5, (2, 200), generator=gen), torch.rand(2, generator=gen)
    torch.testing.assert_close(back(x, t), den(x, t))
    proc = random_process()
    value, cost = fit_value(proc, GCReward(), num_rollouts=8, num_steps=4, network=models.ValueNetwork(dim=16, dilations=(1,)),
                            train_steps=3, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert cost["nfe"] == 8 * 4 and value(x, t).shape == (2,)
    value.save(tmp_path / "v")
    torch.testing.assert_close(load_value(tmp_path / "v")(x, t), value(x, t))
    assert isinstance(get_domain("dna").extra["value_network"](proc), models.ValueNetwork)


# -- shipped weights (skip until trained) and the real data (slow) ---------------------------------
needs_weights = pytest.mark.skipif(not (oracle_available("guidance") and oracle_available("evaluation")
                                        and (D.ASSETS / "dhs-mdlm" / "model.safetensors").exists()),
                                   reason="DNA weights not installed (scripts/gpu/dna.sh)")


@needs_weights
def test_shipped_oracles_separate_hepg2_on_held_out_chr1():
    dom = get_domain("dna")
    x, cell = metrics.real_subset()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:600]
    with torch.no_grad():
        g, e = dom.make_reward("hepg2")(x[idx]), dom.make_reward("hepg2-eval")(x[idx])
    y = cell[idx] == D.HEPG2
    assert auroc(g, y) > 0.8 and auroc(e, y) > 0.8
    assert torch.corrcoef(torch.stack([g, e]))[0, 1] > 0.5


@needs_weights
def test_shipped_model_prefers_real_dhs_to_shuffled():
    from svdd.domains.dna import load_pretrained

    proc = load_pretrained()
    x = metrics.real_subset()[0][:32]
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([row[torch.randperm(200, generator=g)] for row in x])   # same composition
    ll_real = metrics.log_likelihood(proc, x, num_t_samples=2).mean()
    ll_shuf = metrics.log_likelihood(proc, shuffled, num_t_samples=2).mean()
    assert ll_real > ll_shuf + 5.0          # nats per sequence
    assert ll_real > -200 * math.log(4)     # beats the uniform model


@pytest.mark.slow
def test_download_checksum_and_table(tmp_path, monkeypatch):
    table = D.load_table()
    assert len(table["sequence"]) == 47872
    assert np.bincount(table["cell_type"]).tolist() == [11968] * 4
    assert {s: int((table["split"] == s).sum()) for s in D.SPLITS} == {"training": 39254, "validation": 4053, "test": 4565}


def test_denoiser_accepts_float_one_hot_for_input_gradients(gen):
    torch.manual_seed(0)
    den = models.DilatedConvDenoiser(dim=16, dilations=(1, 2)).eval()
    x = torch.randint(0, 5, (2, 200), generator=gen)
    t = torch.rand(2, generator=gen)
    oh = torch.nn.functional.one_hot(x, 5).float().requires_grad_(True)
    out = den(oh, t)
    torch.testing.assert_close(out, den(x, t))
    out.sum().backward()
    assert oh.grad.abs().sum() > 0
