"""Diffusers adapters: a diffusers denoiser + scheduler (+ VAE, + prompt embeddings) as a
``GaussianProcess`` on the scheduler's own schedule and time grid.

A DDPM/DDIM-family scheduler holds the forward process ``x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε``
(``alphas_cumprod``) and what the UNet predicts (``prediction_type``: ε, x0 or v); a
``FlowMatchEulerDiscreteScheduler`` the rectified flow ``x_t = (1 − σ)·x0 + σ·ε`` with a
velocity ``v = ε − x0`` model and ``t = 1000σ``. That is all the reverse kernel needs:
``GaussianProcess`` turns the model output into ``x0_hat`` and takes DDIM-η steps (η = 1 the
DDPM-like posterior, η = 0 DDIM / the flow's Euler step). The scheduler's mutable state is never
used; ``process.timesteps(K)`` is its ``set_timesteps(K)`` grid (``timestep_spacing``,
``steps_offset``, ``shift``, μ from the image size for dynamic shifting) plus the clean time, and
DDIM's ``set_alpha_to_one=False`` ends at ᾱ_0 as diffusers does — so ancestral sampling with the
pipeline's seed reproduces the pipeline (``tests/test_diffusers_parity.py``).

- **Models.** UNets are called ``unet(x, timestep, ...)`` (LongTensor training indices on VP
  schedules); transformers taking ``hidden_states=`` (SD3, Sana) by keyword with the float
  ``timestep = t`` and ``pooled_projections``; Flux through ``FluxDenoiser`` (2×2-packed latents,
  image ids [0, row, col], zero text ids, ``timestep = t/1000``, the guidance embedding of
  guidance-distilled models, true CFG as a second call). The process state is always the
  unpacked latent (B, C, H, W), drawn by one ``randn`` of that shape as the pipelines do.
- **Latent diffusion**: with ``vae=`` the process lives in the VAE's latent space, scaled as in
  diffusers (``z = scaling_factor · (E(x) − shift)``). Rewards are defined on pixels, so wrap
  them with ``latent_reward(reward_fn, process)`` (or ``process.decode``), which decodes
  ``x0_hat``/``x0`` with ``x = D(z / scaling_factor + shift)`` before scoring; gradients flow
  through the decoder, so a differentiable pixel reward stays differentiable.
- **Classifier-free guidance**: with the prompt's and the negative prompt's conditioning
  (``encoder_hidden_states``, ``pooled_projections``, SDXL's ``added_cond_kwargs``) and
  ``guidance_scale`` w, ``out = out_u + w·(out_c − out_u)`` — one model call on the doubled batch
  ``[x; x]`` per step, ``[uncond; cond]`` as the pipelines order it. The guided output defines the
  "pretrained" kernel that SVDD and the other methods tilt. Each guided evaluation is counted as
  one nfe (it costs two model rows).
- UNets that also predict a variance (``out_channels = 2·in_channels``) have the extra
  channels dropped; the process uses the fixed DDPM/DDIM variances.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .gaussian import GaussianProcess
from .schedules import FlowSchedule, VPSchedule

__all__ = ["DiffusersDenoiser", "DiffusersProcess", "FluxDenoiser", "from_diffusers", "calculate_shift", "pack_latents",
           "unpack_latents", "latent_image_ids", "from_pipeline", "decode_latents",
           "encode_images", "latent_reward"]


def _expand(v, batch: int):
    """Conditioning (a tensor of batch 1 or ``batch``, or a dict of them) broadcast to ``batch``."""
    if isinstance(v, dict):
        return {k: _expand(x, batch) for k, x in v.items()}
    if not isinstance(v, Tensor) or v.dim() == 0:
        return v
    if v.shape[0] == batch:
        return v
    if v.shape[0] == 1:
        return v.expand(batch, *v.shape[1:])
    raise ValueError(f"prompt embeddings have batch {v.shape[0]} but the samples have batch {batch}; "
                     "pass one prompt (batch 1) or one per sample")


def _cat(u, c):
    if isinstance(c, dict):
        return {k: _cat(u[k], c[k]) for k in c}
    if isinstance(c, Tensor) and c.dim() > 0:
        return torch.cat([u, c])
    return c


def _to(v, device, dtype):
    if isinstance(v, dict):
        return {k: _to(x, device, dtype) for k, x in v.items()}
    if isinstance(v, Tensor) and v.is_floating_point():
        return v.to(device=device, dtype=dtype)
    return v.to(device) if isinstance(v, Tensor) else v


def _param_dtype(model, default: torch.dtype) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return default


def _keyword_call(model) -> bool:
    """Transformers (SD3, Sana, ...) take ``hidden_states=`` and ``timestep=`` by keyword."""
    import inspect

    try:
        params = list(inspect.signature(getattr(model, "forward", model)).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "hidden_states" and "timestep" in params


class DiffusersDenoiser(nn.Module):
    """``(x_t, timestep) -> model output`` with conditioning and classifier-free guidance.

    ``cond`` / ``uncond``: keyword arguments of the model for the prompt and the negative prompt
    (``encoder_hidden_states``, SD3's ``pooled_projections``, SDXL's ``added_cond_kwargs``), each
    tensor of batch 1 or B, broadcast over the batch. With ``guidance_scale != 1`` the negative
    runs in the same call on the batch ``[uncond; cond]``, as diffusers' pipelines do. UNets are
    called ``unet(x, timestep, **kw)``, transformers ``model(hidden_states=x, timestep=t, **kw)``.
    """

    def __init__(self, unet: nn.Module, *, encoder_hidden_states: Optional[Tensor] = None,
                 negative_encoder_hidden_states: Optional[Tensor] = None, guidance_scale: float = 1.0,
                 unet_kwargs: Optional[dict] = None, cond: Optional[dict] = None, uncond: Optional[dict] = None):
        super().__init__()
        self.unet = unet
        self.cond = dict(cond or {})
        self.uncond = dict(uncond or {})
        if encoder_hidden_states is not None:
            self.cond["encoder_hidden_states"] = encoder_hidden_states
        if negative_encoder_hidden_states is not None:
            self.uncond["encoder_hidden_states"] = negative_encoder_hidden_states
        self.encoder_hidden_states = self.cond.get("encoder_hidden_states")
        self.negative_encoder_hidden_states = self.uncond.get("encoder_hidden_states")
        self.guidance_scale = float(guidance_scale)
        self.unet_kwargs = dict(unet_kwargs or {})
        self.keyword = _keyword_call(unet)
        cfg = getattr(unet, "config", None)
        self.in_channels = getattr(cfg, "in_channels", None)
        self.out_channels = getattr(cfg, "out_channels", None)
        self.guided = bool(self.cond) and self.guidance_scale != 1.0
        if self.guided and set(self.uncond) != set(self.cond):
            missing = sorted(set(self.cond) - set(self.uncond))
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs the negative prompt's "
                             f"{', '.join(missing) or 'embeddings'} (negative_encoder_hidden_states= etc.: the embeddings "
                             "of the empty or negative prompt)")

    def _unet(self, x: Tensor, timestep: Tensor, kw: dict) -> Tensor:
        kwargs = {**self.unet_kwargs, **kw}
        if self.keyword:
            out = self.unet(hidden_states=x, timestep=timestep, **kwargs)
        else:
            out = self.unet(x, timestep, **kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.in_channels and self.out_channels == 2 * self.in_channels:  # learned variance: keep the mean part
            out = out[:, : self.in_channels]
        return out

    def forward(self, x_t: Tensor, timestep: Tensor) -> Tensor:
        dtype = _param_dtype(self.unet, x_t.dtype)
        x = x_t.to(dtype)
        B = x.shape[0]
        if timestep.is_floating_point():   # flow time t = 1000σ, as the pipelines pass it (float32)
            timestep = timestep.to(torch.float32)
        if not self.cond:
            return self._unet(x, timestep, {})
        cond = _expand(_to(self.cond, x.device, dtype), B)
        if not self.guided:
            return self._unet(x, timestep, cond)
        uncond = _expand(_to(self.uncond, x.device, dtype), B)
        out = self._unet(torch.cat([x, x]), torch.cat([timestep, timestep]), _cat(uncond, cond))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.guidance_scale * (out_cond - out_uncond)


def pack_latents(latents: Tensor) -> Tensor:
    """Flux packing: (B, C, H, W) -> (B, (H/2)(W/2), 4C), channel order (C, 2, 2) per token."""
    B, C, H, W = latents.shape
    x = latents.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // 2) * (W // 2), C * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of ``pack_latents`` for latents of size (height, width)."""
    B, _, D = tokens.shape
    x = tokens.view(B, height // 2, width // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, D // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """Flux image ids (H/2 · W/2, 3) = [0, row, col] on the packed grid."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxDenoiser(nn.Module):
    """A ``FluxTransformer2DModel`` as ``(x_t (B, C, H, W), t (B,)) -> velocity (B, C, H, W)``.

    The process state stays unpacked (so the prior is the pipeline's ``randn`` of the latents'
    shape and rewards decode it directly); each call packs 2×2 patches, passes image ids
    [0, row, col], zero text ids, ``timestep = t / 1000`` in the model dtype (the model multiplies
    by 1000) and, for guidance-distilled models (``guidance_embeds``), the guidance embedding.
    ``true_cfg_scale > 1`` with negative embeddings runs the negative prompt as a second call and
    combines ``neg + true_cfg_scale·(pos − neg)``, as ``FluxPipeline``."""

    def __init__(self, transformer: nn.Module, *, encoder_hidden_states: Tensor, pooled_projections: Tensor,
                 guidance: Optional[float] = 3.5, negative_encoder_hidden_states: Optional[Tensor] = None,
                 negative_pooled_projections: Optional[Tensor] = None, true_cfg_scale: float = 1.0,
                 unet_kwargs: Optional[dict] = None):
        super().__init__()
        self.unet = transformer
        self.encoder_hidden_states = encoder_hidden_states
        self.pooled_projections = pooled_projections
        self.negative_encoder_hidden_states = negative_encoder_hidden_states
        self.negative_pooled_projections = negative_pooled_projections
        self.guidance_embeds = bool(getattr(getattr(transformer, "config", None), "guidance_embeds", False))
        self.guidance = float(guidance) if (self.guidance_embeds and guidance is not None) else None
        if self.guidance_embeds and self.guidance is None:
            raise ValueError("this Flux transformer is guidance-distilled (guidance_embeds=True): pass guidance_scale=")
        self.true_cfg_scale = float(true_cfg_scale)
        self.true_cfg = self.true_cfg_scale > 1 and negative_encoder_hidden_states is not None
        if self.true_cfg and negative_pooled_projections is None:
            raise ValueError("true_cfg_scale > 1 needs negative_pooled_projections= as well")
        self.unet_kwargs = dict(unet_kwargs or {})
        self.guided = self.true_cfg

    def _call(self, tokens, timestep, guidance, emb, pooled, img_ids):
        txt_ids = torch.zeros(emb.shape[1], 3, device=tokens.device, dtype=tokens.dtype)
        out = self.unet(hidden_states=tokens, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                        encoder_hidden_states=emb, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
                        **self.unet_kwargs)
        return out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)

    def forward(self, x_t: Tensor, timestep: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        B, C, H, W = x_t.shape
        tokens = pack_latents(x_t.to(dtype))
        img_ids = latent_image_ids(H, W, x_t.device, dtype)
        t = timestep.to(x_t.device).expand(B).to(dtype) / 1000
        guidance = None
        if self.guidance is not None:
            guidance = torch.full([1], self.guidance, device=x_t.device, dtype=torch.float32).expand(B)
        emb = _expand(self.encoder_hidden_states.to(x_t.device, dtype), B)
        pooled = _expand(self.pooled_projections.to(x_t.device, dtype), B)
        out = self._call(tokens, t, guidance, emb, pooled, img_ids)
        if self.true_cfg:
            n_emb = _expand(self.negative_encoder_hidden_states.to(x_t.device, dtype), B)
            n_pooled = _expand(self.negative_pooled_projections.to(x_t.device, dtype), B)
            neg = self._call(tokens, t, guidance, n_emb, n_pooled, img_ids)
            out = neg + self.true_cfg_scale * (out - neg)
        return unpack_latents(out, H, W)


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


def is_flow_scheduler(scheduler) -> bool:
    """A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler`` and kin): sigmas, no ᾱ table."""
    return "FlowMatch" in type(scheduler).__name__ or (
        getattr(scheduler, "alphas_cumprod", None) is None and _config_get(scheduler, "shift", None) is not None
        and hasattr(scheduler, "set_timesteps"))


def is_flux_transformer(model) -> bool:
    cfg = getattr(model, "config", None)
    return "Flux" in type(model).__name__ or (cfg is not None and hasattr(cfg, "axes_dims_rope")
                                              and hasattr(cfg, "guidance_embeds"))


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """μ of the resolution-dependent shift, linear in the number of image tokens (Flux, SD3)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flow_grid(scheduler, *, image_seq_len: Optional[int] = None, flux: bool = False,
              max_shift_default: float = 1.16) -> Callable[[int], Tensor]:
    """``K -> (K + 1,)`` times: the scheduler's own ``set_timesteps(K)`` on a copy (its state is
    never touched), as the pipeline calls it — Flux with ``sigmas = linspace(1, 1/K, K)`` and μ
    from the image size, SD3 with μ only when the scheduler shifts dynamically — plus t = 0."""
    import copy

    if _config_get(scheduler, "invert_sigmas", False):
        raise ValueError("schedulers with invert_sigmas=True (Mochi) are not supported")
    dynamic = bool(_config_get(scheduler, "use_dynamic_shifting", False))
    mu = None
    if (flux or dynamic) and image_seq_len is not None:
        mu = calculate_shift(image_seq_len, _config_get(scheduler, "base_image_seq_len", 256) or 256,
                             _config_get(scheduler, "max_image_seq_len", 4096) or 4096,
                             _config_get(scheduler, "base_shift", 0.5) or 0.5,
                             _config_get(scheduler, "max_shift", max_shift_default) or max_shift_default)
    if dynamic and mu is None:
        raise ValueError("this scheduler shifts dynamically (use_dynamic_shifting=True): the image size is needed")
    flow_sigmas = bool(_config_get(scheduler, "use_flow_sigmas", False))

    def grid(num_steps: int) -> Tensor:
        import numpy as np

        sched = copy.deepcopy(scheduler)
        kwargs = {}
        if mu is not None:
            kwargs["mu"] = mu
        if flux and not flow_sigmas:
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), **kwargs)
        else:
            sched.set_timesteps(num_steps, **kwargs)
        ts = torch.as_tensor(sched.timesteps).detach().double().cpu().flatten()
        return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])

    return grid


def vp_grid(scheduler) -> Callable[[int], Tensor]:
    """``K -> (K + 1,)`` times ``n + 1`` for diffusers' DDPM/DDIM ``set_timesteps(K)`` grid
    (``timestep_spacing``, ``steps_offset``), plus t = 0. diffusers' ``DDIMScheduler.step`` moves
    to ``n − N // K``; where that is not the next grid time (spacing "linspace", or "trailing"
    with K not dividing N) svdd follows the grid."""
    N = int(len(scheduler.alphas_cumprod))
    spacing = _config_get(scheduler, "timestep_spacing", "leading") or "leading"
    offset = int(_config_get(scheduler, "steps_offset", 0) or 0)
    return VPSchedule(torch.ones(N), timestep_spacing=spacing, steps_offset=offset).timesteps


def from_diffusers(unet, scheduler, *, vae=None, encoder_hidden_states: Optional[Tensor] = None,
                   negative_encoder_hidden_states: Optional[Tensor] = None, guidance_scale: Optional[float] = None,
                   eta: float = 1.0, sample_shape: Optional[Sequence[int]] = None,
                   clip_sample: Optional[float] = None, unet_kwargs: Optional[dict] = None,
                   decode_batch_size: Optional[int] = None, device=None,
                   use_clipped_model_output: Optional[bool] = None, pooled_projections: Optional[Tensor] = None,
                   negative_pooled_projections: Optional[Tensor] = None, added_cond_kwargs: Optional[dict] = None,
                   negative_added_cond_kwargs: Optional[dict] = None, true_cfg_scale: float = 1.0,
                   height: Optional[int] = None, width: Optional[int] = None,
                   timestep_grid: str = "scheduler", renoise: Optional[bool] = None) -> DiffusersProcess:
    """Build a ``GaussianProcess`` from a diffusers model and scheduler.

    Parameters
    ----------
    unet : the denoiser: ``UNet2DModel`` / ``UNet2DConditionModel`` (called ``unet(x, timestep, ...)``),
        ``SD3Transformer2DModel`` or any transformer taking ``hidden_states=`` / ``timestep=``
        (called by keyword, ``timestep`` the float time ``t = 1000σ``), or ``FluxTransformer2DModel``
        (packed 2×2 latents, image/text ids, ``timestep = t/1000``, guidance embedding)
    scheduler : a DDPM/DDIM-family scheduler with ``alphas_cumprod`` (DDPM, DDIM, PNDM, Euler, ...;
        its ``prediction_type``; for pixel models its ``clip_sample`` (range ``clip_sample_range``)
        and ``thresholding`` applied inside the step as diffusers does), or
        ``FlowMatchEulerDiscreteScheduler`` (rectified flow, velocity prediction; static
        ``shift`` and dynamic shifting with μ from the image size as the pipelines compute it)
    vae : ``AutoencoderKL`` for latent diffusion (rewards then decode through it)
    encoder_hidden_states : prompt embeddings (1 or B, L, D) for conditional models
    pooled_projections : SD3 / Flux pooled prompt embeddings (1 or B, D)
    added_cond_kwargs : SDXL's ``{"text_embeds": pooled, "time_ids": ids}``
    negative_* : the negative (or empty) prompt's, for classifier-free guidance
    guidance_scale : classifier-free guidance weight (default 1 = none); for Flux the guidance
        embedding of guidance-distilled models (default 3.5) — its true CFG is ``true_cfg_scale``
    eta : 1 = DDPM posterior (stochastic, what SVDD/SMC need), 0 = DDIM / the flow's Euler step
    sample_shape : (C, H, W) of x_t (unpacked latents for Flux); default from the model config,
        or from ``height`` / ``width`` in pixels and the VAE's scale factor
    use_clipped_model_output : with clipping, whether the step's direction term uses ε̂ recomputed
        from the clipped x0 (diffusers' DDPM step) or the network's own ε̂ (diffusers' DDIM
        default). ``None``: as diffusers' pipelines do — True for a DDPM scheduler at ``eta = 1``
        (``DDPMPipeline``), False otherwise (``DDIMPipeline``, ``DDIMScheduler.step``)
    renoise : each step re-noises fully, x_t' = a'·x0_hat + s'·z (``eta`` unused); default: the
        flow scheduler's ``stochastic_sampling`` (LTX-Video's sampler)
    timestep_grid : ``"scheduler"`` (default): ``process.timesteps(K)`` is the scheduler's own
        ``set_timesteps(K)`` grid plus the clean time, so ancestral sampling reproduces the
        pipeline for the same seed; ``"trailing"``: svdd's evenly spaced grid from T
    """
    flow = is_flow_scheduler(scheduler)
    flux = is_flux_transformer(unet)
    if not flow and getattr(scheduler, "alphas_cumprod", None) is None:
        raise ValueError(f"{type(scheduler).__name__} has neither alphas_cumprod nor flow sigmas; use a DDPM/DDIM-family "
                         "scheduler or FlowMatchEulerDiscreteScheduler")
    if flux and not flow:
        raise ValueError("a Flux transformer needs a FlowMatchEulerDiscreteScheduler")
    if timestep_grid not in ("scheduler", "trailing"):
        raise ValueError(f"timestep_grid must be 'scheduler' or 'trailing', got {timestep_grid!r}")
    prediction_type = "flow" if flow else (_config_get(scheduler, "prediction_type", "epsilon") or "epsilon")
    if renoise is None:
        renoise = bool(flow and _config_get(scheduler, "stochastic_sampling", False))
    variance_type = _config_get(scheduler, "variance_type", None)
    if not flow and variance_type not in (None, "fixed_small") and float(eta) > 0:
        warnings.warn(f"the scheduler's variance_type={variance_type!r} is not used: svdd's steps use the posterior "
                      "variance (fixed_small) scaled by eta", UserWarning, stacklevel=2)
    threshold_options = {}
    if not flow:
        if clip_sample is None and vae is None and _config_get(scheduler, "clip_sample", False):
            clip_sample = float(_config_get(scheduler, "clip_sample_range", 1.0) or 1.0)
        if vae is None and _config_get(scheduler, "thresholding", False):
            threshold_options = {"thresholding": True,
                                 "dynamic_thresholding_ratio": float(_config_get(scheduler, "dynamic_thresholding_ratio", 0.995)),
                                 "sample_max_value": float(_config_get(scheduler, "sample_max_value", 1.0))}
        if use_clipped_model_output is None:
            use_clipped_model_output = type(scheduler).__name__.startswith("DDPM") and float(eta) == 1.0
    cfg = getattr(unet, "config", None)
    text_conditioned = getattr(cfg, "cross_attention_dim", None) is not None or \
        getattr(cfg, "joint_attention_dim", None) is not None
    if text_conditioned and encoder_hidden_states is None:
        raise ValueError("this model is text-conditioned: pass encoder_hidden_states= (prompt embeddings) or use "
                         "svdd.from_pipeline(pipe, prompt=...)")
    if getattr(cfg, "pooled_projection_dim", None) is not None and pooled_projections is None:
        raise ValueError("this transformer needs pooled_projections= (the pooled prompt embeddings)")
    if device is None:
        try:
            device = next(unet.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    if sample_shape is None:
        channels = getattr(cfg, "in_channels", None)
        if flux and channels is not None:
            channels //= 4
        size = getattr(cfg, "sample_size", None)
        if flux and size is None:
            size = 128                       # FluxPipeline's default_sample_size (1024 px at scale 8)
        h, w = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else (None, None))
        if height is not None:
            h = int(height) // (vae_scale * (2 if flux else 1)) * (2 if flux else 1)
        if width is not None:
            w = int(width) // (vae_scale * (2 if flux else 1)) * (2 if flux else 1)
        if h is None or w is None or channels is None:
            raise ValueError("cannot infer sample_shape from the model config; pass sample_shape=(C, H, W)")
        sample_shape = (channels, h, w)
    if flux:
        if any(v is not None for v in (clip_sample, added_cond_kwargs)):
            raise ValueError("Flux takes no clip_sample / added_cond_kwargs")
        denoiser = FluxDenoiser(unet, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections,
                                guidance=3.5 if guidance_scale is None else guidance_scale,
                                negative_encoder_hidden_states=negative_encoder_hidden_states,
                                negative_pooled_projections=negative_pooled_projections,
                                true_cfg_scale=true_cfg_scale, unet_kwargs=unet_kwargs)
    else:
        cond, uncond = {}, {}
        for key, pos, neg in (("encoder_hidden_states", encoder_hidden_states, negative_encoder_hidden_states),
                              ("pooled_projections", pooled_projections, negative_pooled_projections),
                              ("added_cond_kwargs", added_cond_kwargs, negative_added_cond_kwargs)):
            if pos is not None:
                cond[key] = pos
            if neg is not None:
                uncond[key] = neg
        scale = 1.0 if guidance_scale is None else float(guidance_scale)
        denoiser = DiffusersDenoiser(unet, guidance_scale=scale, unet_kwargs=unet_kwargs, cond=cond,
                                     uncond=uncond if scale != 1.0 else None)
    common = dict(vae=vae, decode_batch_size=decode_batch_size, prediction_type=prediction_type, eta=eta,
                  sample_shape=sample_shape, device=device, renoise=bool(renoise))
    if flow:
        N = int(_config_get(scheduler, "num_train_timesteps", 1000) or 1000)
        C, h, w = sample_shape[-3:] if len(sample_shape) >= 3 else (None, None, None)
        patch = int(getattr(cfg, "patch_size", 1) or 1)
        seq_len = None
        if h is not None:
            seq_len = (h // 2) * (w // 2) if flux else (h // patch) * (w // patch)
        grid = flow_grid(scheduler, image_seq_len=seq_len, flux=flux) if timestep_grid == "scheduler" else None
        return DiffusersProcess(denoiser, None, schedule=FlowSchedule(N), grid=grid, **common)
    final = getattr(scheduler, "final_alpha_cumprod", None)
    final = 1.0 if final is None else float(final)
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu()
    schedule = VPSchedule(alphas_cumprod, final_alpha_cumprod=final)
    grid = vp_grid(scheduler) if timestep_grid == "scheduler" else None
    return DiffusersProcess(denoiser, None, schedule=schedule, grid=grid, clip_sample=clip_sample,
                            use_clipped_model_output=bool(use_clipped_model_output), **threshold_options, **common)


def pipeline_family(pipe) -> str:
    """"pixel" (DDPM/DDIM), "sd", "sdxl", "sd3" or "flux", from the pipeline's components."""
    if getattr(pipe, "transformer", None) is not None:
        return "flux" if is_flux_transformer(pipe.transformer) else "sd3"
    if getattr(pipe, "unet", None) is None:
        raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer; build the process with "
                         "svdd.from_diffusers(model, scheduler, ...) instead")
    if getattr(pipe, "vae", None) is None:
        return "pixel"
    cfg = getattr(pipe.unet, "config", None)
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(cfg, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd"


_DEFAULT_GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "sd3": 7.0, "flux": 3.5}


