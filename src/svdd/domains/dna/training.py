"""Training and evaluation of the DNA activity oracles (the diffusion model is trained with
``svdd.nn.train_masked_diffusion``).

An oracle is a 4-way cell-type classifier (``ActivityOracle``) trained by cross-entropy with
AdamW on the sequences of one chromosome half, each batch on a random strand (the model
averages both strands at prediction time); the epoch with the lowest validation (chr2)
loss is kept. It is scored on held-out chromosomes by the AUROC of its HepG2 log-odds for
"HepG2-specific vs. other DHS" and by 4-way accuracy. ``auroc`` is the Mann–Whitney statistic
(ties count ½), so no scikit-learn is needed on the training machine.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import HEPG2, one_hot
from .models import ActivityOracle


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann–Whitney U / n1·n0)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    y = torch.as_tensor(labels).flatten().bool().cpu()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
        ranks = (sums / counts)[inverse]
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@torch.no_grad()
def predict_logits(model: ActivityOracle, tokens: Tensor, batch_size: int = 1024) -> Tensor:
    device = next(model.parameters()).device
    model.eval()
    out = [model(one_hot(tokens[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, tokens.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 4)


def log_odds_from_logits(logits: Tensor, target: int = HEPG2) -> Tensor:
    others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=1)
    return logits[:, target] - torch.logsumexp(others, dim=1)


def evaluate_oracle(model: ActivityOracle, tokens: Tensor, cell_type: Tensor, target: int = HEPG2) -> dict:
    logits = predict_logits(model, tokens)
    y = cell_type.long().cpu()
    return {
        "n": int(len(y)),
        "auroc_hepg2_vs_rest": auroc(log_odds_from_logits(logits, target), y == target),
        "accuracy_4way": float((logits.argmax(1) == y).float().mean()),
        "cross_entropy": float(F.cross_entropy(logits, y)),
    }


def train_oracle(tokens: Tensor, cell_type: Tensor, valid_tokens: Tensor, valid_cell_type: Tensor, *,
                 epochs: int = 12, batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 1e-2,
                 seed: int = 0, device: str | torch.device = "cpu", time_budget_s: Optional[float] = None,
                 model_kwargs: Optional[dict] = None, evals: int = 8, log: Callable[[str], None] = print
                 ) -> tuple[ActivityOracle, list[dict]]:
    """Train an ``ActivityOracle`` on ``tokens (N, L)`` with labels ``cell_type (N,)``; returns the
    best-validation-loss model (eval mode) and the history (``evals`` validation points).

    With ``time_budget_s`` the step count is fixed after 20 timed steps to what fits the budget
    (``min(epochs · N / batch_size, budget / time per step)``), so the cosine schedule completes."""
    device = torch.device(device)
    torch.manual_seed(seed)  # parameter initialisation only; batches use their own generator
    model = ActivityOracle(**(model_kwargs or {})).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = tokens.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    warmup = max(1, min(100, total // 10))
    x_all, y_all = tokens.to(device), cell_type.long().to(device)
    best, best_loss, history, start = None, float("inf"), [], time.time()
    perm, pos, run_loss, run_n, step = torch.randperm(n, generator=gen).to(device), 0, 0.0, 0, 0
    eval_every = max(1, total // max(evals, 1))
    while step < total:
        model.train()
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen).to(device), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        lr_now = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        for g in opt.param_groups:
            g["lr"] = lr_now
        xb = one_hot(x_all[idx])
        flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)        # random strand
        xb = torch.where(flip[:, None, None], xb.flip(1).flip(2), xb)
        loss = F.cross_entropy(model(xb, symmetric=False), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss, run_n, step = run_loss + float(loss.detach()), run_n + 1, step + 1
        if step == min(20, total) and time_budget_s is not None:
            per_step = (time.time() - start) / step
            total = max(step, min(total, int(time_budget_s / per_step)))
            eval_every = max(1, total // max(evals, 1))
            log(f"oracle: {per_step * 1000:.0f} ms/step -> {total} steps ({total / steps_per_epoch:.1f} epochs)")
        if step == total or step % eval_every == 0:
            valid = evaluate_oracle(model, valid_tokens, valid_cell_type)
            rec = {"step": step, "epoch": round(step / steps_per_epoch, 2), "train_loss": run_loss / run_n,
                   "valid_loss": valid["cross_entropy"], "valid_auroc": valid["auroc_hepg2_vs_rest"],
                   "valid_acc": valid["accuracy_4way"], "elapsed_s": round(time.time() - start, 1)}
            run_loss, run_n = 0.0, 0
            history.append(rec)
            log("oracle " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            if valid["cross_entropy"] < best_loss:
                best_loss, best = valid["cross_entropy"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    return model.eval(), history
