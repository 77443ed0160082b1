"""Prepare the DNA domain's data (run once, needs PyPI for the first download).

1. fetch the ``dnadiffusion==0.0.0.dev0`` wheel with ``pip download --no-deps`` into the cache
   (``$SVDD_CACHE_DIR/dna``), check its SHA-256 and the table's;
2. write the GPU job's input ``.gpu-data/dna/dhs.npz`` (tokens uint8 (N, 200), cell type,
   chromosome, split) — only numpy and torch are needed to read it;
3. write the packaged assets: the chr1 test subset (``assets/dhs_chr1_test.tsv.gz``) and the
   k-mer reference spectra of real training-split DHS (``assets/kmer_reference.npz``).

    python scripts/prepare_dna.py [--out .gpu-data/dna] [--no-assets]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.domains.dna import data as D  # noqa: E402
from svdd.domains.dna.kmers import kmer_counts  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu-data" / "dna"))
    ap.add_argument("--no-assets", action="store_true", help="do not rewrite the packaged assets")
    args = ap.parse_args(argv)

    table = D.load_table()
    tokens = D.encode(table["sequence"]).numpy().astype(np.uint8)
    chroms = sorted(set(table["chr"].tolist()), key=lambda c: (len(c), c))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "dhs.npz",
        tokens=tokens,
        cell_type=table["cell_type"].astype(np.int8),
        chr=np.array([chroms.index(c) for c in table["chr"]], dtype=np.int8),
        chr_names=np.array(chroms),
        split=np.array([D.SPLITS.index(s) for s in table["split"]], dtype=np.int8),
        split_names=np.array(D.SPLITS),
        cell_type_names=np.array(D.CELL_TYPES),
    )
    (out / "meta.json").write_text(json.dumps({"source": D.WHEEL, "table_sha256": D.TABLE_SHA256,
                                               "num_sequences": int(tokens.shape[0])}, indent=2))
    print(f"wrote {out / 'dhs.npz'} ({(out / 'dhs.npz').stat().st_size / 1e6:.1f} MB, {tokens.shape[0]} sequences)")

    if not args.no_assets:
        D.write_subset(table, D.SUBSET_FILE, split="test")
        train = table["split"] == "training"
        hepg2 = train & (table["cell_type"] == D.HEPG2)
        ref = {}
        for k in (3, 6):
            ref[f"hepg2_k{k}"] = kmer_counts(D.encode(table["sequence"][hepg2]), k)
            ref[f"all_k{k}"] = kmer_counts(D.encode(table["sequence"][train]), k)
        np.savez_compressed(D.ASSETS / "kmer_reference.npz", **ref,
                            note=np.array("k-mer counts of training-split (not chr1/chr2) DHS sequences"))
        print(f"wrote {D.SUBSET_FILE} ({D.SUBSET_FILE.stat().st_size / 1e3:.0f} kB) and kmer_reference.npz")


if __name__ == "__main__":
    main()
