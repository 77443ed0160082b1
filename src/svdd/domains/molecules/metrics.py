"""MOSES-style set metrics for generated molecules.

- validity: fraction of samples whose decoded SMILES is non-empty and RDKit-sanitisable;
- uniqueness: distinct canonical SMILES / valid molecules;
- novelty: fraction of the distinct valid molecules absent from the MOSES training set (its
  1.58 M SMILES are already RDKit-canonical; the committed 2,000-molecule sample is used, and
  named in ``novelty_reference``, when the full set cannot be fetched);
- internal diversity (svdd's): 1 − mean Tanimoto similarity over distinct pairs of valid
  molecules (Morgan radius 2, 2048 bits); MOSES' IntDiv also averages the diagonal and uses
  1024 bits — it is reported beside it as ``moses_intdiv``;
- ``moses_intdiv``, ``moses_intdiv2``, ``moses_snn``, ``moses_frag``, ``moses_scaf``,
  ``moses_filters``: the MOSES metrics as molsets 0.3.1 computes them, against the MOSES test
  set (``moses_metrics.py``; the reference set is named in ``moses_reference``);
- FCD (Preuer et al. 2018) between valid molecules and the MOSES test set, with ChemNet from
  ``fcd`` 1.2.2; the reference mean/covariance are computed from a fixed random subset of
  ``FCD_REFERENCE_SIZE`` test SMILES and cached (MOSES' shipped statistics do not match today's
  ChemNet). FCD is biased upwards for small sets, so it is only reported from ``min_fcd`` valid
  molecules on;
- NELBO under the pretrained model (nats per molecule, MDLM bound, lower = more natural).
"""

from __future__ import annotations

import hashlib
import sys
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch

from ...cache import DataError
from ..base import DomainError
from .chem import canonical_smiles, mol_from_smiles
from .data import cache_dir, load_moses, load_sample

FCD_REFERENCE_SIZE = 20_000
FCD_REFERENCE_SEED = 0


def validity(smiles: Sequence[str]) -> list[bool]:
    return [mol_from_smiles(s) is not None for s in smiles]


@lru_cache(maxsize=1)
def _train_set() -> tuple[frozenset, str]:
    try:
        return frozenset(load_moses("train")), "moses-train (1,584,663)"
    except (DomainError, DataError):   # not fetched (svdd.domains.molecules.fetch): the shipped sample
        sample = load_sample()["train"]
        return frozenset(sample), f"moses-train sample ({len(sample)}; full set unavailable)"


def novelty(canonical: Sequence[str], reference: Optional[set] = None) -> float:
    unique = set(c for c in canonical if c)
    if not unique:
        return float("nan")
    ref = _train_set()[0] if reference is None else reference
    return sum(1 for c in unique if c not in ref) / len(unique)


