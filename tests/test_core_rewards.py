"""Reward wrappers: safe evaluation, counting, memoisation, weighted sums, spec parsing."""

import pytest
import torch

from svdd.rewards import Reward, WeightedSum, as_reward, parse_reward_spec
from svdd.rewards.base import RewardError


def test_nan_inf_and_exceptions_become_invalid_value_and_are_counted():
    def fn(x):
        if torch.any(x[:, 0] == 7):
            raise RuntimeError("boom")
        out = x[:, 0].float().clone()
        out[x[:, 0] == 3] = float("nan")
        out[x[:, 0] == 4] = float("-inf")
        return out

    r = Reward(fn, invalid_value=-1.0)
    x = torch.tensor([[1], [3], [4], [7], [5]])
    out = r(x)
    assert out.tolist() == [1.0, -1.0, -1.0, -1.0, 5.0]
    assert r.invalid == 2 and r.errors == 1 and r.calls == 5
    assert "boom" in r.last_error


def test_wrong_length_is_a_clear_error():
    r = as_reward(lambda x: torch.zeros(3))
    with pytest.raises(RewardError, match="returned 3 values for 2"):
        r(torch.zeros(2, 1))


def test_memoisation_by_key_counts_only_new_evaluations():
    seen = []

    def fn(x):
        seen.append(len(x))
        return x.float().sum(1)

    r = Reward(fn, key_fn=lambda row: tuple(row.tolist()))
    x = torch.tensor([[1, 2], [1, 2], [3, 4]])
    assert r(x).tolist() == [3.0, 3.0, 7.0]
    assert r(x[:1]).tolist() == [3.0]
    assert seen == [2] and r.calls == 2 and r.cache_hits == 2


def test_weighted_sum_and_spec_parsing():
    parts = {"a": lambda x: x[:, 0].float(), "b": lambda x: x[:, 1].float()}
    x = torch.tensor([[1, 10], [2, 20]])
    r = parse_reward_spec("a+0.5*b", lambda name: parts[name])
    assert isinstance(r, WeightedSum) and r(x).tolist() == [6.0, 12.0]
    assert parse_reward_spec("a", lambda name: parts[name]) is parts["a"]
    assert parse_reward_spec("2*a+-1*b", lambda n: parts[n])(x).tolist() == [-8.0, -16.0]
    with pytest.raises(RewardError):
        parse_reward_spec("", lambda n: parts[n])
    with pytest.raises(RewardError):
        parse_reward_spec("0.5**a", lambda n: parts[n])


def test_differentiable_flag_propagates():
    f = lambda x: x.sum(1)  # noqa: E731
    f.differentiable = True
    assert as_reward(f).differentiable
    assert not WeightedSum([f, lambda x: x.sum(1)], [1, 1]).differentiable
