"""Tree and search methods (dts, dts-star, dsearch, dsearch-r, treeg, noise-trajectory-search,
iterative-refinement, search-over-paths) on the exact toys.

DTS exactness is checked on the *exact law of a tree's descents* (``DTSState.descent_probabilities``:
the probability that a Boltzmann descent ends at each leaf, summed per clean state), which has no
sampling noise, and on sampled descents. Sampling noise of a TV estimate from n draws over S
states: E[TV(p̂, p)] ≤ ½ Σ_i sqrt(p_i(1 − p_i)/n) (Jensen on E|p̂_i − p_i|); for the masked toy's
target (27 states) and n = 20000 that is 0.010, so a sampled TV below 0.10 is not noise luck.

The masked toy is ``MaskedToy()`` (3 tokens over 3 letters, K = 8 steps, α = 0.5; the exact
target is the K-step model's own tilted law, TV 0.46 from the pretrained law). The argmax tests use
the positional-reward toy of ``algorithm_toys`` (argmax mass 0.0117 under the model).

Bias by construction, stated where it is tested: DTS's descent law is a self-normalised importance
sampler over leaves drawn by an adaptive proposal, exact only as the tree fills and the cap grows;
the equal-weight backup (``backup="mean"``) drifts low on the Gaussian mixture as rollouts are added
at a fixed cap (``test_dts_mean_backup_is_biased_low_on_the_gaussian_mixture``).
"""

import math

import pytest
import torch
from algorithm_toys import masked_toy_with_positional_reward

import svdd
from svdd.algorithms import AlgorithmError
from svdd.algorithms.dts import DTSState, boltzmann_choice, group_rank
from svdd.testing import GaussianMixtureToy, MaskedToy, total_variation

K = 8
ALPHA = 0.5
NEW = ["dts", "dts-star", "dsearch", "dsearch-r", "treeg", "noise-trajectory-search", "iterative-refinement",
       "search-over-paths"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _laws(toy, tree: DTSState) -> torch.Tensor:
    """(T, 27): the exact law of each tree's Boltzmann descents over the clean states."""
    p, leaves = tree.descent_probabilities(), tree.leaves()
    out = torch.zeros(tree.metadata["num_trees"], toy.num_clean, dtype=torch.float64)
    out.index_put_((tree.tree[leaves], toy.clean_index(tree.state[leaves])), p[leaves], accumulate=True)
    return out


def _dts_masked(R, B, T=4, seed=0, **kw):
    toy = MaskedToy()
    res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=T, num_trees=T, num_steps=K,
                      num_rollouts=R, max_children=B, alpha=ALPHA, generator=_gen(seed), **kw)
    target = toy.tilted(ALPHA, K)
    return toy, res, [total_variation(law, target) for law in _laws(toy, res.info["tree"])]


