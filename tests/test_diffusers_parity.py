"""Parity with diffusers: for the same generator seed, svdd's ancestral sampling reproduces the
pipeline's own output to <= 1e-4 on [0, 1] images.

Components are tiny and random, built from config in diffusers' own test style (offline).
``DDPMPipeline`` and ``DDIMPipeline`` are run themselves. The text pipelines (SD, SDXL, SD3,
Flux) need ``transformers`` to exist at all (without it diffusers exports dummies), which the
project environment lacks, so for those each ``*_call_loop_parity`` test runs the scheduler +
model loop exactly as that pipeline's ``__call__`` runs it with prompt embeddings passed in
(latents from ``randn_tensor`` of the latents' shape, CFG on ``[uncond; cond]``,
``scheduler.step`` with the generator, the VAE decode and ``postprocess``'s
(x/2 + 0.5).clamp(0, 1)), and drives ``from_pipeline`` on a stand-in with the pipeline's
components. Where ``transformers`` is installed, the ``*_pipeline_itself`` tests build the real
pipelines (no text encoders or tokenizers: prompt embeddings passed in) and compare with them
(checked with transformers 5.24.0: all four at ≤ 5.1e-7); elsewhere they skip.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

import svdd  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from svdd.process.adapters import calculate_shift, decode_latents, pack_latents, unpack_latents  # noqa: E402

TOL = 1e-4


def _mean(x):
    return x.flatten(1).mean(1)


def to_image(x):
    """diffusers' postprocess to [0, 1]."""
    return (x / 2 + 0.5).clamp(0, 1)


def svdd_images(process, num_samples, num_steps, seed):
    res = svdd.sample(process, _mean, method="ancestral", num_samples=num_samples, num_steps=num_steps,
                      generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return to_image(process.decode(res.x0))


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def tiny_vae(latent_channels=4, seed=1, **kw):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(block_out_channels=(4,), layers_per_block=1, latent_channels=latent_channels,
                                   norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, **kw).eval()


SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


# -- the time grid is the scheduler's own ---------------------------------------------------------
@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_grid_is_the_schedulers_set_timesteps(cls, spacing, offset):
    sched = getattr(diffusers, cls)(num_train_timesteps=100, timestep_spacing=spacing, steps_offset=offset)
    process = svdd.from_diffusers(tiny_unet(), sched)
    for K in (1, 7, 10):
        sched.set_timesteps(K)
        ts = process.timesteps(K)
        assert ts[:-1].long().tolist() == (sched.timesteps + 1).tolist() and float(ts[-1]) == 0


def test_flow_grid_is_the_schedulers_set_timesteps_with_shift():
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    transformer = tiny_sd3()
    process = svdd.from_diffusers(transformer, sched, encoder_hidden_states=torch.randn(1, 5, 32),
                                  pooled_projections=torch.randn(1, 64))
    sched.set_timesteps(6)
    ts = process.timesteps(6)
    assert torch.equal(ts[:-1].float(), sched.timesteps) and float(ts[-1]) == 0
    assert sched.timesteps[0] == 1000 and process.prediction_type == "flow"


# -- pixel pipelines, run themselves --------------------------------------------------------------
@pytest.mark.parametrize("pipeline,eta", [("DDPMPipeline", 1.0), ("DDIMPipeline", 0.0), ("DDIMPipeline", 1.0)])
def test_pixel_pipeline_parity(pipeline, eta):
    """The pipelines themselves, 10 of 1000 steps: DDPM (noise drawn from the generator each step),
    DDIM at eta 0 and at eta 1 (default clip_sample=True, "leading" spacing). The old svdd grid
    ("trailing") is measurably different (the negative control)."""
    unet = tiny_unet()
    if pipeline == "DDPMPipeline":
        pipe, kw = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()), {}
    else:
        pipe, kw = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler()), {"eta": eta}
        assert pipe.scheduler.config.clip_sample and pipe.scheduler.config.timestep_spacing == "leading"
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np",
               **kw).images
    ours = svdd_images(svdd.from_pipeline(pipe, eta=eta), 2, 10, seed=3).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff
    old = svdd_images(svdd.from_pipeline(pipe, eta=eta, timestep_grid="trailing"), 2, 10, seed=3)
    assert float(np.abs(old.permute(0, 2, 3, 1).numpy() - ref).max()) > 1e-2


