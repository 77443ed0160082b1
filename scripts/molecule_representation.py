"""Issue 18: why the shipped molecule model writes few aromatic rings, and which representation fixes it.

Subcommands (results as JSON in ``benchmarks/results/molecule-representation/``):

``diagnose``  the data side and the model side of the kekulé problem.
    *Data*: N MOSES train molecules through each tokenizer and back (SELFIES: encoder, ids,
    decoder; SMILES: canonical aromatic SMILES, ids, join): share with an aromatic ring before
    and after, share whose canonical SMILES comes back identical.
    *Model*: ancestral samples of a model, rings counted by (size, endocyclic double bonds in
    the Kekulé form, aromatic) per molecule, next to MOSES test; share of samples with a ring
    larger than 7 (MOSES has none).

``evaluate MODEL_DIR``  ancestral samples of a trained model folder (``config.json``,
    ``model.safetensors``, ``tokenizer.json``): validity (RDKit sanitisation, no valency
    correction), uniqueness, novelty, internal diversity, FCD to MOSES test (≥ 1,000 valid
    molecules), and the structure shares (aromatic ring, any ring, ring > 7 atoms, heavy atoms).

``train NAME --data DIR``  the fixed small budget every variant gets: ``scripts/train_molecules.py``
    with 240 *CPU* seconds of training on one thread (CPU time, not wall time, so that other
    jobs on a shared machine do not shorten one variant's run), dim 128, depth 4, 4 heads, batch
    96, AdamW lr 7e-4 after 200 warm-up steps, constant; output ``runs/molrep/NAME/model``.

``table``  the markdown table of every ``evaluate`` JSON in the results folder.

    python scripts/molecule_representation.py train selfies --data .gpu-data/molecules
    python scripts/molecule_representation.py train smiles --data .gpu-data/molecules-smiles
    python scripts/molecule_representation.py train smiles-random --data .gpu-data/molecules-smiles-random
    python scripts/molecule_representation.py diagnose --model-dir src/svdd/domains/molecules/assets/moses-selfies
    python scripts/molecule_representation.py evaluate runs/rep/smiles/moses-smiles --steps 32 --num-samples 2000 \\
        --name smiles-canonical
    python scripts/molecule_representation.py table
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results" / "molecule-representation"


def _chem():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def aromatic_ring_count(mol) -> int:
    """Rings whose atoms are all aromatic (RDKit perception)."""
    return sum(1 for r in mol.GetRingInfo().AtomRings() if all(mol.GetAtomWithIdx(j).GetIsAromatic() for j in r))


def structure(smiles: list[str]) -> dict:
    """Shares over the *valid* molecules: aromatic ring, any ring, a ring > 7 atoms; mean heavy atoms."""
    Chem = _chem()
    mols = [m for m in (Chem.MolFromSmiles(s) if s else None for s in smiles) if m is not None and m.GetNumAtoms()]
    if not mols:
        return {"n_valid": 0}
    return {"n_valid": len(mols),
            "aromatic_ring_share": float(np.mean([aromatic_ring_count(m) > 0 for m in mols])),
            "ring_share": float(np.mean([m.GetRingInfo().NumRings() > 0 for m in mols])),
            "ring_gt7_share": float(np.mean([any(len(r) > 7 for r in m.GetRingInfo().AtomRings()) for m in mols])),
            "mean_heavy_atoms": float(np.mean([m.GetNumHeavyAtoms() for m in mols])),
            "mean_rings": float(np.mean([m.GetRingInfo().NumRings() for m in mols]))}


def ring_census(smiles: list[str], top: int = 12) -> dict:
    """Rings per valid molecule by (size, endocyclic double bonds in the Kekulé form, aromatic)."""
    Chem = _chem()
    counts: collections.Counter = collections.Counter()
    n = 0
    for s in smiles:
        m = Chem.MolFromSmiles(s) if s else None
        if m is None or not m.GetNumAtoms():
            continue
        n += 1
        k = Chem.Mol(m)
        Chem.Kekulize(k, clearAromaticFlags=True)
        for ring in m.GetRingInfo().AtomRings():
            rs = set(ring)
            dbl = sum(1 for b in k.GetBonds() if b.GetBeginAtomIdx() in rs and b.GetEndAtomIdx() in rs
                      and b.GetBondType() == Chem.BondType.DOUBLE)
            arom = all(m.GetAtomWithIdx(j).GetIsAromatic() for j in ring)
            counts[(len(ring), dbl, arom)] += 1
    rows = [{"size": a, "kekule_double_bonds": b, "aromatic": c, "per_molecule": round(v / max(n, 1), 3)}
            for (a, b, c), v in counts.most_common(top)]
    return {"n_valid": n, "rings_per_molecule": round(sum(counts.values()) / max(n, 1), 3), "top": rows}


def selfies_roles(tokens: list[str]) -> list[str]:
    """Role of each SELFIES token: ``ring``/``branch`` (the [RingN]/[BranchN] symbol), ``ring-size``
    /``branch-size`` (the N index symbols after it, read as numbers), ``atom`` (single-bonded
    atom), ``atom=`` / ``atom#`` (atom with a double/triple bond to the previous one), ``pad``."""
    roles, pending = [], []
    for t in tokens:
        if pending:
            roles.append(pending.pop())
            continue
        if t == "[PAD]":
            roles.append("pad")
        elif "Ring" in t:
            roles.append("ring")
            pending = ["ring-size"] * int(t[-2])
        elif "Branch" in t:
            roles.append("branch")
            pending = ["branch-size"] * int(t[-2])
        else:
            roles.append("atom=" if t.startswith("[=") else "atom#" if t.startswith("[#") else "atom")
    return roles


