"""The analytic toys of ``svdd.testing`` as domains, so the CLI and benchmarks can run them and
print the exact target next to what was sampled."""

from __future__ import annotations

from ..testing import GaussianMixtureToy, MaskedToy
from .base import Domain, DomainError

_GAUSS = GaussianMixtureToy.default()
_MASKED = MaskedToy()


def _no_argument(name: str, reward):
    """A toy reward takes no ``:argument``; one given by mistake is refused, not ignored."""
    def factory(arg=None, **_):
        if arg:
            raise DomainError(f"reward {name!r} takes no argument, got {name}:{arg}; write {name}")
        return reward
    return factory


def _gauss_metrics(x0, decoded, process, alpha: float = 1.0):
    comp = _GAUSS.component_of(x0.cpu())
    return {"right_mode_fraction": float((comp == 1).double().mean()),
            "exact_reward_mean_pretrained": _GAUSS.reward_mean(None),
            f"exact_reward_mean_tilted_alpha{alpha:g}": _GAUSS.reward_mean(alpha)}


def _masked_metrics(x0, decoded, process, alpha: float = 1.0, num_steps: int = 8):
    tilted = _MASKED.tilted(alpha, num_steps)
    model = _MASKED.model_distribution(num_steps)
    hist = _MASKED.histogram(x0.cpu())
    from ..testing import total_variation

    return {"tv_to_pretrained": total_variation(hist, model), f"tv_to_tilted_alpha{alpha:g}": total_variation(hist, tilted),
            "exact_reward_mean_pretrained": float((model * _MASKED.reward_table).sum()),
            f"exact_reward_mean_tilted_alpha{alpha:g}": float((tilted * _MASKED.reward_table).sum()),
            "exact_reward_max": float(_MASKED.reward_table.max())}


GAUSSIAN_DOMAIN = Domain(
    name="toy-gaussian",
    description="1-D two-mode Gaussian mixture with the exact denoiser; reward r(x) = x (exact tilted target known)",
    models={"mixture": lambda device="cpu", **_: _GAUSS.process()},
    default_model="mixture",
    rewards={"linear": (_no_argument("linear", _GAUSS.reward), "r(x) = x, differentiable")},
    default_reward="linear",
    default_num_steps=100,
    decode=lambda x0: [f"{float(v):.4f}" for v in x0.reshape(len(x0), -1)[:, 0]],
    metrics=_gauss_metrics,
    extra={"toy": _GAUSS},
)

MASKED_DOMAIN = Domain(
    name="toy-masked",
    description="length-3 sequences over 3 letters with the exact denoiser; exact tilted law by enumeration",
    models={"table": lambda device="cpu", **_: _MASKED.process()},
    default_model="table",
    rewards={"table": (_no_argument("table", _MASKED.reward), "a random reward table over the 27 sequences")},
    default_reward="table",
    default_num_steps=8,
    decode=lambda x0: ["".join("abc"[int(i)] for i in row) for row in x0],
    metrics=_masked_metrics,
    extra={"toy": _MASKED},
)