def fingerprints(smiles: Sequence[str], radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, s in enumerate(smiles):
        mol = mol_from_smiles(s)
        if mol is not None:
            out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def internal_diversity(smiles: Sequence[str], chunk: int = 2048) -> float:
    """1 − mean Tanimoto similarity over distinct pairs (i ≠ j) of ``smiles``."""
    n = len(smiles)
    if n < 2:
        return float("nan")
    fp = torch.from_numpy(fingerprints(smiles)).float()
    counts = fp.sum(1)
    total = 0.0
    for i in range(0, n, chunk):
        inter = fp[i:i + chunk] @ fp.T
        union = counts[i:i + chunk, None] + counts[None, :] - inter
        sim = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
        total += float(sim.double().sum())
    total -= n  # the diagonal (self-similarity 1)
    return 1.0 - total / (n * (n - 1))


@lru_cache(maxsize=1)
def _chemnet():
    try:
        import fcd
    except ModuleNotFoundError:
        raise DomainError("FCD needs the 'fcd' package: run pip install 'svdd[molecules]'") from None
    return fcd, fcd.load_ref_model()


def _stats(smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    fcd, model = _chemnet()
    with torch.no_grad():
        act = fcd.get_predictions(model, list(smiles), device="cpu")
    return act.mean(0), np.cov(act.T)


def fcd_reference_stats() -> tuple[np.ndarray, np.ndarray]:
    """ChemNet mean/covariance of a fixed random subset of the MOSES test set (cached on disk)."""
    key = f"moses-test-n{FCD_REFERENCE_SIZE}-seed{FCD_REFERENCE_SEED}-fcd1.2.2"
    path = cache_dir("fcd") / f"{key}.npz"
    if path.exists() and not path.is_symlink():
        try:   # a cache file is checked before it is trusted (np.load never unpickles here)
            with np.load(path, allow_pickle=False) as z:
                mu, sigma = z["mu"], z["sigma"]
                if (str(z["key"]) == key and mu.ndim == 1 and sigma.shape == (len(mu), len(mu))
                        and str(z["sha"]) == hashlib.sha256(mu.tobytes() + sigma.tobytes()).hexdigest()):
                    return mu, sigma
        except Exception:
            pass
        print(f"svdd: the FCD reference cache {path} is damaged; recomputing it", file=sys.stderr)
    test = load_moses("test")
    idx = np.random.default_rng(FCD_REFERENCE_SEED).permutation(len(test))[:FCD_REFERENCE_SIZE]
    mu, sigma = _stats([test[i] for i in idx])
    from ...runfolder import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, key=key, sha=hashlib.sha256(mu.tobytes() + sigma.tobytes()).hexdigest())
    return mu, sigma


def fcd_to_moses_test(smiles: Sequence[str]) -> float:
    fcd, _ = _chemnet()
    mu, sigma = _stats(smiles)
    mu_ref, sigma_ref = fcd_reference_stats()
    return float(fcd.calculate_frechet_distance(mu1=mu, sigma1=sigma, mu2=mu_ref, sigma2=sigma_ref))


@torch.no_grad()
def nelbo(process, x0: torch.Tensor, num_t_samples: int = 4, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Per-molecule NELBO (nats) of token sequences under the pretrained model."""
    gen = torch.Generator(device=process.device).manual_seed(seed)
    out = [process.nelbo(x0[i:i + batch_size].to(process.device), num_t_samples=num_t_samples, generator=gen).cpu()
           for i in range(0, x0.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def molecule_metrics(smiles: Sequence[str], *, x0: Optional[torch.Tensor] = None, process=None,
                     min_fcd: int = 256, max_nelbo: int = 512, novelty_reference: Optional[set] = None,
                     moses_reference=None, min_moses_reference: Optional[int] = None) -> dict:
    """All set metrics for decoded samples (``x0``/``process`` add the NELBO).

    ``moses_reference``: the reference set of SNN/Frag/Scaf — a ``moses_metrics.Reference``, a
    list of SMILES, or None for the MOSES test set; SNN/Frag/Scaf against the MOSES test set are
    reported from ``min_moses_reference`` valid molecules on (default ``min_fcd``, like FCD; any
    size for a reference given here)."""
    n = len(smiles)
    canon = [canonical_smiles(s) for s in smiles]
    valid = [c for c in canon if c]
    unique = sorted(set(valid))
    out: dict = {"num_samples": n, "num_valid": len(valid),
                 "validity": len(valid) / n if n else float("nan"),
                 "uniqueness": len(unique) / len(valid) if valid else float("nan"),
                 "novelty": novelty(valid, novelty_reference),
                 "novelty_reference": "given" if novelty_reference is not None else _train_set()[1],
                 "internal_diversity": internal_diversity(valid)}
    from .moses_metrics import moses_metrics

    if min_moses_reference is None:
        min_moses_reference = min_fcd if moses_reference is None else 0
    out.update(moses_metrics(valid, moses_reference, min_reference=min_moses_reference))
    if len(valid) >= min_fcd:
        try:
            out["fcd_moses_test"] = fcd_to_moses_test(valid)
        except (DomainError, DataError) as err:   # the MOSES test set (or fcd) is unavailable
            out["fcd_moses_test"] = None
            out["fcd_note"] = f"FCD not reported: {err}"
    else:
        out["fcd_moses_test"] = None
        out["fcd_note"] = f"FCD needs >= {min_fcd} valid molecules (biased for small sets)"
    if x0 is not None and process is not None and hasattr(process, "nelbo") and n:
        k = min(n, max_nelbo)
        values = nelbo(process, x0[:k])
        out["nelbo_nats_per_molecule"] = float(values.mean())
        out["nelbo_num_samples"] = k
    return out
