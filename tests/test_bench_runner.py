"""Benchmark runner: budget matching (nfe within 10 % of the budget), resume, suite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from svdd import ALGORITHMS
from svdd.bench import (COST_MODELS, BenchError, exact_reference, load_suite, match_budget, plan_cells,
                        read_runs, run_suite, solve_knob)
from svdd.testing import GaussianMixtureToy, MaskedToy

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _suite(**over):
    base = {"name": "unit", "domain": "toy-gaussian", "num_steps": 10, "num_samples": 8, "seeds": [0, 1],
            "alpha": 1.0, "budget": {"nfe": 40},
            "methods": [{"method": "ancestral"}, {"method": "best-of-n"}, {"method": "svdd-pm"}]}
    base.update(over)
    return base


def test_solve_knob_picks_the_closest_integer():
    assert solve_knob(lambda k: 10 * k, 400) == 40
    assert solve_knob(lambda k: 1 + 9 * k, 400) == 44          # 397 beats 406
    assert solve_knob(lambda k: 10 * k, 3) == 1                 # below the smallest cost: k = 1


@pytest.mark.parametrize("algorithm", ["best-of-n", "svdd-pm", "svdd-r"])
@pytest.mark.parametrize("num_steps,budget", [(10, 40), (10, 95), (25, 400), (50, 800)])
def test_formula_prediction_within_10_percent(algorithm, num_steps, budget):
    m = match_budget(algorithm, {"nfe": budget}, num_steps, {"alpha": 0.0}, kind="gaussian")
    assert m["knob"] == ALGORITHMS[algorithm].budget_knob
    assert abs(m["predicted"] / budget - 1) <= 0.10


def test_budget_matcher_actual_nfe_within_10_percent(tmp_path):
    # every registered knob algorithm with an exact cost formula, run for real on the Gaussian toy
    # (dts / dts-star register an upper bound: their tree's cost depends on the draws, so it is calibrated)
    methods = [{"method": name} for name, spec in ALGORITHMS.items()
               if spec.budget_knob and name in COST_MODELS and "gaussian" in spec.kinds
               and COST_MODELS[name](2, 10, {"num_samples": 6}, "gaussian")["exact"]]
    methods = [m if m["method"] != "svdd-mc" else {"method": "svdd-mc", "value": "exact"} for m in methods]
    assert {m["method"] for m in methods} >= {"best-of-n", "svdd-pm", "svdd-mc", "svdd-r"}
    suite = _suite(methods=methods, budgets=[{"nfe": 50}, {"nfe": 130}], seeds=[0], num_samples=6)
    rows = read_runs(run_suite(suite, tmp_path, progress=False))
    assert len(rows) == 2 * len(methods) and all(r["status"] == "ok" for r in rows)
    for r in rows:
        target = r["budget"]["nfe"]
        actual = (r["counters"]["nfe"] + r["counters"].get("value_calls", 0)) / r["num_samples"]
        assert abs(actual / target - 1) <= 0.10, (r["variant"], actual, target)
        assert r["within_budget"] is True
        if r["knob_source"] == "formula":   # an exact formula predicts the cost; calibrated ones come close
            assert r["predicted"]["cost_per_sample"] == pytest.approx(r["actual"]["cost_per_sample"], rel=1e-6)


def test_calibration_meets_budget_without_a_formula(tmp_path, monkeypatch):
    monkeypatch.delitem(COST_MODELS, "best-of-n")
    suite = _suite(methods=[{"method": "best-of-n"}], budget={"nfe": 70}, seeds=[0])
    rows = read_runs(run_suite(suite, tmp_path, progress=False))
    (r,) = rows
    assert r["knob_source"] == "calibration" and r["knob_value"] == 7
    assert abs(r["actual"]["nfe_per_sample"] / 70 - 1) <= 0.10 and r["within_budget"]
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert len(cal) == 1 and next(iter(cal.values()))["cost"]["runs"] >= 1


def test_reward_call_budget(tmp_path):
    suite = _suite(methods=[{"method": "best-of-n"}], budget={"reward_calls": 6}, seeds=[0])
    (r,) = read_runs(run_suite(suite, tmp_path, progress=False))
    assert r["knob_value"] == 6 and r["actual"]["reward_calls_per_sample"] == 6


def test_resume_skips_finished_cells(tmp_path, monkeypatch):
    suite = _suite()
    path = run_suite(suite, tmp_path, progress=False)
    first = read_runs(path)
    assert len(first) == len(plan_cells(load_suite(suite))) == 6
    # simulate a run killed after two cells, mid-way through writing the third line
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    import svdd

    calls = []
    real = svdd.sample
    monkeypatch.setattr(svdd, "sample", lambda *a, **k: calls.append(k["method"]) or real(*a, **k))
    run_suite(suite, tmp_path, progress=False)
    rows = read_runs(path)
    assert len(calls) == 4                                      # only the four unfinished cells ran
    assert sorted(r["cell"] for r in rows) == sorted(r["cell"] for r in first)
    assert rows[:2] == first[:2]                                # finished lines untouched
    # identical seeds reproduce identical samples
    by_cell = {r["cell"]: r["rewards"] for r in first}
    assert all(by_cell[r["cell"]] == r["rewards"] for r in rows)
    calls.clear()
    run_suite(suite, tmp_path, progress=False)                  # nothing left to do
    assert calls == []
    with pytest.raises(BenchError, match="--resume"):
        run_suite(suite, tmp_path, resume=False, progress=False)


def test_unsupported_cells_are_recorded_not_run(tmp_path):
    suite = _suite(methods=[{"method": "svdd-mc"}], seeds=[0])
    (r,) = read_runs(run_suite(suite, tmp_path, progress=False))
    assert r["status"] == "unsupported" and "value" in r["reason"]


def test_suite_errors_are_one_line():
    with pytest.raises(BenchError, match="no hyperparameter 'num_particle'"):
        plan_cells(load_suite(_suite(methods=[{"method": "best-of-n", "num_particle": 3}])))
    with pytest.raises(BenchError, match="unknown suite keys"):
        load_suite(_suite(budjet={"nfe": 3}))
    with pytest.raises(BenchError, match="not found"):
        load_suite("/nonexistent/suite.yaml")


def test_alpha_and_sweeps_expand():
    suite = load_suite(_suite(methods=[{"method": "best-of-n"}, {"method": "svdd-pm", "sweep": {"alpha": [0.5, 2]}}],
                              seeds=[0]))
    cells = plan_cells(suite)
    variants = {c["variant"]["variant"]: c["variant"] for c in cells}
    assert set(variants) == {"best-of-n", "svdd-pm[alpha=0.5]", "svdd-pm[alpha=2]"}
    assert "alpha" not in variants["best-of-n"]["params"]
    assert variants["svdd-pm[alpha=2]"]["params"]["alpha"] == 2.0


def test_exact_reference_matches_the_toys():
    toy = GaussianMixtureToy.default()
    ref = exact_reference(toy, 1.0, 100)
    assert ref["target"]["mean"] == pytest.approx(toy.reward_mean(1.0))
    assert ref["pretrained"]["mean"] == pytest.approx(toy.reward_mean(None))
    means, stds, weights = toy.tilted(1.0)
    g = torch.Generator().manual_seed(0)
    comp = torch.multinomial(weights, 200_000, replacement=True, generator=g)
    draws = means[comp, 0] + stds[comp] * torch.randn(200_000, generator=g, dtype=torch.float64)
    assert ref["target"]["median"] == pytest.approx(float(draws.median()), abs=0.02)
    assert ref["target"]["top10"] == pytest.approx(float(draws.quantile(0.9)), abs=0.02)
    masked = MaskedToy()
    mref = exact_reference(masked, 0.5, 8)
    p = masked.tilted(0.5, 8)
    assert mref["target"]["mean"] == pytest.approx(float((p * masked.reward_table).sum()))


@pytest.mark.parametrize("path", sorted(BENCH_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_committed_suites_parse(path):
    import yaml

    raw = yaml.safe_load(path.read_text())
    variants = [False] + ([True] if raw.get("quick") else [])
    if not path.stem.endswith("-quick"):
        assert raw.get("hardware"), "full suites state their hardware"
        assert raw.get("quick") or (path.parent / f"{path.stem}-quick.yaml").exists(), "every suite has a quick variant"
    for quick in variants:
        suite = load_suite(path, quick=quick)
        assert suite["methods"] and suite["seeds"]
        if str(suite["domain"]).startswith("toy"):
            assert plan_cells(suite)
    if not raw.get("quick"):
        with pytest.raises(BenchError, match="no 'quick:'"):
            load_suite(path, quick=True)


def test_domain_metrics_get_alpha_and_num_steps_only_when_named():
    # a domain metric that forwards **options to a stricter function must not receive them
    from svdd.bench import _accepts

    def named(x0, decoded, process=None, alpha: float = 1.0, num_steps: int = 8):
        return {}

    def forwarding(x0, decoded, process=None, **options):
        return {}

    assert _accepts(named, "alpha", explicit=True) and _accepts(named, "num_steps", explicit=True)
    assert not _accepts(forwarding, "alpha", explicit=True)
    assert not _accepts(forwarding, "num_steps", explicit=True)
    assert _accepts(forwarding, "alpha")          # method hyperparameters still pass through **kwargs


def test_only_rewards_splits_a_suite_over_invocations(tmp_path):
    """Two invocations that each run one reward (as two processes on a multi-core machine would)
    leave the same cells and the same samples as one invocation running both."""
    suite = _suite(rewards=["linear", "0.5*linear"], methods=[{"method": "ancestral"}, {"method": "svdd-pm"}])
    whole = read_runs(run_suite(suite, tmp_path / "whole", progress=False))
    split = tmp_path / "split"
    first = read_runs(run_suite(suite, split, progress=False, only_rewards=["0.5*linear"]))
    assert {r["reward"] for r in first} == {"0.5*linear"} and len(first) == len(whole) // 2
    both = read_runs(run_suite(suite, split, progress=False, only_rewards=["linear"]))
    assert sorted(r["cell"] for r in both) == sorted(r["cell"] for r in whole)
    by_cell = {r["cell"]: r["rewards"] for r in whole}
    assert all(by_cell[r["cell"]] == r["rewards"] for r in both)
    with pytest.raises(BenchError, match="no reward 'qed'"):
        run_suite(suite, split, progress=False, only_rewards=["qed"])
    only = read_runs(run_suite(suite, tmp_path / "only", progress=False, only_methods=["svdd-pm"]))
    assert {r["variant"] for r in only} == {"svdd-pm"} and len(only) == len(whole) // 2
    with pytest.raises(BenchError, match="no method row 'dps'"):
        run_suite(suite, split, progress=False, only_methods=["dps"])


def test_fitted_value_uses_the_network_the_domain_designates(tmp_path):
    """`value: {fit: ...}` fits the domain's value network, as `svdd fit-value` does (the RNA
    suite used to fit the generic TokenValueNet instead of UTRValueNet); `network: default`
    keeps the generic one, and the two fits are cached under different keys."""
    import dataclasses

    from svdd.bench import _Context
    from svdd.domains import get_domain
    from svdd.values.learned import TokenValueNet, register_value_network

    @register_value_network
    class _DomainValueNet(torch.nn.Module):
        def __init__(self, vocab_size: int, seq_len: int):
            super().__init__()
            self.config = dict(vocab_size=vocab_size, seq_len=seq_len)
            self.embed = torch.nn.Embedding(vocab_size, 4)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x, t):
            return self.head(self.embed(x.long()).mean(1)).squeeze(-1) + 0 * t

    base = get_domain("toy-masked")
    domain = dataclasses.replace(base, extra={**base.extra, "value_network":
                                              lambda p: _DomainValueNet(p.vocab_size, p.seq_len)})
    ctx = _Context(load_suite(_suite(domain=domain, methods=[{"method": "ancestral"}])), tmp_path, "cpu")
    fit = {"num_rollouts": 16, "train_steps": 2, "num_steps": 4, "seed": 0}
    value, info = ctx.value_for({"value": {"fit": dict(fit)}, "params": {}}, base.default_reward)
    assert isinstance(value.network, _DomainValueNet) and info["options"]["network"] == "_DomainValueNet"
    generic, ginfo = ctx.value_for({"value": {"fit": {**fit, "network": "default"}}, "params": {}}, base.default_reward)
    assert isinstance(generic.network, TokenValueNet) and ginfo["id"] != info["id"]
    # a fresh context loads both from the cache
    again = _Context(load_suite(_suite(domain=domain, methods=[{"method": "ancestral"}])), tmp_path, "cpu")
    assert isinstance(again.value_for({"value": {"fit": dict(fit)}, "params": {}}, base.default_reward)[0].network,
                      _DomainValueNet)
    with pytest.raises(BenchError, match="network"):
        ctx.value_for({"value": {"fit": {**fit, "network": "cnn"}}, "params": {}}, base.default_reward)


def test_guide_runs_the_method_on_a_stand_in_and_scores_with_the_suite_reward(tmp_path):
    """`guide:` hands the algorithm another reward (here the same linear reward, so the scored
    and guide rewards must agree per sample); the cell id changes with it; a gradient method on
    a non-differentiable reward is recorded as unsupported with a hint to name a guide."""
    suite = _suite(methods=[{"method": "dps", "guidance_scale": 0.5, "guide": "linear"}], seeds=[0], budget=None)
    (r,) = read_runs(run_suite(suite, tmp_path / "a", progress=False))
    assert r["status"] == "ok" and r["guide"] == "linear"
    assert r["rewards"] == pytest.approx(r["guide_rewards"], abs=1e-6)
    plain = plan_cells(load_suite(_suite(methods=[{"method": "dps", "guidance_scale": 0.5}], seeds=[0], budget=None)))
    assert plain[0]["cell"] != plan_cells(load_suite(suite))[0]["cell"]
    mapped = _suite(methods=[{"method": "dps", "guidance_scale": 0.5, "guide": {"linear": "linear"}}], seeds=[0],
                    budget=None)
    (m,) = read_runs(run_suite(mapped, tmp_path / "m", progress=False))
    assert m["guide"] == "linear" and m["rewards"] == pytest.approx(r["rewards"], abs=1e-6)   # same seed, same guide
    masked = _suite(domain="toy-masked", num_steps=4, methods=[{"method": "dps"}], seeds=[0], budget=None)
    (u,) = read_runs(run_suite(masked, tmp_path / "b", progress=False))
    assert u["status"] == "unsupported" and "'guide:'" in u["reason"]


def test_every_cells_rewards_are_closed(tmp_path):
    """A fresh reward per cell must have its workers stopped when the cell ends (a docking pool is
    ~1 GB per Vina process): the runner calls ``close`` on the suite's reward and on a guide."""
    import dataclasses

    from svdd.domains.toys import GAUSSIAN_DOMAIN

    closed = {"n": 0, "made": 0}

    class Closable:
        differentiable, name, invalid_value = True, "closable", 0.0

        def __call__(self, x):
            return x.reshape(x.shape[0], -1)[:, 0]

        def close(self):
            closed["n"] += 1

    def make(arg=None, **_):
        closed["made"] += 1
        return Closable()

    domain = dataclasses.replace(GAUSSIAN_DOMAIN, rewards={"closable": (make, "test")}, default_reward="closable")
    suite = _suite(domain=domain, seeds=[0, 1], budget=None,
                   methods=[{"method": "ancestral"}, {"method": "dps", "guidance_scale": 0.5, "guide": "closable"}])
    rows = read_runs(run_suite(suite, tmp_path, progress=False))
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert closed["made"] >= 6 and closed["n"] == closed["made"]   # 2 ancestral + 2 × (reward + guide) + checks
