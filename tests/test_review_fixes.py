"""Fixes from the review of the maths (issue 14, part 8): diffusers' DDIM clipping semantics and
dynamic thresholding, DNO's regulariser without permutations, SVDD's warning on a deterministic
kernel, and the FK max/sum caveat."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

import svdd
from svdd.algorithms import smc as smc_module
from svdd.algorithms.dno import concentration_log_bounds, probability_regularizer
from svdd.testing import GaussianMixtureToy

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_unet(seed=0):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def _ddim_trajectories(sched, process, unet, K=10):
    """(ours, diffusers', whether any x0 was clipped) for the same start and the scheduler's grid."""
    sched.set_timesteps(K)
    x_ref = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    x, ts, clipped = x_ref.clone(), process.timesteps(K), False
    with torch.no_grad():
        for k, timestep in enumerate(sched.timesteps):
            assert int(ts[k]) - 1 == int(timestep)
            out = unet(x_ref, timestep).sample
            x_ref = sched.step(out, timestep, x_ref, eta=0.0).prev_sample     # use_clipped_model_output=False
            x0_hat = process.predict_x0(x, ts[k])
            clipped |= bool((process.clip_x0(x0_hat) != x0_hat).any())
            x = process.transition(x, ts[k], ts[k + 1], x0_hat=x0_hat).mean
    return x, x_ref, clipped


def test_ddim_clip_sample_keeps_the_networks_eps_like_diffusers():
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=True, timestep_spacing="trailing",
                                    set_alpha_to_one=True)
    process = svdd.from_diffusers(unet, sched, eta=0.0)
    assert process.clip_sample == 1.0 and not process.use_clipped_model_output
    x, x_ref, clipped = _ddim_trajectories(sched, process, unet)
    assert clipped                                           # the test exercises the clipping
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
    # the old behaviour (ε recomputed from the clipped x0) is measurably different
    old = svdd.from_diffusers(unet, sched, eta=0.0, use_clipped_model_output=True)
    x_old, _, _ = _ddim_trajectories(sched, old, unet)
    assert float((x_old - x_ref).abs().max()) > 1e-3


def test_ddim_dynamic_thresholding_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet(seed=2)
    sched = diffusers.DDIMScheduler(num_train_timesteps=100, thresholding=True, dynamic_thresholding_ratio=0.9,
                                    sample_max_value=1.5, clip_sample=False, timestep_spacing="trailing",
                                    set_alpha_to_one=True)
    process = svdd.from_diffusers(unet, sched, eta=0.0)
    assert process.thresholding and process.dynamic_thresholding_ratio == 0.9 and process.sample_max_value == 1.5
    x, x_ref, clipped = _ddim_trajectories(sched, process, unet)
    assert clipped
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)


def test_ddpm_scheduler_keeps_the_ddpm_posterior_at_eta_1_and_ddim_semantics_otherwise():
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, clip_sample=True)
    assert svdd.from_diffusers(unet, sched).use_clipped_model_output             # DDPMPipeline's step
    assert not svdd.from_diffusers(unet, sched, eta=0.0).use_clipped_model_output  # DDIMPipeline's step


def test_bad_thresholding_options_are_one_line_errors():
    with pytest.raises(ValueError, match="dynamic_thresholding_ratio"):
        svdd.GaussianProcess(lambda x, t: x, torch.linspace(0.99, 0.01, 10), thresholding=True,
                             dynamic_thresholding_ratio=0.0, sample_shape=(2,))


# -- DNO's regulariser ----------------------------------------------------------------------------
def test_dno_regularizer_without_permutations_is_nonnegative_and_zero_for_gaussian_noise():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(400, 256, generator=g, dtype=torch.float64)
    clean = concentration_log_bounds(flat) == -2 * math.log(2)   # draws that trip no bound
    assert clean.sum() > 50
    r0 = probability_regularizer(flat, num_permutations=0)
    assert (r0 >= 0).all() and torch.equal(r0[clean], torch.zeros_like(r0[clean]))
    assert (r0[~clean] > 0).all()
    # drifted noise is penalised, and the permuted version keeps its own 0 as well
    assert (probability_regularizer(flat + 0.5, num_permutations=0) > 0).all()
    r10 = probability_regularizer(flat, num_permutations=10, generator=torch.Generator().manual_seed(1))
    assert (r10 >= -1e-12).all() and float(r10.median()) < 0.5


def test_dno_reports_a_nonnegative_regularizer_with_no_permutations():
    toy = GaussianMixtureToy.ring()
    res = svdd.sample(toy.process(), toy.reward, method="dno", num_samples=3, num_steps=4, num_iterations=2,
                      num_permutations=0, generator=torch.Generator().manual_seed(0))
    assert all(r >= 0 for r in res.info["regularizer"]) and (res.info["final_regularizer"] >= 0).all()


# -- SVDD on a deterministic kernel ----------------------------------------------------------------
def test_svdd_warns_that_a_deterministic_kernel_reduces_it_to_plain_sampling():
    toy = GaussianMixtureToy.default()
    with pytest.warns(UserWarning, match="reduces to plain sampling"):
        res = svdd.sample(toy.process(eta=0.0), toy.reward, method="svdd-pm", num_samples=4, num_steps=5,
                          num_candidates=4, generator=torch.Generator().manual_seed(0))
    ancestral = svdd.sample(toy.process(eta=0.0), toy.reward, method="ancestral", num_samples=4, num_steps=5,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x0, ancestral.x0)                 # what the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svdd.sample(toy.process(eta=1.0), toy.reward, method="svdd-pm", num_samples=4, num_steps=5,
                    num_candidates=4, generator=torch.Generator().manual_seed(0))


# -- FK potentials --------------------------------------------------------------------------------
def test_fk_max_and_sum_docstring_says_they_are_not_the_tilted_target():
    doc = " ".join(smc_module.__doc__.split())
    assert "not the tilted target at any particle count" in doc
    assert "scripts/fk_potentials.py" in doc and "1.18" in doc
