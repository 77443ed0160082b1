"""Training loop for masked-diffusion denoisers: minimise the MDLM NELBO per token
(``MaskedProcess.nelbo / L``) with AdamW, cosine decay after a linear warm-up, gradient
clipping and an exponential moving average of the weights (the EMA is what gets saved)."""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional

import torch
from torch import Tensor

from ..process.masked import MaskedProcess


def train_masked_diffusion(process: MaskedProcess, data: Tensor, *, num_steps: int, batch_size: int = 256,
                           lr: float = 3e-4, weight_decay: float = 0.0, warmup: int = 500,
                           ema_decay: float = 0.999, grad_clip: float = 1.0, seed: int = 0,
                           valid_data: Optional[Tensor] = None, eval_every: int = 1000,
                           log: Callable[[str], None] = print, amp: bool = False,
                           time_budget_s: float | None = None,
                           stop_at_step: int | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``process.model`` in place on token tensor ``data (N, L)``; returns (EMA model, history).
    The learning rate follows a cosine over ``num_steps``; ``time_budget_s`` or ``stop_at_step``
    stop earlier (``stop_at_step`` replays a run that a time budget stopped, step for step)."""
    model = process.model
    device = process.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    history: list[dict] = []
    data = data.to(device)
    start = time.time()
    model.train()
    for step in range(1, num_steps + 1):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen).to(device)
        x0 = data[idx]
        scale = min(1.0, step / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(step / num_steps, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.02)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss = process.nelbo(x0, generator=dev_gen).mean() / x0.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        if step % eval_every == 0 or step == num_steps:
            rec = {"step": step, "train_loss_per_token": loss.item(), "elapsed_s": time.time() - start}
            if valid_data is not None:
                rec["valid_nelbo_per_token"] = evaluate_nelbo(process, ema, valid_data) / valid_data.shape[1]
            history.append(rec)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        over_time = time_budget_s is not None and time.time() - start > time_budget_s
        if over_time or (stop_at_step is not None and step >= stop_at_step):
            log(f"{'time budget' if over_time else 'stop_at_step'} reached at step {step}")
            if not history or history[-1]["step"] != step:   # the last step taken, for steps_done
                history.append({"step": step, "train_loss_per_token": loss.item(), "elapsed_s": time.time() - start})
            break
    model.eval()
    return ema, history


@torch.no_grad()
def evaluate_nelbo(process: MaskedProcess, model: torch.nn.Module, data: Tensor, batch_size: int = 512,
                   num_t_samples: int = 4, seed: int = 0) -> float:
    """Mean NELBO per sequence (nats) of ``data`` under ``model``."""
    proc = MaskedProcess(model, process.seq_len, process.vocab_size, process.mask_id, process.schedule,
                         device=process.device)
    gen = torch.Generator(device=process.device).manual_seed(seed)
    total, n = 0.0, 0
    for i in range(0, data.shape[0], batch_size):
        x0 = data[i:i + batch_size].to(process.device)
        total += float(proc.nelbo(x0, num_t_samples=num_t_samples, generator=gen).sum())
        n += x0.shape[0]
    return total / max(n, 1)
