"""MOSES set metrics (Polykovskiy et al. 2020, Front. Pharmacol. 11:565644) as ``molsets`` 0.3.1 computes them.

Notation. ``G`` are the valid generated molecules — canonical SMILES, duplicates kept, as MOSES
does —, ``R`` the reference set (the MOSES test set, 176,074 molecules), and ``T(a, b)`` the
Tanimoto similarity |a ∧ b| / |a ∨ b| of Morgan fingerprints (radius 2, 1,024 bits; ``T = 1``
when both fingerprints are empty, as MOSES sets it).

- ``IntDiv_p(G) = 1 − (1/|G|) Σ_i ((1/|G|) Σ_j T(g_i, g_j)^p)^(1/p)``: the mean runs over all
  |G|² ordered pairs, the diagonal (``T = 1``) included. ``p = 1`` is IntDiv, ``p = 2`` IntDiv2.
  This is what molsets' code computes (``average_agg_tanimoto(..., agg='mean', p)``: the p-th
  root is taken per molecule, then averaged); the paper writes the root outside the whole
  mean, ``1 − ((1/|G|²) Σ T^p)^(1/p)``. Both agree for ``p = 1``; for ``p = 2`` the code's value
  is the larger one (Jensen) — ``intdiv_paper`` gives the paper's form for comparison.
  svdd's own ``internal_diversity`` (metrics.py: distinct pairs only, 2,048 bits) is a different
  number and stays under its own name.
- ``SNN(G, R) = (1/|G|) Σ_i max_{r ∈ R} T(g_i, r)``, similarity to the nearest neighbour.
- ``Frag(G, R) = cos(f_G, f_R)``: ``f_X[k]`` counts BRICS fragment ``k`` (RDKit
  ``FragmentOnBRICSBonds``, canonical SMILES of each piece with its numbered dummy atoms) over
  all molecules of X; cos is the cosine of the two count vectors (missing keys count 0).
- ``Scaf(G, R) = cos(s_G, s_R)``: ``s_X`` counts Bemis–Murcko scaffolds (RDKit
  ``MurckoScaffold.GetScaffoldForMol``) with at least 2 rings — MOSES drops acyclic and
  one-ring scaffolds. Frag and Scaf are NaN when either side has no key (MOSES does the same).
- ``Filters(G)``: the fraction of G that passes ``mol_passes_filters``: no ring of 8 or more
  atoms, no atom with a formal charge, only C, N, S, O, F, Cl, Br, H, no match of the 22 MCF
  and 480 PAINS (WEHI) SMARTS — matched on the molecule with explicit hydrogens — and a
  non-isomeric SMILES that parses again. The SMARTS are read as data from molsets' wheel
  (``moses/metrics/mcf.csv``, ``wehi_pains.csv``); ``moses`` itself is never imported.

The reference statistics of the MOSES test set (packed fingerprints, fragment and scaffold
counts) take a few minutes to compute; they are computed once per RDKit version and kept in
``<svdd cache>/moses-metrics/`` as one ``.npz`` (no pickles: strings as fixed-width unicode
arrays, read with ``allow_pickle=False``), with a SHA-256 over its content that is checked on
every read. Metric time for 256 molecules is then about a second (SNN is a chunked float32
matrix product against all 176,074 test fingerprints, exact for 0/1 vectors).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import math
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ...cache import DataError, cache_dir
from ..base import DomainError
from .chem import _rdkit, mol_from_smiles

MORGAN_RADIUS = 2
MORGAN_BITS = 1024
SCAFFOLD_MIN_RINGS = 2
MAX_RING_SIZE = 7   # a ring of 8 or more atoms fails Filters
ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
FILTER_FILES = ("moses/metrics/mcf.csv", "moses/metrics/wehi_pains.csv")
CACHE_FORMAT = 1
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


# ------------------------------------------------------------------------------------------------
# fingerprints and Tanimoto
# ------------------------------------------------------------------------------------------------
def fingerprints(mols: Sequence) -> np.ndarray:
    """Morgan bits (radius 2, 1,024 bits) of RDKit molecules as an ``(n, 1024)`` uint8 array.

    RDKit's Morgan generator gives the same bits as the ``GetMorganFingerprintAsBitVect(mol, 2,
    nBits=1024)`` that MOSES calls."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    out = np.zeros((len(mols), MORGAN_BITS), dtype=np.uint8)
    for i, mol in enumerate(mols):
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def _tanimoto(inter: np.ndarray, count_a: np.ndarray, count_b: np.ndarray) -> np.ndarray:
    """``T[i, j] = inter / (|a_i| + |b_j| − inter)``, 1 where both fingerprints are empty."""
    union = count_a[:, None] + count_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = inter / union
    sim[union == 0] = 1.0
    return sim


