"""A corpus of malformed ``svdd`` invocations: every one is a user mistake that must end in one
line ``svdd: error: ...`` (or argparse's ``svdd CMD: error: ...``), exit code 2, no traceback,
within a few seconds, and must not be accepted silently.

Plain data, no pytest: ``tests/test_cli_malformed.py`` runs it in-process and
``scripts/reliability.py`` runs it in subprocesses. A ``Case`` is ``(id, argv, setup, needle)``:
``argv`` may contain ``{tmp}``, replaced by a fresh temporary folder; ``setup`` names a function of
``SETUPS`` (``"kind"`` or ``"kind:argument"``) that prepares files in that folder; ``needle``, when
given, must appear in the error line. ``prepare(case, tmp_path)`` does both and returns the argv.
``classify(returncode, stderr, timed_out)`` says how a run of a case ended.

Sizes are tiny and the analytic toy domains are used wherever the domain does not matter, so a
correct svdd refuses every case before doing real work.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple
    setup: Optional[str] = None
    needle: Optional[str] = None      # a piece of text the error line must contain


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
OUT = "{tmp}/out"
MASKED = ("sample", "--domain", "toy-masked", "--num-samples", "4", "--num-steps", "4", "--quiet", "--out", OUT)
GAUSS = ("sample", "--domain", "toy-gaussian", "--num-samples", "4", "--num-steps", "4", "--quiet", "--out", OUT)
FIT = ("fit-value", "--domain", "toy-gaussian", "--num-steps", "4", "--num-rollouts", "8", "--train-steps", "5",
       "--quiet")
FIT_OUT = FIT + ("--out", "{tmp}/value")
BENCH = ("bench", "{tmp}/suite.yaml", "--out", "{tmp}/bench")
VALUE = "{tmp}/value"
UNWRITABLE = "{unwritable}"     # a folder nobody may create (see _unwritable)
# Huge sizes are refused by a memory estimate before anything is allocated; they are chosen to
# exceed any machine (>= 1 TB for the samples alone), so the corpus holds on a 128 GB GPU host too.
HUGE_N = ("--num-samples", "64")  # the CLI's default, as in `svdd sample --num-candidates 1000000000`


def _sample(*extra, base=MASKED):
    return tuple(base) + tuple(extra)


def _without_out(base):
    i = base.index("--out")
    return tuple(base[:i]) + tuple(base[i + 2:])


CASES: list[Case] = []


def _add(id: str, argv, setup: Optional[str] = None, needle: Optional[str] = None) -> None:
    CASES.append(Case(id, tuple(argv), setup, needle))


# -- the top level and argparse ------------------------------------------------------------------
_add("top-no-command", [])
_add("top-unknown-command", ["nope"])
_add("top-unknown-flag", ["--bogus"])
_add("sample-missing-out", ["sample", "--domain", "toy-masked"], needle="--out")
_add("sample-unknown-flag", _sample("--bogus", "1"))
_add("sample-seed-not-int", _sample("--seed", "abc"), needle="--seed")
_add("sample-num-samples-not-int", _sample("--num-samples", "4.5"), needle="--num-samples")
_add("sample-candidates-not-int", _sample("--num-candidates", "many"), needle="--num-candidates")
_add("sample-alpha-not-number", _sample("--alpha", "hot"), needle="--alpha")
_add("sample-backend-unknown", _sample("--backend", "mpi"), needle="--backend")
_add("sample-fasta-alphabet-unknown", _sample("--fasta-alphabet", "X"), needle="--fasta-alphabet")

# -- sample: seeds and --set ---------------------------------------------------------------------
_add("sample-seed-negative", _sample("--seed", "-1"), needle="--seed")
_add("sample-seed-huge", _sample("--seed", "99999999999999999999"), needle="--seed")
for key, val in [("process", "x"), ("reward_fn", "x"), ("generator", "1"), ("callback", "print"),
                 ("num_samples", "3"), ("num_steps", "3"), ("value_fn", "x")]:
    _add(f"sample-set-reserved-{key}", _sample("--set", f"{key}={val}"), needle="--set")
_add("sample-set-no-equals", _sample("--set", "num_candidates"), needle="--set")
_add("sample-set-empty-key", _sample("--set", "=4"), needle="--set")
_add("sample-set-unknown-key", _sample("--set", "bogus=1"), needle="bogus")
_add("sample-set-candidates-not-int", _sample("--set", "num_candidates=abc"), needle="num_candidates")
_add("sample-set-candidates-float", _sample("--set", "num_candidates=2.5"), needle="num_candidates")
_add("sample-set-candidates-negative", _sample("--set", "num_candidates=-3"), needle="num_candidates")
_add("sample-set-candidates-huge", _sample("--set", "num_candidates=1000000000", *HUGE_N), needle="memory")
_add("sample-set-alpha-negative", _sample("--set", "alpha=-1"), needle="alpha")
_add("sample-set-alpha-word", _sample("--set", "alpha=hot"), needle="alpha")
_add("sample-set-deduplicate-word", _sample("--set", "deduplicate=maybe"), needle="deduplicate")
_add("sample-set-max-batch-size-zero", _sample("--set", "max_batch_size=0"), needle="max_batch_size")
_add("sample-set-smc-particles-word", _sample("--method", "smc", "--set", "num_particles=lots"),
     needle="num_particles")
_add("sample-set-smc-resample-unknown", _sample("--method", "smc", "--set", "resample=nope"), needle="resample")
_add("sample-set-smc-potential-unknown", _sample("--method", "smc", "--set", "potential=nope"), needle="potential")
_add("sample-set-svdd-r-fraction-too-big", _sample("--method", "svdd-r", "--set", "replace_fraction=2"),
     needle="replace_fraction")

# -- sample: sizes -------------------------------------------------------------------------------
_add("sample-candidates-huge", _sample("--num-candidates", "1000000000", *HUGE_N), needle="memory")
_add("sample-candidates-huge-best-of-n", _sample("--method", "best-of-n", "--num-candidates", "1000000000",
                                                 *HUGE_N, base=GAUSS), needle="memory")
_add("sample-candidates-huge-random-search", _sample("--method", "random-search", "--num-candidates",
                                                     "1000000000", *HUGE_N, base=GAUSS), needle="memory")
_add("sample-candidates-zero", _sample("--num-candidates", "0"), needle="--num-candidates")
_add("sample-candidates-negative", _sample("--num-candidates", "-5"), needle="--num-candidates")
_add("sample-particles-huge", _sample("--method", "smc", "--num-particles", "100000000000"), needle="memory")
_add("sample-particles-zero", _sample("--method", "smc", "--num-particles", "0"), needle="--num-particles")
_add("sample-particles-negative", _sample("--method", "smc", "--num-particles", "-2"), needle="--num-particles")
_add("sample-particles-on-svdd", _sample("--num-particles", "4"), needle="--num-particles")
_add("sample-num-samples-zero", _sample("--num-samples", "0"), needle="--num-samples")
_add("sample-num-samples-negative", _sample("--num-samples", "-1"), needle="--num-samples")
_add("sample-num-samples-huge", _sample("--num-samples", "1000000000000"), needle="memory")
_add("sample-num-steps-zero", _sample("--num-steps", "0"), needle="--num-steps")
_add("sample-num-steps-negative", _sample("--num-steps", "-3"), needle="--num-steps")
_add("sample-num-steps-huge", _sample("--num-steps", "1000000000000"), needle="--num-steps")
_add("sample-batch-size-zero", _sample("--batch-size", "0"), needle="--batch-size")
_add("sample-batch-size-negative", _sample("--batch-size", "-4"), needle="--batch-size")
_add("sample-max-batch-size-zero", _sample("--max-batch-size", "0"), needle="--max-batch-size")
_add("sample-max-batch-size-word", _sample("--max-batch-size", "lots"), needle="--max-batch-size")
_add("sample-max-batch-size-negative", _sample("--max-batch-size", "-8"), needle="--max-batch-size")
_add("sample-precision-unknown", _sample("--precision", "fp64"), needle="--precision")
_add("sample-alpha-negative", _sample("--alpha", "-1"), needle="--alpha")
_add("sample-alpha-nan", _sample("--alpha", "nan"), needle="--alpha")
_add("sample-alpha-inf", _sample("--alpha", "inf"), needle="--alpha")
_add("sample-alpha-on-ancestral", _sample("--method", "ancestral", "--alpha", "1"), needle="--alpha")
_add("sample-candidates-on-ancestral", _sample("--method", "ancestral", "--num-candidates", "4"),
     needle="--num-candidates")

# -- sample: names -------------------------------------------------------------------------------
_add("sample-method-unknown", _sample("--method", "nope"), needle="nope")
_add("sample-method-empty", _sample("--method", ""), needle="method")
_add("sample-domain-unknown", _sample("--domain", "nope"), needle="nope")
_add("sample-domain-empty", _sample("--domain", ""), needle="domain")
_add("sample-model-unknown", _sample("--model", "nope"), needle="nope")
_add("sample-reward-unknown", _sample("--reward", "nope"), needle="nope")
_add("sample-reward-unknown-in-sum", _sample("--reward", "table+0.5*nope"), needle="nope")
_add("sample-reward-trailing-plus", _sample("--reward", "table+"), needle="reward")
_add("sample-reward-leading-plus", _sample("--reward", "+table"), needle="reward")
_add("sample-reward-double-plus", _sample("--reward", "table++table"), needle="reward")
_add("sample-reward-empty", _sample("--reward", ""), needle="reward")
_add("sample-reward-blank", _sample("--reward", "   "), needle="reward")
_add("sample-reward-weight-only", _sample("--reward", "2*"), needle="reward")
_add("sample-reward-star-only", _sample("--reward", "*table"), needle="reward")
_add("sample-reward-word-weight", _sample("--reward", "abc*table"), needle="reward")
_add("sample-reward-nan-weight", _sample("--reward", "nan*table"), needle="reward")
_add("sample-reward-argument-on-toy", _sample("--reward", "table:x"), needle="table")
_add("sample-molecules-reward-trailing-plus", ["sample", "--domain", "molecules", "--reward", "qed+",
                                               "--num-samples", "2", "--quiet", "--out", OUT], needle="reward")
_add("sample-molecules-reward-empty", ["sample", "--domain", "molecules", "--reward", "", "--num-samples", "2",
                                       "--quiet", "--out", OUT], needle="reward")
_add("sample-molecules-reward-unknown", ["sample", "--domain", "molecules", "--reward", "qed+0.5*nope",
                                         "--num-samples", "2", "--quiet", "--out", OUT], needle="nope")

# -- sample: devices -----------------------------------------------------------------------------
_add("sample-device-tpu9", _sample("--device", "tpu9"), needle="--device")
_add("sample-device-tpu9-gaussian", _sample("--device", "tpu9", base=GAUSS), needle="--device")
_add("sample-device-empty", _sample("--device", ""), needle="--device")
_add("sample-device-cuda-99", _sample("--device", "cuda:99"), needle="--device")
_add("sample-device-meta", _sample("--device", "meta"), needle="--device")
_add("sample-device-bad-index", _sample("--device", "cpu:abc"), needle="--device")
_add("sample-device-negative-index", _sample("--device", "cuda:-1"), needle="--device")

# -- sample: value folders -----------------------------------------------------------------------
_MC = ("--method", "svdd-mc", "--value", VALUE)
_add("sample-value-missing-folder", _sample(*_MC, base=GAUSS), needle="value")
for kind in ("bad-json", "empty-object", "json-list", "unknown-network", "bad-config", "bad-time-scale",
             "garbage-safetensors", "missing-safetensors", "wrong-shapes", "missing-keys", "other-domain"):
    _add(f"sample-value-{kind}", _sample(*_MC, base=GAUSS), setup=f"value:{kind}", needle="value")
_add("sample-value-is-a-file", _sample("--method", "svdd-mc", "--value", "{tmp}/file", base=GAUSS), setup="file",
     needle="value")
_add("sample-value-with-ancestral", _sample("--method", "ancestral", "--value", VALUE, base=GAUSS),
     setup="value:good", needle="--value")
_add("sample-svdd-mc-without-value", _sample("--method", "svdd-mc"), needle="--value")
_add("sample-dno-on-masked", _sample("--method", "dno"), needle="dno")
_add("sample-dps-non-differentiable", _sample("--method", "dps"), needle="differentiable")
_add("sample-das-non-differentiable", _sample("--method", "das"), needle="differentiable")

# -- sample: output folders ----------------------------------------------------------------------
_add("sample-out-is-a-file", _without_out(MASKED) + ("--out", "{tmp}/file"), setup="file", needle="file")
_add("sample-out-under-a-file", _without_out(MASKED) + ("--out", "{tmp}/file/run"), setup="file")
_add("sample-out-unwritable", _without_out(MASKED) + ("--out", UNWRITABLE + "/run"), setup="unwritable")
_add("sample-out-empty", _without_out(MASKED) + ("--out", ""), needle="--out")
_add("sample-out-symlink", _sample(), setup="out:symlink", needle="link")
_add("sample-out-holds-files", _sample(), setup="out:foreign")
_add("sample-resume-other-options", _sample("--resume"), setup="out:other-config", needle="different")

# -- sample: backends and reward workers ---------------------------------------------------------
_add("sample-reward-workers-zero", _sample("--reward-workers", "0"), needle="--reward-workers")
_add("sample-reward-workers-negative", _sample("--reward-workers", "-2"), needle="--reward-workers")
_add("sample-reward-timeout-zero", _sample("--reward-workers", "1", "--reward-timeout", "0"),
     needle="--reward-timeout")
_add("sample-reward-timeout-negative", _sample("--reward-workers", "1", "--reward-timeout", "-1"),
     needle="--reward-timeout")
_add("sample-reward-timeout-nan", _sample("--reward-workers", "1", "--reward-timeout", "nan"),
     needle="--reward-timeout")
_add("sample-reward-timeout-without-workers", _sample("--reward-timeout", "5"), needle="--reward-timeout")
_add("sample-workers-zero", _sample("--backend", "process", "--workers", "0"), needle="--workers")
_add("sample-workers-negative", _sample("--backend", "process", "--workers", "-1"), needle="--workers")
_add("sample-workers-with-local-backend", _sample("--workers", "2"), needle="--workers")
_add("sample-ray-address-without-ray", _sample("--ray-address", "auto"), needle="--ray-address")

# -- sample: domain-specific options -------------------------------------------------------------
_add("sample-diffusers-on-toy", _sample("--diffusers", "{tmp}"), needle="--diffusers")
_add("sample-diffusers-missing-folder", ["sample", "--domain", "images", "--diffusers", "{tmp}/nope",
                                         "--num-samples", "2", "--quiet", "--out", OUT], needle="--diffusers")
_add("sample-prompt-without-diffusers", _sample("--prompt", "a cat"), needle="--prompt")
_add("sample-guidance-scale-without-diffusers", _sample("--guidance-scale", "3"), needle="--guidance-scale")
_add("sample-oracle-dir-missing", _sample("--oracle-dir", "{tmp}/nope"), needle="--oracle-dir")

# -- fit-value -----------------------------------------------------------------------------------
_add("fit-missing-out", FIT, needle="--out")
_add("fit-num-rollouts-not-int", FIT_OUT + ("--num-rollouts", "many"), needle="--num-rollouts")
_add("fit-loss-unknown", FIT_OUT + ("--loss", "l1"), needle="--loss")
_add("fit-num-rollouts-zero", FIT_OUT + ("--num-rollouts", "0"), needle="--num-rollouts")
_add("fit-num-rollouts-negative", FIT_OUT + ("--num-rollouts", "-4"), needle="--num-rollouts")
_add("fit-num-rollouts-huge", FIT_OUT + ("--num-rollouts", "100000000000"), needle="memory")
_add("fit-train-steps-zero", FIT_OUT + ("--train-steps", "0"), needle="--train-steps")
_add("fit-train-steps-negative", FIT_OUT + ("--train-steps", "-1"), needle="--train-steps")
_add("fit-train-batch-size-zero", FIT_OUT + ("--train-batch-size", "0"), needle="--train-batch-size")
_add("fit-train-batch-size-negative", FIT_OUT + ("--train-batch-size", "-8"), needle="--train-batch-size")
_add("fit-lr-zero", FIT_OUT + ("--lr", "0"), needle="--lr")
_add("fit-lr-negative", FIT_OUT + ("--lr", "-0.1"), needle="--lr")
_add("fit-lr-nan", FIT_OUT + ("--lr", "nan"), needle="--lr")
_add("fit-alpha-zero-exp", FIT_OUT + ("--loss", "exp", "--alpha", "0"), needle="--alpha")
_add("fit-alpha-negative", FIT_OUT + ("--alpha", "-1"), needle="--alpha")
_add("fit-alpha-nan", FIT_OUT + ("--alpha", "nan"), needle="--alpha")
_add("fit-weight-decay-negative", FIT_OUT + ("--weight-decay", "-1"), needle="--weight-decay")
_add("fit-num-steps-zero", FIT_OUT + ("--num-steps", "0"), needle="--num-steps")
_add("fit-seed-negative", FIT_OUT + ("--seed", "-1"), needle="--seed")
_add("fit-device-tpu9", FIT_OUT + ("--device", "tpu9"), needle="--device")
_add("fit-domain-unknown", FIT_OUT + ("--domain", "nope"), needle="nope")
_add("fit-model-unknown", FIT_OUT + ("--model", "nope"), needle="nope")
_add("fit-reward-unknown", FIT_OUT + ("--reward", "nope"), needle="nope")
_add("fit-reward-trailing-plus", FIT_OUT + ("--reward", "linear+"), needle="reward")
_add("fit-reward-empty", FIT_OUT + ("--reward", ""), needle="reward")
_add("fit-out-is-a-file", FIT + ("--out", "{tmp}/file"), setup="file", needle="file")
_add("fit-out-under-a-file", FIT + ("--out", "{tmp}/file/value"), setup="file")
_add("fit-out-unwritable", FIT + ("--out", UNWRITABLE + "/value"), setup="unwritable")
_add("fit-out-empty", FIT + ("--out", ""), needle="--out")

# -- list ----------------------------------------------------------------------------------------
_add("list-missing-what", ["list"])
_add("list-unknown-what", ["list", "nope"])
_add("list-rewards-unknown-domain", ["list", "rewards", "--domain", "nope"], needle="nope")
_add("list-models-unknown-domain", ["list", "models", "--domain", "nope"], needle="nope")
_add("list-domains-unknown-domain", ["list", "domains", "--domain", "nope"], needle="nope")
_add("list-rewards-empty-domain", ["list", "rewards", "--domain", ""], needle="domain")
_add("list-methods-unknown-domain", ["list", "methods", "--domain", "nope"], needle="nope")
_add("list-methods-with-domain", ["list", "methods", "--domain", "toy-masked"], needle="--domain")

# -- bench ---------------------------------------------------------------------------------------
_SUITE = """name: malformed
domain: toy-gaussian
num_steps: 4
num_samples: 4
seeds: [0]
methods:
  - method: ancestral
