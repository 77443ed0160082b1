"""scripts/make_results.py: the issue-target checks read runs.jsonl and decide met / missed."""

import json

from script_loader import load_script


def _module():
    return load_script("scripts/make_results.py")


def _row(method, rewards, evals, diversity):
    return {"status": "ok", "suite": "rna-quick", "reward": "mrl", "variant": method, "budget_index": 0,
            "rewards": rewards, "eval_rewards": {"mrl-eval": evals}, "metrics": {"diversity": diversity}}


def _write(tmp_path, rows):
    run = tmp_path / "rna-quick"
    run.mkdir()
    (run / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_targets_met_and_missed_follow_the_medians(tmp_path):
    mod = _module()
    base = [0.0, 0.1, 0.2, 0.3, 0.4]
    rows = [_row("ancestral", base, base, 0.5),
            _row("best-of-n", [v + 0.5 for v in base], [v + 0.4 for v in base], 0.45),
            _row("smc", [v + 0.6 for v in base], [v + 0.95 for v in base], 0.3),
            _row("svdd-pm", [v + 1.0 for v in base], [v + 0.9 for v in base], 0.48)]
    md = mod.targets_md(_write(tmp_path, rows))
    lines = [ln for ln in md.splitlines() if ln.startswith("| 9 ")]
    assert len(lines) == 3
    assert "smc 1.15" in lines[0]                                         # 1.1 < 1.15 on the eval oracle
    assert lines[0].endswith("**missed** |")
    assert "+1 " in lines[1] and lines[1].endswith("**met** |")           # guidance median gain 1.0 >= 0.8
    assert "+0.9" in lines[2] and lines[2].endswith("**met** |")          # eval median gain 0.9 >= 0.8
    rows[3] = _row("svdd-pm", [v + 0.7 for v in base], [v + 0.7 for v in base], 0.48)
    (tmp_path / "rna-quick" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [ln for ln in mod.targets_md(tmp_path / "rna-quick").splitlines() if ln.startswith("| 9 ")]
    assert all(ln.endswith("**missed** |") for ln in lines)              # below smc, gains 0.7 < 0.8


def test_suites_without_targets_add_nothing(tmp_path):
    mod = _module()
    run = tmp_path / "toys-quick"
    run.mkdir()
    (run / "runs.jsonl").write_text("")
    assert mod.targets_md(run) == ""