def tanimoto_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Tanimoto similarities between the rows of two 0/1 fingerprint arrays, ``(len(a), len(b))``."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    inter = (a32 @ b32.T).astype(np.float64)   # integer counts <= 1024: exact in float32
    return _tanimoto(inter, a32.sum(1, dtype=np.float64), b32.sum(1, dtype=np.float64))


def intdiv(fps: np.ndarray, p: int = 1, chunk: int = 2048) -> float:
    """MOSES IntDiv_p of fingerprints ``(n, bits)``: ``1 − mean_i (mean_j T_ij^p)^(1/p)``,
    j over all n molecules (i = j included)."""
    n = len(fps)
    if n == 0:
        return float("nan")
    per_molecule = np.empty(n)
    for i in range(0, n, chunk):
        sim = tanimoto_matrix(fps[i:i + chunk], fps)
        per_molecule[i:i + chunk] = (sim ** p).mean(1) ** (1.0 / p)
    return float(1.0 - per_molecule.mean())


def intdiv_paper(fps: np.ndarray, p: int = 1, chunk: int = 2048) -> float:
    """The paper's form ``1 − ((1/n²) Σ_ij T_ij^p)^(1/p)`` (equals ``intdiv`` for p = 1)."""
    n = len(fps)
    if n == 0:
        return float("nan")
    total = sum(float((tanimoto_matrix(fps[i:i + chunk], fps) ** p).sum()) for i in range(0, n, chunk))
    return float(1.0 - (total / (n * n)) ** (1.0 / p))


def nearest_neighbour_similarity(fps: np.ndarray, reference_packed: np.ndarray,
                                 reference_counts: Optional[np.ndarray] = None, chunk: int = 8192) -> np.ndarray:
    """``max_r T(g_i, r)`` for every row of ``fps`` ``(n, bits)``, against packed reference bits ``(N, bits/8)``."""
    n = len(fps)
    best = np.zeros(n)
    if n == 0 or len(reference_packed) == 0:
        return np.full(n, np.nan)
    if reference_counts is None:
        reference_counts = _POPCOUNT[reference_packed].sum(1)
    gen32 = fps.astype(np.float32)
    gen_counts = gen32.sum(1, dtype=np.float64)
    for j in range(0, len(reference_packed), chunk):
        ref32 = np.unpackbits(reference_packed[j:j + chunk], axis=1).astype(np.float32)
        inter = (gen32 @ ref32.T).astype(np.float64)
        sim = _tanimoto(inter, gen_counts, reference_counts[j:j + chunk].astype(np.float64))
        np.maximum(best, sim.max(1), out=best)
    return best


# ------------------------------------------------------------------------------------------------
# fragments, scaffolds, cosine
# ------------------------------------------------------------------------------------------------
def fragments(mols: Iterable) -> Counter:
    """BRICS fragment SMILES counted over all ``mols`` (MOSES ``compute_fragments``; a molecule
    RDKit cannot fragment adds nothing, where MOSES would stop)."""
    Chem = _rdkit()
    counts: Counter = Counter()
    for mol in mols:
        try:
            pieces = Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")
        except (ValueError, RuntimeError):
            continue
        counts.update(pieces)
    return counts


