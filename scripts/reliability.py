"""Reliability probes of issue #14 and the page they generate, docs/reliability.md.

    python scripts/reliability.py all && python scripts/reliability.py render   # every probe, then the page
    python scripts/reliability.py kill --trials 30     # one probe (malformed|kill|tamper|concurrent|rewards)
    python scripts/reliability.py render --check       # exit 1 if docs/reliability.md is out of date

Each probe attacks the real tool the way a careful user or an adversary would, counts what
survived, and writes one JSON file to benchmarks/results/reliability/<probe>.json (atomically);
``render`` regenerates docs/reliability.md from those files only, so no number on the page is
typed by hand:

- ``malformed``: every case of tests/malformed_corpus.py as a real ``python -m svdd.cli``
  subprocess (60 s limit): survived = exit 2, one ``svdd: error:`` line, no traceback.
- ``kill``: ``kill -9`` at seeded random moments of runs with many one-sample shards (local and
  ``--backend process``), then ``--resume``; survived = samples.csv, every shard tensor and the
  summary's statistics and counters byte-identical to an uninterrupted run.
- ``tamper``: pickle payloads (whose ``__reduce__`` would create a marker file) in every file of
  finished run folders, a fitted value folder and a bench folder; symlinks in place of outputs;
  truncated, empty and wrong-size files. Survived = no marker, nothing outside ``--out`` touched,
  a one-line refusal or a recomputation identical to a clean run.
- ``concurrent``: two and three ``svdd sample`` runs started together on one ``--out`` with a
  model load slowed down by a few seconds; survived = exactly one finishes, the others exit 2 in
  one line naming the holder's pid, and the folder holds the winner's samples.
- ``rewards``: every method × {raise, NaN, inf, wrong shape, list, int, hang} on both toys and
  on molecules, in-process through ``svdd.sample`` (one killable worker process, a time limit
  per cell); survived = no exception (a clean ``RewardError`` for a wrong shape), no hang, and a
  ``RewardWarning`` whenever a reward evaluation failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability"
DOC = ROOT / "docs" / "reliability.md"
VENV = ROOT / ".venv"
PROBES = ("malformed", "kill", "tamper", "concurrent", "rewards")
TITLES = {
    "malformed": "malformed invocations (tests/malformed_corpus.py)",
    "kill": "`kill -9` at a random moment, then `--resume`",
    "tamper": "tampered run folders (pickle payloads, symlinks, damaged files)",
    "concurrent": "concurrent runs on one `--out` (slow model load)",
    "rewards": "faulty rewards (every method × fault × domain)",
}
TRACEBACK = "Traceback (most recent call last)"


def _python() -> str:
    exe = VENV / "bin" / "python"
    return str(exe) if exe.exists() else sys.executable


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "")
    env.update(extra)
    return env


def _git_revision() -> Optional[str]:
    if os.environ.get("SVDD_PROBE_REVISION"):          # set by `reliability.py before REV`
        return os.environ["SVDD_PROBE_REVISION"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], capture_output=True,
                               text=True, timeout=10, cwd=ROOT).stdout.strip()
        return (out.stdout.strip() + ("+dirty src" if dirty else "")) or None
    except Exception:
        return None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _sh(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------------------------
# subprocesses
# ------------------------------------------------------------------------------------------------
def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def run_cmd(cmd: list[str], *, cwd: Optional[Path] = None, timeout: float = 60, env: Optional[dict] = None,
            stdin: Optional[str] = None, shell: bool = False) -> dict:
    """Run ``cmd`` in its own process group; on timeout kill the whole group. Any process left in
    the group afterwards (a worker of the run) is killed too."""
    started = time.perf_counter()
    p = subprocess.Popen(cmd if not shell else cmd[0], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, text=True,
                         start_new_session=True, env=env or _env(), shell=shell)
    timed_out = False
    try:
        out, err = p.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(p.pid)
        out, err = p.communicate()
    _kill_group(p.pid)
    return {"rc": p.returncode, "stdout": out or "", "stderr": err or "", "timed_out": timed_out,
            "wall_s": round(time.perf_counter() - started, 3)}


def svdd_cmd(argv: list[str]) -> list[str]:
    return [_python(), "-m", "svdd.cli", *argv]


def run_svdd(argv: list[str], **kw) -> dict:
    server = _FORK_SERVERS.get()
    if server is not None and not kw.get("env") and not kw.get("stdin"):
        return server.run(argv, cwd=kw.get("cwd"), timeout=kw.get("timeout", 60))
    return run_cmd(svdd_cmd(argv), **kw)


# ------------------------------------------------------------------------------------------------
# fork servers: `python -m svdd.cli` semantics without paying the interpreter + torch start-up
# (~1.5 CPU-s) for each of hundreds of short runs
# ------------------------------------------------------------------------------------------------
def _fork_server_main() -> int:
    """``reliability.py _fork-server``: import svdd.cli once; for each request (a JSON line with
    argv, cwd, timeout) fork a child that runs ``svdd.cli`` as ``__main__`` (exactly what
    ``python -m svdd.cli ARGV`` runs) in its own session, with stdout / stderr in files; kill
    its whole process group at the timeout; answer with its exit status and output. The server
    itself never runs a tensor op, so the children start from an idle interpreter."""
    import io
    import runpy

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    import svdd.cli  # noqa: F401  (the import the children share)

    channel = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:                                       # the child: become `python -m svdd.cli`
            code = 1
            try:
                os.setsid()
                if req.get("cwd"):
                    os.chdir(req["cwd"])
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out_f.fileno(), 1)
                os.dup2(err_f.fileno(), 2)
                sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
                sys.argv = [str(ROOT / "src" / "svdd" / "cli.py"), *req["argv"]]
                try:
                    runpy.run_module("svdd.cli", run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exc:
                    if exc.code is None:
                        code = 0
                    elif isinstance(exc.code, int):
                        code = exc.code
                    else:
                        print(exc.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except BaseException:
                    pass
            finally:
                os._exit(code & 0xFF if isinstance(code, int) else 1)
        timed_out, status = False, None
        deadline = started + float(req.get("timeout", 60))
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                _kill_group(pid)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        _kill_group(pid)                                   # anything the run left in its session
        rc = os.waitstatus_to_exitcode(status) if status is not None else None
        texts = []
        for f in (out_f, err_f):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
            f.close()
        channel.write(json.dumps({"rc": rc, "stdout": texts[0], "stderr": texts[1], "timed_out": timed_out,
                                  "wall_s": round(time.perf_counter() - started, 3)}) + "\n")
        channel.flush()
    return 0


class ForkServer:
    """A pool of ``_fork-server`` processes, used from threads (one request per server at a time)."""

    def __init__(self, n: int):
        import queue

        self.free: "queue.Queue" = queue.Queue()
        self.procs = []
        for _ in range(max(1, n)):
            p = subprocess.Popen([_python(), str(Path(__file__).resolve()), "_fork-server"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
                                 start_new_session=True)
            self.procs.append(p)
            self.free.put(p)

    def run(self, argv: list[str], cwd=None, timeout: float = 60) -> dict:
        p = self.free.get()
        try:
            p.stdin.write(json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd) if cwd else None,
                                      "timeout": timeout}) + "\n")
            p.stdin.flush()
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a fork server died")
            return json.loads(line)
        finally:
            self.free.put(p)

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()
                p.wait(timeout=10)
            except Exception:
                _kill_group(p.pid)


class _ServerSlot:
    def __init__(self):
        self.server: Optional[ForkServer] = None

    def get(self) -> Optional[ForkServer]:
        return self.server


_FORK_SERVERS = _ServerSlot()


def has_traceback(res: dict) -> bool:
    return TRACEBACK in res["stderr"] or TRACEBACK in res["stdout"]


_ERROR_LINE = re.compile(r"^svdd(?: [\w-]+)?: error: ")


def error_lines(stderr: str) -> tuple[list[str], list[str]]:
    """(``svdd: error:`` lines, other lines that are not argparse usage, svdd notices or warnings)."""
    errors, other, in_usage = [], [], False
    for line in stderr.splitlines():
        if not line.strip():
            in_usage = False
            continue
        if _ERROR_LINE.match(line):
            errors.append(line)
            in_usage = False
        elif line.startswith("usage:"):
            in_usage = True
        elif in_usage and line.startswith(" "):
            continue
        elif line.startswith("svdd: ") or "Warning" in line or line.startswith("  warnings.warn"):
            continue
        else:
            other.append(line)
    return errors, other


def one_line_error(res: dict) -> bool:
    errors, other = error_lines(res["stderr"])
    return len(errors) == 1 and not other and "\n" not in errors[0]


def brief(text: str, limit: int = 220) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    tb = [ln for ln in lines if re.match(r"^\w*(Error|Exception|Interrupt)\b", ln)]
    last = tb[-1] if tb else lines[-1]
    return last[:limit]


# ------------------------------------------------------------------------------------------------
# run-folder fingerprints (to compare a resumed run with an uninterrupted one)
# ------------------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _file_sha(path: Path) -> Optional[str]:
    try:
        return _sha(path.read_bytes())
    except OSError:
        return None


def _load_shard(path: Path) -> dict:
    """Tensors of one shard file, never unpickling anything (safetensors, or weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        return dict(load(path.read_bytes()))
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def shard_tensors(folder: Path) -> dict:
    """``{label/key: sha of the shards' tensors stacked in index order}`` for shards/method|baseline."""
    import torch

    out: dict[str, Any] = {}
    for label_dir in sorted((folder / "shards").glob("*")) if (folder / "shards").is_dir() else []:
        by_index: dict[int, Path] = {}
        for p in label_dir.glob("shard_*"):
            m = re.fullmatch(r"shard_(\d+)\.(safetensors|pt)", p.name)
            if not m:
                continue
            i = int(m.group(1))
            if i not in by_index or p.suffix == ".safetensors":
                by_index[i] = p
        stacks: dict[str, list] = {}
        for i in sorted(by_index):
            try:
                tensors = _load_shard(by_index[i])
            except Exception as err:
                out[f"{label_dir.name}/unreadable_{i}"] = type(err).__name__
                continue
            for k, v in tensors.items():
                stacks.setdefault(k, []).append(v)
        out[f"{label_dir.name}/num_shards"] = len(by_index)
        for k, vs in sorted(stacks.items()):
            try:
                t = torch.cat([v.reshape(v.shape[0], -1) if v.dim() else v.reshape(1, 1) for v in vs])
                out[f"{label_dir.name}/{k}"] = f"{list(t.shape)} {t.dtype} {_sha(t.contiguous().numpy().tobytes())}"
            except Exception as err:
                out[f"{label_dir.name}/{k}"] = f"unstackable ({type(err).__name__})"
    return out


_VOLATILE = re.compile(r"(_s$|time|retries|^failures$|timeouts|worker|^tasks$|^completed$|resum|attempts)")


def summary_core(path: Path) -> Any:
    """What must not depend on where a run was interrupted: statistics, metrics, sample counters."""
    try:
        s = json.loads(path.read_text())
    except Exception as err:
        return f"unreadable ({type(err).__name__})"

    def counters(c):
        return {k: v for k, v in sorted((c or {}).items()) if not _VOLATILE.search(k)}

    core = {k: s.get(k) for k in ("num_samples", "num_steps", "num_shards", "reward_stats", "metrics", "method")}
    core["counters"] = counters(s.get("counters"))
    if s.get("baseline"):
        core["baseline"] = {"reward_stats": s["baseline"].get("reward_stats"),
                            "counters": counters(s["baseline"].get("counters"))}
    return core


def fingerprint(folder: Path) -> dict:
    return {"samples.csv": _file_sha(folder / "samples.csv"), "shards": shard_tensors(folder),
            "summary": summary_core(folder / "summary.json")}


def diff_fingerprints(a: dict, b: dict) -> list[str]:
    out = []
    if a["samples.csv"] != b["samples.csv"]:
        out.append("samples.csv")
    for k in sorted(set(a["shards"]) | set(b["shards"])):
        if a["shards"].get(k) != b["shards"].get(k):
            out.append(f"shards {k}")
    if json.dumps(a["summary"], sort_keys=True, default=str) != json.dumps(b["summary"], sort_keys=True, default=str):
        sa, sb = a["summary"], b["summary"]
        keys = sorted(set(sa) | set(sb)) if isinstance(sa, dict) and isinstance(sb, dict) else ["(whole)"]
        out += [f"summary {k}" for k in keys
                if not isinstance(sa, dict) or not isinstance(sb, dict)
                or json.dumps(sa.get(k), sort_keys=True, default=str) != json.dumps(sb.get(k), sort_keys=True,
                                                                                     default=str)]
    return out


def _shard_count(folder: Path) -> int:
    return sum(1 for p in folder.glob("shards/*/shard_*") if re.fullmatch(r"shard_\d+\.(safetensors|pt)", p.name))


# ------------------------------------------------------------------------------------------------
# result bookkeeping
# ------------------------------------------------------------------------------------------------
class Probe:
    def __init__(self, name: str, sizes: dict, seed: Optional[int] = None):
        self.name = name
        self.sizes = sizes
        self.seed = seed
        self.cases: list[dict] = []
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []
        self.code: Optional[str] = None
        self.started = time.time()

    def bump(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def add(self, case_id: str, survived: bool, reason: str = "", repro: str = "", **extra) -> dict:
        case = {"id": case_id, "survived": bool(survived), "reason": reason, **extra}
        if repro and not survived:
            case["repro"] = repro
        self.cases.append(case)
        mark = "ok  " if survived else "LOST"
        print(f"  [{self.name}] {mark} {case_id}" + (f": {reason}" if reason and not survived else ""), flush=True)
        return case

    def save(self, out_dir: Path) -> Path:
        import torch

        tried = len(self.cases)
        survived = sum(c["survived"] for c in self.cases)
        data = {"probe": self.name, "title": TITLES[self.name], "tried": tried, "survived": survived,
                "lost": tried - survived, "counts": dict(sorted(self.counts.items())), "sizes": self.sizes,
                "seed": self.seed, "notes": self.notes, "code": self.code, "git_revision": _git_revision(),
                "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "wall_s": round(time.time() - self.started, 1), "python": platform.python_version(),
                "torch": torch.__version__, "host_cpu_count": os.cpu_count(),
                "command": f"python scripts/reliability.py {self.name}", "cases": self.cases}
        path = out_dir / f"{self.name}.json"
        _write_json(path, data)
        print(f"[{self.name}] {survived}/{tried} survived in {data['wall_s']:.0f} s -> {path}",
              flush=True)
        return path


# ------------------------------------------------------------------------------------------------
# 1. malformed invocations
# ------------------------------------------------------------------------------------------------
def probe_malformed(args) -> Probe:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import malformed_corpus as corpus
    except Exception as err:
        probe = Probe("malformed", {"cases": 0})
        probe.notes.append(f"tests/malformed_corpus.py could not be imported ({type(err).__name__}: {err})")
        print(f"[malformed] {probe.notes[-1]}")
        return probe
    cases = list(getattr(corpus, "CASES", None) or getattr(corpus, "cases", lambda: [])())
    if args.limit:
        cases = cases[:args.limit]
    probe = Probe("malformed", {"cases": len(cases), "timeout_s": args.timeout, "parallel": args.jobs})
    for key in ("tracebacks", "hangs", "accepted", "exit_not_2", "multi_line", "wrong_message"):
        probe.counts[key] = 0
    base = Path(tempfile.mkdtemp(prefix="svdd-rel-malformed-"))

    def one(i_case):
        i, case = i_case
        tmp = base / f"c{i:03d}"
        tmp.mkdir()
        cid = str(getattr(case, "id", i))
        try:
            argv = corpus.prepare(case, tmp)
        except Exception as err:
            return cid, None, f"prepare failed: {type(err).__name__}: {err}", []
        if isinstance(argv, str):              # a shell pipeline, e.g. "svdd list rewards | head -1"
            cmdline = argv.replace("svdd ", f"{_python()} -m svdd.cli ", 1)
            res = run_cmd([f"set -o pipefail; {cmdline}"], cwd=tmp, timeout=args.timeout, shell=True)
            return cid, res, None, argv
        argv = [str(a) for a in argv]
        res = run_svdd(argv, cwd=tmp, timeout=args.timeout)
        return cid, res, None, argv

    from concurrent.futures import ThreadPoolExecutor

    classify = getattr(corpus, "classify", None)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for (cid, res, problem, argv), case in zip(pool.map(one, enumerate(cases)), cases):
            template = getattr(case, "argv", None)
            repro = ("svdd " + _sh([str(a) for a in template]) if template is not None and not isinstance(argv, str)
                     else str(argv))
            if getattr(case, "setup", None):
                repro += f"  # setup {case.setup} (tests/malformed_corpus.py), {{tmp}} = its folder"
            if res is None:
                probe.add(cid, False, problem or "", repro)
                continue
            tb, hang = has_traceback(res), res["timed_out"]
            errors, other = error_lines(res["stderr"])
            if classify is not None:           # the corpus's own judge, so test and probe agree
                outcome = classify(res["rc"], res["stderr"], hang)
                if tb and outcome not in ("traceback", "hang"):
                    outcome = "traceback"
            else:
                outcome = ("hang" if hang else "traceback" if tb else "accepted" if res["rc"] == 0 else
                           "clean" if res["rc"] == 2 and len(errors) == 1 and not other else "messy")
            needle = getattr(case, "needle", None)
            wrong_message = outcome == "clean" and needle and not any(needle.lower() in e.lower() for e in errors)
            probe.bump("tracebacks", outcome == "traceback")
            probe.bump("hangs", outcome == "hang")
            probe.bump("accepted", outcome == "accepted")
            probe.bump("exit_not_2", outcome not in ("hang", "accepted") and res["rc"] != 2)
            probe.bump("multi_line", outcome == "messy")
            probe.bump("wrong_message", bool(wrong_message))
            why = ""
            if outcome == "hang":
                why = f"hang (> {args.timeout:g} s)"
            elif outcome == "traceback":
                why = f"traceback, exit {res['rc']}: {brief(res['stderr'])}"
            elif outcome == "accepted":
                why = "accepted silently (exit 0)"
            elif outcome == "messy":
                why = (f"exit {res['rc']}, {len(errors)} error line(s)"
                       f"{', a usage block' if 'usage:' in res['stderr'] else ''}: "
                       f"{brief(res['stderr']) or '(no output)'}")
            elif wrong_message:
                why = f"the error does not mention {needle!r}: {errors[0][:160]}"
            probe.add(cid, not why, why, repro, rc=res["rc"], wall_s=res["wall_s"], outcome=outcome)
    shutil.rmtree(base, ignore_errors=True)
    return probe


# ------------------------------------------------------------------------------------------------
# 2. kill -9 and resume
# ------------------------------------------------------------------------------------------------
ORPHAN_WAIT_S = 3.0   # how long a killed run's worker processes may outlive it before they count as left
KILL_CONFIGS = [("toy-masked", "local"), ("toy-gaussian", "process"), ("toy-gaussian", "local"),
                ("toy-masked", "process")]


def _kill_argv(domain: str, backend: str, out: Path, samples: int) -> list[str]:
    argv = ["sample", "--domain", domain, "--method", "svdd-pm", "--num-candidates", "2", "--num-samples",
            str(samples), "--batch-size", "1", "--num-steps", "4" if domain == "toy-masked" else "10",
            "--seed", "7", "--out", str(out), "--quiet"]
    if backend == "process":
        argv += ["--backend", "process", "--workers", "2"]
    return argv


def _kill_trial(trial: int, seed: int, domain: str, backend: str, ref_wall: float, out: Path, samples: int) -> dict:
    """Kill -9 one run at random moments until a kill lands after shards were written (at most
    6 rounds; a round that ends before its kill moment restarts the trial earlier), then resume."""
    rng = random.Random(seed * 1000 + trial)
    argv = _kill_argv(domain, backend, out, samples)
    total = 2 * samples
    kills, moments, shards_at_kill, log, orphans, orphan_s = 0, [], [], [], 0, 0.0
    frac_hi = 1.0
    by_count = (trial // len(KILL_CONFIGS)) % 2 == 1
    for round_ in range(5):
        t = rng.uniform(0.05, frac_hi) * ref_wall
        k, extra = rng.randint(1, total - 1), rng.uniform(0, 0.2)
        cmd = svdd_cmd(argv + (["--resume"] if kills else []))
        started = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env=_env())
        finished = False
        if by_count:                            # the moment k shards exist, plus 0-200 ms
            while p.poll() is None and _shard_count(out) < k and time.perf_counter() - started < 600:
                time.sleep(0.02)
            time.sleep(extra)
            finished = p.poll() is not None
            t = time.perf_counter() - started
        else:                                   # a random moment of the run's wall time
            try:
                p.wait(timeout=t)
                finished = True
            except subprocess.TimeoutExpired:
                pass
        if finished:                            # it ended before the kill moment: start over, earlier
            err = p.stderr.read() if p.stderr else ""
            if TRACEBACK in err:
                log.append(f"round {round_}: traceback: {brief(err)}")
            _kill_group(p.pid)
            shutil.rmtree(out, ignore_errors=True)
            kills, moments, shards_at_kill = 0, [], []
            frac_hi = max(0.15, frac_hi * 0.6)
            continue
        os.kill(p.pid, signal.SIGKILL)          # kill -9 of the run's main process only
        p.wait()
        kills += 1
        moments.append(round(t, 2))
        waited = time.perf_counter()
        while _group_alive(p.pid) and time.perf_counter() - waited < ORPHAN_WAIT_S:   # its orphaned workers
            time.sleep(0.1)
        orphan_s = max(orphan_s, time.perf_counter() - waited)
        if _group_alive(p.pid):
            orphans += 1
        _kill_group(p.pid)
        if p.stderr:
            p.stderr.close()
        n = _shard_count(out)
        shards_at_kill.append(n)
        if n > 0:                               # a kill amid (or after) the shard writes
            break
    res = run_svdd(argv + ["--resume"], timeout=600)
    return {"argv": argv, "kills": kills, "kill_after_s": moments, "shards_at_kill": shards_at_kill,
            "shards_total": total, "log": log, "orphans": orphans, "orphan_s": round(orphan_s, 2), "res": res}


def probe_kill(args) -> Probe:
    probe = Probe("kill", {"trials": args.trials, "samples_per_run": args.samples,
                           "shards_per_run": 2 * args.samples, "shard_size": 1, "parallel_trials": args.jobs,
                           "configs": ", ".join(f"{d} / {b}" for d, b in KILL_CONFIGS),
                           "method": "svdd-pm (M = 2) with the pretrained baseline, 4 (masked) or 10 (gaussian) "
                                     "steps; process backend with 2 workers",
                           "kill_moment": "half the trials at a time uniform in [0.05, 1] x the uninterrupted "
                                          "run's wall time, half 0-200 ms after the k-th shard file appeared "
                                          "(k uniform; seeded); a kill before any shard was written is followed "
                                          "by a --resume killed again (at most 5 kills per trial)"},
                  seed=args.seed)
    for key in ("identical", "differing", "failed_to_resume", "tracebacks", "hangs", "kills", "orphans_left"):
        probe.counts[key] = 0
    base = Path(tempfile.mkdtemp(prefix="svdd-rel-kill-"))
    refs: dict[tuple, tuple[dict, float]] = {}
    for domain, backend in KILL_CONFIGS:
        out = base / f"ref-{domain}-{backend}"
        res = run_svdd(_kill_argv(domain, backend, out, args.samples), timeout=600)
        if res["rc"] != 0:
            probe.notes.append(f"reference run {domain}/{backend} failed (exit {res['rc']}): {brief(res['stderr'])}")
            continue
        refs[(domain, backend)] = (fingerprint(out), res["wall_s"])
        print(f"  [kill] reference {domain}/{backend}: {res['wall_s']:.1f} s", flush=True)
    for domain in ("toy-masked", "toy-gaussian"):
        got = [refs[(domain, b)][0] for b in ("local", "process") if (domain, b) in refs]
        if len(got) == 2 and diff_fingerprints(got[0], got[1]):
            probe.notes.append(f"the uninterrupted local and process runs of {domain} differ: "
                               + ", ".join(diff_fingerprints(got[0], got[1])[:4]))
    plan = [(trial, *KILL_CONFIGS[trial % len(KILL_CONFIGS)]) for trial in range(args.trials)]
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        trial, domain, backend = item
        if (domain, backend) not in refs:
            return None
        return _kill_trial(trial, args.seed, domain, backend, refs[(domain, backend)][1], base / f"t{trial:02d}",
                           args.samples)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(one, plan))
    for (trial, domain, backend), r in zip(plan, outcomes):
        cid = f"trial {trial:02d} {domain}/{backend}"
        if r is None:
            probe.add(cid, False, "no reference run")
            probe.bump("failed_to_resume")
            continue
        argv, res = r["argv"], r["res"]
        out = base / f"t{trial:02d}"
        repro = (f"svdd {_sh(argv)}  # kill -9 after {r['kill_after_s']} s, then: svdd {_sh(argv + ['--resume'])}")
        extra = {k: r[k] for k in ("kills", "kill_after_s", "shards_at_kill", "shards_total", "orphan_s")}
        if r["log"]:
            extra["log"] = r["log"]
        probe.bump("kills", r["kills"])
        probe.bump("orphans_left", r["orphans"])
        if r["kills"] == 0:
            probe.add(cid, False, "the run always finished before the kill moment", repro, **extra)
            probe.bump("failed_to_resume")
            continue
        probe.bump("tracebacks", has_traceback(res) or any("traceback" in x for x in r["log"]))
        probe.bump("hangs", res["timed_out"])
        if res["rc"] != 0 or res["timed_out"]:
            probe.bump("failed_to_resume")
            probe.add(cid, False, f"--resume exit {res['rc']}{' (hang)' if res['timed_out'] else ''}: "
                      f"{brief(res['stderr'])}", repro, **extra)
            continue
        diff = diff_fingerprints(refs[(domain, backend)][0], fingerprint(out))
        leftovers = sorted(p.name for p in out.rglob(".*tmp*"))
        if leftovers:
            extra["temp_files_left"] = len(leftovers)
        if diff:
            probe.bump("differing")
            probe.add(cid, False, "differs from the uninterrupted run: " + ", ".join(diff[:6]), repro, **extra)
        else:
            probe.bump("identical")
            probe.add(cid, True, "", **extra)
    if probe.counts["orphans_left"]:
        probe.notes.append(f"{probe.counts['orphans_left']} kill(s) of a --backend process run left its worker "
                           f"processes alive {ORPHAN_WAIT_S:g} s later (the probe then killed them; they write "
                           "nothing, the main process writes the shards)")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return probe


# ------------------------------------------------------------------------------------------------
# 3. tampered run folders
# ------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this object runs ``exec(code)``: the code creates the marker file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('foreign code ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def _payload_bytes(marker: Path, kind: str) -> bytes:
    """``kind``: ``torch`` (a torch.save zip whose pickle holds tensors and the payload, what
    ``torch.load(weights_only=False)`` reads) or ``pickle`` (a bare pickle stream)."""
    if kind == "pickle":
        return pickle.dumps({"x0": [0.0], "pwn": _Payload(marker)}, protocol=2)
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"x0": torch.zeros(2, 3, dtype=torch.long), "rewards": torch.zeros(2), "info": {},
                "pwn": _Payload(marker)}, buf)
    return buf.getvalue()