def from_pipeline(pipe, prompt: Optional[str | list[str]] = None, *, negative_prompt: Optional[str] = None,
                  guidance_scale: Optional[float] = None, height: Optional[int] = None, width: Optional[int] = None,
                  eta: float = 1.0, prompt_embeds: Optional[Tensor] = None,
                  negative_prompt_embeds: Optional[Tensor] = None, pooled_prompt_embeds: Optional[Tensor] = None,
                  negative_pooled_prompt_embeds: Optional[Tensor] = None, true_cfg_scale: float = 1.0,
                  device=None, **kwargs) -> DiffusersProcess:
    """Build a process from a loaded pipeline: ``DDPMPipeline``/``DDIMPipeline`` (pixel),
    ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` (added conditioning: pooled text
    embeddings and the (H, W, 0, 0, H, W) time ids), ``StableDiffusion3Pipeline`` and
    ``FluxPipeline`` (flow models). Prompts go through the pipeline's own ``encode_prompt``, or
    pass ``prompt_embeds`` (and the pooled / negative ones) directly.

    ``guidance_scale`` defaults to the pipeline's own (SD 7.5, SDXL 5, SD3 7; Flux: the guidance
    embedding, 3.5 — its true CFG is ``true_cfg_scale`` with a negative prompt). ``height`` /
    ``width`` are in pixels. The time grid is the pipeline scheduler's ``set_timesteps`` grid."""
    family = pipeline_family(pipe)
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        raise ValueError(f"{type(pipe).__name__} has no scheduler")
    model = pipe.transformer if family in ("sd3", "flux") else pipe.unet
    vae = getattr(pipe, "vae", None)
    if device is None:
        device = next(model.parameters()).device
    if family == "pixel":
        if prompt is not None or prompt_embeds is not None:
            raise ValueError(f"{type(pipe).__name__} is unconditional; drop prompt=")
        return from_diffusers(model, scheduler, eta=eta, device=device, **kwargs)
    guidance_scale = _DEFAULT_GUIDANCE[family] if guidance_scale is None else float(guidance_scale)
    do_cfg = (true_cfg_scale > 1 and (negative_prompt is not None or negative_prompt_embeds is not None)) \
        if family == "flux" else guidance_scale > 1.0
    if prompt_embeds is None:
        if prompt is None:
            raise ValueError("a text-conditioned pipeline needs prompt= (or prompt_embeds=)")
        if not hasattr(pipe, "encode_prompt"):
            raise ValueError(f"{type(pipe).__name__} has no encode_prompt; pass prompt_embeds= instead")
        if family == "sd":
            prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
                prompt, device, 1, do_cfg, negative_prompt, negative_prompt_embeds=negative_prompt_embeds)
        elif family == "sdxl":
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = \
                pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                   do_classifier_free_guidance=do_cfg, negative_prompt=negative_prompt)
        elif family == "sd3":
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = \
                pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device=device,
                                   num_images_per_prompt=1, do_classifier_free_guidance=do_cfg,
                                   negative_prompt=negative_prompt)
        else:  # flux
            prompt_embeds, pooled_prompt_embeds, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                                        num_images_per_prompt=1)
            if do_cfg and negative_prompt is not None:
                negative_prompt_embeds, negative_pooled_prompt_embeds, _ = pipe.encode_prompt(
                    prompt=negative_prompt, prompt_2=None, device=device, num_images_per_prompt=1)
    if family != "flux" and do_cfg and negative_prompt_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative_prompt_embeds= (or a prompt, so the pipeline encodes '')")
    if family in ("sdxl", "sd3", "flux") and pooled_prompt_embeds is None:
        raise ValueError(f"a {family} pipeline needs pooled_prompt_embeds= with prompt_embeds=")
    scale = getattr(pipe, "vae_scale_factor", None) or 2 ** (len(vae.config.block_out_channels) - 1)
    cfg = model.config
    if family == "flux":
        default = getattr(pipe, "default_sample_size", 128) * scale
        h_px, w_px = height or default, width or default
        C = cfg.in_channels // 4
        h, w = 2 * (int(h_px) // (scale * 2)), 2 * (int(w_px) // (scale * 2))
        return from_diffusers(model, scheduler, vae=vae, encoder_hidden_states=prompt_embeds,
                              pooled_projections=pooled_prompt_embeds,
                              negative_encoder_hidden_states=negative_prompt_embeds if do_cfg else None,
                              negative_pooled_projections=negative_pooled_prompt_embeds if do_cfg else None,
                              guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale, eta=eta,
                              sample_shape=(C, h, w), device=device, **kwargs)
    size = cfg.sample_size
    h = (int(height) // scale) if height else (size if isinstance(size, int) else size[0])
    w = (int(width) // scale) if width else (size if isinstance(size, int) else size[1])
    extra = {}
    if family == "sd3":
        extra = dict(pooled_projections=pooled_prompt_embeds,
                     negative_pooled_projections=negative_pooled_prompt_embeds if do_cfg else None)
    elif family == "sdxl":
        ids = torch.tensor([[h * scale, w * scale, 0, 0, h * scale, w * scale]], dtype=prompt_embeds.dtype,
                           device=device)
        extra = dict(added_cond_kwargs={"text_embeds": pooled_prompt_embeds, "time_ids": ids},
                     negative_added_cond_kwargs=({"text_embeds": negative_pooled_prompt_embeds, "time_ids": ids}
                                                 if do_cfg else None))
    return from_diffusers(model, scheduler, vae=vae, encoder_hidden_states=prompt_embeds,
                          negative_encoder_hidden_states=negative_prompt_embeds if do_cfg else None,
                          guidance_scale=guidance_scale if do_cfg else 1.0, eta=eta,
                          sample_shape=(cfg.in_channels, h, w), device=device, **extra, **kwargs)


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
