"""Command-line interface: ``svdd sample | fit-value | list | bench | report | demo``.

Every user mistake (unknown name, impossible size, missing optional dependency) ends in a
one-line ``svdd: error: ...`` that says what to do, exit code 2 — never a traceback.
Sampling runs in independent shards of ``--batch-size`` samples, each with a seed derived from
``--seed`` and its index, written to disk as it finishes; ``--resume`` skips finished shards, so
a killed run loses nothing and the result does not depend on where it was interrupted.
"""

from __future__ import annotations

import argparse
import csv
import errno
import inspect
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .accelerator import PRECISIONS, PrecisionError
from .algorithms import ALGORITHMS, AlgorithmError, get_algorithm
from .bench import BenchError
from .cache import DataError
from .domains import DOMAIN_MODULES, DomainError, get_domain
from .rewards.base import RewardError, RewardWarning, as_reward


class UserError(Exception):
    pass


from .checks import InputError  # noqa: E402
from .runfolder import DamagedFile, FolderLocked, RunFolderError  # noqa: E402
from .values.learned import ValueLoadError  # noqa: E402

USER_ERRORS = (UserError, InputError, RunFolderError, FolderLocked, DamagedFile, ValueLoadError, DomainError,
               AlgorithmError, RewardError, BenchError, DataError, PrecisionError)


# ------------------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# method arguments the CLI sets itself: --set may not override them
_RESERVED = {"process": "the model comes from --domain / --model / --process", "reward_fn": "use --reward",
             "generator": "use --seed", "callback": "svdd sets it (progress bars)", "num_samples": "use --num-samples",
             "num_steps": "use --num-steps", "value_fn": "use --value"}


def _method_kwargs(args, fn) -> dict:
    """The method's keyword arguments from --num-candidates / --alpha / --num-particles and
    --set KEY=VALUE, each checked against the method's signature (name, type of its default,
    range of the well-known knobs)."""
    from .checks import check_option

    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    labels: dict[str, str] = {}
    knobs = {"num_candidates": args.num_candidates, "alpha": args.alpha, "num_particles": args.num_particles}
    for name, value in knobs.items():
        if value is None:
            continue
        if name not in params:
            raise UserError(f"method {args.method!r} does not take --{name.replace('_', '-')}; drop it")
        kwargs[name], labels[name] = value, f"--{name.replace('_', '-')}"
    for item in args.set or []:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key in _RESERVED:
            raise UserError(f"--set {item!r}: {key} is not a method option here; {_RESERVED[key]}")
        if not eq or not key or key not in params:
            options = ", ".join(p for p in params if p not in _RESERVED)
            raise UserError(f"--set {item!r}: write KEY=VALUE with a KEY {args.method} takes: {options}")
        kwargs[key], labels[key] = _parse_value(value.strip()), f"--set {key}"
    for key, value in kwargs.items():
        check_option(fn, key, value, label=labels[key])
    if args.max_batch_size and "max_batch_size" in params:
        kwargs["max_batch_size"] = args.max_batch_size
    return kwargs


def _max_batch_size(text: Optional[str]) -> int | str | None:
    """``--max-batch-size``: ``N`` rows per denoiser call or ``auto`` (sized to free GPU memory)."""
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--max-batch-size must be a positive integer or 'auto', got {text!r}")
    return value


def _precision(text: Optional[str]) -> Optional[str]:
    if text is not None and text not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {text!r}")
    return text


def _device(name: str) -> str:
    """``--device``: ``auto`` resolved; a device torch does not know or this machine lacks is refused."""
    from .checks import check_device

    return check_device(name)


def _git_revision() -> Optional[str]:
    try:
        import subprocess

        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------
def _resolve_domain(args) -> None:
    """``--process MODULE:FACTORY`` is the model; the domain is ``--domain`` (its rewards, decoder
    and files) or, without one, the user domain named by the factory. Default: molecules."""
    process = getattr(args, "process", None)
    if process:
        from .plugins import is_import_path

        if not is_import_path(process):
            raise UserError(f"--process {process!r} is not an import path; write MODULE:FACTORY, e.g. "
                            "mymodel:make_process (the module on PYTHONPATH)")
        if args.model and args.model != process:
            raise UserError("--process replaces --model; give one of them")
        if getattr(args, "diffusers", None):
            raise UserError("--process and --diffusers both name the model; give one of them")
        args.model = process
        args.domain = args.domain or process
    args.domain = args.domain or "molecules"


def _load(args):
    _resolve_domain(args)
    domain = get_domain(args.domain)
    device = _device(args.device)
    if getattr(args, "diffusers", None):
        loader = domain.extra.get("load_diffusers")
        if loader is None:
            raise UserError(f"--diffusers works only with --domain images, not {args.domain!r}")
        if not Path(args.diffusers).exists():
            import re

            if re.fullmatch(r"[\w.-]+/[\w.-]+", str(args.diffusers)):   # a hub id: no network here
                raise UserError(f"--diffusers {args.diffusers} looks like a Hugging Face hub id; svdd loads local "
                                f"folders only: save it first with DiffusionPipeline.from_pretrained("
                                f"'{args.diffusers}').save_pretrained('DIR') and pass --diffusers DIR")
            raise UserError(f"--diffusers {args.diffusers}: no such folder")
        options = {k: v for k, v in (("prompt", getattr(args, "prompt", None)),
                                     ("guidance_scale", getattr(args, "guidance_scale", None))) if v is not None}
        process = loader(args.diffusers, device, **options)
        if getattr(args, "precision", None):
            from .accelerator import set_precision

            set_precision(process, args.precision)
    else:
        precision = {"precision": args.precision} if getattr(args, "precision", None) else {}
        process = domain.load_process(args.model, device=device, **precision)
    reward_options = {}
    if getattr(args, "oracle_dir", None):
        reward_options["oracle_dir"] = args.oracle_dir
    if domain.extra.get("reward_needs_process"):
        reward_options["process"] = process
    reward = as_reward(domain.make_reward(args.reward, **reward_options))
    return domain, process, reward, device


