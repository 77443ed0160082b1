"""Regenerate docs/results.md from the committed benchmark outputs under benchmarks/results/.

    python scripts/make_results.py            # rewrite docs/results.md (+ each report.md and figures)
    python scripts/make_results.py --check    # exit 1 if docs/results.md is out of date

Every number in docs/results.md comes from a runs.jsonl written by `svdd bench`; nothing is
typed by hand. The SVDD paper's published numbers are printed as cited reference rows where a
suite maps a reward to a paper task (see svdd.report.PAPER_REFERENCE).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ORDER = ["toys-quick", "toys", "toys-quick-full", "svdd-m-sweep", "svdd-alpha-sweep", "toys-masked",
         "molecules", "molecules-bpe", "molecules-rings", "molecules-docking", "molecules-docking-bpe",
         "molecules-docking-rings", "dna", "rna", "images", "images-dno-curve", "images-flow",
         "tree-toys", "tree-toys-masked", "tree-molecules", "tree-dna", "tree-rna", "tree-images"]


# The issues' acceptance targets, checked on the committed runs (pooled over seeds; medians and
# top-10 % are the 0.5 / 0.9 quantiles, as in the tables). Each check names a suite (its base name:
# "molecules" covers "molecules" and "molecules-quick"), a reward, and a statistic; "score" is the
# guidance reward ("reward") or an evaluation reward's name.
TARGETS: dict[str, list[dict]] = {
    "molecules": [
        {"issue": 5, "kind": "above", "reward": "qed", "method": "svdd-pm", "others": ["best-of-n"]},
        {"issue": 5, "kind": "above", "reward": "sa", "method": "svdd-pm", "others": ["best-of-n"]},
        {"issue": 5, "kind": "at_least", "reward": "qed", "method": "svdd-pm", "stat": "top10", "threshold": 0.94},
    ],
    "molecules-docking": [
        {"issue": 5, "kind": "above", "reward": "docking:parp1", "method": "svdd-pm", "others": ["best-of-n"]},
        {"issue": 5, "kind": "gain_at_least", "reward": "docking:parp1", "method": "svdd-pm", "threshold": 4.25},
    ],
    "dna": [
        {"issue": 6, "kind": "above", "reward": "hepg2", "score": "hepg2-eval", "method": "svdd-pm",
         "others": ["best-of-n", "smc"]},
        {"issue": 6, "kind": "metric_within", "reward": "hepg2", "metric": "diversity", "method": "svdd-pm",
         "tolerance": 0.05},
        {"issue": 6, "kind": "eval_fraction", "reward": "hepg2", "score": "hepg2-eval", "method": "svdd-pm",
         "fraction": 0.7},
    ],
    "images": [
        {"issue": 7, "kind": "above", "reward": "compressibility", "method": "svdd-pm", "others": ["best-of-n"]},
        {"issue": 7, "kind": "above", "reward": "classifier:0", "method": "svdd-pm", "others": ["best-of-n"]},
    ],
    "images-flow": [
        {"issue": 15, "kind": "above", "reward": "compressibility", "method": "svdd-pm", "others": ["best-of-n", "smc"]},
        {"issue": 15, "kind": "above", "reward": "classifier:0", "method": "svdd-pm", "others": ["best-of-n", "smc"]},
    ],
    "rna": [
        {"issue": 9, "kind": "above", "reward": "mrl", "score": "mrl-eval", "method": "svdd-pm",
         "others": ["best-of-n", "smc"]},
        {"issue": 9, "kind": "gain_at_least", "reward": "mrl", "method": "svdd-pm", "threshold": 0.8},
        {"issue": 9, "kind": "gain_at_least", "reward": "mrl", "score": "mrl-eval", "method": "svdd-pm",
         "threshold": 0.8},
    ],
}


# issue 18: the same targets on the reruns of both molecule suites on the moses-selfies-bpe and
# moses-ring-systems models
for _model in ("bpe", "rings"):
    TARGETS[f"molecules-{_model}"] = [dict(t, issue=18) for t in TARGETS["molecules"]]
    TARGETS[f"molecules-docking-{_model}"] = [dict(t, issue=18) for t in TARGETS["molecules-docking"]]


def _base(name: str) -> str:
    return name[:-len("-quick")] if name.endswith("-quick") else name


def _pooled(rows: list[dict], reward: str, method: str, score: str = "reward", budget_index=None):
    import numpy as np

    sel = [r for r in rows if r.get("status") == "ok" and r.get("reward") == reward and r.get("variant") == method
           and (budget_index is None or r.get("budget_index") in (None, budget_index))]
    if score == "reward":
        vals = [v for r in sel for v in r.get("rewards", [])]
    else:
        vals = [v for r in sel for v in (r.get("eval_rewards") or {}).get(score, [])]
    x = np.asarray([v for v in vals if v is not None], dtype=float)
    return x[np.isfinite(x)], sel


def _check(rows: list[dict], t: dict) -> tuple[str, str, str]:
    """(target text, measured text, verdict) for one target on one run folder."""
    import numpy as np
    from svdd.metrics.stats import bootstrap_ci
    from svdd.report import _fmt

    reward, m, score = t["reward"], t["method"], t.get("score", "reward")
    on = "" if score == "reward" else f" on `{score}`"
    budgets = sorted({r.get("budget_index") for r in rows if r.get("reward") == reward and r.get("variant") == m
                      and r.get("status") == "ok" and r.get("budget_index") is not None}) or [None]
    b = budgets[-1]                            # the largest budget at which the method ran
    budget = next((r.get("budget") for r in rows if b is not None and r.get("budget_index") == b), None)
    at = "" if not budget else " (" + ", ".join(f"{k} {v:g}" for k, v in budget.items()) + ")"
    x, _ = _pooled(rows, reward, m, score, b)
    if x.size == 0:
        return (f"`{reward}`: {m}", "no runs", "not run")

    def med(v):
        e, lo, hi = bootstrap_ci(v, 0.5)
        return e, f"{_fmt(e)} [{_fmt(lo)}, {_fmt(hi)}]"

    if t["kind"] == "above":
        mine, mine_s = med(x)
        parts, ok = [f"{m} {mine_s}"], True
        for o in t["others"]:
            y, _ = _pooled(rows, reward, o, score, b)
            if y.size == 0:
                parts.append(f"{o}: not run")
                ok = False
                continue
            e, s_ = med(y)
            parts.append(f"{o} {s_}")
            ok = ok and mine > e
        return (f"`{reward}`{on}: {m} median above {', '.join(t['others'])} at equal nfe{at}",
                "; ".join(parts), "met" if ok else "missed")
    if t["kind"] == "at_least":
        q = {"top10": 0.9, "median": 0.5}[t.get("stat", "median")]
        e, lo, hi = bootstrap_ci(x, q)
        return (f"`{reward}`{on}: {m} {t.get('stat', 'median')} ≥ {t['threshold']:g}",
                f"{_fmt(e)} [{_fmt(lo)}, {_fmt(hi)}]", "met" if e >= t["threshold"] else "missed")
    pre, _ = _pooled(rows, reward, "ancestral", score, b)
    if t["kind"] == "gain_at_least":
        if pre.size == 0:
            return (f"`{reward}`{on}: {m} gain", "no pretrained runs", "not run")
        gain = float(np.median(x) - np.median(pre))
        return (f"`{reward}`{on}: {m} median gain over pretrained ≥ +{t['threshold']:g}{at}",
                f"{gain:+.3g} ({_fmt(float(np.median(x)))} vs {_fmt(float(np.median(pre)))})",
                "met" if gain >= t["threshold"] else "missed")
    if t["kind"] == "eval_fraction":
        g, _ = _pooled(rows, reward, m, "reward", b)
        gpre, _ = _pooled(rows, reward, "ancestral", "reward", b)
        if pre.size == 0 or gpre.size == 0:
            return (f"`{reward}`: {m} evaluation gain", "no pretrained runs", "not run")
        ev = float(np.median(x) - np.median(pre))
        gu = float(np.median(g) - np.median(gpre))
        frac = ev / gu if gu > 0 else float("nan")
        return (f"`{reward}`: {m} median gain on `{score}` ≥ {t['fraction']:.0%} of its gain on the guidance reward",
                f"{ev:+.3g} vs {gu:+.3g} ({frac:.0%})", "met" if gu > 0 and frac >= t["fraction"] else "missed")
    if t["kind"] == "metric_within":
        def metric(method):
            vals = [(r.get("metrics") or {}).get(t["metric"]) for r in rows if r.get("status") == "ok"
                    and r.get("reward") == reward and r.get("variant") == method
                    and r.get("budget_index") in (None, b)]
            vals = [float(v) for v in vals if isinstance(v, (int, float))]
            return float(np.mean(vals)) if vals else float("nan")
        a, p0 = metric(m), metric("ancestral")
        ok = np.isfinite(a) and np.isfinite(p0) and abs(a - p0) <= t["tolerance"]
        return (f"`{reward}`: {m} {t['metric']} within {t['tolerance']:g} of pretrained",
                f"{_fmt(a)} vs {_fmt(p0)} (Δ {a - p0:+.3g})", "met" if ok else "missed")
    raise ValueError(f"unknown target kind {t['kind']!r}")


def targets_md(run_dir: Path, heading: str = "###") -> str:
    """The issue targets of this suite, each with the measured figure and met / missed."""
    from svdd.bench import read_runs

    checks = TARGETS.get(_base(run_dir.name))
    if not checks:
        return ""
    rows = read_runs(run_dir / "runs.jsonl")
    lines = [f"{heading} issue targets — `{run_dir.name}`", "",
             "Checked by `scripts/make_results.py` on the runs above (samples pooled over seeds, largest budget; "
             "medians with bootstrap 95 % CIs). A point estimate decides met / missed.", "",
             "| issue | target | measured | verdict |", "|---|---|---|---|"]
    for t in checks:
        text, measured, verdict = _check(rows, t)
        mark = {"met": "**met**", "missed": "**missed**"}.get(verdict, verdict)
        lines.append(f"| {t['issue']} | {text} | {measured} | {mark} |")
    return "\n".join(lines) + "\n"


def _hardware_md(runs: list[Path]) -> list[str]:
    """Where the committed runs ran: each suite's stated hardware and the device the runs recorded."""
    import yaml
    from svdd.bench import read_runs

    seen: dict[tuple, list[str]] = {}
    devices: set = set()
    seconds: dict[str, float] = {}
    for p in runs:
        suite = yaml.safe_load((p / "suite.yaml").read_text()) if (p / "suite.yaml").exists() else {}
        rows = read_runs(p / "runs.jsonl")
        env = next((r.get("environment") or {} for r in rows if r.get("environment")), {})
        key = (str((suite or {}).get("hardware", "not stated")), str(env.get("device", "?")),
               str(env.get("device_name") or "?"), str(env.get("torch_threads", "?")))
        seen.setdefault(key, []).append(p.name)
        devices.update(str((r.get("environment") or {}).get("device", "?")) for r in rows)
        seconds[p.name] = sum(float(v) for r in rows if r.get("status") == "ok"
                              for k, v in (r.get("timings") or {}).items()
                              if k in ("sample_s", "metrics_s") and isinstance(v, (int, float)))
    lines = ["Hardware (from each suite's `hardware:` and the environment every run records):", ""]
    if devices == {"cpu"}:
        lines += ["**Every run on this page ran on CPU; no GPU was used.**", ""]
    for (hw, dev, name, threads), names in seen.items():
        timing = ", ".join(f"{n} {seconds[n]:.0f} s" for n in names)
        lines.append(f"- {', '.join(names)}: {hw}; device `{dev}` ({name}), {threads} torch threads; "
                     f"sampling + metrics time summed over runs: {timing}")
    return lines + ["", "(The summed times leave out calibration, value fitting and start-up; the shared "
                    "machine was also running model training, so they are upper bounds on this code's cost.)", ""]