# ------------------------------------------------------------------------------------------------
# helpers and bookkeeping
# ------------------------------------------------------------------------------------------------
def test_group_rank_and_boltzmann_choice():
    ids = torch.tensor([3, 1, 3, 3, 1, 0])
    assert group_rank(ids).tolist() == [0, 0, 1, 2, 1, 0]
    v = torch.tensor([[0.0, 1.0, -math.inf], [-math.inf, -math.inf, 2.0], [5.0, 0.0, 0.0]])
    eligible = torch.tensor([[True, True, True], [True, True, False], [False, True, True]])
    assert boltzmann_choice(v, eligible, 0.0, None).tolist() == [1, 0, 1]   # invalid only when all are
    draws = torch.stack([boltzmann_choice(v[:1], eligible[:1], 1.0, _gen(s)) for s in range(2000)]).flatten()
    frac = float((draws == 1).double().mean())                           # e/(1 + e) = 0.731
    assert abs(frac - math.e / (1 + math.e)) < 4 * math.sqrt(0.731 * 0.269 / 2000)
    assert not bool((draws == 2).any())                                   # −inf (invalid) never drawn


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_dts_tree_bookkeeping_backup_and_true_cost(kind):
    toy = GaussianMixtureToy.default() if kind == "gaussian" else MaskedToy()
    steps = 6
    res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=8, num_steps=steps, num_rollouts=40,
                      max_children=3, alpha=0.7, generator=_gen(0))
    tree: DTSState = res.info["tree"]
    n, B = tree.size, 3
    level, nc = tree.level[:n], tree.num_children[:n]
    leaves = tree.leaves()
    # one clean leaf and one reward call per rollout; the cap holds; the root saw every rollout
    assert leaves.numel() == 40 == res.info["reward_calls"]
    assert int(nc.max()) <= B and int(tree.visits[tree.roots[0]]) == 40
    # true cost: one denoiser call per non-clean state (masked: the all-mask root too)
    created = int(((level >= 0) & (level < steps)).sum())
    assert res.info["nfe"] == created
    assert res.info["nfe"] <= 40 * steps + (1 if kind == "masked" else 0)
    # soft-Bellman backup at every internal node, r at the leaves
    assert torch.allclose(tree.value[leaves], tree.reward[leaves])
    internal = torch.nonzero(nc[:n] > 0).flatten()
    ch = tree.children[internal]
    v = torch.where(ch >= 0, tree.value[ch.clamp_min(0)], torch.full(ch.shape, -math.inf, dtype=torch.float64))
    visits = torch.where(ch >= 0, tree.visits[ch.clamp_min(0)], torch.zeros_like(ch)).double()
    expect = 0.7 * (torch.logsumexp(v / 0.7 + visits.log(), 1) - visits.sum(1).log())
    assert torch.allclose(tree.value[internal], expect)
    assert torch.equal(visits.sum(1).long(), tree.visits[internal])       # every rollout passes one child
    # descents: each sample is a leaf; the exact descent law sums to one over the leaves
    p = tree.descent_probabilities()
    assert float(p[leaves].sum()) == pytest.approx(1.0)
    assert torch.allclose(res.rewards, toy.reward(res.x0).float(), atol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_runs_on_a_rectified_flow_and_beats_ancestral(name):
    """The same methods on the flow schedule of the Gaussian toy (a = 1 − σ, s = σ, DDIM-η with η = 1)."""
    toy = GaussianMixtureToy.default(schedule="flow")
    proc = toy.process()
    kw = {"dts": dict(num_rollouts=256, max_children=4, alpha=0.5)}.get(name, {})
    base = svdd.sample(proc, toy.reward, method="ancestral", num_samples=64, num_steps=10, generator=_gen(3))
    res = svdd.sample(proc, toy.reward, method=name, num_samples=64, num_steps=10, generator=_gen(3), **kw)
    se = float((res.rewards.var() / 64 + base.rewards.var() / 64).sqrt())
    assert float(res.rewards.mean() - base.rewards.mean()) > 3 * se
    assert torch.allclose(res.rewards, toy.reward(res.x0).float(), atol=1e-5)


def test_forward_noise_matches_the_marginals():
    """search-over-paths' forward step: x_t ~ q(x_t|x0), then q(x_t'|x_t) has the marginal of t'."""
    from svdd.algorithms.search_over_paths import forward_noise

    for schedule in ("vp", "flow"):
        proc = GaussianMixtureToy.default(schedule=schedule).process()
        ts = proc.timesteps(10)
        x0 = torch.full((40000, 1), 1.0, dtype=torch.float64)
        x_t = proc.q_sample(x0, ts[6], generator=_gen(1))
        x_prev = forward_noise(proc, x_t, ts[6], ts[3], _gen(2))
        a, s = proc.schedule(ts[3])
        assert abs(float(x_prev.mean()) - float(a)) < 0.02
        assert abs(float(x_prev.std()) - float(s)) < 0.02
    toy = MaskedToy()
    proc = toy.process()
    ts = proc.timesteps(8)
    x0 = torch.zeros((40000, toy.L), dtype=torch.long)
    x_t = torch.where(torch.rand(x0.shape, generator=_gen(3)) < float(proc.mask_prob(ts[6])), toy.mask_id, x0)
    x_prev = forward_noise(proc, x_t, ts[6], ts[2], _gen(4))
    assert abs(float((x_prev == toy.mask_id).double().mean()) - float(proc.mask_prob(ts[2]))) < 0.01


def test_dts_sampled_descents_follow_the_exact_descent_law():
    toy = MaskedToy()
    res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=20000, num_steps=K, num_rollouts=200,
                      max_children=6, alpha=ALPHA, generator=_gen(1))
    law = _laws(toy, res.info["tree"])[0]
    noise = 0.5 * float((law * (1 - law) / 20000).sqrt().sum())
    assert total_variation(toy.histogram(res.x0), law) < 3 * noise + 0.005


