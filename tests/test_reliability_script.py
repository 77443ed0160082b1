"""scripts/reliability.py: the page is rendered from the probes' JSON files only, and its verdicts
follow the counts (fast: no probe is run here)."""

import json
from pathlib import Path

import pytest

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rel():
    return load_script("scripts/reliability.py", "reliability_script")


def _probe(name, cases, counts, **extra):
    survived = sum(c["survived"] for c in cases)
    return {"probe": name, "title": name, "tried": len(cases), "survived": survived, "lost": len(cases) - survived,
            "counts": counts, "sizes": {"trials": len(cases)}, "notes": [], "git_revision": "abc1234",
            "finished_utc": "2026-12-01 18:15 UTC", "wall_s": 12.0, "host_cpu_count": 2,
            "command": f"python scripts/reliability.py {name}", "cases": cases, **extra}


def _write(folder: Path, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, d in data.items():
        (folder / f"{name}.json").write_text(json.dumps(d))


def _all_good(n_kill=25):
    ok = lambda i: {"id": f"case {i}", "survived": True, "reason": ""}  # noqa: E731
    return {
        "malformed": _probe("malformed", [ok(i) for i in range(130)], {"tracebacks": 0, "hangs": 0}),
        "kill": _probe("kill", [ok(i) for i in range(n_kill)], {"identical": n_kill, "differing": 0,
                                                                "failed_to_resume": 0, "tracebacks": 0, "hangs": 0}),
        "tamper": _probe("tamper", [ok(i) for i in range(40)], {"markers": 0, "outside_modified": 0, "tracebacks": 0}),
        "concurrent": _probe("concurrent", [ok(i) for i in range(8)], {"silent_overwrites": 0, "tracebacks": 0}),
        "rewards": _probe("rewards", [{"id": f"toy-masked / {m} / {f}", "survived": True, "reason": ""}
                                      for m in ("svdd-pm", "dps") for f in ("nan", "hang")],
                          {"crashes": 0, "wrong_shape_accepted": 0, "hangs": 0, "tracebacks": 0}),
    }


def _target_rows(md: str) -> dict:
    rows = {}
    section = md.split("## Targets", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("target", "---"):
            rows[cells[0]] = cells[2]
    return rows


def test_render_all_targets_met(rel, tmp_path):
    _write(tmp_path, _all_good())
    md = rel.render(tmp_path)
    assert "python scripts/reliability.py all && python scripts/reliability.py render" in md
    assert "do not edit by hand" in md
    verdicts = _target_rows(md)
    assert len(verdicts) == 6 and all(v == "**met**" for v in verdicts.values()), verdicts
    # the summary table: probe -> tried / survived / lost
    assert "| 130 | 130 | 0 |" in md and "| 25 | 25 | 0 |" in md
    assert "| svdd-pm | 1/1 | 1/1 |" in md      # the method x fault matrix of the rewards probe


def test_render_misses_follow_the_counts(rel, tmp_path):
    data = _all_good(n_kill=24)                    # fewer than 25 trials is a miss even if all identical
    lost = {"id": "trial 03 toy-masked/local", "survived": False, "reason": "differs: samples.csv",
            "repro": "svdd sample --domain toy-masked ... --resume"}
    data["kill"]["cases"].append(lost)
    data["kill"].update(tried=25, lost=1)
    data["tamper"]["counts"]["markers"] = 1
    data["concurrent"]["counts"]["silent_overwrites"] = 2
    data["malformed"]["counts"]["tracebacks"] = 3
    _write(tmp_path, data)
    md = rel.render(tmp_path)
    v = _target_rows(md)
    assert v["0 tracebacks"] == "**missed**" and v["0 foreign code run"] == "**missed**"
    assert v["25 of 25 identical resumes after `kill -9`"] == "**missed**"
    assert v["0 silent overwrites"] == "**missed**" and v["0 hangs"] == "**met**"
    assert "trial 03 toy-masked/local" in md and "svdd sample --domain toy-masked ... --resume" in md


def test_render_says_what_was_not_run(rel, tmp_path):
    data = _all_good()
    del data["rewards"], data["kill"]
    _write(tmp_path, data)
    md = rel.render(tmp_path)
    v = _target_rows(md)
    assert v["0 crashes from reward faults (wrong shape: a clean `RewardError`)"].startswith("not run")
    assert v["25 of 25 identical resumes after `kill -9`"].startswith("not run")
    assert rel.render(tmp_path / "empty").count("No probe results committed yet") == 1


def test_error_line_judge(rel):
    ok = {"stderr": "svdd: error: --seed must be >= 0\n", "stdout": ""}
    assert rel.one_line_error(ok)
    two = {"stderr": "svdd: error: a\nsvdd: error: b\n", "stdout": ""}
    tb = {"stderr": "Traceback (most recent call last):\n  File x\nValueError: boom\n", "stdout": ""}
    assert not rel.one_line_error(two) and not rel.one_line_error(tb) and rel.has_traceback(tb)
    assert rel.brief(tb["stderr"]) == "ValueError: boom"


def test_committed_page_is_up_to_date(rel):
    results = ROOT / "benchmarks" / "results" / "reliability"
    page = ROOT / "docs" / "reliability.md"
    if not any(results.glob("*.json")) or not page.exists():
        pytest.skip("no committed reliability results yet")
    assert page.read_text() == rel.render(results), "run `python scripts/reliability.py render`"


def test_kill_moments_classify_each_kill(rel):
    d = {"cases": [{"shards_total": 32, "shards_at_kill": [0, 0, 7]}, {"shards_total": 32, "shards_at_kill": [32]}]}
    (line, _) = rel._kill_moments(d)
    assert "4 kills landed: 2 before any shard" in line and "1 amid the shard writes, 1 after the last shard" in line
