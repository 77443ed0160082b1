"""Summary of the tree-toys benchmarks for docs/toys.md (generated, not typed).

    .venv/bin/python benchmarks/tree_toys_summary.py

Reads benchmarks/results/{tree-toys,tree-toys-masked}/runs.jsonl (written by ``svdd bench``),
writes docs/figures/tree_toys_summary.md and replaces the block between the markers
``<!-- tree-toys:begin -->`` / ``<!-- tree-toys:end -->`` of docs/toys.md with it (and the
``dts-convergence`` block with docs/figures/dts_convergence.md, from benchmarks/dts_convergence.py).

Per (suite, budget, method): median of the per-seed medians, mean reward (mean over the 3 seeds,
± standard error over seeds), nfe actually spent per sample; on the masked toy also the fraction of
samples at the argmax of the reward table, and, for the samplers (dts, smc), the total variation
to the exact tilted law (the metric the domain reports, mean over seeds). Then, per method, the
smallest nfe at which its median (masked toy: its mean — the table's rewards are so discrete that
every method's median is the same 1.155) reaches best-of-n's at the largest budget.
"""

from __future__ import annotations

import json
import statistics as st
from collections import defaultdict
from pathlib import Path

from svdd.runfolder import atomic_write

ROOT = Path(__file__).resolve().parent.parent
SUITES = [("tree-toys", "Gaussian mixture (K = 50, r(x) = x, 64 samples per run)", "median"),
          ("tree-toys-masked", "masked toy (K = 8, reward table, 128 samples per run)", "mean")]
BEGIN, END = "<!-- tree-toys:begin -->", "<!-- tree-toys:end -->"


def _load(suite: str):
    path = ROOT / "benchmarks" / "results" / suite / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("status") == "ok"]


def _section(suite: str, title: str, stat: str) -> list[str]:
    rows = _load(suite)
    cells = defaultdict(list)
    for r in rows:
        cells[(r["budget"]["nfe"], r.get("variant") or r["method"])].append(r)
    ref = rows[0].get("reference") or {}
    best = None
    if suite.endswith("masked"):
        best = max(max(r["rewards"]) for r in rows)   # the table's maximum is reached by some run
    tv_key = next((k for k in (rows[0].get("metrics") or {}) if k.startswith("tv_to_tilted")), None)
    out = [f"**{title}**", "", "| nfe budget | method | nfe / sample | median | mean ± s.e. (seeds) |"
           + (" at argmax | TV to tilted |" if best is not None else ""),
           "|---:|---|---:|---:|---:|" + ("---:|---:|" if best is not None else "")]
    medians = {}
    for (budget, method), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        med = st.median(st.median(r["rewards"]) for r in rs)
        means = [st.mean(r["rewards"]) for r in rs]
        se = st.stdev(means) / len(means) ** 0.5 if len(means) > 1 else 0.0
        nfe = st.mean(r["actual"]["cost_per_sample"] for r in rs)
        medians.setdefault(method, []).append((nfe, med if stat == "median" else st.mean(means)))
        line = f"| {budget} | {method} | {nfe:.0f} | {med:.3f} | {st.mean(means):.3f} ± {se:.3f} |"
        if best is not None:
            hit = st.mean(sum(v >= best - 1e-5 for v in r["rewards"]) / len(r["rewards"]) for r in rs)
            tv = (st.mean(r["metrics"][tv_key] for r in rs) if method in ("dts", "smc") and tv_key
                  and all(tv_key in (r.get("metrics") or {}) for r in rs) else None)
            line += f" {hit:.2f} | {'–' if tv is None else f'{tv:.3f}'} |"
        out.append(line)
    top_budget = max(b for b, _ in cells)
    pick = (lambda r: st.median(r["rewards"])) if stat == "median" else (lambda r: st.mean(r["rewards"]))
    bon = (st.median if stat == "median" else st.mean)(pick(r) for r in cells[(top_budget, "best-of-n")])
    bon_nfe = st.mean(r["actual"]["cost_per_sample"] for r in cells[(top_budget, "best-of-n")])
    reach = []
    for method, pts in sorted(medians.items()):
        if method == "best-of-n":
            continue
        ok = [n for n, m in pts if m >= bon]
        reach.append(f"{method} {'at nfe %.0f (%.2f of it)' % (min(ok), min(ok) / bon_nfe) if ok else 'never'}")
    out += ["", f"Best-of-n's {stat} at nfe {bon_nfe:.0f}: {bon:.3f}; reached by " + "; ".join(reach) + "."]
    if ref:
        out.append("")
        out.append("Exact references (from the suite's runs): " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(_flat(ref).items())
            if isinstance(v, (int, float))) + ".")
    return out


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def main() -> None:
    lines = []
    for suite, title, stat in SUITES:
        lines += _section(suite, title, stat) + [""]
    text = "\n".join(lines)
    atomic_write(ROOT / "docs" / "figures" / "tree_toys_summary.md", text)
    doc = ROOT / "docs" / "toys.md"
    body = doc.read_text()
    blocks = [(BEGIN, END, text)]
    conv = ROOT / "docs" / "figures" / "dts_convergence.md"     # written by benchmarks/dts_convergence.py
    if conv.exists():
        blocks.append(("<!-- dts-convergence:begin -->", "<!-- dts-convergence:end -->", conv.read_text()))
    for begin, end, block in blocks:
        if begin in body and end in body:
            a, b = body.index(begin) + len(begin), body.index(end)
            body = body[:a] + "\n" + block + body[b:]
    atomic_write(doc, body)
    print(text)


if __name__ == "__main__":
    main()
