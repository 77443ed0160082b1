"""Images domain: diffusers models as Gaussian processes, a shipped 16×16 digits DDPM, and
image rewards.

Model ``digits-ddpm``: a diffusers ``UNet2DModel`` (0.26 M parameters) + ``DDPMScheduler``
(cosine schedule, T = 1000, ε-prediction) trained by ``scripts/train_images.py`` on
scikit-learn's digits upscaled to 16×16, pixels in [-1, 1]. It is a normal diffusers folder
(``DDPMPipeline.from_pretrained(svdd.domains.images.DIGITS_DDPM_PATH)`` works). Any other
saved diffusers pipeline or UNet folder loads with ``load_diffusers(path)`` (CLI
``--diffusers PATH``).

Model ``digits-flow``: the same ``UNet2DModel`` trained as a rectified flow (velocity ``v = ε − x0``
on ``x_σ = (1 − σ)·x0 + σ·ε``) by ``scripts/train_images_flow.py``, with a
``FlowMatchEulerDiscreteScheduler`` (shift 1); eta = 1 (default) is the DDPM-like posterior.

Rewards (see ``rewards``): ``compressibility`` (−JPEG kB, q = 95, black box),
``classifier:<d>`` and ``classifier-eval:<d>`` (log-probability of digit d under two
independently trained CNNs; differentiable), ``brightness`` (differentiable). For latent
models they decode through the VAE (pass ``process=`` to the factory).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..base import Domain, DomainError
from . import rewards as _rewards
from .metrics import elbo_proxy_bits_per_dim, pairwise_diversity
from .networks import DigitClassifier, ImageValueNetwork

ASSETS = Path(__file__).resolve().parent / "assets"
DIGITS_DDPM_PATH = ASSETS / "digits-ddpm"
DIGITS_FLOW_PATH = ASSETS / "digits-flow"
CLASSIFIER_PATH = ASSETS / "classifier.safetensors"
CLASSIFIER_EVAL_PATH = ASSETS / "classifier-eval.safetensors"
VALUE_PATHS = {"classifier:0": ASSETS / "value-classifier0"}

__all__ = ["DOMAIN", "load_digits", "load_digits_flow", "load_diffusers", "make_reward", "value_network", "ASSETS",
           "DIGITS_DDPM_PATH", "DIGITS_FLOW_PATH"]


def _offline() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _import_diffusers():
    _offline()
    try:
        import diffusers  # noqa: F401
    except ModuleNotFoundError:
        raise DomainError("the images domain needs diffusers: pip install 'svdd[images]'") from None
    return diffusers


# -- models -------------------------------------------------------------------------------------
def load_digits(device="cpu", *, eta: float = 1.0, path: Optional[Path] = None):
    """The shipped digits DDPM as a ``GaussianProcess`` (pixels (1, 16, 16) in [-1, 1])."""
    path = Path(path or DIGITS_DDPM_PATH)
    if not (path / "unet" / "diffusion_pytorch_model.safetensors").exists():
        raise DomainError(f"the digits DDPM weights are missing at {path}; train them with "
                          "`python scripts/train_images.py` (see docs/images.md)")
    # svdd's evenly spaced ("trailing") grid, which the shipped results were made with; the saved
    # scheduler's own grid is "leading" (DDPMPipeline on this folder), which starts at ᾱ ≈ 0.02 here
    return load_diffusers(path, device, eta=eta, timestep_grid="trailing")


def load_digits_flow(device="cpu", *, eta: float = 1.0, path: Optional[Path] = None):
    """The shipped digits rectified flow (``digits-flow``: ``UNet2DModel`` + ``FlowMatchEulerDiscreteScheduler``,
    velocity prediction) as a ``GaussianProcess`` on the scheduler's own grid. ``eta=1`` (default):
    the DDPM-like posterior, so SVDD/SMC children differ; ``eta=0``: diffusers' Euler sampler."""
    path = Path(path or DIGITS_FLOW_PATH)
    if not (path / "unet" / "diffusion_pytorch_model.safetensors").exists():
        raise DomainError(f"the digits flow weights are missing at {path}; train them with "
                          "`python scripts/train_images_flow.py` (see docs/images.md)")
    return load_diffusers(path, device, eta=eta, timestep_grid="scheduler")


def _scheduler_from(folder: Path):
    diffusers = _import_diffusers()
    cfg_path = folder / "scheduler_config.json"
    name = json.loads(cfg_path.read_text()).get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise DomainError(f"unknown scheduler class {name!r} in {cfg_path}")
    return cls.from_pretrained(str(folder))


