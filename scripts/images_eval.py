"""Small evaluation of the shipped digits DDPM and figures for docs/images.md.

Runs, on the same seeds, the pretrained sampler, best-of-n and SVDD-PM (and SVDD-MC when a
fitted value is shipped for the reward) at (about) equal nfe, then prints a JSON table: reward
median / mean / top-10 %, the evaluation classifier's view, diversity, ELBO proxy, nfe and wall
time. With ``--figures DIR`` it writes sample grids and an x0_hat strip.

    python scripts/images_eval.py --reward compressibility --num-samples 32 --num-steps 25 \\
        --num-candidates 4 --figures docs/images
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reward", default="compressibility")
    p.add_argument("--eval-reward", default=None, help="also score samples with this reward (e.g. classifier-eval:0)")
    p.add_argument("--methods", default="ancestral,best-of-n,svdd-pm,svdd-mc")
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=25)
    p.add_argument("--num-candidates", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figures", default=None)
    p.add_argument("--out", default=None, help="write the JSON table here too")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import svdd
    from svdd.domains import get_domain
    from svdd.metrics.stats import quantile_summary
    from svdd.domains.images.viz import X0HatRecorder, best_and_median, grid_image, ranks, save_grid, side_by_side

    domain = get_domain("images")
    process = domain.load_process()
    reward = domain.make_reward(args.reward)
    eval_reward = domain.make_reward(args.eval_reward) if args.eval_reward else None
    rows = []
    figures = Path(args.figures) if args.figures else None
    baseline_grids = None
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
    tag = args.reward.replace(":", "")
    for method in args.methods.split(","):
        kwargs = {}
        if method in ("best-of-n", "svdd-pm", "svdd-r", "svdd-mc"):
            kwargs["num_candidates"] = args.num_candidates
        if method == "svdd-mc":
            path = domain.extra["values"].get(args.reward)
            if path is None or not Path(path).exists():
                continue
            from svdd.values.learned import load_value

            kwargs["value_fn"] = load_value(path)
        recorder = X0HatRecorder(index=0) if figures and method in ("ancestral", "svdd-pm") else None
        start = time.perf_counter()
        res = svdd.sample(process, reward, method=method, num_samples=args.num_samples, num_steps=args.num_steps,
                          generator=torch.Generator().manual_seed(args.seed), callback=recorder, **kwargs)
        wall = time.perf_counter() - start
        stats = quantile_summary(res.rewards.float().numpy(), seed=args.seed)
        metrics = domain.metrics(res.x0, domain.decode(res.x0), process)
        row = {"method": method, "reward": args.reward, "median": stats["median"], "median_ci": stats["median_ci"],
               "mean": stats["mean"], "top10": stats["top10"], "top10_ci": stats["top10_ci"],
               "nfe_per_sample": res.info["nfe"] / args.num_samples,
               "wall_time_s": round(wall, 2), **{k: v for k, v in metrics.items() if not isinstance(v, list)},
               "eval_digit_counts": metrics.get("eval_digit_counts")}
        if "cost" in getattr(kwargs.get("value_fn"), "meta", {}):
            row["value_training_cost"] = kwargs["value_fn"].meta["cost"]
        if eval_reward is not None:
            ev = quantile_summary(eval_reward(res.x0).detach().float().numpy(), seed=args.seed)
            row[f"eval:{args.eval_reward}"] = {"median": ev["median"], "median_ci": ev["median_ci"], "mean": ev["mean"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if figures:   # tiles captioned with rank (1 = highest reward) and reward; pretrained grid beside
            best, median = best_and_median(res.rewards, 16)
            rank = ranks(res.rewards)
            label = [f"#{int(rank[i])} {float(res.rewards[i]):.3f}" for i in range(len(rank))]
            grids = {}
            for which, idx in (("best", best), ("median", median)):
                title = f"{method} · {args.reward} · {which} 16 of {args.num_samples}"
                grids[which] = grid_image(res.x0[idx], 8, 4, labels=[label[int(i)] for i in idx], title=title)
                save_grid(figures / f"{tag}_{method}_{which}.png", res.x0[idx], ncols=8,
                          labels=[label[int(i)] for i in idx], title=title)
            if method == "ancestral":
                baseline_grids = grids
                save_grid(figures / f"{method}_samples.png", res.x0, ncols=8,
                          labels=[label[i] for i in range(len(label))], title=f"pretrained · {args.reward}")
            elif baseline_grids is not None:
                side_by_side(figures / f"{tag}_{method}_vs_pretrained.png", [grids["median"], baseline_grids["median"]])
            if recorder is not None:
                recorder.save(figures / f"{tag}_{method}_x0hat_strip.png", max_frames=10)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
