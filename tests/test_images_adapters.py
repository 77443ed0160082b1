"""svdd.from_diffusers / from_pipeline on tiny random diffusers components (diffusers' own test
sizes): the process must reproduce diffusers' scheduler steps exactly, guidance and latent
decoding must be what they claim, and every Gaussian-capable algorithm must run on them."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

import svdd  # noqa: E402
from svdd.process.adapters import DiffusersProcess, decode_latents, encode_images, latent_reward  # noqa: E402



def tiny_unet(sample_size=8, channels=3, seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def tiny_sd(seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2).eval()
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16).eval()
    return unet, vae


def brightness(x):
    return ((x + 1) / 2).flatten(1).mean(1)


brightness.differentiable = True


def jpeg_like(x):  # a non-differentiable black box: counts sign changes along rows
    return -(x[..., 1:].sign() != x[..., :-1].sign()).float().flatten(1).mean(1)


# -- exactness against diffusers' schedulers -----------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_trajectory_matches_ddim_scheduler(eta, clip):
    unet = tiny_unet()
    T, K = 100, 10
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=clip, timestep_spacing="trailing",
                                    set_alpha_to_one=True)
    process = svdd.from_diffusers(unet, sched, eta=eta)
    sched.set_timesteps(K)
    gen = torch.Generator().manual_seed(1)
    x_ref = torch.randn(2, 3, 8, 8, generator=gen)
    noises = [torch.randn(2, 3, 8, 8, generator=gen) for _ in range(K)]
    x = x_ref.clone()
    ts = process.timesteps(K)
    with torch.no_grad():
        for k, timestep in enumerate(sched.timesteps):
            out = unet(x_ref, timestep).sample
            x_ref = sched.step(out, timestep, x_ref, eta=eta,   # diffusers' default: the network's own eps
                               variance_noise=noises[k] if eta > 0 else None).prev_sample
            assert int(ts[k]) - 1 == int(timestep)
            trans = process.transition(x, ts[k], ts[k + 1])
            x = trans.sample(noise=noises[k])
    torch.testing.assert_close(x, x_ref, rtol=1e-4, atol=1e-5)


def test_ddpm_posterior_matches_ddpm_scheduler():
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    process = svdd.from_diffusers(unet, sched)
    assert process.clip_sample == 1.0 and process.prediction_type == "epsilon"
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = 30  # training index; process time t + 1, next time t
    with torch.no_grad():
        out = unet(x, t).sample
        gen = torch.Generator().manual_seed(5)
        ref = sched.step(out, t, x, generator=gen)
        trans = process.transition(x, torch.tensor(t + 1.0), torch.tensor(float(t)))
    torch.testing.assert_close(process.clip_x0(trans.x0_hat), ref.pred_original_sample, rtol=1e-5, atol=1e-6)
    var = sched._get_variance(t)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(trans.mean, ref.prev_sample - var.sqrt() * noise, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trans.std, var.sqrt().expand(3).float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_prediction_types(prediction_type):
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=False)
    process = svdd.from_diffusers(unet, sched)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sched.set_timesteps(10)
    with torch.no_grad():
        ref = sched.step(unet(x, 49).sample, 49, x, eta=0.0).pred_original_sample
        got = process.predict_x0(x, torch.tensor(50.0))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_learned_variance_channels_are_dropped():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=6, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).eval()
    process = svdd.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=20))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        eps = unet(x, 9).sample[:, :3]
        ab = process.alpha_bar(10.0).float()
        expected = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        torch.testing.assert_close(process.clip_x0(process.predict_x0(x, torch.tensor(10.0))), expected,
                                   rtol=1e-5, atol=1e-6)


# -- conditioning, guidance, latents -------------------------------------------------------------
def test_classifier_free_guidance_is_one_batched_call():
    unet, vae = tiny_sd()
    cond, uncond = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    w = 4.0
    process = svdd.from_diffusers(unet, diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=False), vae=vae,
                                  encoder_hidden_states=cond, negative_encoder_hidden_states=uncond, guidance_scale=w)
    assert process.sample_shape == (4, 8, 8) and process.clip_sample is None and process.is_latent
    calls = []
    handle = unet.register_forward_hook(lambda mod, args, kwargs_out: calls.append(args[0].shape[0]))
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        got = process.model_output(x, torch.tensor(40.0))
        handle.remove()
        t = torch.full((3,), 39)
        e_c = unet(x, t, encoder_hidden_states=cond.expand(3, -1, -1)).sample
        e_u = unet(x, t, encoder_hidden_states=uncond.expand(3, -1, -1)).sample
    assert calls == [6]  # uncond and cond in one call on the doubled batch
    torch.testing.assert_close(got, e_u + w * (e_c - e_u), rtol=1e-4, atol=1e-5)
    # guidance_scale 1: only the conditional branch
    plain = svdd.from_diffusers(unet, diffusers.DDIMScheduler(num_train_timesteps=100), vae=vae,
                                encoder_hidden_states=cond)
    with torch.no_grad():
        torch.testing.assert_close(plain.model_output(x, torch.tensor(40.0)), e_c, rtol=1e-4, atol=1e-5)


def test_conditional_unet_without_embeddings_is_a_clear_error():
    unet, _ = tiny_sd()
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        svdd.from_diffusers(unet, diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="negative_encoder_hidden_states"):
        svdd.from_diffusers(unet, diffusers.DDPMScheduler(), encoder_hidden_states=torch.randn(1, 5, 16),
                            guidance_scale=3.0)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        svdd.from_diffusers(tiny_unet(), object())


def test_latent_reward_decodes_through_the_vae_and_keeps_gradients():
    unet, vae = tiny_sd()
    process = svdd.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=100), vae=vae,
                                  encoder_hidden_states=torch.randn(1, 5, 16))
    reward = latent_reward(brightness, process)
    assert reward.differentiable
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    sf = vae.config.scaling_factor
    expected = brightness(vae.decode(z.detach() / sf).sample)
    got = reward(z)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert decode_latents(vae, z.detach()).shape == (2, 3, 16, 16)
    # encode then decode round trip is shape-consistent with the process
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert encode_images(vae, images).shape == (2, *process.sample_shape)
    # pixel processes: the identity
    pixel = svdd.from_diffusers(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    assert latent_reward(brightness, pixel) is brightness


# -- pipelines -----------------------------------------------------------------------------------
def test_from_pipeline_ddpm():
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=100))
    process = svdd.from_pipeline(pipe)
    assert isinstance(process, DiffusersProcess) and process.sample_shape == (3, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        svdd.from_pipeline(pipe, prompt="a cat")


class TinyTextPipeline:
    """Stands in for StableDiffusionPipeline (transformers/CLIP are not installed in CI): the
    same attributes and the same ``encode_prompt`` signature and return convention."""

    def __init__(self):
        self.unet, self.vae = tiny_sd()
        self.scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.table = torch.nn.Embedding(256, 16)
        self.prompts = []

    def _embed(self, text):
        codes = torch.tensor([ord(c) % 256 for c in (text or " ")][:5] + [0] * max(0, 5 - len(text or " ")))
        return self.table(codes)[None].detach()

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        self.prompts.append((prompt, negative_prompt, do_classifier_free_guidance))
        pos = self._embed(prompt)
        neg = self._embed(negative_prompt or "") if do_classifier_free_guidance else None
        return pos, neg


def test_from_pipeline_text_to_image_with_guidance():
    pipe = TinyTextPipeline()
    process = svdd.from_pipeline(pipe, prompt="a seven", guidance_scale=5.0, height=16, width=16)
    assert pipe.prompts == [("a seven", None, True)]
    assert process.sample_shape == (4, 8, 8) and process.is_latent
    assert process.model.guided and process.model.guidance_scale == 5.0
    with pytest.raises(ValueError, match="prompt"):
        svdd.from_pipeline(TinyTextPipeline())
    reward = latent_reward(brightness, process)
    res = svdd.sample(process, reward, method="svdd-pm", num_samples=2, num_steps=2, num_candidates=2,
                      generator=torch.Generator().manual_seed(0))
    assert res.x0.shape == (2, 4, 8, 8) and torch.isfinite(res.rewards).all()


# -- every algorithm that supports Gaussian processes, 2 steps, on both tiny models ----------------
SMALL_KNOBS = {"num_candidates": 2, "num_particles": 2, "num_iterations": 2, "num_optimization_steps": 2,
               "num_steps_optimization": 2, "num_rounds": 2, "num_search_rounds": 2, "max_iterations": 2,
               "num_noise_candidates": 2, "num_perturbations": 2, "population_size": 2}


def _value_fn(process):
    from svdd.domains.images.networks import ImageValueNetwork
    from svdd.values.learned import LearnedValue

    torch.manual_seed(0)
    return LearnedValue(ImageValueNetwork(in_channels=process.sample_shape[0], width=8),
                        time_scale=float(process.num_train_timesteps))


def _processes():
    pixel = svdd.from_diffusers(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100))
    unet, vae = tiny_sd()
    latent = svdd.from_diffusers(unet, diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=False), vae=vae,
                                 encoder_hidden_states=torch.randn(1, 5, 16),
                                 negative_encoder_hidden_states=torch.randn(1, 5, 16), guidance_scale=2.0)
    return {"pixel-ddpm": pixel, "latent-sd-cfg": latent}


@pytest.mark.parametrize("model", ["pixel-ddpm", "latent-sd-cfg"])
@pytest.mark.parametrize("reward_name", ["differentiable", "black-box"])
def test_every_gaussian_algorithm_runs(model, reward_name):
    process = _processes()[model]
    base = brightness if reward_name == "differentiable" else jpeg_like
    reward = latent_reward(base, process)
    ran = []
    for name, spec in sorted(svdd.ALGORITHMS.items()):
        if "gaussian" not in spec.kinds:
            continue
        if spec.needs_gradients and not getattr(reward, "differentiable", False):
            with pytest.raises(svdd.AlgorithmError):
                svdd.sample(process, reward, method=name, num_samples=2, num_steps=2)
            continue
        params = inspect.signature(spec.fn).parameters
        kwargs = {k: v for k, v in SMALL_KNOBS.items() if k in params}
        if spec.needs_value:
            kwargs["value_fn"] = _value_fn(process)
        grad_before = torch.is_grad_enabled()
        res = svdd.sample(process, reward, method=name, num_samples=2, num_steps=2,
                          generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.is_grad_enabled() == grad_before, name
        assert res.x0.shape == (2, *process.sample_shape), name
        assert res.rewards.shape == (2,) and torch.isfinite(res.rewards).all(), name
        assert res.info["nfe"] > 0, name
        # rewards reported are the rewards of the returned samples
        torch.testing.assert_close(res.rewards, reward(res.x0).detach().float(), rtol=1e-4, atol=1e-5, msg=name)
        again = svdd.sample(process, reward, method=name, num_samples=2, num_steps=2,
                            generator=torch.Generator().manual_seed(0), **kwargs)
        torch.testing.assert_close(again.x0, res.x0, msg=f"{name} is not reproducible from its seed")
        ran.append(name)
    assert {"ancestral", "best-of-n", "svdd-pm", "svdd-mc"} <= set(ran)