def test_dts_resume_save_load_and_refusals(tmp_path):
    toy = MaskedToy()
    proc = toy.process()
    kw = dict(num_samples=4, num_steps=K, max_children=4, alpha=ALPHA)
    a = svdd.sample(proc, toy.reward, method="dts", num_rollouts=30, generator=_gen(2), **kw)
    tree = a.info["tree"]
    path = tmp_path / "tree.safetensors"
    tree.save(path)
    loaded = DTSState.load(path)
    assert loaded.size == tree.size and torch.equal(loaded.value[: tree.size], tree.value[: tree.size])
    b = svdd.sample(proc, toy.reward, method="dts", num_rollouts=25, tree=loaded, generator=_gen(3), **kw)
    t2 = b.info["tree"]
    assert b.info["tree_rollouts_total"] == 55 and t2.leaves().numel() == 55
    assert b.info["reward_calls"] == 25                              # this call's cost only
    assert b.info["tree_nfe_total"] == a.info["nfe"] + b.info["nfe"]
    assert loaded.size == tree.size                                  # the passed tree is not modified
    # the first 30 rollouts' nodes are kept as they were
    assert torch.equal(t2.state[: tree.size], tree.state[: tree.size])
    assert int(t2.visits[t2.roots[0]]) == 55
    with pytest.raises(AlgorithmError, match="max_children"):
        svdd.sample(proc, toy.reward, method="dts", num_rollouts=5, tree=tree,
                    **{**kw, "max_children": 5})
    with pytest.raises(AlgorithmError, match="alpha > 0"):
        svdd.sample(proc, toy.reward, method="dts", num_rollouts=5, **{**kw, "alpha": 0.0})
    # the same through paths (what `svdd sample --set save_tree=... / --set tree=...` does)
    saved = tmp_path / "saved.safetensors"
    svdd.sample(proc, toy.reward, method="dts", num_rollouts=10, save_tree=str(saved), generator=_gen(6), **kw)
    c = svdd.sample(proc, toy.reward, method="dts", num_rollouts=5, tree=str(saved), generator=_gen(7), **kw)
    assert c.info["tree_rollouts_total"] == 15
    with pytest.raises(AlgorithmError, match="cannot read the tree"):
        svdd.sample(proc, toy.reward, method="dts", num_rollouts=5, tree=str(tmp_path / "missing"), **kw)
    bad = tmp_path / "other.safetensors"
    from svdd.runfolder import save_tensors

    save_tensors(bad, {"x": torch.zeros(1)}, {"format": "nope", "num_nodes": 0})
    with pytest.raises(AlgorithmError, match="not a DTS tree"):
        DTSState.load(bad)


def test_dts_small_tree_is_enumerated_and_stops():
    """A cap of 1 per node leaves one path per root child; with B = 1 the tree is exhausted after
    one rollout, so asking for more costs nothing more."""
    toy = MaskedToy()
    res = svdd.sample(toy.process(), toy.reward, method="dts-star", num_samples=1, num_steps=3, num_rollouts=50,
                      max_children=1, generator=_gen(4))
    assert res.info["reward_calls"] == 1 and res.info["tree"].leaves().numel() == 1


