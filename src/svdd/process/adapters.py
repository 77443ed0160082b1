"""Diffusers adapters: any diffusers UNet + scheduler (+ VAE, + prompt embeddings) as a
``GaussianProcess``.

A diffusers scheduler holds the forward process ``q(x_t | x0) = N(sqrt(ᾱ_t)·x0, (1 − ᾱ_t)·I)``
(``scheduler.alphas_cumprod``) and what the UNet predicts (``config.prediction_type``: ε, x0 or
v). That is all the reverse kernel needs: ``GaussianProcess`` turns the UNet output into
``x0_hat`` and takes DDPM (``eta=1``) or DDIM (``eta=0``) steps on any sub-grid — the
scheduler's own mutable state (``set_timesteps``) is never used.

- **Latent diffusion**: with ``vae=`` the process lives in the VAE's latent space, scaled as in
  diffusers (``z = scaling_factor · (E(x) − shift)``). Rewards are defined on pixels, so wrap
  them with ``latent_reward(reward_fn, process)`` (or ``process.decode``), which decodes
  ``x0_hat``/``x0`` with ``x = D(z / scaling_factor + shift)`` before scoring; gradients flow
  through the decoder, so a differentiable pixel reward stays differentiable.
- **Classifier-free guidance**: with ``encoder_hidden_states`` (cond) and
  ``negative_encoder_hidden_states`` (uncond, e.g. the empty prompt) and ``guidance_scale`` w,
  ``ε̂ = ε̂_u + w·(ε̂_c − ε̂_u)`` — one UNet call on the doubled batch ``[x; x]`` per step. The
  guided ``ε̂`` defines the "pretrained" kernel that SVDD and the other methods tilt. Each
  guided evaluation is counted as one nfe (it costs two UNet rows).
- UNets that also predict a variance (``out_channels = 2·in_channels``) have the extra
  channels dropped; the process uses the fixed DDPM/DDIM variances.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .gaussian import GaussianProcess

__all__ = ["DiffusersDenoiser", "DiffusersProcess", "from_diffusers", "from_pipeline", "decode_latents",
           "encode_images", "latent_reward"]


class DiffusersDenoiser(nn.Module):
    """``(x_t, timestep) -> UNet output`` with conditioning and classifier-free guidance.

    ``encoder_hidden_states`` (1 or B, L, D) is broadcast over the batch; with
    ``guidance_scale != 1`` the unconditional embeddings are run in the same call.
    """

    def __init__(self, unet: nn.Module, *, encoder_hidden_states: Optional[Tensor] = None,
                 negative_encoder_hidden_states: Optional[Tensor] = None, guidance_scale: float = 1.0,
                 unet_kwargs: Optional[dict] = None):
        super().__init__()
        self.unet = unet
        self.encoder_hidden_states = encoder_hidden_states
        self.negative_encoder_hidden_states = negative_encoder_hidden_states
        self.guidance_scale = float(guidance_scale)
        self.unet_kwargs = dict(unet_kwargs or {})
        cfg = getattr(unet, "config", None)
        self.in_channels = getattr(cfg, "in_channels", None)
        self.out_channels = getattr(cfg, "out_channels", None)
        self.guided = encoder_hidden_states is not None and self.guidance_scale != 1.0
        if self.guided and negative_encoder_hidden_states is None:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs negative_encoder_hidden_states= "
                             "(the embeddings of the empty or negative prompt)")

    @staticmethod
    def _expand(emb: Tensor, batch: int) -> Tensor:
        if emb.shape[0] == batch:
            return emb
        if emb.shape[0] == 1:
            return emb.expand(batch, *emb.shape[1:])
        raise ValueError(f"prompt embeddings have batch {emb.shape[0]} but the samples have batch {batch}; "
                         "pass one prompt (batch 1) or one per sample")

    def _unet(self, x: Tensor, timestep: Tensor, emb: Optional[Tensor]) -> Tensor:
        kwargs = dict(self.unet_kwargs)
        if emb is not None:
            kwargs["encoder_hidden_states"] = emb
        out = self.unet(x, timestep, **kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.in_channels and self.out_channels == 2 * self.in_channels:  # learned variance: keep the mean part
            out = out[:, : self.in_channels]
        return out

    def forward(self, x_t: Tensor, timestep: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        x = x_t.to(dtype)
        B = x.shape[0]
        if self.encoder_hidden_states is None:
            return self._unet(x, timestep, None)
        cond = self._expand(self.encoder_hidden_states.to(device=x.device, dtype=dtype), B)
        if not self.guided:
            return self._unet(x, timestep, cond)
        uncond = self._expand(self.negative_encoder_hidden_states.to(device=x.device, dtype=dtype), B)
        out = self._unet(torch.cat([x, x]), torch.cat([timestep, timestep]), torch.cat([uncond, cond]))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.guidance_scale * (out_cond - out_uncond)


def _vae_factors(vae) -> tuple[float, float]:
    cfg = vae.config
    scaling = getattr(cfg, "scaling_factor", None) or 1.0
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return float(scaling), float(shift)


def decode_latents(vae, latents: Tensor, *, max_batch_size: Optional[int] = None) -> Tensor:
    """VAE latents (scaled as the UNet sees them) -> images (B, C, H, W) in about [-1, 1]."""
    scaling, shift = _vae_factors(vae)
    dtype = next(vae.parameters()).dtype
    z = latents / scaling + shift
    step = max_batch_size or z.shape[0]
    parts = []
    for i in range(0, z.shape[0], max(step, 1)):
        out = vae.decode(z[i:i + step].to(dtype))
        out = getattr(out, "sample", out)
        parts.append(out[0] if isinstance(out, (tuple, list)) else out)
    return torch.cat(parts).to(latents.dtype)


def encode_images(vae, images: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Images in [-1, 1] -> scaled latents (a draw from the VAE posterior; its mode without ``generator``)."""
    scaling, shift = _vae_factors(vae)
    dist = vae.encode(images.to(next(vae.parameters()).dtype)).latent_dist
    z = dist.sample(generator) if generator is not None else dist.mode()
    return ((z - shift) * scaling).to(images.dtype)


