"""Prepare the RNA GPU job's inputs in ``.gpu-data/rna/`` (ignored; never committed).

Writes::

    dhs.pt         the 47,872 ENCODE DHS sequences (200 bp), 2-bit packed, + their split, read from the dnadiffusion==0.0.0.dev0 wheel (cached with a SHA-256 check)
    oracle/        mrl.pt, mrl-eval.pt: the two Optimus 5-Prime predictors as torch state dicts
                   (converted from the third-party HDF5 files, which the GPU machine cannot read
                   without h5py; they travel there for the value-network fit only)
    meta.json      counts, sizes and checksums

    python scripts/prepare_rna.py                               # oracle from ../shared/data/utr
    python scripts/prepare_rna.py --oracle-dir DIR --out /tmp/rna-smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.domains.rna import data as rdata  # noqa: E402
import torch  # noqa: E402

from svdd.domains.rna.oracle import ENV_VAR, ORACLE_FILES, load_optimus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu-data" / "rna"))
    ap.add_argument("--oracle-dir", default=os.environ.get(ENV_VAR, str(ROOT.parent / "shared" / "data" / "utr")))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    wheel = rdata.dhs_wheel()
    tokens, split = rdata.dhs_sequences(wheel)
    rdata.save_packed(out / "dhs.pt", tokens, split)
    meta = {"dhs_sequences": int(tokens.shape[0]), "dhs_length": int(tokens.shape[1]),
            "split_counts": {s: int((split == i).sum()) for i, s in enumerate(rdata.SPLITS)},
            "wheel_sha256": rdata.DHS_WHEEL_SHA256, "dhs_pt_bytes": (out / "dhs.pt").stat().st_size}

    oracle_out = out / "oracle"
    oracle_out.mkdir(exist_ok=True)
    for reward, name in ORACLE_FILES.items():
        src = Path(args.oracle_dir) / name
        if not src.is_file():
            sys.exit(f"{src} not found: pass --oracle-dir (the pjsample/human_5utr_modeling saved_models folder)")
        torch.save(load_optimus(src).state_dict(), oracle_out / f"{reward}.pt")
        meta[f"sha256_{name}"] = hashlib.sha256(src.read_bytes()).hexdigest()
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps(meta, indent=2))
    print(f"wrote {out} ({total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