def test_dts_invalid_leaves_never_win():
    toy = MaskedToy()
    bad = set(range(0, 27, 2))

    class HalfInvalid:
        name = "half-invalid"

        def __call__(self, x0):
            idx = toy.clean_index(x0)
            r = toy.reward_table[idx].float().clone()
            r[torch.tensor([int(i) in bad for i in idx])] = float("nan")
            return r

    with pytest.warns(svdd.RewardWarning):
        res = svdd.sample(toy.process(), HalfInvalid(), method="dts", num_samples=500, num_steps=K,
                          num_rollouts=300, max_children=8, alpha=ALPHA, generator=_gen(5))
    assert not any(int(i) in bad for i in toy.clean_index(res.x0))
    with pytest.warns(svdd.RewardWarning):
        star = svdd.sample(toy.process(), HalfInvalid(), method="dts-star", num_samples=8, num_steps=K,
                           num_rollouts=20, generator=_gen(5))
    assert not any(int(i) in bad for i in toy.clean_index(star.x0))


# ------------------------------------------------------------------------------------------------
# DTS converges towards the exact tilted target
# ------------------------------------------------------------------------------------------------
def test_dts_tv_decreases_as_rollouts_and_cap_grow():
    _, _, small = _dts_masked(64, 4)
    _, _, large = _dts_masked(1024, 16)
    assert sum(large) / 4 < 0.15 < sum(small) / 4           # measured 0.34 -> 0.07 (seed 0)
    assert max(large) < min(small) + 0.05


@pytest.mark.slow
def test_dts_within_tv_010_of_the_exact_tilted_target():
    """Target of issue 17: 4 independent trees of 8192 rollouts, cap 64, α = 0.5, K = 8, visit-weighted
    backup, 16 rollouts per batch per tree. Measured exact-law TV 0.047 / 0.030 / 0.083 / 0.060 (mean
    0.055); the pretrained law is at 0.46. The run's 20000 samples (5000 descents per tree): TV < 0.10,
    with a sampling noise of at most 0.010 (measured TV 0.050)."""
    toy = MaskedToy()
    res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=20000, num_trees=4, num_steps=K,
                      num_rollouts=8192, max_children=64, alpha=ALPHA, rollouts_per_batch=16, generator=_gen(0))
    target = toy.tilted(ALPHA, K)
    tvs = [total_variation(law, target) for law in _laws(toy, res.info["tree"])]
    assert sum(tvs) / 4 < 0.10 and max(tvs) < 0.12
    # the 20000 samples: 5000 Boltzmann descents of each tree
    assert 0.5 * float((target * (1 - target) / 20000).sqrt().sum()) < 0.015
    assert total_variation(toy.histogram(res.x0), target) < 0.10


def _gauss_law_stats(toy, tree):
    p, leaves = tree.descent_probabilities(), tree.leaves()
    T = tree.metadata["num_trees"]
    x = tree.state[leaves][:, 0].double()
    right = (toy.component_of(tree.state[leaves]) == 1).double()
    mean = torch.zeros(T, dtype=torch.float64).index_add_(0, tree.tree[leaves], p[leaves] * x)
    weight = torch.zeros(T, dtype=torch.float64).index_add_(0, tree.tree[leaves], p[leaves] * right)
    return mean, weight


def _gauss_reference(toy, steps):
    """The K-step model's tilted law at α = 1 by self-normalised weighting of 200k ancestral samples."""
    anc = svdd.sample(toy.process(), toy.reward, method="ancestral", num_samples=200000, num_steps=steps,
                      generator=_gen(9))
    w = torch.softmax(anc.rewards.double(), 0)
    return float((w * anc.x0[:, 0].double()).sum()), float((w * (toy.component_of(anc.x0) == 1).double()).sum())