"""


def _suite_with(**changes) -> str:
    """The base suite with top-level keys replaced (value None: key removed); values are YAML text."""
    lines, seen = [], set()
    skip = False
    for line in _SUITE.splitlines():
        key = line.split(":", 1)[0] if line and not line.startswith(" ") else None
        if key is not None:
            skip = False
            if key in changes:
                seen.add(key)
                skip = True
                if changes[key] is not None:
                    lines.append(f"{key}: {changes[key]}")
                continue
        if skip and line.startswith(" "):
            continue
        lines.append(line)
    lines += [f"{k}: {v}" for k, v in changes.items() if k not in seen and v is not None]
    return "\n".join(lines) + "\n"




def _build_suites() -> dict[str, str]:
    s = {
        "garbage-yaml": "name: [unclosed\n  : : :\n",
        "list": "- method: ancestral\n- method: best-of-n\n",
        "empty": "",
        "seeds-word": _suite_with(seeds="abc"),
        "seeds-list-of-words": _suite_with(seeds="[a, b]"),
        "seeds-negative": _suite_with(seeds="-1"),
        "seeds-zero": _suite_with(seeds="0"),
        "seeds-empty-list": _suite_with(seeds="[]"),
        "seeds-negative-in-list": _suite_with(seeds="[0, -1]"),
        "seeds-repeated": _suite_with(seeds="[1, 1]"),
        "rewards-not-list": _suite_with(rewards="5"),
        "rewards-empty": _suite_with(rewards="[]"),
        "eval-rewards-not-list": _suite_with(eval_rewards="{linear: linear}"),
        "eval-reward-unknown": _suite_with(eval_rewards="[nope]"),
        "budgets-empty": _suite_with(budgets="[]"),
        "methods-mapping": _suite_with(methods="{ancestral: 1}"),
        "model-number": _suite_with(model="5"),
        "label-number": _suite_with(methods="\n  - method: best-of-n\n    label: 5"),
        "guide-unknown": _suite_with(methods="\n  - method: dps\n    guide: nope"),
        "guide-number": _suite_with(methods="\n  - method: dps\n    guide: 5"),
        "hyperparameter-reserved": _suite_with(methods="\n  - method: best-of-n\n    num_samples: 4"),
        "method-unknown": _suite_with(methods="\n  - method: nope"),
        "domain-unknown": _suite_with(domain="nope"),
        "reward-unknown": _suite_with(reward="nope"),
        "reward-trailing-plus": _suite_with(reward="'linear+'"),
        "key-unknown": _suite_with(colour="blue"),
        "methods-missing": _suite_with(methods=None),
        "domain-missing": _suite_with(domain=None),
        "methods-empty": _suite_with(methods="[]"),
        "method-entry-number": _suite_with(methods="[5]"),
        "hyperparameter-unknown": _suite_with(methods="\n  - method: best-of-n\n    num_candidate: 4"),
        "hyperparameter-bad-value": _suite_with(methods="\n  - method: best-of-n\n    num_candidates: abc"),
        "model-options-unknown": _suite_with(model_options="{bogus: 1}"),
        "model-options-not-mapping": _suite_with(model_options="5"),
        "model-unknown": _suite_with(model="nope"),
        "num-samples-zero": _suite_with(num_samples="0"),
        "num-samples-word": _suite_with(num_samples="abc"),
        "num-samples-huge": _suite_with(num_samples="1000000000000"),
        "num-steps-zero": _suite_with(num_steps="0"),
        "num-steps-word": _suite_with(num_steps="abc"),
        "budget-not-mapping": _suite_with(budget="5"),
        "budget-no-measure": _suite_with(budget="{foo: 1}"),
        "budget-word": _suite_with(budget="{nfe: abc}"),
        "budget-negative": _suite_with(budget="{nfe: -5}"),
        "sweep-not-list": _suite_with(methods="\n  - method: best-of-n\n    sweep: {num_candidates: 4}"),
        "tolerance-word": _suite_with(tolerance="abc"),
        "alpha-word": _suite_with(alpha="abc"),
        "alpha-negative": _suite_with(alpha="-1"),
        "max-batch-size-zero": _suite_with(max_batch_size="0"),
        "value-unknown": _suite_with(methods="\n  - method: svdd-mc\n    value: bogus"),
        "every-cell-fails": _suite_with(seeds="[0, 1]",
                                        methods="\n  - method: svdd-mc\n    value: {path: '{tmp}/value'}"),
        "some-cells-fail": _suite_with(methods="\n  - method: ancestral\n  - method: svdd-mc\n"
                                                "    value: {path: '{tmp}/value'}"),
    }
    return s


SUITES = {"good": _SUITE, **_build_suites()}
_FAILING_SUITES = ("every-cell-fails", "some-cells-fail")
for name in SUITES:
    if name == "good":
        continue
    needle = {"seeds-word": "seeds", "seeds-list-of-words": "seeds", "seeds-negative": "seeds",
              "seeds-zero": "seeds", "seeds-empty-list": "seeds", "seeds-negative-in-list": "seeds",
              "seeds-repeated": "seeds", "rewards-not-list": "reward", "rewards-empty": "reward",
              "eval-rewards-not-list": "eval_rewards", "eval-reward-unknown": "nope", "budgets-empty": "budget",
              "methods-mapping": "methods", "model-number": "model", "label-number": "label",
              "guide-unknown": "nope", "guide-number": "guide", "hyperparameter-reserved": "num_samples", "method-unknown": "nope", "domain-unknown": "nope",
              "reward-unknown": "nope", "model-unknown": "nope", "model-options-unknown": "bogus",
              "num-samples-word": "num_samples", "num-samples-zero": "num_samples", "num-samples-huge": "memory",
              "num-steps-zero": "num_steps", "num-steps-word": "num_steps", "tolerance-word": "tolerance",
              "alpha-word": "alpha", "alpha-negative": "alpha", "budget-word": "budget",
              "budget-negative": "budget", "every-cell-fails": "failed", "some-cells-fail": "failed",
              "hyperparameter-bad-value": "num_candidates", "max-batch-size-zero": "max_batch_size"}.get(name)
    setup = f"suite:{name}" + ("+value:bad-json" if name in _FAILING_SUITES else "")
    _add(f"bench-suite-{name}", BENCH, setup=setup, needle=needle)
_add("bench-suite-file-missing", BENCH, needle="suite")
_add("bench-suite-is-a-folder", ["bench", "{tmp}", "--out", "{tmp}/bench"], needle="suite")
_add("bench-missing-out", ["bench", "{tmp}/suite.yaml"], setup="suite:good", needle="--out")
_add("bench-quick-without-overrides", BENCH + ("--quick",), setup="suite:good", needle="quick")
_add("bench-only-reward-unknown", BENCH + ("--only-reward", "nope"), setup="suite:good", needle="nope")
_add("bench-only-method-unknown", BENCH + ("--only-method", "nope"), setup="suite:good", needle="nope")
_add("bench-device-tpu9", BENCH + ("--device", "tpu9"), setup="suite:good", needle="--device")
_add("bench-out-is-a-file", ["bench", "{tmp}/suite.yaml", "--out", "{tmp}/file"], setup="suite:good+file",
     needle="file")
_add("bench-out-unwritable", ["bench", "{tmp}/suite.yaml", "--out", UNWRITABLE + "/bench"],
     setup="suite:good+unwritable")
_add("bench-out-other-suite", BENCH, setup="suite:good+bench:other-suite", needle="another suite")
_add("bench-out-foreign-line", BENCH, setup="suite:good+bench:list-line", needle="runs.jsonl")

# -- report --------------------------------------------------------------------------------------
REPORT = ("report", "{tmp}/bench")
_add("report-missing-argument", ["report"])
_add("report-folder-missing", ["report", "{tmp}/nope"], needle="nope")
_add("report-folder-is-a-file", ["report", "{tmp}/file"], setup="file", needle="file")
for kind, needle in [("list-line", "runs.jsonl"), ("number-line", "runs.jsonl"), ("string-line", "runs.jsonl"),
                     ("dict-line", "runs.jsonl"), ("ok-line-missing-fields", "runs.jsonl"),
                     ("rewards-not-list", "runs.jsonl"), ("metrics-not-mapping", "runs.jsonl"),
                     ("binary", "runs.jsonl"), ("runs-is-a-folder", "runs.jsonl"),
                     ("garbage-suite-yaml", "suite.yaml"), ("list-suite-yaml", "suite.yaml")]:
    _add(f"report-{kind}", REPORT, setup=f"bench:{kind}", needle=needle)
_add("report-output-empty", REPORT + ("--output", ""), setup="bench:good", needle="--output")
_add("report-output-unwritable", REPORT + ("--output", UNWRITABLE + "/report.md"), setup="bench:good+unwritable")
_add("report-output-under-a-file", REPORT + ("--output", "{tmp}/file/report.md"), setup="bench:good+file")

# -- demo ----------------------------------------------------------------------------------------
_add("demo-num-samples-zero", ["demo", "--num-samples", "0", "--out", OUT], needle="--num-samples")
_add("demo-num-samples-negative", ["demo", "--num-samples", "-3", "--out", OUT], needle="--num-samples")
_add("demo-num-samples-word", ["demo", "--num-samples", "abc", "--out", OUT], needle="--num-samples")
_add("demo-num-samples-huge", ["demo", "--num-samples", "1000000000000", "--out", OUT], needle="memory")
_add("demo-out-is-a-file", ["demo", "--num-samples", "2", "--out", "{tmp}/file"], setup="file", needle="file")
_add("demo-out-unwritable", ["demo", "--num-samples", "2", "--out", UNWRITABLE + "/demo"], setup="unwritable")
_add("demo-out-empty", ["demo", "--num-samples", "2", "--out", ""], needle="--out")
_add("demo-unknown-flag", ["demo", "--bogus"])


# ------------------------------------------------------------------------------------------------
# setups: functions (tmp: Path, argument: str) that prepare files under tmp
# ------------------------------------------------------------------------------------------------
def _unwritable(tmp: Path) -> str:
    """A folder that cannot be created: a read-only folder for normal users; for root (who may
    write anywhere), a path under /sys, where mkdir fails with EPERM."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/sys/svdd-malformed-corpus"
    ro = tmp / "read-only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    return str(ro / "inside")


