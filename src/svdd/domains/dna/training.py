"""Training and evaluation of the DNA activity oracles (the diffusion model is trained with
``svdd.nn.train_masked_diffusion``).

An oracle is a 4-way cell-type classifier (``ActivityOracle``) trained by cross-entropy with
AdamW on the sequences of one chromosome half; the epoch with the lowest validation (chr2)
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
                 model_kwargs: Optional[dict] = None, log: Callable[[str], None] = print
                 ) -> tuple[ActivityOracle, list[dict]]:
    """Train an ``ActivityOracle`` on ``tokens (N, L)`` with labels ``cell_type (N,)``; returns the
    best-validation-loss model (eval mode) and the per-epoch history."""
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
    best, best_loss, history, step, start = None, float("inf"), [], 0, time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        run_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            lr_now = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr_now
            loss = F.cross_entropy(model(one_hot(x_all[idx])), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            run_loss += float(loss.detach())
            step += 1
        valid = evaluate_oracle(model, valid_tokens, valid_cell_type)
        rec = {"epoch": epoch, "train_loss": run_loss / steps_per_epoch, "valid_loss": valid["cross_entropy"],
               "valid_auroc": valid["auroc_hepg2_vs_rest"], "valid_acc": valid["accuracy_4way"],
               "elapsed_s": round(time.time() - start, 1)}
        history.append(rec)
        log("oracle " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        if valid["cross_entropy"] < best_loss:
            best_loss, best = valid["cross_entropy"], copy.deepcopy(model.state_dict())
        if time_budget_s is not None and time.time() - start > time_budget_s:
            log(f"oracle time budget reached after epoch {epoch}")
            break
    model.load_state_dict(best)
    return model.eval(), history
