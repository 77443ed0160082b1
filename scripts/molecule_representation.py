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

``curves LABEL=PATH ... --name NAME``  validation NELBO per molecule against training molecules seen,
    from each run's ``state.json`` / ``train.json``; JSON ``curves-NAME.json``, figure
    ``docs/figures/molecule_learning_curves.png``.

``properties [MODEL_DIR ...] [--smiles CSV ...] --name NAME``  MOSES-style property distributions
    of one or more sources (a model folder, sampled ancestrally with ``--num-samples``/``--steps``/
    ``--seed``; or a CSV with a ``smiles`` column, e.g. an ``svdd sample`` samples.csv) next to a
    fixed random subset of MOSES test (``--reference-size`` 10,000, seed 0): per valid molecule
    (RDKit sanitisation, no valency correction) molecular weight, Crippen logP, QED, SA score
    (RDKit Contrib sascorer, raw 1-10), rings (SSSR) and aromatic rings; per property mean/std,
    the 1-D Wasserstein distance to MOSES test and, for ring counts, the shares of 0..6+.
    JSON ``properties-NAME.json``, figure ``docs/figures/molecule_properties.png`` (``--figure``).

    python scripts/molecule_representation.py train selfies --data .gpu-data/molecules
    python scripts/molecule_representation.py train smiles --data .gpu-data/molecules-smiles
    python scripts/molecule_representation.py train smiles-random --data .gpu-data/molecules-smiles-random
    python scripts/molecule_representation.py train selfies-bpe --data .gpu-data/molecules-selfies-bpe
    python scripts/molecule_representation.py diagnose --model-dir src/svdd/domains/molecules/assets/moses-selfies
    python scripts/molecule_representation.py evaluate runs/rep/smiles/moses-smiles --steps 32 --num-samples 2000 \\
        --name smiles-canonical
    python scripts/molecule_representation.py table
    python scripts/molecule_representation.py properties src/svdd/domains/molecules/assets/moses-selfies \\
        src/svdd/domains/molecules/assets/moses-smiles --name moses-selfies-vs-smiles --num-samples 2000 --steps 32
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


# -- MOSES-style property distributions ------------------------------------------------------------
PROPERTY_NAMES = ("mw", "logp", "qed", "sa", "rings", "aromatic_rings")
PROPERTY_LABELS = {"mw": "molecular weight (g/mol)", "logp": "Crippen logP", "qed": "QED (0-1, higher = more drug-like)",
                   "sa": "SA score (1 = easy, 10 = hard)", "rings": "rings per molecule (SSSR)",
                   "aromatic_rings": "aromatic rings per molecule"}
PROPERTY_TITLES = {"mw": "molecular weight", "logp": "logP", "qed": "QED", "sa": "synthetic accessibility",
                   "rings": "rings", "aromatic_rings": "aromatic rings"}
RING_PROPERTIES = ("rings", "aromatic_rings")
RING_BINS = 7   # shares of 0, 1, ..., 5 and 6+
REFERENCE_SIZE, REFERENCE_SEED = 10_000, 0


def molecule_properties(smiles) -> tuple[dict[str, np.ndarray], dict]:
    """Per *valid* molecule (RDKit sanitisation, no valency correction; empty strings invalid):
    average molecular weight, Crippen logP, QED, raw SA score (1-10), SSSR ring count and the
    rings whose atoms are all aromatic. Returns ``({property: array}, counts)``; an invalid
    SMILES is skipped and counted (``n_invalid``), as is a valid one a property fails on."""
    from rdkit.Chem import Descriptors

    from svdd.domains.molecules.chem import logp, mol_from_smiles, qed, sa_score

    values: dict[str, list] = {k: [] for k in PROPERTY_NAMES}
    n = invalid = failed = 0
    for s in smiles:
        n += 1
        mol = mol_from_smiles(s)
        if mol is None:
            invalid += 1
            continue
        try:
            row = {"mw": float(Descriptors.MolWt(mol)), "logp": logp(mol), "qed": qed(mol), "sa": sa_score(mol),
                   "rings": mol.GetRingInfo().NumRings(), "aromatic_rings": aromatic_ring_count(mol)}
        except Exception:   # RDKit descriptors can fail on exotic but sanitisable molecules
            failed += 1
            continue
        for k, v in row.items():
            values[k].append(v)
    valid = n - invalid
    counts = {"n": n, "n_valid": valid, "n_invalid": invalid, "n_property_failed": failed,
              "validity": valid / n if n else float("nan")}
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}, counts


