"""Run folders are data, never code.

Everything svdd writes into a run folder (shards, ``config.json``, ``summary.json``, CSV, FASTA,
SDF, PNG, fitted values, bench lines, caches) goes through this module:

- **Atomic writes.** ``atomic_write(path, data)`` writes a uniquely named temp file in the same
  folder, flushes and fsyncs it, then ``os.replace``-s it over ``path`` (and fsyncs the folder).
  A reader therefore sees the old file or the new one, never a torn one, whatever kills the
  writer. ``atomic_path(path)`` does the same for writers that want a file name (matplotlib,
  RDKit's ``SDWriter``, PIL).
- **No symlinks.** Writes refuse a ``path`` that is a symlink, or that lies under a symlinked
  folder below the run folder's root, so a planted link cannot redirect a write out of it.
- **Tensors as safetensors + JSON.** ``save_tensors`` / ``load_tensors`` store plain tensor
  dicts with string metadata; nothing is unpickled. ``Manifest`` records, per shard, its file,
  row count, shapes, dtypes and SHA-256; ``Manifest.load_shard`` checks all of them and raises
  ``DamagedFile`` (one line) for anything that does not match, so the caller recomputes it.
- **One writer per folder.** ``FolderLock`` takes an exclusive ``fcntl.flock`` on
  ``<folder>/.svdd.lock`` (holding pid, host and start time) before anything is loaded. The
  kernel drops the lock when its process dies, so a stale lock file is taken over with a
  notice; a live holder makes ``FolderLocked`` say who holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

LOCK_NAME = ".svdd.lock"


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (one line, says what to do)."""


class FolderLocked(RunFolderError):
    """Another live process holds the folder's lock."""


class DamagedFile(RunFolderError):
    """A file read back from a run folder is missing, truncated, tampered with or mismatched."""


# ------------------------------------------------------------------------------------------------
# symlinks
# ------------------------------------------------------------------------------------------------
def check_no_symlink(path: str | Path, root: Optional[str | Path] = None) -> Path:
    """Refuse ``path`` if it, or any folder between ``root`` (exclusive) and it, is a symlink."""
    path = Path(path)
    if path.is_symlink():
        raise RunFolderError(f"{path} is a symbolic link; svdd never writes through links — remove it or "
                             "choose another --out")
    if root is not None:
        root = Path(root)
        try:
            rel = path.parent.relative_to(root)
        except ValueError:
            rel = None
        if rel is not None:
            here = root
            for part in rel.parts:
                here = here / part
                if here.is_symlink():
                    raise RunFolderError(f"{here} is a symbolic link; svdd never writes through links — remove it "
                                         "or choose another --out")
    return path


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_mode(path) -> None:
    """``mkstemp`` makes 0600 files; outputs get the usual 0666 & ~umask, as ``open`` would give."""
    os.chmod(path, 0o666 & ~_umask())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, root: Optional[str | Path] = None) -> Iterator[Path]:
    """Yield a temp file name next to ``path`` (same suffix); on success it replaces ``path``.

    The caller writes the whole file to the yielded name; if the block raises, the temp file is
    removed and ``path`` is untouched."""
    path = check_no_symlink(path, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        _normal_mode(tmp)
        check_no_symlink(path, root)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, data: bytes | str, root: Optional[str | Path] = None) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically (temp + fsync + rename)."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    path = check_no_symlink(path, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        _normal_mode(tmp_name)
        check_no_symlink(path, root)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, obj: Any, root: Optional[str | Path] = None, **dump_kwargs) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_kwargs) + "\n", root)


