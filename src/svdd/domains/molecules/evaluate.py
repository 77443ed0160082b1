"""Model quality of the molecule model from saved samples (MOSES-style metrics).

    python -m svdd.domains.molecules.evaluate RUN_DIR [--steps 32] [--out quality.json]
    python -m svdd.domains.molecules.evaluate TOKENS.npy      # any (N, 48) uint8 token file

reads ``RUN_DIR/samples_s{K}.npy`` (token ids written by ``scripts/train_molecules.py``) and
``RUN_DIR/train.json`` (test NELBO), decodes with ``RUN_DIR/moses-selfies/tokenizer.json`` (or
the shipped tokenizer) and prints validity, uniqueness, novelty, internal diversity, FCD to
the MOSES test set and the test NELBO as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import decode, load_tokenizer
from .metrics import molecule_metrics


def evaluate_run(run_dir: Path, steps: int) -> dict:
    run_dir = Path(run_dir)
    tok_dir = run_dir / "moses-selfies"
    tok = load_tokenizer(str(tok_dir) if (tok_dir / "tokenizer.json").exists() else None)
    x0 = torch.from_numpy(np.load(run_dir / f"samples_s{steps}.npy").astype(np.int64))
    start = time.time()
    smiles = decode(x0, tok)
    out = {"num_steps": steps, **molecule_metrics(smiles, min_fcd=1000)}
    meta_path = run_dir / "train.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        for key in ("test_nelbo_nats_per_molecule", "valid_nelbo_nats_per_molecule", "num_parameters", "steps_done",
                    "train_time_s", "device_name", "num_test"):
            if key in meta:
                out[key] = meta[key]
        out["sampling_wall_time_s"] = meta.get(f"sampling_s{steps}_wall_time_s")
    out["metrics_wall_time_s"] = time.time() - start
    return out


def evaluate_tokens(path: Path) -> dict:
    x0 = torch.from_numpy(np.load(path).astype(np.int64))
    start = time.time()
    out = {"tokens": str(path), **molecule_metrics(decode(x0), min_fcd=1000)}
    out["metrics_wall_time_s"] = time.time() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="training output folder, or a .npy file of token ids")
    ap.add_argument("--steps", type=int, nargs="+", default=[32])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.run_dir.endswith(".npy"):
        results = [evaluate_tokens(Path(args.run_dir))]
    else:
        results = [evaluate_run(Path(args.run_dir), k) for k in args.steps]
    text = json.dumps(results if len(results) > 1 else results[0], indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