def _shard_plan(num_samples: int, batch_size: int) -> list[int]:
    sizes = [batch_size] * (num_samples // batch_size)
    if num_samples % batch_size:
        sizes.append(num_samples % batch_size)
    return sizes


def _run_shards_distributed(label, method, kwargs, args, out: Path, show: bool) -> dict:
    """``--backend process|ray``: each worker loads its own model, reward and value and runs whole
    shards (``svdd.distributed.run_sharded``); shard seeds are those of the local loop below, so
    the samples are identical to a local run."""
    from .distributed import (BASELINE_SEED_OFFSET, DomainProcessFactory, DomainRewardFactory, ValueFactory,
                              run_sharded)

    spec = get_algorithm(method)
    kwargs = {**spec.defaults, **kwargs}
    options = {"oracle_dir": args.oracle_dir} if getattr(args, "oracle_dir", None) else {}
    value_factory = None
    if kwargs.get("value_fn") is not None:
        kwargs.pop("value_fn")
        value_factory = ValueFactory(args.value, device=args.device,
                                     process_factory=DomainProcessFactory(args.domain, args.model, device=args.device))
    bar = _progress(args.num_samples, f"{label} {method} ({args.backend})", show)
    try:
        precision = {"precision": args.precision} if getattr(args, "precision", None) else {}
        res = run_sharded(method, DomainProcessFactory(args.domain, args.model, device=args.device, **precision),
                          DomainRewardFactory(args.domain, args.reward, **options), num_samples=args.num_samples,
                          shard_size=args.batch_size or args.num_samples, seed=args.seed,
                          seed_offset=0 if label == "method" else BASELINE_SEED_OFFSET, backend=args.backend,
                          ray_address=args.ray_address, num_workers=args.workers, value_factory=value_factory,
                          shard_dir=out / "shards" / label, resume=args.resume, num_steps=args.num_steps,
                          shard_fingerprint=_shard_fingerprint(label, method, args),
                          on_shard_done=lambda i, shard: bar.update(len(shard["x0"])), **kwargs)
    finally:
        bar.close()
    counters = _shard_counters(res.info["shards"], args.num_samples)
    counters["wall_time_s"] = res.info["worker_time_s"]
    for k in ("retries", "failures", "timeouts", "worker_deaths", "worker_restarts"):
        counters[k] = res.info[k]
    return {"x0": res.x0, "rewards": res.rewards.float(), "counters": counters, "num_shards": res.info["num_shards"],
            "shard_info": res.info["shards"], "coupling": res.info["coupling"]}


FREE_OPTIONS = ("device", "max_batch_size", "fasta_alphabet", "backend", "workers", "ray_address", "reward_workers",
                "reward_timeout", "out")


def _shard_fingerprint(label: str, method: str, args) -> str:
    """What a finished shard depends on: every option except where and how it ran (FREE_OPTIONS)."""
    from .runfolder import fingerprint

    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "quiet", *FREE_OPTIONS)}
    return fingerprint({"label": label, "method": method, "config": config})


def _shard_counters(infos: list[dict], num_samples: int) -> dict:
    counters = {}
    for key in ("nfe", "grad_passes", "value_calls", "reward_calls", "reward_invalid", "reward_errors",
                "reward_failed_samples", "wall_time_s"):
        counters[key] = sum(float(inf.get(key, 0) or 0) for inf in infos)
    counters["nfe_per_sample"] = counters["nfe"] / max(num_samples, 1)
    firsts = [inf.get("reward_first_error") for inf in infos if inf.get("reward_first_error")]
    counters["reward_first_error"] = firsts[0] if firsts else None
    counters["reward_all_failed"] = bool(infos) and all(bool(inf.get("reward_all_failed")) for inf in infos)
    return counters


def _run_shards(label, method, process, reward, kwargs, args, out: Path, show: bool) -> dict:
    """Run ``method`` in shards; shard i uses seed (args.seed, i). Returns merged arrays/counters.

    Each finished shard is written at once (safetensors + the folder's checksummed manifest,
    atomically); with ``--resume`` intact shards are reused and damaged ones recomputed."""
    if getattr(args, "backend", "local") != "local":
        return _run_shards_distributed(label, method, kwargs, args, out, show)
    from .distributed.shards import shard_tensors
    from .runfolder import Manifest

    spec = get_algorithm(method)
    shard_dir = out / "shards" / label
    sizes = _shard_plan(args.num_samples, args.batch_size or args.num_samples)
    manifest = Manifest(shard_dir, _shard_fingerprint(label, method, args), root=out)
    xs, rewards, infos = [], [], []
    for i, n in enumerate(sizes):
        saved = manifest.load_shard(i, n) if args.resume else None
        for message in manifest.notices:
            print(f"svdd: {message}", file=sys.stderr)
        manifest.notices.clear()
        if saved is not None:
            xs.append(saved["x0"]); rewards.append(saved["rewards"]); infos.append(saved["info"])
            continue
        gen = torch.Generator(device=process.device if hasattr(process, "device") else "cpu")
        gen.manual_seed(args.seed * 1_000_003 + i + (0 if label == "method" else 500_009))
        bar = _progress(args.num_steps, f"{label} {method} [{i + 1}/{len(sizes)}]", show)
        with warnings.catch_warnings():   # the CLI says it once for the whole run (cmd_sample)
            warnings.simplefilter("ignore", RewardWarning)
            res = spec.fn(process, reward, **{**spec.defaults, **kwargs, "num_samples": n, "num_steps": args.num_steps,
                                             "generator": gen, "callback": lambda s: bar.update(1)})
        bar.close()
        info = {k: v for k, v in res.info.items() if isinstance(v, (int, float, str, bool, list, type(None)))}
        shard = {"x0": res.x0.cpu(), "rewards": res.rewards.cpu(), "info": info}
        manifest.save_shard(i, shard_tensors(shard), info)
        xs.append(shard["x0"]); rewards.append(shard["rewards"]); infos.append(info)
    return {"x0": torch.cat(xs), "rewards": torch.cat(rewards).float(), "counters": _shard_counters(infos, args.num_samples),
            "num_shards": len(sizes), "shard_info": infos}


def _reward_stats(rewards: torch.Tensor, seed: int) -> dict:
    from .metrics.stats import quantile_summary

    return quantile_summary(rewards.numpy(), seed=seed)