def _setup_file(tmp: Path, arg: str) -> None:
    (tmp / "file").write_text("not a folder\n")


def _setup_unwritable(tmp: Path, arg: str) -> None:
    _unwritable(tmp)


def _good_value(folder: Path, input_dim: int = 1, meta: Optional[dict] = None) -> dict:
    """A value folder as ``svdd fit-value`` writes it for toy-gaussian (an untrained MLP)."""
    import torch
    from safetensors.torch import save_file

    from svdd.values.learned import LearnedValue, VectorValueNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        value = LearnedValue(VectorValueNet(input_dim, hidden=8, depth=1), time_scale=1000.0)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"network": "VectorValueNet", "config": value.network.config, "time_scale": 1000.0,
              "domain": "toy-gaussian", "reward": "linear", "model": "mixture", **(meta or {})}
    (folder / "value.json").write_text(json.dumps(record))
    save_file({k: v.contiguous() for k, v in value.state_dict().items()}, str(folder / "value.safetensors"))
    return record


def _setup_value(tmp: Path, kind: str) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp / "value"
    if kind == "good":
        _good_value(folder)
    elif kind == "bad-json":
        _good_value(folder)
        (folder / "value.json").write_text('{"network": "VectorValueNet", "config": {')
    elif kind == "empty-object":
        _good_value(folder)
        (folder / "value.json").write_text("{}")
    elif kind == "json-list":
        _good_value(folder)
        (folder / "value.json").write_text("[1, 2, 3]")
    elif kind == "unknown-network":
        _good_value(folder, meta={"network": "NoSuchNet"})
    elif kind == "bad-config":
        _good_value(folder, meta={"config": {"bogus": 1}})
    elif kind == "bad-time-scale":
        _good_value(folder, meta={"time_scale": "soon"})
    elif kind == "garbage-safetensors":
        _good_value(folder)
        (folder / "value.safetensors").write_bytes(b"\x00garbage, not safetensors\xff" * 8)
    elif kind == "missing-safetensors":
        _good_value(folder)
        (folder / "value.safetensors").unlink()
    elif kind == "wrong-shapes":            # weights of a 5-input net under a 1-input config
        _good_value(folder)
        other = tmp / "other-value"
        _good_value(other, input_dim=5)
        (folder / "value.safetensors").write_bytes((other / "value.safetensors").read_bytes())
    elif kind == "missing-keys":
        _good_value(folder)
        save_file({"unrelated": torch.zeros(2)}, str(folder / "value.safetensors"))
    elif kind == "other-domain":            # fitted on toy-masked-like states of 3 tokens
        _good_value(folder, input_dim=3, meta={"domain": "toy-masked", "reward": "table", "model": "table"})
    else:
        raise KeyError(f"unknown value setup {kind!r}")


