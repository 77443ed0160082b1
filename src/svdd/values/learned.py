"""SVDD-MC value: a network ``f(x_t, t)`` fitted by Monte Carlo regression (SVDD Algorithm 3).

Roll out the pretrained process S times, keep every intermediate state ``x_t^(s)`` and the
reward of its final sample ``r(x0^(s))``, and minimise over f

- ``loss="mse"`` (early paper, all public code): Σ_t Σ_s (r(x0^(s)) − f(x_t^(s), t))², so
  f ≈ E[r(x0) | x_t] — the large-alpha (Jensen) approximation of the soft value;
- ``loss="exp"`` (final paper): Σ_t Σ_s (exp(r/α) − exp(f/α))², so exp(f/α) ≈ E[exp(r/α)|x_t]
  and f approximates the soft value itself (computed with a shift c = max r for stability).

``fit_value`` returns the value *and its cost* (denoiser nfe and reward calls of the rollouts,
wall time), so SVDD-MC can be charged for its training honestly. Networks are time-conditioned.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..nn.denoisers import timestep_embedding


def _cpu(generator: Optional[torch.Generator]) -> torch.Generator:
    if generator is not None and generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator.initial_seed()))


class TokenValueNet(nn.Module):
    """Tokens (mask included) + time -> scalar: small transformer, mean pooling."""

    def __init__(self, vocab_size: int, seq_len: int, dim: int = 128, depth: int = 2, heads: int = 4):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, dim=dim, depth=depth, heads=heads)
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.embed(x.long()) + self.pos[:, : x.shape[1]] + self.time(timestep_embedding(t, self.pos.shape[-1]))[:, None]
        return self.head(self.encoder(h).mean(1)).squeeze(-1)


class VectorValueNet(nn.Module):
    """Continuous states of any shape (flattened) + time -> scalar: an MLP."""

    def __init__(self, input_dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.config = dict(input_dim=input_dim, hidden=hidden, depth=depth)
        self.time_dim = 32
        layers, d = [], input_dim + self.time_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        self.net = nn.Sequential(*layers, nn.Linear(d, 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1).float(), timestep_embedding(t, self.time_dim)], dim=1)
        return self.net(h).squeeze(-1)


class ImageValueNet(nn.Module):
    """(C, H, W) states + time -> scalar: three conv blocks, time added after the first,
    global average pooling (like the SVDD compressibility value net)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.config = dict(channels=channels, width=width)
        self.c1 = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.SiLU())
        self.time = nn.Linear(64, width)
        self.c2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
                                nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.c1(x.float()) + self.time(timestep_embedding(t, 64))[:, :, None, None]
        return self.head(self.c2(h).mean((2, 3))).squeeze(-1)


VALUE_NETWORKS: dict[str, type] = {c.__name__: c for c in (TokenValueNet, VectorValueNet, ImageValueNet)}


def register_value_network(cls: type) -> type:
    """Make a custom value network class loadable by ``load_value`` (it needs ``.config``)."""
    VALUE_NETWORKS[cls.__name__] = cls
    return cls


def default_network(process) -> nn.Module:
    if process.kind == "masked":
        return TokenValueNet(process.vocab_size, process.seq_len)
    shape = process.sample_shape
    if len(shape) == 3:
        return ImageValueNet(shape[0])
    return VectorValueNet(int(math.prod(shape)))