def _histogram(path: Path, rewards: torch.Tensor, baseline: Optional[torch.Tensor], method: str, reward_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    data = [rewards.numpy()] + ([baseline.numpy()] if baseline is not None else [])
    lo = min(float(d.min()) for d in data)
    hi = max(float(d.max()) for d in data)
    bins = 30 if hi > lo else 1
    if baseline is not None:
        ax.hist(baseline.numpy(), bins=bins, range=(lo, hi) if hi > lo else None, alpha=0.55, label="pretrained (ancestral)", color="#888888")
    ax.hist(rewards.numpy(), bins=bins, range=(lo, hi) if hi > lo else None, alpha=0.7, label=method, color="#1f77b4")
    ax.set_xlabel(f"reward: {reward_name}")
    ax.set_ylabel("samples")
    ax.legend(frameon=False)
    fig.tight_layout()
    from .runfolder import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _write_csv(path: Path, readable: list[str], rewards: torch.Tensor, columns: dict[str, list],
               sample_column: str = "sample"):
    from .runfolder import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", sample_column, "reward", *columns.keys()])
        for i, (s, r) in enumerate(zip(readable, rewards.tolist())):
            w.writerow([i, s, f"{r:.6g}", *(col[i] for col in columns.values())])


def _domain_call(fn, *args, **options):
    """Call a domain hook with the options its signature names (a ``**options`` catch-all gets
    none: it may forward them to a stricter function)."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in options.items() if k in params and params[k].kind != params[k].VAR_KEYWORD})


def _decoded(domain, x0: torch.Tensor) -> Optional[list[str]]:
    return domain.decode(x0) if domain.decode else None


def _readable(x0: torch.Tensor) -> list[str]:
    """A readable column for samples a domain does not decode: the values when there are at most
    16 per sample, else a pointer into samples.safetensors."""
    flat = x0.detach().cpu().reshape(len(x0), -1)
    if flat.shape[1] <= 16:
        fmt = (lambda v: str(int(v))) if not flat.is_floating_point() else (lambda v: f"{float(v):.6g}")
        return [" ".join(fmt(v) for v in row) for row in flat]
    shape = "x".join(str(d) for d in x0.shape[1:])
    return [f"samples.safetensors:x0[{i}] ({shape})" for i in range(len(x0))]


def _is_user_model(args, domain) -> bool:
    """The samples come from the user's model (--process, --diffusers, an import-path --model), so
    metrics tied to the domain's shipped model must not be reported."""
    from .plugins import is_import_path

    return bool(getattr(args, "diffusers", None) or is_import_path(args.model or "") or domain.extra.get("user"))


def _write_samples(out: Path, prefix: str, domain, process, run: dict, reward, options: dict):
    """``{prefix}samples.csv`` (readable column named for the domain, reward, per-sample columns) and
    ``{prefix}samples.safetensors`` (x0 and rewards as tensors); per-sample files (images)."""
    from .runfolder import save_tensors

    x0, rewards = run["x0"], run["rewards"]
    decoded = _decoded(domain, x0)
    if domain.sample_files is not None:
        readable = list(_domain_call(domain.sample_files, out, x0, prefix, {"process": process, **options}))
    else:
        readable = decoded if decoded is not None else _readable(x0)
    columns = _domain_call(domain.sample_columns, x0, decoded or [""] * len(x0), process, **options) \
        if domain.sample_columns else {}
    csv_path = out / f"{prefix}samples.csv"
    _write_csv(csv_path, readable, rewards, columns, domain.sample_column)
    tensors_path = out / f"{prefix}samples.safetensors"
    save_tensors(tensors_path, {"x0": x0, "rewards": rewards}, {"reward": reward.name, "columns": list(columns)},
                 root=out)
    return [csv_path, tensors_path], columns


def _evaluation_columns(columns: dict) -> dict:
    """Per-sample scores of an evaluation oracle (columns named ``*_eval``)."""
    return {k: v for k, v in columns.items() if k.endswith("_eval") and all(isinstance(x, (int, float)) for x in v)}


def _evaluation_stats(columns: dict, seed: int) -> dict:
    return {k: _reward_stats(torch.tensor([float(x) for x in v]), seed) for k, v in _evaluation_columns(columns).items()
            if len(v)}


# ------------------------------------------------------------------------------------------------
# input checks: everything that can be refused before a folder is locked or a model loaded
# ------------------------------------------------------------------------------------------------
SEED_MAX = 2 ** 32 - 1


def _check_count(flag: str, value: Optional[int], minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UserError(f"{flag} must be an integer >= {minimum}, got {value}")


def _check_number(flag: str, value: Optional[float], minimum: Optional[float] = None, *, strict: bool = False,
                  hint: str = "") -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}{hint}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise UserError(f"{flag} must be {'>' if strict else '>='} {minimum:g}, got {value:g}{hint}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed must be an integer from 0 to {SEED_MAX}, got {seed}")


def _check_out(text: Optional[str], flag: str = "--out", *, folder: bool = True) -> None:
    """``--out`` (a folder) or ``--output`` (a file) can be created: not empty, not a link, not a
    file where a folder is wanted (or the reverse), under a writable folder."""
    if text is None or not str(text).strip():
        raise UserError(f"{flag} is empty; name a {'folder' if folder else 'file'}, e.g. {flag} "
                        f"{'runs/my-run' if folder else 'report.md'}")
    path = Path(text)
    if path.is_symlink():
        raise UserError(f"{flag} {path} is a symbolic link; svdd never writes through links — give the real "
                        f"{'folder' if folder else 'file'}")
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{flag} {path} is a file, not a folder; choose another {flag}")
        if not folder and path.is_dir():
            raise UserError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'report.md'}")
    for parent in path.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}")
            if not path.exists():   # can anything be created there? (probe, removed at once)
                import tempfile

                try:
                    os.rmdir(tempfile.mkdtemp(prefix=".svdd-probe-", dir=parent))
                except OSError as err:
                    raise UserError(f"{flag} {path}: cannot create it in {parent} ({err.strerror or err}); "
                                    f"choose another {flag}") from None
            break


def _domain_name(args) -> str:
    """The domain an invocation will use (as ``_resolve_domain`` decides it), without changing args."""
    return getattr(args, "domain", None) or getattr(args, "process", None) or "molecules"


def _is_import_path(text) -> bool:
    try:
        from .plugins import is_import_path
    except ImportError:  # pragma: no cover
        return False
    return is_import_path(text)