def _tamper_argv(out: Path, backend: str = "local", extra: Optional[list] = None) -> list[str]:
    argv = ["sample", "--domain", "toy-masked", "--method", "svdd-pm", "--num-candidates", "2", "--num-samples", "6",
            "--batch-size", "2", "--num-steps", "4", "--seed", "3", "--out", str(out), "--quiet"]
    if backend == "process":
        argv += ["--backend", "process", "--workers", "1"]
    return argv + (extra or [])


def _snapshot(path: Path) -> Any:
    """Content and mtimes of a file or folder (to prove it was not touched)."""
    if path.is_dir():
        return {str(p.relative_to(path)): (_file_sha(p), p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))
                if p.is_file()}
    try:
        return (_file_sha(path), path.stat().st_mtime_ns, path.stat().st_size)
    except OSError:
        return None


def _say_out(folder: Path) -> None:
    """Make a copied run folder's config.json name its new place, as if the run had been made
    there (older versions refuse to resume a moved folder: "run with different out")."""
    cfg = folder / "config.json"
    try:
        c = json.loads(cfg.read_text())
        if isinstance(c, dict) and "out" in c:
            c["out"] = str(folder)
            cfg.write_text(json.dumps(c, indent=2) + "\n")
    except (OSError, ValueError):
        pass