def scaffold(mol, min_rings: int = SCAFFOLD_MIN_RINGS) -> Optional[str]:
    """Canonical SMILES of the Bemis–Murcko scaffold, None when it has fewer than ``min_rings`` rings."""
    Chem = _rdkit()
    from rdkit.Chem.Scaffolds import MurckoScaffold

    try:
        core = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(core)
    if not smiles or core.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def scaffolds(mols: Iterable, min_rings: int = SCAFFOLD_MIN_RINGS) -> Counter:
    """Scaffolds with at least ``min_rings`` rings, counted over ``mols`` (MOSES ``compute_scaffolds``)."""
    return Counter(s for s in (scaffold(m, min_rings) for m in mols) if s is not None)


def cosine_similarity(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Cosine of two count vectors given as ``{key: count}`` (absent keys are 0); NaN if either is empty."""
    if not a or not b:
        return float("nan")
    dot = float(sum(v * b[k] for k, v in a.items() if k in b))
    norm_a = math.sqrt(sum(float(v) ** 2 for v in a.values()))
    norm_b = math.sqrt(sum(float(v) ** 2 for v in b.values()))
    return dot / (norm_a * norm_b)


# ------------------------------------------------------------------------------------------------
# filters
# ------------------------------------------------------------------------------------------------
def _installed_moses_file(name: str) -> Optional[Path]:
    spec = importlib.util.find_spec("moses")   # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / name
    return path if path.is_file() else None


def read_wheel_file(name: str, download: bool = True) -> bytes:
    """A file of the molsets 0.3.1 wheel (``name`` as stored in it, e.g. ``moses/metrics/mcf.csv``), read as data."""
    local = _installed_moses_file(name)
    if local is not None:
        return local.read_bytes()
    from .data import molsets_wheel

    with zipfile.ZipFile(molsets_wheel(download)) as z:
        return z.read(name)


def parse_filter_csv(text: str, header: bool) -> list[tuple[str, str]]:
    """``(name, smarts)`` rows of MOSES's ``mcf.csv`` (header ``names,smarts``) or
    ``wehi_pains.csv`` (``smarts,name``, no header)."""
    rows = list(csv.reader(io.StringIO(text)))
    out = []
    if header:
        cols = [c.strip() for c in rows[0]]
        i_name, i_smarts = cols.index("names"), cols.index("smarts")
        rows = rows[1:]
    else:
        i_smarts, i_name = 0, 1
    for row in rows:
        if len(row) > max(i_name, i_smarts) and row[i_smarts].strip():
            name = row[i_name].strip().removeprefix("<regId=").removesuffix(">")   # PAINS: "<regId=azo_A(324)>"
            out.append((name, row[i_smarts].strip()))
    return out


@lru_cache(maxsize=1)
def filter_patterns(download: bool = True) -> tuple:
    """The MCF + PAINS SMARTS of MOSES's Filters, compiled by RDKit: ``((name, pattern), ...)``."""
    Chem = _rdkit()
    mcf, pains = (read_wheel_file(name, download).decode() for name in FILTER_FILES)
    rows = parse_filter_csv(mcf, header=True) + parse_filter_csv(pains, header=False)
    out = []
    for name, smarts in rows:
        pattern = Chem.MolFromSmarts(smarts)
        if pattern is None:
            raise DomainError(f"RDKit cannot parse the MOSES filter {name} ({smarts[:60]}); Filters is not reported")
        out.append((name, pattern))
    return tuple(out)


def passes_filters(mol, patterns: Optional[Sequence] = None) -> bool:
    """MOSES's ``mol_passes_filters`` (module docstring): ring size, charge, atom types,
    MCF + PAINS, SMILES round trip."""
    if mol is None:
        return False
    Chem = _rdkit()
    patterns = filter_patterns() if patterns is None else patterns
    if any(len(ring) > MAX_RING_SIZE for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
        return False
    if any(atom.GetSymbol() not in ALLOWED_ATOMS for atom in mol.GetAtoms()):
        return False
    with_h = Chem.AddHs(mol)
    if any(with_h.HasSubstructMatch(pattern) for _, pattern in patterns):
        return False
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    return bool(smiles) and Chem.MolFromSmiles(smiles) is not None


def failed_filters(mol, patterns: Optional[Sequence] = None) -> list[str]:
    """Names of the rules and SMARTS ``mol`` fails (empty when it passes) — for looking at one molecule."""
    Chem = _rdkit()
    patterns = filter_patterns() if patterns is None else patterns
    out = []
    if any(len(ring) > MAX_RING_SIZE for ring in mol.GetRingInfo().AtomRings()):
        out.append("ring_size")
    if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
        out.append("charge")
    if any(atom.GetSymbol() not in ALLOWED_ATOMS for atom in mol.GetAtoms()):
        out.append("atoms")
    with_h = Chem.AddHs(mol)
    out += [name for name, pattern in patterns if with_h.HasSubstructMatch(pattern)]
    return out


# ------------------------------------------------------------------------------------------------
# reference statistics
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """What SNN, Frag and Scaf need of a reference set: packed fingerprints and two counters."""

    name: str
    size: int
    fingerprints: np.ndarray   # (size, 128) uint8, np.packbits of the 1,024 Morgan bits
    bit_counts: np.ndarray     # (size,) int32
    fragments: dict
    scaffolds: dict


def _mols(smiles: Iterable[str]) -> list:
    return [m for m in (mol_from_smiles(s) for s in smiles) if m is not None]


def reference_from_smiles(smiles: Sequence[str], name: str = "given") -> Reference:
    """Reference statistics of any SMILES set (invalid SMILES are skipped)."""
    mols = _mols(smiles)
    packed = np.packbits(fingerprints(mols), axis=1)
    return Reference(name=name, size=len(mols), fingerprints=packed, bit_counts=_POPCOUNT[packed].sum(1),
                     fragments=dict(fragments(mols)), scaffolds=dict(scaffolds(mols)))


def _cache_key() -> str:
    from rdkit import __version__ as rdkit_version

    from .data import MOLSETS_VERSION

    return (f"moses-test-molsets{MOLSETS_VERSION}-rdkit{rdkit_version}-morgan{MORGAN_RADIUS}x{MORGAN_BITS}"
            f"-scaf{SCAFFOLD_MIN_RINGS}rings-v{CACHE_FORMAT}")


def _digest(fps: np.ndarray, frag_keys, frag_counts, scaf_keys, scaf_counts) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(fps, dtype=np.uint8).tobytes())
    for keys, counts in ((frag_keys, frag_counts), (scaf_keys, scaf_counts)):
        h.update("\n".join(str(k) for k in keys).encode())
        h.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return h.hexdigest()


def save_reference(path: Path, ref: Reference, key: str) -> None:
    """Write ``ref`` to ``path`` atomically as one compressed npz (no object arrays)."""
    from ...runfolder import atomic_path

    frag_keys = sorted(ref.fragments)
    scaf_keys = sorted(ref.scaffolds)
    arrays = {"fingerprints": ref.fingerprints.astype(np.uint8),
              "fragment_keys": np.array(frag_keys, dtype=str), "fragment_counts": np.array(
                  [ref.fragments[k] for k in frag_keys], dtype=np.int64),
              "scaffold_keys": np.array(scaf_keys, dtype=str), "scaffold_counts": np.array(
                  [ref.scaffolds[k] for k in scaf_keys], dtype=np.int64)}
    sha = _digest(arrays["fingerprints"], frag_keys, arrays["fragment_counts"], scaf_keys, arrays["scaffold_counts"])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, key=np.array(key), name=np.array(ref.name), sha=np.array(sha), **arrays)


