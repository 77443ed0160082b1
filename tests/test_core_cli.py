"""CLI: run folders, resume after a kill, one-line errors (never a traceback)."""

import csv
import json
import subprocess
import sys

import pytest

from svdd.cli import main


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "svdd.cli", *argv], capture_output=True, text=True, timeout=300)


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_sample_writes_run_folder_and_resume_recovers_a_killed_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sample", "--domain", "toy-masked", "--method", "svdd-pm", "--num-samples", "40", "--batch-size", "16",
            "--num-candidates", "4", "--seed", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    rows = read_csv(out / "samples.csv")
    assert len(rows) == 40 and set(rows[0]) >= {"index", "sample", "reward"}
    summary = json.loads((out / "summary.json").read_text())
    st = summary["reward_stats"]
    assert st["median_ci"][0] <= st["median"] <= st["median_ci"][1]
    assert summary["counters"]["nfe"] > 0 and summary["baseline"]["method"] == "ancestral"
    assert summary["num_shards"] == 3 and (out / "reward_hist.png").stat().st_size > 1000
    assert "tv_to_pretrained" in summary["metrics"]
    # simulate a kill after the first shard: drop later shards and the outputs, then --resume
    shards = sorted((out / "shards" / "method").glob("shard_*.safetensors"))
    first_mtime = shards[0].stat().st_mtime_ns
    for p in shards[1:]:
        p.unlink()
    (out / "samples.csv").unlink()
    assert main(args + ["--resume"]) == 0
    assert shards[0].stat().st_mtime_ns == first_mtime  # the finished shard was kept, not redone
    assert read_csv(out / "samples.csv") == rows       # identical result to the uninterrupted run


def test_existing_folder_needs_resume_and_same_options(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["sample", "--domain", "toy-masked", "--num-samples", "4", "--out", str(out), "--quiet", "--no-baseline"]
    assert main(base) == 0
    assert main(base) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--resume", "--seed", "9"]) == 2
    assert "seed" in capsys.readouterr().err
    assert (out / "samples.csv").exists()  # nothing already written is lost


@pytest.mark.parametrize("argv, needle", [
    (["--method", "nope"], "unknown method"),
    (["--domain", "nope"], "unknown domain"),
    (["--reward", "nope"], "unknown reward"),
    (["--num-candidates", "0"], "--num-candidates"),
    (["--alpha", "-1"], "--alpha"),
    (["--num-samples", "0"], "--num-samples"),
    (["--method", "ancestral", "--num-candidates", "4"], "does not take"),
    (["--method", "svdd-mc"], "--value"),
])
def test_bad_input_gives_one_line_error(tmp_path, argv, needle):
    base = ["sample", "--domain", "toy-masked", "--num-samples", "4", "--out", str(tmp_path / "r"), "--quiet"]
    proc = run_cli(*base, *argv)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("svdd: error:") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_commands(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("ancestral", "best-of-n", "svdd-pm", "svdd-mc", "svdd-r"):
        assert name in out
    assert main(["list", "rewards", "--domain", "toy-gaussian"]) == 0
    assert "linear" in capsys.readouterr().out


def test_fit_value_then_svdd_mc(tmp_path, capsys):
    vdir = tmp_path / "value"
    assert main(["fit-value", "--domain", "toy-gaussian", "--num-steps", "10", "--num-rollouts", "64",
                 "--train-steps", "50", "--out", str(vdir), "--quiet"]) == 0
    out = tmp_path / "mc"
    assert main(["sample", "--domain", "toy-gaussian", "--method", "svdd-mc", "--value", str(vdir), "--num-steps", "10",
                 "--num-samples", "8", "--out", str(out), "--quiet", "--no-baseline"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["value_training_cost"]["nfe"] == 64 * 10
    assert summary["counters"]["value_calls"] > 0


def test_process_backend_gives_the_same_samples_as_local(tmp_path):
    base = ["sample", "--domain", "toy-masked", "--method", "svdd-pm", "--num-samples", "12", "--batch-size", "4",
            "--num-candidates", "4", "--seed", "1", "--quiet", "--no-baseline"]
    assert main(base + ["--out", str(tmp_path / "local")]) == 0
    assert main(base + ["--out", str(tmp_path / "proc"), "--backend", "process", "--workers", "2"]) == 0
    assert read_csv(tmp_path / "local" / "samples.csv") == read_csv(tmp_path / "proc" / "samples.csv")
    summary = json.loads((tmp_path / "proc" / "summary.json").read_text())
    assert summary["counters"]["retries"] == 0 and summary["counters"]["failures"] == 0


def test_svdd_mc_uses_the_value_a_domain_ships(tmp_path):
    out = tmp_path / "mc"
    assert main(["sample", "--domain", "molecules", "--reward", "qed", "--method", "svdd-mc", "--num-samples", "2",
                 "--num-steps", "4", "--num-candidates", "2", "--out", str(out), "--quiet", "--no-baseline"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["value"] is None and summary["counters"]["value_calls"] > 0
    assert summary["value_training_cost"]["nfe"] > 0  # the shipped value's training cost is reported