def wasserstein_1d(a, b) -> float:
    """1-D Wasserstein (earth mover's) distance between two samples; NaN when one is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return float("nan")
    try:
        from scipy.stats import wasserstein_distance
    except ImportError:
        return wasserstein_1d_numpy(a, b)
    return float(wasserstein_distance(a, b))


def wasserstein_1d_numpy(a, b) -> float:
    """The same distance without scipy: the integral of |F_a - F_b| over the merged support."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def ring_shares(counts) -> list[float]:
    """Shares of molecules with 0, 1, ..., 5 and 6 or more rings."""
    counts = np.asarray(counts, dtype=float)
    if counts.size == 0:
        return [float("nan")] * RING_BINS
    hist = np.bincount(np.minimum(counts.astype(int), RING_BINS - 1), minlength=RING_BINS)
    return [round(float(v), 4) for v in hist / counts.size]


def property_summary(values, reference) -> dict:
    """mean/std/n of one property's values, its Wasserstein distance to ``reference`` (None: none)."""
    values = np.asarray(values, dtype=float)
    out = {"n": int(values.size),
           "mean": float(values.mean()) if values.size else float("nan"),
           "std": float(values.std()) if values.size else float("nan")}
    if reference is not None:
        out["wasserstein_to_moses_test"] = wasserstein_1d(values, reference)
    return out


def moses_test_subset(size: int = REFERENCE_SIZE, seed: int = REFERENCE_SEED) -> tuple[list[str], str]:
    """A fixed random subset of MOSES test (``load_moses``; the committed 2,000-molecule sample
    when the molsets wheel cannot be had) and a description of it."""
    from svdd.cache import DataError
    from svdd.domains.base import DomainError
    from svdd.domains.molecules import data as mdata

    try:
        test = mdata.load_moses("test")
        what = f"MOSES test ({len(test):,})"
    except (DomainError, DataError) as err:
        test = mdata.load_sample()["test"]
        what = f"committed MOSES test sample ({len(test):,}; full set unavailable: {err})"
        print(f"svdd: {what}", file=sys.stderr)
    idx = np.random.default_rng(seed).permutation(len(test))[:size]
    return [test[i] for i in idx], f"{what}, {min(size, len(test)):,} drawn at random with seed {seed}"


