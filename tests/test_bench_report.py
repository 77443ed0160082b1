"""Benchmark report and statistics: tables from a tiny hand-made run directory, bootstrap CIs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svdd.metrics.stats import bootstrap_ci, quantile_summary, spread
from svdd.report import build_report


def _row(variant, seed, rewards, *, algorithm=None, alpha=None, budget_index=0, nfe=40.0, value_training=None,
         metrics=None, status="ok", **extra):
    algorithm = algorithm or variant
    n = len(rewards)
    budget = {"nfe": 40} if budget_index is not None else None
    natural = algorithm == "ancestral"
    return {"schema": 1, "suite": "fake", "cell": f"r|{budget_index}|{variant}|seed{seed}", "status": status,
            "domain": "toy-gaussian", "model": "mixture", "reward": "linear", "method": variant, "variant": variant,
            "algorithm": algorithm, "sweep": extra.pop("sweep", {}), "alpha": alpha, "alpha_dependent": alpha is not None,
            "seed": seed, "num_samples": n, "num_steps": 10, "budget": None if natural else budget,
            "budget_index": None if natural else budget_index, "environment": {"device": "cpu", "git_revision": "abc"},
            "knob": None if natural else "num_candidates", "knob_value": None if natural else 4,
            "knob_source": "natural" if natural else "formula",
            "actual": {"nfe_per_sample": nfe, "cost_per_sample": nfe, "reward_calls_per_sample": nfe / 10,
                       "value_calls_per_sample": 0.0, "grad_passes_per_sample": 0.0},
            "budget_error": None if natural else nfe / 40 - 1,
            "timings": {"sample_s": 1.5}, "value_training": value_training, "rewards": list(map(float, rewards)),
            "eval_rewards": extra.pop("eval_rewards", {}), "metrics": metrics or {}, "reference": None, **extra}


def _table(md: str, title_part: str) -> dict[str, dict[str, str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and title_part in line)
    rows = [line for line in lines[start:] if line.startswith("|")]
    end = next((i for i, line in enumerate(rows[2:], 2) if not line.startswith("|")), len(rows))
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for line in rows[2:end]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(head):
            break
        out[cells[0]] = dict(zip(head, cells))
    return out


@pytest.fixture
def fake_dir(tmp_path):
    vt = {"id": "v1", "kind": "fit", "nfe": 1000, "reward_calls": 100, "wall_time_s": 2.0}
    rows = [
        _row("ancestral", 0, [1, 2, 3, 4, 5], nfe=10.0),
        _row("ancestral", 1, [1, 2, 3, 4, 5], nfe=10.0),
        _row("best-of-n", 0, [3, 4, 5, 6, 7]),
        _row("best-of-n", 1, [5, 6, 7, 8, 9], nfe=50.0, metrics={"diversity": 0.5}),
        _row("random-search", 0, [1, 1, 1, 1, 1], eval_rewards={"held-out": [0.0, 1.0, 2.0, 3.0, 4.0]}),
        _row("svdd-pm", 0, [10] * 5, alpha=0.0, metrics={"diversity": 0.2}),
        _row("svdd-mc", 0, [8] * 5, alpha=1.0, value_training=vt),
        _row("svdd-mc", 1, [8] * 5, alpha=1.0, value_training=vt),
        {"suite": "fake", "cell": "x", "status": "unsupported", "variant": "dps", "reward": "linear",
         "reason": "dps needs a differentiable reward"},
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "suite.yaml").write_text("name: fake\nhardware: a test\n")
    return tmp_path


def test_report_table_from_fake_runs(fake_dir):
    md = build_report(fake_dir, figures=True)
    assert (fake_dir / "report.md").read_text() == md
    t = _table(md, "budget: nfe 40")
    assert list(t) == ["ancestral", "best-of-n", "random-search", "svdd-mc", "svdd-pm"]  # pretrained first
    # an evaluation oracle scored on the same samples gets its own columns
    assert t["random-search"]["eval held-out: median [95% CI]"].startswith("2.00 [")
    assert t["random-search"]["eval held-out: top-10%"] == "3.60" and t["best-of-n"]["eval held-out: top-10%"] == "–"
    # pooled over seeds: best-of-n = [3..7] + [5..9] -> median 6, 0.9-quantile 8.1
    assert t["best-of-n"]["median [95% CI]"].startswith("6.00 [")
    assert t["best-of-n"]["top-10% [95% CI]"].startswith("8.10 [")
    assert t["best-of-n"]["n (seeds)"] == "10 (2)"
    assert t["best-of-n"]["per-seed median (min–max)"] == "5.00 to 7.00"
    assert t["best-of-n"]["Δ median vs pretrained"] == "+3"
    assert t["svdd-pm"]["median [95% CI]"] == "10.0 [10.0, 10.0]"
    assert t["ancestral"]["cost / sample (vs budget)"] == "10.0 (natural)"
    # worst budget error of the two seeds (+25 %) is flagged
    assert t["best-of-n"]["cost / sample (vs budget)"] == "45.0 (+25.0%) ⚠"
    assert t["svdd-pm"]["cost / sample (vs budget)"] == "40.0 (+0.0%)"
    # value training: 1000 nfe amortised over the 10 samples it served
    assert t["svdd-mc"]["value training / sample (amortised)"].startswith("100.0 nfe, 10.0 reward calls (1000 nfe, 2.00 s over 10 samples)")
    assert t["best-of-n"]["diversity"] == "0.500" and t["svdd-pm"]["diversity"] == "0.200"
    assert t["best-of-n"]["wall s / run"] == "1.50"
    # svdd-pm (alpha 0) and svdd-mc (alpha 1) are not compared at one target: said plainly
    assert "alpha differs" in md
    assert "| x | unsupported | dps needs a differentiable reward |" in md
    assert (fake_dir / "figures" / "linear_reward_vs_cost.png").stat().st_size > 1000
    assert (fake_dir / "figures" / "linear_distributions.png").exists()
    assert (fake_dir / "figures" / "linear_reward_vs_diversity.png").exists()


def test_report_same_alpha_is_stated(tmp_path):
    rows = [_row("svdd-pm", 0, [1, 2, 3], alpha=0.5), _row("svdd-r", 0, [2, 3, 4], alpha=0.5), _row("best-of-n", 0, [1, 1, 1])]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = build_report(tmp_path, figures=False)
    assert "alpha = 0.5 for every alpha-dependent method." in md and "differs" not in md


def test_report_paper_reference_rows(tmp_path):
    rows = [_row("ancestral", 0, [0.5, 0.6, 0.7], nfe=10.0), _row("svdd-pm", 0, [0.8, 0.9, 1.0], alpha=0.0)]
    for r in rows:
        r["reward"] = "qed"
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "suite.yaml").write_text("name: fake\nreference: {qed: molecule-qed}\n")
    md = build_report(tmp_path, figures=False)
    assert "arXiv 2408.08252" in md
    assert "| svdd-pm | 0.848 | 0.928 | +0.192 | +0.3 |" in md


def test_bootstrap_ci_is_reproducible_and_covers():
    x = np.random.default_rng(0).normal(size=400)
    est, lo, hi = bootstrap_ci(x, 0.5, seed=3)
    assert bootstrap_ci(x, 0.5, seed=3) == (est, lo, hi)
    assert lo < est < hi and lo < 0 < hi
    # width of a median CI for n = 400 normals: 2 · 1.96 · sqrt(pi/2) / sqrt(400) ≈ 0.246
    assert 0.15 < hi - lo < 0.35
    # frequentist coverage of the true median over repeated experiments ≈ 95 %
    rng = np.random.default_rng(1)
    cover = [lo <= 0.0 <= hi for lo, hi in (bootstrap_ci(rng.normal(size=100), 0.5, 300, seed=i)[1:] for i in range(100))]
    assert 0.85 <= np.mean(cover) <= 1.0


def test_quantile_summary_drops_non_finite():
    s = quantile_summary([1.0, 2.0, 3.0, float("nan"), float("-inf")])
    assert s["n"] == 3 and s["non_finite"] == 2 and s["median"] == 2.0 and s["top10"] == pytest.approx(2.8)
    assert s["median_ci"][0] <= 2.0 <= s["median_ci"][1]
    empty = quantile_summary([])
    assert empty["n"] == 0 and np.isnan(empty["median"])
    assert spread([[1, 2, 3], [3, 4, 5]])["values"] == [2.0, 4.0]


def test_paper_rows_show_every_swept_variant_of_a_method():
    """A method that only ran as a sweep (dps at several guidance scales) gets the gain of every
    variant beside the paper's, not a dash and not a best-of pick."""
    from svdd.report import _paper_md

    def s(variant, algorithm, median):
        return {"variant": variant, "algorithm": algorithm, "median": (median, median - 0.01, median + 0.01)}

    md = _paper_md("molecule-qed", [s("ancestral", "ancestral", 0.5), s("svdd-pm", "svdd-pm", 0.8),
                                    s("dps[guidance_scale=3]", "dps", 0.52), s("dps[guidance_scale=30]", "dps", 0.45)])
    assert "| dps | 0.679 | 0.842 | +0.023 | +0.02 (guidance_scale=3), -0.05 (guidance_scale=30) |" in md
    assert "| svdd-pm | 0.848 | 0.928 | +0.192 | +0.3 |" in md and "| smc | 0.667 | 0.722 | -0.011 | – |" not in md