def _summary_md(runs: list[Path]) -> list[str]:
    """Every issue target over all committed domain suites, and the domain suites with no runs."""
    rows_out, have = [], set()
    for p in runs:
        checks = TARGETS.get(_base(p.name))
        if not checks:
            continue
        have.add(_base(p.name))
        from svdd.bench import read_runs

        rows = read_runs(p / "runs.jsonl")
        for t in checks:
            text, measured, verdict = _check(rows, t)
            mark = {"met": "**met**", "missed": "**missed**"}.get(verdict, verdict)
            rows_out.append(f"| [{p.name}](#{p.name}) | {t['issue']} | {text} | {measured} | {mark} |")
    lines = []
    if rows_out:
        lines += ["## Issue targets at a glance", "",
                  "Generated from the runs below (samples pooled over seeds, largest budget of each suite; "
                  "medians with bootstrap 95 % CIs; a point estimate decides met / missed).", "",
                  "| suite | issue | target | measured | verdict |", "|---|---|---|---|---|"] + rows_out + [""]
    missing = [name for name in TARGETS if name not in have]
    if missing:
        lines += ["Domain suites with targets but no committed runs under `benchmarks/results/`: "
                  + ", ".join(f"`{m}`" for m in missing) + " (their targets are unchecked).", ""]
    return lines


