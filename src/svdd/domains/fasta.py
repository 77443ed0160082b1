"""FASTA output shared by the sequence domains (DNA, RNA): one header format everywhere.

``>sample_00000 <reward>=<value> <oracle>=<value> ...``: the sample's id, then its guidance reward
under the reward's name, then every other per-sample score given (evaluation oracles first), each
to 4 decimals; sequences wrapped at 80 characters. ``read_fasta_scores`` parses it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def fasta_text(sequences: Sequence[str], scores: Optional[dict[str, Sequence[float]]] = None, width: int = 80) -> str:
    scores = scores or {}
    lines = []
    for i, seq in enumerate(sequences):
        fields = " ".join(f"{name.replace(' ', '_')}={float(vals[i]):.4f}" for name, vals in scores.items())
        lines.append(f">sample_{i:05d}" + (f" {fields}" if fields else ""))
        lines += [seq[j:j + width] for j in range(0, len(seq), width)] or [""]
    return "\n".join(lines) + "\n"


def write_fasta_file(path: str | Path, sequences: Sequence[str], scores: Optional[dict[str, Sequence[float]]] = None,
                     root: Optional[str | Path] = None) -> Path:
    """Write ``sequences`` with ``scores`` (``{name: per-sample values}``, in header order), atomically."""
    from ..runfolder import atomic_write

    return atomic_write(Path(path), fasta_text(sequences, scores), root)


def read_fasta_scores(path: str | Path) -> list[tuple[str, str, dict[str, float]]]:
    """``[(id, sequence, {name: value})]`` of a FASTA written by ``write_fasta_file``."""
    records: list[tuple[str, str, dict[str, float]]] = []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            ident, *fields = line[1:].split()
            records.append((ident, "", {k: float(v) for k, _, v in (f.partition("=") for f in fields)}))
        elif records and line.strip():
            ident, seq, vals = records[-1]
            records[-1] = (ident, seq + line.strip(), vals)
    return records