def _check_domain_args(args) -> None:
    """--domain, --model and --reward name things that exist (the reward's syntax too), and the
    domain-specific options (--diffusers, --prompt, --guidance-scale, --oracle-dir) apply."""
    from .checks import check_reward_names, reward_terms_or_error

    if getattr(args, "domain", None) is not None and not args.domain.strip():
        raise UserError("--domain is empty; choose one of `svdd list domains`")
    reward = getattr(args, "reward", None)
    if reward is not None:
        if not reward.strip():
            raise UserError("--reward is empty; name a reward (see `svdd list rewards`) or leave --reward out "
                            "for the domain's default")
        reward_terms_or_error(reward)
    name = _domain_name(args)
    if not _is_import_path(name):
        domain = get_domain(name)
        if args.model and args.model not in domain.models and not _is_import_path(args.model) \
                and not getattr(args, "process", None):
            raise UserError(f"unknown model {args.model!r} for domain {domain.name!r}; choose one of "
                            f"{sorted(domain.models)} (see `svdd list models`)")
        check_reward_names(domain, reward)
    diffusers = getattr(args, "diffusers", None)
    if not diffusers:
        for flag, value in (("--prompt", args.prompt), ("--guidance-scale", args.guidance_scale)):
            if value is not None:
                raise UserError(f"{flag} applies to a --diffusers pipeline; add --diffusers DIR or drop {flag}")
    _check_number("--guidance-scale", args.guidance_scale)
    if args.oracle_dir is not None and not Path(args.oracle_dir).is_dir():
        raise UserError(f"--oracle-dir {args.oracle_dir}: no such folder")


def _validate_sample_args(args):
    """Check a `svdd sample` invocation before anything is locked or loaded; returns the method's
    registry entry. Sizes get a first memory check with a 1-byte lower bound per sample (the exact
    bound follows once the model says how large a sample is: ``_check_sample_size``)."""
    from .checks import check_fits, sample_rows

    args.max_batch_size = _max_batch_size(args.max_batch_size)
    args.precision = _precision(args.precision)
    for flag, value in (("--num-samples", args.num_samples), ("--num-candidates", args.num_candidates),
                        ("--num-particles", args.num_particles), ("--num-steps", args.num_steps),
                        ("--batch-size", args.batch_size), ("--reward-workers", args.reward_workers),
                        ("--workers", args.workers)):
        _check_count(flag, value)
    _check_seed(args.seed)
    _check_number("--alpha", args.alpha, 0, hint=" (0 means argmax selection)")
    if args.reward_timeout is not None:
        if not args.reward_workers:
            raise UserError("--reward-timeout applies to --reward-workers N (rewards evaluated in this process "
                            "cannot be timed out); add --reward-workers or drop --reward-timeout")
        _check_number("--reward-timeout", args.reward_timeout, 0, strict=True, hint=" seconds")
    if args.workers is not None and args.backend == "local":
        raise UserError("--workers applies to --backend process or ray; add one of them or drop --workers")
    if args.ray_address and args.backend != "ray":
        raise UserError("--ray-address applies to --backend ray; add --backend ray or drop --ray-address")
    _check_out(args.out)
    device = _device(args.device)
    spec = get_algorithm(args.method)
    _check_domain_args(args)
    kwargs = _method_kwargs(args, spec.fn)
    if args.value is not None:
        if not args.value.strip():
            raise UserError("--value is empty; give a folder from `svdd fit-value` or MODULE:FACTORY")
        if "value_fn" not in inspect.signature(spec.fn).parameters:
            raise UserError(f"{args.method} does not use a value function; drop --value (svdd-mc, svdd-pm, "
                            "svdd-r and smc take one)")
        if not (_is_import_path(args.value) and not Path(args.value).exists()):
            from .values.learned import read_value_meta

            fitted = read_value_meta(args.value).get("domain")
            if fitted and fitted != _domain_name(args):
                raise UserError(f"--value {args.value} was fitted on domain {fitted!r}, not {_domain_name(args)!r}; "
                                f"fit one for this domain with `svdd fit-value --domain {_domain_name(args)}`")
    shard = min(args.batch_size or args.num_samples, args.num_samples)
    check_fits(sample_rows(kwargs, spec.fn, shard), 1, device=device, what=_size_request(args, spec, kwargs),
               fix="lower it, or split the run into shards with --batch-size")
    check_fits(args.num_samples * 2, 1, device="cpu", what=f"--num-samples {args.num_samples}",
               fix="draw fewer samples per run")
    if args.num_steps is not None:
        check_fits(args.num_steps + 1, 8, device="cpu", what=f"--num-steps {args.num_steps}",
                   fix="use fewer denoising steps", of="its time grid alone")
    return spec


def _size_request(args, spec, kwargs) -> str:
    shard = min(args.batch_size or args.num_samples, args.num_samples)
    parts = [f"{shard} samples per shard" if args.batch_size else f"--num-samples {args.num_samples}"]
    if kwargs.get("num_candidates") is not None:
        parts.append(f"{kwargs['num_candidates']} candidates each (num_candidates)")
    if kwargs.get("num_particles") is not None:
        parts = [f"{kwargs['num_particles']} particles (num_particles)"]
    return " × ".join(parts)


def _check_sample_size(args, spec, process, kwargs: dict, device) -> None:
    """Refuse a run whose samples alone (children, candidates, particles, the merged output and
    the baseline) cannot fit in the memory available now."""
    from .checks import check_fits, sample_nbytes, sample_rows

    nbytes = sample_nbytes(process)
    if not nbytes:
        return
    shard = min(args.batch_size or args.num_samples, args.num_samples)
    check_fits(sample_rows(kwargs, spec.fn, shard), nbytes, device=device, what=_size_request(args, spec, kwargs),
               fix="lower it, or split the run into shards with --batch-size")
    copies = 2 if args.baseline and args.method != "ancestral" else 1
    check_fits(args.num_samples * copies, nbytes, device="cpu", what=f"--num-samples {args.num_samples}",
               fix="draw fewer samples per run")


def cmd_sample(args) -> int:
    spec = _validate_sample_args(args)
    from .runfolder import FolderLock

    out = Path(args.out)
    with FolderLock(out):    # one writer per folder, taken before anything is loaded
        return _sample_in_folder(args, spec, out)


def _check_run_folder(args, out: Path, config: dict) -> None:
    """A non-empty ``out`` needs ``--resume`` and the same options (``out`` itself may differ: run
    folders are relocatable). A damaged ``config.json`` is reported and rewritten; the shards'
    manifest fingerprints still guard against reusing shards of other settings."""
    from .runfolder import DamagedFile, find_symlinks, folder_entries, read_json

    links = find_symlinks(out)
    if links:
        raise UserError(f"{links[0]} is a symbolic link; svdd never reads or writes through links in a run folder "
                        "— remove it (or copy the run to a fresh folder) and rerun")
    if not folder_entries(out):
        return
    if not args.resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    config_path = out / "config.json"
    if not (config_path.exists() or config_path.is_symlink()):
        return
    try:
        old = read_json(config_path, what="config")
        if not isinstance(old, dict):
            raise DamagedFile(f"config {config_path} is not a JSON object")
    except DamagedFile as err:
        print(f"svdd: {err}; rewriting it from this invocation's options", file=sys.stderr)
        return
    diff = [k for k in config if k not in FREE_OPTIONS and old.get(k) != config.get(k)]
    if diff:
        raise UserError(f"--resume: {out} was run with different {', '.join(diff)}; use the same options")