def load_reference(path: Path, key: str) -> Reference:
    """Read a cached reference, checking key, shapes, dtypes and SHA-256; ``DataError`` if anything is off."""
    if path.is_symlink() or not path.is_file():
        raise DataError(f"{path} is not a plain file")
    try:
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in ("key", "name", "sha", "fingerprints", "fragment_keys", "fragment_counts",
                                     "scaffold_keys", "scaffold_counts")}
    except Exception as err:   # truncated zip, missing member, object array (refused without pickle)
        raise DataError(f"{path} cannot be read ({type(err).__name__})") from None
    fps = got["fingerprints"]
    ok = (str(got["key"]) == key and fps.dtype == np.uint8 and fps.ndim == 2 and fps.shape[1] == MORGAN_BITS // 8
          and all(got[f"{k}_keys"].ndim == 1 and got[f"{k}_keys"].dtype.kind == "U"
                  and got[f"{k}_counts"].dtype == np.int64 and got[f"{k}_counts"].shape == got[f"{k}_keys"].shape
                  and bool((got[f"{k}_counts"] > 0).all()) for k in ("fragment", "scaffold")))
    if not ok or str(got["sha"]) != _digest(fps, got["fragment_keys"].tolist(), got["fragment_counts"],
                                            got["scaffold_keys"].tolist(), got["scaffold_counts"]):
        raise DataError(f"{path} does not match its key or checksum")
    return Reference(name=str(got["name"]), size=len(fps), fingerprints=fps, bit_counts=_POPCOUNT[fps].sum(1),
                     fragments=dict(zip(got["fragment_keys"].tolist(), got["fragment_counts"].tolist())),
                     scaffolds=dict(zip(got["scaffold_keys"].tolist(), got["scaffold_counts"].tolist())))


