"""Shared contract of every registered algorithm (DESIGN §3), on both analytic toys.

New algorithms are picked up from the registry automatically. Per (algorithm, toy): result
shapes, ``num_samples`` respected (batch size 1 included), rewards consistent with ``x0``,
determinism under a seeded generator, grad mode restored, counters present, the callback
called, the budget knob moving nfe, and one-line errors for unsupported combinations.
"""

import inspect

import pytest
import torch
from algorithm_toys import masked_toy_with_positional_reward, onehot_process

import svdd
from svdd.algorithms import ALGORITHMS, AlgorithmError
from svdd.testing import GaussianMixtureToy, MaskedToy


K = 4
COUNTERS = ("nfe", "nfe_per_sample", "reward_calls", "value_calls", "grad_passes", "wall_time_s")
NAMES = sorted(ALGORITHMS)


def _toy(kind):
    if kind in ("gaussian", "flow"):   # "flow": the rectified-flow toy on the same Gaussian kernel family
        toy = GaussianMixtureToy.default("flow" if kind == "flow" else "vp")
        return toy.process(), toy.reward, toy.soft_value(1.0)
    toy, reward = masked_toy_with_positional_reward()
    return onehot_process(toy), reward, toy.soft_value(1.0, K)


def _supported(name, kind):
    return ("gaussian" if kind == "flow" else kind) in ALGORITHMS[name].kinds


def _run(name, kind, num_samples=3, seed=0, **kw):
    proc, reward, value = _toy(kind)
    spec = ALGORITHMS[name]
    if spec.needs_value:
        kw.setdefault("value_fn", value)
    if name == "dno":
        kw.setdefault("num_iterations", 2)
        kw.setdefault("num_permutations", 4)
    return svdd.sample(proc, reward, method=name, num_samples=num_samples, num_steps=K,
                       generator=torch.Generator().manual_seed(seed), **kw)


CASES = [(n, k) for n in NAMES for k in ("gaussian", "flow", "masked") if _supported(n, k)]


@pytest.mark.parametrize("name,kind", CASES)
def test_shapes_counters_and_consistency(name, kind):
    proc, reward, _ = _toy(kind)
    steps = []
    res = _run(name, kind, num_samples=3, callback=steps.append)
    assert isinstance(res, svdd.SampleResult)
    sample_shape = proc.prior(1).shape[1:]
    assert res.x0.shape == (3, *sample_shape)
    assert res.rewards.shape == (3,) and res.rewards.dtype.is_floating_point
    assert res.log_weights is None or res.log_weights.shape == (3,)
    for key in COUNTERS:
        assert key in res.info, key
    assert res.info["nfe"] > 0 and res.info["nfe_per_sample"] == pytest.approx(res.info["nfe"] / 3)
    assert res.info["reward_calls"] >= 3 and res.info["wall_time_s"] >= 0
    assert torch.allclose(res.rewards, reward(res.x0).float(), atol=1e-5)
    assert not res.x0.requires_grad and not res.rewards.requires_grad
    if kind == "masked":
        assert not torch.any(res.x0 == proc.mask_id)
    assert len(steps) >= 1 and isinstance(steps[0], svdd.StepInfo)


@pytest.mark.parametrize("name,kind", CASES)
def test_deterministic_under_seed_and_batch_of_one(name, kind):
    a = _run(name, kind, num_samples=3, seed=7)
    b = _run(name, kind, num_samples=3, seed=7)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.rewards, b.rewards)
    one = _run(name, kind, num_samples=1, seed=1)
    assert one.x0.shape[0] == 1 and one.rewards.shape == (1,)


@pytest.mark.parametrize("name,kind", CASES)
def test_grad_mode_restored(name, kind):
    with torch.no_grad():
        _run(name, kind, num_samples=2)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    _run(name, kind, num_samples=2)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", [n for n in NAMES if ALGORITHMS[n].budget_knob])
def test_budget_knob_moves_nfe(name):
    spec = ALGORITHMS[name]
    assert spec.budget_knob in inspect.signature(spec.fn).parameters
    kind = "gaussian"
    small = _run(name, kind, num_samples=2, **{spec.budget_knob: 2})
    large = _run(name, kind, num_samples=2, **{spec.budget_knob: 4})
    cost = lambda r: r.info["nfe"] + r.info["value_calls"] + r.info["reward_calls"]  # noqa: E731  (svdd-mc: value calls)
    assert cost(large) > cost(small)


@pytest.mark.parametrize("name", [n for n in NAMES if ALGORITHMS[n].needs_gradients])
def test_gradient_methods_refuse_black_box_rewards(name):
    toy = MaskedToy()
    with pytest.raises(AlgorithmError) as err:
        svdd.sample(toy.process(), toy.reward, method=name, num_samples=2, num_steps=K)
    msg = str(err.value)
    assert "\n" not in msg and "svdd-pm" in msg


@pytest.mark.parametrize("name,kind", [(n, k) for n in NAMES for k in ("gaussian", "masked") if not _supported(n, k)])
def test_unsupported_process_kind_raises_one_line(name, kind):
    with pytest.raises(AlgorithmError) as err:
        _run(name, kind)
    assert "\n" not in str(err.value) and "use" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_sizes_raise(name):
    kind = "gaussian" if _supported(name, "gaussian") else "masked"
    with pytest.raises(AlgorithmError):
        _run(name, kind, num_samples=0)
