"""Report outputs and figures: `svdd report RUN --output DIR` leaves the run folder untouched
(read-only works) and prints the path; a distinct (colour, marker) per method; points at one
budget spread apart; log axes with at least two labelled ticks; an evaluation-oracle figure
for suites with eval_rewards; image grids that differ for small n and carry rank and reward."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from svdd.report import dodge_factors, log_ticks, method_styles


def _row(variant, seed, rewards, *, nfe=40.0, budget_index=0, eval_rewards=None, metrics=None):
    natural = variant == "ancestral"
    return {"schema": 1, "suite": "fake", "cell": f"r|{budget_index}|{variant}|seed{seed}", "status": "ok",
            "domain": "toy-gaussian", "model": "mixture", "reward": "linear", "method": variant, "variant": variant,
            "algorithm": variant, "sweep": {}, "alpha": None, "alpha_dependent": False, "seed": seed,
            "num_samples": len(rewards), "num_steps": 10, "budget": None if natural else {"nfe": 40},
            "budget_index": None if natural else budget_index, "environment": {"device": "cpu"},
            "knob": None, "knob_value": None, "knob_source": "natural" if natural else "formula",
            "actual": {"nfe_per_sample": nfe, "cost_per_sample": nfe, "reward_calls_per_sample": 1.0,
                       "value_calls_per_sample": 0.0, "grad_passes_per_sample": 0.0},
            "budget_error": None if natural else nfe / 40 - 1, "timings": {"sample_s": 1.0},
            "value_training": None, "rewards": list(map(float, rewards)), "eval_rewards": eval_rewards or {},
            "metrics": metrics or {}, "reference": None}


@pytest.fixture
def run_dir(tmp_path):
    """Five methods at exactly one cost (they would hide each other) and an evaluation oracle."""
    rng = np.random.default_rng(0)
    rows = [_row("ancestral", 0, rng.normal(size=8), nfe=10.0,
                 eval_rewards={"linear-eval": rng.normal(size=8).tolist()}, metrics={"diversity": 0.8})]
    for i, v in enumerate(["best-of-n", "smc", "svdd-pm", "svdd-r", "svdd-exact-value"]):
        rows.append(_row(v, 0, [1.0] * 8, eval_rewards={"linear-eval": (rng.normal(size=8) + i).tolist()},
                         metrics={"diversity": 0.5}))
    d = tmp_path / "run"
    d.mkdir()
    (d / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "suite.yaml").write_text("name: fake\n")
    return d


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def _read_only(path):
    for p in [path, *path.rglob("*")]:
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(path):
    for p in [path, *path.rglob("*")]:
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) | stat.S_IWUSR)


def test_report_output_dir_leaves_a_read_only_run_folder_untouched(run_dir, tmp_path, capsys):
    from svdd.cli import main

    before = _tree(run_dir)
    _read_only(run_dir)
    try:
        if os.access(run_dir, os.W_OK):          # root ignores permissions: the tree check still holds
            pass
        out = tmp_path / "out"
        assert main(["report", str(run_dir), "--output", str(out)]) == 0
        printed = capsys.readouterr().out.strip()
        assert printed == f"wrote {out / 'report.md'}"                  # the path, not the markdown
        assert _tree(run_dir) == before                                # nothing written into the run folder
        md = (out / "report.md").read_text()
        figs = sorted(p.name for p in (out / "figures").iterdir())
        assert "linear_reward_vs_cost.png" in figs and "linear_eval_oracle.png" in figs
        assert "](figures/linear_reward_vs_cost.png)" in md          # links relative to the markdown
        # a path ending in .md is the markdown file, with figures/ beside it
        assert main(["report", str(run_dir), "--output", str(tmp_path / "elsewhere" / "r.md")]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'elsewhere' / 'r.md'}"
        assert (tmp_path / "elsewhere" / "figures" / "linear_distributions.png").exists()
        assert _tree(run_dir) == before
    finally:
        _writable(run_dir)
    # without --output: as before, beside the runs
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run_dir / 'report.md'}"
    assert (run_dir / "figures" / "linear_reward_vs_cost.png").exists()


def test_report_into_a_read_only_run_folder_is_a_one_line_error(run_dir, capsys):
    from svdd.cli import main

    _read_only(run_dir)
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(SystemExit) as exc:
            main(["report", str(run_dir)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("svdd: error: cannot write the report") and "--output DIR" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        _writable(run_dir)


def test_palette_gives_25_methods_distinct_colour_and_marker_pairs():
    names = ["ancestral", "best-of-n", "smc", "svdd-pm", "svdd-r"] + [f"dps[guidance_scale={s}]" for s in range(20)]
    styles = method_styles(names)
    assert len(styles) == 25 and len(set(styles.values())) == 25
    # up to 16 methods every colour differs; the shipped methods keep their style in any company
    sixteen = method_styles(names[:16])
    assert len({c for c, _ in sixteen.values()}) == 16
    assert method_styles(["svdd-pm"])["svdd-pm"] == styles["svdd-pm"]
    assert method_styles(["svdd-r", "ancestral"])["ancestral"] == styles["ancestral"]


def test_dodge_spreads_methods_at_one_budget_and_leaves_lone_points():
    same = {v: (100.0, 1.0) for v in ["best-of-n", "smc", "svdd-pm", "svdd-r", "svdd-exact-value"]}
    f = dodge_factors(same, y_tol=0.05)
    assert len(set(f.values())) == 5                         # five distinct x positions
    assert max(f.values()) / min(f.values()) < 10 ** 0.2      # still near the budget (< 0.2 decades)
    apart = dodge_factors({"a": (100.0, 0.0), "b": (100.0, 5.0), "c": (1000.0, 0.0)}, y_tol=0.05)
    assert set(apart.values()) == {1.0}                      # nothing hides anything: nothing moves


@pytest.mark.parametrize("lo,hi", [(57.0, 72.0), (8.0, 130.0), (100.0, 3300.0), (0.25, 4.0), (900.0, 905.0)])
def test_log_ticks_have_at_least_two_labels_in_range(lo, hi):
    t = log_ticks(lo, hi)
    assert len(t) >= 2 and all(lo <= v <= hi for v in t) and len(set(t)) == len(t)


def test_figures_have_titles_readable_log_ticks_and_an_oracle_panel(run_dir, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from svdd import report

    saved = {}
    real = report._save_figure

    def keep(fig, path):
        fig.canvas.draw()
        saved[path.name] = [(ax.get_title(), ax.get_xscale(),
                             [t.get_text() for t in ax.get_xticklabels() if t.get_text()
                              and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]])
                            for ax in fig.axes if ax.get_visible()], fig._suptitle.get_text() if fig._suptitle else ""
        real(fig, path)

    report._save_figure = keep
    try:
        report.build_report(run_dir, tmp_path / "r" / "report.md")
    finally:
        report._save_figure = real
        plt.close("all")
    axes, suptitle = saved["linear_reward_vs_cost.png"]
    assert "fake" in suptitle and "median" in suptitle                              # suite and statistic
    assert [a[0] for a in axes] == ["guidance reward `linear`",
                                    "evaluation oracle `linear-eval` (held out, same samples)"]
    for title, scale, ticks in axes:
        assert scale == "log" and len(ticks) >= 2, (title, ticks)
    assert "linear_eval_oracle.png" in saved and "linear_reward_vs_diversity.png" in saved
    assert len(saved["linear_distributions.png"][0]) == 2                         # oracle panel beside


def test_image_grids_differ_for_small_n_and_carry_rank_and_reward(tmp_path):
    from PIL import Image

    from svdd.domains.images import DOMAIN
    from svdd.domains.images.viz import grid_selection, ranks, tile_labels

    r = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5, 1.5, -2.0, 0.0, 1.0, 2.5, -0.5, 0.7])
    sel = grid_selection(r)
    assert sel["best"].tolist() == [1, 9, 3]                                    # top k = 12 // 4 = 3
    assert not set(sel["best"].tolist()) & set(sel["median"].tolist())
    assert sel["samples"].tolist() == list(range(12))                            # all, in sample order
    assert ranks(r)[1] == 1 and ranks(r)[6] == 12
    assert tile_labels(r, torch.tensor([9])) == ["#2\n2.5"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1
    files = DOMAIN.write_files(tmp_path, x, [""] * 12, r, {"reward": "brightness", "method": "svdd-pm",
                                                            "baseline_x0": -x, "baseline_rewards": -r})
    names = [p.name for p in files]
    assert names[:3] == ["best.png", "median.png", "samples.png"]
    assert {"baseline_best.png", "baseline_median.png", "baseline_samples.png", "compare.png"} <= set(names)
    imgs = {n: np.asarray(Image.open(tmp_path / n)) for n in ("best.png", "median.png", "samples.png")}
    assert imgs["best.png"].shape != imgs["samples.png"].shape                 # 3 tiles vs 12
    assert not np.array_equal(imgs["best.png"], imgs["median.png"])
    # the caption strip under the tiles holds dark text pixels (rank and reward)
    tile_bottom = imgs["best.png"].shape[0] - 1
    assert (imgs["best.png"][tile_bottom - 20:tile_bottom] < 128).any()
    compare = Image.open(tmp_path / "compare.png")
    assert compare.width > Image.open(tmp_path / "best.png").width * 1.9       # baseline beside the method
