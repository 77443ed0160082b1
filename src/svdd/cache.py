"""The user cache (``$SVDD_CACHE_DIR`` or ``~/.cache/svdd``) and data fetched from PyPI wheels.

Domain data sets ship inside wheels on PyPI (MOSES SMILES in ``molsets``, ENCODE DHS sequences in
``dnadiffusion``). ``fetch_wheel`` downloads one with ``pip download --no-deps`` (the package is
never installed or imported), checks its SHA-256 and keeps it in the cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path


class DataError(ValueError):
    """Data could not be fetched or failed its checksum (the message says what to do)."""


def cache_dir(*parts: str) -> Path:
    """``$SVDD_CACHE_DIR`` or ``~/.cache/svdd``, joined with ``parts`` (created)."""
    root = Path(os.environ.get("SVDD_CACHE_DIR") or Path.home() / ".cache" / "svdd").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(requirement: str, filename: str, expected_sha256: str, dest: Path, download: bool = True) -> Path:
    """``dest/filename``, downloaded with ``pip download --no-deps requirement`` when missing,
    and verified against ``expected_sha256``."""
    dest = Path(dest)
    target = dest / filename
    if target.exists() and sha256(target) == expected_sha256:
        return target
    hint = f"`pip download --no-deps {requirement} -d {dest}` (needs access to PyPI)"
    if not download:
        raise DataError(f"{filename} is not cached in {dest}; run {hint}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / filename
        if proc.returncode != 0 or not got.exists():
            raise DataError(f"could not download {requirement} with pip ({proc.stderr.strip()[-200:]}); run {hint}")
        digest = sha256(got)
        if digest != expected_sha256:
            raise DataError(f"{filename} has SHA-256 {digest[:12]}…, expected {expected_sha256[:12]}…; "
                            f"the package on PyPI changed — delete {dest} and retry, or report it")
        os.replace(got, target)
    return target