def _sample_in_folder(args, spec, out: Path) -> int:
    from .runfolder import atomic_write_json

    _resolve_domain(args)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "quiet")}
    _check_run_folder(args, out, config)
    domain, process, reward, device = _load(args)
    domain.prepare_data(args.reward, vars(args))   # run-time data (MOSES, receptors) fetched before sampling
    if args.num_steps is None:   # a user process may carry its own default
        args.num_steps = int(getattr(process, "default_num_steps", 0) or domain.default_num_steps)
    if args.reward_workers:
        from .distributed import DomainRewardFactory, RewardPool

        options = {"oracle_dir": args.oracle_dir} if args.oracle_dir else {}
        reward = as_reward(RewardPool(DomainRewardFactory(args.domain, args.reward, **options), args.reward_workers,
                                      backend="ray" if args.backend == "ray" else "process",
                                      timeout_s=args.reward_timeout), name=reward.name,
                           differentiable=False, invalid_value=reward.invalid_value)
    if process.kind not in spec.kinds:
        raise UserError(f"{args.method} does not support {process.kind} processes; use svdd-pm instead")
    if spec.needs_gradients and not reward.differentiable:
        raise UserError(f"{args.method} needs a differentiable reward and {reward.name!r} is not (a reward of "
                        "torch ops on x0 declares it with the attribute differentiable = True); use svdd-pm, smc "
                        "or dno (hybrid) instead")
    kwargs = _method_kwargs(args, spec.fn)
    _check_sample_size(args, spec, process, kwargs, device)
    value_cost = None
    if args.value:
        from .plugins import is_import_path, load_user_value
        from .values.learned import load_value

        if is_import_path(args.value) and not Path(args.value).exists():
            value = load_user_value(args.value, process)
        else:
            value = load_value(args.value, device=device, process=process)
        kwargs["value_fn"] = value
        value_cost = getattr(value, "meta", {}).get("cost")
    elif spec.needs_value:
        model_name = args.model or domain.default_model
        shipped = domain.shipped_value(model_name, args.reward or domain.default_reward)
        if shipped is None:
            raise UserError(f"{args.method} needs --value PATH (fit one with `svdd fit-value`; the {args.domain} pack "
                            f"ships none for model {model_name!r} and this reward), or use svdd-pm")
        from .values.learned import load_value

        args.value = str(shipped)
        value = load_value(shipped, device=device, process=process)
        kwargs["value_fn"] = value
        value_cost = value.meta.get("cost")

    atomic_write_json(out / "config.json", config, root=out)
    show = not args.quiet
    started = time.time()
    run = _run_shards("method", args.method, process, reward, kwargs, args, out, show)
    baseline = None
    if args.baseline and args.method != "ancestral":
        baseline = _run_shards("baseline", "ancestral", process, reward, {}, args, out, show)

    options = {"oracle_dir": args.oracle_dir, "user_model": _is_user_model(args, domain),
               "fasta_alphabet": args.fasta_alphabet}
    files, columns = _write_samples(out, "", domain, process, run, reward, options)
    metrics = _domain_call(domain.metrics, run["x0"], _decoded(domain, run["x0"]), process, **options) \
        if domain.metrics else {}
    bcolumns = {}
    if baseline:
        bfiles, bcolumns = _write_samples(out, "baseline_", domain, process, baseline, reward, options)
        files += bfiles
    _histogram(out / "reward_hist.png", run["rewards"], baseline["rewards"] if baseline else None, args.method, reward.name)
    files.append(out / "reward_hist.png")
    if domain.write_files:
        info = {"reward": reward.name, "method": args.method, "process": process, "fasta_alphabet": args.fasta_alphabet,
                "evaluation": _evaluation_columns(columns), **options}
        if baseline:
            info.update({"baseline_x0": baseline["x0"], "baseline_rewards": baseline["rewards"]})
        files += list(domain.write_files(out, run["x0"], _decoded(domain, run["x0"]), run["rewards"], info) or [])

    summary = {
        "svdd_version": __version__, "git_revision": _git_revision(), "config": config,
        "domain": domain.name, "model": args.model or domain.default_model, "reward": reward.name,
        "method": args.method, "num_samples": args.num_samples, "num_steps": args.num_steps,
        "device": device, "torch": torch.__version__, "python": platform.python_version(),
        "host_cpu_count": os.cpu_count(),
        "reward_stats": _reward_stats(run["rewards"], args.seed),
        "metrics": metrics, "counters": run["counters"], "num_shards": run["num_shards"],
        "value": args.value,    # the --value given, or the shipped value the domain picked for this model
        "value_training_cost": value_cost,
        "coupling": run.get("coupling"),
        "wall_time_s_this_invocation": time.time() - started,
        "files": [str(f.relative_to(out)) for f in files],
    }
    evaluation = _evaluation_stats(columns, args.seed)
    if evaluation:
        summary["evaluation"] = evaluation
    if baseline:
        bdec = _decoded(domain, baseline["x0"])
        summary["baseline"] = {"method": "ancestral", "reward_stats": _reward_stats(baseline["rewards"], args.seed),
                               "metrics": _domain_call(domain.metrics, baseline["x0"], bdec, process, **options)
                               if domain.metrics else {},
                               "counters": baseline["counters"]}
        if _evaluation_stats(bcolumns, args.seed):
            summary["baseline"]["evaluation"] = _evaluation_stats(bcolumns, args.seed)
    failures = _reward_failures(run["counters"], args.num_samples)
    if failures:
        summary["reward_failures"] = failures
        if baseline and _reward_failures(baseline["counters"], args.num_samples):
            summary["baseline"]["reward_failures"] = _reward_failures(baseline["counters"], args.num_samples)
    pool = getattr(reward, "fn", None)
    if args.reward_workers and callable(getattr(pool, "counters", None)):
        summary["reward_pool"] = pool.counters()   # worker deaths, restarts, retries, timeouts
    atomic_write_json(out / "summary.json", summary, root=out, default=str)
    if show:
        _print_table(summary)
    if failures:
        print(f"svdd: warning: reward {reward.name!r} failed on {failures['failed_samples']} scored samples "
              f"(candidates included; {failures['reward_calls']} reward calls, {failures['errors']} raised, "
              f"{failures['non_finite']} NaN/inf; first error: "
              f"{failures['first_error'] or 'non-finite values'}); failed samples scored invalid_value and never won "
              "a selection; see summary.json", file=sys.stderr)
        if failures["all_failed"]:
            print(f"svdd: error: every reward evaluation failed, so these samples were not aligned; fix the reward "
                  f"{reward.name!r} and rerun (outputs are in {out})", file=sys.stderr)
            return 1
    return 0