# -- Stable Diffusion (UNet2DConditionModel + VAE + CFG) -------------------------------------------
def tiny_sd_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2, **kw).eval()


def sd_call_loop(unet, vae, scheduler, prompt_embeds, negative_prompt_embeds, guidance_scale, num_steps, generator,
                 batch, eta=0.0, added=None, negative_added=None):
    """StableDiffusion(XL)Pipeline.__call__'s loop: randn latents * init_noise_sigma, CFG on
    [uncond; cond], scale_model_input, scheduler.step(eta, generator), decode, postprocess."""
    shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=prompt_embeds.dtype)
    scheduler.set_timesteps(num_steps)
    latents = latents * scheduler.init_noise_sigma
    emb = torch.cat([negative_prompt_embeds, prompt_embeds]).repeat_interleave(batch, 0) if batch > 1 else \
        torch.cat([negative_prompt_embeds, prompt_embeds])
    kwargs = {}
    if added is not None:
        kwargs["added_cond_kwargs"] = {k: torch.cat([negative_added[k].expand(batch, -1), added[k].expand(batch, -1)])
                                       for k in added}
    step_kwargs = {"generator": generator}
    if "eta" in scheduler.step.__code__.co_varnames:
        step_kwargs["eta"] = eta
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = unet(inp, t, encoder_hidden_states=emb, return_dict=False, **kwargs)[0]
            u, c = noise_pred.chunk(2)
            noise_pred = u + guidance_scale * (c - u)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return to_image(image)


