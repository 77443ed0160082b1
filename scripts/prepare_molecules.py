"""Prepare the molecule model's training inputs in ``.gpu-data/molecules/``.

MOSES train SMILES (from the molsets 0.3.1 wheel, cached with a checksum) are subsampled with a
fixed seed (the whole 1.58 M set would be 76 MB of uint8 at length 48; the GPU job's inputs must
stay under 25 MB), converted to SELFIES (``--representation selfies``, the default) or to RDKit's
canonical aromatic SMILES (``--representation smiles``, regex atom tokens, length 56) or to
SELFIES with byte-pair-merged fragment tokens (``--representation selfies-bpe``: merges learned
on the first ``--bpe-learn`` train molecules up to ``--bpe-vocab`` ids, length 24) or to an
acyclic SELFIES skeleton with one token per ring system (``--representation ring-systems``: the
``--num-systems`` most frequent systems of the train subset; molecules with any other system are
dropped and counted; length 32) and tokenised to a fixed length. ``--random-smiles`` writes the *train* molecules as randomised
SMILES instead (a random atom order per molecule, seeded by its index; valid/test stay
canonical). Writes::

    train.npy  valid.npy  test.npy   token ids (N, max_len), uint8 (uint16 for a vocabulary over 256)
    tokenizer.json                   vocabulary (built from the train subset) + max_len
    meta.json                        counts, coverage of max_len, seeds, source checksum

and refreshes the committed test subset ``src/svdd/domains/molecules/assets/moses_sample.csv.gz``.

    python scripts/prepare_molecules.py                    # 480k train, 10k valid, 10k test
    python scripts/prepare_molecules.py --num-train 2000 --out /tmp/mol-smoke   # smoke test
    python scripts/prepare_molecules.py --representation smiles --no-sample      # .gpu-data/molecules-smiles
    python scripts/prepare_molecules.py --representation smiles --random-smiles --no-sample
    python scripts/prepare_molecules.py --representation selfies-bpe --no-sample  # .gpu-data/molecules-selfies-bpe
    python scripts/prepare_molecules.py --representation ring-systems --no-sample # .gpu-data/molecules-ring-systems
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.domains.molecules import data as mdata  # noqa: E402
from svdd.domains.molecules.tokenizer import (RingSystemTokenizer, SelfiesBpeTokenizer,  # noqa: E402
                                              SelfiesTokenizer, SmilesTokenizer, smiles_variant, split_smiles)


def to_selfies(smiles_list):
    import selfies as sf

    out = []
    for s in smiles_list:
        try:
            out.append(sf.encoder(s) or None)
        except Exception:
            out.append(None)
    return out


def to_smiles(smiles_list, random: bool = False, offset: int = 0):
    """Canonical aromatic SMILES (or one randomised SMILES each, seeded by position) per molecule."""
    out = []
    for i, s in enumerate(smiles_list):
        try:
            out.append(smiles_variant(s, offset + i if random else None))
        except Exception:
            out.append(None)
    return out


def to_ring_splits(smiles_list, workers: int = 2):
    """``ringsys.split_molecule`` of every SMILES, over ``workers`` processes (order kept)."""
    if workers <= 1 or len(smiles_list) < 10_000:
        return RingSystemTokenizer.split_all(smiles_list)
    from multiprocessing import get_context

    chunks = [smiles_list[i: i + 5000] for i in range(0, len(smiles_list), 5000)]
    with get_context("fork").Pool(workers) as pool:
        return [sp for part in pool.map(RingSystemTokenizer.split_all, chunks) for sp in part]


def ring_selfies(tok, splits):
    """The SELFIES of each split molecule, ``None`` where it failed or has a system outside ``tok``'s."""
    out = []
    for sp in splits:
        try:
            out.append(tok.split_to_selfies(sp) if sp else None)
        except Exception:   # DomainError: a ring system outside the vocabulary
            out.append(None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="default .gpu-data/molecules[-smiles[-random]]")
    ap.add_argument("--representation", choices=("selfies", "selfies-bpe", "smiles", "ring-systems"), default="selfies")
    ap.add_argument("--num-systems", type=int, default=4096, help="ring-systems: ring systems in the vocabulary")
    ap.add_argument("--workers", type=int, default=2, help="ring-systems: processes that split molecules")
    ap.add_argument("--bpe-vocab", type=int, default=256, help="selfies-bpe: ids incl. [PAD] and [MASK]")
    ap.add_argument("--bpe-learn", type=int, default=100_000, help="selfies-bpe: train molecules the merges are learned on")
    ap.add_argument("--random-smiles", action="store_true", help="train molecules as randomised SMILES")
    ap.add_argument("--num-train", type=int, default=480_000)
    ap.add_argument("--num-valid", type=int, default=10_000)
    ap.add_argument("--num-test", type=int, default=10_000)
    ap.add_argument("--max-len", type=int, default=None, help="48 for SELFIES, 24 for SELFIES-BPE, 56 for SMILES")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sample", action="store_true", help="do not rewrite the committed test subset")
    args = ap.parse_args()
    smiles_rep, bpe = args.representation == "smiles", args.representation == "selfies-bpe"
    rings = args.representation == "ring-systems"
    if args.random_smiles and not smiles_rep:
        raise SystemExit("svdd: error: --random-smiles needs --representation smiles")
    if bpe and not 2 < args.bpe_vocab <= 65_536:
        raise SystemExit("svdd: error: --bpe-vocab must be in 3..65536")
    if args.max_len is None:
        args.max_len = {"smiles": 56, "selfies-bpe": 24, "ring-systems": 32}.get(args.representation, 48)
    if args.out is None:
        args.out = str(ROOT / ".gpu-data" / ("molecules" + ("" if args.representation == "selfies" else
                                                            "-" + args.representation)
                                             + ("-random" if args.random_smiles else "")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_all = mdata.load_moses("train")
    test_all = mdata.load_moses("test")
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(train_all))
    train_smiles = [train_all[i] for i in perm[: args.num_train]]
    valid_smiles = [train_all[i] for i in perm[args.num_train: args.num_train + args.num_valid]]
    test_smiles = [test_all[i] for i in rng.permutation(len(test_all))[: args.num_test]]
    print(f"loaded MOSES train={len(train_all)} test={len(test_all)} in {time.time() - t0:.1f}s", flush=True)

    if smiles_rep:
        train_sf = to_smiles(train_smiles, random=args.random_smiles)
        lengths = np.array([len(split_smiles(s)) if s else 10**6 for s in train_sf])
        convert, Tok = to_smiles, SmilesTokenizer
    elif rings:
        t1 = time.time()
        splits = to_ring_splits(train_smiles, args.workers)
        tok = RingSystemTokenizer.build(splits, args.max_len, args.num_systems)
        train_sf = ring_selfies(tok, splits)
        rare = sum(s is None for s in train_sf) / len(train_sf)
        print(f"split {len(splits)} molecules and built {len(tok.systems)} ring systems in {time.time() - t1:.0f}s; "
              f"{rare:.2%} of train have a ring system outside them and are dropped", flush=True)
        import selfies as sf

        lengths = np.array([len(list(sf.split_selfies(s))) if s else 10**6 for s in train_sf])

        def convert(smiles_list):
            return ring_selfies(tok, to_ring_splits(smiles_list, args.workers))
    elif bpe:
        train_sf = to_selfies(train_smiles)
        t1 = time.time()
        tok = SelfiesBpeTokenizer.build([s for s in train_sf if s], args.max_len, args.bpe_vocab, args.bpe_learn)
        print(f"learned {len(tok.merges)} merges on {args.bpe_learn} molecules in {time.time() - t1:.0f}s", flush=True)
        lengths = np.array([len(tok.split(s)) if s else 10**6 for s in train_sf])
        convert = to_selfies
    else:
        train_sf = to_selfies(train_smiles)
        import selfies as sf

        lengths = np.array([len(list(sf.split_selfies(s))) if s else 10**6 for s in train_sf])
        convert, Tok = to_selfies, SelfiesTokenizer
    known = lengths < 10**6
    coverage = float((lengths[known] <= args.max_len).mean())
    print(f"{args.representation} lengths: median {np.median(lengths[known]):.0f}, "
          f"99.5% {np.percentile(lengths[known], 99.5):.0f}, max {lengths[known].max()}; "
          f"max_len {args.max_len} covers {coverage:.4%}", flush=True)
    if coverage < 0.995:
        raise SystemExit(f"max_len {args.max_len} covers only {coverage:.3%} of train; raise --max-len")
    keep = [s for s, n in zip(train_sf, lengths) if n <= args.max_len]
    if not (bpe or rings):
        tok = Tok.build(keep, args.max_len)
    tok.save(out / "tokenizer.json")
    print(f"vocabulary: {tok.vocab_size} tokens (incl. [PAD], [MASK])", flush=True)

    def encode_all(selfies_list):
        rows, dropped = [], 0
        for s in selfies_list:
            try:
                rows.append(tok.encode_string(s) if smiles_rep else tok.encode_selfies(s))
            except Exception:
                dropped += 1
        return np.asarray(rows, dtype=dtype).reshape(-1, args.max_len), dropped

    dtype = np.uint8 if tok.vocab_size <= 256 else np.uint16
    counts = {}
    for name, sel in (("train", keep), ("valid", convert(valid_smiles)), ("test", convert(test_smiles))):
        arr, dropped = encode_all([s for s in sel if s])
        np.save(out / f"{name}.npy", arr)
        counts[name] = {"kept": int(arr.shape[0]), "dropped": int(dropped + sum(1 for s in sel if not s))}
        print(f"{name}: {arr.shape} ({arr.nbytes / 1e6:.1f} MB), dropped {counts[name]['dropped']}", flush=True)
    meta = {"source": f"molsets=={mdata.MOLSETS_VERSION} sha256={mdata.MOLSETS_SHA256}",
            "representation": args.representation, "random_smiles": args.random_smiles,
            **({"bpe_learn": args.bpe_learn, "bpe_vocab": args.bpe_vocab} if bpe else {}),
            **({"num_systems": len(tok.systems), "train_share_outside_systems": rare} if rings else {}),
            "num_train_total": len(train_all), "seed": args.seed, "max_len": args.max_len,
            "coverage_of_max_len": coverage, "counts": counts, "vocab_size": tok.vocab_size,
            "mask_id": tok.mask_id, "pad_id": tok.pad_id}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    if not args.no_sample:
        mdata.write_sample(mdata.SAMPLE_FILE, train_smiles[:2000], test_smiles[:2000])
        print(f"wrote {mdata.SAMPLE_FILE} ({mdata.SAMPLE_FILE.stat().st_size / 1e3:.0f} kB)")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
