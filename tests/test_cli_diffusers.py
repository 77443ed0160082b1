"""`svdd sample --diffusers FOLDER`: saved pipeline folders of the families svdd adapts load and
sample (DDPM, a flow-matching UNet pipeline); `--prompt` on an unconditional model and a hub id
end in one `svdd: error:` line."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

from svdd.cli import main  # noqa: E402
from svdd.domains.images import load_diffusers  # noqa: E402


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=100)) \
        .save_pretrained(root / "ddpm")
    # a flow-matching pixel model: the same layout with a FlowMatchEulerDiscreteScheduler
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(root / "flow")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0).save_pretrained(root / "flow" / "scheduler")
    index = json.loads((root / "flow" / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (root / "flow" / "model_index.json").write_text(json.dumps(index))
    return root


def _sample(folder, out, *extra):
    return main(["sample", "--domain", "images", "--diffusers", str(folder), "--reward", "brightness",
                 "--method", "svdd-pm", "--num-samples", "2", "--num-steps", "3", "--num-candidates", "2",
                 "--out", str(out), "--quiet", "--no-baseline", *extra])


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_saved_pipeline_folders_sample(folders, tmp_path, name):
    assert _sample(folders / name, tmp_path / "run") == 0
    process = load_diffusers(folders / name)
    from svdd.domains.images import DOMAIN

    x0 = torch.zeros(2, 1, 8, 8)
    metrics = DOMAIN.metrics(x0, DOMAIN.decode(x0), process)
    assert ("elbo_proxy_bits_per_dim" in metrics) == (name == "ddpm")      # the DDPM bound is VP only
    if name == "flow":
        assert process.prediction_type == "flow" and process.is_flow
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0)
        sched.set_timesteps(3)
        assert torch.equal(process.timesteps(3)[:-1].float(), sched.timesteps)   # the shifted grid
    else:
        assert process.timesteps(3)[:-1].tolist() == [67.0, 34.0, 1.0]        # DDPM "leading", 100 // 3 = 33


def test_prompt_on_an_unconditional_model_is_refused(folders, tmp_path, capsys):
    assert _sample(folders / "ddpm", tmp_path / "run", "--prompt", "a cat") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svdd: error:") and "unconditional" in err[0]
    assert not (tmp_path / "run" / "samples.csv").exists()


def test_a_hub_id_is_told_to_save_pretrained_first(tmp_path, capsys):
    assert _sample("stabilityai/stable-diffusion-3-medium-diffusers", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svdd: error:") and "save_pretrained" in err[0]


def test_a_saved_text_pipeline_folder_samples_with_a_prompt(tmp_path):
    """A saved StableDiffusionPipeline folder (tiny CLIP text encoder and a word-level tokenizer,
    as tests/test_reward_pipeline.py builds them) loads with --diffusers and --prompt; its
    samples equal the Python path with the same prompt and seed, and --prompt is required."""
    pytest.importorskip("transformers")
    from test_reward_pipeline import tiny_sd_pipeline

    folder = tmp_path / "sd"
    tiny_sd_pipeline().save_pretrained(folder)
    out = tmp_path / "run"
    assert main(["sample", "--domain", "images", "--diffusers", str(folder), "--prompt", "a red cat",
                 "--guidance-scale", "2.0", "--reward", "brightness", "--method", "svdd-pm", "--num-samples", "2",
                 "--num-steps", "3", "--num-candidates", "2", "--out", str(out), "--quiet", "--no-baseline"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 2 and "eval_digit_counts" not in summary["metrics"]   # no digit metrics
    assert main(["sample", "--domain", "images", "--diffusers", str(folder), "--reward", "brightness",
                 "--num-samples", "2", "--num-steps", "3", "--out", str(tmp_path / "r2"), "--quiet"]) == 2
