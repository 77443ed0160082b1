"""``RewardPipeline``: a loaded diffusers pipeline, called as diffusers users call it, sampling
with any svdd method against a reward on the decoded images.

    aligned = svdd.RewardPipeline(pipe)
    out = aligned(["a cat", "a dog"], reward=my_reward, method="svdd-pm", num_images_per_prompt=4,
                  num_candidates=8, generator=torch.Generator().manual_seed(0))
    out.images, out.rewards, out.info

The maths is svdd's: the pipeline's denoiser, scheduler grid and classifier-free guidance define
the pretrained kernels ``p(x_{t'} | x_t)`` (``svdd.from_pipeline``), and the method tilts them
toward ``r(x0)``. What this module adds is the pipeline's calling convention:

- **Groups.** Images of one prompt share that prompt's conditioning and are run together
  (one ``svdd.sample`` call, rows exchangeable, so candidate expansion, resampling and the
  searches never mix prompts). With a list of generators every image is its own run with its
  own generator, so image ``i`` depends only on ``generator[i]``.
- **Noise.** Initial latents are drawn as diffusers' ``randn_tensor`` draws them: one ``randn``
  of ``(B, C, H, W)`` from a single generator, or one ``(1, C, H, W)`` draw per generator of a
  list. ``latents=`` replaces them (Flux's packed ``(B, HW/4, 4C)`` latents are unpacked).
- **Rewards** receive decoded pixel tensors ``(B, C, H, W)`` in ``[0, 1]`` (the VAE decode and
  diffusers' ``x/2 + 0.5`` clamped), and return ``(B,)``.
- **Callbacks** follow ``callback_on_step_end(pipe, step, timestep, callback_kwargs)``: the
  returned ``"latents"`` replace the state (in place; the next step's ``x0_hat`` is re-predicted
  from them), and ``pipe._interrupt = True`` stops denoising at that step for every image; the
  current latents are then decoded as they are, as diffusers does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["RewardPipeline", "RewardPipelineOutput"]

_DEFAULT_STEPS = {"pixel": 50, "sd": 50, "sdxl": 50, "sd3": 28, "flux": 28}
_TENSOR_INPUTS = ("latents", "x0_hat")


@dataclasses.dataclass
class RewardPipelineOutput:
    """``images`` (a PIL list, a ``(B, H, W, C)`` float array, or a ``(B, C, H, W)`` tensor, in
    ``[0, 1]``), ``rewards`` (``(B,)`` tensor), ``latents`` (the final process states) and
    ``info`` (cost and per-run details). Indexable like diffusers' outputs: ``out["images"]``,
    ``out[0]``."""

    images: Any
    rewards: Tensor
    latents: Tensor
    info: dict

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]


class _Stop(Exception):
    """Raised from the step callback to end a run early (``pipe._interrupt``)."""

    def __init__(self, step: int, x: Tensor):
        super().__init__(step)
        self.step, self.x = step, x


def to_unit(images: Tensor) -> Tensor:
    """Decoded images in about [-1, 1] -> [0, 1], as diffusers' ``postprocess``."""
    return (images / 2 + 0.5).clamp(0, 1)