class DiffusersProcess(GaussianProcess):
    """A ``GaussianProcess`` built from diffusers parts; ``decode(x0)`` gives pixels in [-1, 1]
    (the VAE decoder for latent models, the identity for pixel models)."""

    def __init__(self, denoiser: DiffusersDenoiser, alphas_cumprod, *, vae=None, decode_batch_size=None, **kwargs):
        super().__init__(denoiser, alphas_cumprod, **kwargs)
        self.vae = vae
        self.decode_batch_size = decode_batch_size

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    def decode(self, x0: Tensor) -> Tensor:
        if self.vae is None:
            return x0
        return decode_latents(self.vae, x0, max_batch_size=self.decode_batch_size)


def _config_get(scheduler, name, default=None):
    cfg = getattr(scheduler, "config", None)
    if cfg is not None and hasattr(cfg, name):
        return getattr(cfg, name)
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(scheduler, name, default)


def from_diffusers(unet, scheduler, *, vae=None, encoder_hidden_states: Optional[Tensor] = None,
                   negative_encoder_hidden_states: Optional[Tensor] = None, guidance_scale: float = 1.0,
                   eta: float = 1.0, sample_shape: Optional[Sequence[int]] = None,
                   clip_sample: Optional[float] = None, unet_kwargs: Optional[dict] = None,
                   decode_batch_size: Optional[int] = None, device=None,
                   use_clipped_model_output: Optional[bool] = None) -> DiffusersProcess:
    """Build a ``GaussianProcess`` from a diffusers UNet and scheduler.

    Parameters
    ----------
    unet : ``UNet2DModel`` / ``UNet2DConditionModel`` (or any module called ``unet(x, timestep, ...)``)
    scheduler : any diffusers scheduler with ``alphas_cumprod`` (DDPM, DDIM, PNDM, Euler, ...);
        its ``prediction_type`` is used; for pixel models its ``clip_sample`` (range
        ``clip_sample_range``) and ``thresholding`` (dynamic thresholding with
        ``dynamic_thresholding_ratio``, ``sample_max_value``) are applied to x0_hat inside the step
        as diffusers does
    vae : ``AutoencoderKL`` for latent diffusion (rewards then decode through it)
    encoder_hidden_states : prompt embeddings (1 or B, L, D) for conditional UNets
    negative_encoder_hidden_states, guidance_scale : classifier-free guidance
    eta : 1 = DDPM posterior (stochastic, what SVDD/SMC need), 0 = DDIM
    sample_shape : (C, H, W) of x_t; default from ``unet.config`` (latent size for latent UNets)
    use_clipped_model_output : with clipping, whether the step's direction term uses ε̂ recomputed
        from the clipped x0 (diffusers' DDPM step) or the network's own ε̂ (diffusers' DDIM
        default). ``None``: as diffusers' pipelines do — True for a DDPM scheduler at ``eta = 1``
        (``DDPMPipeline``), False otherwise (``DDIMPipeline``, ``DDIMScheduler.step``)
    """
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod; use a DDPM/DDIM-family scheduler "
                         "(e.g. DDPMScheduler.from_config(scheduler.config))")
    prediction_type = _config_get(scheduler, "prediction_type", "epsilon") or "epsilon"
    if clip_sample is None and vae is None and _config_get(scheduler, "clip_sample", False):
        clip_sample = float(_config_get(scheduler, "clip_sample_range", 1.0) or 1.0)
    thresholding = bool(vae is None and _config_get(scheduler, "thresholding", False))
    threshold_options = {}
    if thresholding:
        threshold_options = {"thresholding": True,
                             "dynamic_thresholding_ratio": float(_config_get(scheduler, "dynamic_thresholding_ratio", 0.995)),
                             "sample_max_value": float(_config_get(scheduler, "sample_max_value", 1.0))}
    if use_clipped_model_output is None:
        use_clipped_model_output = type(scheduler).__name__.startswith("DDPM") and float(eta) == 1.0
    if getattr(getattr(unet, "config", None), "cross_attention_dim", None) is not None and encoder_hidden_states is None:
        raise ValueError("this UNet is text-conditioned: pass encoder_hidden_states= (prompt embeddings) or use "
                         "svdd.from_pipeline(pipe, prompt=...)")
    if sample_shape is None:
        cfg = getattr(unet, "config", None)
        size = getattr(cfg, "sample_size", None)
        channels = getattr(cfg, "in_channels", None)
        if size is None or channels is None:
            raise ValueError("cannot infer sample_shape from the UNet config; pass sample_shape=(C, H, W)")
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        sample_shape = (channels, h, w)
    if device is None:
        try:
            device = next(unet.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
    denoiser = DiffusersDenoiser(unet, encoder_hidden_states=encoder_hidden_states,
                                 negative_encoder_hidden_states=negative_encoder_hidden_states,
                                 guidance_scale=guidance_scale, unet_kwargs=unet_kwargs)
    return DiffusersProcess(denoiser, torch.as_tensor(alphas_cumprod).detach().cpu(), vae=vae,
                            decode_batch_size=decode_batch_size, prediction_type=prediction_type, eta=eta,
                            clip_sample=clip_sample, sample_shape=sample_shape, device=device,
                            use_clipped_model_output=bool(use_clipped_model_output), **threshold_options)


def from_pipeline(pipe, prompt: Optional[str | list[str]] = None, *, negative_prompt: Optional[str] = None,
                  guidance_scale: Optional[float] = None, height: Optional[int] = None, width: Optional[int] = None,
                  eta: float = 1.0, prompt_embeds: Optional[Tensor] = None,
                  negative_prompt_embeds: Optional[Tensor] = None, device=None, **kwargs) -> DiffusersProcess:
    """Build a process from a loaded pipeline: ``DDPMPipeline``/``DDIMPipeline`` (pixel) or a
    ``StableDiffusionPipeline``-like one (latent + text: ``vae``, ``text_encoder``, ``encode_prompt``).

    ``guidance_scale`` defaults to 7.5 for text pipelines (1 = no guidance)."""
    unet = getattr(pipe, "unet", None)
    scheduler = getattr(pipe, "scheduler", None)
    if unet is None or scheduler is None:
        raise ValueError(f"{type(pipe).__name__} has no unet/scheduler; build the process with "
                         "svdd.from_diffusers(unet, scheduler, ...) instead")
    vae = getattr(pipe, "vae", None)
    if device is None:
        device = next(unet.parameters()).device
    if vae is None:  # pixel pipeline
        if prompt is not None:
            raise ValueError(f"{type(pipe).__name__} is unconditional; drop prompt=")
        return from_diffusers(unet, scheduler, eta=eta, device=device, **kwargs)
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError("SDXL-style pipelines need added conditioning; pass its UNet to svdd.from_diffusers "
                         "with unet_kwargs={'added_cond_kwargs': ...}")
    guidance_scale = 7.5 if guidance_scale is None else float(guidance_scale)
    do_cfg = guidance_scale != 1.0
    if prompt_embeds is None:
        if prompt is None:
            raise ValueError("a text-conditioned pipeline needs prompt= (or prompt_embeds=)")
        if not hasattr(pipe, "encode_prompt"):
            raise ValueError(f"{type(pipe).__name__} has no encode_prompt; pass prompt_embeds= instead")
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
            prompt, device, 1, do_cfg, negative_prompt, negative_prompt_embeds=negative_prompt_embeds)
    if do_cfg and negative_prompt_embeds is None:
        raise ValueError("guidance_scale != 1 needs negative_prompt_embeds= (or a prompt, so the pipeline encodes '')")
    scale = getattr(pipe, "vae_scale_factor", 2 ** (len(vae.config.block_out_channels) - 1))
    size = unet.config.sample_size
    h = (height // scale) if height else (size if isinstance(size, int) else size[0])
    w = (width // scale) if width else (size if isinstance(size, int) else size[1])
    return from_diffusers(unet, scheduler, vae=vae, encoder_hidden_states=prompt_embeds,
                          negative_encoder_hidden_states=negative_prompt_embeds if do_cfg else None,
                          guidance_scale=guidance_scale, eta=eta, sample_shape=(unet.config.in_channels, h, w),
                          device=device, **kwargs)


def latent_reward(reward_fn: Callable[[Tensor], Tensor], process) -> Callable[[Tensor], Tensor]:
    """A pixel-space reward as a reward on the process's samples (decodes latents; identity
    for pixel processes). Keeps ``differentiable``, ``name`` and ``invalid_value``."""
    if not getattr(process, "is_latent", False):
        return reward_fn

    def reward(x0: Tensor) -> Tensor:
        return reward_fn(process.decode(x0))

    reward.differentiable = bool(getattr(reward_fn, "differentiable", False))
    reward.name = getattr(reward_fn, "name", getattr(reward_fn, "__name__", "reward"))
    if getattr(reward_fn, "invalid_value", None) is not None:
        reward.invalid_value = reward_fn.invalid_value
    return reward