def load_diffusers(path, device="cpu", *, prompt: Optional[str] = None, guidance_scale: Optional[float] = None,
                   eta: float = 1.0, torch_dtype: Optional[torch.dtype] = None, timestep_grid: str = "scheduler"):
    """A saved diffusers pipeline folder (``model_index.json``) or UNet folder (``config.json``
    with a ``scheduler_config.json`` beside it or in ``../scheduler``) -> ``GaussianProcess``.

    Pipelines without a text encoder (DDPM/DDIM, unconditional latent diffusion) load
    component by component and refuse ``prompt=`` / ``guidance_scale=``; text pipelines (Stable
    Diffusion, SDXL, SD3, Flux) need ``prompt=`` (and ``transformers`` for their text encoders).
    ``timestep_grid``: ``"scheduler"`` (the saved scheduler's ``set_timesteps`` grid, as the
    pipeline samples) or ``"trailing"``."""
    diffusers = _import_diffusers()
    from ...process.adapters import from_diffusers, from_pipeline

    path = Path(path)
    kwargs = {"low_cpu_mem_usage": False, **({"torch_dtype": torch_dtype} if torch_dtype is not None else {})}
    if (path / "model_index.json").exists():
        index = json.loads((path / "model_index.json").read_text())
        if index.get("text_encoder") and index["text_encoder"][0] is not None:
            if prompt is None:
                raise DomainError(f"{path} is a text-conditioned pipeline: give a prompt (Python: "
                                  "svdd.domains.images.load_diffusers(path, prompt='...'))")
            extra = {"safety_checker": None} if "safety_checker" in index else {}
            try:
                pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), **extra, **kwargs).to(device)
            except ImportError as err:
                raise DomainError(f"{path}: loading its text encoders failed ({err}); "
                                  "pip install transformers") from None
            return from_pipeline(pipe, prompt, guidance_scale=guidance_scale, eta=eta, timestep_grid=timestep_grid)
        _unconditional(path, prompt, guidance_scale)
        if "unet" not in index or "scheduler" not in index:
            raise DomainError(f"{path}: a pipeline without unet/scheduler is not supported")
        unet_cls = getattr(diffusers, index["unet"][1])
        unet = unet_cls.from_pretrained(str(path), subfolder="unet", **kwargs).to(device).eval()
        scheduler = _scheduler_from(path / "scheduler")
        vae = None
        if index.get("vqvae") or index.get("vae"):
            key = "vae" if index.get("vae") else "vqvae"
            vae = getattr(diffusers, index[key][1]).from_pretrained(str(path), subfolder=key, **kwargs).to(device).eval()
        return from_diffusers(unet, scheduler, vae=vae, eta=eta, device=device, timestep_grid=timestep_grid)
    if (path / "config.json").exists():
        _unconditional(path, prompt, guidance_scale)
        cfg = json.loads((path / "config.json").read_text())
        unet_cls = getattr(diffusers, cfg.get("_class_name", "UNet2DModel"), None)
        if unet_cls is None:
            raise DomainError(f"{path}/config.json names an unknown diffusers class")
        for folder in (path, path.parent / "scheduler"):
            if (folder / "scheduler_config.json").exists():
                scheduler = _scheduler_from(folder)
                break
        else:
            raise DomainError(f"no scheduler_config.json next to {path} or in {path.parent / 'scheduler'}; "
                              "save the scheduler with scheduler.save_pretrained(...) there")
        unet = unet_cls.from_pretrained(str(path), **kwargs).to(device).eval()
        return from_diffusers(unet, scheduler, eta=eta, device=device, timestep_grid=timestep_grid)
    raise DomainError(f"{path} is not a diffusers folder (no model_index.json or config.json)")


def _unconditional(path, prompt, guidance_scale) -> None:
    for flag, value in (("--prompt", prompt), ("--guidance-scale", guidance_scale)):
        if value is not None:
            raise DomainError(f"{path} is an unconditional model (no text encoder); drop {flag}")


# -- rewards ------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _classifier(kind: str, device: str):
    return _rewards.load_classifier(CLASSIFIER_PATH if kind == "classifier" else CLASSIFIER_EVAL_PATH, device)


def _wrap(reward, process):
    if process is None:
        return reward
    from ...process.adapters import latent_reward

    return latent_reward(reward, process)