def _setup_out(tmp: Path, kind: str) -> None:
    out = tmp / "out"
    if kind == "symlink":
        target = tmp / "elsewhere"
        target.mkdir()
        out.symlink_to(target, target_is_directory=True)
    elif kind == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("my own files\n")
    elif kind == "other-config":            # a run of other settings (a damaged config.json is not a
        out.mkdir()                         # user mistake: svdd reports and rewrites it)
        (out / "config.json").write_text(json.dumps({"domain": "toy-masked", "method": "best-of-n",
                                                     "num_samples": 99, "seed": 7}))
    else:
        raise KeyError(f"unknown out setup {kind!r}")


def _setup_suite(tmp: Path, name: str) -> None:
    (tmp / "suite.yaml").write_text(SUITES[name].replace("{tmp}", str(tmp)))


_OK_LINE = {"schema": 1, "suite": "malformed", "fingerprint": "0", "cell": "default|natural|ancestral|-|seed0",
            "domain": "toy-gaussian", "model": "mixture", "reward": "linear", "method": "ancestral",
            "variant": "ancestral", "algorithm": "ancestral", "sweep": {}, "alpha": None, "alpha_dependent": False,
            "seed": 0, "num_samples": 2, "num_steps": 4, "budget": None, "budget_index": None, "quick": False,
            "environment": {}, "status": "ok", "params": {}, "knob": None, "knob_value": None,
            "knob_source": "natural", "predicted": {"measure": "nfe", "cost_per_sample": 4.0},
            "actual": {"measure": "nfe", "cost_per_sample": 4.0, "nfe_per_sample": 4.0},
            "budget_error": None, "within_budget": None, "counters": {}, "timings": {"sample_s": 0.1},
            "value_training": None, "rewards": [0.5, -0.5], "eval_rewards": {}, "metrics": {}, "notes": {},
            "info": {}, "reference": None}