def _shard(folder: Path, label: str, index: int) -> Path:
    """The file of shard ``index`` whatever its format (.safetensors now, .pt in older versions)."""
    found = sorted(folder.glob(f"shards/{label}/shard_{index:05d}.*"))
    return found[0] if found else folder / "shards" / label / f"shard_{index:05d}.safetensors"


def probe_tamper(args) -> Probe:
    probe = Probe("tamper", {"run": "toy-masked svdd-pm, 6 samples in shards of 2 (+ baseline), 4 steps",
                             "value": "fit-value toy-masked, 16 rollouts, 5 train steps",
                             "bench": "a copy of benchmarks/results/toys-quick"})
    for key in ("markers", "outside_modified", "tracebacks", "hangs", "not_identical", "unreported"):
        probe.counts[key] = 0
    base = Path(tempfile.mkdtemp(prefix="svdd-rel-tamper-"))
    marker_dir = base / "markers"
    marker_dir.mkdir()
    clean: dict[str, Path] = {}
    ref: dict[str, dict] = {}
    for backend in ("local", "process"):
        out = base / f"clean-{backend}"
        res = run_svdd(_tamper_argv(out, backend), timeout=300)
        if res["rc"] != 0:
            probe.notes.append(f"clean {backend} run failed: {brief(res['stderr'])}")
            continue
        clean[backend], ref[backend] = out, fingerprint(out)
    counter = [0]

    def fresh(backend: str) -> Path:
        counter[0] += 1
        dst = base / f"case{counter[0]:03d}" / "run"
        shutil.copytree(clean[backend], dst, symlinks=True)
        _say_out(dst)
        return dst

    pending: list[tuple] = []

    def later(argv, timeout, case_id, marker, **kw):
        """Queue a run; the runs go in parallel (args.jobs) and are judged in order at the end."""
        pending.append((argv, timeout, case_id, marker, kw))

    def check(case_id, res, marker, *, out=None, backend="local", outside=None, require_identical=False,
              require_report=None, allow_refusal=True, repro=""):
        why = []
        if marker is not None and marker.exists():
            probe.bump("markers")
            why.append("FOREIGN CODE RAN (marker file created)")
        if outside is not None:
            for path, before in outside.items():
                if _snapshot(path) != before:
                    probe.bump("outside_modified")
                    why.append(f"file outside --out changed: {path.name}")
        if has_traceback(res):
            probe.bump("tracebacks")
            why.append(f"traceback ({brief(res['stderr'])})")
        if res["timed_out"]:
            probe.bump("hangs")
            why.append("hang")
        outcome = "refused" if res["rc"] == 2 else ("recomputed" if res["rc"] == 0 else f"exit {res['rc']}")
        if res["rc"] == 2:
            if not allow_refusal:
                why.append(f"refused instead of recomputing: {brief(res['stderr'])}")
            elif not one_line_error(res):
                why.append(f"refusal is not one line: {brief(res['stderr'])}")
        elif res["rc"] == 0:
            if out is not None and (require_identical or backend in ref):
                diff = diff_fingerprints(ref[backend], fingerprint(out))
                if diff:
                    probe.bump("not_identical")
                    why.append("output differs from a clean run: " + ", ".join(diff[:4]))
            if require_report and not re.search(require_report, res["stderr"], re.I):
                probe.bump("unreported")
                why.append("recomputed silently (no notice on stderr)")
        elif not res["timed_out"]:
            why.append(f"exit {res['rc']}: {brief(res['stderr'])}")
        return probe.add(case_id, not why, "; ".join(why), repro if why else "", outcome=outcome)

    # (a) pickle payloads in every file a pickle loader could read -------------------------------
    for backend in [b for b in ("local", "process") if b in clean]:
        files = sorted(p.relative_to(clean[backend]) for p in clean[backend].rglob("*") if p.is_file())
        shards = [f for f in files if re.fullmatch(r"shard_\d+\.\w+", f.name)]
        manifests = [f for f in files if f.name == "manifest.json"]
        groups = [(str(f), [f]) for f in files if f not in shards and f not in manifests]
        if backend == "process":   # the process backend's own read path: the shard folders
            groups = []
        groups += [("every shard file", shards), ("every shard manifest", manifests)]
        for j, (what, rels) in enumerate(groups):
            out = fresh(backend)
            marker = marker_dir / f"{backend}-{counter[0]}"
            kind = "pickle" if j % 2 and len(rels) == 1 else "torch"
            for rel in rels:
                (out / rel).write_bytes(_payload_bytes(marker, kind))
            argv = _tamper_argv(out, backend, ["--resume"])
            later(argv, 120, f"pickle/{backend}: {kind} payload replaces {what}", marker, out=out, backend=backend,
                  repro=f"# write a {kind} payload over {', '.join(f'RUN/{r}' for r in rels)}; then: svdd {_sh(argv)}")
        # payloads appended after the real content of every shard (a loader that reads on)
        out = fresh(backend)
        marker = marker_dir / f"{backend}-append-{counter[0]}"
        for p in sorted(out.glob("shards/*/shard_*")):
            with open(p, "ab") as fh:
                fh.write(_payload_bytes(marker, "pickle"))
        argv = _tamper_argv(out, backend, ["--resume"])
        later(argv, 120, f"pickle/{backend}: payload appended to every shard", marker, out=out, backend=backend,
              require_report=r"shard|damag|checksum|recomput", repro=f"svdd {_sh(argv)}")
        # legacy shard_XXXXX.pt next to (or instead of) every shard, as older versions wrote them
        for replace in (False, True):
            out = fresh(backend)
            marker = marker_dir / f"{backend}-legacy-{replace}-{counter[0]}"
            for p in sorted(out.glob("shards/*/shard_*.safetensors")):
                p.with_suffix(".pt").write_bytes(_payload_bytes(marker, "torch"))
                if replace:
                    p.unlink()
            argv = _tamper_argv(out, backend, ["--resume"])
            where = "instead of" if replace else "next to"
            later(argv, 120, f"pickle/{backend}: legacy shard_*.pt payloads {where} the shards",
                  marker, out=out, backend=backend, repro=f"svdd {_sh(argv)}")
    # a fitted value folder with planted pickles, loaded by svdd-mc
    value = base / "value"
    res = run_svdd(["fit-value", "--domain", "toy-masked", "--num-rollouts", "16", "--train-steps", "5",
                    "--num-steps", "4", "--out", str(value), "--quiet"], timeout=300)
    if res["rc"] != 0 or not value.is_dir():
        probe.notes.append(f"fit-value failed: {brief(res['stderr'])}")
    else:
        vfiles = sorted(p.name for p in value.iterdir() if p.is_file())
        for names in [[n] for n in vfiles] + [["value.pt", "model.pt", "pytorch_model.bin"]]:
            name = ", ".join(names)
            v2 = base / f"value-{names[0]}"
            shutil.copytree(value, v2)
            marker = marker_dir / f"value-{names[0]}"
            for n in names:
                (v2 / n).write_bytes(_payload_bytes(marker, "torch"))
            out = base / f"value-run-{names[0]}"
            argv = ["sample", "--domain", "toy-masked", "--method", "svdd-mc", "--value", str(v2), "--num-samples",
                    "2", "--num-steps", "4", "--out", str(out), "--quiet"]
            planted = "planted" if name not in vfiles else "replaces"
            later(argv, 120, f"pickle/value: payload {planted} {name}", marker,
                  repro=f"# svdd fit-value ... --out V; write a payload to V/{name}; then svdd {_sh(argv)}")
    # a bench folder: every file replaced by a payload, then svdd report
    bench_src = ROOT / "benchmarks" / "results" / "toys-quick"
    if bench_src.is_dir():
        bfiles = [p.relative_to(bench_src) for p in sorted(bench_src.rglob("*")) if p.is_file()
                  and p.suffix not in (".png", ".svg", ".md")]
        for rel in bfiles:
            b2 = base / f"bench-{counter[0]}-{rel.name}"
            counter[0] += 1
            shutil.copytree(bench_src, b2)
            marker = marker_dir / f"bench-{rel.name}-{counter[0]}"
            (b2 / rel).write_bytes(_payload_bytes(marker, "torch"))
            argv = ["report", str(b2), "--output", str(b2 / "r.md")]
            later(argv, 180, f"pickle/bench report: payload replaces {rel}", marker,
                  repro=f"# copy benchmarks/results/toys-quick to B, payload over B/{rel}; svdd {_sh(argv)}")
    # (b) symlinks in place of outputs --------------------------------------------------------
    targets = [("local", "samples.csv"), ("local", "summary.json"), ("local", "config.json"),
               ("local", "reward_hist.png"), ("local", "shards/method/shard_00000.safetensors"),
               ("local", "shards/method/manifest.json"), ("local", "shards/method"), ("local", "shards"),
               ("process", "shards/method/shard_00001.safetensors"), ("process", "shards/baseline"),
               ("local", ".")]
    for backend, rel in targets:
        if backend not in clean:
            continue
        out = fresh(backend)
        outside_dir = out.parent / "outside"
        outside_dir.mkdir()
        if rel == ".":                           # --out itself is a link to another folder
            real = outside_dir / "real-run"
            shutil.move(str(out), real)
            out.symlink_to(real, target_is_directory=True)
            target = real
        else:
            m = re.fullmatch(r"shards/(\w+)/shard_(\d+)\.safetensors", rel)
            src = _shard(out, m.group(1), int(m.group(2))) if m else out / rel
            target = outside_dir / src.name
            if src.exists():
                shutil.move(str(src), target)
            else:
                target.write_text("precious user data\n")
            src.symlink_to(target, target_is_directory=target.is_dir())
        before = {target: _snapshot(target)}
        argv = _tamper_argv(out, backend, ["--resume"])
        later(argv, 120, f"symlink/{backend}: {rel if rel != '.' else '--out'} -> a file outside --out", None,
              out=out if rel not in (".",) else None, backend=backend, outside=before,
              repro=f"# RUN/{rel} replaced by a symlink to a file outside RUN; then svdd {_sh(argv)}")
    # (c) damaged files -----------------------------------------------------------------------
    def truncate(path: Path, frac: float = 0.5) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * frac)])

    other_rows = base / "other-rows"
    argv_other = _tamper_argv(other_rows, "local")
    argv_other[argv_other.index("--batch-size") + 1] = "3"
    res = run_svdd(argv_other, timeout=300)
    wrong = sorted(other_rows.glob("shards/method/shard_00000.*")) if res["rc"] == 0 else []
    damages: list[tuple[str, str, Callable[[Path], None], Optional[str]]] = [
        ("local", "method shard 1 truncated to half", lambda o: truncate(_shard(o, "method", 1)),
         r"shard|damag|checksum|recomput"),
        ("local", "baseline shard 0 emptied (0 bytes)", lambda o: (_shard(o, "baseline", 0))
         .write_bytes(b""), r"shard|damag|checksum|recomput"),
        ("local", "config.json truncated", lambda o: truncate(o / "config.json"), r"config|damag|recomput"),
        ("local", "config.json emptied (0 bytes)", lambda o: (o / "config.json").write_bytes(b""),
         r"config|damag|recomput"),
        ("local", "manifest.json truncated", lambda o: truncate(o / "shards/method/manifest.json"),
         r"manifest|damag|recomput"),
        ("local", "manifest.json deleted", lambda o: (o / "shards/method/manifest.json").unlink(),
         r"manifest|shard|recomput"),
        ("local", "summary.json truncated", lambda o: truncate(o / "summary.json"), None),
        ("local", "samples.csv truncated", lambda o: truncate(o / "samples.csv"), None),
        ("local", "a stale temp file of an interrupted write", lambda o: (o / "shards/method/"
         ".shard_00002.safetensors.x1y2.tmp").write_bytes(b"\0" * 100), None),
        ("process", "method shard 2 truncated to half", lambda o: truncate(_shard(o, "method", 2)),
         r"shard|damag|checksum|recomput"),
        ("process", "baseline shard 1 emptied (0 bytes)", lambda o: (_shard(o, "baseline", 1))
         .write_bytes(b""), r"shard|damag|checksum|recomput"),
        ("process", "manifest.json truncated", lambda o: truncate(o / "shards/baseline/manifest.json"),
         r"manifest|damag|recomput"),
    ]
    if wrong:
        for backend in ("local", "process"):
            damages.append((backend, "method shard 0 replaced by a 3-sample shard of another run",
                            lambda o, w=wrong[0]: shutil.copyfile(w, o / "shards/method" / w.name),
                            r"shard|damag|checksum|expected|recomput"))
    else:
        probe.notes.append("the 3-sample run for the wrong-size shard case failed")
    for backend, what, damage, report in damages:
        if backend not in clean:
            continue
        out = fresh(backend)
        try:
            damage(out)
        except OSError as err:
            probe.notes.append(f"could not apply damage {what!r} ({err}); the run folder layout changed?")
            continue
        argv = _tamper_argv(out, backend, ["--resume"])
        later(argv, 120, f"damaged/{backend}: {what}", None, out=out, backend=backend, require_identical=True,
              require_report=report, allow_refusal=False,
              repro=f"# {what} in a finished RUN; then svdd {_sh(argv)}")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: run_svdd(job[0], timeout=job[1]), pending))
    for (argv, timeout, case_id, marker, kw), res in zip(pending, results):
        check(case_id, res, marker, **kw)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return probe


