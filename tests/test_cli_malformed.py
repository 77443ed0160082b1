"""Every malformed invocation of ``tests/malformed_corpus.py`` ends in exactly one ``svdd: error:``
line (or argparse's ``svdd CMD: error:``), exit code 2, no traceback, in a few seconds, without
writing results; a few of them end to end through ``python -m svdd.cli``; a closed stdout
(``svdd list rewards | head -1``) is silent. The positive checks at the end make sure the
validation does not refuse what is right (``1e+5*linear``, a bench whose cells all succeed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from malformed_corpus import CASES, classify, error_lines, needle_found, prepare
from svdd.cli import main

CASE_SECONDS = 8.0     # "a few seconds" with room for a loaded 2-core machine
BY_ID = {c.id: c for c in CASES}


def _run_in_process(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:          # main returns argparse's code; a raise would still count
        return exit_.code if isinstance(exit_.code, int) else 2


def test_corpus_is_large_and_covers_every_command():
    commands = {c.argv[0] for c in CASES if c.argv and not c.argv[0].startswith("-")}
    assert len(CASES) >= 130
    assert {"sample", "fit-value", "bench", "report", "list", "demo"} <= commands
    assert len({c.id for c in CASES}) == len(CASES)
    for needed in ("sample-seed-negative", "sample-set-reserved-process", "sample-candidates-huge",
                   "fit-num-rollouts-zero", "fit-train-steps-zero", "fit-train-batch-size-zero",
                   "sample-reward-workers-zero", "sample-device-tpu9", "sample-device-tpu9-gaussian",
                   "sample-reward-trailing-plus", "sample-reward-empty", "bench-suite-model-options-unknown",
                   "list-rewards-unknown-domain", "bench-suite-every-cell-fails", "bench-suite-seeds-word",
                   "report-list-line", "sample-value-bad-json", "sample-value-empty-object",
                   "sample-value-garbage-safetensors", "sample-out-is-a-file", "sample-out-unwritable"):
        assert needed in BY_ID


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_invocation_is_refused_in_one_line(case, tmp_path, capsys, monkeypatch):
    argv = prepare(case, tmp_path)
    monkeypatch.chdir(tmp_path)          # an empty --out must not mean "write here"
    started = time.perf_counter()
    code = _run_in_process(argv)
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err
    assert code == 2, f"exit code {code}; stderr: {err[-600:]!r}"
    assert classify(code, err) == "clean", err[-600:]
    (line,) = error_lines(err)
    assert needle_found(case, line), f"{case.needle!r} not in {line!r}"
    assert elapsed < CASE_SECONDS, f"took {elapsed:.1f} s"
    # refused, so nothing was produced: no samples, no summary, no fitted value
    for folder in (tmp_path / "out", tmp_path / "elsewhere"):
        assert not (folder / "samples.csv").exists() and not (folder / "summary.json").exists()
    if case.argv and case.argv[0] == "fit-value":
        assert not (tmp_path / "value" / "value.json").exists()


# ------------------------------------------------------------------------------------------------
# end to end: a real interpreter, the real exit code, nothing printed but the error line
# ------------------------------------------------------------------------------------------------
END_TO_END = ["sample-seed-negative", "sample-value-bad-json", "report-list-line", "top-unknown-command"]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# slow: 4 fresh interpreters; the in-process corpus above covers every case
@pytest.mark.slow
def test_malformed_invocations_end_to_end(tmp_path):
    procs = {}
    for cid in END_TO_END:      # started together: the interpreters' start-up overlaps
        folder = tmp_path / cid
        argv = prepare(BY_ID[cid], folder)
        procs[cid] = subprocess.Popen([sys.executable, "-m", "svdd.cli", *argv], cwd=folder, env=_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for cid, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, (cid, err)
        assert proc.returncode == 2, (cid, proc.returncode, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and error_lines(err) == lines, (cid, err)
        assert needle_found(BY_ID[cid], lines[0]), (cid, lines[0])


def test_closed_stdout_is_silent(tmp_path):
    """`svdd list rewards | head -1`: the reader goes away; svdd exits 0 or 141, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "svdd.cli", "list", "rewards"], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                  # no reader at all: every write fails with EPIPE
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141), (proc.returncode, err)
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
    shell = subprocess.run(["bash", "-c", f"'{sys.executable}' -m svdd.cli list rewards | head -1; "
                            "echo \"svdd-exit=${PIPESTATUS[0]}\" >&2"], env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert len(shell.stdout.splitlines()) == 1
    assert "Traceback" not in shell.stderr and "Exception ignored" not in shell.stderr, shell.stderr
    assert shell.stderr.strip().splitlines()[-1] in ("svdd-exit=0", "svdd-exit=141"), shell.stderr


def test_closed_stdout_in_process(monkeypatch, capsys):
    """main() itself turns a BrokenPipeError into the conventional 141, without a traceback."""
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("no descriptor")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["list", "methods"]) == 141


# ------------------------------------------------------------------------------------------------
# the checks do not refuse what is right
# ------------------------------------------------------------------------------------------------
def test_exponent_weights_parse_and_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--domain", "toy-gaussian", "--reward", "1e+5*linear", "--method", "svdd-pm",
                 "--num-samples", "3", "--num-steps", "3", "--num-candidates", "2", "--no-baseline", "--quiet",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward"] == "100000*linear"


def test_bench_runs_the_rest_and_lists_failed_cells(tmp_path, capsys):
    from malformed_corpus import SUITES

    case = BY_ID["bench-suite-some-cells-fail"]
    argv = prepare(case, tmp_path)
    assert main(argv) == 2
    line = error_lines(capsys.readouterr().err)[0]
    assert "1 of 2 cells failed" in line and "svdd-mc" in line
    rows = [json.loads(x) for x in (tmp_path / "bench" / "runs.jsonl").read_text().splitlines() if x.strip()]
    assert {(r["method"], r["status"]) for r in rows} == {("ancestral", "ok"), ("svdd-mc", "error")}
    # the same folder with a good suite: the finished cell is kept, the run exits 0
    (tmp_path / "suite.yaml").write_text(SUITES["good"])
    assert main(argv) == 0


def test_valid_set_options_and_devices_are_accepted(tmp_path, capsys):
    code = main(["sample", "--domain", "toy-masked", "--method", "smc", "--num-samples", "4", "--num-steps", "3",
                 "--num-particles", "8", "--set", "resample=systematic", "--set", "ess_threshold=0.5",
                 "--device", "cpu", "--seed", "4294967295", "--no-baseline", "--quiet", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
