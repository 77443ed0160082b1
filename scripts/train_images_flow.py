"""Train the images domain's rectified-flow model ``digits-flow`` on the 16×16 digits.

Rectified flow (Liu et al. 2022; SD3's parameterisation): ``x_σ = (1 − σ)·x0 + σ·ε`` with
``ε ~ N(0, I)``, the network predicts the velocity ``v = ε − x0`` from ``(x_σ, t = 1000·σ)``
(the float timesteps ``FlowMatchEulerDiscreteScheduler`` passes), loss ``‖v − v_θ‖²``. σ is
drawn logit-normal (``σ = sigmoid(n)``, ``n ~ N(0, 1)``, SD3's default) mixed with 10 % uniform
draws so both ends of the path are trained. Same network as the shipped DDPM
(``scripts/train_images.py --unet small``: diffusers ``UNet2DModel`` 16/32/32, 1 layer per
level, 263 k parameters; ``--init`` warm-starts from the DDPM's weights), same data (splits
A + B with ±1-pixel shifts), AdamW (lr 1e-3, 100 warm-up steps, grad clip 1), EMA 0.999.

The output is a diffusers folder (``model_index.json``, ``unet/``, ``scheduler/`` with a
``FlowMatchEulerDiscreteScheduler`` config, shift 1), so ``svdd.from_diffusers(UNet2DModel
.from_pretrained(path, subfolder="unet"), FlowMatchEulerDiscreteScheduler.from_pretrained(path,
subfolder="scheduler"))`` and ``svdd sample --domain images --model digits-flow`` load it.
``DDPMPipeline.from_pretrained(path)`` loads it too, and its loop (randn, ``unet(x, t)``,
``scheduler.step``) is then exactly the FlowMatch Euler sampler, svdd's eta = 0.

``--evaluate FOLDER`` samples it (Euler, eta 0, and the eta = 1 posterior) and scores the
samples with the held-out evaluation classifier, as docs/images.md reports for the DDPM.

    python scripts/prepare_images.py                      # .gpu-data/images/digits16.pt
    python scripts/train_images_flow.py --time-budget 780 --out runs/images-flow \\
        --init src/svdd/domains/images/assets/digits-ddpm
    python scripts/train_images_flow.py --evaluate src/svdd/domains/images/assets/digits-flow
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
                    "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
                    "invert_sigmas": False, "shift_terminal": None, "use_karras_sigmas": False,
                    "use_exponential_sigmas": False, "use_beta_sigmas": False, "time_shift_type": "exponential",
                    "stochastic_sampling": False}


def _load_train_images():
    """``scripts/train_images.py`` by path: the UNet replica, data loading, safetensors writer."""
    spec = importlib.util.spec_from_file_location("svdd_train_images", ROOT / "scripts" / "train_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ti = _load_train_images()


def sample_sigma(n, generator, device, uniform_fraction=0.1):
    """Logit-normal σ (mean 0, std 1) with a ``uniform_fraction`` of U(0, 1) draws."""
    logit = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    uniform = torch.rand(n, generator=generator, device=device)
    pick = torch.rand(n, generator=generator, device=device) < uniform_fraction
    return torch.where(pick, uniform, logit).clamp(1e-4, 1.0)


def flow_loss(model, x0, sigma, eps):
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    return F.mse_loss(model(x_t, sigma * 1000.0).float(), eps - x0)


def train_flow(x, *, device, time_budget, max_steps, batch_size, lr, seed, log, warmup=100,
               config=ti.SMALL_UNET_CONFIG, init=None):
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    model = ti.DiffusersUNet2D(config)
    if init is not None:   # warm start from the DDPM's weights (same architecture, other target)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(init) / "unet" / "diffusion_pytorch_model.safetensors")))
        log(f"flow initialised from {init}")
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, step, losses = time.time(), 0, []
    while step < max_steps and time.time() - start < time_budget:
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen, device=device)
        x0 = ti.random_shift(x[idx], gen)
        sigma = sample_sigma(batch_size, gen, device)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        loss = flow_loss(model, x0, sigma, eps)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 200 == 0 or step == 1:
            log(f"flow step {step} loss {sum(losses[-1000:]) / len(losses[-1000:]):.4f} "
                f"elapsed {time.time() - start:.0f}s")
    return ema, {"steps": step, "final_loss_mean_last_1000": sum(losses[-1000:]) / max(len(losses[-1000:]), 1),
                 "wall_time_s": time.time() - start, "batch_size": batch_size, "lr": lr, "seed": seed,
                 "sigma_sampling": "logit-normal(0, 1) with 10% uniform", "target": "v = eps - x0",
                 "ema_decay": 0.999, "init": str(init) if init else None}


@torch.no_grad()
def flow_eval_loss(model, x, *, device, seed, num_draws=8):
    """Mean velocity MSE over σ ~ U(0, 1) on the held-out images."""
    gen = torch.Generator(device=device).manual_seed(seed + 99)
    total = 0.0
    for _ in range(num_draws):
        sigma = torch.rand(x.shape[0], generator=gen, device=device).clamp(1e-4, 1.0)
        eps = torch.randn(x.shape, generator=gen, device=device)
        total += flow_loss(model, x, sigma, eps).item()
    return total / num_draws


def write_flow_pipeline(model, out: Path, dtype=torch.float32) -> Path:
    """A diffusers folder: ``UNet2DModel`` + ``FlowMatchEulerDiscreteScheduler`` (a ``DDPMPipeline``
    whose scheduler is FlowMatch: that pipeline's loop is the flow's Euler sampler)."""
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    version = ti.DIFFUSERS_VERSION
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "_diffusers_version": version,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "unet": ["diffusers", "UNet2DModel"]},
        indent=2))
    (out / "unet" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DModel", "_diffusers_version": version, **model.config}, indent=2))
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": version, **SCHEDULER_CONFIG},
        indent=2))
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    ti.networks.write_safetensors(state, out / "unet" / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    return out


def evaluate(folder: Path, *, num_samples: int, num_steps: int, seed: int, grid_out=None) -> dict:
    """Sample with eta 0 (Euler) and eta 1; held-out classifier accuracy proxy and confidence."""
    sys.path.insert(0, str(ROOT / "src"))
    import svdd
    from svdd.domains.images import load_diffusers
    from svdd.domains.images import rewards as R
    from svdd.domains.images import CLASSIFIER_EVAL_PATH

    clf = R.load_classifier(CLASSIFIER_EVAL_PATH, "cpu")
    report = {"num_samples": num_samples, "num_steps": num_steps, "seed": seed}
    grids = []
    for eta in (0.0, 1.0):
        process = load_diffusers(folder, "cpu", eta=eta)
        res = svdd.sample(process, lambda x: x.new_zeros(x.shape[0]), method="ancestral", num_samples=num_samples,
                          num_steps=num_steps, generator=torch.Generator().manual_seed(seed))
        x0 = res.x0.float().clamp(-1, 1)
        with torch.no_grad():
            probs = torch.softmax(clf(R.to_digit_input(x0)), dim=1)
        conf, label = probs.max(1)
        report[f"eta{eta:g}"] = {
            "mean_max_prob": conf.mean().item(), "frac_confident_0.9": (conf > 0.9).float().mean().item(),
            "class_histogram": torch.bincount(label, minlength=10).tolist(),
            "pixel_mean": x0.mean().item()}
        grids.append(x0[:32])
    if grid_out is not None:
        save_grid(grids, Path(grid_out))
    return report


def save_grid(grids, path: Path, cols: int = 16, scale: int = 4) -> None:
    """Rows of 16×16 samples (one block per kernel, separated by a gap) as a PNG."""
    from PIL import Image

    blocks = []
    for x in grids:
        x = ((x + 1) / 2).clamp(0, 1)
        n = (x.shape[0] // cols) * cols
        x = x[:n].view(-1, cols, 16, 16).permute(0, 2, 1, 3).reshape(-1, cols * 16)
        blocks.append(x)
        blocks.append(torch.full((4, cols * 16), 1.0))
    img = torch.cat(blocks[:-1], 0)
    arr = (img * 255).round().to(torch.uint8).numpy()
    im = Image.fromarray(arr, mode="L").resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=".gpu-data/images")
    p.add_argument("--out", default="runs/images-flow")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=780.0, help="training seconds")
    p.add_argument("--max-steps", type=int, default=60000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", default=None, help="warm start from this digits-ddpm folder (same UNet)")
    p.add_argument("--evaluate", default=None, help="sample and score this flow folder instead of training")
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--grid", default=None, help="with --evaluate: write a sample grid PNG here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        print(json.dumps(evaluate(Path(args.evaluate), num_samples=args.eval_samples, num_steps=args.eval_steps,
                                  seed=args.seed, grid_out=args.grid), indent=1))
        return
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "a")

    def log(msg):
        line = f"[images-flow {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    log(f"device {device}, torch {torch.__version__}, threads {args.threads}, args {vars(args)}")
    x, y, split = ti.load_data(Path(args.data), device)
    report = {"data": {"images": int(x.shape[0]), "train_splits": "A + B", "train_images": int((split != 2).sum())}}
    ema, report["flow"] = train_flow(x[split != 2], device=device, time_budget=args.time_budget,
                                     max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                                     seed=args.seed, log=log, init=args.init)
    report["flow"]["eval_velocity_mse_heldout"] = flow_eval_loss(ema, x[split == 2], device=device, seed=args.seed)
    report["flow"]["num_parameters"] = sum(p.numel() for p in ema.parameters())
    report["flow"]["unet"] = "small (16/32/32, 1 layer per level)"
    report["flow"]["command"] = "python scripts/train_images_flow.py " + " ".join(argv or sys.argv[1:])
    write_flow_pipeline(ema, out / "digits-flow", dtype=torch.float32)
    (out / "training.json").write_text(json.dumps(report, indent=1))
    log(f"flow: {json.dumps(report['flow'])}")
    log("done")


if __name__ == "__main__":
    main()