def _compressibility(arg=None, *, process=None, **options):
    quality = int(arg) if arg else 95
    if not 1 <= quality <= 100:
        raise DomainError("compressibility:<quality> takes a JPEG quality in 1..100 (default 95)")
    return _wrap(_rewards.Compressibility(quality), process)


def _classifier_reward(kind):
    def factory(arg=None, *, process=None, device="cpu", **options):
        digit = _rewards.parse_digit(arg, kind)
        return _wrap(_rewards.ClassifierLogProb(_classifier(kind, str(device)), digit, kind), process)
    return factory


def _brightness(arg=None, *, process=None, **options):
    if arg:
        raise DomainError("brightness takes no argument")
    return _wrap(_rewards.Brightness(), process)


def make_reward(spec: str, process=None, **options):
    """Build a reward from a spec (``"compressibility"``, ``"classifier:3+0.1*brightness"``);
    with ``process=`` a latent process's samples are decoded first."""
    return DOMAIN.make_reward(spec, process=process, **options)


# -- outputs ------------------------------------------------------------------------------------
def _pixels(x0: Tensor, process=None) -> Tensor:
    decode = getattr(process, "decode", None)
    return decode(x0.to(process.device)).cpu() if decode is not None and getattr(process, "is_latent", False) else x0


def _decode(x0: Tensor) -> list[str]:
    return [""] * x0.shape[0]


def _eval_features(pixels: Tensor):
    try:
        model = _classifier("classifier-eval", "cpu")
    except DomainError:
        return None, None
    with torch.no_grad():
        x = _rewards.to_digit_input(pixels.float().cpu())
        feats = model.features(x)
        probs = torch.softmax(model.head(feats), dim=1)
    return feats, probs


def _sample_columns(x0: Tensor, decoded, process=None, user_model: bool = False) -> dict:
    """JPEG size and brightness; the held-out digit classifier's prediction only for the shipped
    digits model (``user_model=True``: the user's model, whose images are not digits)."""
    pixels = _pixels(x0, process)
    cols = {"jpeg_kb": [round(v, 4) for v in _rewards.jpeg_kilobytes(pixels).tolist()],
            "brightness": [round(v, 4) for v in _rewards.Brightness()(pixels.float()).tolist()]}
    _, probs = _eval_features(pixels) if not user_model else (None, None)
    if probs is not None:
        conf, digit = probs.max(dim=1)
        cols["eval_digit"] = digit.tolist()
        cols["eval_confidence"] = [round(v, 4) for v in conf.tolist()]
    return cols


def _metrics(x0: Tensor, decoded, process=None, *, elbo_timesteps: int = 8, user_model: bool = False) -> dict:
    pixels = _pixels(x0, process)
    out = {"diversity_pixels": pairwise_diversity(pixels), "jpeg_kb_mean": float(_rewards.jpeg_kilobytes(pixels).mean())}
    feats, probs = _eval_features(pixels) if not user_model else (None, None)   # digit metrics: shipped model only
    if feats is not None:
        out["diversity_features"] = pairwise_diversity(feats, center=False)
        counts = torch.bincount(probs.argmax(1), minlength=10)
        out["eval_digit_counts"] = counts.tolist()
        out["eval_confidence_mean"] = float(probs.max(1).values.mean())
    if process is not None and hasattr(process, "num_train_timesteps") and elbo_timesteps > 0 \
            and not getattr(process, "is_flow", False):   # the DDPM bound: VP processes only
        elbo = elbo_proxy_bits_per_dim(process, x0, num_timesteps=elbo_timesteps)
        out["elbo_proxy_bits_per_dim"] = float(elbo.mean())
        out["elbo_proxy_timesteps_per_sample"] = elbo_timesteps
    return out


def _grids(out_dir: Path, prefix: str, pixels: Tensor, rewards: Tensor, who: str, reward: str) -> dict:
    """best / median / samples grids of one set of samples, captioned with rank and reward."""
    from .viz import grid_image, grid_selection, save_grid, tile_labels

    n = int(rewards.numel())
    sel = grid_selection(rewards)
    k = int(sel["best"].numel())
    titles = {"best": f"{who}: best {k} of {n} by {reward} (#rank, reward; #1 = highest)",
              "median": f"{who}: {k} around the median of {n} by {reward} (#rank, reward)",
              "samples": f"{who}: samples 1-{int(sel['samples'].numel())} of {n} in sample order (#rank, reward)"}
    out = {}
    for kind, idx in sel.items():
        labels, title = tile_labels(rewards, idx), titles[kind]
        path = save_grid(out_dir / f"{prefix}{kind}.png", pixels[idx], labels=labels, title=title)
        out[kind] = (path, grid_image(pixels[idx], labels=labels, title=title))
    return out