def read_smiles_csv(path: Path) -> list[str]:
    import csv

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "smiles" not in (reader.fieldnames or []):
            raise SystemExit(f"{path}: no 'smiles' column (columns: {reader.fieldnames})")
        return [row["smiles"] or "" for row in reader]


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
    # ancestral sampling holds a (rows, L, V) table per step: draw at most 2^27 entries of it at a time
    # (one call for the SELFIES and BPE models' 10,000 samples; ~1,000 rows for a 4,120-id vocabulary)
    per_call = max(1, (1 << 27) // (proc.seq_len * proc.vocab_size))
    gen = torch.Generator().manual_seed(seed)
    parts = [svdd.sample(proc, zero, method="ancestral", num_samples=min(per_call, num_samples - start),
                         num_steps=steps, generator=gen, max_batch_size=batch).x0
             for start in range(0, num_samples, per_call)]
    return proc, torch.cat(parts), time.time() - t0


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


RUG_BELOW = 200   # sources with fewer valid molecules also get one tick per molecule


def _density(values, grid) -> np.ndarray:
    """Gaussian kernel density of ``values`` on ``grid`` (Scott's bandwidth, as scipy's gaussian_kde)."""
    values = np.asarray(values, dtype=float)
    try:
        from scipy.stats import gaussian_kde
    except ImportError:
        bw = values.std(ddof=1) * values.size ** (-0.2)
        z = (grid[:, None] - values[None, :]) / bw
        return np.exp(-0.5 * z ** 2).sum(1) / (values.size * bw * np.sqrt(2 * np.pi))
    return gaussian_kde(values)(grid)


def _fmt_w(v: float) -> str:
    return "—" if v != v else (f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}")


def plot_properties(path: Path, reference: dict, sources: list[tuple[str, dict, dict]], ref_label: str) -> Path:
    """2 x 3 panels: MOSES test filled grey, each source a line; ``sources``: (label, values, counts),
    ``counts`` with ``n``, ``n_valid``, ``validity`` and optionally ``num_steps`` (sampler steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from svdd.runfolder import atomic_path

    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.6))
    for ax, prop in zip(axes.flat, PROPERTY_NAMES):
        ref = reference[prop]
        ws = [f"{label} {_fmt_w(wasserstein_1d(vals[prop], ref))}" for label, vals, _ in sources]
        if prop in RING_PROPERTIES:
            x = np.arange(RING_BINS)
            ax.bar(x, ring_shares(ref), width=0.8, color="0.75", edgecolor="0.55", label=ref_label)
            for i, (label, vals, _) in enumerate(sources):
                if vals[prop].size:
                    ax.plot(x, ring_shares(vals[prop]), "o-", color=colours[i % 10], lw=1.8, ms=4)
            ax.set_xticks(x, [str(v) for v in range(RING_BINS - 1)] + [f"{RING_BINS - 1}+"])
            ax.set_ylabel("share of molecules")
        else:
            pooled = np.concatenate([ref] + [v[prop] for _, v, _ in sources if v[prop].size])
            lo, hi = np.percentile(pooled, [0.5, 99.5])
            if prop == "qed":
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            bins = np.linspace(lo, hi, 41)
            ax.hist(np.clip(ref, lo, hi), bins=bins, density=True, histtype="stepfilled", color="0.78",
                    edgecolor="0.6")
            grid = np.linspace(lo, hi, 300)
            for i, (label, vals, _) in enumerate(sources):
                v = vals[prop]
                if v.size >= 2 and np.ptp(v) > 0:
                    ax.plot(grid, _density(v, grid), color=colours[i % 10], lw=1.8)
                if 0 < v.size < RUG_BELOW:   # few molecules: show where each one lies
                    ax.plot(np.clip(v, lo, hi), np.zeros_like(v), "|", color=colours[i % 10], ms=12, mew=1.2,
                            transform=ax.get_xaxis_transform(), clip_on=False)
            ax.set_ylabel("density")
        ax.set_xlabel(PROPERTY_LABELS[prop])
        ax.set_title(PROPERTY_TITLES[prop], fontsize=10.5, pad=16)
        ax.text(0.5, 1.015, "W\u2081 to MOSES test: " + ", ".join(ws), transform=ax.transAxes, ha="center",
                va="bottom", fontsize=8.5, color="0.25")
        ax.grid(alpha=0.25, lw=0.5)
        ax.set_axisbelow(True)
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    handles = [Patch(facecolor="0.78", edgecolor="0.6", label=ref_label)]
    for i, (label, _, counts) in enumerate(sources):
        handles.append(Line2D([], [], color=colours[i % 10], lw=1.8,
                              label=f"{label}" + (f" ({counts['num_steps']} steps)" if counts.get("num_steps") else "")
                                    + f": {counts['n_valid']:,} valid of {counts['n']:,} "
                                    f"({100 * counts['validity']:.1f}%)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), frameon=False, fontsize=9.5)
    fig.suptitle("Property distributions of valid molecules: MOSES test as a normalised histogram, each source as "
                 "a Gaussian kernel density\n(x axes span the 0.5-99.5 percentile range of all data, MOSES values "
                 "outside it in the end bins; ticks on the axis: each molecule of a source with fewer than "
                 f"{RUG_BELOW})", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.94))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def cmd_properties(args) -> None:
    from svdd.domains.molecules.chem import canonical_smiles
    from svdd.runfolder import atomic_write_json

    if not args.model_dirs and not args.smiles:
        raise SystemExit("properties: give at least one MODEL_DIR or --smiles FILE")
    labels = list(args.labels or [])
    inputs = [("model", Path(d)) for d in args.model_dirs] + [("smiles", Path(f)) for f in args.smiles]
    if labels and len(labels) != len(inputs):
        raise SystemExit(f"properties: {len(labels)} --labels for {len(inputs)} sources")
    ref_smiles, ref_what = moses_test_subset(args.reference_size, args.reference_seed)
    t0 = time.time()
    ref_vals, ref_counts = molecule_properties(ref_smiles)
    print(f"reference: {ref_what}: {ref_counts} ({time.time() - t0:.0f} s)", flush=True)
    sources, meta = [], {}
    for i, (kind, path) in enumerate(inputs):
        label = labels[i] if labels else (path.name if kind == "model" else path.stem)
        rec: dict = {"kind": kind, "path": str(path)}
        if kind == "model":
            cfg = json.loads((path / "config.json").read_text())
            proc, x0, wall = sample_model(path, args.num_samples, args.steps, args.seed)
            smiles = proc.tokenizer.decode(x0)
            rec.update({"num_samples": args.num_samples, "num_steps": args.steps, "seed": args.seed,
                        "sampler": "ancestral", "sampling_wall_s": round(wall, 1),
                        "trained_steps": cfg.get("trained_steps"),
                        "representation": json.loads((path / "tokenizer.json").read_text()).get("type", "selfies")})
        else:
            smiles = read_smiles_csv(path)
        t1 = time.time()
        vals, counts = molecule_properties(smiles)
        canon = {c for c in (canonical_smiles(s) for s in smiles) if c}
        rec.update(counts, n_unique_valid=len(canon), properties_wall_s=round(time.time() - t1, 1))
        meta[label] = rec
        sources.append((label, vals, {**counts, "num_steps": rec.get("num_steps")}))
        print(label, json.dumps(rec), flush=True)
    props: dict = {}
    for prop in PROPERTY_NAMES:
        entry = {"moses_test": property_summary(ref_vals[prop], None)}
        for label, vals, _ in sources:
            entry[label] = property_summary(vals[prop], ref_vals[prop])
        if prop in RING_PROPERTIES:
            entry["share_bins"] = [str(v) for v in range(RING_BINS - 1)] + [f"{RING_BINS - 1}+"]
            entry["moses_test"]["shares"] = ring_shares(ref_vals[prop])
            for label, vals, _ in sources:
                entry[label]["shares"] = ring_shares(vals[prop])
        props[prop] = entry
        print(prop, json.dumps(entry), flush=True)
    figure = Path(args.figure)
    out = {"name": args.name, "command": " ".join(sys.argv),
           "moses_test": {"what": ref_what, "size": args.reference_size, "seed": args.reference_seed, **ref_counts},
           "sources": meta,
           "property_definitions": {
               "mw": "average molecular weight, RDKit Descriptors.MolWt (g/mol)",
               "logp": "Crippen logP, RDKit Crippen.MolLogP",
               "qed": "QED, RDKit QED.qed",
               "sa": "raw SA score in [1, 10], RDKit Contrib sascorer (svdd.domains.molecules.chem.sa_score)",
               "rings": "SSSR ring count, RDKit RingInfo.NumRings",
               "aromatic_rings": "rings whose atoms are all aromatic (RDKit perception)"},
           "validity": "RDKit MolFromSmiles with sanitisation, no valency correction; empty strings invalid; "
                       "properties are over the valid molecules (duplicates count)",
           "wasserstein": "1-D Wasserstein distance between the valid samples and the MOSES test subset, in the "
                          "property's units (scipy.stats.wasserstein_distance)",
           "properties": props,
           "figure": str(figure.resolve().relative_to(ROOT)) if figure.resolve().is_relative_to(ROOT) else str(figure)}
    path = Path(args.out_dir or RESULTS) / f"properties-{args.name}.json"
    atomic_write_json(path, out, indent=1)
    print(f"wrote {path}")
    ref_label = f"MOSES test ({ref_counts['n_valid']:,} random, seed {args.reference_seed})"
    print(f"wrote {plot_properties(figure, ref_vals, sources, ref_label)}")


def learning_curve(path: Path) -> dict:
    """Validation NELBO per molecule against steps and molecules seen, from a training run's
    ``state.json`` (resumable runs) or ``train.json`` (fixed-budget runs)."""
    meta = json.loads(Path(path).read_text())
    settings = meta.get("settings") or meta.get("args") or {}
    if "seq_len" in settings:
        seq_len = settings["seq_len"]
    else:  # a fixed-budget train.json: the length is in the exported model's config, beside it or in moses-selfies/
        folder = Path(path).parent
        config = folder / "config.json" if (folder / "config.json").exists() else folder / "moses-selfies" / "config.json"
        seq_len = json.loads(config.read_text())["config"]["seq_len"]
    batch = settings["batch_size"]
    points = [h for h in meta["history"] if h.get("valid_nelbo_per_token") is not None]
    return {"source": str(path), "seq_len": seq_len, "batch_size": batch,
            "dim": settings.get("dim"), "depth": settings.get("depth"),
            "step": [h["step"] for h in points], "molecules_seen": [h["step"] * batch for h in points],
            "valid_nelbo_per_molecule": [round(h["valid_nelbo_per_token"] * seq_len, 3) for h in points]}


def cmd_curves(args) -> None:
    """Learning curves of several runs (``LABEL=PATH`` to a state.json or train.json) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from svdd.runfolder import atomic_write_json

    curves = {}
    for item in args.runs:
        label, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"curves: write each run as LABEL=PATH, got {item!r}")
        curves[label] = learning_curve(Path(path))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, c in curves.items():
        ax.plot(np.array(c["molecules_seen"]) / 1e6, c["valid_nelbo_per_molecule"], marker="o", ms=3, label=label)
    ax.set_xlabel("training molecules seen (millions)")
    ax.set_ylabel("validation NELBO (nats / molecule)")
    ax.set_title("Masked-diffusion molecule models on MOSES (CPU runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figure = Path(args.figure)
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=130)
    out = {"curves": curves, "command": " ".join(sys.argv), "figure": str(figure)}
    path = Path(args.out_dir or RESULTS) / f"curves-{args.name}.json"
    atomic_write_json(path, out, indent=1)
    print(f"wrote {path} and {figure}")


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
    pr = sub.add_parser("properties", help="MOSES-style property distributions against MOSES test")
    pr.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="model folders to sample")
    pr.add_argument("--smiles", action="append", default=[], metavar="FILE",
                    help="a CSV with a 'smiles' column (repeatable), e.g. an svdd sample samples.csv")
    pr.add_argument("--labels", nargs="+", default=None,
                    help="one legend label per source (model folders first, then --smiles files); "
                         "default: the folder name / file stem")
    pr.add_argument("--name", required=True)
    pr.add_argument("--num-samples", type=int, default=2000)
    pr.add_argument("--steps", type=int, default=32)
    pr.add_argument("--seed", type=int, default=100)
    pr.add_argument("--reference-size", type=int, default=REFERENCE_SIZE)
    pr.add_argument("--reference-seed", type=int, default=REFERENCE_SEED)
    pr.add_argument("--out-dir", default=None)
    pr.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "molecule_properties.png"))
    cu = sub.add_parser("curves", help="validation NELBO learning curves of training runs")
    cu.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="a run's state.json or train.json")
    cu.add_argument("--name", required=True)
    cu.add_argument("--out-dir", default=None)
    cu.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "molecule_learning_curves.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"diagnose": cmd_diagnose, "evaluate": cmd_evaluate, "train": cmd_train, "table": cmd_table,
     "properties": cmd_properties, "curves": cmd_curves}[args.cmd](args)


if __name__ == "__main__":
    main()
