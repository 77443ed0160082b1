"""ENCODE DHS regulatory sequences (200 bp) and their tokenisation.

Source: the ``dnadiffusion==0.0.0.dev0`` wheel (MIT), used as data only (never installed):
``dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt`` holds 47,872
DHS summit-centred 200-bp sequences, 11,968 specific to each of four cell types (GM12878,
hESCT0, K562, HepG2), with chromosome and a chromosome split: ``test`` = chr1,
``validation`` = chr2, ``training`` = the other chromosomes.

Tokens: A=0, C=1, G=2, T=3, MASK=4 (so the complement of token k < 4 is 3 − k). The wheel is
fetched with ``pip download --no-deps`` into ``$SVDD_CACHE_DIR/dna`` (default
``~/.cache/svdd/dna``) and both the wheel and the extracted table are checked against SHA-256
sums. A small subset (the test chromosome, chr1) ships with the package for tests and metrics.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from ...cache import cache_dir, fetch_wheel, sha256
from ..base import DomainError

ALPHABET = "ACGT"
MASK_ID = 4
VOCAB_SIZE = 5
SEQ_LEN = 200
CELL_TYPES = ("GM12878", "hESCT0", "K562", "HepG2")
HEPG2 = CELL_TYPES.index("HepG2")
SPLITS = ("training", "validation", "test")

WHEEL = "dnadiffusion==0.0.0.dev0"
WHEEL_FILE = "dnadiffusion-0.0.0.dev0-py3-none-any.whl"
WHEEL_SHA256 = "d97becfde9c1cc2fcae3a5bd7584da2224d072ebf15194fdb25b85840d7f484c"
TABLE_MEMBER = "dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
TABLE_FILE = "K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
TABLE_SHA256 = "ba1063a9a3d0054020ae2e9f8add974550ae91fe2d21989e790e5d6cb2cb4d58"

ASSETS = Path(__file__).with_name("assets")
SUBSET_FILE = ASSETS / "dhs_chr1_test.tsv.gz"

# Oracle split of the training chromosomes into two disjoint halves (odd vs even autosomes:
# 20,353 vs 18,901 sequences). The guidance oracle sees only half A, the evaluation oracle only half B;
# chr2 (validation) selects epochs for both and chr1 (test) is held out from everything.
ORACLE_HALVES = {
    "guidance": ("chr3", "chr5", "chr7", "chr9", "chr11", "chr13", "chr15", "chr17", "chr19",
                 "chr21", "chrX"),
    "evaluation": ("chr4", "chr6", "chr8", "chr10", "chr12", "chr14", "chr16", "chr18", "chr20",
                   "chr22", "chrY"),
}


# -- tokens ---------------------------------------------------------------------------------
_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _i
    _LUT[ord(_c.lower())] = _i


def encode(sequences: Iterable[str] | str, seq_len: Optional[int] = SEQ_LEN) -> Tensor:
    """DNA strings -> tokens ``(B, L)`` long (A=0, C=1, G=2, T=3)."""
    if isinstance(sequences, str):
        sequences = [sequences]
    sequences = list(sequences)
    if not sequences:
        return torch.zeros(0, seq_len or 0, dtype=torch.long)
    lengths = {len(s) for s in sequences}
    if len(lengths) != 1 or (seq_len is not None and lengths != {seq_len}):
        want = seq_len if seq_len is not None else "equal"
        raise DomainError(f"DNA sequences must all have length {want} (got lengths {sorted(lengths)[:5]})")
    raw = np.frombuffer("".join(sequences).encode("ascii", "replace"), dtype=np.uint8)
    tok = _LUT[raw]
    if (tok == 255).any():
        bad = sorted({chr(c) for c in raw[tok == 255]})[:5]
        raise DomainError(f"DNA sequences may only contain A, C, G, T (found {''.join(bad)!r})")
    return torch.from_numpy(tok.astype(np.int64).reshape(len(sequences), -1))


def decode(tokens: Tensor) -> list[str]:
    """Tokens ``(B, L)`` -> strings; a mask token (or anything outside 0..3) prints as ``N``."""
    lut = np.frombuffer(b"ACGTN", dtype=np.uint8)
    t = tokens.detach().cpu().long().numpy()
    t = np.where((t >= 0) & (t < 4), t, 4)
    return [row.tobytes().decode("ascii") for row in lut[t]]


def one_hot(x: Tensor) -> Tensor:
    """Tokens ``(B, L)`` long -> float one-hot ``(B, L, 4)``; a float input ``(B, L, V ≥ 4)``
    (probabilities, a relaxed one-hot for gradient guidance) keeps its first four channels."""
    if x.is_floating_point():
        if x.dim() != 3 or x.shape[-1] < 4:
            raise DomainError(f"expected tokens (B, L) or probabilities (B, L, 4|5), got shape {tuple(x.shape)}")
        return x[..., :4]
    return torch.nn.functional.one_hot(x.long().clamp(0, MASK_ID), VOCAB_SIZE)[..., :4].float()


def reverse_complement(x: Tensor) -> Tensor:
    """Reverse complement of tokens ``(B, L)`` (mask stays mask) or one-hots ``(B, L, 4)``."""
    if x.is_floating_point():
        return x.flip(1).flip(2)
    return torch.where(x < 4, 3 - x, x).flip(1)


# -- the full table (download, checksum, cache) -----------------------------------------------
def table_path(download: bool = True) -> Path:
    """Path of the verified DHS table, extracted from the (cached, verified) wheel on first use."""
    target = cache_dir("dna") / TABLE_FILE
    if target.exists() and sha256(target) == TABLE_SHA256:
        return target
    if not download:
        raise DomainError(f"DHS table not cached at {target}; run `python scripts/prepare_dna.py` (needs PyPI)")
    wheel = fetch_wheel(WHEEL, WHEEL_FILE, WHEEL_SHA256, cache_dir("dnadiffusion"))
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(TABLE_MEMBER)
    if hashlib.sha256(data).hexdigest() != TABLE_SHA256:
        raise DomainError(f"{TABLE_MEMBER} has an unexpected checksum; the wheel may have changed")
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target


def _parse_table(text_lines: Iterable[str]) -> dict[str, np.ndarray]:
    it = iter(text_lines)
    header = next(it).rstrip("\n").split("\t")
    col = {name: i for i, name in enumerate(header)}
    seqs, chrom, tags, split, signal = [], [], [], [], []
    for line in it:
        f = line.rstrip("\n").split("\t")
        if len(f) < len(header):
            continue
        seqs.append(f[col["sequence"]])
        chrom.append(f[col["chr"]])
        tags.append(f[col["TAG"]].split("_")[0])
        split.append(f[col["data_label"]])
        signal.append(float(f[col["total_signal"]]))
    return {
        "sequence": np.array(seqs),
        "chr": np.array(chrom),
        "cell_type": np.array([CELL_TYPES.index(t) for t in tags], dtype=np.int64),
        "split": np.array(split),
        "total_signal": np.array(signal, dtype=np.float64),
    }


def load_table(download: bool = True) -> dict[str, np.ndarray]:
    """All 47,872 DHS sequences: columns ``sequence, chr, cell_type (index into CELL_TYPES),
    split, total_signal`` as numpy arrays."""
    with open(table_path(download), encoding="ascii") as f:
        return _parse_table(f)


def load_subset() -> dict[str, np.ndarray]:
    """The committed chr1 (test split) subset: 4,565 sequences, same columns as ``load_table``."""
    if not SUBSET_FILE.exists():
        raise DomainError(f"missing packaged data {SUBSET_FILE.name}; reinstall svdd or run scripts/prepare_dna.py")
    with gzip.open(SUBSET_FILE, "rt", encoding="ascii") as f:
        return _parse_table(f)


def write_subset(table: dict[str, np.ndarray], path: Path = SUBSET_FILE, split: str = "test") -> Path:
    """Write the rows of one split as a gzipped TSV in the wheel's own column names."""
    keep = table["split"] == split
    buf = io.StringIO()
    buf.write("chr\tsequence\tTAG\ttotal_signal\tdata_label\n")
    for s, c, t, sig, sp in zip(table["sequence"][keep], table["chr"][keep], table["cell_type"][keep],
                                table["total_signal"][keep], table["split"][keep]):
        buf.write(f"{c}\t{s}\t{CELL_TYPES[t]}\t{sig:.5g}\t{sp}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:   # mtime=0: byte-identical reruns
        f.write(buf.getvalue().encode("ascii"))
    return path
