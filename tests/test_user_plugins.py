"""A user's own process, reward and value through the CLI and `svdd bench`, and a third-party
domain registered by an installed package's entry point (a real dist-info on the path)."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from svdd.cli import main
from svdd.runfolder import load_tensors

USER_MODULE = textwrap.dedent('''
    import torch
    from svdd.testing import GaussianMixtureToy

    _TOY = GaussianMixtureToy.default()

    def make_process():
        return _TOY.process()

    def score(x0):
        return -(x0.reshape(len(x0), -1) - 1.0).pow(2).sum(1)
    score.name = "near_one"

    class Broken:
        def __call__(self, x0):
            raise RuntimeError("my oracle is down")

    def make_value(process):
        # the toy's exact soft value (of its linear reward), as a user would plug in their own network
        assert process.kind == "gaussian"
        return _TOY.soft_value(1.0)

    not_callable = 3
''')

DOMAIN_MODULE = textwrap.dedent('''
    from svdd.domains.base import Domain
    from svdd.testing import MaskedToy

    _TOY = MaskedToy()
    DOMAIN = Domain(name="plugdom", description="a domain from an installed package",
                    models={"table": lambda device="cpu", **_: _TOY.process()}, default_model="table",
                    rewards={"table": (lambda arg=None, **_: _TOY.reward, "the toy table")}, default_reward="table",
                    default_num_steps=4, decode=lambda x0: ["".join("xyz"[int(i)] for i in row) for row in x0],
                    sample_column="word")
''')


@pytest.fixture
def user_path(tmp_path, monkeypatch):
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "usermod.py").write_text(USER_MODULE)
    (folder / "plugdom_pkg.py").write_text(DOMAIN_MODULE)
    dist = folder / "plugdom_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugdom-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[svdd.domains]\nplugdom = plugdom_pkg:DOMAIN\n")
    monkeypatch.syspath_prepend(str(folder))
    for name in ("usermod", "plugdom_pkg"):
        sys.modules.pop(name, None)
    return folder


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_user_process_and_reward_write_the_usual_run_folder(user_path, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--process", "usermod:make_process", "--reward", "usermod:score", "--method", "svdd-pm",
                 "--num-samples", "6", "--num-steps", "8", "--num-candidates", "4", "--out", str(out), "--quiet"])
    assert code == 0
    for name in ("samples.csv", "samples.safetensors", "baseline_samples.csv", "baseline_samples.safetensors",
                 "summary.json", "reward_hist.png", "config.json"):
        assert (out / name).exists(), name
    table = rows(out / "samples.csv")
    tensors, meta = load_tensors(out / "samples.safetensors")
    assert list(table[0]) == ["index", "sample", "reward"] and len(table) == 6
    assert tensors["x0"].shape == (6, 1) and meta["reward"] == "near_one"
    assert [float(r["sample"]) for r in table] == pytest.approx(tensors["x0"][:, 0].tolist(), rel=1e-5)
    assert [float(r["reward"]) for r in table] == pytest.approx(tensors["rewards"].tolist(), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["domain"] == "usermod:make_process" and summary["reward"] == "near_one"
    assert summary["metrics"] == {}      # no domain metrics for a user's model
    base = tensors["rewards"].median()
    assert float(base) > summary["baseline"]["reward_stats"]["median"]   # svdd-pm beats pretrained on its reward


def test_user_reward_inside_a_weighted_sum_with_a_domain_reward(user_path, tmp_path):
    out = tmp_path / "run"
    assert main(["sample", "--domain", "toy-gaussian", "--reward", "linear+0.5*usermod:score", "--method", "ancestral",
                 "--num-samples", "5", "--num-steps", "6", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward"] == "linear+0.5*near_one"
    x = load_tensors(out / "samples.safetensors")[0]
    x0, r = x["x0"].reshape(-1).double(), x["rewards"].double()
    assert torch.allclose(r, x0 + 0.5 * (-(x0 - 1) ** 2), atol=1e-5)


def test_user_value_factory_drives_svdd_mc(user_path, tmp_path):
    out = tmp_path / "run"
    assert main(["sample", "--process", "usermod:make_process", "--reward", "usermod:score", "--method", "svdd-mc",
                 "--value", "usermod:make_value", "--num-samples", "4", "--num-steps", "6", "--num-candidates", "3",
                 "--no-baseline", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counters"]["value_calls"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--process", "nomodule_xyz:make"], "no module 'nomodule_xyz'"),
    (["--process", "usermod:missing"], "has no 'missing'"),
    (["--process", "usermod:not_callable"], "not callable"),
    (["--process", "usermod:score"], "raised"),
    (["--process", "not an import path"], "import path"),
    (["--process", "usermod:make_process", "--reward", "usermod:nope"], "has no 'nope'"),
    (["--process", "usermod:make_process"], "no default reward"),
])
def test_user_plugin_mistakes_are_one_line_errors(user_path, tmp_path, capsys, argv, needle):
    code = main(["sample", *argv, "--num-samples", "2", "--num-steps", "3", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("svdd: error:") and needle in err[0], err


def test_a_failing_user_reward_warns_and_exits_nonzero(user_path, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--process", "usermod:make_process", "--reward", "usermod:Broken", "--num-samples", "3",
                 "--num-steps", "4", "--num-candidates", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "my oracle is down" in err and "Traceback" not in err


def test_bench_suite_with_a_user_process_and_reward(user_path, tmp_path):
    from svdd.bench import read_runs, run_suite
    from svdd.report import build_report

    suite = {"name": "user-suite", "process": "usermod:make_process", "rewards": ["usermod:score"], "num_steps": 8,
             "num_samples": 6, "seeds": [0, 1], "budgets": [{"nfe": 32}],
             "methods": ["ancestral", "best-of-n", "svdd-pm"]}
    out = tmp_path / "bench"
    run_suite(suite, out, progress=False)
    runs = read_runs(out)
    assert len(runs) == 6 and all(r["status"] == "ok" for r in runs)
    assert {r["method"] for r in runs} == {"ancestral", "best-of-n", "svdd-pm"}
    med = {m: sorted(x for r in runs if r["method"] == m for x in r["rewards"])[6] for m in ("ancestral", "svdd-pm")}
    assert med["svdd-pm"] > med["ancestral"]
    assert build_report(out) is not None


def test_entry_point_domain_is_listed_and_usable(user_path, tmp_path, capsys):
    from svdd.domains import available_domains

    assert "plugdom" in available_domains()
    assert main(["list", "domains"]) == 0
    assert "plugdom" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["sample", "--domain", "plugdom", "--num-samples", "4", "--out", str(out), "--quiet"]) == 0
    table = rows(out / "samples.csv")
    assert list(table[0])[:3] == ["index", "word", "reward"] and set(table[0]["word"]) <= set("xyz")


def test_cli_subprocess_with_pythonpath(user_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{user_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "svdd.cli", "sample", "--process", "usermod:make_process", "--reward",
                           "usermod:score", "--num-samples", "3", "--num-steps", "4", "--out", str(tmp_path / "r"),
                           "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r" / "samples.safetensors").exists()
