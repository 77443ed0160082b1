"""Images domain pack: rewards, metrics, files, loading saved diffusers folders, and the shipped
digits model when its weights are present."""

from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
PIL = pytest.importorskip("PIL")

import svdd  # noqa: E402
from svdd.domains import get_domain  # noqa: E402
from svdd.domains.base import DomainError  # noqa: E402
from svdd.domains.images import metrics as image_metrics  # noqa: E402
from svdd.domains.images import rewards as image_rewards  # noqa: E402
from svdd.domains.images.networks import DigitClassifier, ImageValueNetwork, load_network, save_network  # noqa: E402

DOMAIN = get_domain("images")
SHIPPED = (svdd.domains.images.DIGITS_DDPM_PATH / "unet" / "diffusion_pytorch_model.safetensors").exists()


def digit_like(n=4, seed=0):
    """Smooth blobs on a black background, like the digits data (pixels in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    c = 4 + 8 * torch.rand(n, 2, generator=g)
    blob = torch.exp(-((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2) / 8)
    return (blob * 2 - 1).unsqueeze(1)


# -- rewards -------------------------------------------------------------------------------------
def test_compressibility_is_minus_jpeg_kilobytes():
    from PIL import Image

    flat = -torch.ones(1, 1, 16, 16)
    noise = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reward = DOMAIN.make_reward("compressibility")
    assert reward.differentiable is False
    r = reward(torch.cat([flat, noise]))
    assert r[0] > r[1]                       # a flat image compresses better than noise
    buf = io.BytesIO()
    arr = image_rewards.to_uint8(noise)[0, :, :, 0].numpy()
    Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=95)
    assert r[1].item() == pytest.approx(-len(buf.getvalue()) / 1000.0)
    rgb = torch.rand(2, 3, 16, 16) * 2 - 1
    assert reward(rgb).shape == (2,)
    assert DOMAIN.make_reward("compressibility:10")(noise) > r[1]   # lower quality -> smaller file
    with pytest.raises(DomainError):
        DOMAIN.make_reward("compressibility:0")


def test_brightness_and_gradients():
    reward = DOMAIN.make_reward("brightness")
    x = torch.zeros(2, 1, 16, 16, requires_grad=True)
    r = reward(x)
    torch.testing.assert_close(r, torch.full((2,), 0.5))
    r.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5 / 256))


def test_classifier_reward_is_a_log_probability(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DigitClassifier(width=8)
    path = tmp_path / "clf.safetensors"
    save_network(model, path)
    loaded = load_network(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    monkeypatch.setattr(svdd.domains.images, "CLASSIFIER_PATH", path)
    svdd.domains.images._classifier.cache_clear()
    try:
        x = digit_like(3).requires_grad_(True)
        total = torch.stack([DOMAIN.make_reward(f"classifier:{d}")(x) for d in range(10)]).exp().sum(0)
        torch.testing.assert_close(total.detach(), torch.ones(3), rtol=1e-5, atol=1e-5)
        reward = DOMAIN.make_reward("classifier:7")
        assert reward.differentiable and reward.name == "classifier:7"
        reward(x).sum().backward()
        assert x.grad.abs().sum() > 0
        big = torch.rand(2, 3, 32, 32) * 2 - 1     # any image size / channel count is accepted
        assert reward(big).shape == (2,)
    finally:
        svdd.domains.images._classifier.cache_clear()
    for bad in ("classifier", "classifier:10", "classifier:x"):
        with pytest.raises(DomainError, match="digit"):
            DOMAIN.make_reward(bad)
    with pytest.raises(DomainError, match="unknown reward"):
        DOMAIN.make_reward("aesthetic")


def test_weighted_reward_spec():
    r = DOMAIN.make_reward("brightness+-2*compressibility")
    x = digit_like(2)
    expected = image_rewards.Brightness()(x) + 2 * image_rewards.jpeg_kilobytes(x)
    torch.testing.assert_close(r(x), expected)


# -- metrics -------------------------------------------------------------------------------------
def test_pairwise_diversity():
    x = digit_like(6)
    assert image_metrics.pairwise_diversity(x[:1].repeat(5, 1, 1, 1)) == pytest.approx(0.0, abs=1e-6)
    d = image_metrics.pairwise_diversity(x)
    assert 0 < d <= 2
    f = torch.eye(4)                               # orthogonal features: cosine 0 -> diversity 1
    assert image_metrics.pairwise_diversity(f, center=False) == pytest.approx(1.0)


def test_elbo_proxy_matches_closed_form():
    """With x0_hat ≡ 0 every KL term is deterministic: |c_t x0|²/(2 β̃_t); with one stratum per
    timestep (K = T − 1) the estimator is the exact sum."""
    T = 20
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="sample", clip_sample=False)

    def zero_model(x, t):
        return torch.zeros_like(x)

    process = svdd.GaussianProcess(zero_model, sched.alphas_cumprod, prediction_type="sample", sample_shape=(1, 4, 4))
    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    got = image_metrics.elbo_proxy_bits_per_dim(process, x0, num_timesteps=T - 1)
    ab = torch.cat([torch.ones(1, dtype=torch.float64), sched.alphas_cumprod.double()])
    sq = x0.double().flatten(1).pow(2).sum(1)
    total = torch.zeros(3, dtype=torch.float64)
    for t in range(2, T + 1):
        beta = 1 - ab[t] / ab[t - 1]
        c = ab[t - 1].sqrt() * beta / (1 - ab[t])
        var = beta * (1 - ab[t - 1]) / (1 - ab[t])
        total += c ** 2 * sq / (2 * var)
    prior = 0.5 * (ab[T] * x0.double().flatten(1).pow(2) + (1 - ab[T]) - 1 - torch.log(1 - ab[T])).sum(1)
    expected = (total + prior) / (16 * math.log(2))
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


# -- loading saved diffusers folders and running the domain end to end ----------------------------
def tiny_digits_pipeline(folder):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


def test_load_diffusers_folders(tmp_path):
    folder = tiny_digits_pipeline(tmp_path / "pipe")
    load = DOMAIN.extra["load_diffusers"]
    process = load(folder, "cpu")
    assert process.sample_shape == (1, 16, 16) and process.num_train_timesteps == 100
    unet_only = load(folder / "unet", "cpu")        # a UNet folder finds ../scheduler
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(unet_only.predict_x0(x, torch.tensor(50.0)), process.predict_x0(x, torch.tensor(50.0)))
    with pytest.raises(DomainError, match="not a diffusers folder"):
        load(tmp_path, "cpu")
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(DomainError, match="scheduler_config.json"):
        load(tmp_path / "lonely", "cpu")


def test_domain_outputs_end_to_end(tmp_path):
    process = DOMAIN.extra["load_diffusers"](tiny_digits_pipeline(tmp_path / "pipe"), "cpu")
    reward = DOMAIN.make_reward("compressibility")
    res = svdd.sample(process, reward, method="svdd-pm", num_samples=6, num_steps=3, num_candidates=2,
                      generator=torch.Generator().manual_seed(0))
    decoded = DOMAIN.decode(res.x0)
    cols = DOMAIN.sample_columns(res.x0, decoded, process)
    torch.testing.assert_close(torch.tensor(cols["jpeg_kb"]), -res.rewards, atol=1e-3, rtol=0)
    metrics = DOMAIN.metrics(res.x0, decoded, process)
    assert 0 <= metrics["diversity_pixels"] <= 2 and metrics["elbo_proxy_bits_per_dim"] > 0
    files = DOMAIN.write_files(tmp_path / ".", res.x0, decoded, res.rewards, {"reward": "compressibility"})
    from PIL import Image

    names = sorted(p.name for p in files)
    assert names == ["best.png", "median.png", "samples.png"]
    img = Image.open(tmp_path / "best.png")
    assert img.mode == "L" and img.width > 16


def test_x0_hat_strip(tmp_path):
    from svdd.domains.images.viz import X0HatRecorder, best_and_median

    process = DOMAIN.extra["load_diffusers"](tiny_digits_pipeline(tmp_path / "pipe"), "cpu")
    rec = X0HatRecorder(index=1)
    svdd.sample(process, DOMAIN.make_reward("brightness"), method="svdd-pm", num_samples=3, num_steps=4,
                num_candidates=2, generator=torch.Generator().manual_seed(0), callback=rec)
    assert len(rec.frames) == 4 and rec.strip().shape == (4, 1, 16, 16)
    path = rec.save(tmp_path / "strip.png")
    assert path.exists()
    rewards = torch.tensor([0.0, 5.0, 1.0, 3.0, 2.0])
    best, median = best_and_median(rewards, k=3)
    assert best.tolist() == [1, 3, 4] and sorted(median.tolist()) == [2, 3, 4]   # values 1, 2, 3 around the median 2
    assert best_and_median(rewards, k=1)[1].tolist() == [4]


def test_value_network_shapes_and_registration(tmp_path):
    from svdd.values.learned import LearnedValue, load_value

    net = DOMAIN.extra["value_network"](svdd.GaussianProcess(lambda x, t: x, torch.linspace(0.99, 0.01, 10),
                                                              sample_shape=(1, 16, 16)))
    assert isinstance(net, ImageValueNetwork)
    value = LearnedValue(net, time_scale=10.0, target_mean=1.0, target_std=2.0)
    value.save(tmp_path / "v")
    back = load_value(tmp_path / "v")
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(back(x, torch.tensor(5.0)), value(x, torch.tensor(5.0)))
    assert not torch.allclose(value(x, torch.tensor(1.0)), value(x, torch.tensor(9.0)))   # uses time


def test_missing_weights_are_a_one_line_error(tmp_path):
    with pytest.raises(DomainError, match="train_images.py"):
        svdd.domains.images.load_digits(path=tmp_path)


# -- the shipped model (only when its weights are installed) -------------------------------------
@pytest.mark.skipif(not SHIPPED, reason="digits DDPM weights not installed")
def test_shipped_digits_model_makes_digits():
    process = DOMAIN.load_process()
    assert process.sample_shape == (1, 16, 16)
    res = svdd.sample(process, DOMAIN.make_reward("brightness"), method="ancestral", num_samples=32, num_steps=50,
                      generator=torch.Generator().manual_seed(0))
    metrics = DOMAIN.metrics(res.x0, DOMAIN.decode(res.x0), process)
    # the independent evaluation classifier is confident on the samples and sees several digits
    assert metrics["eval_confidence_mean"] > 0.7
    assert sum(c > 0 for c in metrics["eval_digit_counts"]) >= 6


@pytest.mark.skipif(not SHIPPED, reason="digits DDPM weights not installed")
def test_shipped_model_svdd_raises_the_classifier_reward():
    process = DOMAIN.load_process()
    reward = DOMAIN.make_reward("classifier:0")
    kwargs = dict(num_samples=8, num_steps=10, generator=torch.Generator().manual_seed(0))
    base = svdd.sample(process, reward, method="ancestral", **kwargs)
    tilted = svdd.sample(process, reward, method="svdd-pm", num_candidates=4, **kwargs)
    assert tilted.rewards.median() > base.rewards.median() + 1.0
    path = DOMAIN.extra["values"]["classifier:0"]
    if path.exists():
        from svdd.values.learned import load_value

        value = load_value(path)
        assert value.meta["cost"]["nfe"] > 0
        mc = svdd.sample(process, reward, method="svdd-mc", value_fn=value, num_candidates=4, **kwargs)
        assert mc.rewards.median() > base.rewards.median()