# ------------------------------------------------------------------------------------------------
# 4. concurrent runs on one folder
# ------------------------------------------------------------------------------------------------
SLOW_WRAPPER = """\
import os, sys, time
import svdd.domains.base as _base
_orig = _base.Domain.load_process
def _slow(self, *a, **k):
    time.sleep(float(os.environ.get("SVDD_PROBE_LOAD_SLEEP", "3")))
    return _orig(self, *a, **k)
_base.Domain.load_process = _slow
from svdd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _conc_argv(out: Path, seed: int, backend: str) -> list[str]:
    argv = ["sample", "--domain", "toy-masked", "--method", "svdd-pm", "--num-candidates", "2", "--num-samples", "8",
            "--batch-size", "2", "--num-steps", "4", "--seed", str(seed), "--out", str(out), "--quiet"]
    return argv + (["--backend", "process", "--workers", "1"] if backend == "process" else [])


def probe_concurrent(args) -> Probe:
    rng = random.Random(args.seed)
    probe = Probe("concurrent", {"trials": args.trials, "load_sleep_s": args.sleep,
                                 "run": "toy-masked svdd-pm, 8 samples in shards of 2 (+ baseline)",
                                 "start_spread_s": [0, 1.5]}, seed=args.seed)
    for key in ("silent_overwrites", "tracebacks", "hangs", "no_winner", "holder_not_named"):
        probe.counts[key] = 0
    base = Path(tempfile.mkdtemp(prefix="svdd-rel-conc-"))
    wrapper = base / "slow_load.py"
    wrapper.write_text(SLOW_WRAPPER)
    plan = [(2, "fresh", "local"), (2, "fresh", "process"), (3, "fresh", "local"), (3, "fresh", "process"),
            (2, "resume", "local"), (3, "resume", "process"), (2, "resume", "process"), (3, "resume", "local")]
    plan = (plan * ((args.trials + len(plan) - 1) // len(plan)))[:args.trials]
    from concurrent.futures import ThreadPoolExecutor

    need = sorted({(s, b) for k, mode, b in plan for s in (range(k) if mode == "fresh" else [0])})

    def reference(key):
        s, b = key
        out = base / f"ref-{s}-{b}"
        res = run_svdd(_conc_argv(out, s, b), timeout=300)
        return key, (fingerprint(out) if res["rc"] == 0 else None)

    with ThreadPoolExecutor(max_workers=3) as pool:        # the uninterrupted runs, three at a time
        refs: dict[tuple, Optional[dict]] = dict(pool.map(reference, need))
    for trial, (k, mode, backend) in enumerate(plan):
        seeds = list(range(k)) if mode == "fresh" else [0] * k
        out = base / f"t{trial:02d}"
        if mode == "resume":                    # a finished-then-damaged run: every resume has work to do
            if refs.get((0, backend)) is not None:
                shutil.copytree(base / f"ref-0-{backend}", out)
                _say_out(out)
            else:
                run_svdd(_conc_argv(out, 0, backend), timeout=300)
            for p in sorted(out.glob("shards/*/shard_*"))[1::2]:
                p.unlink()
            (out / "samples.csv").unlink(missing_ok=True)
            (out / "summary.json").unlink(missing_ok=True)
        procs, starts = [], []
        delays = sorted(rng.uniform(0, 1.5) for _ in range(k))
        t0 = time.perf_counter()
        for i in range(k):
            time.sleep(max(0.0, delays[i] - (time.perf_counter() - t0)))
            argv = _conc_argv(out, seeds[i], backend) + (["--resume"] if mode == "resume" else [])
            p = subprocess.Popen([_python(), str(wrapper), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True,
                                 env=_env(SVDD_PROBE_LOAD_SLEEP=str(args.sleep)))
            procs.append(p)
            starts.append(round(delays[i], 2))
        results = []
        for p in procs:
            try:
                o, e = p.communicate(timeout=300)
                results.append({"rc": p.returncode, "stdout": o, "stderr": e, "timed_out": False, "pid": p.pid})
            except subprocess.TimeoutExpired:
                _kill_group(p.pid)
                o, e = p.communicate()
                results.append({"rc": p.returncode, "stdout": o, "stderr": e, "timed_out": True, "pid": p.pid})
            _kill_group(p.pid)
        why = []
        winners = [i for i, r in enumerate(results) if r["rc"] == 0]
        tbs = sum(has_traceback(r) for r in results)
        hangs = sum(r["timed_out"] for r in results)
        probe.bump("tracebacks", tbs)
        probe.bump("hangs", hangs)
        if tbs:
            why.append(f"{tbs} traceback(s): {brief(next(r['stderr'] for r in results if has_traceback(r)))}")
        if hangs:
            why.append(f"{hangs} hang(s)")
        if len(winners) > 1:
            probe.bump("silent_overwrites")
            why.append(f"{len(winners)} runs finished on the same folder (seeds {[seeds[i] for i in winners]})")
        elif not winners:
            probe.bump("no_winner")
            why.append("no run finished: " + " | ".join(brief(r["stderr"]) for r in results))
        else:
            w = winners[0]
            want = refs.get((seeds[w], backend))
            if want is not None:
                diff = diff_fingerprints(want, fingerprint(out))
                if diff:
                    probe.bump("silent_overwrites")
                    why.append(f"the folder does not hold the winner's run (seed {seeds[w]}): {', '.join(diff[:4])}")
            for i, r in enumerate(results):
                if i == w or r["timed_out"]:
                    continue
                if r["rc"] != 2 or not one_line_error(r):
                    why.append(f"run {i}: exit {r['rc']}, {brief(r['stderr']) or '(no output)'}")
                elif str(results[w]["pid"]) not in r["stderr"]:
                    probe.bump("holder_not_named")
                    why.append(f"run {i} refused without naming the holder (pid {results[w]['pid']}): "
                               f"{brief(r['stderr'])}")
        cmd = _sh([_python(), "SLOW_WRAPPER.py", *_conc_argv(Path("RUN"), 0, backend)])
        probe.add(f"trial {trial:02d}: {k} runs, {mode}, {backend}", not why, "; ".join(why),
                  f"# {k} x `{cmd}{' --resume' if mode == 'resume' else ''}` (seeds {seeds}) started at {starts} s"
                  if why else "", exit_codes=[r["rc"] for r in results], starts_s=starts)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    probe.code = SLOW_WRAPPER
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return probe


# ------------------------------------------------------------------------------------------------
# 5. faulty rewards (cells run in a killable worker process)
# ------------------------------------------------------------------------------------------------
FAULTS = ("raise", "nan", "inf", "wrong-shape", "list", "int", "hang")
DOMAINS = ("toy-gaussian", "toy-masked", "molecules")
FAILING_FAULTS = ("raise", "nan", "inf", "hang")
FAULT_TEXT = {
    "raise": "raises RuntimeError on any batch holding a sample of the failing region",
    "nan": "NaN for the failing region",
    "inf": "+inf for the failing region (would win any selection)",
    "wrong-shape": "(B, 2) values for B samples",
    "list": "a Python list of floats",
    "int": "an int64 tensor (round(10·r))",
    "hang": "one call blocks for good (the reward runs in a `RewardPool` of 2 process workers with "
            "`timeout_s=1`, shared by a domain's cells: in-process rewards cannot be timed out, as documented)",
}


def _failing(x0):
    """The 'failing region': about half of the samples, decided by the sample alone."""
    import torch

    flat = x0.reshape(len(x0), -1)
    if flat.is_floating_point():
        return flat[:, 0] < 0
    return (flat.long().sum(1) % 3) != 0


class FaultyReward:
    """The domain's reward with one fault (see ``FAULT_TEXT``)."""

    def __init__(self, base, fault: str, flag: Optional[str] = None):
        self.base = base
        self.fault = fault
        self.flag = flag
        self.name = f"{getattr(base, 'name', 'reward')}[{fault}]"
        self.differentiable = bool(getattr(base, "differentiable", False))
        self.invalid_value = getattr(base, "invalid_value", None)

    def __call__(self, x0):
        import torch

        bad = _failing(x0)
        if self.fault == "hang" and self.flag and not os.path.exists(self.flag):
            Path(self.flag).write_text("hung once")
            time.sleep(10_000)
        if self.fault == "raise" and bool(bad.any()):
            raise RuntimeError("probe: reward backend failed")
        r = self.base(x0)
        r = torch.as_tensor(r).reshape(-1).float() if not isinstance(r, torch.Tensor) else r.reshape(-1)
        if self.fault == "nan":
            return torch.where(bad.to(r.device), torch.full_like(r, float("nan")), r)
        if self.fault == "inf":
            return torch.where(bad.to(r.device), torch.full_like(r, float("inf")), r)
        if self.fault == "wrong-shape":
            return torch.stack([r, r], 1)
        if self.fault == "list":
            return [float(v) for v in r.detach().cpu()]
        if self.fault == "int":
            return (r.detach() * 10).round().long()
        return r


