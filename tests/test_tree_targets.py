"""benchmarks/tree_targets.py: issue 17's target arithmetic on hand-made run records (pure logic)."""

import json
from pathlib import Path

from script_loader import load_script


def _module():
    return load_script("benchmarks/tree_targets.py")


def _row(method, budget_index, nfe, rewards, seed=0, eval_rewards=None):
    return {"status": "ok", "reward": "r", "budget_index": budget_index, "budget": {"nfe": [100, 300][budget_index]},
            "method": method, "variant": method,
            "seed": seed, "actual": {"cost_per_sample": nfe}, "rewards": rewards,
            "eval_rewards": {"oracle": eval_rewards} if eval_rewards is not None else {},
            "metrics": {"diversity": 0.5}}


def _write(folder: Path, rows):
    folder.mkdir(parents=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_targets_counted_per_domain_on_the_held_out_oracle(tmp_path):
    m = _module()
    # dna: treeg beats svdd-pm on the oracle at both budgets (although not on the guided reward) and reaches
    # best-of-n's top-budget median (1.0 at nfe 300) at nfe 100 = 1/3 of it -> A and B hold
    _write(tmp_path / "tree-dna", [
        _row("svdd-pm", 0, 100, [9, 9, 9], eval_rewards=[0.5, 0.6, 0.7]),
        _row("svdd-pm", 1, 300, [9, 9, 9], eval_rewards=[0.8, 0.9, 1.0]),
        _row("treeg", 0, 100, [0, 0, 0], eval_rewards=[1.0, 1.1, 1.2]),
        _row("treeg", 1, 300, [0, 0, 0], eval_rewards=[1.2, 1.3, 1.4]),
        _row("best-of-n", 0, 100, [0, 0, 0], eval_rewards=[0.1, 0.2, 0.3]),
        _row("best-of-n", 1, 300, [0, 0, 0], eval_rewards=[0.9, 1.0, 1.1]),
    ])
    # rna: dts beats svdd-pm at the small budget only -> A fails; it reaches best-of-n at 0.5 of its nfe -> B fails
    _write(tmp_path / "tree-rna", [
        _row("svdd-pm", 0, 100, [1.0]), _row("svdd-pm", 1, 200, [3.0]),
        _row("dts", 0, 100, [1.5]), _row("dts", 1, 200, [2.0]),
        _row("best-of-n", 0, 100, [0.5]), _row("best-of-n", 1, 200, [1.5]),
    ])
    lines, verdict = m.evaluate(tmp_path)
    assert verdict["dna"] == {"A": [True], "A_diverse": [True], "B": [True], "run": [True]}
    assert verdict["rna"] == {"A": [False], "A_diverse": [False], "B": [False], "run": [True]}
    assert verdict["images"]["run"] == [False]
    dna = next(line for line in lines if line.startswith("| dna"))
    assert "r (oracle)" in dna and "treeg at nfe 100 (0.33 of it)" in dna
    text = "\n".join(m.summary(verdict))
    assert "**A** (some tree method's median above svdd-pm's at every budget): 1 of 5 domains (dna)" in text
    assert "missed" in text and "Not (fully) run, so not counted: toys, molecules, images." in text


def test_a_win_by_a_collapsed_method_does_not_count_for_the_diversity_check(tmp_path):
    m = _module()
    collapsed = dict(_row("treeg", 0, 100, [2.0, 2.0]), metrics={"diversity": 0.1})   # < 0.8 x svdd-pm's 0.5
    _write(tmp_path / "tree-dna", [_row("svdd-pm", 0, 100, [1.0, 1.5]), collapsed, _row("dsearch", 0, 100, [1.0, 1.2]),
                                   _row("best-of-n", 0, 300, [5.0])])
    _, verdict = m.evaluate(tmp_path)
    assert verdict["dna"]["A"] == [True] and verdict["dna"]["A_diverse"] == [False]


def test_ties_do_not_count_as_beating_svdd_pm(tmp_path):
    m = _module()
    _write(tmp_path / "tree-images", [
        _row("svdd-pm", 0, 100, [1.0, 2.0]), _row("dsearch", 0, 100, [1.0, 2.0]),
        _row("best-of-n", 0, 300, [5.0]),
    ])
    _, verdict = m.evaluate(tmp_path)
    assert verdict["images"]["A"] == [False] and verdict["images"]["B"] == [False]
