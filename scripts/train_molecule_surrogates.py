"""Train the differentiable QED / SA surrogates (svdd.domains.molecules.surrogate) on the CPU.

Data: the tokenised MOSES subset of scripts/prepare_molecules.py (.gpu-data/molecules) plus
samples of the shipped diffusion model (DPS applies the surrogate to the model's x̂0, and the
model's molecules are far from MOSES: a surrogate fitted on MOSES alone has a correlation of
≈ 0.1 on them), labelled with RDKit (QED; SA as (10 − SA)/9). Reports the held-out correlation
on MOSES validation molecules and on held-out model samples, and writes
src/svdd/domains/molecules/assets/surrogate-<prop>/{model.safetensors,config.json} for the default
model, or assets/<model>/surrogate-<prop>/ for another shipped model (``--model``; its data is the
one prepare_molecules.py wrote for that model's representation).

    python scripts/train_molecule_surrogates.py --data .gpu-data/molecules --num-train 60000 \
        --num-model-samples 9216 --steps 4000
    python scripts/train_molecule_surrogates.py --model moses-selfies-bpe --data .gpu-data/molecules-selfies-bpe \
        --num-train 60000 --num-model-samples 9216 --steps 4000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from svdd.domains import get_domain
from svdd.domains.molecules import ASSETS, chem
from svdd.domains.molecules.surrogate import SURROGATES, SurrogateNet, surrogate_home

LABELS = {"qed": chem.qed, "sa": chem.sa_normalised}


def label(tok, ids: np.ndarray) -> dict[str, np.ndarray]:
    out = {p: np.zeros(len(ids), dtype=np.float32) for p in SURROGATES}
    for i, row in enumerate(ids):
        mol = chem.mol_from_smiles(tok.decode_one(row.tolist()))
        for p in SURROGATES:
            out[p][i] = LABELS[p](mol) if mol is not None else 0.0
    return out


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".gpu-data/molecules")
    ap.add_argument("--num-train", type=int, default=60000)
    ap.add_argument("--num-valid", type=int, default=5000)
    ap.add_argument("--num-model-samples", type=int, default=9216, help="the first 1,024 are held out")
    ap.add_argument("--num-model-heldout", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="a shipped molecule model (default: the domain's default)")
    ap.add_argument("--out", default=None, help="folder for surrogate-<prop>/ (default: where the model's are read)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dom = get_domain("molecules")
    model = args.model or dom.default_model
    proc = dom.load_process(model)
    tok = proc.tokenizer
    train = np.load(Path(args.data) / "train.npy", mmap_mode="r")
    valid = np.load(Path(args.data) / "valid.npy", mmap_mode="r")
    Xtr = np.asarray(train[np.sort(rng.choice(len(train), args.num_train, replace=False))]).astype(np.int64)
    Xva = np.asarray(valid[: args.num_valid]).astype(np.int64)
    if Xtr.shape[1] != tok.max_len:
        raise SystemExit(f"{args.data} holds rows of {Xtr.shape[1]} tokens, the {model} model reads {tok.max_len}: "
                         "pass the --data that prepare_molecules.py wrote for this model's representation")
    t0 = time.time()
    Ytr, Yva = label(tok, Xtr), label(tok, Xva)
    import svdd

    # an ancestral step holds x̂0 (rows × L × V float32) for every row: calls of ≤ 1 GiB of it (one call
    # of 9,216 for the SELFIES and BPE models; 4.9 GB at once for the 4,120-id ring-system model)
    gen, chunk = torch.Generator().manual_seed(args.seed + 1), max(1024, 2**28 // (tok.max_len * tok.vocab_size))
    Xall = np.concatenate([svdd.sample(proc, lambda x: torch.zeros(x.shape[0]), method="ancestral",
                                       num_samples=min(chunk, args.num_model_samples - i), num_steps=32,
                                       max_batch_size=1024, generator=gen).x0.numpy().astype(np.int64)
                           for i in range(0, args.num_model_samples, chunk)])
    Yall = label(tok, Xall)
    h = args.num_model_heldout
    Xms, Yms = Xall[:h], {p: v[:h] for p, v in Yall.items()}
    Xtr = np.concatenate([Xtr, Xall[h:]])
    Ytr = {p: np.concatenate([Ytr[p], Yall[p][h:]]) for p in SURROGATES}
    print(f"labels: {time.time() - t0:.0f} s", flush=True)
    out_dir = Path(args.out) if args.out else surrogate_home(ASSETS / model)
    for prop in SURROGATES:
        t1 = time.time()
        x, y = torch.from_numpy(Xtr).long(), torch.from_numpy(Ytr[prop])
        net = SurrogateNet(tok.vocab_size, tok.max_len)
        net.target_mean.fill_(float(y.mean()))
        net.target_std.fill_(float(y.std()))
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(args.seed)
        for step in range(args.steps):
            idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
            loss = ((net(x[idx]) - y[idx]) / net.target_std).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for pg in opt.param_groups:
                pg["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            opt.step()
            if (step + 1) % (args.steps // 10) == 0:
                print(f"{prop} step {step + 1} loss {float(loss.detach()):.4f}", flush=True)
        net.eval()
        with torch.no_grad():
            pv = net(torch.from_numpy(Xva).long())
            pm = net(torch.from_numpy(Xms).long())
        metrics = {"corr_moses_valid": corr(pv, torch.from_numpy(Yva[prop])),
                   "mae_moses_valid": float((pv - torch.from_numpy(Yva[prop])).abs().mean()),
                   "corr_model_samples": corr(pm, torch.from_numpy(Yms[prop])),
                   "mae_model_samples": float((pm - torch.from_numpy(Yms[prop])).abs().mean()),
                   "num_train": len(Xtr), "num_train_moses": args.num_train,
                   "num_train_model_samples": len(Xall) - h, "num_model_heldout": h, "num_valid": args.num_valid,
                   "steps": args.steps, "batch_size": args.batch_size,
                   "lr": args.lr, "seed": args.seed, "train_time_s": time.time() - t1}
        print(prop, json.dumps(metrics), flush=True)
        from safetensors.torch import save_file

        d = out_dir / f"surrogate-{prop}"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "model.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        os.replace(tmp, d / "model.safetensors")
        (d / "config.json.tmp").write_text(json.dumps({"property": prop, "config": net.config, "metrics": metrics,
                                                   "model": model,
                                                   "command": "python scripts/train_molecule_surrogates.py "
                                                   + (f"--model {args.model} --data {args.data} " if args.model else "")
                                                   + f"--num-train {args.num_train} --num-model-samples {args.num_model_samples} "
                                                   f"--steps {args.steps}"},
                                                  indent=2))
        os.replace(d / "config.json.tmp", d / "config.json")


if __name__ == "__main__":
    main()