class LearnedValue(nn.Module):
    """``value_fn(x_t, t) -> (B,)`` = f(x_t, t/time_scale)·std + mean (targets standardised)."""

    def __init__(self, network: nn.Module, time_scale: float = 1.0, target_mean: float = 0.0, target_std: float = 1.0,
                 meta: Optional[dict] = None):
        super().__init__()
        self.network = network
        self.time_scale = float(time_scale)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.meta = dict(meta or {})
        self.differentiable = True

    def forward(self, x_t: Tensor, t) -> Tensor:
        device = self.target_mean.device
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        out = self.network(x_t.to(device), t / self.time_scale)
        return (out * self.target_std + self.target_mean).to(torch.float32)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"network": type(self.network).__name__, "config": self.network.config, "time_scale": self.time_scale,
                **self.meta}
        from ..runfolder import atomic_path, atomic_write_json

        # weights first, then the JSON that makes the folder loadable: a killed save leaves no
        # value.json pointing at half-written weights
        with atomic_path(path / "value.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        atomic_write_json(path / "value.json", meta, default=float)


class ValueLoadError(ValueError):
    """A fitted-value folder that cannot be loaded (missing, damaged, or for another network);
    one line that says what to do."""


def read_value_meta(path: str | Path) -> dict:
    """The checked ``value.json`` of a fitted-value folder (``network``, ``config``, ``time_scale``
    and the fit's ``domain`` / ``reward`` / ``model``); anything wrong is a ``ValueLoadError``."""
    path = Path(path)
    refit = f"fit it again with `svdd fit-value --out {path}`"
    if not path.exists():
        raise ValueLoadError(f"no fitted value at {path}; create one with `svdd fit-value --out {path}`")
    if not path.is_dir():
        raise ValueLoadError(f"{path} is a file; a fitted value is a folder holding value.json and value.safetensors "
                             "(`svdd fit-value` writes one)")
    meta_path = path / "value.json"
    if not meta_path.is_file():
        raise ValueLoadError(f"no fitted value at {path} (expected value.json); create one with "
                             f"`svdd fit-value --out {path}`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueLoadError(f"{meta_path} is damaged ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                             f"{refit}") from None
    if not isinstance(meta, dict):
        raise ValueLoadError(f"{meta_path} is not a JSON object; {refit}")
    for key, kinds in (("network", (str,)), ("config", (dict,)), ("time_scale", (int, float))):
        if not isinstance(meta.get(key), kinds) or isinstance(meta.get(key), bool):
            raise ValueLoadError(f"{meta_path} has no valid {key!r} entry; {refit}")
    if not math.isfinite(meta["time_scale"]) or meta["time_scale"] <= 0:
        raise ValueLoadError(f"{meta_path}: time_scale must be a positive number, got {meta['time_scale']!r}; {refit}")
    if meta["network"] not in VALUE_NETWORKS:
        raise ValueLoadError(f"{meta_path} names the unknown value network {meta['network']!r} (known: "
                             f"{', '.join(sorted(VALUE_NETWORKS))}); import the module that registers it first")
    return meta


def check_value_fits(value, process, path: str | Path = "the value") -> None:
    """Raise ``ValueLoadError`` when a fitted value reads token sequences of another shape than
    ``process`` samples (its network's ``vocab_size`` / ``seq_len`` against the process's): a value
    fitted on one model's tokens scores another model's nonsense, or fails deep in its forward."""
    config = getattr(getattr(value, "network", None), "config", None) or {}
    for key, have in (("vocab_size", getattr(process, "vocab_size", None)), ("seq_len", getattr(process, "seq_len", None))):
        want = config.get(key)
        if want is not None and have is not None and int(want) != int(have):
            fitted = (getattr(value, "meta", {}) or {}).get("model")
            raise ValueLoadError(f"{path} was fitted on sequences with {key} {want}{f' (model {fitted})' if fitted else ''}, "
                                 f"but this model has {key} {have}; fit a value for this model with `svdd fit-value` "
                                 "and pass it with --value, or use svdd-pm")


def load_value(path: str | Path, device: str | torch.device = "cpu", process=None) -> LearnedValue:
    """A fitted value saved by ``LearnedValue.save``. A missing, damaged or mismatched folder
    (JSON, network configuration, weights) raises ``ValueLoadError``, and so does, with
    ``process`` given, a value for sequences of another shape (``check_value_fits``); nothing is
    unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_value_meta(path)
    refit = f"fit it again with `svdd fit-value --out {path}`"
    try:
        net = VALUE_NETWORKS[meta["network"]](**meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueLoadError(f"{path / 'value.json'}: config does not fit {meta['network']} ({err}); {refit}") from None
    extra = {k: v for k, v in meta.items() if k not in ("network", "config", "time_scale")}
    value = LearnedValue(net, meta["time_scale"], meta=extra)
    weights = path / "value.safetensors"
    if not weights.is_file():
        raise ValueLoadError(f"{path} has value.json but no value.safetensors (weights); {refit}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueLoadError(f"{weights} is not a readable safetensors file ({str(err).splitlines()[0][:120]}); "
                             f"{refit}") from None
    try:
        value.load_state_dict(state)
    except RuntimeError as err:
        problem = " ".join(str(err).split())
        raise ValueLoadError(f"{weights} does not match the {meta['network']} of value.json "
                             f"({problem[:160]}...); {refit}") from None
    if process is not None:
        check_value_fits(value, process, path)
    return value.to(device).eval()


def _predict(value: nn.Module, X: Tensor, T: Tensor, device, chunk: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat([value(X[j:j + chunk].to(device), T[j:j + chunk].to(device)).cpu()
                          for j in range(0, X.shape[0], chunk)])


def _corr(a: Tensor, b: Tensor) -> float:
    if a.numel() < 2 or float(a.std()) == 0 or float(b.std()) == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1])


def fit_value(process, reward_fn, *, num_rollouts: int = 256, num_steps: int = 50, network: Optional[nn.Module] = None,
              train_steps: int = 1000, batch_size: int = 256, lr: float = 1e-3, loss: str = "mse", alpha: float = 1.0,
              generator: Optional[torch.Generator] = None, device=None, rollout_batch_size: int = 256,
              early_stopping: bool = True, weight_decay: float = 0.0,
              log: Optional[Callable[[str], None]] = None, progress: bool = False):
    """Fit an SVDD-MC value on pretrained rollouts. Returns ``(LearnedValue, cost)`` with
    ``cost = {nfe, reward_calls, wall_time_s, num_rollouts, num_states, train_steps, final_train_loss,
    best_step, heldout_mse, heldout_corr, heldout_corr_last, heldout_corr_by_t}``.

    Rollouts are split by rollout (all states of one rollout go together): every 10th is held
    out to report the fit (``heldout_*``: pooled over t; ``_last``: the states one step before
    x0, where the value should be best; ``_by_t``: [t, corr] at five points of the grid), and,
    with ``early_stopping``, the 9th of every 10 is a validation set scored 20 times during
    training, whose best checkpoint is kept. A network can memorise a few thousand final
    molecules and predict worse than the mean on new ones; the validation split catches that."""
    from ..algorithms._common import Run
    from ..algorithms.ancestral import rollout

    if loss not in ("mse", "exp"):
        raise ValueError("loss must be 'mse' or 'exp'")
    for name, n in (("num_rollouts", num_rollouts), ("num_steps", num_steps), ("train_steps", train_steps),
                    ("batch_size", batch_size), ("rollout_batch_size", rollout_batch_size)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if loss == "exp" and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number for loss='exp', got {alpha!r}")
    start = time.perf_counter()
    run = Run(process, reward_fn)
    states, times, targets, ids = [], [], [], []
    iterator = range(0, num_rollouts, rollout_batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="value rollouts", unit="batch")
    with torch.no_grad():
        for i in iterator:
            n = min(rollout_batch_size, num_rollouts - i)
            x0, traj = rollout(run, n, num_steps, generator, record_states=True)
            r = run.reward(x0).float().cpu()
            for t, x in traj:
                states.append(x.cpu())
                times.append(torch.full((n,), float(t)))
                targets.append(r)
                ids.append(torch.arange(i, i + n))
    X, T, R, ID = torch.cat(states), torch.cat(times), torch.cat(targets), torch.cat(ids)
    # hold out every 10th rollout (all its states) to report an honest fit quality
    held = (ID % 10 == 9) if num_rollouts >= 10 else torch.zeros_like(ID, dtype=torch.bool)
    val = (ID % 10 == 8) if early_stopping and num_rollouts >= 20 else torch.zeros_like(ID, dtype=torch.bool)
    Xh, Th, Rh = X[held], T[held], R[held]
    Xv, Tv, Rv = X[val], T[val], R[val]
    X, T, R = X[~(held | val)], T[~(held | val)], R[~(held | val)]
    time_scale = float(process.timesteps(1)[0])  # t of pure noise: 1 (masked) or T (gaussian)
    mean, std = float(R.mean()), float(R.std().clamp_min(1e-6)) if R.numel() > 1 else 1.0
    if network is None:  # initialise from the caller's generator, not the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=_cpu(generator)).item()))
            network = default_network(process)
    value = LearnedValue(network, time_scale, mean, std, meta={"loss": loss, "alpha": alpha, "num_steps": num_steps})
    device = torch.device(device) if device is not None else getattr(process, "device", torch.device("cpu"))
    value.to(device).train()
    opt = torch.optim.AdamW(value.parameters(), lr=lr, weight_decay=weight_decay)
    cpu_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=_cpu(generator)).item()))
    shift = float(R.max())
    final = float("nan")
    eval_every = max(train_steps // 20, 1)
    best = (float("inf"), None, 0)            # (validation loss, state, step)

    def objective(f, r):
        if loss == "mse":
            return ((f - r) / std).pow(2).mean()
        return (torch.exp((r - shift) / alpha) - torch.exp((f - shift) / alpha)).pow(2).mean()

    for step in range(train_steps):
        idx = torch.randint(0, X.shape[0], (min(batch_size, X.shape[0]),), generator=cpu_gen)
        x, t, r = X[idx].to(device), T[idx].to(device), R[idx].to(device)
        err = objective(value(x, t), r)
        opt.zero_grad(set_to_none=True)
        err.backward()
        torch.nn.utils.clip_grad_norm_(value.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(train_steps, 1)))
        opt.step()
        final = float(err.detach())
        if Xv.shape[0] > 1 and ((step + 1) % eval_every == 0 or step + 1 == train_steps):
            value.eval()
            vloss = float(objective(_predict(value, Xv, Tv, device), Rv))
            value.train()
            if vloss < best[0]:
                best = (vloss, {k: v.detach().clone() for k, v in value.state_dict().items()}, step + 1)
        if log and (step + 1) % max(train_steps // 10, 1) == 0:
            log(f"fit_value step {step + 1}/{train_steps} loss={final:.4g}"
                + (f" validation={best[0]:.4g} (best at {best[2]})" if best[1] is not None else ""))
    if best[1] is not None:
        value.load_state_dict(best[1])
    value.eval()
    heldout = {}
    if Xh.shape[0] > 1:
        pred = _predict(value, Xh, Th, device)
        heldout = {"heldout_rollouts": int((held.sum() // max(len(traj), 1)).item()),
                   "heldout_mse": float((pred - Rh).pow(2).mean()), "heldout_corr": _corr(pred, Rh)}
        grid = sorted(set(Th.tolist()), reverse=True)          # noisy -> clean
        picks = sorted({round(q * (len(grid) - 1)) for q in (0, 0.25, 0.5, 0.75, 1)})
        by_t = [[grid[i], _corr(pred[Th == grid[i]], Rh[Th == grid[i]])] for i in picks]
        heldout.update({"heldout_corr_last": by_t[-1][1],   # JSON has no NaN: an undefined corr is null
                        "heldout_corr_by_t": [[t, c if math.isfinite(c) else None] for t, c in by_t]})
    cost = {"nfe": run.process.nfe, "reward_calls": run.reward.calls, "wall_time_s": time.perf_counter() - start,
            "num_rollouts": num_rollouts, "num_states": int(X.shape[0]), "train_steps": train_steps,
            "final_train_loss": final, "loss": loss, "best_step": best[2] if best[1] is not None else train_steps,
            **heldout}
    value.meta["cost"] = cost
    return value, cost
