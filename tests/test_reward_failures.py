"""Faulty rewards: every registered method on both toys survives rewards that raise, return NaN /
inf, a list or integers; a wrong shape is a one-line RewardError; one RewardWarning per run with
counters that count samples; and an invalid sample never wins a selection (a reward ≤ −1 that
is NaN for x < 0, whose invalid_value 0 would beat every valid reward)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import svdd
from svdd.rewards.base import Reward, RewardError, WeightedSum
from svdd.testing import GaussianMixtureToy, MaskedToy

FAULTS = ("raise_always", "raise_sometimes", "nan", "inf", "wrong_shape", "list", "int", "scalar")
INVALID = -7.0


class FaultyReward:
    """A positional (masked) or linear (Gaussian) reward with one kind of fault; "bad" rows are
    x < 0 (Gaussian) or first token 0 (masked; on probabilities: its argmax)."""

    def __init__(self, kind: str, fault: str, differentiable: bool, W: torch.Tensor | None = None):
        self.kind, self.fault, self.differentiable, self.W = kind, fault, differentiable, W
        self.name, self.invalid_value = f"faulty-{fault}", INVALID

    def _value_and_bad(self, x):
        if self.kind == "gaussian":
            return x.flatten(1).sum(1), x.flatten(1)[:, 0] < 0
        if x.is_floating_point():   # clean-token probabilities (B, L, V): guidance paths
            return (x * self.W.to(x.dtype)).sum((1, 2)), x[:, 0].argmax(-1) == 0
        v = self.W[torch.arange(self.W.shape[0]), x.long().cpu()].sum(1).float().to(x.device)
        return v, x[:, 0] == 0

    def __call__(self, x):
        v, bad = self._value_and_bad(x)
        f = self.fault
        if f == "raise_always":
            raise RuntimeError("oracle is down")
        if f == "raise_sometimes" and bool(bad.any()):
            raise ValueError("cannot score this sample")
        if f in ("nan", "inf"):
            return torch.where(bad, torch.full_like(v, float(f)), v)
        if f == "wrong_shape":
            return torch.stack([v, v], 1)
        if f == "list":
            return [float(a) for a in v.detach().reshape(-1)]
        if f == "int":
            return v.detach().round().long()
        if f == "scalar":
            return 1
        return v


def _toy(kind):
    if kind == "gaussian":
        return GaussianMixtureToy.default().process(eta=1.0), None
    toy = MaskedToy(seed=0)
    W = torch.randn(toy.L, toy.vocab_size, generator=torch.Generator().manual_seed(3))
    W[:, toy.mask_id] = 0
    return toy.process(), W


def _kwargs(method, kind):
    kw = {"num_samples": 8, "num_steps": 3}
    kw.update({"best-of-n": dict(num_candidates=2), "svdd-pm": dict(num_candidates=3),
               "svdd-mc": dict(num_candidates=3, value_fn=lambda x, t: torch.zeros(x.shape[0])),
               "svdd-r": dict(num_candidates=3, replace_fraction=0.25), "smc": dict(num_particles=4),
               "das": dict(num_particles=4, through_model=kind == "gaussian"),
               "dps": dict(through_model=False), "dno": dict(num_iterations=2, num_permutations=2),
               "random-search": dict(num_candidates=2),
               "zero-order-search": dict(num_candidates=4, num_neighbors=2)}.get(method, {}))
    return kw


CASES = [(m, k) for m in sorted(svdd.ALGORITHMS) for k in ("gaussian", "masked") if k in svdd.ALGORITHMS[m].kinds]


def _run(method, kind, reward, seed=0, **extra):
    process, _ = _toy(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = svdd.sample(process, reward, method=method, generator=torch.Generator().manual_seed(seed),
                          **{**_kwargs(method, kind), **extra})
    return res, [w for w in caught if issubclass(w.category, svdd.RewardWarning)]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method,kind", CASES)
def test_failure_matrix(method, kind, fault):
    _, W = _toy(kind)
    differentiable = svdd.ALGORITHMS[method].needs_gradients or method == "dno"
    reward = FaultyReward(kind, fault, differentiable, W)
    if fault in ("wrong_shape", "scalar"):   # a broken contract: one clean line, no run
        with pytest.raises(RewardError) as err:
            _run(method, kind, reward)
        assert "\n" not in str(err.value) and "one number per sample" in str(err.value)
        return
    res, caught = _run(method, kind, reward)
    info = res.info
    assert res.rewards.shape == (8,) and torch.isfinite(res.rewards).all()
    assert info["reward_failed_samples"] == info["reward_invalid"] + info["reward_errors"]
    assert info["reward_samples"] >= info["reward_calls"] > 0
    if fault in ("list", "int"):   # converted: nothing failed, nothing to warn about
        assert info["reward_failed_samples"] == 0 and not info["reward_all_failed"] and not caught
        assert info["reward_first_error"] is None
        return
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "\n" not in message and reward.name in message
    if fault == "raise_always":
        assert info["reward_all_failed"] and info["reward_errors"] == info["reward_samples"]
        assert "oracle is down" in info["reward_first_error"] and "oracle is down" in message
        assert (res.rewards == INVALID).all()
        return
    assert info["reward_failed_samples"] > 0
    assert info["reward_all_failed"] == (info["reward_failed_samples"] == info["reward_samples"])
    if fault == "raise_sometimes":
        assert info["reward_invalid"] == 0 and "cannot score" in info["reward_first_error"]
    else:
        assert info["reward_errors"] == 0 and info["reward_first_error"]
    assert (res.rewards <= 1e6).all()   # an inf reward is never reported (nor selected as a winner)


@pytest.mark.parametrize("estimator", ["hybrid", "zo-sgd"])
def test_dno_zeroth_order_estimators_survive_failing_rewards(estimator):
    reward = FaultyReward("gaussian", "nan", False)
    res, caught = _run("dno", "gaussian", reward, estimator=estimator)
    assert len(caught) == 1 and torch.isfinite(res.rewards).all() and torch.isfinite(res.info["noise"]).all()
    res, caught = _run("dno", "gaussian", FaultyReward("gaussian", "raise_always", False), estimator=estimator)
    assert len(caught) == 1 and res.info["reward_all_failed"]


def test_a_good_run_reports_no_failure_and_warns_nothing():
    res, caught = _run("svdd-pm", "gaussian", GaussianMixtureToy.default().reward)
    assert not caught and res.info["reward_failed_samples"] == 0 and res.info["reward_first_error"] is None
    assert res.info["reward_all_failed"] is False


# -- counters count samples, duplicates included ----------------------------------------------------
def test_deduplicated_children_count_as_samples():
    """Masked SVDD-PM scores each distinct child once; a failing child counts once per sample."""
    _, W = _toy("masked")
    N, M, K = 6, 4, 3
    res, caught = _run("svdd-pm", "masked", FaultyReward("masked", "raise_always", False, W),
                       num_samples=N, num_candidates=M, num_steps=K)
    info = res.info
    assert info["reward_samples"] == N * M * K == info["reward_failed_samples"] == info["reward_errors"]
    assert info["reward_calls"] < N * M * K   # dedup evaluated fewer, the counters still count every child
    assert len(caught) == 1 and f"{N * M * K} of {N * M * K}" not in str(caught[0].message)  # "every ... failed"
    assert "every reward evaluation failed" in str(caught[0].message)


def test_cache_hits_of_invalid_samples_are_counted_and_errors_are_not_cached():
    calls = []

    def fn(x):
        calls.append(len(x))
        if bool((x[:, 0] == 9).any()):
            raise RuntimeError("nine")
        return torch.where(x[:, 0] == 3, torch.nan, x[:, 0].float())

    r = Reward(fn, key_fn=lambda row: int(row[0]), invalid_value=-1.0)
    x = torch.tensor([[3], [3], [1], [9], [9]])
    values, valid = r.evaluate(x)
    assert values.tolist() == [-1.0, -1.0, 1.0, -1.0, -1.0] and valid.tolist() == [False, False, True, False, False]
    assert r.invalid == 2 and r.errors == 2 and r.failed_samples == 4 and r.samples == 5
    r.evaluate(x[:2])                      # both from the cache: still two invalid samples
    assert r.invalid == 4 and r.cache_hits == 2 + 2
    r.evaluate(x[3:4])                     # a raise is evaluated again (it may have been transient)
    assert r.errors == 3 and calls[-1] == 1 and r.first_error == "RuntimeError: nine"


def test_counts_argument_weights_the_counters():
    r = Reward(lambda x: torch.where(x[:, 0] > 0, torch.nan, 1.0))
    r.evaluate(torch.tensor([[1.0], [-1.0]]), counts=torch.tensor([5, 2]))
    assert r.invalid == 5 and r.samples == 7 and r.calls == 2


def test_weighted_sum_is_invalid_when_a_part_is():
    def a(x):
        return torch.where(x[:, 0] > 0, torch.nan, x[:, 0])

    def b(x):
        return x[:, 0] * 0 + 1

    a.invalid_value, b.invalid_value = -2.0, 0.0
    ws = WeightedSum([a, b], [1.0, 0.5])
    r = Reward(ws)
    values, valid = r.evaluate(torch.tensor([[1.0], [-3.0]]))
    assert valid.tolist() == [False, True] and values.tolist() == [-2.0, -2.5]
    c = r.counters()
    assert c["reward_invalid"] == 1 and c["reward_failed_samples"] == 1


def test_reward_pool_style_nan_uses_the_wrapped_first_error():
    class Pool:
        last_errors = ["TimeoutError: task ran past 5 s"]

        def __call__(self, x):
            return torch.full((len(x),), float("nan"))

    r = Reward(Pool())
    r(torch.zeros(3, 1))
    assert r.counters()["reward_first_error"] == "TimeoutError: task ran past 5 s"


@pytest.mark.parametrize("output", [[1.0, 2.0], (1, 2), [torch.tensor(1.0), torch.tensor(2.0)], torch.tensor([[1.0], [2.0]]),
                                    torch.tensor([1, 2])])
def test_lists_ints_and_column_vectors_are_converted(output):
    values, valid = Reward(lambda x: output).evaluate(torch.zeros(2, 1))
    assert values.tolist() == [1.0, 2.0] and valid.all() and values.is_floating_point()


@pytest.mark.parametrize("output", [None, "abc", torch.zeros(2, 2), torch.zeros(3), 1.0, {"a": 1}])
def test_contract_violations_are_one_line_reward_errors(output):
    with pytest.raises(RewardError) as err:
        Reward(lambda x: output, name="bad").evaluate(torch.zeros(2, 1))
    assert "\n" not in str(err.value) and "'bad'" in str(err.value)


def test_failing_differentiable_reward_has_a_zero_gradient():
    def fn(x):
        raise RuntimeError("no")

    x = torch.randn(3, 2, requires_grad=True)
    with torch.enable_grad():
        out = Reward(fn, differentiable=True)(x)
        (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g, torch.zeros_like(x))


def test_reward_docstring_says_only_worker_rewards_time_out():
    doc = Reward.__doc__
    assert "--reward-timeout" in doc and "hang" in doc


# -- invalid never wins ---------------------------------------------------------------------------
class NegativeNaN:
    """r(x) = −1 − (x − 1.5)² for x ≥ 0, NaN for x < 0 (invalid_value 0 beats every valid reward)."""

    name = "negative-nan"

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, x):
        self.seen.append(x.detach().clone())
        x = x.flatten(1)[:, 0]
        return torch.where(x >= 0, -1 - (x - 1.5) ** 2, torch.full_like(x, float("nan")))


NEVER_WINS = {
    "best-of-n": dict(num_samples=16, num_candidates=8),
    "svdd-pm": dict(num_samples=16, num_candidates=8),
    "svdd-r": dict(num_samples=16, num_candidates=8, replace_fraction=0.25),
    "smc": dict(num_samples=16, num_particles=32, alpha=0.5),
    "das": dict(num_samples=16, num_particles=32, alpha=0.5),
    "random-search": dict(num_samples=16, num_candidates=8),
    "zero-order-search": dict(num_samples=16, num_candidates=12, num_neighbors=3),
    "dno": dict(num_samples=8, num_iterations=4, estimator="hybrid", num_permutations=2),
}


@pytest.mark.parametrize("method", sorted(NEVER_WINS))
def test_invalid_never_wins(method):
    process = GaussianMixtureToy.default().process(eta=1.0)
    reward = NegativeNaN()
    reward.differentiable = svdd.ALGORITHMS[method].needs_gradients
    steps = []
    kw = dict(NEVER_WINS[method])
    n = kw["num_samples"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", svdd.RewardWarning)
        res = svdd.sample(process, reward, method=method, num_steps=8, generator=torch.Generator().manual_seed(0),
                          callback=steps.append, **kw)
    valid_out = res.x0[:, 0] >= 0
    assert res.info["reward_invalid"] > 0                      # the runs did meet the failing region
    assert torch.equal(valid_out, res.rewards <= -1)           # reported: valid rewards, or invalid_value 0
    assert ((res.rewards == 0) | (res.rewards <= -1)).all()
    seen = [s[:, 0] >= 0 for s in reward.seen]
    if method == "best-of-n":
        assert int(seen[0].sum()) >= n and valid_out.all()
    elif method in ("svdd-pm", "svdd-r"):
        for s in steps:   # at every step a sample keeps an invalid child only if all M are invalid
            values, sel = s.info["values"], s.info["selected"]
            ok = values != 0
            kept = ok[torch.arange(values.shape[0]), sel]
            assert torch.equal(kept, ok.any(1))
        assert valid_out.float().mean() >= 0.75   # was 0 of 16 when invalid_value 0 won
    elif method in ("smc", "das"):
        assert valid_out.all()
    elif method in ("random-search", "zero-order-search"):
        any_valid = torch.stack([v.view(n, -1).any(1) for v in seen], 1).any(1)   # rows are sample-major
        assert any_valid.any() and torch.equal(valid_out, any_valid)
    else:   # dno: a sample whose final noise fails falls back to its latest valid iterate
        iterates = [v for v in seen if v.numel() == n]
        any_valid = torch.stack(iterates, 1).any(1)
        assert torch.equal(valid_out, any_valid)


def test_smc_weights_of_invalid_particles_are_zero():
    process = GaussianMixtureToy.default().process(eta=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", svdd.RewardWarning)
        res = svdd.sample(process, NegativeNaN(), method="smc", num_samples=16, num_particles=16, alpha=0.5,
                          final="weighted", ess_threshold=0.0, num_steps=6, generator=torch.Generator().manual_seed(1))
    invalid = res.x0[:, 0] < 0
    assert invalid.any() and torch.isneginf(res.log_weights[invalid]).all()
    assert torch.isfinite(res.log_weights[~invalid]).all()
    assert abs(float(res.log_weights.exp().sum()) - 1) < 1e-9


@pytest.mark.parametrize("method", ["svdd-pm", "best-of-n", "smc", "random-search"])
def test_all_invalid_candidates_pick_without_nan(method):
    process = GaussianMixtureToy.default().process(eta=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", svdd.RewardWarning)
        res = svdd.sample(process, lambda x: torch.full((len(x),), float("nan")), method=method, num_samples=4,
                          num_steps=3, generator=torch.Generator().manual_seed(0),
                          **({"alpha": 0.5} if method == "smc" else {}))
    assert res.info["reward_all_failed"] and torch.isfinite(res.x0).all() and (res.rewards == 0).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_monte_carlo_pm_value_inherits_validity_from_its_draws(alpha):
    """Masked PM value with S draws: valid when any draw is, computed from the valid draws only."""
    from svdd.values.posterior_mean import PosteriorMeanValue

    toy = MaskedToy(seed=0)
    process = toy.process()
    seen = []

    def reward(x):
        seen.append(x.clone())
        v = x.float().sum(1)
        return torch.where(x[:, 0] == 0, torch.full_like(v, float("nan")), v)

    S, B = 3, 64
    value = PosteriorMeanValue(process, Reward(reward, invalid_value=-9.0), num_mc_samples=S, alpha=alpha,
                               generator=torch.Generator().manual_seed(0))
    x_t = torch.full((B, toy.L), toy.mask_id)
    values, valid = value.evaluate(x_t, process.timesteps(4)[1])
    draws = seen[-1].view(S, B, toy.L)
    ok = draws[..., 0] != 0
    r = draws.float().sum(-1).double()
    assert torch.equal(valid, ok.any(0)) and (~valid).any() and valid.any()
    assert (values[~valid] == -9.0).all()
    if alpha == 0:
        expected = (r * ok).sum(0) / ok.sum(0).clamp_min(1)
    else:
        expected = alpha * (torch.logsumexp(torch.where(ok, r / alpha, torch.tensor(-math.inf, dtype=r.dtype)), 0)
                            - math.log(S))
    torch.testing.assert_close(values[valid], expected[valid].float())


def test_smc_with_monte_carlo_values_survives_nan_rewards():
    _, W = _toy("masked")
    res, caught = _run("smc", "masked", FaultyReward("masked", "nan", False, W), num_mc_samples=3)
    assert len(caught) == 1 and torch.isfinite(res.rewards).all() and res.info["reward_invalid"] > 0


def test_learned_value_returning_nan_never_wins():
    process = GaussianMixtureToy.default().process(eta=1.0)

    def value_fn(x, t):   # NaN on the left half: invalid, must lose to any valid child
        v = -x.flatten(1)[:, 0].abs()
        return torch.where(x.flatten(1)[:, 0] < 0, torch.full_like(v, float("nan")), v)

    steps = []
    svdd.sample(process, GaussianMixtureToy.default().reward, method="svdd-mc", value_fn=value_fn, num_samples=8,
                num_steps=4, num_candidates=4, generator=torch.Generator().manual_seed(0), callback=steps.append)
    for s in steps[:-1]:
        values, sel = s.info["values"], s.info["selected"]
        ok = torch.isfinite(values) & (values != 0)
        assert torch.equal(ok[torch.arange(8), sel], ok.any(1))
