"""Resamplers: unbiased counts; systematic and SSP within one of N·w; ESS."""

import math

import pytest
import torch


from svdd.resampling import RESAMPLERS, ResamplingError, ess, get_resampler


def _weights(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(RESAMPLERS))
def test_resampler_is_unbiased(name):
    """E[#copies of i] = num·W_i, checked within 4.5 standard errors over 1500 repetitions."""
    lw = _weights()
    W = torch.softmax(lw, 0)
    num, reps = 11, 1500
    fn = RESAMPLERS[name]
    g = torch.Generator().manual_seed(1)
    counts = torch.stack([torch.bincount(fn(lw, num, g), minlength=lw.numel()).double() for _ in range(reps)])
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(reps)
    expected = num * W
    assert torch.all((mean - expected).abs() <= 4.5 * se + 1e-9), (name, mean, expected)


@pytest.mark.parametrize("name", ["systematic", "ssp"])
def test_low_variance_resamplers_stay_within_one_copy(name):
    fn = RESAMPLERS[name]
    g = torch.Generator().manual_seed(2)
    for seed in range(100):
        lw = _weights(9, seed)
        idx = fn(lw, 13, g)
        assert idx.numel() == 13
        c = torch.bincount(idx, minlength=9).double()
        nw = 13 * torch.softmax(lw, 0)
        assert torch.all(c >= torch.floor(nw) - 1e-9) and torch.all(c <= torch.ceil(nw) + 1e-9), (seed, c, nw)


def test_multinomial_is_not_within_one_copy():
    """The property above is specific: multinomial violates it (so the test can fail)."""
    g = torch.Generator().manual_seed(3)
    lw = torch.zeros(10, dtype=torch.float64)
    violations = sum(int((torch.bincount(RESAMPLERS["multinomial"](lw, 10, g), minlength=10) > 1.0 + 1).any())
                     for _ in range(100))
    assert violations > 10


@pytest.mark.parametrize("name", sorted(RESAMPLERS))
def test_resampler_contract(name):
    fn = RESAMPLERS[name]
    lw = torch.tensor([0.0, -math.inf, 700.0, 699.0], dtype=torch.float64)   # huge and -inf weights
    idx = fn(lw, 5, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.long and idx.shape == (5,)
    assert set(idx.tolist()) <= {2, 3} and torch.all(idx[1:] >= idx[:-1])
    a = fn(_weights(), 6, torch.Generator().manual_seed(5))
    b = fn(_weights(), 6, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ResamplingError):
        fn(torch.full((3,), -math.inf), 2, None)


def test_ess_and_registry():
    assert ess(torch.zeros(8)) == pytest.approx(8.0)
    assert ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)
    assert ess(torch.tensor([0.0, math.log(3.0)])) == pytest.approx(16 / 10)
    assert ess(torch.tensor([1000.0, 1000.0])) == pytest.approx(2.0)
    assert get_resampler("ssp") is RESAMPLERS["ssp"]
    with pytest.raises(ResamplingError, match="choose one of"):
        get_resampler("nope")
