"""Ancestral sampling from the pretrained process: the "pre-trained" row of every table.

Notation: ``x`` = x_t, ``ts`` = t_0 > … > t_K = 0, one denoiser call per step per sample
(``nfe = K`` per sample).
"""

from __future__ import annotations

import torch

from ._common import Run, check_common
from .registry import register


def rollout(run: Run, num_samples: int, num_steps: int, generator=None, record_states: bool = False):
    """Plain pretrained rollout with ``run.process`` (counted). Returns (x0, states) where
    ``states`` lists (t, x_t) before every step when ``record_states``."""
    proc = run.process
    ts = proc.timesteps(num_steps)
    x = proc.prior(num_samples, generator)
    states = []
    for k in range(num_steps):
        if record_states:
            states.append((ts[k], x))
        trans = proc.transition(x, ts[k], ts[k + 1])
        x = trans.sample(generator)
        run.step_done(k, ts[k], ts[k + 1], x, trans.x0_hat)
    return x, states


@register("ancestral", budget_knob=None)
def ancestral(process, reward_fn, *, num_samples, num_steps, generator=None, callback=None, max_batch_size=None):
    """Plain pretrained sampling (no reward guidance); the reward is only evaluated on x0."""
    check_common(process, num_samples, num_steps, spec_name="ancestral")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    with torch.no_grad():
        x0, _ = rollout(run, num_samples, num_steps, generator)
        rewards = run.reward(x0)
    return run.result(x0, rewards)
