"""Evaluate the shipped DNA models: oracle quality on held-out chr1 and the domain metrics of
saved sample sets (pretrained / SVDD-PM / best-of-N) against real-sequence baselines.

    python scripts/eval_dna.py [--samples DIR] [--out docs/dna-eval.json]

``--samples`` holds ``samples_*.npy`` (uint8 tokens) as written by scripts/train_dna.py (default:
``src/svdd/domains/dna/assets/training``). Prints one JSON object; CPU, about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.domains import get_domain  # noqa: E402
from svdd.domains.dna import compute_metrics, load_pretrained  # noqa: E402
from svdd.domains.dna import data as D  # noqa: E402
from svdd.domains.dna import metrics as M  # noqa: E402
from svdd.domains.dna.training import auroc  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default=str(D.ASSETS / "training"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dom = get_domain("dna")
    proc = load_pretrained()
    report: dict = {}

    x, cell = M.real_subset()
    with torch.no_grad():
        g = dom.make_reward("hepg2")(x)
        e = dom.make_reward("hepg2-eval")(x)
    y = cell == D.HEPG2
    report["oracles_chr1"] = {"n": int(len(x)), "auroc_guidance": auroc(g, y), "auroc_evaluation": auroc(e, y),
                              "pearson_guidance_vs_evaluation": float(torch.corrcoef(torch.stack([g, e]))[0, 1]),
                              "spearman_guidance_vs_evaluation": float(torch.corrcoef(torch.stack(
                                  [g.argsort().argsort().float(), e.argsort().argsort().float()]))[0, 1])}

    sets = {"real_hepg2_chr1": x[y], "real_all_chr1": x}
    for f in sorted(Path(args.samples).glob("samples_*.npy")):
        sets[f.stem.replace("samples_", "")] = torch.from_numpy(np.load(f).astype(np.int64))
    report["sets"] = {}
    for name, toks in sets.items():
        n = min(len(toks), 256)
        sub = toks[torch.randperm(len(toks), generator=torch.Generator().manual_seed(0))[:n]]
        report["sets"][name] = compute_metrics(sub, None, proc)
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                for k, v in report["sets"][name].items()}), flush=True)
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
