"""Rewards: plain batch callables ``reward_fn(x0) -> (B,)`` plus helpers to make them safe,
counted, cached and combinable."""

from .base import Reward, WeightedSum, as_reward, parse_reward_spec

__all__ = ["Reward", "WeightedSum", "as_reward", "parse_reward_spec"]