def read_json(path: str | Path, *, what: str = "file") -> Any:
    """Parse a JSON file that svdd wrote; anything unreadable is a one-line ``DamagedFile``."""
    path = Path(path)
    if path.is_symlink():
        raise DamagedFile(f"{path} is a symbolic link; svdd reads back only files it wrote")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedFile(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFile(f"{what} {path} is damaged ({type(err).__name__}: {err})") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# tensors: safetensors + JSON metadata
# ------------------------------------------------------------------------------------------------
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict] = None,
                 root: Optional[str | Path] = None) -> dict:
    """Write plain tensors (and a JSON-able ``metadata`` dict) as one safetensors file, atomically.
    Returns the manifest record: file name, SHA-256, and each tensor's shape and dtype."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
    meta = {"svdd": json.dumps(metadata or {}, default=str)}
    data = save(clean, metadata=meta)
    path = atomic_write(path, data, root)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                        for k, v in clean.items()}}


def load_tensors(path: str | Path, *, sha256: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by ``save_tensors``: ``(tensors, metadata)``. Never unpickles;
    a wrong checksum or an unreadable file raises ``DamagedFile``."""
    from safetensors.torch import load

    path = Path(path)
    if path.is_symlink():
        raise DamagedFile(f"{path} is a symbolic link; svdd reads back only files it wrote")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedFile(f"{path} cannot be read ({err.strerror or err})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DamagedFile(f"{path} does not match its recorded checksum (truncated or changed)")
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads((header.get("__metadata__") or {}).get("svdd", "{}"))
    except Exception as err:  # safetensors raises several types on garbage
        raise DamagedFile(f"{path} is not a readable safetensors file ({type(err).__name__})") from None
    return tensors, meta


class Manifest:
    """``manifest.json`` of a shard folder: ``{"fingerprint": ..., "shards": {index: record}}``.

    A shard counts as finished only when its record is in the manifest and the file matches it
    (checksum, rows, shapes, dtypes); the shard file is written first, then the manifest, both
    atomically, so a kill between the two leaves an unrecorded file that is simply recomputed.
    ``fingerprint`` identifies what produced the shards (method, options, seeds); records from
    another fingerprint are never reused."""

    def __init__(self, folder: str | Path, fingerprint: str, root: Optional[str | Path] = None):
        self.folder = Path(folder)
        self.root = root
        self.fingerprint = fingerprint
        self.path = self.folder / "manifest.json"
        self.records: dict[str, dict] = {}
        self.notices: list[str] = []
        if self.path.exists() or self.path.is_symlink():
            try:
                data = read_json(self.path, what="shard manifest")
                if not isinstance(data, dict) or not isinstance(data.get("shards"), dict):
                    raise DamagedFile(f"shard manifest {self.path} has no 'shards' table")
                if data.get("fingerprint") == fingerprint:
                    self.records = {str(k): v for k, v in data["shards"].items() if isinstance(v, dict)}
                elif data["shards"]:
                    self.notices.append(f"{self.path} records shards of other settings; recomputing them")
            except DamagedFile as err:
                self.notices.append(f"{err}; its shards are recomputed")

    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard_{index:05d}.safetensors"

    def save_shard(self, index: int, tensors: dict[str, torch.Tensor], info: dict) -> None:
        check_no_symlink(self.folder, self.root)
        record = save_tensors(self.shard_path(index), tensors, {"info": info, "index": index}, self.root)
        rows = {k: v["shape"][0] if v["shape"] else 0 for k, v in record["tensors"].items()}
        record["rows"] = rows.get("x0", next(iter(rows.values()), 0))
        self.records[str(index)] = record
        atomic_write_json(self.path, {"fingerprint": self.fingerprint, "shards": self.records}, self.root)

    def load_shard(self, index: int, rows: int) -> Optional[dict]:
        """The finished shard ``index`` (``{"x0", "rewards", ..., "info"}``) if it is recorded and
        intact, else ``None``; a damaged or mismatched one adds a notice and is dropped."""
        path = self.shard_path(index)
        record = self.records.get(str(index))
        if record is None:
            if path.exists() or path.is_symlink():
                self.notices.append(f"{path.name} is not in the manifest (interrupted write); recomputing it")
            return None
        try:
            if record.get("rows") != rows:
                raise DamagedFile(f"{path} holds {record.get('rows')} samples, expected {rows}")
            tensors, meta = load_tensors(path, sha256=record.get("sha256"))
            want = record.get("tensors", {})
            if set(tensors) != set(want):
                raise DamagedFile(f"{path} holds tensors {sorted(tensors)}, expected {sorted(want)}")
            for k, t in tensors.items():
                if list(t.shape) != want[k]["shape"] or str(t.dtype).replace("torch.", "") != want[k]["dtype"]:
                    raise DamagedFile(f"{path}: tensor {k} is {list(t.shape)} {t.dtype}, expected "
                                      f"{want[k]['shape']} {want[k]['dtype']}")
                if t.shape and t.shape[0] != rows:
                    raise DamagedFile(f"{path}: tensor {k} has {t.shape[0]} rows, expected {rows}")
        except DamagedFile as err:
            self.notices.append(f"{err}; recomputing it")
            del self.records[str(index)]
            return None
        info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        return {**tensors, "info": info}


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# one writer per folder
# ------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """Exclusive lock on a folder for the life of one run (``with FolderLock(out): ...``).

    ``flock`` is advisory and released by the kernel when the holding process exits, however it
    exits, so a lock file left by a killed run is stale by construction and is taken over (a
    notice names the dead holder). The lock file is opened with ``O_NOFOLLOW``."""

    def __init__(self, folder: str | Path, *, what: str = "run folder", notify=None, name: str = LOCK_NAME,
                 shared: bool = False):
        self.folder = Path(folder)
        self.what = what
        self.name = name
        self.shared = shared   # a shared lock: several holders, none while an exclusive one is held
        self.notify = notify if notify is not None else (lambda msg: print(f"svdd: {msg}", file=sys.stderr))
        self.fd: Optional[int] = None
        self.previous: Optional[dict] = None

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def _holder(self) -> dict:
        try:
            data = json.loads(Path(self.path).read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "FolderLock":
        import fcntl

        if self.folder.is_symlink():
            raise RunFolderError(f"{self.folder} is a symbolic link; give the real folder as --out")
        if self.folder.exists() and not self.folder.is_dir():
            raise RunFolderError(f"{self.folder} exists and is not a folder; choose another --out")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if self.path.is_symlink():
                raise RunFolderError(f"{self.path} is a symbolic link; remove it") from None
            raise RunFolderError(f"cannot write to {self.folder} ({err.strerror or err}); "
                                 "choose a writable --out") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self._holder()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"])) if "started" in h else "?"
            who = (f"pid {h['pid']} on {h.get('host', '?')}, since {since}" if h.get("pid")
                   else "other svdd processes working on parts of it")
            raise FolderLocked(f"{self.folder} is in use by another svdd run ({who}); wait for it to finish or "
                               "choose another --out") from None
        self.fd = fd
        if self.shared:
            return self
        old = self._holder()
        if old.get("pid") and (old.get("pid") != os.getpid() or old.get("host") != socket.gethostname()):
            self.previous = old
            alive = old.get("host") == socket.gethostname() and _pid_alive(int(old["pid"]))
            state = "a process that no longer holds it" if alive else "a process that is gone"
            self.notify(f"taking over the lock of {self.folder} left by pid {old['pid']} on {old.get('host', '?')} "
                        f"({state})")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "argv": sys.argv[:8]}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            if not self.shared:
                os.ftruncate(self.fd, 0)   # a clean exit leaves an empty, unheld lock file
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def find_symlinks(folder: Path) -> list[Path]:
    """Every symbolic link inside ``folder`` (not followed), sorted."""
    found = []
    for here, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            if os.path.islink(os.path.join(here, name)):
                found.append(Path(here) / name)
    return sorted(found)


def folder_entries(folder: Path) -> list[Path]:
    """What a folder holds, ignoring svdd's lock file."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if not (p.name.startswith(".svdd") and p.name.endswith(".lock"))]
