"""Train the images domain's models on the 16×16 digits (see ``scripts/prepare_images.py``).

1. **DDPM**: a diffusers ``UNet2DModel`` (``--unet base``: 3 levels 32/64/64, 2 ResNet layers
   per level, no attention, 1.5 M parameters; ``--unet small``, the CPU default: 16/32/32, 1 layer,
   0.26 M) with ε-prediction on the cosine ("squaredcos_cap_v2") schedule, T = 1000,
   loss ``‖ε − ε_θ(sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε, t)‖²``, AdamW, EMA. Data: splits A + B
   with random ±1-pixel shifts. Written as a diffusers ``DDPMPipeline`` folder
   (``model_index.json``, ``unet/``, ``scheduler/``), so ``DDPMPipeline.from_pretrained`` and
   ``UNet2DModel.from_pretrained(path, subfolder="unet")`` load it.
2. **Classifiers**: the reward classifier on split A, the evaluation classifier on split B
   (wider, dropout, another seed); both with light Gaussian-noise augmentation; accuracy on
   the held-out split.
3. **Value network** (optional, SVDD-MC): Monte Carlo regression of the ``classifier:0``
   reward on pretrained rollouts via ``svdd.values.learned.fit_value`` when it is available.

The GPU machine has no diffusers, so the UNet is built by ``DiffusersUNet2D`` below, a
pure-torch replica of ``UNet2DModel`` for this family of configs (no attention, "default"
time-embedding norm) with *identical parameter names and forward* — ``tests/test_images_train.py``
checks it against diffusers. Weights are written as safetensors without the safetensors
package (``networks.write_safetensors``).

    python scripts/train_images.py --data .gpu-data/images --out runs/images-train \\
        --device cuda --time-budget 300
    python scripts/train_images.py --device cpu --time-budget 10 --smoke     # CPU smoke test
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DIFFUSERS_VERSION = "0.42.1"

UNET_CONFIG = {
    "sample_size": 16, "in_channels": 1, "out_channels": 1, "center_input_sample": False,
    "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 16, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": False,
}
# CPU-sized variant (no GPU lent): 0.26 M parameters, ~6x cheaper per step and per sample
SMALL_UNET_CONFIG = dict(UNET_CONFIG, block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8)
UNET_CONFIGS = {"base": UNET_CONFIG, "small": SMALL_UNET_CONFIG}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001,
    "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
    "variance_type": "fixed_small", "timestep_spacing": "leading", "steps_offset": 0,
}


def _load_networks_module():
    """``svdd.domains.images.networks`` by file path (no package import: torch only)."""
    path = ROOT / "src" / "svdd" / "domains" / "images" / "networks.py"
    spec = importlib.util.spec_from_file_location("svdd_images_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


networks = _load_networks_module()


# --------------------------------------------------------------------------------------------
# pure-torch replica of diffusers.UNet2DModel (DownBlock2D / UpBlock2D / UNetMidBlock2D without
# attention); parameter names match diffusers' state dict exactly
# --------------------------------------------------------------------------------------------
def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0):
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - shift)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class _TimestepEmbedding(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.linear_1 = nn.Linear(cin, cout)
        self.linear_2 = nn.Linear(cout, cout)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class _ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups, eps, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class _Resample(nn.Module):
    def __init__(self, channels, down):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=1)

    def forward(self, x):
        if not self.down:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class _DownBlock(nn.Module):
    def __init__(self, cin, cout, temb, layers, downsample, groups, eps, dropout):
        super().__init__()
        self.resnets = nn.ModuleList(_ResnetBlock2D(cin if i == 0 else cout, cout, temb, groups, eps, dropout)
                                     for i in range(layers))
        self.downsamplers = nn.ModuleList([_Resample(cout, True)]) if downsample else None

    def forward(self, x, temb):
        states = ()
        for resnet in self.resnets:
            x = resnet(x, temb)
            states += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states += (x,)
        return x, states


class _UpBlock(nn.Module):
    def __init__(self, cin, cout, prev, temb, layers, upsample, groups, eps, dropout):
        super().__init__()
        self.resnets = nn.ModuleList(
            _ResnetBlock2D((prev if i == 0 else cout) + (cin if i == layers - 1 else cout), cout, temb, groups, eps,
                           dropout) for i in range(layers))
        self.upsamplers = nn.ModuleList([_Resample(cout, False)]) if upsample else None

    def forward(self, x, skips, temb):
        for resnet in self.resnets:
            x = resnet(torch.cat([x, skips[-1]], dim=1), temb)
            skips = skips[:-1]
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _MidBlock(nn.Module):
    def __init__(self, channels, temb, groups, eps, dropout):
        super().__init__()
        self.attentions = nn.ModuleList()
        self.resnets = nn.ModuleList(_ResnetBlock2D(channels, channels, temb, groups, eps, dropout) for _ in range(2))

    def forward(self, x, temb):
        return self.resnets[1](self.resnets[0](x, temb), temb)


class DiffusersUNet2D(nn.Module):
    """``UNet2DModel(**UNET_CONFIG)`` in plain torch; ``forward(sample, timestep) -> tensor``."""

    def __init__(self, config: dict = UNET_CONFIG):
        super().__init__()
        self.config = dict(config)
        if (config.get("add_attention", True) or any(b != "DownBlock2D" for b in config["down_block_types"])
                or any(b != "UpBlock2D" for b in config["up_block_types"])):
            raise ValueError("DiffusersUNet2D replicates only attention-free DownBlock2D/UpBlock2D configs")
        ch, layers = list(config["block_out_channels"]), config["layers_per_block"]
        groups, eps, dropout = config["norm_num_groups"], config["norm_eps"], config["dropout"]
        temb = 4 * ch[0]
        self.ch0 = ch[0]
        self.conv_in = nn.Conv2d(config["in_channels"], ch[0], 3, padding=1)
        self.time_embedding = _TimestepEmbedding(ch[0], temb)
        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i in range(len(ch)):
            cin, out = out, ch[i]
            self.down_blocks.append(_DownBlock(cin, out, temb, layers, i < len(ch) - 1, groups, eps, dropout))
        self.mid_block = _MidBlock(ch[-1], temb, groups, eps, dropout)
        rev = ch[::-1]
        self.up_blocks = nn.ModuleList()
        out = rev[0]
        for i in range(len(ch)):
            prev, out, cin = out, rev[i], rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(_UpBlock(cin, out, prev, temb, layers + 1, i < len(ch) - 1, groups, eps, dropout))
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], config["out_channels"], 3, padding=1)

    def forward(self, sample, timestep):
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.dim() == 0:
            timestep = timestep[None]
        timestep = timestep * torch.ones(sample.shape[0], dtype=timestep.dtype, device=sample.device)
        emb = self.time_embedding(timestep_embedding(timestep, self.ch0).to(sample.dtype))
        x = self.conv_in(sample)
        skips = (x,)
        for block in self.down_blocks:
            x, states = block(x, emb)
            skips += states
        x = self.mid_block(x, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            x, skips = block(x, skips[-n:], emb), skips[:-n]
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """diffusers' ``squaredcos_cap_v2``: β_i = min(1 − f((i+1)/T)/f(i/T), 0.999), f = cos²((s+0.008)/1.008·π/2)."""
    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - f((i + 1) / num_train_timesteps) / f(i / num_train_timesteps), max_beta)
                          for i in range(num_train_timesteps)], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def write_ddpm_pipeline(model: "DiffusersUNet2D", out: Path, dtype=torch.float32) -> Path:
    """A ``DDPMPipeline`` folder diffusers can ``from_pretrained`` (no diffusers needed here)."""
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=2))
    (out / "unet" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION, **model.config}, indent=2))
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **SCHEDULER_CONFIG}, indent=2))
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    networks.write_safetensors(state, out / "unet" / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    return out


# --------------------------------------------------------------------------------------------
# training loops
# --------------------------------------------------------------------------------------------
def load_data(data_dir: Path, device):
    data = torch.load(data_dir / "digits16.pt", map_location="cpu", weights_only=True)
    x = data["images"].float() / 127.5 - 1.0          # [-1, 1]
    return x.to(device), data["labels"].to(device), data["split"].to(device)


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ±max_shift pixels (background −1 fills in)."""
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator, device=x.device)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device)[None, :])            # (B, H)
    cols = (dx[:, None] + torch.arange(W, device=x.device)[None, :])            # (B, W)
    idx = rows[:, :, None] * pad.shape[-1] + cols[:, None, :]                   # (B, H, W)
    flat = pad.flatten(2)
    return flat.gather(2, idx.flatten(1)[:, None, :].expand(-1, flat.shape[1], -1)).view_as(x)


def train_ddpm(x, *, device, time_budget, max_steps, batch_size, lr, seed, log, init=None, warmup=100,
               config=UNET_CONFIG):
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    if init is not None:  # continue from a saved pipeline folder (e.g. a short CPU run)
        from safetensors.torch import load_file

        config = {k: v for k, v in json.loads((Path(init) / "unet" / "config.json").read_text()).items()
                  if not k.startswith("_")}
        model = DiffusersUNet2D(config)
        model.load_state_dict(load_file(str(Path(init) / "unet" / "diffusion_pytorch_model.safetensors")))
        log(f"ddpm initialised from {init}")
    else:
        model = DiffusersUNet2D(config)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ab = cosine_alphas_cumprod(SCHEDULER_CONFIG["num_train_timesteps"]).to(device)
    T = ab.numel()
    start, step, losses = time.time(), 0, []
    while step < max_steps and time.time() - start < time_budget:
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen, device=device)
        x0 = random_shift(x[idx], gen)
        t = torch.randint(0, T, (batch_size,), generator=gen, device=device)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=(device.type == "cuda")):
            pred = model(x_t, t)
        loss = F.mse_loss(pred.float(), eps)
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
            log(f"ddpm step {step} loss {sum(losses[-1000:]) / len(losses[-1000:]):.4f} "
                f"elapsed {time.time() - start:.0f}s")
    return ema, {"steps": step, "final_loss_mean_last_1000": sum(losses[-1000:]) / max(len(losses[-1000:]), 1),
                 "wall_time_s": time.time() - start, "batch_size": batch_size, "lr": lr}


@torch.no_grad()
def ddpm_eval_loss(model, x, *, device, seed, num_draws=8):
    """Mean ε-MSE over random t (a validation figure; the training images themselves)."""
    gen = torch.Generator(device=device).manual_seed(seed + 99)
    ab = cosine_alphas_cumprod().to(device)
    total = 0.0
    for _ in range(num_draws):
        t = torch.randint(0, ab.numel(), (x.shape[0],), generator=gen, device=device)
        eps = torch.randn(x.shape, generator=gen, device=device)
        a = ab[t].view(-1, 1, 1, 1)
        total += F.mse_loss(model(a.sqrt() * x + (1 - a).sqrt() * eps, t), eps).item()
    return total / num_draws


def train_classifier(x, y, x_test, y_test, *, width, dropout, seed, device, epochs, log, name):
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    model = networks.DigitClassifier(width=width, dropout=dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    n, bs = x.shape[0], 64
    steps = epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb = random_shift(x[idx], gen)
            sigma = torch.rand((len(idx), 1, 1, 1), generator=gen, device=device) * 0.3
            xb = xb + sigma * torch.randn(xb.shape, generator=gen, device=device)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    log(f"{name}: width {width}, {epochs} epochs on {n} images, held-out accuracy {acc:.4f}")
    return model, {"width": width, "dropout": dropout, "epochs": epochs, "train_images": n,
                   "test_accuracy": acc, "seed": seed}


def fit_value_network(unet, reward_model, *, device, args, log):
    """SVDD-MC value for ``classifier:0`` with the coordinator's ``fit_value`` (if present)."""
    sys.path.insert(0, str(ROOT / "src"))
    from svdd.process.gaussian import GaussianProcess
    from svdd.values import learned

    process = GaussianProcess(unet, cosine_alphas_cumprod(), prediction_type="epsilon", clip_sample=1.0,
                              sample_shape=(1, 16, 16), device=device)
    target = 0

    def reward_fn(x0):
        return torch.log_softmax(reward_model(x0.float()), dim=1)[:, target]

    reward_fn.differentiable = True
    reward_fn.name = f"classifier:{target}"
    network = networks.ImageValueNetwork(width=32).to(device)
    value, cost = learned.fit_value(process, reward_fn, num_rollouts=args.value_rollouts,
                                    num_steps=args.value_num_steps, network=network,
                                    train_steps=args.value_train_steps, batch_size=256, lr=1e-3, loss="mse",
                                    alpha=0.0, generator=torch.Generator(device=device).manual_seed(args.seed + 7),
                                    device=device)
    log(f"value network fitted: {json.dumps({k: v for k, v in cost.items() if isinstance(v, (int, float))})}")
    return value, cost


def save_learned_value(value, path: Path) -> None:
    """``LearnedValue.save`` layout (value.json + value.safetensors) without the safetensors package."""
    try:
        value.save(path)
        return
    except ImportError:
        pass
    path.mkdir(parents=True, exist_ok=True)
    meta = {"network": type(value.network).__name__, "config": value.network.config, "time_scale": value.time_scale,
            **value.meta}
    (path / "value.json").write_text(json.dumps(meta, indent=2, default=float))
    networks.write_safetensors({k: v.detach().cpu().contiguous() for k, v in value.state_dict().items()},
                               path / "value.safetensors")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=".gpu-data/images")
    p.add_argument("--out", default="runs/images-train")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=300.0, help="seconds for the DDPM")
    p.add_argument("--max-steps", type=int, default=60000)
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 64 on CPU")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--classifier-epochs", type=int, default=60)
    p.add_argument("--value", action="store_true", help="also fit the SVDD-MC value network")
    p.add_argument("--value-rollouts", type=int, default=2048)
    p.add_argument("--value-num-steps", type=int, default=50)
    p.add_argument("--value-train-steps", type=int, default=3000)
    p.add_argument("--unet", choices=["auto", "base", "small"], default="auto",
                   help="UNet size: base (1.5 M params) on GPU, small (0.26 M) on CPU by default")
    p.add_argument("--classifiers-from", default=None, help="load classifier(-eval).safetensors from here")
    p.add_argument("--init", default=None, help="continue training from this digits-ddpm folder")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check")
    args = p.parse_args(argv)
    if args.smoke:
        args.max_steps, args.batch_size, args.classifier_epochs = 3, 8, 1
        args.value_rollouts, args.value_num_steps, args.value_train_steps = 8, 3, 3
    device = torch.device(args.device)
    if args.batch_size is None:
        args.batch_size = 256 if device.type == "cuda" else 64
    if args.unet == "auto":
        args.unet = "base" if device.type == "cuda" else "small"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "a")

    def log(msg):
        line = f"[images {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    log(f"device {device}, torch {torch.__version__}, args {vars(args)}")
    x, y, split = load_data(Path(args.data), device)
    report = {"data": {"images": int(x.shape[0]), "split_sizes": [int((split == s).sum()) for s in range(3)]}}

    # 2. classifiers first (fast; the value fit needs the reward one)
    test = split == 2
    if args.classifiers_from:  # reuse classifiers trained earlier (same data and split)
        src = Path(args.classifiers_from)
        reward_clf = networks.load_network(src / "classifier.safetensors", device=device)
        eval_clf = networks.load_network(src / "classifier-eval.safetensors", device=device)
        for key, model in (("classifier", reward_clf), ("classifier_eval", eval_clf)):
            with torch.no_grad():
                acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
            report[key] = {"loaded_from": str(src), "test_accuracy": acc}
            log(f"{key} loaded from {src}: held-out accuracy {acc:.4f}")
    else:
        reward_clf, report["classifier"] = train_classifier(
            x[split == 0], y[split == 0], x[test], y[test], width=32, dropout=0.0, seed=args.seed + 1, device=device,
            epochs=args.classifier_epochs, log=log, name="reward classifier (split A)")
        eval_clf, report["classifier_eval"] = train_classifier(
            x[split == 1], y[split == 1], x[test], y[test], width=48, dropout=0.2, seed=args.seed + 2, device=device,
            epochs=args.classifier_epochs, log=log, name="evaluation classifier (split B)")
    networks.save_network(reward_clf, out / "classifier.safetensors", trained_on="digits16 split A",
                          test_accuracy=report["classifier"]["test_accuracy"])
    networks.save_network(eval_clf, out / "classifier-eval.safetensors", trained_on="digits16 split B",
                          test_accuracy=report["classifier_eval"]["test_accuracy"])

    # 1. DDPM on splits A + B
    train_x = x[split != 2]
    ema, report["ddpm"] = train_ddpm(train_x, device=device, time_budget=args.time_budget, max_steps=args.max_steps,
                                     batch_size=args.batch_size, lr=args.lr, seed=args.seed, log=log, init=args.init,
                                     config=UNET_CONFIGS[args.unet])
    report["ddpm"]["eval_eps_mse_heldout"] = ddpm_eval_loss(ema, x[test], device=device, seed=args.seed)
    report["ddpm"]["num_parameters"] = sum(p.numel() for p in ema.parameters())
    write_ddpm_pipeline(ema, out / "digits-ddpm", dtype=torch.float32)
    log(f"ddpm: {json.dumps(report['ddpm'])}")

    # 3. value network (optional)
    if args.value:
        try:
            value, cost = fit_value_network(ema, reward_clf, device=device, args=args, log=log)
            save_learned_value(value, out / "value-classifier0")
            report["value"] = {k: v for k, v in cost.items() if isinstance(v, (int, float, str))}
        except Exception as err:  # the rest of the job must still land
            log(f"value network skipped: {type(err).__name__}: {err}")
            report["value"] = {"skipped": f"{type(err).__name__}: {err}"}
    (out / "training.json").write_text(json.dumps(report, indent=1))
    log("done")


if __name__ == "__main__":
    main()
