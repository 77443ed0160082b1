"""Best-of-N: draw ``num_candidates · num_samples`` pretrained samples and keep the top
``num_samples`` by reward — globally, as in the SVDD paper ("select the top 1/N samples"), or
the best of each group of ``num_candidates`` with ``per_group=True``.

An invalid sample (its reward raised or was NaN / ±inf) is kept only when fewer valid ones
exist; it reports the reward's ``invalid_value``.

Cost: ``nfe = num_candidates · K`` and ``num_candidates`` reward calls per final sample.
"""

from __future__ import annotations

import torch

from ._common import Run, check_common, check_positive_int, selection_scores
from .ancestral import rollout
from .registry import register


@register("best-of-n", budget_knob="num_candidates")
def best_of_n(process, reward_fn, *, num_samples, num_steps, num_candidates=8, per_group=False,
              generator=None, callback=None, max_batch_size=None):
    """Top num_samples of num_candidates·num_samples pretrained samples."""
    check_common(process, num_samples, num_steps, spec_name="best-of-n")
    check_positive_int("num_candidates", num_candidates)
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    total = num_samples * num_candidates
    with torch.no_grad():
        x0, _ = rollout(run, total, num_steps, generator)
        rewards, valid = run.reward.evaluate(x0)
        scores = selection_scores(rewards, valid)   # invalid samples rank below every valid one
        if per_group:
            idx = scores.view(num_samples, num_candidates).argmax(dim=1)
            keep = torch.arange(num_samples, device=idx.device) * num_candidates + idx
        else:
            keep = torch.topk(scores, num_samples, sorted=True).indices
    return run.result(x0[keep], rewards[keep], pool_size=total,
                      pool_reward_median=float(rewards.float().median()))
