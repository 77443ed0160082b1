"""The images training script: its pure-torch UNet must be diffusers' UNet2DModel (same
parameter names, same outputs), its schedule diffusers' cosine one, and its output folder a
loadable DDPMPipeline — the GPU machine trains without diffusers and relies on all three."""

from __future__ import annotations

import os

import pytest
import torch

from script_loader import load_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")


def _script(name):
    return load_script(f"scripts/{name}.py")


ti = _script("train_images")


@pytest.mark.parametrize("config", [ti.UNET_CONFIG, ti.SMALL_UNET_CONFIG,
                                    dict(ti.UNET_CONFIG, block_out_channels=[8, 16], norm_num_groups=4,
                                         down_block_types=["DownBlock2D"] * 2, up_block_types=["UpBlock2D"] * 2,
                                         layers_per_block=1, in_channels=3, out_channels=3, sample_size=8)])
def test_torch_unet_is_diffusers_unet2dmodel(config):
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(**config).eval()
    twin = ti.DiffusersUNet2D(config).eval()
    assert sorted(twin.state_dict()) == sorted(ref.state_dict())
    twin.load_state_dict(ref.state_dict(), strict=True)
    s = config["sample_size"]
    x = torch.randn(3, config["in_channels"], s, s)
    t = torch.tensor([0, 517, 999])
    with torch.no_grad():
        torch.testing.assert_close(twin(x, t), ref(x, t).sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(twin(x, 5), ref(x, 5).sample, rtol=1e-5, atol=1e-5)


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="attention"):
        ti.DiffusersUNet2D(dict(ti.UNET_CONFIG, add_attention=True))


def test_cosine_schedule_is_diffusers_squaredcos():
    sched = diffusers.DDPMScheduler(**ti.SCHEDULER_CONFIG)
    torch.testing.assert_close(ti.cosine_alphas_cumprod(), sched.alphas_cumprod)


@pytest.mark.parametrize("size", ["base", "small"])
def test_written_pipeline_loads_in_diffusers_and_svdd(tmp_path, size):
    torch.manual_seed(0)
    twin = ti.DiffusersUNet2D(ti.UNET_CONFIGS[size]).eval()
    folder = ti.write_ddpm_pipeline(twin, tmp_path / "digits-ddpm")
    pipe = diffusers.DDPMPipeline.from_pretrained(str(folder))
    for k, v in twin.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[k], v)
    from svdd.domains.images import load_digits

    process = load_digits(path=folder)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = process.model_output(x, torch.tensor(300.0))
        torch.testing.assert_close(out, twin(x, torch.full((2,), 299)), rtol=1e-5, atol=1e-5)


def test_random_shift_moves_content_by_at_most_one_pixel():
    x = -torch.ones(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = ti.random_shift(x, torch.Generator().manual_seed(0))
    pos = (y[:, 0] == 1).nonzero()[:, 1:]
    assert len(pos) == 64 and (pos - 8).abs().max() <= 1 and len({tuple(p) for p in pos.tolist()}) > 3


def test_prepared_data_splits_are_disjoint_and_cover_everything():
    prep = _script("prepare_images")
    data = prep.load_digits16(seed=0)
    assert data["images"].shape == (1797, 1, 16, 16) and data["images"].dtype == torch.uint8
    counts = torch.bincount(data["split"], minlength=3).tolist()
    assert counts == list(prep.SPLIT_SIZES)
    assert torch.equal(prep.load_digits16(seed=0)["split"], data["split"])


@pytest.mark.slow
def test_training_smoke_runs_on_cpu(tmp_path):
    prep = _script("prepare_images")
    prep.main(["--out", str(tmp_path / "data")])
    ti.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--device", "cpu", "--smoke"])
    assert (tmp_path / "out" / "digits-ddpm" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "out" / "classifier.safetensors").exists()
    assert (tmp_path / "out" / "training.json").exists()
