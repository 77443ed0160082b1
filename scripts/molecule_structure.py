"""Structure of sampled molecules next to MOSES: mean heavy atoms, fraction with a ring, fraction
with an aromatic atom, and the most common samples (what FCD and uniqueness summarise).

    python scripts/molecule_structure.py runs/cpu-train2/molecules/samples_s32.npy \
        --out benchmarks/results/molecule-model-quality/structure.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def stats(smiles: list[str]) -> dict:
    from rdkit import Chem

    mols = [m for m in (Chem.MolFromSmiles(s) for s in smiles) if m is not None]
    return {"n": len(mols),
            "heavy_atoms": round(float(np.mean([m.GetNumHeavyAtoms() for m in mols])), 1),
            "has_ring": round(float(np.mean([m.GetRingInfo().NumRings() > 0 for m in mols])), 3),
            "aromatic": round(float(np.mean([any(a.GetIsAromatic() for a in m.GetAtoms()) for m in mols])), 3)}


def main() -> None:
    import pandas as pd
    from rdkit import RDLogger

    from svdd.domains.molecules import ASSETS, decode, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", help="(N, 48) uint8 token file written by scripts/train_molecules.py")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    RDLogger.DisableLog("rdApp.*")
    smiles = decode(torch.from_numpy(np.load(args.tokens).astype(np.int64)), load_tokenizer())
    ref = pd.read_csv(ASSETS / "moses_sample.csv.gz")["SMILES"].tolist()
    out = {"samples": stats(smiles), "moses_sample": stats(ref),
           "most_common": collections.Counter(smiles).most_common(5)}
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
