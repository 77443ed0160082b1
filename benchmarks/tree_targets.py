"""Issue 17's two domain targets, computed from the committed tree-* suites (generated, not typed).

    .venv/bin/python benchmarks/tree_targets.py

Reads ``benchmarks/results/<suite>/runs.jsonl`` for the tree suites below (written by ``svdd bench``), writes
``docs/figures/tree_targets.md`` and replaces the block between ``<!-- tree-targets:begin -->`` and
``<!-- tree-targets:end -->`` of ``docs/tree-search.md`` with it.

Score. Per (suite, reward, budget, method) the median of the samples pooled over seeds (the report's median;
the mean on the masked toy, whose rewards are too discrete for medians to differ),
on the held-out oracle where the suite has one (``eval_rewards``: hepg2-eval, mrl-eval), else on the guided
reward (the molecules' QED and SA, JPEG compressibility, the toys' exact rewards). nfe is the cost actually
spent per sample (``actual.cost_per_sample``), mean over seeds.

Targets (issue 17):
  A. at equal nfe some tree method's median beats svdd-pm's, on at least 3 of the 5 domains. A (suite, reward)
     row counts when that holds at *every* budget of the suite; a domain counts when all its rows count.
  A′ (not in the issue, added because the winners of A often collapse onto a few samples): A, counting only the
     tree methods whose diversity is at least 80 % of svdd-pm's at that budget.
  B. some tree method reaches best-of-n's median (at best-of-n's largest budget) with at most one third of
     best-of-n's nfe, on at least 3 domains (same counting).
"""

from __future__ import annotations

import json
import statistics as st
from collections import defaultdict
from pathlib import Path

from svdd.runfolder import atomic_write

ROOT = Path(__file__).resolve().parent.parent
TREE = ("dts", "dts-star", "dsearch", "dsearch-r", "treeg", "noise-trajectory-search", "iterative-refinement",
        "search-over-paths")
# (domain, suite); a suite missing from benchmarks/results is reported as not run
SUITES = [("toys", "tree-toys"), ("toys", "tree-toys-masked"), ("molecules", "tree-molecules"),
          ("dna", "tree-dna"), ("rna", "tree-rna"), ("images", "tree-images")]
# the masked toy's reward table is so discrete that every method's median is the same 1.155: compare means there
STAT = {"tree-toys-masked": "mean"}
BEGIN, END = "<!-- tree-targets:begin -->", "<!-- tree-targets:end -->"
DIVERSE_SHARE = 0.8   # A′: a win counts only if the winner keeps this share of svdd-pm's diversity
DIVERSITY_KEYS = ("diversity", "internal_diversity", "moses_intdiv", "diversity_features", "pairwise_distance")


RESULTS = ROOT / "benchmarks" / "results"


def _rows(suite: str, results: Path = RESULTS) -> list[dict]:
    path = Path(results) / suite / "runs.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("status") == "ok"]


def _scores(r: dict) -> tuple[list[float], str]:
    ev = r.get("eval_rewards") or {}
    if ev:
        name = sorted(ev)[0]
        return [v for v in ev[name] if v is not None], name
    return [v for v in r["rewards"] if v is not None], r["reward"]


def _diversity(rs: list[dict]) -> float | None:
    for key in DIVERSITY_KEYS:
        vals = [(r.get("metrics") or {}).get(key) for r in rs]
        if all(isinstance(v, (int, float)) for v in vals):
            return st.mean(vals)
    return None


def _missing_cells(suite: str, rows: list[dict], results: Path) -> int:
    """How many cells the suite plans (``svdd.bench.plan_cells`` on the copy ``svdd bench`` keeps in the results
    folder) have no finished run; 0 where the folder holds no suite copy (hand-made records)."""
    copy = Path(results) / suite / "suite.yaml"
    if not copy.exists():
        return 0
    import yaml

    from svdd.bench import load_suite, plan_cells

    data = yaml.safe_load(copy.read_text())
    planned = {c["cell"] for c in plan_cells(load_suite({k: v for k, v in data.items() if not k.startswith("_")}))}
    return len(planned - {r["cell"] for r in rows})