@pytest.mark.parametrize("scheduler,eta", [("DDIMScheduler", 0.0), ("DDPMScheduler", 1.0)])
def test_stable_diffusion_call_loop_parity(scheduler, eta):
    """StableDiffusionPipeline.__call__ loop (the pipeline needs transformers): SD's DDIM config
    (steps_offset 1, set_alpha_to_one False: the last step lands on ᾱ_0, not 1) at eta 0, and
    DDPM (stochastic: per-step noise drawn from the same generator) at eta 1."""
    unet, vae = tiny_sd_unet(), tiny_vae()
    cfg = dict(SD_SCHEDULER)
    if scheduler == "DDPMScheduler":
        cfg.pop("set_alpha_to_one")
    sched = getattr(diffusers, scheduler)(**cfg)
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 6, 16, generator=g), torch.randn(1, 6, 16, generator=g)
    ref = sd_call_loop(unet, vae, sched, pos, neg, 5.0, 8, torch.Generator().manual_seed(4), batch=2, eta=eta)
    process = svdd.from_diffusers(unet, sched, vae=vae, encoder_hidden_states=pos, negative_encoder_hidden_states=neg,
                                  guidance_scale=5.0, eta=eta)
    diff = float((svdd_images(process, 2, 8, seed=4) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff


def test_sdxl_call_loop_parity_with_euler():
    """StableDiffusionXLPipeline.__call__ loop with its default EulerDiscreteScheduler (SDXL's
    config: "leading", steps_offset 1): added conditioning (pooled text embeds + time ids) on
    [uncond; cond]; Euler on the VE-scaled latents is exactly DDIM eta 0 here."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 12, cross_attention_dim=16, norm_num_groups=4).eval()
    vae = tiny_vae()
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             steps_offset=1, timestep_spacing="leading")
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 6, 16, generator=g), torch.randn(1, 6, 16, generator=g)
    time_ids = torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]])      # original size, crop, target size
    added = {"text_embeds": torch.randn(1, 12, generator=g), "time_ids": time_ids}
    negative_added = {"text_embeds": torch.randn(1, 12, generator=g), "time_ids": time_ids}
    ref = sd_call_loop(unet, vae, sched, pos, neg, 5.0, 8, torch.Generator().manual_seed(2), batch=1,
                       added=added, negative_added=negative_added)
    process = svdd.from_diffusers(unet, sched, vae=vae, encoder_hidden_states=pos, negative_encoder_hidden_states=neg,
                                  added_cond_kwargs=added, negative_added_cond_kwargs=negative_added,
                                  guidance_scale=5.0, eta=0.0)
    diff = float((svdd_images(process, 1, 8, seed=2) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff
    # from_pipeline builds the time ids (H, W, 0, 0, H, W) itself (vae scale factor 1 here)
    pipe = TextPipeline(unet=unet, vae=vae, vae_scale_factor=1, scheduler=sched, text_encoder_2=object(),
                        encoded=(pos, neg, added["text_embeds"], negative_added["text_embeds"]))
    got = svdd_images(svdd.from_pipeline(pipe, "a prompt", guidance_scale=5.0, eta=0.0), 1, 8, seed=2)
    assert float((got - ref).abs().max()) <= TOL


class TextPipeline:
    """Stands in for a text pipeline (whose text encoders need ``transformers``): its components
    and an ``encode_prompt`` returning fixed embeddings in the pipeline's own return order."""

    def __init__(self, encoded, **components):
        self.__dict__.update(components)
        self.encoded, self.calls = encoded, []

    def encode_prompt(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.encoded


# -- SD3 (SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler) ---------------------------------
def tiny_sd3(seed=0):
    torch.manual_seed(seed)
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()


@pytest.mark.parametrize("dynamic,stochastic", [(False, False), (True, False), (False, True)])
def test_sd3_call_loop_parity(dynamic, stochastic):
    """StableDiffusion3Pipeline.__call__ loop (the pipeline needs transformers): randn latents,
    CFG on [uncond; cond] with pooled projections, timestep = t (σ·1000), FlowMatch Euler steps
    (static shift 3, or dynamic shifting with μ from the latent size), decode with shift_factor;
    and the scheduler's stochastic_sampling (a full re-noise drawn from the generator each step)."""
    transformer, vae = tiny_sd3(), tiny_vae(shift_factor=0.0609, scaling_factor=1.5035)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic,
                                                      stochastic_sampling=stochastic)
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 7, 32, generator=g), torch.randn(1, 7, 32, generator=g)
    pooled, npooled = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
    B, K, w = 2, 6, 4.0
    gen = torch.Generator().manual_seed(5)
    latents = randn_tensor((B, 4, 8, 8), generator=gen, device=torch.device("cpu"), dtype=torch.float32)
    kw = {"mu": calculate_shift(64, 256, 4096, 0.5, 1.15)} if dynamic else {}
    sched.set_timesteps(K, **kw)
    emb = torch.cat([neg.expand(B, -1, -1), pos.expand(B, -1, -1)])
    pool = torch.cat([npooled.expand(B, -1), pooled.expand(B, -1)])
    with torch.no_grad():
        for t in sched.timesteps:
            inp = torch.cat([latents] * 2)
            v = transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]), encoder_hidden_states=emb,
                            pooled_projections=pool, return_dict=False)[0]
            u, c = v.chunk(2)
            latents = sched.step(u + w * (c - u), t, latents, generator=gen, return_dict=False)[0]
        ref = to_image(vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0])
    process = svdd.from_diffusers(transformer, diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched.config),
                                  vae=vae, encoder_hidden_states=pos, negative_encoder_hidden_states=neg,
                                  pooled_projections=pooled, negative_pooled_projections=npooled, guidance_scale=w,
                                  eta=0.0)
    diff = float((svdd_images(process, B, K, seed=5) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff
    # from_pipeline on an object with StableDiffusion3Pipeline's components and encode_prompt
    pipe = TextPipeline(transformer=transformer, vae=vae, vae_scale_factor=1,
                        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched.config),
                        encoded=(pos, neg, pooled, npooled))
    diff = float((svdd_images(svdd.from_pipeline(pipe, "a prompt", guidance_scale=w, eta=0.0), B, K, seed=5)
                  - ref).abs().max())
    assert diff <= TOL, diff
    assert pipe.calls and pipe.calls[0]["do_classifier_free_guidance"]


# -- Flux (FluxTransformer2DModel: packed latents, ids, guidance embedding) -------------------------
def tiny_flux(guidance_embeds=True, seed=0):
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds).eval()