def _reward_failures(counters: dict, num_samples: int) -> Optional[dict]:
    """The run's reward failures for summary.json (None when every evaluation succeeded)."""
    failed = int(counters.get("reward_failed_samples") or 0)
    errors, invalid = int(counters.get("reward_errors") or 0), int(counters.get("reward_invalid") or 0)
    if not (failed or errors or invalid or counters.get("reward_all_failed")):
        return None
    # failed_samples counts every scored sample (candidates and duplicates included) whose reward
    # was replaced by invalid_value; reward_calls counts the distinct evaluations
    return {"failed_samples": failed or errors + invalid, "errors": errors, "non_finite": invalid,
            "reward_calls": int(counters.get("reward_calls") or 0), "num_samples": num_samples,
            "first_error": counters.get("reward_first_error"), "all_failed": bool(counters.get("reward_all_failed"))}


def _print_table(summary: dict) -> None:
    rows = [("pretrained", summary.get("baseline"))] if summary.get("baseline") else []
    rows.append((summary["method"], summary))
    print(f"\n{summary['domain']} / {summary['reward']}  ({summary['num_samples']} samples, {summary['num_steps']} steps)")
    print(f"{'method':<14} {'median':>22} {'top-10%':>22} {'mean':>9} {'nfe/sample':>11}")
    for name, s in rows:
        st, c = s["reward_stats"], s["counters"]
        med = f"{st['median']:.3f} [{st['median_ci'][0]:.3f}, {st['median_ci'][1]:.3f}]"
        top = f"{st['top10']:.3f} [{st['top10_ci'][0]:.3f}, {st['top10_ci'][1]:.3f}]"
        print(f"{name:<14} {med:>22} {top:>22} {st['mean']:>9.3f} {c['nfe_per_sample']:>11.1f}")
    for key, val in summary.get("metrics", {}).items():
        if isinstance(val, (int, float)):
            print(f"  {key}: {val:.4g}")
    print(f"wrote {summary['config']['out']}/ ({', '.join(summary['files'])}, summary.json)")


# ------------------------------------------------------------------------------------------------
def _validate_fit_args(args) -> None:
    """Check a `svdd fit-value` invocation before the model is loaded."""
    from .checks import check_fits

    for flag, value in (("--num-rollouts", args.num_rollouts), ("--train-steps", args.train_steps),
                        ("--train-batch-size", args.train_batch_size), ("--num-steps", args.num_steps)):
        _check_count(flag, value)
    _check_seed(args.seed)
    _check_number("--lr", args.lr, 0, strict=True)
    _check_number("--alpha", args.alpha, 0, strict=True, hint=" (the tilt temperature of the exp loss)")
    _check_number("--weight-decay", args.weight_decay, 0)
    _check_out(args.out)
    device = _device(args.device)
    _check_domain_args(args)
    check_fits(args.num_rollouts * ((args.num_steps or 1) + 1), 1, device="cpu",
               what=f"--num-rollouts {args.num_rollouts} (every state of every rollout is kept)",
               fix="use fewer rollouts")
    return device


def cmd_fit_value(args) -> int:
    from .checks import check_fits, sample_nbytes
    from .values.learned import fit_value

    _validate_fit_args(args)
    domain, process, reward, device = _load(args)
    num_steps = args.num_steps or domain.default_num_steps
    nbytes = sample_nbytes(process)
    if nbytes:
        check_fits(args.num_rollouts * (num_steps + 1), nbytes, device="cpu",
                   what=f"--num-rollouts {args.num_rollouts} × {num_steps + 1} states (every state of every rollout "
                        "is kept)", fix="use fewer rollouts or fewer --num-steps")
    network = None
    if "value_network" in domain.extra:
        network = domain.extra["value_network"](process)
    gen = torch.Generator().manual_seed(args.seed)
    value, cost = fit_value(process, reward, num_rollouts=args.num_rollouts, num_steps=num_steps, network=network,
                            train_steps=args.train_steps, batch_size=args.train_batch_size, lr=args.lr, loss=args.loss,
                            alpha=args.alpha, generator=gen, device=device, progress=not args.quiet,
                            early_stopping=args.early_stopping, weight_decay=args.weight_decay,
                            log=None if args.quiet else print)
    if not math.isfinite(float(cost.get("final_train_loss", 0.0))):
        raise UserError(f"training ended with a non-finite loss ({cost['final_train_loss']}); nothing was saved — "
                        "lower --lr, or check that the reward returns finite values")
    value.meta.update({"domain": domain.name, "reward": reward.name, "model": args.model or domain.default_model})
    value.save(args.out)
    print(f"fitted value saved to {args.out}: {cost['num_rollouts']} rollouts, nfe {cost['nfe']}, "
          f"reward calls {cost['reward_calls']}, {cost['wall_time_s']:.1f} s")
    if "heldout_corr" in cost:
        print(f"held-out rollouts ({cost['heldout_rollouts']}): corr(value, reward) {cost['heldout_corr']:.3f} pooled "
              f"over t, {cost['heldout_corr_last']:.3f} one step before x0 (checkpoint of step {cost['best_step']})")
    return 0


_NOT_OPTIONS = ("process", "reward_fn", "generator", "callback", "num_samples", "num_steps", "value_fn")


def method_options(spec) -> list[tuple[str, Any]]:
    """``(option, default)`` of an algorithm: its keyword parameters (``--set KEY=VALUE``), with the
    registry's defaults applied; ``num_samples``, ``num_steps`` and the callables are not options."""
    out = []
    for name, p in inspect.signature(spec.fn).parameters.items():
        if name in _NOT_OPTIONS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = spec.defaults.get(name, p.default)
        out.append((name, "required" if default is inspect.Parameter.empty else default))
    return out