def to_pil(images: Tensor) -> list:
    """(B, C, H, W) in [0, 1] -> a list of PIL images (diffusers' ``numpy_to_pil``)."""
    from PIL import Image

    arr = (images.detach().float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    if arr.shape[-1] == 1:
        return [Image.fromarray(a.squeeze(-1), mode="L") for a in arr]
    return [Image.fromarray(a) for a in arr]


def pixel_reward(reward: Callable[[Tensor], Tensor], process, reward_range=(0, 1)) -> Callable[[Tensor], Tensor]:
    """``reward`` on decoded pixels in ``reward_range`` — ``(0, 1)`` (diffusers' images) or
    ``(-1, 1)`` (the VAE's range, what ``svdd.domains.images`` rewards take) — as a reward on the
    process's samples. A ``svdd`` ``Reward``'s invalid rows stay invalid (NaN to the caller)."""
    unit = tuple(reward_range) == (0, 1)

    def fn(x0: Tensor) -> Tensor:
        pix = process.decode(x0)
        pix = to_unit(pix) if unit else pix.clamp(-1, 1)
        if hasattr(reward, "evaluate"):                   # svdd.rewards Reward / WeightedSum
            values, valid = reward.evaluate(pix)
            values = torch.as_tensor(values).float()
            return torch.where(valid.to(values.device), values, torch.full_like(values, float("nan")))
        return reward(pix)

    fn.differentiable = bool(getattr(reward, "differentiable", False))
    fn.name = getattr(reward, "name", getattr(reward, "__name__", "reward"))
    if getattr(reward, "invalid_value", None) is not None:
        fn.invalid_value = reward.invalid_value
    return fn


def _as_list(v, n: int, name: str):
    if v is None or isinstance(v, str):
        return [v] * n
    v = list(v)
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise ValueError(f"{name} has {len(v)} entries but there are {n} prompts")
    return v


def _rows(t: Optional[Tensor], n: int, name: str):
    """A tensor of batch 1 or n as n row slices (batch 1 each)."""
    if t is None:
        return [None] * n
    if t.shape[0] == 1:
        return [t] * n
    if t.shape[0] != n:
        raise ValueError(f"{name} has batch {t.shape[0]} but there are {n} prompts")
    return [t[i:i + 1] for i in range(n)]


class RewardPipeline:
    """Reward-aligned sampling with a loaded diffusers pipeline (``DDPMPipeline``,
    ``DDIMPipeline``, ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``,
    ``StableDiffusion3Pipeline``, ``FluxPipeline``), called like the pipeline itself.

    ``RewardPipeline(pipe)(prompt, reward=..., method="svdd-pm", **method_options)``; see
    ``__call__``. Attributes the callback reads (``pipe.scheduler``, ``pipe.vae``, ...) are the
    wrapped pipeline's."""

    def __init__(self, pipe, *, eta: Optional[float] = None, **process_options):
        from .process.adapters import pipeline_family

        self.pipe = pipe
        self.family = pipeline_family(pipe)
        self.eta = None if eta is None else float(eta)
        self.process_options = process_options
        self._interrupt = False
        self._num_timesteps = 0

    def __getattr__(self, name):   # scheduler, vae, unet, ... (only called for missing attributes)
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)

    @property
    def interrupt(self) -> bool:
        return bool(self._interrupt)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    def __repr__(self) -> str:
        return f"RewardPipeline({type(self.pipe).__name__}, family={self.family!r})"

    @classmethod
    def from_pretrained(cls, folder, *, eta: Optional[float] = None, **kwargs) -> "RewardPipeline":
        """``DiffusionPipeline.from_pretrained(folder, **kwargs)``, wrapped."""
        from diffusers import DiffusionPipeline

        return cls(DiffusionPipeline.from_pretrained(folder, **kwargs), eta=eta)

    def to(self, *args, **kwargs) -> "RewardPipeline":
        """Moves the wrapped pipeline (``pipe.to(...)``); returns this wrapper."""
        self.pipe.to(*args, **kwargs)
        return self

    def default_eta(self, method: str) -> float:
        """The η svdd's steps use when none is given: for ``ancestral``, the pipeline's own sampler
        (1 for DDPM / ancestral schedulers, else 0: DDIM, Euler, FlowMatch), so it reproduces the
        pipeline; for every other method 1 (the DDPM-like posterior, whose children differ)."""
        if self.eta is not None:
            return self.eta
        if method != "ancestral":
            return 1.0
        name = type(getattr(self.pipe, "scheduler", None)).__name__
        return 1.0 if name.startswith("DDPM") or "Ancestral" in name else 0.0

    # -- building blocks ----------------------------------------------------------------------
    def process(self, prompt=None, **kwargs):
        """The svdd process for one prompt (``svdd.from_pipeline`` with this wrapper's options)."""
        from .process.adapters import from_pipeline

        opts = {"eta": self.default_eta("svdd-pm"), **self.process_options, **{k: v for k, v in kwargs.items() if v is not None}}
        return from_pipeline(self.pipe, prompt, **opts)

    def __call__(self, prompt: Union[str, Sequence[str], None] = None, *, reward: Callable[[Tensor], Tensor],
                 method: str = "svdd-pm", num_images_per_prompt: int = 1, negative_prompt=None,
                 guidance_scale: Optional[float] = None, num_inference_steps: Optional[int] = None,
                 height: Optional[int] = None, width: Optional[int] = None, eta: Optional[float] = None,
                 generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
                 latents: Optional[Tensor] = None, prompt_embeds: Optional[Tensor] = None,
                 negative_prompt_embeds: Optional[Tensor] = None, pooled_prompt_embeds: Optional[Tensor] = None,
                 negative_pooled_prompt_embeds: Optional[Tensor] = None, true_cfg_scale: Optional[float] = None,
                 output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Optional[Callable] = None,
                 callback_on_step_end_tensor_inputs: Optional[Sequence[str]] = None, progress: bool = True,
                 reward_range: tuple = (0, 1), **method_options):
        """Sample ``num_images_per_prompt`` images per prompt with ``method``, tilted toward ``reward``.

        Args:
            prompt: a string, a list of strings, or None (unconditional pipelines; or with
                ``prompt_embeds``, one row per prompt).
            reward: ``reward(images) -> Tensor (B,)`` on decoded pixels ``(B, C, H, W)`` in
                ``[0, 1]``; any svdd reward (set ``differentiable = True`` for dps / das / dno).
            reward_range: ``(0, 1)`` (default) or ``(-1, 1)``: the pixel range the reward gets
                (``svdd.domains.images`` rewards, e.g. compressibility, take ``(-1, 1)``).
            method: any name in ``svdd.ALGORITHMS``; ``"ancestral"`` is the pipeline's own
                sampler, which reproduces the pipeline's output for the same generator.
            num_images_per_prompt, negative_prompt, guidance_scale, num_inference_steps, height,
            width, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
            negative_pooled_prompt_embeds, true_cfg_scale (Flux): as in diffusers.
            eta: the DDIM-η of svdd's steps (default: the wrapper's ``eta=``, else
                ``default_eta(method)``: the pipeline's own for ancestral, 1 otherwise — the
                stochastic steps SVDD's candidates need).
            generator: one ``torch.Generator`` (all images drawn from it, in order) or a list of
                one per image (image ``i`` depends only on ``generator[i]``).
            latents: the initial noise ``(B, C, H, W)`` (Flux: packed latents also accepted).
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, C)`` float32 in [0, 1]), ``"pt"``
                (``(B, C, H, W)`` in [0, 1]) or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict``, called
                after every step of every run with ``callback_kwargs["latents"]`` (the state);
                a returned ``"latents"`` replaces it, ``pipe._interrupt = True`` stops.
            progress: a tqdm bar over the steps (False: none).
            **method_options: the method's options (``num_candidates=8``, ``alpha``,
                ``num_particles``, ``max_batch_size``, ``value_fn``, ...).

        Returns:
            ``RewardPipelineOutput(images, rewards, latents, info)`` (a tuple when
            ``return_dict=False``).
        """
        import svdd
        from .process.adapters import unpack_latents
        from .rewards.base import as_reward

        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if not callable(reward):
            raise ValueError("reward= must be a callable images (B, C, H, W) in [0, 1] -> Tensor (B,)")
        if tuple(reward_range) not in ((0, 1), (-1, 1)):
            raise ValueError(f"reward_range must be (0, 1) or (-1, 1), got {reward_range!r}")
        if callback_on_step_end_tensor_inputs is None:     # diffusers' PipelineCallback objects carry their own
            callback_on_step_end_tensor_inputs = getattr(callback_on_step_end, "tensor_inputs", None) or ["latents"]
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in _TENSOR_INPUTS]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs may hold {', '.join(_TENSOR_INPUTS)}; got {bad}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        steps = _DEFAULT_STEPS[self.family] if num_inference_steps is None else num_inference_steps

        # prompts: one group of conditioning per prompt
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a non-empty list of strings")
        elif prompt_embeds is not None:
            prompts = [None] * prompt_embeds.shape[0]
        else:
            prompts = [None]
        P, n = len(prompts), num_images_per_prompt
        B = P * n
        negatives = _as_list(negative_prompt, P, "negative_prompt")
        embeds = {name: _rows(t, P, name) for name, t in (
            ("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds),
            ("pooled_prompt_embeds", pooled_prompt_embeds),
            ("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds))}
        eta = self.default_eta(method) if eta is None else float(eta)
        options = dict(guidance_scale=guidance_scale, height=height, width=width, eta=eta,
                       true_cfg_scale=true_cfg_scale)
        processes = [self.process(prompts[p], negative_prompt=negatives[p],
                                  **{k: v[p] for k, v in embeds.items()}, **options) for p in range(P)]
        shape = tuple(processes[0].sample_shape)

        # noise: diffusers' randn_tensor convention
        if isinstance(generator, (list, tuple)):
            if len(generator) != B:
                raise ValueError(f"a list of {len(generator)} generators for {B} images "
                                 f"({P} prompts x {n} per prompt); pass one per image")
            groups = [(i // n, [i], generator[i]) for i in range(B)]
        else:
            groups = [(p, list(range(p * n, (p + 1) * n)), generator) for p in range(P)]
        if latents is not None:
            latents = torch.as_tensor(latents)
            if self.family == "flux" and latents.dim() == 3:
                latents = unpack_latents(latents, shape[-2], shape[-1])
            if tuple(latents.shape) != (B, *shape):
                raise ValueError(f"latents must have shape {(B, *shape)}, got {tuple(latents.shape)}")
            user_latents = True
        else:
            user_latents = False
            if isinstance(generator, (list, tuple)):
                latents = torch.cat([self._randn((1, *shape), g, processes[0]) for g in generator])
            elif generator is not None:
                latents = self._randn((B, *shape), generator, processes[0])

        # callback + progress
        from tqdm.auto import tqdm

        self._interrupt = False
        if hasattr(self.pipe, "__dict__"):
            self.pipe.__dict__["_interrupt"] = False
        self._num_timesteps = steps
        bar = tqdm(total=len(groups) * steps, disable=not progress, desc=method)
        state = {"stop_step": None, "extra_nfe": 0, "changed_final": False}

        def make_callback(process, ts):
            last = len(ts) - 2

            def callback(si):
                bar.update(1)
                step = int(si.step)
                if callback_on_step_end is not None:
                    kwargs = {"latents": si.x, "x0_hat": si.x0_hat}
                    kwargs = {k: kwargs[k] for k in callback_on_step_end_tensor_inputs}
                    timestep = process.noise_schedule.model_timestep(torch.as_tensor(si.t))
                    out = callback_on_step_end(self, step, timestep, kwargs) or {}
                    new = out.get("latents") if isinstance(out, dict) else None
                    if new is not None and new is not si.x:
                        with torch.no_grad():
                            si.x.copy_(new.to(si.x))
                            if si.x0_hat is not None and si.x0_hat is not si.x and float(si.t_next) > 0:
                                si.x0_hat.copy_(process.predict_x0(si.x, si.t_next).to(si.x0_hat))
                                state["extra_nfe"] += si.x.shape[0]
                        if step >= last:
                            state["changed_final"] = True
                    if self._interrupt or getattr(self.pipe, "_interrupt", False):
                        state["stop_step"] = step if state["stop_step"] is None else min(step, state["stop_step"])
                        self._interrupt = False           # the next run stops at the same step
                        if hasattr(self.pipe, "__dict__"):
                            self.pipe.__dict__["_interrupt"] = False
                if state["stop_step"] is not None and step >= state["stop_step"]:
                    raise _Stop(step, si.x)

            return callback

        images, rewards, finals, runs = [None] * B, [None] * B, [None] * B, []
        try:
            for p, rows, g in groups:
                process = processes[p]
                size = len(rows)
                group_latents = latents[rows] if latents is not None else None
                self._set_prior(process, group_latents)
                r = pixel_reward(reward, process, reward_range)
                ts = process.timesteps(steps)
                state["changed_final"] = False
                try:
                    res = svdd.sample(process, r, method, num_samples=size, num_steps=steps, generator=g,
                                      callback=make_callback(process, ts), **method_options)
                    x0, rw, info = res.x0, res.rewards, dict(res.info)
                    if state["changed_final"]:
                        with torch.no_grad():
                            rw = torch.as_tensor(as_reward(r)(x0)).float()
                except _Stop as stop:
                    x0 = stop.x.detach()[:size].clone()
                    with torch.no_grad():
                        rw = torch.as_tensor(as_reward(r)(x0)).float()
                    info = {"interrupted_at_step": stop.step}
                finally:
                    used = self._restore_prior(process)
                if user_latents and group_latents is not None and not used:
                    raise ValueError(f"{method} draws its own initial states (not {size} per run): "
                                     "latents= cannot be used with it")
                with torch.no_grad():
                    pix = to_unit(process.decode(x0)) if output_type != "latent" else x0
                for j, i in enumerate(rows):
                    images[i], rewards[i], finals[i] = pix[j], rw[j], x0[j]
                runs.append({"prompt": prompts[p], "images": rows, **info})
        finally:
            bar.close()
        images_t = torch.stack(images).detach().float().cpu() if output_type != "latent" else torch.stack(images)
        rewards_t = torch.stack([torch.as_tensor(v).float().reshape(()) for v in rewards]).detach().cpu()
        out_images = {"pil": to_pil, "np": lambda x: x.permute(0, 2, 3, 1).numpy().astype(np.float32),
                      "pt": lambda x: x, "latent": lambda x: x}[output_type](images_t)
        info = {
            "method": method, "num_inference_steps": steps, "num_images": B, "num_runs": len(runs),
            "nfe": sum(int(r.get("nfe", 0)) for r in runs) + state["extra_nfe"],
            "reward_calls": sum(int(r.get("reward_calls", 0)) for r in runs),
            "wall_time_s": sum(float(r.get("wall_time_s", 0.0)) for r in runs),
            "interrupted": state["stop_step"] is not None, "runs": runs,
        }
        if state["stop_step"] is not None:
            info["interrupted_at_step"] = state["stop_step"]
        output = RewardPipelineOutput(out_images, rewards_t, torch.stack(finals).detach(), info)
        return output if return_dict else output.to_tuple()

    # -- noise -------------------------------------------------------------------------------
    @staticmethod
    def _randn(shape, generator: torch.Generator, process) -> Tensor:
        """diffusers' ``randn_tensor``: drawn on the generator's device, then moved."""
        dtype = getattr(process, "dtype", None) or torch.float32
        device = generator.device if generator is not None else process.device
        return torch.randn(shape, generator=generator, device=device, dtype=dtype).to(process.device)

    @staticmethod
    def _set_prior(process, latents: Optional[Tensor]) -> None:
        """Make ``process.prior(len(latents))`` return ``latents`` (once per run)."""
        process.__dict__.pop("prior", None)
        process.__dict__["_latents_used"] = False
        if latents is None:
            return
        original = type(process).prior.__get__(process)
        x = latents.to(device=process.device, dtype=getattr(process, "dtype", None) or latents.dtype)

        def prior(num_samples, generator=None):
            if num_samples == x.shape[0] and not process.__dict__["_latents_used"]:
                process.__dict__["_latents_used"] = True
                return x.clone()
            return original(num_samples, generator)

        process.__dict__["prior"] = prior

    @staticmethod
    def _restore_prior(process) -> bool:
        process.__dict__.pop("prior", None)
        return bool(process.__dict__.pop("_latents_used", False))