@torch.no_grad()
def token_loss_by_role(proc, tok, ids: torch.Tensor, seed: int = 0, reps: int = 4) -> dict:
    """Mean cross-entropy (nats) of the model at masked positions, by SELFIES role, with the mask
    rate drawn uniformly in (0, 1) per sequence (the training distribution of the loglinear schedule)."""
    gen = torch.Generator().manual_seed(seed)
    roles = [selfies_roles([tok.tokens[i] for i in row]) for row in ids.tolist()]
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for _ in range(reps):
        for b in range(0, ids.shape[0], 250):
            x0 = ids[b:b + 250]
            t = torch.rand(x0.shape[0], generator=gen)
            masked = torch.rand(x0.shape, generator=gen) < t[:, None]
            xt = torch.where(masked, torch.full_like(x0, tok.mask_id), x0)
            logits = proc.model(xt, t.float())
            logits[..., tok.mask_id] = float("-inf")
            ce = -torch.log_softmax(logits.float(), -1).gather(-1, x0[..., None])[..., 0]
            for i, j in masked.nonzero().tolist():
                r = roles[b + i][j]
                total[r] += float(ce[i, j])
                count[r] += 1
    return {r: {"mean_ce_nats": round(total[r] / count[r], 3), "share_of_tokens": round(count[r] / sum(count.values()), 3)}
            for r in sorted(count, key=lambda r: -total[r] / count[r])}


# -- sampling --------------------------------------------------------------------------------------
def sample_model(model_dir: Path, num_samples: int, steps: int, seed: int, batch: int = 500):
    import svdd
    from svdd.domains.molecules import load_model

    proc = load_model(path=str(model_dir))
    zero = lambda x: torch.zeros(x.shape[0])  # noqa: E731 - ancestral sampling needs no reward
    t0 = time.time()
    res = svdd.sample(proc, zero, method="ancestral", num_samples=num_samples, num_steps=steps,
                      generator=torch.Generator().manual_seed(seed), max_batch_size=batch)
    return proc, res.x0, time.time() - t0