def reference_cache_path() -> Path:
    return cache_dir("moses-metrics") / f"{_cache_key()}.npz"


@lru_cache(maxsize=1)
def moses_test_reference(download: bool = True) -> Reference:
    """Statistics of the full MOSES test set (176,074 molecules), computed once and cached."""
    from .data import load_moses

    key, path = _cache_key(), reference_cache_path()
    if path.exists() or path.is_symlink():
        try:
            return load_reference(path, key)
        except DataError as err:
            print(f"svdd: the MOSES metric reference cache is damaged ({err}); recomputing it", file=sys.stderr)
    test = load_moses("test", download)
    print(f"svdd: computing MOSES test-set statistics for SNN/Frag/Scaf once ({len(test):,} molecules, a few "
          f"minutes); cached in {path}", file=sys.stderr)
    start = time.time()
    ref = reference_from_smiles(test, name=f"moses-test ({len(test):,})")
    try:
        save_reference(path, ref, key)
    except (OSError, ValueError) as err:   # a read-only cache, a planted symlink: use it uncached
        print(f"svdd: could not cache the MOSES test-set statistics in {path} ({err})", file=sys.stderr)
    print(f"svdd: MOSES test-set statistics done in {time.time() - start:.0f} s", file=sys.stderr)
    return ref


def default_reference() -> Reference:
    """The full MOSES test set, or — when it cannot be fetched — the committed 2,000-molecule
    test sample (named so in ``Reference.name``)."""
    try:
        return moses_test_reference()
    except (DataError, DomainError):
        return _sample_reference()


@lru_cache(maxsize=1)
def _sample_reference() -> Reference:
    from .data import load_sample

    test = load_sample()["test"]
    return reference_from_smiles(test, name=f"moses-test sample ({len(test):,}; full set unavailable)")


# ------------------------------------------------------------------------------------------------
# the metrics
# ------------------------------------------------------------------------------------------------
ReferenceLike = Union[Reference, Sequence[str], None]


def _resolve(reference: ReferenceLike) -> Reference:
    if reference is None:
        return default_reference()
    if isinstance(reference, Reference):
        return reference
    return reference_from_smiles(list(reference))


