"""DTS convergence on the exact toys: how close the law of a tree's Boltzmann descents gets to the
exact tilted target as the rollouts and the child cap grow.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dts_convergence.py

Writes docs/figures/dts_convergence.{png,md,json}. Every point is the *exact* descent law of a
tree (``DTSState.descent_probabilities``), so the only noise is the trees' own randomness (several
independent trees per point, grown in one batched call with ``num_trees``).

Both backups are run: ``visits`` (the default) and ``mean`` (equal-weight children).

- masked: ``MaskedToy()``, K = 8, α = 0.5; total variation to the K-step model's tilted law
  (computed by enumeration), mean and range over 4 trees.
- gaussian: ``GaussianMixtureToy.default()``, K = 20, α = 1; weight of the right mode and mean of
  x0 under the descent law, mean ± s.e. over 16 trees; reference: the K-step model's tilted law by
  self-normalised importance weighting of 200k ancestral samples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import svdd
from svdd.runfolder import atomic_path, atomic_write, atomic_write_json
from svdd.testing import GaussianMixtureToy, MaskedToy, total_variation

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"
MASKED_GRID = {"rollouts": [64, 256, 1024, 4096], "caps": [4, 16, 32], "trees": 4, "steps": 8, "alpha": 0.5}
GAUSS_GRID = {"rollouts": [16, 64, 256], "caps": [2, 8, 16], "trees": 16, "steps": 20, "alpha": 1.0}
BACKUPS = ("visits", "mean")        # the default, and the equal-weight option


def masked_rows():
    toy, g = MaskedToy(), MASKED_GRID
    target = toy.tilted(g["alpha"], g["steps"])
    rows = []
    for backup, B, R in ((b, B, R) for b in BACKUPS for B in g["caps"] for R in g["rollouts"]):
        t0 = time.perf_counter()
        res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=g["trees"], num_trees=g["trees"],
                          num_steps=g["steps"], num_rollouts=R, max_children=B, alpha=g["alpha"],
                          backup=backup, generator=torch.Generator().manual_seed(0))
        tree = res.info["tree"]
        p, leaves = tree.descent_probabilities(), tree.leaves()
        laws = torch.zeros(g["trees"], toy.num_clean, dtype=torch.float64)
        laws.index_put_((tree.tree[leaves], toy.clean_index(tree.state[leaves])), p[leaves], accumulate=True)
        tv = [total_variation(law, target) for law in laws]
        rows.append({"backup": backup, "cap": B, "rollouts": R, "tv_mean": sum(tv) / len(tv), "tv_min": min(tv),
                     "tv_max": max(tv),
                     "nfe_per_tree": res.info["nfe"] / g["trees"], "wall_s": time.perf_counter() - t0})
    pretrained = total_variation(toy.model_distribution(g["steps"]), target)
    return rows, {"tv_pretrained": pretrained}


def gauss_rows():
    toy, g = GaussianMixtureToy.default(), GAUSS_GRID
    anc = svdd.sample(toy.process(), toy.reward, method="ancestral", num_samples=200000, num_steps=g["steps"],
                      generator=torch.Generator().manual_seed(9))
    w = torch.softmax(anc.rewards.double() / g["alpha"], 0)
    right = (toy.component_of(anc.x0) == 1).double()
    ref = {"target_right_weight": float((w * right).sum()), "target_mean": float((w * anc.x0[:, 0].double()).sum()),
           "pretrained_right_weight": float(right.mean()), "pretrained_mean": float(anc.x0.double().mean())}
    rows = []
    for backup, B, R in ((b, B, R) for b in BACKUPS for B in g["caps"] for R in g["rollouts"]):
        t0 = time.perf_counter()
        T = g["trees"]
        res = svdd.sample(toy.process(), toy.reward, method="dts", num_samples=T, num_trees=T,
                          num_steps=g["steps"], num_rollouts=R, max_children=B, alpha=g["alpha"],
                          backup=backup, generator=torch.Generator().manual_seed(0))
        tree = res.info["tree"]
        p, leaves = tree.descent_probabilities(), tree.leaves()
        x = tree.state[leaves][:, 0].double()
        is_right = (toy.component_of(tree.state[leaves]) == 1).double()
        mean = torch.zeros(T, dtype=torch.float64).index_add_(0, tree.tree[leaves], p[leaves] * x)
        weight = torch.zeros(T, dtype=torch.float64).index_add_(0, tree.tree[leaves], p[leaves] * is_right)
        rows.append({"backup": backup, "cap": B, "rollouts": R, "right_weight": float(weight.mean()),
                     "right_weight_se": float(weight.std() / T ** 0.5), "mean": float(mean.mean()),
                     "mean_se": float(mean.std() / T ** 0.5), "nfe_per_tree": res.info["nfe"] / T,
                     "wall_s": time.perf_counter() - t0})
    return rows, ref


def figure(masked, mref, gauss, gref, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {B: f"C{i}" for i, B in enumerate(sorted(set(MASKED_GRID["caps"]) | set(GAUSS_GRID["caps"])))}
    for backup, ls in zip(BACKUPS, ("-", "--")):
        for B in MASKED_GRID["caps"]:
            rs = [r for r in masked if r["cap"] == B and r["backup"] == backup]
            x = [r["rollouts"] for r in rs]
            a.plot(x, [r["tv_mean"] for r in rs], marker="o", ls=ls, color=colors[B], label=f"B = {B}, {backup}")
            if backup == BACKUPS[0]:
                a.fill_between(x, [r["tv_min"] for r in rs], [r["tv_max"] for r in rs], alpha=0.12, color=colors[B])
    a.axhline(mref["tv_pretrained"], color="gray", ls=":", label="pretrained law")
    a.axhline(0.10, color="k", ls="--", lw=0.8, label="TV 0.10 (issue target)")
    a.set_xscale("log")
    a.set_xlabel("rollouts per tree")
    a.set_ylabel("TV(descent law, exact tilted target)")
    a.set_title(f"masked toy, K = {MASKED_GRID['steps']}, α = {MASKED_GRID['alpha']} (4 trees: mean; band: range)",
                fontsize=10)
    a.legend(fontsize=7, ncol=2)
    for backup, ls in zip(BACKUPS, ("-", "--")):
        for B in GAUSS_GRID["caps"]:
            rs = [r for r in gauss if r["cap"] == B and r["backup"] == backup]
            b.errorbar([r["rollouts"] for r in rs], [r["right_weight"] for r in rs], ls=ls, color=colors[B],
                       yerr=[2 * r["right_weight_se"] for r in rs], marker="o", capsize=3, label=f"B = {B}, {backup}")
    b.axhline(gref["target_right_weight"], color="k", ls="--", lw=0.8, label="exact tilted target (K-step)")
    b.axhline(gref["pretrained_right_weight"], color="gray", ls=":", label="pretrained")
    b.set_xscale("log")
    b.set_xlabel("rollouts per tree")
    b.set_ylabel("weight of the right mode under the descent law")
    b.set_title(f"Gaussian mixture, K = {GAUSS_GRID['steps']}, α = {GAUSS_GRID['alpha']} (16 trees, ± 2 s.e.)",
                fontsize=10)
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def markdown(masked, mref, gauss, gref) -> str:
    lines = [f"**masked toy** (K = {MASKED_GRID['steps']}, α = {MASKED_GRID['alpha']}; pretrained law at TV "
             f"{mref['tv_pretrained']:.3f}; 4 trees per row)", "",
             "| backup | cap B | rollouts / tree | nfe / tree | TV mean | TV min – max |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in masked:
        lines.append(f"| {r['backup']} | {r['cap']} | {r['rollouts']} | {r['nfe_per_tree']:.0f} | {r['tv_mean']:.3f} | "
                     f"{r['tv_min']:.3f} – {r['tv_max']:.3f} |")
    lines += ["", f"**Gaussian mixture** (K = {GAUSS_GRID['steps']}, α = {GAUSS_GRID['alpha']}; K-step tilted target: "
              f"right-mode weight {gref['target_right_weight']:.3f}, mean {gref['target_mean']:.3f}; pretrained "
              f"{gref['pretrained_right_weight']:.3f} / {gref['pretrained_mean']:.3f}; 16 trees per row, ± s.e.)", "",
              "| backup | cap B | rollouts / tree | nfe / tree | right-mode weight | mean of x0 |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in gauss:
        lines.append(f"| {r['backup']} | {r['cap']} | {r['rollouts']} | {r['nfe_per_tree']:.0f} | "
                     f"{r['right_weight']:.3f} ± "
                     f"{r['right_weight_se']:.3f} | {r['mean']:.3f} ± {r['mean_se']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    masked, mref = masked_rows()
    gauss, gref = gauss_rows()
    OUT.mkdir(parents=True, exist_ok=True)
    figure(masked, mref, gauss, gref, OUT / "dts_convergence.png")
    atomic_write(OUT / "dts_convergence.md", markdown(masked, mref, gauss, gref))
    atomic_write_json(OUT / "dts_convergence.json", {"masked": {"grid": MASKED_GRID, "reference": mref, "rows": masked},
                                                     "gaussian": {"grid": GAUSS_GRID, "reference": gref, "rows": gauss},
                                                     "wall_s": time.perf_counter() - t0}, indent=1)
    print(f"wrote {OUT / 'dts_convergence.png'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
