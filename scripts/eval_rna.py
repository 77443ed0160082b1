"""Measure the RNA domain: the Optimus 5-Prime port against the authors' predictions, and a
small pretrained-vs-guided comparison with the shipped UTR models (numbers for docs/rna.md).

    python scripts/eval_rna.py oracle --oracle-dir ../shared/data/utr
    python scripts/eval_rna.py models                      # ELBO of the shipped models
    python scripts/eval_rna.py sample --oracle-dir ../shared/data/utr --model utr-random \
        --methods ancestral,best-of-n,svdd-pm,svdd-mc,smc --num-samples 64 --seed 0 --out runs/rna-eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import svdd  # noqa: E402
from svdd.domains import get_domain  # noqa: E402
from svdd.domains.rna import metrics as M  # noqa: E402
from svdd.domains.rna.tokens import encode  # noqa: E402


def pearson(a, b) -> float:
    a, b = torch.tensor(a).double(), torch.tensor(b).double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def cmd_oracle(args) -> dict:
    import pandas as pd

    dom = get_domain("rna")
    df = pd.read_csv(Path(args.oracle_dir) / "snv_phenotype_log_diff.csv", usecols=["utr", "old_pred", "retrained_pred", "hrl"])
    x = encode(df["utr"].tolist())
    rnd = torch.randint(0, 4, (args.num_random, 50), generator=torch.Generator().manual_seed(args.seed))
    out = {"num_utrs": len(df)}
    preds = {}
    for name, col in (("mrl", "old_pred"), ("mrl-eval", "retrained_pred")):
        r = dom.make_reward(name, oracle_dir=args.oracle_dir)
        preds[name] = r(rnd)
        p = r(x)
        out[name] = {"pearson_vs_" + col: pearson(p, df[col].values), "pearson_vs_hrl": pearson(p, df["hrl"].values),
                     "random_median": float(preds[name].median()), "random_top10": float(preds[name].quantile(0.9))}
    out["pearson_mrl_vs_mrl_eval_random"] = pearson(preds["mrl"], preds["mrl-eval"])
    out["random_uaug_vs_mrl_pearson"] = pearson(M.uaug_count(rnd).float(), preds["mrl"])
    return out


def cmd_models(args) -> dict:
    """ELBO (nats per 50-mer) of each shipped model on random 50-mers and held-out DHS windows."""
    from svdd.domains.rna.data import dhs_test_windows

    dom = get_domain("rna")
    sets = {"random_50mers": torch.randint(0, 4, (args.num_random, 50), generator=torch.Generator().manual_seed(args.seed)),
            "dhs_test_windows": dhs_test_windows()}
    out = {"uniform_log_likelihood": M.UNIFORM_LOG_LIKELIHOOD}
    for name in dom.models:
        process = dom.load_process(name)
        out[name] = {}
        for key, x in sets.items():
            e = M.elbo(process, x, num_t_samples=16, seed=args.seed)
            out[name][key] = {"elbo_mean": float(e.mean()), "stderr": float(e.std() / len(e) ** 0.5), "n": len(e)}
    return out


def cmd_sample(args) -> dict:
    from svdd.values import load_value

    dom = get_domain("rna")
    process = dom.load_process(args.model)
    guide = dom.make_reward(args.reward, oracle_dir=args.oracle_dir)
    evaluator = dom.make_reward("mrl-eval", oracle_dir=args.oracle_dir)
    genomic = dom.load_process("utr-genomic") if args.model != "utr-genomic" else None
    rows = {}
    for method in args.methods.split(","):
        kw = {}
        if method in ("best-of-n", "svdd-pm", "svdd-mc", "svdd-r"):
            kw["num_candidates"] = args.num_candidates
        if method == "svdd-mc":
            path = Path(args.value or ROOT / "src/svdd/domains/rna/assets/values/utr-random-mrl")
            if not (path / "value.json").exists():
                print(f"skip svdd-mc: no value network at {path}")
                continue
            kw["value_fn"] = load_value(path)
        if method == "smc":
            kw["alpha"] = args.smc_alpha
        if method == "dps":
            kw.update(guidance_scale=args.dps_scale, through_model=False)
        if method == "svdd-r":
            kw["replace_fraction"] = 0.05
        t0 = time.perf_counter()
        res = svdd.sample(process, guide, method=method, num_samples=args.num_samples, num_steps=args.num_steps,
                          generator=torch.Generator().manual_seed(args.seed), **kw)
        x0 = res.x0
        r_eval = evaluator(x0)
        elbo = M.elbo(process, x0, num_t_samples=16)
        row = {"mrl_median": float(res.rewards.median()), "mrl_top10": float(res.rewards.quantile(0.9)),
               "mrl_eval_median": float(r_eval.median()), "mrl_eval_top10": float(r_eval.quantile(0.9)),
               "elbo_mean": float(elbo.mean()), "diversity": M.pairwise_diversity(x0),
               "uaug_mean": float(M.uaug_count(x0).float().mean()), "gc_mean": float(M.gc_content(x0).mean()),
               "nfe_per_sample": res.info["nfe_per_sample"], "wall_time_s": time.perf_counter() - t0}
        if genomic is not None:
            row["elbo_genomic_mean"] = float(M.elbo(genomic, x0, num_t_samples=16).mean())
        rows[method] = row
        print(f"{method:<10} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
    return {"model": args.model, "reward": args.reward, "num_samples": args.num_samples, "num_steps": args.num_steps,
            "num_candidates": args.num_candidates, "seed": args.seed, "torch_threads": torch.get_num_threads(),
            "results": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["oracle", "models", "sample"])
    ap.add_argument("--oracle-dir", default=str(ROOT.parent / "shared" / "data" / "utr"))
    ap.add_argument("--model", default="utr-random")
    ap.add_argument("--reward", default="mrl")
    ap.add_argument("--methods", default="ancestral,best-of-n,svdd-pm,svdd-mc,smc")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--num-steps", type=int, default=50)
    ap.add_argument("--num-candidates", type=int, default=8)
    ap.add_argument("--num-random", type=int, default=2000)
    ap.add_argument("--smc-alpha", type=float, default=0.5)
    ap.add_argument("--dps-scale", type=float, default=20.0)
    ap.add_argument("--value", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"oracle": cmd_oracle, "models": cmd_models, "sample": cmd_sample}[args.what](args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