def describe_method(spec, verbose: bool = False) -> str:
    kinds = ",".join(sorted(spec.kinds))
    grad = " (differentiable reward)" if spec.needs_gradients else ""
    line = f"{spec.name:<20} [{kinds}]{grad} {spec.description}"
    if not verbose:
        return line
    needs = [f"process kind: {' or '.join(sorted(spec.kinds))}"]
    needs.append("a differentiable reward (reward.differentiable = True)" if spec.needs_gradients
                 else "any reward (black box)")
    if spec.needs_value:
        needs.append("a value (--value DIR from `svdd fit-value`, or MODULE:FACTORY)")
    if spec.budget_knob:
        needs.append(f"budget knob: {spec.budget_knob}")
    opts = "  ".join(f"{k}={v!r}" for k, v in method_options(spec))
    return f"{line}\n    needs: {'; '.join(needs)}\n    options (--set KEY=VALUE): {opts or '-'}"


def cmd_list(args) -> int:
    what = args.what
    if args.domain is not None:          # a domain asked for by name must exist and load
        if not args.domain.strip():
            raise UserError("--domain is empty; run `svdd list domains` to see them")
        get_domain(args.domain)
        if what == "methods":
            raise UserError("--domain does not apply to `svdd list methods` (every method lists the process "
                            "kinds it supports); drop --domain")
    if what == "methods":
        for name, spec in sorted(ALGORITHMS.items()):
            print(describe_method(spec, verbose=getattr(args, "verbose", False)))
        return 0
    from .domains import available_domains

    names = [args.domain] if args.domain else available_domains()
    for name in names:
        try:
            domain = get_domain(name)
        except DomainError as err:
            print(f"{name:<14} unavailable: {err}")
            continue
        if what == "domains":
            print(f"{name:<14} {domain.description}")
        elif what == "models":
            for m in domain.models:
                star = "*" if m == domain.default_model else " "
                print(f"{name:<14}{star} {m}")
        elif what == "rewards":
            for r, (_, desc) in domain.rewards.items():
                star = "*" if r == domain.default_reward else " "
                print(f"{name:<14}{star} {r:<22} {desc}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_suite

    if not Path(args.suite).exists():
        raise UserError(f"no suite file {args.suite}; see benchmarks/*.yaml")
    if Path(args.suite).is_dir():
        raise UserError(f"suite {args.suite} is a folder; give a suite file, e.g. benchmarks/toys-quick.yaml")
    _check_out(args.out)
    outcome: dict = {}
    run_suite(args.suite, args.out, resume=args.resume, quick=args.quick, device=_device(args.device),
              only_rewards=args.only_reward, only_methods=args.only_method, outcome=outcome)
    failed = outcome.get("failed") or []
    if failed:   # every other cell ran; the failed ones are retried by the next invocation
        shown = "; ".join(f"{cell} ({error})" for cell, error in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise UserError(f"{len(failed)} of {outcome.get('cells', len(failed))} cells failed and were recorded in "
                        f"{Path(args.out) / 'runs.jsonl'} with status 'error': {shown}{more}; fix the suite and rerun "
                        "(finished cells are kept)")
    return 0


def cmd_report(args) -> int:
    from .report import build_report, report_paths

    if not Path(args.run_dir).exists():
        raise UserError(f"no run directory {args.run_dir}; run `svdd bench SUITE --out DIR` first")
    if not Path(args.run_dir).is_dir():
        raise UserError(f"{args.run_dir} is a file; give the folder that `svdd bench SUITE --out DIR` wrote")
    if args.output is not None:
        if not str(args.output).strip():
            raise UserError("--output is empty; give a folder or a file ending in .md")
        _check_out(args.output, "--output", folder=Path(args.output).suffix.lower() != ".md")
    md_path, fig_dir = report_paths(args.run_dir, args.output)
    if md_path.exists() and md_path.is_dir():
        raise UserError(f"--output {args.output}: {md_path} is a folder; give a folder or a file ending in .md")
    try:
        build_report(args.run_dir, md_path, fig_dir=fig_dir)
    except PermissionError as err:
        hint = "" if args.output else "; write elsewhere with --output DIR"
        raise UserError(f"cannot write the report: {err.strerror}: {err.filename}{hint}") from None
    print(f"wrote {md_path}")
    return 0


def cmd_demo(args) -> int:
    """SVDD-PM on QED with the shipped molecule model (falls back to the toys if unavailable)."""
    _check_out(args.out)
    out = Path(args.out)
    try:
        get_domain("molecules")
        domain, reward, steps, cands = "molecules", "qed", None, 8
    except DomainError as err:
        print(f"(molecules unavailable: {err}; running the toy demo)")
        domain, reward, steps, cands = "toy-masked", "table", 8, 8
    argv = ["sample", "--domain", domain, "--reward", reward, "--method", "svdd-pm", "--num-samples", str(args.num_samples),
            "--num-candidates", str(cands), "--seed", "0", "--out", str(out), "--resume"]
    if steps:
        argv += ["--num-steps", str(steps)]
    return main(argv)


# ------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``svdd sample: error: ...``) instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="svdd", description="Reward-aligned sampling from pretrained diffusion models.")
    p.add_argument("--version", action="version", version=f"svdd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--domain", default=None, help="domain pack (svdd list domains; default molecules, or "
                        "your own with --process)")
        sp.add_argument("--model", default=None, help="pretrained model of the domain (svdd list models)")
        sp.add_argument("--process", default=None, metavar="MODULE:FACTORY",
                        help="your own model: a zero-argument factory returning a svdd process (module on PYTHONPATH)")
        sp.add_argument("--reward", default=None, help="reward name or weighted sum, e.g. 'docking:parp1+0.5*qed'")
        sp.add_argument("--num-steps", type=int, default=None, help="denoising steps (domain default)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
        sp.add_argument("--oracle-dir", default=None, help="folder of third-party oracle weights (rna)")
        sp.add_argument("--diffusers", default=None, help="a saved diffusers pipeline/model folder (images)")
        sp.add_argument("--prompt", default=None, help="text prompt for a text-conditioned --diffusers pipeline")
        sp.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (--diffusers)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars or tables")

    s = sub.add_parser("sample", help="draw reward-aligned samples and write a run folder",
                       epilog="`svdd sample --method NAME --help` adds that method's options")
    p.sample_parser = s
    common(s)
    s.add_argument("--method", default="svdd-pm", help="algorithm (svdd list methods)")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--num-candidates", type=int, default=None, help="SVDD's M / best-of-n's N")
    s.add_argument("--num-particles", type=int, default=None, help="SMC particles")
    s.add_argument("--alpha", type=float, default=None, help="tilt temperature (0 = argmax)")
    s.add_argument("--value", default=None, metavar="DIR|MODULE:FACTORY",
                   help="value for svdd-mc: a folder from `svdd fit-value`, or your FACTORY() / FACTORY(process) "
                        "returning value_fn(x, t)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other method option, repeatable")
    s.add_argument("--batch-size", type=int, default=None, help="samples per shard (default: all in one)")
    s.add_argument("--max-batch-size", default=None, metavar="N|auto",
                   help="cap on rows per denoiser call; auto sizes it to free GPU memory (no cap on CPU)")
    s.add_argument("--precision", default=None, metavar="fp32|bf16|auto",
                   help="denoiser forward: fp32 (default), bf16 (autocast), auto (bf16 on a CUDA GPU supporting it)")
    s.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the pretrained baseline")
    s.add_argument("--fasta-alphabet", choices=["U", "T"], default="U", help="RNA FASTA output with U or T")
    s.add_argument("--backend", choices=["local", "process", "ray"], default="local",
                   help="run shards in this process, in worker processes, or on a Ray cluster")
    s.add_argument("--workers", type=int, default=None, help="shard workers for --backend process|ray")
    s.add_argument("--ray-address", default=None, help="join an existing Ray cluster (default: start a local one)")
    s.add_argument("--reward-workers", type=int, default=None,
                   help="evaluate the reward in a pool of N worker processes (or Ray actors with --backend ray)")
    s.add_argument("--reward-timeout", type=float, default=None,
                   help="seconds per reward task in the --reward-workers pool (past it the worker is killed, the "
                        "task retried, then scored invalid); only worker rewards can be timed out: a reward "
                        "evaluated in this process cannot be interrupted")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    s.set_defaults(func=cmd_sample)

    f = sub.add_parser("fit-value", help="fit an SVDD-MC value network on pretrained rollouts")
    common(f)
    f.add_argument("--num-rollouts", type=int, default=512)
    f.add_argument("--train-steps", type=int, default=2000)
    f.add_argument("--train-batch-size", type=int, default=256)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--loss", choices=["mse", "exp"], default="mse")
    f.add_argument("--alpha", type=float, default=1.0)
    f.add_argument("--weight-decay", type=float, default=0.0)
    f.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="train all --train-steps instead of keeping the best checkpoint on validation rollouts")
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_fit_value)

    ls = sub.add_parser("list", help="list methods, domains, models or rewards")
    ls.add_argument("what", choices=["methods", "domains", "models", "rewards"])
    ls.add_argument("-v", "--verbose", action="store_true", help="methods: options, defaults and what each needs")
    ls.add_argument("--domain", default=None)
    ls.set_defaults(func=cmd_list)

    b = sub.add_parser("bench", help="run a benchmark suite (YAML)")
    b.add_argument("suite")
    b.add_argument("--out", required=True)
    b.add_argument("--resume", action="store_true", default=True)
    b.add_argument("--no-resume", dest="resume", action="store_false")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--device", default="cpu")
    b.add_argument("--only-reward", action="append", default=None, metavar="REWARD",
                   help="run only this reward's cells (repeatable); run another reward in a second process on the same --out")
    b.add_argument("--only-method", action="append", default=None, metavar="LABEL",
                   help="run only this method row's cells (repeatable)")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="tables and figures from a bench run folder")
    r.add_argument("run_dir")
    r.add_argument("--output", default=None, metavar="DIR|FILE.md",
                   help="where to write: a folder gets report.md and figures/ (the run folder is only read, so it "
                        "may be read-only); a path ending in .md is the markdown file, with figures/ beside it "
                        "(default: RUN_DIR/report.md and RUN_DIR/figures)")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="SVDD-PM on QED with the shipped molecule model")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--num-samples", type=int, default=32)
    d.set_defaults(func=cmd_demo)
    return p


