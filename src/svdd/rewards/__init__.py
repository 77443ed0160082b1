"""Rewards: plain batch callables ``reward_fn(x0) -> (B,)`` plus helpers to make them safe,
counted, cached and combinable."""

from .base import (Reward, RewardError, RewardOutput, RewardWarning, WeightedSum, as_reward, evaluate_reward,
                   parse_reward_spec)

__all__ = ["Reward", "RewardError", "RewardOutput", "RewardWarning", "WeightedSum", "as_reward", "evaluate_reward",
           "parse_reward_spec"]