def tree_targets_md(results_dir: Path) -> list[str]:
    """Issue 17's cross-suite targets (benchmarks/tree_targets.py) on the same run folders."""
    spec = importlib.util.spec_from_file_location("tree_targets", ROOT / "benchmarks" / "tree_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table, verdict = module.evaluate(results_dir)
    return (["## Tree search targets (issue 17)", "",
             "From `benchmarks/tree_targets.py` over the tree-* suites (details: docs/tree-search.md).", ""]
            + module.summary(verdict) + [""] + table + [""])


def _order(path: Path):
    name = path.name
    base = name[:-len("-quick")] if name.endswith("-quick") else name
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def generate(results_dir: Path, docs_dir: Path, figures: bool = True) -> str:
    from svdd.report import PAPER_CITATION, PAPER_REFERENCE, _fmt, build_report, render

    runs = sorted((p for p in results_dir.iterdir() if (p / "runs.jsonl").exists()), key=_order) \
        if results_dir.exists() else []
    lines = ["# Results", "",
             "<!-- generated by `python scripts/make_results.py` from benchmarks/results/*/runs.jsonl; "
             "do not edit by hand -->", "",
             "Every table below is generated from the run outputs committed under `benchmarks/results/`, "
             "by `python scripts/make_results.py` (which calls `svdd report` on each run folder). Each "
             "section names the suite, the hardware and the command that produced it. Budgets are per "
             "final sample: every method's knob (best-of-n's N, SVDD's M, SMC's particles, DNO's "
             "iterations, …) is set so that its cost is within 10 % of the budget; the cost columns show "
             "the measured figure and its deviation.", ""]
    if not runs:
        lines += ["No committed runs yet.", ""]
    else:
        lines += ["Suites:", ""] + [f"- [{p.name}](#{p.name})" for p in runs] + [""]
        lines += _hardware_md(runs) + _summary_md(runs)
    for p in runs:
        build_report(p, figures=figures)                        # refresh report.md and figures in place
        lines += [render(p, docs_dir, figures=figures, heading_level=2), ""]
        tmd = targets_md(p)
        if tmd:
            lines += [tmd, ""]
    if any(p.name.startswith("tree-") for p in runs):
        lines += tree_targets_md(results_dir)
    lines += ["## Published reference numbers", "",
              f"From {PAPER_CITATION} (median / top-10 % of the reward; final version unless noted). Their "
              "models and oracles differ from ours (GDSS on ZINC250k, MDLM with Enformer/ConvGRU oracles, "
              "Stable Diffusion 1.5), so only gains over each pretrained model are comparable.", ""]
    for key, ref in PAPER_REFERENCE.items():
        lines += [f"**{key}** — {ref['task']} ({ref['source']})", "",
                  "| method | median | top-10% |", "|---|---|---|"]
        lines += [f"| {m} | {_fmt(a)} | {_fmt(b)} |" for m, (a, b) in ref["rows"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--check", action="store_true", help="fail if the output file is out of date")
    args = ap.parse_args(argv)
    os.chdir(ROOT)                                   # paths in the reports are repo-relative
    out = Path(args.out)
    md = generate(Path(args.results), out.parent)
    if args.check:
        current = out.read_text() if out.exists() else ""
        if current != md:
            print(f"{out} is out of date; run `python scripts/make_results.py`", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
