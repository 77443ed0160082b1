"""Train the shipped molecule model: a masked-diffusion transformer over SELFIES tokens.

Inputs come from ``scripts/prepare_molecules.py`` (``train/valid/test.npy`` token ids, uint8 or, for
a vocabulary over 256, uint16; ``tokenizer.json``). The model (``svdd.nn.MaskedTransformer``) is trained with
``svdd.nn.train_masked_diffusion`` (MDLM NELBO, log-linear schedule, AdamW, EMA) and saved in
fp16 safetensors with its config and tokenizer. Afterwards the script

- estimates the test-set NELBO (nats per molecule, 4 t-samples per sequence) of the EMA model,
- draws ``--num-samples`` molecules with plain ancestral sampling for each ``--sample-steps``
  (token ids saved as ``samples_s{K}.npy``; validity/FCD/... are computed where RDKit is,
  with ``python -m svdd.domains.molecules.evaluate``).

``--num-steps`` fixes the number of optimiser steps (deterministic given ``--seed``); without it
the script times a few steps and fits as many as ``--time-budget`` allows (the count used is in
``train.json``, so the run can be repeated exactly with ``--num-steps``).

**Resumable training** (``--checkpoint-dir DIR``): the same NELBO, AdamW and EMA, but with a
learning rate that needs no horizon (linear warm-up, then constant: ``--lr-schedule constant``),
so a run can be stopped and continued across sessions. Every ``--checkpoint-every`` seconds (and
at the end, or on SIGTERM/SIGINT) ``DIR`` receives, atomically (temp file + fsync + rename; the
step-numbered tensor files first, ``state.json`` last, so a reader always sees a complete set)::

    model-<step>.safetensors   fp32 weights being trained
    ema-<step>.safetensors     fp32 EMA weights
    optim-<step>.safetensors   AdamW first moments and step counts, and both RNG states (batch draws, masks)
    optimsq-<step>.safetensors AdamW second moments (a file of their own, so each file stays <= 20 MB)
    state.json                 step, history, settings, the files' SHA-256, the data's SHA-256

and the EMA is exported as fp16 ``--export`` (config.json, model.safetensors, tokenizer.json),
the folder ``--model <name>`` loads. ``--resume`` continues from ``DIR`` exactly: the batch and
mask draws, the learning rate and the optimiser state are those the uninterrupted run would have
had. ``--time-budget`` (wall) and ``--cpu-budget`` (process CPU seconds, fair under a shared
machine) bound each invocation.

    python scripts/train_molecules.py --device cuda --time-budget 300 --out /tmp/mol
    python scripts/train_molecules.py --device cpu --num-steps 20 --dim 64 --depth 2 --num-samples 64 --out /tmp/m
    python scripts/train_molecules.py --data .gpu-data/molecules-smiles --out runs/smiles --threads 1 \
        --dim 128 --depth 4 --heads 4 --batch-size 96 --checkpoint-dir runs/smiles/ckpt --cpu-budget 480
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.nn import MaskedTransformer, save_model, train_masked_diffusion  # noqa: E402
from svdd.nn.train import evaluate_nelbo  # noqa: E402
from svdd.process.masked import MaskedProcess  # noqa: E402
from svdd.runfolder import atomic_write, atomic_write_json  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def calibrate_steps(process, data, batch_size, amp, seconds, n=10):
    """Time ``n`` training steps on a throwaway copy of the model; return steps per second."""
    model = copy.deepcopy(process.model).train()
    proc = MaskedProcess(model, process.seq_len, process.vocab_size, process.mask_id, device=process.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=process.device).manual_seed(123)
    x0 = data[:batch_size].to(process.device)
    for i in range(n + 2):
        if i == 2:
            if process.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.time()
        with torch.autocast(device_type=process.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = proc.nelbo(x0, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if process.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.time() - start)


# -- resumable training ---------------------------------------------------------------------------
CHECKPOINT_VERSION = 1


def lr_factor(step: int, warmup: int, schedule: str, horizon: int | None) -> float:
    """Linear warm-up, then constant (``constant``) or cosine to ``horizon`` (``cosine``, floor 0.02)."""
    warm = min(1.0, step / max(warmup, 1))
    if schedule == "constant":
        return warm
    return max(warm * 0.5 * (1 + math.cos(math.pi * min(step / max(horizon or 1, 1), 1.0))), 0.02)


class Trainer:
    """MDLM NELBO training of ``model`` with AdamW + EMA whose whole state can be saved and restored.

    State = model weights, EMA weights, AdamW moments/step counts, the step, the CPU generator
    that draws batch indices and the generator that draws the masks (``process.nelbo``)."""

    def __init__(self, model, data: torch.Tensor, *, seq_len: int, vocab_size: int, mask_id: int, lr: float = 7e-4,
                 warmup: int = 500, schedule: str = "constant", horizon: int | None = None, batch_size: int = 96,
                 ema_decay: float = 0.999, grad_clip: float = 1.0, seed: int = 0, device="cpu"):
        self.model, self.data = model.to(device), data.to(device)
        self.device = torch.device(device)
        self.process = MaskedProcess(model, seq_len, vocab_size, mask_id, schedule="loglinear", device=self.device)
        self.lr, self.warmup, self.schedule, self.horizon = lr, warmup, schedule, horizon
        self.batch_size, self.ema_decay, self.grad_clip = batch_size, ema_decay, grad_clip
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.dev_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.step = 0
        self.history: list[dict] = []

    def train_step(self) -> float:
        self.model.train()
        self.step += 1
        idx = torch.randint(0, self.data.shape[0], (self.batch_size,), generator=self.gen).to(self.device)
        x0 = self.data[idx]
        for g in self.opt.param_groups:
            g["lr"] = self.lr * lr_factor(self.step, self.warmup, self.schedule, self.horizon)
        loss = self.process.nelbo(x0, generator=self.dev_gen).mean() / x0.shape[1]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.ema_decay, (1 + self.step) / (10 + self.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1 - d)
        return loss.item()

    # -- state as tensors (safetensors) + JSON ----------------------------------------------------
    def tensor_state(self) -> dict[str, dict[str, torch.Tensor]]:
        optim: dict[str, torch.Tensor] = {}
        optim_sq: dict[str, torch.Tensor] = {}   # second moments in a file of their own: each file stays <= 20 MB
        for i, p in enumerate(self.model.parameters()):
            st = self.opt.state.get(p)
            if st:
                optim[f"exp_avg.{i}"] = st["exp_avg"]
                optim_sq[f"exp_avg_sq.{i}"] = st["exp_avg_sq"]
                optim[f"step.{i}"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        optim["rng.batch"] = self.gen.get_state()
        optim["rng.mask"] = self.dev_gen.get_state().cpu()
        cpu = lambda sd: {k: v.detach().cpu().contiguous() for k, v in sd.items()}  # noqa: E731
        out = {"model": cpu(self.model.state_dict()), "ema": cpu(self.ema.state_dict()), "optim": cpu(optim)}
        if optim_sq:
            out["optimsq"] = cpu(optim_sq)
        return out

    def load_tensor_state(self, state: dict[str, dict[str, torch.Tensor]], step: int, history: list) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        optim = {**state["optim"], **state.get("optimsq", {})}   # checkpoints before the split: all in "optim"
        for i, p in enumerate(self.model.parameters()):
            if f"exp_avg.{i}" in optim:
                self.opt.state[p] = {"step": torch.tensor(float(optim[f"step.{i}"][0])),
                                     "exp_avg": optim[f"exp_avg.{i}"].to(p.device).clone(),
                                     "exp_avg_sq": optim[f"exp_avg_sq.{i}"].to(p.device).clone()}
        self.gen.set_state(optim["rng.batch"])
        self.dev_gen.set_state(optim["rng.mask"].to(self.dev_gen.device) if self.device.type != "cpu"
                               else optim["rng.mask"])
        self.step = int(step)
        self.history = list(history)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(folder: Path, trainer: Trainer, settings: dict) -> Path:
    """Write the trainer's full state into ``folder`` (see the module docstring); returns state.json."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, tensors in trainer.tensor_state().items():
        name = f"{kind}-{trainer.step:07d}.safetensors"
        payload = save(tensors, metadata={"step": str(trainer.step), "kind": kind})
        if len(payload) > 20e6:
            raise RuntimeError(f"checkpoint file {name} would be {len(payload) / 1e6:.1f} MB (> 20 MB)")
        atomic_write(folder / name, payload)
        os.chmod(folder / name, 0o644)   # mkstemp's 0600 would make a shipped file unreadable to others
        files[kind] = {"file": name, "sha256": _sha256_bytes(payload), "bytes": len(payload)}
    state = {"version": CHECKPOINT_VERSION, "step": trainer.step, "files": files, "history": trainer.history,
             "settings": settings, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = atomic_write_json(folder / "state.json", state)
    keep = {f["file"] for f in files.values()}
    for old in folder.glob("*-*.safetensors"):   # earlier steps' files, now unreferenced
        if old.name not in keep:
            old.unlink()
    return path


def load_checkpoint(folder: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """``(state.json contents, {kind: tensors})``, every file checked against its SHA-256."""
    from safetensors.torch import load

    folder = Path(folder)
    if not (folder / "state.json").exists():
        raise SystemExit(f"svdd: error: no checkpoint in {folder} (state.json missing); train without --resume first")
    state = json.loads((folder / "state.json").read_text())
    tensors = {}
    for kind, info in state["files"].items():
        payload = (folder / info["file"]).read_bytes()
        if _sha256_bytes(payload) != info["sha256"]:
            raise SystemExit(f"svdd: error: {folder / info['file']} does not match its SHA-256 in state.json")
        tensors[kind] = load(payload)
    return state, tensors


def export_ema(trainer: Trainer, folder: Path, tokenizer_json: Path, extra: dict) -> None:
    """fp16 EMA weights + config + tokenizer, loadable with ``svdd.nn.load_model`` / ``--model``."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"class": type(trainer.ema).__name__, "config": trainer.ema.config, **extra}
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in trainer.ema.state_dict().items()}
    atomic_write(folder / "model.safetensors", save(state))
    atomic_write_json(folder / "config.json", config)
    atomic_write(folder / "tokenizer.json", Path(tokenizer_json).read_bytes())
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        os.chmod(folder / name, 0o644)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_sha256(path: Path) -> str:
    """SHA-256 of the tokenizer's content (canonical JSON), so a change of file layout is not a change of data."""
    content = json.loads(Path(path).read_text())
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tokenizer_matches(saved: str | None, path: Path) -> bool:
    """Whether ``saved`` names this tokenizer: its content hash, or (checkpoints from before the content hash) the
    SHA-256 of its bytes, with or without the trailing newline the shared tokenizer writer now adds."""
    raw = Path(path).read_bytes()
    legacy = {hashlib.sha256(raw).hexdigest(), hashlib.sha256(raw.rstrip(b"\n")).hexdigest()}
    return saved == tokenizer_sha256(path) or saved in legacy


# restored from the checkpoint on --resume (--num-steps and the budgets only bound one invocation;
# ``horizon`` is the cosine schedule's length, fixed by the first invocation's --num-steps)
SETTINGS_KEYS = ("dim", "depth", "heads", "batch_size", "lr", "warmup", "lr_schedule", "horizon", "seed")


def run_resumable(args, arrays, vocab_size, seq_len, mask_id, device, data_dir: Path, out: Path):
    """Train with checkpoints (``--checkpoint-dir``), resuming when ``--resume``; returns (ema, results)."""
    ckpt = Path(args.checkpoint_dir)
    data_sha = file_sha256(data_dir / "train.npy")
    tok_sha = tokenizer_sha256(data_dir / "tokenizer.json")
    state = tensors = None
    args.horizon = args.num_steps
    if args.lr_schedule == "cosine" and args.num_steps is None:
        raise SystemExit("svdd: error: --lr-schedule cosine needs --num-steps (the schedule's length)")
    if args.resume:
        state, tensors = load_checkpoint(ckpt)
        saved = state["settings"]
        for k in SETTINGS_KEYS:   # the architecture and optimisation settings come from the checkpoint
            setattr(args, k, saved[k])
        if saved.get("train_sha256") != data_sha or not tokenizer_matches(saved.get("tokenizer_sha256"),
                                                                             data_dir / "tokenizer.json"):
            raise SystemExit(f"svdd: error: {data_dir} is not the data this checkpoint was trained on "
                             f"(SHA-256 of train.npy/tokenizer.json differ); rerun scripts/prepare_molecules.py "
                             f"with the settings in {ckpt / 'state.json'}")
    torch.manual_seed(args.seed)  # parameter initialisation only
    model = MaskedTransformer(vocab_size, seq_len, dim=args.dim, depth=args.depth, heads=args.heads)
    trainer = Trainer(model, arrays["train"], seq_len=seq_len, vocab_size=vocab_size, mask_id=mask_id, lr=args.lr,
                      warmup=args.warmup, schedule=args.lr_schedule, horizon=args.horizon,
                      batch_size=args.batch_size, seed=args.seed, device=device)
    if state is not None:
        trainer.load_tensor_state(tensors, state["step"], state["history"])
        log(f"resumed {ckpt} at step {trainer.step}")
    settings = {k: getattr(args, k) for k in SETTINGS_KEYS}
    settings.update(train_sha256=data_sha, tokenizer_sha256=tok_sha, data=str(data_dir), vocab_size=vocab_size,
                    seq_len=seq_len, mask_id=mask_id)
    n_params = sum(p.numel() for p in model.parameters())
    tok_meta = json.loads((data_dir / "tokenizer.json").read_text())
    export_dir = Path(args.export) if args.export else out / f"moses-{tok_meta.get('type', 'selfies')}"
    extra = lambda: {"schedule": "loglinear", "mask_id": mask_id, "pad_id": 0, "default_num_steps": 32,  # noqa: E731
                     "trained_steps": trainer.step, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
                     "lr_schedule": args.lr_schedule, "representation": tok_meta.get("type", "selfies"),
                     # MaskedProcess(draw=): the ring-system model (4,120 ids) draws two-stage; the older
                     # 256-id models keep the race their pinned results were drawn with
                     "draw": "two-stage" if tok_meta.get("type") == "ring-systems" else "race"}
    log(f"model: {n_params / 1e6:.2f} M parameters; batch {args.batch_size}; lr {args.lr} ({args.lr_schedule})")

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    wall0, cpu0 = time.time(), time.process_time()
    last_ckpt = time.time()
    start_step = trainer.step
    valid = arrays["valid"][: args.valid_size]

    def checkpoint(reason: str):
        rec = {"step": trainer.step, "train_loss_per_token": loss,
               "wall_s_this_run": round(time.time() - wall0, 1), "cpu_s_this_run": round(time.process_time() - cpu0, 1),
               "valid_nelbo_per_token": evaluate_nelbo(trainer.process, trainer.ema, valid, num_t_samples=2) / seq_len}
        trainer.history.append(rec)
        log(f"{reason}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        save_checkpoint(ckpt, trainer, settings)
        export_ema(trainer, export_dir, data_dir / "tokenizer.json", extra())
        log(f"checkpoint step {trainer.step} -> {ckpt}; EMA -> {export_dir}")

    loss = float("nan")
    try:
        while True:
            if args.num_steps is not None and trainer.step >= args.num_steps:
                break
            if args.stop_at_step is not None and trainer.step >= args.stop_at_step:
                break
            if args.time_budget is not None and time.time() - wall0 > args.time_budget:
                break
            if args.cpu_budget is not None and time.process_time() - cpu0 > args.cpu_budget:
                break
            if stop["signal"] is not None:
                log(f"signal {stop['signal']}: checkpointing and stopping")
                break
            loss = trainer.train_step()
            if trainer.step % 100 == 0:
                log(f"step {trainer.step} loss/token {loss:.4f}")
            if args.checkpoint_every and time.time() - last_ckpt > args.checkpoint_every:
                checkpoint("periodic")
                last_ckpt = time.time()
        if trainer.step > start_step or not (ckpt / "state.json").exists():
            checkpoint("final")
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    results = {"num_parameters": n_params, "steps_done": trainer.step, "steps_this_run": trainer.step - start_step,
               "train_time_s": time.time() - wall0, "train_cpu_s": time.process_time() - cpu0,
               "history": trainer.history, "args": vars(args), "device": str(device), "checkpoint": str(ckpt),
               "export": str(export_dir), "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    return export_dir, results, stop["signal"] is not None


def train_fixed(args, arrays, vocab_size, seq_len, mask_id, device, amp, data_dir: Path, out: Path):
    """The original fixed-horizon run (cosine over ``num_steps``), as session 2 trained ``moses-selfies``."""
    torch.manual_seed(args.seed)  # parameter initialisation only
    model = MaskedTransformer(vocab_size, seq_len, dim=args.dim, depth=args.depth, heads=args.heads).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    process = MaskedProcess(model, seq_len, vocab_size, mask_id, schedule="loglinear", device=device)

    num_steps = args.num_steps
    rate = None
    if num_steps is None:
        rate = calibrate_steps(process, arrays["train"], args.batch_size, amp, args.time_budget)
        num_steps = int(min(args.max_steps, max(50, 0.85 * rate * args.time_budget)))
        log(f"calibration: {rate:.1f} steps/s -> num_steps {num_steps}")
    log(f"model: {n_params / 1e6:.2f} M parameters; training {num_steps} steps at batch {args.batch_size}")
    t0 = time.time()
    ema, history = train_masked_diffusion(
        process, arrays["train"], num_steps=num_steps, batch_size=args.batch_size, lr=args.lr,
        warmup=min(args.warmup, max(num_steps // 10, 1)), seed=args.seed, valid_data=arrays["valid"][:2000],
        eval_every=max(num_steps // 10, 1), log=log, amp=amp, time_budget_s=args.time_budget * 1.15,
        stop_at_step=args.stop_at_step)
    train_time = time.time() - t0
    steps_done = history[-1]["step"] if history else 0

    model_dir = out / "moses-selfies"
    save_model(ema, model_dir, extra={"schedule": "loglinear", "mask_id": mask_id, "pad_id": 0,
                                      "default_num_steps": 32, "trained_steps": steps_done, "seed": args.seed,
                                      "batch_size": args.batch_size, "lr": args.lr}, half=True)
    shutil.copy(data_dir / "tokenizer.json", model_dir / "tokenizer.json")
    log(f"saved {model_dir} ({(model_dir / 'model.safetensors').stat().st_size / 1e6:.1f} MB) after {train_time:.0f}s")

    results = {"num_parameters": n_params, "num_steps": num_steps, "steps_done": steps_done,
               "calibrated_steps_per_s": rate, "train_time_s": train_time, "history": history,
               "args": vars(args), "device": str(device),
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    return model_dir, results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / ".gpu-data" / "molecules"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--num-steps", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=40_000)
    ap.add_argument("--stop-at-step", type=int, default=None,
                    help="stop after this step (the cosine still spans --num-steps): replays a time-budgeted run")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds of training (default 300 "
                    "without --checkpoint-dir, unbounded with it)")
    ap.add_argument("--cpu-budget", type=float, default=None, help="process CPU seconds of training (--checkpoint-dir)")
    ap.add_argument("--checkpoint-dir", default=None, help="resumable training: write the full state here")
    ap.add_argument("--checkpoint-every", type=float, default=600.0, help="seconds between checkpoints")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    ap.add_argument("--export", default=None, help="folder for the fp16 EMA model (default OUT/moses-<type>)")
    ap.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                    help="with --checkpoint-dir: constant after warm-up (resumable) or cosine over --num-steps")
    ap.add_argument("--valid-size", type=int, default=1000, help="validation molecules at each checkpoint")
    ap.add_argument("--eval-size", type=int, default=None, help="test/valid molecules for the final NELBO (all)")
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--sample-steps", default="32,64")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.resume and not args.checkpoint_dir:
        raise SystemExit("svdd: error: --resume needs --checkpoint-dir")
    if args.checkpoint_dir is None and args.time_budget is None:
        args.time_budget = 300.0
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    tok_meta = json.loads((data_dir / "tokenizer.json").read_text())
    vocab_size, seq_len = len(tok_meta["tokens"]), tok_meta["max_len"]
    mask_id = vocab_size - 1
    arrays = {k: torch.from_numpy(np.load(data_dir / f"{k}.npy").astype(np.int64)) for k in ("train", "valid", "test")}
    log(f"data: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()) + f"; vocab {vocab_size}; device {device}")

    if args.checkpoint_dir:
        model_dir, results, interrupted = run_resumable(args, arrays, vocab_size, seq_len, mask_id, device, data_dir, out)
        if interrupted:
            (out / "train.json").write_text(json.dumps(results, indent=2))
            log("stopped by a signal after checkpointing; skipping the evaluation")
            return
    else:
        model_dir, results = train_fixed(args, arrays, vocab_size, seq_len, mask_id, device, amp, data_dir, out)
    # evaluate the saved (fp16-rounded) weights, as users will load them
    from svdd.nn import load_model

    ema = load_model(model_dir, device=device)
    eval_proc = MaskedProcess(ema, seq_len, vocab_size, mask_id, schedule="loglinear", device=device)
    with torch.no_grad():
        t1 = time.time()
        results["test_nelbo_nats_per_molecule"] = evaluate_nelbo(eval_proc, ema, arrays["test"][:args.eval_size],
                                                                 num_t_samples=4, seed=1)
        results["valid_nelbo_nats_per_molecule"] = evaluate_nelbo(eval_proc, ema, arrays["valid"][:args.eval_size],
                                                                  num_t_samples=4, seed=2)
        results["num_test"] = int(arrays["test"][:args.eval_size].shape[0])
        log(f"test NELBO {results['test_nelbo_nats_per_molecule']:.3f} nats/molecule "
            f"({results['test_nelbo_nats_per_molecule'] / seq_len:.4f} per token) in {time.time() - t1:.0f}s")

        import svdd

        zero = lambda x: torch.zeros(x.shape[0], device=x.device)  # noqa: E731 - ancestral only needs a reward for x0
        for k in [int(s) for s in args.sample_steps.split(",") if s]:
            t1 = time.time()
            res = svdd.sample(eval_proc, zero, method="ancestral", num_samples=args.num_samples, num_steps=k,
                              generator=torch.Generator(device=device).manual_seed(args.seed + k),
                              max_batch_size=2048)
            np.save(out / f"samples_s{k}.npy", res.x0.cpu().numpy().astype(np.uint8 if vocab_size <= 256 else np.uint16))
            results[f"sampling_s{k}_wall_time_s"] = time.time() - t1
            log(f"sampled {args.num_samples} molecules with {k} steps in {time.time() - t1:.1f}s")
    (out / "train.json").write_text(json.dumps(results, indent=2))
    log("done")


if __name__ == "__main__":
    main()