def cmd_diagnose(args) -> None:
    from svdd.domains.molecules import data as mdata
    from svdd.domains.molecules.tokenizer import SelfiesTokenizer, SmilesTokenizer, smiles_variant, split_smiles

    Chem = _chem()
    train = mdata.load_moses("train")
    idx = np.random.default_rng(args.seed).permutation(len(train))[: args.num_data]
    mols = [train[i] for i in idx]
    selfies_tok = SelfiesTokenizer.load(ROOT / "src/svdd/domains/molecules/assets/moses-selfies/tokenizer.json")
    canon = [smiles_variant(s) for s in mols]
    smiles_tok = SmilesTokenizer.build(canon, 64)
    out: dict = {"command": " ".join(sys.argv), "data_round_trip": {}}
    for name, tok in (("selfies", selfies_tok), ("smiles", smiles_tok)):
        before = after = same = failed = 0
        for s in mols:
            m0 = Chem.MolFromSmiles(s)
            try:
                back = tok.decode(tok.encode(s)[None])[0]
            except Exception:
                failed += 1
                continue
            m1 = Chem.MolFromSmiles(back)
            before += aromatic_ring_count(m0) > 0
            after += m1 is not None and aromatic_ring_count(m1) > 0
            same += m1 is not None and Chem.MolToSmiles(m1) == Chem.MolToSmiles(m0)
        n = len(mols) - failed
        out["data_round_trip"][name] = {"n": n, "failed_to_encode": failed, "aromatic_ring_share_before": before / n,
                                        "aromatic_ring_share_after": after / n, "identical_canonical": same / n}
        print(name, out["data_round_trip"][name], flush=True)
    lengths = [len(split_smiles(c)) for c in canon]
    out["smiles_token_lengths"] = {"median": float(np.median(lengths)), "p99_5": float(np.percentile(lengths, 99.5)),
                                   "max": int(max(lengths))}
    test = list(mdata.load_sample()["test"])
    out["moses_test_sample"] = {"structure": structure(test), "rings": ring_census(test)}
    if args.model_dir:
        out["model"] = {"dir": str(args.model_dir), "by_steps": {}}
        from svdd.domains.molecules import load_model

        proc = load_model(path=str(args.model_dir))
        if isinstance(proc.tokenizer, SelfiesTokenizer):
            ids = proc.tokenizer.encode(list(mdata.load_sample()["test"]))
            out["model"]["test_loss_by_role"] = token_loss_by_role(proc, proc.tokenizer, ids)
            print("loss by role", out["model"]["test_loss_by_role"], flush=True)
        for k in args.steps:
            proc, x0, wall = sample_model(Path(args.model_dir), args.num_samples, k, args.seed + k)
            smiles = proc.tokenizer.decode(x0)
            rec = {"num_samples": args.num_samples, "sampling_wall_s": wall, "structure": structure(smiles)}
            if k == args.steps[0]:
                rec["rings"] = ring_census(smiles)
            out["model"]["by_steps"][str(k)] = rec
            print(k, rec["structure"], flush=True)
    path = Path(args.out or RESULTS / "diagnosis.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


def cmd_evaluate(args) -> None:
    from svdd.domains.molecules.metrics import molecule_metrics

    model_dir = Path(args.model_dir)
    results = []
    for k in args.steps:
        proc, x0, wall = sample_model(model_dir, args.num_samples, k, args.seed + k)
        raw = proc.tokenizer.decode(x0)
        t0 = time.time()
        metrics = molecule_metrics(raw, min_fcd=1000)
        rec = {"name": args.name, "model_dir": str(model_dir), "num_steps": k, "seed": args.seed + k,
               "sampling_wall_s": round(wall, 1), **metrics, **structure(raw),
               "most_common": collections.Counter(s for s in raw if s).most_common(3),
               "metrics_wall_s": round(time.time() - t0, 1), "command": " ".join(sys.argv)}
        cfg = json.loads((model_dir / "config.json").read_text())
        rec["trained_steps"] = cfg.get("trained_steps")
        rec["representation"] = json.loads((model_dir / "tokenizer.json").read_text()).get("type", "selfies")
        train_json = model_dir.parent / "train.json"
        if train_json.exists():
            meta = json.loads(train_json.read_text())
            for key in ("num_parameters", "train_time_s", "train_cpu_s", "test_nelbo_nats_per_molecule"):
                if key in meta:
                    rec[key] = meta[key]
        results.append(rec)
        print(json.dumps({k2: v for k2, v in rec.items() if k2 != "command"}), flush=True)
        path = Path(args.out_dir or RESULTS) / f"{args.name}-s{k}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1))
        print(f"wrote {path}")


TRAIN_SETTINGS = ["--device", "cpu", "--seed", "0", "--dim", "128", "--depth", "4", "--heads", "4",
                  "--batch-size", "96", "--lr", "7e-4", "--warmup", "200", "--cpu-budget", "240",
                  "--checkpoint-every", "0", "--threads", "1", "--num-samples", "0", "--sample-steps", "",
                  "--eval-size", "2000"]


def cmd_train(args) -> None:
    import os
    import subprocess

    out = ROOT / "runs" / "molrep" / args.name
    cmd = [sys.executable, str(ROOT / "scripts" / "train_molecules.py"), "--data", args.data, "--out", str(out),
           "--checkpoint-dir", str(out / "ckpt"), "--export", str(out / "model"), *TRAIN_SETTINGS]
    print(" ".join(cmd), flush=True)
    raise SystemExit(subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}))


def cmd_table(args) -> None:
    rows = []
    for p in sorted(Path(args.dir).glob("*-s*.json")):
        r = json.loads(p.read_text())
        fmt = lambda v, d=3: "—" if v is None or v != v else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
        rows.append(f"| {r['name']} | {r['num_steps']} | {fmt(r.get('trained_steps'))} | {r['num_samples']} | "
                    f"{fmt(r['validity'])} | {fmt(r['uniqueness'])} | {fmt(r.get('novelty'))} | "
                    f"{fmt(r.get('aromatic_ring_share'))} | {fmt(r.get('ring_share'))} | "
                    f"{fmt(r.get('ring_gt7_share'))} | {fmt(r.get('fcd_moses_test'), 2)} | {p.name} |")
    print("| variant | sampler steps | train steps | samples | validity | uniqueness | novelty | aromatic ring | "
          "any ring | ring > 7 | FCD | file |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("diagnose")
    d.add_argument("--num-data", type=int, default=3000)
    d.add_argument("--model-dir", default=None)
    d.add_argument("--num-samples", type=int, default=1000)
    d.add_argument("--steps", type=int, nargs="+", default=[32, 128])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None)
    e = sub.add_parser("evaluate")
    e.add_argument("model_dir")
    e.add_argument("--name", required=True)
    e.add_argument("--steps", type=int, nargs="+", default=[32])
    e.add_argument("--num-samples", type=int, default=2000)
    e.add_argument("--seed", type=int, default=100)
    e.add_argument("--out-dir", default=None)
    tr = sub.add_parser("train")
    tr.add_argument("name")
    tr.add_argument("--data", required=True)
    t = sub.add_parser("table")
    t.add_argument("--dir", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"diagnose": cmd_diagnose, "evaluate": cmd_evaluate, "train": cmd_train, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
