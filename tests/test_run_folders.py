"""Run folders are data, never code: no pickle is ever loaded, damaged files are recomputed,
writes are atomic and never follow symlinks, one writer per folder, folders are relocatable."""

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from svdd.cli import main
from svdd.runfolder import (DamagedFile, FolderLock, FolderLocked, Manifest, RunFolderError, atomic_write,
                            load_tensors, save_tensors)

BASE = ["sample", "--domain", "toy-masked", "--method", "svdd-pm", "--num-samples", "12", "--batch-size", "4",
        "--num-candidates", "3", "--seed", "5", "--quiet"]


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


class Payload:
    """A pickle whose loading creates a marker file (the classic __reduce__ attack)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(out, *extra):
    return main([*BASE, "--out", str(out), *extra])


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "run"
    assert run(out) == 0
    return out, rows(out / "samples.csv")


def test_shards_are_safetensors_with_a_checksummed_manifest(finished):
    out, _ = finished
    shard_dir = out / "shards" / "method"
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["0", "1", "2"]
    for index, record in manifest["shards"].items():
        tensors, meta = load_tensors(shard_dir / record["file"], sha256=record["sha256"])
        assert record["rows"] == 4 and tensors["x0"].shape[0] == 4 and "nfe" in meta["info"]
    assert not list(out.rglob("*.pt")), "no torch pickles in a run folder"


def test_planted_pickle_is_never_loaded_and_is_recomputed(finished, tmp_path, capsys):
    out, before = finished
    marker = tmp_path / "pwned"
    for path in list((out / "shards").rglob("shard_*")):
        path.write_bytes(pickle.dumps({"x0": torch.zeros(4, 3), "evil": Payload(marker)}))
    (out / "shards" / "method" / "shard_00007.pt").write_bytes(pickle.dumps(Payload(marker)))
    assert run(out, "--resume") == 0
    assert not marker.exists()
    assert "checksum" in capsys.readouterr().err
    assert rows(out / "samples.csv") == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "wrong_rows", "unrecorded", "manifest"])
def test_damaged_shards_are_reported_in_one_line_and_recomputed(finished, capsys, damage):
    out, before = finished
    shard_dir = out / "shards" / "method"
    target = shard_dir / "shard_00001.safetensors"
    if damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "wrong_rows":   # a consistent file of the wrong size, with a matching record
        manifest = Manifest(shard_dir, json.loads((shard_dir / "manifest.json").read_text())["fingerprint"])
        manifest.save_shard(1, {"x0": torch.zeros(6, 3, dtype=torch.long), "rewards": torch.zeros(6)}, {"nfe": 1})
    elif damage == "unrecorded":   # killed between the shard write and the manifest write
        data = json.loads((shard_dir / "manifest.json").read_text())
        del data["shards"]["1"]
        (shard_dir / "manifest.json").write_text(json.dumps(data))
    elif damage == "manifest":
        (shard_dir / "manifest.json").write_text('{"fingerp')
    assert run(out, "--resume") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err and all(line.startswith("svdd: ") for line in err) and "Traceback" not in "\n".join(err)
    assert rows(out / "samples.csv") == before


def test_truncated_config_is_reported_and_the_run_resumes(finished, capsys):
    out, before = finished
    (out / "config.json").write_text('{"domain": "toy-')
    assert run(out, "--resume") == 0
    assert "config" in capsys.readouterr().err
    assert rows(out / "samples.csv") == before
    json.loads((out / "config.json").read_text())   # rewritten whole


@pytest.mark.parametrize("name", ["samples.csv", "summary.json", "config.json"])
def test_outputs_replaced_by_symlinks_are_refused_and_targets_untouched(finished, tmp_path, capsys, name):
    out, _ = finished
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (out / name).unlink()
    (out / name).symlink_to(outside)
    assert run(out, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symbolic link" in err[0]
    assert outside.read_text() == "keep me"


def test_symlinked_shard_folder_is_refused(finished, tmp_path, capsys):
    out, _ = finished
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "shards" / "method", elsewhere)
    (out / "shards" / "method").symlink_to(elsewhere, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    (elsewhere / "shard_00002.safetensors").unlink()   # force a write
    assert run(out, "--resume") == 2
    assert "symbolic link" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(set(before) - {"shard_00002.safetensors"})


def test_run_folders_are_relocatable(finished, tmp_path):
    out, before = finished
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    (moved / "samples.csv").unlink()
    (moved / "shards" / "method" / "shard_00002.safetensors").unlink()
    assert run(moved, "--resume") == 0
    assert rows(moved / "samples.csv") == before
    assert run(str(out) + "/", "--resume") == 0       # the same path with a trailing slash


def test_a_held_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out):
        assert run(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {os.getpid()}" in err[0] and "in use" in err[0]
    assert not (out / "samples.csv").exists()
    assert run(out) == 0   # released: the folder can be used


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".svdd.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                "started": time.time() - 60}))
    assert run(out) == 0
    assert "taking over the lock" in capsys.readouterr().err


# slow: 3 fresh interpreters; test_a_held_folder_is_refused_naming_the_holder covers the lock
@pytest.mark.slow
def test_concurrent_runs_with_a_slow_model_load_one_wins(tmp_path):
    """Three runs on one --out whose model takes a second to load: one succeeds, two exit 2."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, time
        import svdd.domains as d
        from svdd.cli import main
        original = d.get_domain
        def slow(name):
            dom = original(name)
            load = dom.load_process
            def slow_load(*a, **k):
                time.sleep(1.5)
                return load(*a, **k)
            object.__setattr__(dom, "load_process", slow_load)
            return dom
        import svdd.cli
        svdd.cli.get_domain = slow
        sys.exit(main({[*BASE, "--out", str(out)]!r}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    for code, err in results:
        if code == 2:
            assert "in use by another svdd run" in err and "Traceback" not in err
    assert len(rows(out / "samples.csv")) == 12


def _failing(x0):
    raise RuntimeError("oracle is down")


def _nan_for_c(x0):
    out = torch.ones(len(x0))
    out[(x0 == 2).any(-1)] = float("nan")
    return out


@pytest.mark.parametrize("fn, all_failed", [(_failing, True), (_nan_for_c, False)])
def test_reward_failures_are_loud_in_cli_and_summary(tmp_path, capsys, monkeypatch, fn, all_failed):
    from svdd.domains.toys import MASKED_DOMAIN

    monkeypatch.setitem(MASKED_DOMAIN.rewards, "broken", (lambda arg=None, **_: fn, "fails"))
    out = tmp_path / "run"
    code = main([*BASE, "--reward", "broken", "--out", str(out)])
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    failures = summary["reward_failures"]
    assert failures["all_failed"] is all_failed and failures["failed_samples"] >= 1
    assert err.count("svdd: warning: reward") == 1   # once per run, not once per shard
    assert "svdd: warning: reward" in err and "Traceback" not in err
    if all_failed:
        assert code == 1 and "oracle is down" in failures["first_error"] and "every reward evaluation failed" in err
        assert failures["failed_samples"] >= failures["reward_calls"] > 0
    else:
        assert code == 0


def test_atomic_write_leaves_old_or_new_and_refuses_links(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, "old")
    atomic_write(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]     # no temp file left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask          # the mode open() would give, not 0600
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(RunFolderError, match="symbolic link"):
        atomic_write(link, "x")
    assert path.read_text() == "new"


def test_tensors_round_trip_and_garbage_is_damaged(tmp_path):
    record = save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(6).reshape(2, 3)}, {"k": [1, 2]})
    tensors, meta = load_tensors(tmp_path / "t.safetensors", sha256=record["sha256"])
    assert torch.equal(tensors["a"], torch.arange(6).reshape(2, 3)) and meta == {"k": [1, 2]}
    (tmp_path / "g.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(DamagedFile):
        load_tensors(tmp_path / "g.safetensors")


def test_second_lock_in_another_process_is_refused(tmp_path):
    with FolderLock(tmp_path):
        code = subprocess.run([sys.executable, "-c", f"from svdd.runfolder import FolderLock; "
                               f"FolderLock({str(tmp_path)!r}).acquire()"], capture_output=True, text=True)
    assert code.returncode != 0 and "FolderLocked" in code.stderr
    FolderLock(tmp_path).acquire().release()
    assert FolderLocked.__mro__[1] is RunFolderError