class FaultyFactory:
    """Builds a ``FaultyReward`` in a reward worker (for the hang fault's ``RewardPool``)."""

    def __init__(self, domain: str, spec: str, fault: str, flag: Optional[str]):
        self.domain, self.spec, self.fault, self.flag = domain, spec, fault, flag

    def __call__(self):
        from svdd.domains import get_domain

        return FaultyReward(get_domain(self.domain).make_reward(self.spec), self.fault, self.flag)


METHOD_KNOBS = {
    "best-of-n": {"num_candidates": 2}, "svdd-pm": {"num_candidates": 2}, "svdd-mc": {"num_candidates": 2},
    "svdd-r": {"num_candidates": 2}, "random-search": {"num_candidates": 2}, "zero-order-search": {"num_candidates": 2},
    "smc": {"num_particles": 4}, "das": {"num_particles": 4}, "dno": {"num_iterations": 2},
}


def _reward_spec(domain: str, needs_grad: bool) -> Optional[str]:
    if domain == "molecules":
        return "surrogate:qed" if needs_grad else "qed"
    return None


_CELL_CACHE: dict = {}
_POOLS: dict = {}
HANG_TIMEOUT_S = 1.0


def run_cell(cell: dict) -> dict:
    """One (domain, method, fault) cell, in this (worker) process."""
    import warnings

    import torch

    import svdd
    from svdd.domains import get_domain
    from svdd.rewards.base import RewardError

    domain, method, fault = cell["domain"], cell["method"], cell["fault"]
    spec = svdd.ALGORITHMS[method]
    if domain not in _CELL_CACHE:
        d = get_domain(domain)
        _CELL_CACHE[domain] = (d, d.load_process())
    d, process = _CELL_CACHE[domain]
    if process.kind not in spec.kinds:
        return {"status": "n/a", "detail": f"{method} does not support {process.kind} processes"}
    rspec = _reward_spec(domain, spec.needs_gradients)
    base = d.make_reward(rspec)
    if spec.needs_gradients and not getattr(base, "differentiable", False):
        return {"status": "n/a", "detail": f"{domain} has no differentiable reward for {method}"}
    if fault == "hang":
        if spec.needs_gradients:
            return {"status": "n/a", "detail": "worker rewards are not differentiable; in-process rewards "
                                               "cannot be timed out"}
        if domain not in _POOLS:               # one pool per domain; each cell re-arms the hang
            from svdd.distributed import RewardPool

            flag = os.path.join(tempfile.mkdtemp(prefix="svdd-rel-hang-"), "hung")
            _POOLS[domain] = (RewardPool(FaultyFactory(domain, rspec, fault, flag), 2, backend="process",
                                         timeout_s=HANG_TIMEOUT_S, max_retries=0, cache=False), flag)
        reward, flag = _POOLS[domain]
        if os.path.exists(flag):
            os.unlink(flag)                    # the next call (in whichever worker) blocks for good
    else:
        reward = FaultyReward(base, fault)
    kwargs = {"num_samples": 2 if domain == "molecules" else 4,
              "num_steps": {"toy-gaussian": 8, "toy-masked": 4, "molecules": 4}[domain],
              "generator": torch.Generator().manual_seed(0), **METHOD_KNOBS.get(method, {})}
    if spec.needs_value:                       # an untrained value network: svdd-mc's reward path only
        from svdd.values.learned import LearnedValue, default_network

        with torch.random.fork_rng():
            torch.manual_seed(0)
            kwargs["value_fn"] = LearnedValue(default_network(process))
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = svdd.sample(process, reward, method=method, **kwargs)
            error = None
        except Exception as err:
            res, error = None, err
    wall = round(time.perf_counter() - started, 2)
    warns = [w for w in caught if type(w.message).__name__ == "RewardWarning"
             or w.category.__name__ == "RewardWarning"]
    out = {"wall_s": wall, "reward_warnings": len(warns),
           "warning": str(warns[0].message)[:200] if warns else None}
    if error is not None:
        is_reward_error = isinstance(error, RewardError)
        is_svdd = is_reward_error or isinstance(error, svdd.AlgorithmError)
        out.update({"status": "raised", "error": f"{type(error).__name__}: {str(error)[:200]}",
                    "reward_error": is_reward_error, "svdd_error": is_svdd,
                    "one_line": "\n" not in str(error).strip(),
                    "where": traceback.format_exception(type(error), error, error.__traceback__)[-2].strip()[:300]})
        return out
    info = res.info
    out.update({"status": "returned", "n": int(len(res.x0)),
                "reward_failed_samples": info.get("reward_failed_samples"),
                "reward_errors": info.get("reward_errors"), "reward_invalid": info.get("reward_invalid"),
                "reward_first_error": (str(info.get("reward_first_error"))[:160]
                                       if info.get("reward_first_error") else None),
                "reward_all_failed": info.get("reward_all_failed"),
                "finite_rewards": bool(torch.isfinite(res.rewards.float()).all())})
    return out


