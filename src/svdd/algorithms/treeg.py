"""TreeG: tree search guidance (Guo, Yang, Yuan, Wang, NeurIPS 2025, arXiv 2502.11420; code
``yukang123/UniTreeG``, read as in ../shared/reference/frontier.md §3.3).

An active set of A states; each branches into K children; the next active set is the **top A of
all A·K children across parents** (unlike SVDD, whose selection is per parent); at the end the
best ``num_samples`` of the active set are returned.

Notation (code → paper):
  ``active_size``       A (default ``num_samples``)
  ``branch_factor``     K, branches per active state (the budget knob)
  ``variant="sc"``      TreeG-SC: K children from the pretrained kernel, each scored by its
                        look-ahead value at its own time t_next, r(x̂0(child)) (masked:
                        argmax-filled, or the soft mean of ``num_mc_samples`` draws
                        x1 ~ p(x1 | child), the paper's 30-draw average)
  ``variant="sd"``      TreeG-SD (masked processes): K clean candidates x1 ~ p(x1 | x_t) drawn
                        from the state's own x̂0 and scored by the reward; the state then takes
                        its step *conditioned on the best x1* (the transition with x̂0 = one-hot
                        x1), so there is no selection between states

Cost: SC: one denoiser call per child (its x̂0 is the kept child's next denoiser output):
nfe per sample = (A + (K_steps − 1)·A·K)/num_samples, reward calls A·K per step. SD: A denoiser
calls and A·K reward calls per step. Budget knob ``branch_factor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import Run, check_common, check_positive_int
from .dts import look_ahead, ranked
from .registry import AlgorithmError, register


@register("treeg", budget_knob="branch_factor")
def treeg(process, reward_fn, *, num_samples, num_steps, branch_factor=4, active_size=None, variant="sc",
          num_mc_samples=1, generator=None, callback=None, max_batch_size=None):
    """TreeG: A active states branch into K each; keep the global top A (SC) or step towards the best x1 (SD)."""
    check_common(process, num_samples, num_steps, spec_name="treeg")
    check_positive_int("branch_factor", branch_factor)
    check_positive_int("num_mc_samples", num_mc_samples)
    A = num_samples if active_size is None else active_size
    check_positive_int("active_size", A)
    if A < num_samples:
        raise AlgorithmError(f"active_size ({A}) must be >= num_samples ({num_samples})")
    if variant not in ("sc", "sd"):
        raise AlgorithmError(f"variant must be 'sc' or 'sd', got {variant!r}")
    if variant == "sd" and process.kind != "masked":
        raise AlgorithmError("treeg variant='sd' draws clean candidates from masked x̂0 probabilities; "
                             "use variant='sc' on gaussian processes")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    proc, Kb = run.process, branch_factor
    torch.set_grad_enabled(False)
    ts = proc.timesteps(num_steps)
    x = proc.prior(A, generator)
    x0_hat = proc.predict_x0(x, ts[0])
    v = ok = None
    for i in range(num_steps):
        t, t_next, final = ts[i], ts[i + 1], i == num_steps - 1
        if variant == "sc":
            # 1. K children per active state, 2. look-ahead values, 3. global top A
            trans = proc.transition(x, t, t_next, x0_hat=x0_hat)
            k = 1 if proc.kind == "gaussian" and bool((trans.std == 0).all()) else Kb
            children = torch.stack([trans.sample(generator) for _ in range(k)], 1).flatten(0, 1)
            vc, okc, x0c = look_ahead(run, children, t_next, final, num_mc_samples, 0.0, generator)
            keep = torch.topk(ranked(vc, okc), A, sorted=True).indices
            x, x0_hat, v, ok = children[keep], x0c[keep], vc[keep], okc[keep]
        else:
            # 1. K clean candidates x1 ~ p(x1|x_t), scored by the reward; 2. step towards the best
            cand = torch.stack([proc.decode_x0_hat(x, x0_hat, generator, sample=True) for _ in range(Kb)], 1)
            rc, okc = run.reward.evaluate(cand.flatten(0, 1))
            best = ranked(rc, okc).view(A, Kb).argmax(1)
            x1 = cand[torch.arange(A, device=cand.device), best]
            onehot = F.one_hot(x1, proc.vocab_size).to(x0_hat.dtype)
            x = proc.transition(x, t, t_next, x0_hat=onehot).sample(generator)
            if final:
                v, ok = run.reward.evaluate(x)
                x0_hat = x
            else:
                x0_hat = proc.predict_x0(x, t_next)
                v, ok = rc.view(A, Kb)[torch.arange(A, device=best.device), best], okc.view(A, Kb)[
                    torch.arange(A, device=best.device), best]
        run.record(value_mean=v.float().mean())
        run.step_done(i, t, t_next, x, x0_hat, values=v)
    keep = torch.topk(ranked(v, ok), num_samples, sorted=True).indices
    return run.result(x[keep], v[keep].float(), None, branch_factor=Kb, active_size=A, variant=variant)
