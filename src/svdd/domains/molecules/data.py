"""MOSES SMILES (ZINC-derived, MIT licence) read as data only from the ``molsets==0.3.1`` wheel.

The wheel is fetched once with ``pip download --no-deps molsets==0.3.1`` into the user cache
(``~/.cache/svdd/molsets``, or ``$SVDD_CACHE_DIR/molsets``), its SHA-256 is checked, and the
CSVs are read straight out of the zip (``moses/dataset/data/{train,test,test_scaffolds}.csv.gz``).
``moses`` is never imported (it does not run with today's stack). An installed ``moses``
package is used as a source too, through ``importlib.util.find_spec`` only.

A small subset (2,000 train + 2,000 test SMILES, drawn with a fixed seed) ships in
``assets/moses_sample.csv.gz`` for tests and offline use.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import zipfile
from functools import lru_cache
from pathlib import Path

from ...cache import cache_dir, fetch_wheel
from ..base import DomainError

MOLSETS_VERSION = "0.3.1"
MOLSETS_WHEEL = f"molsets-{MOLSETS_VERSION}-py3-none-any.whl"
MOLSETS_SHA256 = "7f4450e3ebecebe79c3a2a55950c93daddee071120daf64a163d03481e811d34"
SPLITS = {"train": "train.csv.gz", "test": "test.csv.gz", "test_scaffolds": "test_scaffolds.csv.gz"}
ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_FILE = ASSETS / "moses_sample.csv.gz"


def molsets_wheel(download: bool = True) -> Path:
    """Path of the checksum-verified molsets wheel in the cache (downloaded with pip if needed)."""
    return fetch_wheel(f"molsets=={MOLSETS_VERSION}", MOLSETS_WHEEL, MOLSETS_SHA256, cache_dir("molsets"), download)


def _installed_moses_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("moses")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data" / name
    return path if path.exists() else None


@lru_cache(maxsize=4)
def load_moses(split: str = "train", download: bool = True) -> tuple[str, ...]:
    """All SMILES of a MOSES split (``train`` 1,584,663; ``test`` 176,074; ``test_scaffolds``)."""
    if split not in SPLITS:
        raise DomainError(f"unknown MOSES split {split!r}; choose one of {sorted(SPLITS)}")
    local = _installed_moses_file(SPLITS[split])
    if local is not None:
        raw = local.read_bytes()
    else:
        with zipfile.ZipFile(molsets_wheel(download)) as z:
            raw = z.read(f"moses/dataset/data/{SPLITS[split]}")
    return _read_smiles_csv(raw)


def _read_smiles_csv(gz_bytes: bytes) -> tuple[str, ...]:
    text = gzip.decompress(gz_bytes).decode()
    lines = text.splitlines()
    header = lines[0].split(",")
    col = header.index("SMILES")
    return tuple(line.split(",")[col] for line in lines[1:] if line)


@lru_cache(maxsize=1)
def load_sample() -> dict[str, tuple[str, ...]]:
    """The committed subset: ``{"train": (...), "test": (...)}`` (2,000 SMILES each)."""
    out: dict[str, list[str]] = {}
    with gzip.open(SAMPLE_FILE, "rt") as f:
        next(f)
        for line in f:
            split, smiles = line.rstrip("\n").split(",")
            out.setdefault(split, []).append(smiles)
    return {k: tuple(v) for k, v in out.items()}


def write_sample(path: Path, train: list[str], test: list[str]) -> None:
    buf = io.StringIO()
    buf.write("split,SMILES\n")
    for split, items in (("train", train), ("test", test)):
        for s in items:
            buf.write(f"{split},{s}\n")
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(buf.getvalue().encode())