def test_pack_unpack_and_ids_match_flux_pipeline():
    x = torch.randn(2, 3, 6, 4)
    packed = pack_latents(x)
    assert torch.equal(packed, diffusers.FluxPipeline._pack_latents(x, 2, 3, 6, 4))
    assert torch.equal(unpack_latents(packed, 6, 4), x)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux_call_loop_parity(guidance_embeds):
    """FluxPipeline.__call__ loop (the pipeline needs transformers): randn of the unpacked latents'
    shape then packing, sigmas = linspace(1, 1/K, K) with μ = calculate_shift(packed tokens),
    timestep = t/1000, guidance embedding for guidance-distilled models, unpack, decode."""
    transformer, vae = tiny_flux(guidance_embeds), tiny_vae(latent_channels=1, shift_factor=0.0609,
                                                            scaling_factor=1.5035)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                      base_image_seq_len=256, max_image_seq_len=4096)
    g = torch.Generator().manual_seed(0)
    emb, pooled = torch.randn(1, 9, 32, generator=g), torch.randn(1, 32, generator=g)
    B, K, H, W, gs = 2, 5, 8, 8, 3.5
    gen = torch.Generator().manual_seed(6)
    latents = pack_latents(randn_tensor((B, 1, H, W), generator=gen, device=torch.device("cpu"), dtype=torch.float32))
    img_ids = diffusers.FluxPipeline._prepare_latent_image_ids(B, H // 2, W // 2, torch.device("cpu"), torch.float32)
    txt_ids = torch.zeros(emb.shape[1], 3)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / K, K), mu=calculate_shift(latents.shape[1]))
    guidance = torch.full([1], gs, dtype=torch.float32).expand(B) if guidance_embeds else None
    with torch.no_grad():
        for t in sched.timesteps:
            timestep = t.expand(B).to(latents.dtype)
            v = transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                            pooled_projections=pooled.expand(B, -1), encoder_hidden_states=emb.expand(B, -1, -1),
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
            latents = sched.step(v, t, latents, return_dict=False)[0]
        z = unpack_latents(latents, H, W) / vae.config.scaling_factor + vae.config.shift_factor
        ref = to_image(vae.decode(z, return_dict=False)[0])
    process = svdd.from_diffusers(transformer, sched, vae=vae, encoder_hidden_states=emb, pooled_projections=pooled,
                                  guidance_scale=gs, sample_shape=(1, H, W), eta=0.0)
    diff = float((svdd_images(process, B, K, seed=6) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff
    # from_pipeline on an object with FluxPipeline's components and encode_prompt (height/width in pixels)
    pipe = TextPipeline(transformer=transformer, vae=vae, vae_scale_factor=1, scheduler=sched,
                        encoded=(emb, pooled, torch.zeros(emb.shape[1], 3)))
    got = svdd_images(svdd.from_pipeline(pipe, "a prompt", guidance_scale=gs, height=H, width=W, eta=0.0), B, K, 6)
    assert float((got - ref).abs().max()) <= TOL
    x = decode_latents(vae, torch.zeros(1, 1, H, W))
    assert x.shape == (1, 3, H, W)


# -- the text pipelines themselves (need transformers; prompt embeddings passed in) --------------------
def _real_pipeline(name):
    pytest.importorskip("transformers")
    cls = getattr(diffusers, name)
    if cls.__module__.startswith("diffusers.utils.dummy"):
        pytest.skip(f"{name} is unavailable")
    return cls


def test_stable_diffusion_pipeline_itself():
    cls = _real_pipeline("StableDiffusionPipeline")
    unet, vae = tiny_sd_unet(), tiny_vae()
    pipe = cls(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=diffusers.DDIMScheduler(**SD_SCHEDULER),
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 6, 16, generator=g), torch.randn(1, 6, 16, generator=g)
    ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=8, guidance_scale=5.0, height=8,
               width=8, num_images_per_prompt=2, generator=torch.Generator().manual_seed(4), output_type="pt").images
    process = svdd.from_pipeline(pipe, prompt_embeds=pos, negative_prompt_embeds=neg, guidance_scale=5.0, eta=0.0)
    diff = float((svdd_images(process, 2, 8, seed=4) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff


def test_stable_diffusion_xl_pipeline_itself():
    cls = _real_pipeline("StableDiffusionXLPipeline")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 12, cross_attention_dim=16, norm_num_groups=4).eval()
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             steps_offset=1, timestep_spacing="leading")
    pipe = cls(vae=tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
               scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = dict(prompt_embeds=torch.randn(1, 6, 16, generator=g), negative_prompt_embeds=torch.randn(1, 6, 16, generator=g),
               pooled_prompt_embeds=torch.randn(1, 12, generator=g),
               negative_pooled_prompt_embeds=torch.randn(1, 12, generator=g))
    ref = pipe(**emb, num_inference_steps=8, guidance_scale=5.0, height=8, width=8,
               generator=torch.Generator().manual_seed(2), output_type="pt").images
    process = svdd.from_pipeline(pipe, **emb, guidance_scale=5.0, eta=0.0)
    diff = float((svdd_images(process, 1, 8, seed=2) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff


def test_stable_diffusion_3_pipeline_itself():
    cls = _real_pipeline("StableDiffusion3Pipeline")
    pipe = cls(transformer=tiny_sd3(), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
               vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035), text_encoder=None, tokenizer=None,
               text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    # SD3's encode_prompt does not repeat given embeddings per image: pass one row per image
    emb = dict(prompt_embeds=torch.randn(1, 7, 32, generator=g), negative_prompt_embeds=torch.randn(1, 7, 32, generator=g),
               pooled_prompt_embeds=torch.randn(1, 64, generator=g),
               negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g))
    emb = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in emb.items()}
    ref = pipe(**emb, num_inference_steps=6, guidance_scale=4.0, height=8, width=8,
               generator=torch.Generator().manual_seed(5), output_type="pt").images
    process = svdd.from_pipeline(pipe, **emb, guidance_scale=4.0, eta=0.0)
    diff = float((svdd_images(process, 2, 6, seed=5) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff


def test_flux_pipeline_itself():
    cls = _real_pipeline("FluxPipeline")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                      base_image_seq_len=256, max_image_seq_len=4096)
    pipe = cls(scheduler=sched, vae=tiny_vae(latent_channels=1, shift_factor=0.0609, scaling_factor=1.5035),
               text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=tiny_flux())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = dict(prompt_embeds=torch.randn(1, 9, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    ref = pipe(**emb, num_inference_steps=5, guidance_scale=3.5, height=8, width=8, num_images_per_prompt=2,
               generator=torch.Generator().manual_seed(6), output_type="pt").images
    process = svdd.from_pipeline(pipe, **emb, guidance_scale=3.5, height=8, width=8, eta=0.0)
    diff = float((svdd_images(process, 2, 5, seed=6) - ref).abs().max())
    print(f"max |diff| on [0, 1] images: {diff:.2e}")
    assert diff <= TOL, diff
