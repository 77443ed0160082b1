"""Small neural building blocks shared by the domain packs: a masked-diffusion transformer
denoiser, a generic training loop for it, and safetensors save/load with a JSON config."""

from .denoisers import MaskedTransformer, load_model, save_model
from .train import train_masked_diffusion

__all__ = ["MaskedTransformer", "load_model", "save_model", "train_masked_diffusion"]