def _cells(rows: list[dict], stat: str = "median"):
    """{reward: {budget: {method: (nfe, median (or mean), diversity, n, seeds, scored_on)}}}"""
    grouped = defaultdict(list)
    for r in rows:   # keyed by the budget itself (sortable), not budget_index, which moves if the list is edited
        budget = tuple(sorted(r["budget"].items())) if isinstance(r.get("budget"), dict) else r["budget_index"]
        grouped[(r["reward"], budget, r.get("variant") or r["method"])].append(r)
    out: dict = defaultdict(lambda: defaultdict(dict))
    for (reward, b, method), rs in grouped.items():
        pooled, on = [], None
        for r in rs:
            vals, on = _scores(r)
            pooled += vals
        nfe = st.mean(r["actual"]["cost_per_sample"] for r in rs)
        out[reward][b][method] = (nfe, (st.mean if stat == "mean" else st.median)(pooled), _diversity(rs), len(pooled), len(rs), on)
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def evaluate(results: Path = RESULTS) -> tuple[list[str], dict]:
    lines = ["| domain | suite | reward (scored on) | budgets (nfe) | A: best tree method vs svdd-pm, per budget | A | "
             f"A among methods keeping ≥ {DIVERSE_SHARE:.0%} of svdd-pm's diversity | A′ | "
             "B: best-of-n median at its nfe; first tree method to reach it | B |",
             "|---|---|---|---|---|:-:|---|:-:|---|:-:|"]
    verdict: dict = defaultdict(lambda: {"A": [], "A_diverse": [], "B": [], "run": []})
    for domain, suite in SUITES:
        rows = _rows(suite, results)
        if not rows:
            verdict[domain]["run"].append(False)
            lines.append(f"| {domain} | {suite} | – | – | not run | – | – | – | not run | – |")
            continue
        seeds = sorted({r["seed"] for r in rows})
        missing = _missing_cells(suite, rows, results)
        verdict[domain]["run"].append(not missing)
        if missing:   # still running (or cells failed): shown, not counted
            lines.append(f"| {domain} | {suite} | incomplete: {missing} of the suite's cells missing | – | not counted "
                         f"| – | – | – | – | – |")
            continue
        stat = STAT.get(suite, "median")
        for reward, budgets in sorted(_cells(rows, stat).items()):
            on = next(iter(next(iter(budgets.values())).values()))[5]
            scored = (reward if on == reward else f"{reward} ({on})") + ("; means" if stat == "mean" else "")
            per_budget, diverse, ok_a, ok_d = [], [], True, True
            for b in sorted(budgets):
                cell = budgets[b]
                tree = [(cell[m][1], m) for m in TREE if m in cell]
                if "svdd-pm" not in cell or not tree:
                    ok_a = ok_d = False
                    per_budget.append("svdd-pm missing" if tree else "no tree method run")
                    continue
                best_med, best = max(tree)
                pm, pm_div = cell["svdd-pm"][1], cell["svdd-pm"][2]
                ok_a &= best_med > pm
                per_budget.append(f"{best} {_fmt(best_med)} vs {_fmt(pm)}")
                # the same, among the tree methods that keep >= DIVERSE_SHARE of svdd-pm's diversity
                kept = [(med, m) for med, m in tree if pm_div is None or cell[m][2] is None
                        or cell[m][2] >= DIVERSE_SHARE * pm_div]
                if kept and max(kept)[0] > pm:
                    diverse.append(f"{max(kept)[1]} {_fmt(max(kept)[0])}")
                else:
                    ok_d = False
                    diverse.append("none")
            top = max(b for b in budgets if "best-of-n" in budgets[b])
            bon_nfe, bon_med = budgets[top]["best-of-n"][:2]
            reach = sorted((cell[m][0], m) for b, cell in budgets.items() for m in TREE
                           if m in cell and cell[m][1] >= bon_med)
            ok_b = bool(reach) and reach[0][0] <= bon_nfe / 3
            first = (f"{reach[0][1]} at nfe {reach[0][0]:.0f} ({reach[0][0] / bon_nfe:.2f} of it)" if reach
                     else "no tree method reaches it")
            nfes = "/".join(str(dict(b).get("nfe", "?")) if isinstance(b, tuple) else str(b) for b in sorted(budgets))
            lines.append(f"| {domain} | {suite} ({len(seeds)} seeds) | {scored} | {nfes} | {'; '.join(per_budget)} | "
                         f"{'✓' if ok_a else '✗'} | {'; '.join(diverse)} | {'✓' if ok_d else '✗'} | "
                         f"{_fmt(bon_med)} at {bon_nfe:.0f}; {first} | {'✓' if ok_b else '✗'} |")
            verdict[domain]["A"].append(ok_a)
            verdict[domain]["A_diverse"].append(ok_d)
            verdict[domain]["B"].append(ok_b)
    return lines, verdict


