"""SVDD-R (final version of the SVDD paper, Algorithm 2): SVDD's per-sample selection followed,
at every step, by a global replacement of the worst ``replace_fraction`` of the batch with
copies of samples drawn ∝ exp(v̂/alpha_resample) from the others (argmax copies when 0);
``round(replace_fraction · num_samples)`` samples, at least one.

This couples samples (like SMC) and trades diversity for reward; the paper chooses the
fraction in {0.03, 0.04, 0.05}.
"""

from __future__ import annotations

from .registry import register
from .svdd import svdd_loop


@register("svdd-r", budget_knob="num_candidates", defaults={"value_fn": None})
def svdd_r(process, reward_fn, *, num_samples, num_steps, num_candidates=8, alpha=0.0, value_fn=None,
           replace_fraction=0.05, alpha_resample=None, generator=None, callback=None, max_batch_size=None,
           deduplicate=True):
    """SVDD plus global replacement of the worst fraction of samples each step."""
    return svdd_loop(process, reward_fn, num_samples=num_samples, num_steps=num_steps,
                     num_candidates=num_candidates, alpha=alpha, value_fn=value_fn, generator=generator,
                     callback=callback, max_batch_size=max_batch_size, deduplicate=deduplicate,
                     replace_fraction=replace_fraction, alpha_resample=alpha_resample, method="svdd-r")
