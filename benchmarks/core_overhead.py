"""SVDD-PM overhead vs plain sampling (issue 2 benchmark).

On a masked process with a transformer denoiser of the molecule model's size (random weights),
measure ``SVDD-PM wall time / (M × ancestral wall time)`` for M in {4, 16}, with the same number
of final samples and steps, and the nfe per sample against the reference implementation's
``K·(M+1)``. A ratio ≤ 1 means SVDD's extra cost is only its M children (shared denoiser call,
reused x0_hat, deduplicated children). Timings are ratios inside one run (shared machine).

    python benchmarks/core_overhead.py --out benchmarks/results/core_overhead
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import svdd
from svdd.nn import MaskedTransformer


def timed(fn, repeats):
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/core_overhead")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--num-steps", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--vocab", type=int, default=28)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MaskedTransformer(args.vocab, args.seq_len, dim=args.dim, depth=args.depth, heads=4).eval()
    proc = svdd.MaskedProcess(model, args.seq_len, args.vocab, args.vocab - 1)
    reward = lambda x0: (x0 == 1).float().mean(1)  # noqa: E731 - cheap reward: the denoiser dominates
    N, K = args.num_samples, args.num_steps
    run = lambda method, **kw: svdd.sample(proc, reward, method=method, num_samples=kw.pop("n", N), num_steps=K,  # noqa: E731
                                           generator=torch.Generator().manual_seed(0), **kw)
    t_anc, anc = timed(lambda: run("ancestral"), args.repeats)
    rows = []
    for M in (4, 16):
        t_pm, pm = timed(lambda: run("svdd-pm", num_candidates=M), args.repeats)
        t_pm_nodedup, pm2 = timed(lambda: run("svdd-pm", num_candidates=M, deduplicate=False), 1)
        t_ancM, _ = timed(lambda: run("ancestral", n=N * M), 1)
        rows.append({"M": M, "svdd_pm_s": t_pm, "ancestral_s": t_anc, "ancestral_MN_s": t_ancM,
                     "ratio_vs_M_x_ancestral": t_pm / (M * t_anc), "ratio_vs_ancestral_of_MN": t_pm / t_ancM,
                     "ratio_no_dedup_vs_M_x_ancestral": t_pm_nodedup / (M * t_anc),
                     "nfe_per_sample": pm.info["nfe_per_sample"], "nfe_per_sample_no_dedup": pm2.info["nfe_per_sample"],
                     "reference_nfe_per_sample": K * (M + 1), "ancestral_nfe_per_sample": anc.info["nfe_per_sample"]})
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__, "num_samples": N, "num_steps": K, "seq_len": args.seq_len, "vocab": args.vocab,
            "dim": args.dim, "depth": args.depth,
            "parameters": sum(p.numel() for p in model.parameters())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"SVDD-PM cost vs plain sampling: masked transformer ({meta['parameters'] / 1e6:.2f} M parameters, random "
             f"weights, L={args.seq_len}, V={args.vocab}), {N} samples, K={K} steps, {meta['machine']}.", "",
             "| M | SVDD-PM s | ancestral s | SVDD-PM ÷ (M × ancestral) | same, no dedup | SVDD-PM ÷ ancestral of M·N | "
             "nfe/sample | nfe/sample no dedup | reference K·(M+1) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']} | {r['svdd_pm_s']:.2f} | {r['ancestral_s']:.2f} | {r['ratio_vs_M_x_ancestral']:.2f} | "
                     f"{r['ratio_no_dedup_vs_M_x_ancestral']:.2f} | {r['ratio_vs_ancestral_of_MN']:.2f} | "
                     f"{r['nfe_per_sample']:.1f} | {r['nfe_per_sample_no_dedup']:.1f} | {r['reference_nfe_per_sample']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