def _write_files(out_dir, x0: Tensor, decoded, rewards: Tensor, info: Optional[dict] = None) -> list[Path]:
    """``best.png`` / ``median.png`` / ``samples.png`` (see ``viz``: top k, the k around the
    median, all in sample order; each tile captioned with its reward rank and reward). With
    ``info["baseline_x0"]`` and ``info["baseline_rewards"]`` (the pretrained sampler's samples)
    also ``baseline_{best,median,samples}.png`` and ``compare.png``: the method's best and
    median grids (left) beside the baseline's (right). ``info["method"]`` names the method in
    the titles."""
    from .viz import side_by_side

    out_dir = Path(out_dir)
    info = info or {}
    process = info.get("process")
    reward = str(info.get("reward") or "reward")
    who = str(info.get("method") or "guided")
    rewards = torch.as_tensor(rewards).float().cpu()
    mine = _grids(out_dir, "", _pixels(x0, process), rewards, who, reward)
    files = [mine[k][0] for k in ("best", "median", "samples")]
    bx, br = info.get("baseline_x0"), info.get("baseline_rewards")
    if bx is not None and br is not None:
        br = torch.as_tensor(br).float().cpu()
        base = _grids(out_dir, "baseline_", _pixels(bx, process), br, "pretrained", reward)
        files += [base[k][0] for k in ("best", "median", "samples")]
        files.append(side_by_side(out_dir / "compare.png", [mine["best"][1], base["best"][1], mine["median"][1],
                                                            base["median"][1]], ncols=2))
    return files


def _sample_files(out_dir, x0: Tensor, prefix: str = "", info: Optional[dict] = None) -> list[str]:
    """One PNG per sample, ``{prefix}images/sample_00000.png``; returns the paths relative to ``out_dir``."""
    from ...runfolder import atomic_path
    from .viz import grid_image

    out_dir = Path(out_dir)
    pixels = _pixels(x0, (info or {}).get("process"))
    folder = f"{prefix}images"
    paths = []
    for i in range(len(pixels)):
        rel = f"{folder}/sample_{i:05d}.png"
        with atomic_path(out_dir / rel, root=out_dir) as tmp:
            grid_image(pixels[i:i + 1], 1, 1, pad=0).save(tmp, format="PNG")
        paths.append(rel)
    return paths


def value_network(process) -> torch.nn.Module:
    """The SVDD-MC value network for image processes: ``ImageValueNetwork`` (FiLM-conditioned CNN)."""
    return ImageValueNetwork(in_channels=int(process.sample_shape[0]), width=32)


def _register_value_network() -> None:
    try:
        from ...values.learned import register_value_network
    except ImportError:  # pragma: no cover - learned values are optional
        return
    register_value_network(ImageValueNetwork)


_register_value_network()

DOMAIN = Domain(
    name="images",
    description="diffusers image models (shipped: 16x16 digits DDPM and flow); JPEG compressibility, digit classifiers",
    models={"digits-ddpm": load_digits, "digits-flow": load_digits_flow},
    default_model="digits-ddpm",
    rewards={
        "compressibility": (_compressibility, "-JPEG size in kB at quality 95 (black box)"),
        "classifier": (_classifier_reward("classifier"), "log p(digit) from the reward CNN, e.g. classifier:3 (differentiable)"),
        "classifier-eval": (_classifier_reward("classifier-eval"),
                            "log p(digit) from the independent evaluation CNN, e.g. classifier-eval:3"),
        "brightness": (_brightness, "mean pixel intensity in [0, 1] (differentiable)"),
    },
    default_reward="compressibility",
    default_num_steps=50,
    decode=_decode,
    sample_columns=_sample_columns,
    metrics=_metrics,
    sample_column="image",
    sample_files=_sample_files,
    write_files=_write_files,
    extra={"pyproject_extra": "images", "load_diffusers": load_diffusers, "value_network": value_network,
           "reward_needs_process": True,   # pass process= to make_reward so latent samples decode via the VAE
           "values": VALUE_PATHS, "elbo_proxy": elbo_proxy_bits_per_dim},
)
