"""``svdd.RewardPipeline``: the pipeline-native call (prompt lists, num_images_per_prompt,
generators, latents, output types, callbacks, progress), with tiny random components built
from config in diffusers' test style. The Stable Diffusion pipeline is real, with a tiny
``CLIPTextModel`` and a word-level tokenizer written here (no files, no network); SDXL and
Flux are real pipelines fed prompt embeddings. ``method="ancestral"`` is checked against the
pipelines' own outputs for the same generator (<= 1e-4 on [0, 1] images)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import svdd  # noqa: E402
from svdd.process.adapters import pack_latents  # noqa: E402

from test_diffusers_parity import SD_SCHEDULER, tiny_flux, tiny_sd3, tiny_sd_unet, tiny_unet, tiny_vae  # noqa: E402

TOL = 1e-4
WORDS = ["<pad>", "<unk>", "a", "cat", "dog", "photo", "of", "red", "blue"]


def mean_reward(images):
    return images.flatten(1).mean(1)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                                model_max_length=6)


def tiny_sd_pipeline(scheduler="DDIMScheduler"):
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=6, projection_dim=16, bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    cfg = dict(SD_SCHEDULER)
    if scheduler == "DDPMScheduler":
        cfg.pop("set_alpha_to_one")
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tiny_tokenizer(), unet=tiny_sd_unet(),
        scheduler=getattr(diffusers, scheduler)(**cfg), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


PROMPTS = ["a red cat", "a blue dog"]


# -- same generator, same images as the pipeline --------------------------------------------------
def test_sd_ancestral_reproduces_the_pipeline_with_prompt_lists_and_generators(sd):
    """Two prompts x 2 images, DDIM eta 0, CFG 5: one generator (latents drawn as one randn of
    (4, C, H, W)) and a list of four generators (one (1, C, H, W) draw each)."""
    aligned = svdd.RewardPipeline(sd)
    common = dict(num_images_per_prompt=2, guidance_scale=5.0, num_inference_steps=4, output_type="np")
    for generator in (lambda: torch.Generator().manual_seed(3), lambda: gens([5, 6, 7, 8])):
        ref = sd(PROMPTS, generator=generator(), **common).images
        out = aligned(PROMPTS, reward=mean_reward, method="ancestral", generator=generator(),
                      progress=False, **common)
        assert out.images.shape == ref.shape == (4, 8, 8, 3)
        diff = float(np.abs(out.images - ref).max())
        assert diff <= TOL, diff
    # the two prompts' images differ (the conditioning is not shared across prompts)
    assert float(np.abs(out.images[0] - out.images[2]).max()) > 1e-3


def test_latents_are_the_initial_noise(sd):
    aligned = svdd.RewardPipeline(sd)
    lat = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    kw = dict(guidance_scale=5.0, num_inference_steps=3, output_type="pt")
    ref = sd("a cat", num_images_per_prompt=2, latents=lat, **kw).images
    out = aligned("a cat", reward=mean_reward, method="ancestral", num_images_per_prompt=2, latents=lat,
                  progress=False, **kw)
    assert float((out.images - ref).abs().max()) <= TOL
    other = aligned("a cat", reward=mean_reward, method="ancestral", num_images_per_prompt=2,
                    latents=-lat, progress=False, **kw)
    assert float((other.images - ref).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="cannot be used"):     # smc draws num_particles initial states
        aligned("a cat", reward=mean_reward, method="smc", num_particles=3, num_images_per_prompt=2, latents=lat,
                progress=False, **kw)
    with pytest.raises(ValueError, match="latents must have shape"):
        aligned("a cat", reward=mean_reward, latents=lat[:1], num_images_per_prompt=2, progress=False, **kw)


def test_flux_ancestral_reproduces_the_pipeline_and_takes_packed_latents():
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                      base_image_seq_len=256, max_image_seq_len=4096)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=tiny_vae(latent_channels=1, shift_factor=0.0609,
                                                                scaling_factor=1.5035),
                                  text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                  transformer=tiny_flux())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = dict(prompt_embeds=torch.randn(1, 9, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    kw = dict(num_inference_steps=4, guidance_scale=3.5, height=8, width=8, num_images_per_prompt=2, output_type="pt")
    aligned = svdd.RewardPipeline(pipe)
    ref = pipe(**emb, generator=torch.Generator().manual_seed(6), **kw).images
    out = aligned(**emb, reward=mean_reward, method="ancestral", generator=torch.Generator().manual_seed(6),
                  progress=False, **kw)
    assert float((out.images - ref).abs().max()) <= TOL
    packed = pack_latents(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    ref = pipe(**emb, latents=packed, **kw).images
    out = aligned(**emb, reward=mean_reward, method="ancestral", latents=packed, progress=False, **kw)
    assert float((out.images - ref).abs().max()) <= TOL


def test_sd3_ancestral_reproduces_the_pipeline_with_per_prompt_embeddings():
    """Two different prompts as two rows of prompt_embeds (one image each), one generator."""
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=tiny_sd3(), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = dict(prompt_embeds=torch.randn(2, 7, 32, generator=g), negative_prompt_embeds=torch.randn(2, 7, 32, generator=g),
               pooled_prompt_embeds=torch.randn(2, 64, generator=g),
               negative_pooled_prompt_embeds=torch.randn(2, 64, generator=g))
    kw = dict(num_inference_steps=4, guidance_scale=4.0, height=8, width=8, output_type="pt")
    ref = pipe(**emb, generator=torch.Generator().manual_seed(5), **kw).images
    out = svdd.RewardPipeline(pipe, eta=0.0)(**emb, reward=mean_reward, method="ancestral", progress=False,
                                             generator=torch.Generator().manual_seed(5), **kw)
    assert out.info["num_runs"] == 2 and out.images.shape == ref.shape == (2, 3, 8, 8)
    assert float((out.images - ref).abs().max()) <= TOL


def test_sdxl_ancestral_reproduces_the_pipeline():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 12, cross_attention_dim=16, norm_num_groups=4).eval()
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             steps_offset=1, timestep_spacing="leading")
    pipe = diffusers.StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None,
                                               tokenizer_2=None, unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb = dict(prompt_embeds=torch.randn(1, 6, 16, generator=g), negative_prompt_embeds=torch.randn(1, 6, 16, generator=g),
               pooled_prompt_embeds=torch.randn(1, 12, generator=g),
               negative_pooled_prompt_embeds=torch.randn(1, 12, generator=g))
    kw = dict(num_inference_steps=4, guidance_scale=5.0, height=8, width=8, output_type="pt")
    ref = pipe(**emb, generator=torch.Generator().manual_seed(2), **kw).images
    out = svdd.RewardPipeline(pipe)(**emb, reward=mean_reward, method="ancestral", progress=False,
                                    generator=torch.Generator().manual_seed(2), **kw)
    assert float((out.images - ref).abs().max()) <= TOL


def test_unconditional_ddpm_pipeline_and_from_pretrained(tmp_path):
    """DDPM (stochastic, eta 1 for ancestral by default) from a saved folder, as the pipeline."""
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=5, output_type="np").images
    pipe.save_pretrained(tmp_path / "ddpm")
    aligned = svdd.RewardPipeline.from_pretrained(tmp_path / "ddpm")
    assert aligned.family == "pixel" and aligned.default_eta("ancestral") == 1.0
    out = aligned(reward=mean_reward, method="ancestral", num_images_per_prompt=2,
                                    num_inference_steps=5, generator=torch.Generator().manual_seed(3),
                                    output_type="np", progress=False)
    assert float(np.abs(out.images - ref).max()) <= TOL
    with pytest.raises(ValueError, match="unconditional"):
        svdd.RewardPipeline(pipe)("a cat", reward=mean_reward, progress=False, num_inference_steps=2)


# -- per-prompt conditioning and per-image generators under candidate expansion -------------------
def test_each_prompts_embedding_survives_candidate_expansion(sd):
    """svdd-pm with 4 candidates: every denoiser call carries one prompt's embedding on all its
    conditional rows (both prompts seen, batch 2·n·M with CFG), and image i of a two-prompt call
    equals a one-prompt call with prompt i and generator i (and not prompt 1 - i)."""
    with torch.no_grad():
        emb = {p: sd.encode_prompt(p, "cpu", 1, False)[0] for p in PROMPTS}
    assert float((emb[PROMPTS[0]] - emb[PROMPTS[1]]).abs().max()) > 1e-2
    seen, batches = [], []

    def hook(module, args, kwargs):
        e = kwargs["encoder_hidden_states"]
        cond = e[e.shape[0] // 2:]          # [uncond; cond]
        batches.append(e.shape[0])
        hits = [p for p in PROMPTS if torch.allclose(cond, emb[p].expand_as(cond), atol=1e-6)]
        seen.append(hits[0] if len(hits) == 1 else None)

    handle = sd.unet.register_forward_pre_hook(hook, with_kwargs=True)
    aligned = svdd.RewardPipeline(sd)
    kw = dict(reward=mean_reward, method="svdd-pm", num_candidates=4, guidance_scale=3.0, num_inference_steps=3,
              output_type="pt", progress=False)
    try:
        out = aligned(PROMPTS, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), **kw)
    finally:
        handle.remove()
    assert None not in seen and set(seen) == set(PROMPTS)
    assert max(batches) == 2 * 2 * 4
    assert out.images.shape == (4, 3, 8, 8) and out.rewards.shape == (4,)
    both = aligned(PROMPTS, generator=gens([1, 2]), **kw).images
    for i, p in enumerate(PROMPTS):
        alone = aligned(p, generator=gens([1 + i]), **kw).images
        assert float((both[i] - alone[0]).abs().max()) <= 1e-5
        swapped = aligned(PROMPTS[1 - i], generator=gens([1 + i]), **kw).images
        assert float((both[i] - swapped[0]).abs().max()) > 1e-3


def test_generator_list_gives_per_image_reproducibility(sd):
    aligned = svdd.RewardPipeline(sd)
    kw = dict(reward=mean_reward, method="svdd-pm", num_candidates=3, num_inference_steps=3, output_type="pt",
              progress=False, guidance_scale=1.0)
    one = aligned("a cat", generator=gens([7]), num_images_per_prompt=1, **kw)
    four = aligned("a cat", generator=gens([7, 8, 9, 10]), num_images_per_prompt=4, **kw)
    assert torch.equal(one.images[0], four.images[0]) and torch.equal(one.rewards[0], four.rewards[0])
    assert float((four.images[0] - four.images[1]).abs().max()) > 1e-3
    # one generator: reproducible, and its seed matters
    a = aligned("a cat", generator=torch.Generator().manual_seed(1), num_images_per_prompt=2, **kw).images
    b = aligned("a cat", generator=torch.Generator().manual_seed(1), num_images_per_prompt=2, **kw).images
    c = aligned("a cat", generator=torch.Generator().manual_seed(2), num_images_per_prompt=2, **kw).images
    assert torch.equal(a, b) and float((a - c).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="one per image"):
        aligned("a cat", generator=gens([1, 2]), num_images_per_prompt=3, **kw)


# -- outputs, rewards, methods --------------------------------------------------------------------
def test_output_types_follow_diffusers(sd):
    from PIL import Image

    aligned = svdd.RewardPipeline(sd)
    kw = dict(reward=mean_reward, method="ancestral", num_inference_steps=2, num_images_per_prompt=2, progress=False)
    pt = aligned("a cat", generator=torch.Generator().manual_seed(0), output_type="pt", **kw)
    npy = aligned("a cat", generator=torch.Generator().manual_seed(0), output_type="np", **kw)
    pil = aligned("a cat", generator=torch.Generator().manual_seed(0), output_type="pil", **kw)
    assert isinstance(pt.images, torch.Tensor) and pt.images.shape == (2, 3, 8, 8)
    assert 0 <= float(pt.images.min()) and float(pt.images.max()) <= 1
    assert isinstance(npy.images, np.ndarray) and npy.images.dtype == np.float32 and npy.images.shape == (2, 8, 8, 3)
    assert np.allclose(npy.images, pt.images.permute(0, 2, 3, 1).numpy())
    assert isinstance(pil.images, list) and len(pil.images) == 2 and isinstance(pil.images[0], Image.Image)
    assert pil.images[0].size == (8, 8)
    assert np.abs(np.asarray(pil.images[0]) / 255.0 - npy.images[0]).max() <= 0.5 / 255 + 1e-6
    assert pt["images"] is pt.images and pt[0] is pt.images and pt[1] is pt.rewards
    images, rewards, *_ = aligned("a cat", generator=torch.Generator().manual_seed(0), output_type="pt",
                                  return_dict=False, **kw)
    assert torch.equal(images, pt.images)
    with pytest.raises(ValueError, match="output_type"):
        aligned("a cat", output_type="jpeg", **kw)


@pytest.mark.parametrize("method,options", [("svdd-pm", {"num_candidates": 4}), ("best-of-n", {"num_candidates": 3}),
                                            ("smc", {"num_particles": 3})])
def test_reward_sees_unit_pixels_and_any_method_runs(sd, method, options):
    calls = []

    def reward(images):
        calls.append((tuple(images.shape), float(images.min()), float(images.max())))
        return images[:, 0].flatten(1).mean(1)        # red channel

    out = svdd.RewardPipeline(sd)(PROMPTS, reward=reward, method=method, num_inference_steps=3, output_type="pt",
                                  generator=torch.Generator().manual_seed(0), progress=False, **options)
    assert calls and all(len(s) == 4 and s[1:] == (3, 8, 8) and lo >= 0 and hi <= 1 for s, lo, hi in calls)
    assert torch.allclose(out.rewards, reward(out.images), atol=1e-5)
    assert out.info["method"] == method and out.info["num_runs"] == 2 and out.info["nfe"] > 0


def test_svdd_pm_beats_ancestral_on_the_reward(sd):
    aligned = svdd.RewardPipeline(sd)
    # DDIM: ancestral is the pipeline's eta 0; the other methods get the stochastic eta 1
    assert aligned.default_eta("ancestral") == 0.0 and aligned.default_eta("svdd-pm") == 1.0
    assert svdd.RewardPipeline(sd, eta=0.3).default_eta("ancestral") == 0.3
    kw = dict(reward=mean_reward, num_inference_steps=4, output_type="pt", progress=False, num_images_per_prompt=4)
    base = aligned("a cat", method="ancestral", generator=torch.Generator().manual_seed(0), **kw)
    best = aligned("a cat", method="svdd-pm", num_candidates=8, generator=torch.Generator().manual_seed(0), **kw)
    assert float(best.rewards.mean()) > float(base.rewards.mean())
    assert best.info["nfe"] > base.info["nfe"]


# -- callbacks and progress -----------------------------------------------------------------------
def test_callback_changes_latents_and_interrupts_as_in_diffusers(sd):
    """The same callback through the pipeline and through RewardPipeline (DDIM eta 0): scaling
    the latents at step 1, then interrupting at step 2; same timesteps, same images."""

    def make(record):
        def cb(pipe, step, timestep, kwargs):
            record.append(int(timestep))
            if step == 1:
                return {"latents": kwargs["latents"] * 0.5}
            if step == 2:
                pipe._interrupt = True
            return {}
        return cb

    kw = dict(guidance_scale=3.0, num_inference_steps=5, output_type="pt")
    t_ref, t_ours = [], []
    ref = sd(PROMPTS, generator=torch.Generator().manual_seed(0), callback_on_step_end=make(t_ref), **kw).images
    aligned = svdd.RewardPipeline(sd)
    out = aligned(PROMPTS, reward=mean_reward, method="ancestral", generator=torch.Generator().manual_seed(0),
                  callback_on_step_end=make(t_ours), progress=False, **kw)
    assert t_ours[:3] == t_ref[:3]
    assert out.info["interrupted"] and out.info["interrupted_at_step"] == 2
    assert float((out.images - ref).abs().max()) <= TOL
    plain = aligned(PROMPTS, reward=mean_reward, method="ancestral",
                    generator=torch.Generator().manual_seed(0), progress=False, **kw)
    assert float((plain.images - ref).abs().max()) > 1e-3 and not plain.info["interrupted"]
    # a latents change under svdd-pm is seen by the rest of the run
    kw2 = dict(reward=mean_reward, method="svdd-pm", num_candidates=2, num_inference_steps=3, output_type="pt",
               progress=False)
    a = aligned("a cat", generator=torch.Generator().manual_seed(0), **kw2).images
    b = aligned("a cat", generator=torch.Generator().manual_seed(0), **kw2,
                callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"] * 0} if i == 0 else {}).images
    assert float((a - b).abs().max()) > 1e-3


def test_progress_bar_on_and_off(sd, capsys):
    aligned = svdd.RewardPipeline(sd)
    kw = dict(reward=mean_reward, method="ancestral", num_inference_steps=2, output_type="pt")
    aligned("a cat", progress=False, **kw)
    assert "2/2" not in capsys.readouterr().err
    aligned("a cat", progress=True, **kw)
    assert "2/2" in capsys.readouterr().err


def test_reward_range_for_svdd_image_rewards_and_invalid_rewards(sd):
    """svdd.domains.images rewards take [-1, 1] pixels (reward_range=(-1, 1)); a svdd Reward's
    failures stay failures (scored its invalid_value, warned once)."""
    from svdd.domains.images.rewards import Brightness
    from svdd.rewards.base import as_reward

    aligned = svdd.RewardPipeline(sd)
    kw = dict(method="ancestral", num_inference_steps=2, num_images_per_prompt=2, output_type="pt", progress=False,
              generator=torch.Generator().manual_seed(0))
    out = aligned("a cat", reward=Brightness(), reward_range=(-1, 1), **kw)
    assert torch.allclose(out.rewards, out.images.flatten(1).mean(1), atol=1e-5)
    unit = aligned("a cat", reward=Brightness(), **kw)     # fed [0, 1]: (x + 1)/2 of it, a different number
    assert float((unit.rewards - out.rewards).abs().min()) > 0.1
    failing = as_reward(lambda x: torch.full((x.shape[0],), float("nan")), invalid_value=-5.0)
    with pytest.warns(svdd.RewardWarning):
        bad = aligned("a cat", reward=failing, **kw)
    assert torch.equal(bad.rewards, torch.full((2,), -5.0))
    with pytest.raises(ValueError, match="reward_range"):
        aligned("a cat", reward=Brightness(), reward_range=(0, 255), **kw)
