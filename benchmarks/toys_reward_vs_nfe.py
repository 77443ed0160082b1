"""Reward vs nfe on the two analytic toys, at matched budgets (standalone; a few minutes on CPU).

    python benchmarks/toys_reward_vs_nfe.py            # writes docs/figures/toys_reward_vs_nfe.{png,md}

Toys (``svdd.testing``):
- ``gaussian``: ``GaussianMixtureToy.default()`` (1-D, modes −1.5 (70%) and +1.5, linear reward
  r = x), DDPM (η = 1), K = 50 steps;
- ``masked``: ``MaskedToy()`` (3 tokens over 3 letters) with a random positional reward
  ``r = Σ_l W[l, x_l]`` (differentiable on one-hot inputs, so DPS applies; the exact denoiser
  is extended to one-hot inputs), K = 8 steps.

Budget per final sample b·K denoiser evaluations, b ∈ {1, 2, 4, 8, 16}: best-of-n
(``num_candidates = b``), svdd-pm (``num_candidates = b``, α = 0: nfe = 1 + (K − 1)·b; ``deduplicate=False``, because on a
27-state toy the default batch-wide de-duplication of identical children makes nfe per sample
depend on the batch size — about 2 per sample here), smc and das (``num_particles = b·num_samples``,
α = ``ALPHA``), dno (Gaussian only; ``num_iterations = b/2``, nfe = (2N + 1)·K = (b + 1)·K), dps and
ancestral (a fixed K). The reference line is the exact mean reward of the tilted target
p·exp(r/α) at α = ``ALPHA`` (the target of smc/das; svdd-pm at α = 0 and best-of-n aim higher).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))   # the one-hot toy denoiser and positional reward

import svdd  # noqa: E402
from algorithm_toys import masked_toy_with_positional_reward, onehot_process  # noqa: E402
from svdd.testing import GaussianMixtureToy  # noqa: E402

BUDGETS = (1, 2, 4, 8, 16)
ALPHA = {"gaussian": 0.5, "masked": 0.3}
STEPS = {"gaussian": 50, "masked": 8}


def setups():
    g = GaussianMixtureToy.default()
    yield "gaussian", g.process(), g.reward, g.reward_mean(ALPHA["gaussian"]), g.reward_mean()
    toy, reward = masked_toy_with_positional_reward()
    K = STEPS["masked"]
    exact = float((toy.tilted(ALPHA["masked"], K) * toy.reward_table).sum())
    pre = float((toy.model_distribution(K) * toy.reward_table).sum())
    yield "masked", onehot_process(toy), reward, exact, pre


def runs(kind, num_samples):
    a = ALPHA[kind]
    yield "ancestral", 1, {}
    yield "dps", 1, {"guidance_scale": 1.0 / a}
    for b in BUDGETS:
        yield "best-of-n", b, {"num_candidates": b}
        yield "svdd-pm", b, {"num_candidates": b, "alpha": 0.0, "deduplicate": False}
        yield "smc", b, {"num_particles": b * num_samples, "alpha": a}
        yield "das", b, {"num_particles": b * num_samples, "alpha": a}
        if kind == "gaussian" and b > 1:
            yield "dno", b, {"num_iterations": b // 2, "lr": 0.1, "num_permutations": 10}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, refs = [], {}
    for kind, proc, reward, exact, pre in setups():
        refs[kind] = {"tilted": exact, "pretrained": pre, "alpha": ALPHA[kind], "steps": STEPS[kind]}
        for method, b, kw in runs(kind, args.num_samples):
            t0 = time.perf_counter()
            res = svdd.sample(proc, reward, method=method, num_samples=args.num_samples, num_steps=STEPS[kind],
                              generator=torch.Generator().manual_seed(args.seed), **kw)
            r = res.rewards.double()
            rows.append({"toy": kind, "method": method, "budget": b,
                         "knob": {k: v for k, v in kw.items() if k not in ("alpha", "lr", "num_permutations", "deduplicate")},
                         "nfe_per_sample": res.info["nfe_per_sample"],
                         "reward_calls_per_sample": res.info["reward_calls"] / args.num_samples,
                         "grad_passes_per_sample": res.info["grad_passes"] / args.num_samples,
                         "reward_mean": float(r.mean()), "reward_se": float(r.std() / math.sqrt(len(r))),
                         "wall_time_s": time.perf_counter() - t0})
            print(f"{kind:8s} {method:10s} b={b:2d} nfe/sample={rows[-1]['nfe_per_sample']:7.1f} "
                  f"reward={rows[-1]['reward_mean']:.3f}±{rows[-1]['reward_se']:.3f}", flush=True)
    (out / "toys_reward_vs_nfe.json").write_text(json.dumps({"rows": rows, "references": refs,
                                                             "num_samples": args.num_samples, "seed": args.seed},
                                                            indent=1))
    plot(rows, refs, out / "toys_reward_vs_nfe.png")
    (out / "toys_reward_vs_nfe.md").write_text(table(rows, refs, args.num_samples))
    print(f"wrote {out / 'toys_reward_vs_nfe.png'} and {out / 'toys_reward_vs_nfe.md'}")


def plot(rows, refs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("gaussian", "masked")):
        methods = []
        for r in rows:
            if r["toy"] == kind and r["method"] not in methods:
                methods.append(r["method"])
        for m in methods:
            pts = sorted((r["nfe_per_sample"], r["reward_mean"], r["reward_se"]) for r in rows
                         if r["toy"] == kind and r["method"] == m)
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=2, label=m, ls="-" if len(x) > 1 else "none")
        ax.axhline(refs[kind]["tilted"], color="k", ls="--", lw=1,
                   label=f"exact tilted target, α={refs[kind]['alpha']}")
        ax.set_xscale("log")
        K = refs[kind]["steps"]
        ax.set_xticks([b * K for b in BUDGETS])
        ax.set_xticklabels([str(b * K) for b in BUDGETS])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("denoiser evaluations per final sample (nfe)")
        ax.set_ylabel("mean reward")
        ax.set_title(f"{kind} toy (K = {refs[kind]['steps']})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _first_reaching(rows, kind, method, level):
    pts = sorted((r["nfe_per_sample"], r["reward_mean"]) for r in rows if r["toy"] == kind and r["method"] == method)
    return next((n for n, v in pts if v >= level), None)


def table(rows, refs, num_samples):
    lines = [f"Mean reward over {num_samples} samples (± standard error) against denoiser evaluations per "
             "final sample. Reference: exact mean reward of the tilted target p·exp(r/α).", ""]
    for kind in ("gaussian", "masked"):
        ref = refs[kind]
        lines += [f"**{kind} toy** (K = {ref['steps']}; pretrained mean reward {ref['pretrained']:.3f}; exact tilted "
                  f"target at α = {ref['alpha']}: {ref['tilted']:.3f})", "",
                  "| method | budget knob | nfe / sample | reward calls / sample | grad passes / sample | mean reward |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in rows:
            if r["toy"] != kind:
                continue
            knob = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["knob"].items()) or "–"
            lines.append(f"| {r['method']} | {knob} | {r['nfe_per_sample']:.0f} | {r['reward_calls_per_sample']:.1f} | "
                         f"{r['grad_passes_per_sample']:.0f} | {r['reward_mean']:.3f} ± {r['reward_se']:.3f} |")
        # does SVDD-PM reach a reward with fewer nfe than best-of-n?
        bon = sorted((r["nfe_per_sample"], r["reward_mean"]) for r in rows if r["toy"] == kind and r["method"] == "best-of-n")
        verdicts = []
        for n_bon, v_bon in bon[1:]:
            n_svdd = _first_reaching(rows, kind, "svdd-pm", v_bon)
            if n_svdd is None:
                verdicts.append(f"best-of-n's {v_bon:.3f} (at nfe {n_bon:.0f}) is not reached by svdd-pm")
            else:
                verdicts.append(f"best-of-n reaches {v_bon:.3f} at nfe {n_bon:.0f}, svdd-pm at nfe {n_svdd:.0f}")
        lines += ["", "SVDD-PM vs best-of-n: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