def _finite(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def moses_metrics(valid_smiles: Sequence[str], reference: ReferenceLike = None, filters: bool = True,
                  min_reference: int = 0) -> dict:
    """``moses_intdiv``, ``moses_intdiv2``, ``moses_snn``, ``moses_frag``, ``moses_scaf``, ``moses_filters``
    of valid molecules (duplicates count, as in MOSES) against ``reference`` (default: the MOSES test set).

    Undefined values (no valid molecule; no scaffold with 2 rings) are None. SNN / Frag / Scaf
    need the reference set's statistics (computed once and cached: minutes for the MOSES test
    set) and are strongly biased on small sets (Scaf 0.14 on 32 MOSES train molecules against
    0.99 on all of them), so below ``min_reference`` valid molecules they are None with a note."""
    mols = _mols(valid_smiles)
    out: dict = {}
    fps = fingerprints(mols)
    out["moses_intdiv"] = _finite(intdiv(fps, p=1))
    out["moses_intdiv2"] = _finite(intdiv(fps, p=2))
    if len(mols) >= min_reference:
        ref = _resolve(reference)
        out["moses_reference"] = ref.name
        nn = nearest_neighbour_similarity(fps, ref.fingerprints, ref.bit_counts)
        out["moses_snn"] = _finite(float(nn.mean())) if len(nn) else None
        out["moses_frag"] = _finite(cosine_similarity(fragments(mols), ref.fragments))
        out["moses_scaf"] = _finite(cosine_similarity(scaffolds(mols), ref.scaffolds))
    else:
        out.update({"moses_snn": None, "moses_frag": None, "moses_scaf": None,
                    "moses_reference_note": f"SNN / Frag / Scaf need >= {min_reference} valid molecules "
                                            "(biased for small sets)"})
    if filters:
        try:
            patterns = filter_patterns()
        except (DataError, DomainError) as err:
            out["moses_filters"] = None
            out["moses_filters_note"] = f"Filters needs MOSES's filter SMARTS from the molsets wheel: {err}"
        else:
            out["moses_filters"] = (sum(passes_filters(m, patterns) for m in mols) / len(mols)) if mols else None
    return out


# ------------------------------------------------------------------------------------------------
# command line: python -m svdd.domains.molecules.moses_metrics
# ------------------------------------------------------------------------------------------------
def _read_smiles_file(path: Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and "," in lines[0]:   # a CSV with a SMILES / smiles column (svdd's samples.csv)
        rows = list(csv.reader(lines))
        cols = [c.strip().lower() for c in rows[0]]
        col = cols.index("smiles") if "smiles" in cols else 0
        return [row[col] for row in rows[1:] if len(row) > col]
    return [line.split()[0] for line in lines]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Print the MOSES metrics (and svdd's internal diversity) of a SMILES set as JSON."""
    import argparse
    import json

    from . import data
    from .chem import canonical_smiles
    from .metrics import internal_diversity

    ap = argparse.ArgumentParser(prog="python -m svdd.domains.molecules.moses_metrics",
                                 description="MOSES metrics of SMILES against the MOSES test set.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("smiles_file", nargs="?", help="one SMILES per line, or a CSV with a SMILES column")
    src.add_argument("--sample", choices=["train", "test"], help="the committed 2,000-molecule sample")
    src.add_argument("--moses-train", type=int, metavar="N", help="N random MOSES train molecules (--seed)")
    ap.add_argument("--first", type=int, default=None, help="only the first N molecules")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-filters", action="store_true")
    args = ap.parse_args(argv)
    if args.sample:
        smiles, what = list(data.load_sample()[args.sample]), f"committed sample, {args.sample}"
    elif args.moses_train:
        train = data.load_moses("train")
        idx = np.random.default_rng(args.seed).permutation(len(train))[:args.moses_train]
        smiles, what = [train[i] for i in idx], f"{args.moses_train} random MOSES train (seed {args.seed})"
    else:
        if not Path(args.smiles_file).is_file():
            ap.error(f"no such file: {args.smiles_file}")
        smiles, what = _read_smiles_file(Path(args.smiles_file)), args.smiles_file
    smiles = smiles[:args.first] if args.first else smiles
    start = time.time()
    valid = [c for c in (canonical_smiles(s) for s in smiles) if c]
    out = {"input": what, "num_molecules": len(smiles), "num_valid": len(valid),
           **moses_metrics(valid, filters=not args.no_filters),
           "internal_diversity": _finite(internal_diversity(valid)),
           "moses_intdiv2_paper_form": _finite(intdiv_paper(fingerprints(_mols(valid)), p=2))}
    out["metrics_wall_time_s"] = round(time.time() - start, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