# OS errors that describe the user's files or machine (a path that is a file, a folder that cannot
# be written, a full disk), not a bug in svdd
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT, errno.EMFILE, errno.ENFILE}


def _error(message) -> None:
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"svdd: error: {text}", file=sys.stderr)


def _os_error(err: OSError) -> str:
    where = err.filename if err.filename is not None else ""
    what = err.strerror or str(err)
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space"}.get(
        err.errno, "check the path or choose another one")
    return f"{where}: {what}; {hint}" if where else f"{what}; {hint}"


def _out_of_memory(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    text = str(err)
    return (isinstance(err, MemoryError) or (oom is not None and isinstance(err, oom))
            or "can't allocate memory" in text or "CUDA out of memory" in text)


def _method_help(parser, argv: Optional[list[str]]) -> None:
    """``svdd sample --method X --help`` ends with X's own options and what it needs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "sample" not in argv or not ({"-h", "--help"} & set(argv)):
        return
    method = None
    for i, item in enumerate(argv):
        if item == "--method" and i + 1 < len(argv):
            method = argv[i + 1]
        elif item.startswith("--method="):
            method = item.partition("=")[2]
    if method is None or method not in ALGORITHMS:
        return
    sample = getattr(parser, "sample_parser", None)
    if sample is not None:
        sample.formatter_class = argparse.RawDescriptionHelpFormatter
        sample.epilog = f"method {method}:\n" + describe_method(ALGORITHMS[method], verbose=True)


def _run(argv: Optional[list[str]]) -> int:
    parser = build_parser()
    _method_help(parser, argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:        # argparse: --help, --version, a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        _error(err)
        return 2
    except BrokenPipeError:
        raise
    except OSError as err:
        if err.errno not in _USER_ERRNOS:
            raise
        _error(_os_error(err))
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        _error("out of memory while running; lower --num-samples / --num-candidates / --num-particles, or split "
               "the run with --batch-size and --max-batch-size (finished shards are kept: rerun with --resume)")
        return 2
    except KeyboardInterrupt:
        print("svdd: interrupted; finished shards are kept — rerun with --resume", file=sys.stderr)
        return 130


def main(argv: Optional[list[str]] = None) -> int:
    """The ``svdd`` command. Returns the exit code: 0, 1 (the run finished but failed, e.g. every
    reward call failed), 2 (a user mistake, in one ``svdd: error:`` line), 130 (interrupted), 141
    (stdout closed early, as in ``svdd list rewards | head -1``: silent, like a SIGPIPE)."""
    try:
        code = _run(argv)
        sys.stdout.flush()             # a reader that went away is noticed here, not at exit
        return code
    except BrokenPipeError:
        try:                           # later flushes of stdout must not fail again at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