def _gauss_trees(toy, steps, R, B, T=16, **kw):
    res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=T, num_trees=T, num_steps=steps,
                      num_rollouts=R, max_children=B, alpha=1.0, generator=_gen(0), **kw)
    return _gauss_law_stats(toy, res.info["tree"])


def test_dts_gaussian_mean_and_mode_weight_approach_the_tilted_target():
    """K = 20, α = 1, 16 trees. Reference (K-step tilted law): mean 1.18, right-mode weight 0.875
    (continuous time: 1.35 / 0.896). With the visit-weighted backup (default) 64 rollouts and a cap
    of 16 put the weight at 0.880 ± 0.006 (docs/figures/dts_convergence.md); a tree of 4 rollouts,
    cap 2, is far off (0.75)."""
    toy, steps = GaussianMixtureToy.default(), 20
    ref_mean, ref_weight = _gauss_reference(toy, steps)
    (m1, w1), (m2, w2) = _gauss_trees(toy, steps, 4, 2), _gauss_trees(toy, steps, 64, 16)
    se = lambda a: float(a.std() / a.numel() ** 0.5)  # noqa: E731
    assert abs(float(w2.mean()) - ref_weight) < 3 * se(w2) + 0.02
    assert abs(float(m2.mean()) - ref_mean) < 3 * se(m2) + 0.1
    assert float(w1.mean()) < ref_weight - 0.1                    # the 4-rollout trees: 0.75, three at 0


@pytest.mark.slow
def test_dts_mean_backup_is_biased_low_on_the_gaussian_mixture():
    """The equal-weight backup (``backup="mean"``) drifts away from the target as rollouts are added at
    a fixed cap (measured weight 0.874 at 16 rollouts, cap 16 — only the root branches, a flat
    self-normalised estimate — and 0.78 at 256): the documented bias of that option."""
    toy, steps = GaussianMixtureToy.default(), 20
    _, ref_weight = _gauss_reference(toy, steps)
    (_, w1), (_, w2) = (_gauss_trees(toy, steps, R, 16, backup="mean") for R in (16, 256))
    se = float((w1.var() / w1.numel() + w2.var() / w2.numel()).sqrt())
    assert float(w1.mean() - w2.mean()) > 3 * se and float(w2.mean()) < ref_weight - 0.05


# ------------------------------------------------------------------------------------------------
# searches: argmax and best-of-n at equal nfe
# ------------------------------------------------------------------------------------------------
def _toy(kind):
    if kind == "gaussian":
        toy = GaussianMixtureToy.default()
        return toy.process(), toy.reward, 50
    toy = MaskedToy()
    return toy.process(), toy.reward, K


# knob settings of the equal-nfe comparison (num_samples = 128)
SETTINGS = {
    "dts": dict(num_rollouts=1024, max_children=8, alpha=0.3),
    "dts-star": dict(num_rollouts=1024, max_children=4),
    "dsearch": dict(num_candidates=4),
    "dsearch-r": dict(num_candidates=4),
    "treeg": dict(branch_factor=4),
    "noise-trajectory-search": dict(num_candidates=4),
    "iterative-refinement": dict(num_iterations=2, num_candidates=4),
    "search-over-paths": dict(num_candidates=4),
}
# measured shortfalls (strict xfail: the test fails if they start passing, so this list stays true)
BEHIND_BEST_OF_N = {
    ("dts", "masked"): "1.10 vs 1.18: dts samples (α = 0.3), best-of-n keeps the top",
    ("dsearch", "masked"): "1.17 vs 1.19: the argmax-filled x̂0 look-ahead is a weak value on a random table",
    ("noise-trajectory-search", "masked"): "0.99 vs 1.15",
    ("iterative-refinement", "masked"): "1.11 vs 1.18",
    ("search-over-paths", "masked"): "1.16 vs 1.19",
    ("dsearch-r", "masked"): "1.175 vs 1.154: ahead by less than 3 standard errors",
    ("treeg", "masked"): "1.155 vs 1.154: level",
}
SLOW = {("dts", "gaussian"), ("dts-star", "gaussian")}