def _setup_bench(tmp: Path, kind: str) -> None:
    folder = tmp / "bench"
    folder.mkdir(exist_ok=True)
    runs = folder / "runs.jsonl"
    good = json.dumps(_OK_LINE) + "\n"
    lines = {
        "good": good,
        "other-suite": json.dumps({**_OK_LINE, "suite": "someone-else"}) + "\n",
        "list-line": good + "[1, 2, 3]\n",
        "number-line": good + "42\n",
        "string-line": good + '"hello"\n',
        "dict-line": good + '{"hello": "world"}\n',
        "ok-line-missing-fields": good + '{"status": "ok", "suite": "malformed", "cell": "x"}\n',
        "rewards-not-list": good + json.dumps({**_OK_LINE, "cell": "y", "rewards": "high"}) + "\n",
        "metrics-not-mapping": good + json.dumps({**_OK_LINE, "cell": "z", "metrics": [1, 2]}) + "\n",
        "garbage-suite-yaml": good,
        "list-suite-yaml": good,
    }
    if kind == "binary":
        runs.write_bytes(good.encode() + b"\xff\xfe\x00\x81 not utf-8\n")
    elif kind == "runs-is-a-folder":
        runs.mkdir()
    else:
        runs.write_text(lines[kind])
    if kind == "garbage-suite-yaml":
        (folder / "suite.yaml").write_text("name: [unclosed\n  : : :\n")
    elif kind == "list-suite-yaml":
        (folder / "suite.yaml").write_text("- a\n- b\n")


