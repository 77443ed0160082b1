"""Measure the FK potentials of ``smc`` on the 1-D Gaussian-mixture toy (``GaussianMixtureToy.default()``,
reward r(x) = x, alpha = 1) on a long horizon: the weighted mean of x0 (final="weighted", resampling
every step, PM value) for potential diff / max / sum at several particle counts, against the K-step
model's own tilted mean E_pre[x·exp(x/α)] / E_pre[exp(x/α)] (self-normalised over ancestral samples).

    .venv/bin/python scripts/fk_potentials.py --num-steps 20 --particles 256 1024 4096 --seeds 4
"""

from __future__ import annotations

import argparse

import torch

import svdd
from svdd.testing import GaussianMixtureToy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-steps", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--particles", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--reference-samples", type=int, default=200_000)
    ap.add_argument("--potentials", nargs="+", default=["diff", "max", "sum"])
    args = ap.parse_args()
    toy, K, alpha = GaussianMixtureToy.default(), args.num_steps, args.alpha
    ref = svdd.sample(toy.process(), toy.reward, method="ancestral", num_samples=args.reference_samples, num_steps=K,
                      generator=torch.Generator().manual_seed(0)).x0[:, 0].double()
    w = torch.softmax(ref / alpha, 0)
    print(f"K = {K}, alpha = {alpha}: target (the {K}-step model's tilted mean, SNIS over "
          f"{args.reference_samples} ancestral samples) {float((w * ref).sum()):.3f}; "
          f"continuous-time {toy.reward_mean(alpha):.3f}")
    for potential in args.potentials:
        for P in args.particles:
            means, ess = [], []
            for seed in range(args.seeds):
                res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=P, num_particles=P,
                                  num_steps=K, alpha=alpha, potential=potential, final="weighted",
                                  generator=torch.Generator().manual_seed(100 + seed))
                means.append(float((res.log_weights.exp() * res.x0[:, 0]).sum()))
                ess.append(res.info["final_ess"])
            m = torch.tensor(means)
            print(f"  {potential:4s} P = {P:5d}: weighted mean {float(m.mean()):.3f} ± {float(m.std()):.3f} "
                  f"(over {args.seeds} seeds), final ESS {sum(ess) / len(ess):.1f}")


if __name__ == "__main__":
    main()