def _cell_worker_main() -> int:
    """``reliability.py _cell-worker``: read cells (JSON lines) on stdin, answer on stdout."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    real_stdout = sys.stdout
    sys.stdout = sys.stderr                      # library prints must not corrupt the channel
    for line in sys.stdin:
        cell = json.loads(line)
        try:
            res = run_cell(cell)
        except Exception as err:                 # a harness problem, reported as such
            res = {"status": "harness", "error": f"{type(err).__name__}: {err}",
                   "where": traceback.format_exc()[-600:]}
        real_stdout.write(json.dumps(res, default=str) + "\n")
        real_stdout.flush()
    _close_pools()
    return 0


def _close_pools() -> None:
    for pool, _ in _POOLS.values():
        try:
            pool.close()
        except Exception:
            pass
    _POOLS.clear()


class CellWorker:
    def __init__(self):
        self.proc = None
        self.lines: Any = None

    def start(self):
        import queue

        self.proc = subprocess.Popen([_python(), str(Path(__file__).resolve()), "_cell-worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True, env=_env())
        self.lines = queue.Queue()
        proc, lines = self.proc, self.lines

        def pump():
            for ln in proc.stdout:
                lines.put(ln)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def run(self, cell: dict, timeout: float) -> Optional[dict]:
        import queue

        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(cell) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            return None
        if line is None:
            self.stop()
            return {"status": "died", "error": "the worker process died (segfault / os._exit)"}
        return json.loads(line)

    def stop(self):
        if self.proc is not None:
            _kill_group(self.proc.pid)
            self.proc.wait()
            self.proc = None


def probe_rewards(args) -> Probe:
    import svdd

    methods = sorted(svdd.ALGORITHMS)
    domains = [d for d in DOMAINS if not args.domains or d in args.domains]
    probe = Probe("rewards", {"methods": len(methods), "faults": list(FAULTS), "domains": domains,
                              "samples": "4 (toys), 2 (molecules)", "steps": "8 (gaussian), 4 (masked, molecules)",
                              "knobs": "M = N = 2, 4 particles, 2 DNO iterations",
                              "timeout_s": args.timeout, "faults_text": FAULT_TEXT,
                              "failing_region": "x < 0 (gaussian), token sum not divisible by 3 (masked, molecules)"})
    for key in ("crashes", "hangs", "missing_warning", "wrong_shape_accepted", "not_applicable", "tracebacks",
                "fault_not_hit", "repeated_warnings"):
        probe.counts[key] = 0

    def run_domain(domain: str) -> list:
        """All cells of one domain, in one worker process (domains run in parallel)."""
        worker, answers = CellWorker(), []
        try:
            for method in methods:
                for fault in FAULTS:
                    cell = {"domain": domain, "method": method, "fault": fault}
                    answers.append((domain, method, fault, worker.run(cell, args.timeout)))
        finally:
            worker.stop()
        return answers

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(args.jobs, len(domains)))) as pool:
        answers = [a for part in pool.map(run_domain, domains) for a in part]
    for domain, method, fault, res in answers:
        cid = f"{domain} / {method} / {fault}"
        repro = (f"python scripts/reliability.py rewards --cell {domain},{method},{fault}")
        if res is None:
            probe.bump("hangs")
            probe.add(cid, False, f"hang (no answer in {args.timeout:g} s)", repro)
            continue
        status = res.get("status")
        if status == "n/a":
            probe.bump("not_applicable")
            continue
        why = []
        if status == "harness":                 # the probe could not set the cell up (an API it needs)
            probe.bump("harness_errors")
            why.append(f"the probe could not run this cell: {res.get('error')}")
        elif status == "died":
            probe.bump("crashes")
            why.append(f"the process died: {res.get('error')}")
        elif status == "raised":
            ok = (fault == "wrong-shape" and res.get("reward_error")
                  or fault in ("list", "int") and res.get("svdd_error")
                  and svdd.ALGORITHMS[method].needs_gradients)
            if not ok:
                probe.bump("crashes")
                why.append(f"crash: {res.get('error')} at {res.get('where', '')[:160]}")
            elif not res.get("one_line"):
                why.append(f"error is not one line: {res.get('error')}")
        else:
            if fault == "wrong-shape":
                probe.bump("wrong_shape_accepted")
                why.append("a wrong-shape reward was accepted (no RewardError)")
            failed = any(res.get(k) for k in ("reward_failed_samples", "reward_errors", "reward_invalid"))
            if fault in FAILING_FAULTS and failed and not res.get("reward_warnings"):
                probe.bump("missing_warning")
                why.append("reward evaluations failed but no RewardWarning")
            elif fault in FAILING_FAULTS and not failed and not res.get("reward_warnings"):
                probe.bump("fault_not_hit")    # every sample fell outside the failing region
            if (res.get("reward_warnings") or 0) > 1:
                probe.bump("repeated_warnings")
            if not res.get("finite_rewards", True):
                why.append("non-finite rewards returned")
        probe.add(cid, not why, "; ".join(why), repro if why else "", status=status,
                  wall_s=res.get("wall_s"), warnings=res.get("reward_warnings"),
                  error=res.get("error"))
    return probe


def _one_cell(spec: str) -> int:
    domain, method, fault = spec.split(",")
    sys.path.insert(0, str(ROOT / "src"))
    try:
        print(json.dumps(run_cell({"domain": domain, "method": method, "fault": fault}), indent=1, default=str))
    finally:
        _close_pools()
    return 0


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _load_results(results: Path) -> dict[str, dict]:
    data = {}
    for name in PROBES:
        p = results / f"{name}.json"
        if p.exists():
            data[name] = json.loads(p.read_text())
    return data


def _targets(data: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's six targets."""
    def c(probe, key):
        return int(data.get(probe, {}).get("counts", {}).get(key, 0))

    def have(*probes):
        return all(p in data for p in probes)

    def verdict(ok, *probes):
        missing = [p for p in probes if not data.get(p, {}).get("tried")]
        return "not run (" + ", ".join(missing) + ")" if missing else ("**met**" if ok else "**missed**")

    rows = []
    tb = {p: c(p, "tracebacks") for p in PROBES if p in data}
    rows.append(("0 tracebacks", f"{sum(tb.values())} (" + ", ".join(f"{k} {v}" for k, v in tb.items()) + ")",
                 verdict(sum(tb.values()) == 0, "malformed")))
    hg = {p: c(p, "hangs") for p in PROBES if p in data}
    rows.append(("0 hangs", f"{sum(hg.values())} (" + ", ".join(f"{k} {v}" for k, v in hg.items()) + ")",
                 verdict(sum(hg.values()) == 0, "malformed")))
    rows.append(("0 foreign code run", f"{c('tamper', 'markers')} marker files created",
                 verdict(c("tamper", "markers") == 0, "tamper")))
    k = data.get("kill", {})
    tried, same = int(k.get("tried", 0)), c("kill", "identical")
    rows.append(("25 of 25 identical resumes after `kill -9`",
                 f"{same} of {tried} identical ({c('kill', 'differing')} differ, "
                 f"{c('kill', 'failed_to_resume')} failed to resume)",
                 verdict(have("kill") and tried >= 25 and same == tried, "kill")))
    rows.append(("0 silent overwrites", f"{c('concurrent', 'silent_overwrites')} by concurrent runs, "
                 f"{c('tamper', 'outside_modified')} files outside `--out` changed through symlinks",
                 verdict(c("concurrent", "silent_overwrites") + c("tamper", "outside_modified") == 0,
                         "concurrent", "tamper")))
    rows.append(("0 crashes from reward faults (wrong shape: a clean `RewardError`)",
                 f"{c('rewards', 'crashes')} crashes, {c('rewards', 'wrong_shape_accepted')} wrong shapes accepted",
                 verdict(c("rewards", "crashes") + c("rewards", "wrong_shape_accepted") == 0, "rewards")))
    return rows


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(results: Path = RESULTS) -> str:
    data = _load_results(results)
    lines = ["# Reliability", "",
             "<!-- generated by `python scripts/reliability.py render` from benchmarks/results/reliability/*.json; "
             "do not edit by hand -->", "",
             "How svdd behaves when it is killed, fed garbage, attacked through its run folders, run twice on "
             "one folder, or given a broken reward (issue #14). Every number below comes from the JSON files "
             "under `benchmarks/results/reliability/`, written by the probes of `scripts/reliability.py`; "
             "regenerate everything with", "",
             "```sh", "python scripts/reliability.py all && python scripts/reliability.py render", "```", "",
             "(`python scripts/reliability.py PROBE` reruns one probe; each lost case below has a repro command.)", ""]
    if not data:
        return "\n".join(lines + ["No probe results committed yet.", ""])
    lines += ["## Summary", "", "| probe | tried | survived | lost | survived means |", "|---|---:|---:|---:|---|"]
    meaning = {
        "malformed": "exit 2, one `svdd: error:` line, no traceback, within 60 s",
        "kill": "`--resume` finishes and samples.csv, all shard tensors, statistics and counters are byte-identical "
                "to an uninterrupted run",
        "tamper": "no foreign code ran, nothing outside `--out` changed, and a one-line refusal or a recomputation "
                  "identical to a clean run (damaged files: recomputed, with a notice)",
        "concurrent": "exactly one run finishes, the others exit 2 in one line naming the holder's pid, the folder "
                      "holds the winner's samples",
        "rewards": "no exception (wrong shape: a clean `RewardError`), no hang, a `RewardWarning` when an "
                   "evaluation failed",
    }
    for name in PROBES:
        d = data.get(name)
        if d is None:
            lines.append(f"| {TITLES[name]} | – | – | – | not run |")
            continue
        lines.append(f"| [{TITLES[name]}](#{name}) | {d['tried']} | {d['survived']} | {d['lost']} | {meaning[name]} |")
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in _targets(data)]
    revs = sorted({str(d.get("git_revision")) for d in data.values()})
    when = sorted({str(d.get("finished_utc")) for d in data.values()})
    wall = sum(float(d.get("wall_s") or 0) for d in data.values())
    cpus = sorted({str(d.get("host_cpu_count")) for d in data.values()})
    lines += ["", f"Measured at revision {', '.join(revs)} ({when[0]} – {when[-1]}), on a shared "
              f"{'/'.join(cpus)}-core "
              f"CPU machine; all probes together took {wall / 60:.1f} min.", ""]
    before = _load_results(results / "before")
    if before:
        rev = sorted({str(d.get("git_revision")) for d in before.values()})
        lines += [f"## Before the fixes: the same probes on revision {', '.join(rev)}", "",
                  "To show that each probe can fail, `python scripts/reliability.py before "
                  f"{rev[0]}` ran this script (and this corpus) against that revision, the parent of the "
                  "issue-14 work; its JSON files are under `benchmarks/results/reliability/before/`.", "",
                  "| probe | tried then | lost then | lost now | most common losses then |",
                  "|---|---:|---:|---:|---|"]
        for name in PROBES:
            b, d = before.get(name), data.get(name)
            if b is None:
                continue
            lost = [c for c in b.get("cases", []) if not c.get("survived")]
            kinds: dict[str, list] = {}             # reasons grouped up to numbers and paths
            for c in lost:
                text = str(c.get("reason", ""))
                key = re.sub(r"\d+(\.\d+)?|/\S+", "#", text)[:60]
                kinds.setdefault(key, [0, text])[0] += 1
            top = "; ".join(f"{n}× {_md(text)[:110]}" for n, text in sorted(kinds.values(), key=lambda v: -v[0])[:3])
            lines.append(f"| {TITLES[name]} | {b['tried']} | {b['lost']} | {d['lost'] if d else '–'} | {top} |")
        lines += ["", "| target | then | verdict then |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in _targets(before)]
        lines.append("")
    for name in PROBES:
        d = data.get(name)
        if d is None:
            continue
        lines += [f"## {name}", "", f"**{TITLES[name]}** — `{d.get('command')}`; {d['tried']} tried, "
                  f"{d['survived']} survived, {d['lost']} lost, {float(d.get('wall_s') or 0):.0f} s.", ""]
        sizes = d.get("sizes") or {}
        if sizes:
            lines.append("Sizes: " + "; ".join(f"{k} = {_md(v if not isinstance(v, dict) else '')}"
                                               for k, v in sizes.items() if not isinstance(v, dict)) + ".")
            for k, v in sizes.items():
                if isinstance(v, dict):
                    lines += ["", f"{k.replace('_', ' ')}:", ""] + [f"- `{a}`: {_md(b)}" for a, b in v.items()]
            lines.append("")
        counts = d.get("counts") or {}
        if counts:
            lines += ["Counts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) + ".", ""]
        if name == "rewards":
            lines += _rewards_matrix(d)
        if name == "kill":
            lines += _kill_moments(d)
        if d.get("code"):
            lines += ["The runs start through this wrapper (`SLOW_WRAPPER.py`):", "", "```python",
                      d["code"].rstrip(), "```", ""]
        lost = [cse for cse in d.get("cases", []) if not cse.get("survived")]
        if lost:
            shown = lost[:40]
            lines += [f"Lost cases ({len(lost)}{', first 40' if len(lost) > 40 else ''}):", "",
                      "| case | what happened | repro |", "|---|---|---|"]
            lines += [f"| {_md(cse['id'])} | {_md(cse.get('reason', ''))[:300]} | "
                      f"{('`' + _md(cse['repro'])[:400] + '`') if cse.get('repro') else ''} |" for cse in shown]
            lines.append("")
        else:
            lines += ["No case lost.", ""]
        notes = d.get("notes") or []
        if notes:
            lines += ["Notes:", ""] + [f"- {_md(n)[:400]}" for n in notes[:20]] + [""]
    return "\n".join(lines)


def _kill_moments(d: dict) -> list[str]:
    """Where the kills landed: before any shard file existed, amid the shard writes, or after the
    last shard (while the outputs were written)."""
    early = amid = late = 0
    for c in d.get("cases", []):
        total = c.get("shards_total")
        for n in c.get("shards_at_kill") or []:
            if n == 0:
                early += 1
            elif total and n >= total:
                late += 1
            else:
                amid += 1
    if not early + amid + late:
        return []
    return [f"Where the {early + amid + late} kills landed: {early} before any shard file existed (start-up, model "
            f"load), {amid} amid the shard writes, {late} after the last shard (summary, CSV, figure).", ""]


def _rewards_matrix(d: dict) -> list[str]:
    """method × fault table of survived / tried, pooled over domains."""
    cells: dict[tuple, list[int]] = {}
    for cse in d.get("cases", []):
        parts = [p.strip() for p in cse["id"].split("/")]
        if len(parts) != 3:
            continue
        _, method, fault = parts
        s = cells.setdefault((method, fault), [0, 0])
        s[0] += bool(cse.get("survived"))
        s[1] += 1
    if not cells:
        return []
    methods = sorted({m for m, _ in cells})
    faults = [f for f in FAULTS if any((m, f) in cells for m in methods)]
    lines = ["Survived / tried per method and fault (domains pooled; cells that cannot apply are left out: DNO "
             "on masked processes, gradient methods on toy-masked, which has no differentiable reward, and "
             "gradient methods with the hang fault, whose timed worker rewards are not differentiable):", "",
             "| method | " + " | ".join(faults) + " |", "|---|" + "---:|" * len(faults)]
    for m in methods:
        row = []
        for f in faults:
            s = cells.get((m, f))
            row.append("–" if s is None else (f"{s[0]}/{s[1]}" if s[0] == s[1] else f"**{s[0]}/{s[1]}**"))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines + [""]


# ------------------------------------------------------------------------------------------------
def _reexec_in_venv() -> None:
    """Run under the project's virtual environment when invoked with another Python."""
    if VENV.exists() and Path(sys.prefix).resolve() != VENV.resolve() and not os.environ.get("SVDD_PROBE_NO_REEXEC"):
        os.environ["SVDD_PROBE_NO_REEXEC"] = "1"
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), str(Path(__file__).resolve()),
                                                *sys.argv[1:]])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_cell-worker"]:
        return _cell_worker_main()
    if argv[:1] == ["_fork-server"]:
        return _fork_server_main()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of the probes' JSON files")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    ap.add_argument("--fresh", action="store_true",
                    help="start a fresh `python -m svdd.cli` for every malformed / tamper run (default: fork each "
                         "run from a pre-imported server process, same semantics, much less start-up)")
    sub = ap.add_subparsers(dest="probe", required=True)
    m = sub.add_parser("malformed")
    m.add_argument("--timeout", type=float, default=60)
    m.add_argument("--jobs", type=int, default=3)
    m.add_argument("--limit", type=int, default=None)
    k = sub.add_parser("kill")
    k.add_argument("--trials", type=int, default=26)
    k.add_argument("--samples", type=int, default=16, help="samples per run (one shard each, plus the baseline's)")
    k.add_argument("--jobs", type=int, default=3, help="trials in parallel")
    k.add_argument("--seed", type=int, default=14)
    t = sub.add_parser("tamper")
    t.add_argument("--jobs", type=int, default=3, help="runs in parallel")
    c = sub.add_parser("concurrent")
    c.add_argument("--trials", type=int, default=6)
    c.add_argument("--sleep", type=float, default=2.5, help="seconds added to the model load")
    c.add_argument("--seed", type=int, default=14)
    r = sub.add_parser("rewards")
    r.add_argument("--timeout", type=float, default=45)
    r.add_argument("--domains", nargs="*", default=None)
    r.add_argument("--cell", default=None, help="run one DOMAIN,METHOD,FAULT cell here and print it")
    r.add_argument("--jobs", type=int, default=3, help="domains in parallel (one worker process each)")
    bf = sub.add_parser("before", help="run every probe on an older revision (git archive) into RESULTS/before")
    bf.add_argument("revision")
    bf.add_argument("--only", nargs="*", default=None, choices=PROBES, help="just these probes")
    a = sub.add_parser("all")
    a.add_argument("--skip", nargs="*", default=[], choices=PROBES)
    rd = sub.add_parser("render")
    rd.add_argument("--out", default=str(DOC))
    rd.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = ap.parse_args(argv)
    results = Path(args.results)
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT / "src"))
    if args.probe == "render":
        md = render(results)
        out = Path(args.out)
        if args.check:
            if not out.exists() or out.read_text() != md:
                print(f"{out} is out of date; run `python scripts/reliability.py render`", file=sys.stderr)
                return 1
            print(f"{out} is up to date")
            return 0
        _write_json_text(out, md)
        print(f"wrote {out}")
        return 0
    if args.probe == "rewards" and args.cell:
        return _one_cell(args.cell)
    if args.probe == "before":
        return _before(args.revision, results / "before", args.only)
    runners = {"malformed": probe_malformed, "kill": probe_kill, "tamper": probe_tamper,
               "concurrent": probe_concurrent, "rewards": probe_rewards}
    defaults = {"malformed": dict(timeout=60.0, jobs=3, limit=None),
                "kill": dict(trials=26, samples=16, seed=14, jobs=3),
                "tamper": dict(jobs=3), "concurrent": dict(trials=6, sleep=2.5, seed=14),
                "rewards": dict(timeout=45.0, domains=None, cell=None, jobs=3)}
    names = [p for p in PROBES if p not in args.skip] if args.probe == "all" else [args.probe]
    failed = []
    for name in names:
        ns = argparse.Namespace(**{**defaults[name], **vars(args)}) if args.probe == "all" else args
        print(f"[{name}] {TITLES[name]}", flush=True)
        forked = name in ("malformed", "tamper") and not args.fresh
        try:
            if forked:
                _FORK_SERVERS.server = ForkServer(ns.jobs)
            probe = runners[name](ns)
            probe.sizes["runner"] = ("each run forked from a pre-imported server process that executes svdd.cli "
                                     "as __main__ (what `python -m svdd.cli` does)" if forked else
                                     "a fresh `python -m svdd.cli` interpreter per run")
            probe.save(results)
        except Exception:                     # a broken probe must not stop the others
            traceback.print_exc()
            failed.append(name)
        finally:
            if _FORK_SERVERS.server is not None:
                _FORK_SERVERS.server.close()
                _FORK_SERVERS.server = None
    if failed:
        print(f"probes that could not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _before(revision: str, out: Path, only: Optional[list] = None) -> int:
    """This script and tests/malformed_corpus.py run against ``git archive REVISION``."""
    tmp = Path(tempfile.mkdtemp(prefix="svdd-rel-before-"))
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        print(f"git archive {revision} failed: {archive.stderr.decode()[-300:]}", file=sys.stderr)
        return 2
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    shutil.copy(Path(__file__).resolve(), tmp / "scripts" / "reliability.py")
    shutil.copy(ROOT / "tests" / "malformed_corpus.py", tmp / "tests" / "malformed_corpus.py")
    skip = ["--skip", *[p for p in PROBES if p not in only]] if only else []
    rc = subprocess.call([sys.executable, str(tmp / "scripts" / "reliability.py"), "--results", str(out.resolve()),
                          "all", *skip], cwd=tmp, env={**os.environ, "SVDD_PROBE_REVISION": revision,
                                                "SVDD_PROBE_NO_REEXEC": "1"})
    shutil.rmtree(tmp, ignore_errors=True)
    return rc


def _write_json_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    _reexec_in_venv()
    raise SystemExit(main())