SETUPS: dict[str, Callable[[Path, str], None]] = {
    "file": _setup_file,
    "unwritable": _setup_unwritable,
    "value": _setup_value,
    "out": _setup_out,
    "suite": _setup_suite,
    "bench": _setup_bench,
}


def prepare(case: Case, tmp_path) -> list[str]:
    """Run the case's setup in ``tmp_path`` and return its argv with ``{tmp}`` filled in."""
    tmp = Path(tmp_path)
    tmp.mkdir(parents=True, exist_ok=True)
    for step in (case.setup or "").split("+"):
        if step:
            kind, _, arg = step.partition(":")
            SETUPS[kind](tmp, arg)
    unwritable = _unwritable(tmp) if any(UNWRITABLE in a for a in case.argv) else ""
    return [a.replace(UNWRITABLE, unwritable).replace("{tmp}", str(tmp)) for a in case.argv]


# ------------------------------------------------------------------------------------------------
# judging a run
# ------------------------------------------------------------------------------------------------
ERROR_LINE = re.compile(r"^svdd(?: [a-z-]+)?: error: \S")


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are svdd (or argparse) error messages."""
    lines = [piece.strip() for line in stderr.splitlines() for piece in line.split("\r")]
    return [line for line in lines if ERROR_LINE.match(line)]


def _norm(text: str) -> str:
    return text.lower().replace("_", "-")


def needle_found(case: Case, line: str) -> bool:
    """Whether the error ``line`` names what the case expects (``-`` and ``_`` are the same, so
    ``--num-particles`` matches ``num_particles``)."""
    return case.needle is None or _norm(case.needle).lstrip("-") in _norm(line)


def classify(returncode: Optional[int], stderr: str, timed_out: bool = False) -> str:
    """How a malformed invocation ended:

    - ``"hang"``: did not finish in time;
    - ``"traceback"``: a Python traceback on stderr (or killed by a signal);
    - ``"accepted"``: exit code 0, the mistake went unnoticed;
    - ``"messy"``: refused, but not as one ``svdd: error:`` line with exit code 2 (a usage block,
      several error lines, another exit code);
    - ``"clean"``: exit code 2 and exactly one error line, no usage block.
    """
    if timed_out:
        return "hang"
    if "Traceback (most recent call last)" in stderr or returncode is None or returncode < 0:
        return "traceback"
    if returncode == 0:
        return "accepted"
    usage = any(line.startswith("usage:") for line in stderr.splitlines())
    if returncode == 2 and len(error_lines(stderr)) == 1 and not usage:
        return "clean"
    return "messy"


__all__ = ["Case", "CASES", "SETUPS", "SUITES", "prepare", "classify", "error_lines", "needle_found", "ERROR_LINE"]