def summary(verdict: dict) -> list[str]:
    run = [d for d, v in verdict.items() if all(v["run"]) and v["A"]]   # every suite of the domain complete
    partial = [d for d, v in verdict.items() if not all(v["run"])]
    a = [d for d in run if all(verdict[d]["A"])]
    b = [d for d in run if all(verdict[d]["B"])]
    ad = [d for d in run if all(verdict[d]["A_diverse"])]
    out = [f"- **A** (some tree method's median above svdd-pm's at every budget): {len(a)} of 5 domains "
           f"({', '.join(a) or 'none'}); target ≥ 3 — **{'met' if len(a) >= 3 else 'missed'}**.",
           f"- **A′** (the same, counting only tree methods that keep ≥ {DIVERSE_SHARE:.0%} of svdd-pm's diversity at "
           f"that budget, where the domain measures one): {len(ad)} of 5 domains ({', '.join(ad) or 'none'}).",
           f"- **B** (some tree method reaches best-of-n's top-budget median at ≤ 1/3 of its nfe): {len(b)} of 5 "
           f"domains ({', '.join(b) or 'none'}); target ≥ 3 — **{'met' if len(b) >= 3 else 'missed'}**."]
    if partial:
        out.append(f"- Not (fully) run, so not counted: {', '.join(partial)}.")
    return out


def diversity_table(results: Path = RESULTS) -> list[str]:
    """Diversity beside the score at the largest budget, so a search that collapses onto one sample is visible."""
    out = ["| suite | reward | method | nfe | median or mean (scored on) | diversity |", "|---|---|---|---:|---:|---:|"]
    for _, suite in SUITES:
        rows = _rows(suite, results)
        if not rows:
            continue
        for reward, budgets in sorted(_cells(rows, STAT.get(suite, "median")).items()):
            top = max(budgets)
            for method, (nfe, med, div, _n, _s, on) in sorted(budgets[top].items(), key=lambda kv: -kv[1][1]):
                out.append(f"| {suite} | {reward} | {method} | {nfe:.0f} | {_fmt(med)} ({on}) | "
                           f"{'–' if div is None else f'{div:.3f}'} |")
    return out


def main() -> None:
    lines, verdict = evaluate()
    text = "\n".join(summary(verdict) + [""] + lines + ["", "Diversity at each suite's largest budget "
                                                          "(mean over seeds of the domain's diversity metric):",
                                                          ""] + diversity_table()) + "\n"
    atomic_write(ROOT / "docs" / "figures" / "tree_targets.md", text)
    doc = ROOT / "docs" / "tree-search.md"
    if doc.exists():
        body = doc.read_text()
        if BEGIN in body and END in body:
            a, b = body.index(BEGIN) + len(BEGIN), body.index(END)
            atomic_write(doc, body[:a] + "\n" + text + body[b:])
    print(text)


if __name__ == "__main__":
    main()
