"""Diffusion processes: the pretrained reverse kernels as distributions."""

from .gaussian import GaussianProcess, GaussianTransition
from .masked import CategoricalTransition, MaskedProcess
from .schedules import cosine_alphas_cumprod, linear_beta_alphas_cumprod
from .transformers import TransformersMaskedProcess, from_transformers

__all__ = ["GaussianProcess", "GaussianTransition", "MaskedProcess", "CategoricalTransition",
           "linear_beta_alphas_cumprod", "cosine_alphas_cumprod", "from_diffusers",
           "from_transformers", "TransformersMaskedProcess"]


def from_diffusers(*args, **kwargs):
    """Build a ``GaussianProcess`` from diffusers parts (see ``svdd.process.adapters``)."""
    from .adapters import from_diffusers as _impl

    return _impl(*args, **kwargs)