def _cases():
    for name in NEW:
        for kind in ("gaussian", "masked"):
            marks = [pytest.mark.slow] if (name, kind) in SLOW else []
            if (name, kind) in BEHIND_BEST_OF_N:
                marks.append(pytest.mark.xfail(strict=True, reason=BEHIND_BEST_OF_N[(name, kind)]))
            yield pytest.param(name, kind, marks=marks, id=f"{name}-{kind}")


@pytest.mark.parametrize("name,kind", list(_cases()))
def test_beats_best_of_n_at_equal_nfe(name, kind):
    """Mean reward of 128 samples against best-of-n (global top-128, the library's default) given at
    most the same nfe per sample: num_candidates = ⌊nfe / K⌋. Must lead by 3 standard errors."""
    proc, reward, steps = _toy(kind)
    res = svdd.sample(proc, reward, method=name, num_samples=128, num_steps=steps, generator=_gen(0),
                      **SETTINGS[name])
    nfe = res.info["nfe_per_sample"]
    bon = svdd.sample(proc, reward, method="best-of-n", num_samples=128, num_steps=steps,
                      num_candidates=max(1, int(nfe // steps)), generator=_gen(1))
    se = float((res.rewards.var() / 128 + bon.rewards.var() / 128).sqrt())
    assert float(res.rewards.mean() - bon.rewards.mean()) > 3 * se


# knob settings of the argmax test; measured hits out of 20 runs (best-of-n's expected hits at the
# same nfe): dsearch 16 (14.0), dsearch-r 17 (9.6), dts-star 5 (3.2), noise-trajectory-search 15
# (14.6), treeg 13 (14.8), search-over-paths 15 (16.0), iterative-refinement 5 (6.6)
ARGMAX_BEHIND = {"treeg", "search-over-paths", "iterative-refinement"}
ARGMAX = {
    "dsearch-r": dict(num_candidates=16),
    "dsearch": dict(num_candidates=8, oversample=4),
    "noise-trajectory-search": dict(num_candidates=32),
    "treeg": dict(branch_factor=8, active_size=16),
    "search-over-paths": dict(num_candidates=16),
    "iterative-refinement": dict(num_iterations=8, num_candidates=4),
    "dts-star": dict(num_rollouts=128, max_children=4),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason="fewer hits than "
                                                       "best-of-n's expectation")] if n in ARGMAX_BEHIND else [])
                                  for n in sorted(ARGMAX)])
def test_search_finds_the_argmax_at_least_as_often_as_best_of_n(name):
    """20 runs of 4 samples on the positional masked toy (argmax mass q = 0.0117 under the K-step
    model). A run hits when its best sample is the argmax. Best-of-n with the run's nfe keeps the best
    of P = nfe/K pretrained samples and hits with probability p = 1 − (1 − q)^P exactly; the method
    must hit in at least 20·p runs (strict xfail where it measured fewer)."""
    toy, reward = masked_toy_with_positional_reward()
    proc = toy.process()
    best = float(toy.reward_table.max())
    q = float(toy.model_distribution(K)[toy.reward_table.argmax()])
    hits, nfe = 0, 0.0
    for seed in range(20):
        res = svdd.sample(proc, reward, method=name, num_samples=4, num_steps=K, generator=_gen(seed), **ARGMAX[name])
        hits += int(float(res.rewards.max()) >= best - 1e-5)
        nfe += res.info["nfe"] / 20
    p_bon = 1 - (1 - q) ** int(nfe // K)
    print(f"{name}: {hits}/20 runs hit at nfe {nfe:.0f}; best-of-n p = {p_bon:.2f}")
    assert hits >= 20 * p_bon
