"""Train the RNA domain's models: ``utr-random`` and ``utr-genomic`` (masked diffusion over 50-nt
sequences), then the SVDD-MC value network for ``mrl`` on ``utr-random``, then a short
evaluation (pretrained vs guided samples) so the run's log says what the models do.

Inputs (``scripts/prepare_rna.py``): ``DATA/dhs.pt`` (2-bit packed DHS sequences + split) and
``DATA/oracle/{mrl,mrl-eval}.pt`` (Optimus 5-Prime state dicts; only the value fit and the
evaluation need them). Outputs in ``OUT``::

    utr-random/, utr-genomic/         config.json + model.safetensors (fp16)  [model.pt if no safetensors]
    values/utr-random-mrl/            the fitted SVDD-MC value network (if svdd.values.learned exists)
    train.json                        histories, NELBOs, costs, evaluation

    python scripts/train_rna.py --data .gpu-data/rna --out /tmp/rna --device cuda --time-budget 420
    python scripts/train_rna.py --data .gpu-data/rna --out /tmp/rna-smoke --device cpu --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.domains.rna import data as rdata  # noqa: E402
from svdd.domains.rna.oracle import MRLReward, Optimus5Prime  # noqa: E402
from svdd.domains.rna.tokens import MASK_ID, SEQ_LEN, VOCAB_SIZE  # noqa: E402
from svdd.nn import MaskedTransformer, save_model  # noqa: E402
from svdd.nn.train import evaluate_nelbo, train_masked_diffusion  # noqa: E402
from svdd.process.masked import MaskedProcess  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_process(args, device) -> MaskedProcess:
    model = MaskedTransformer(VOCAB_SIZE, SEQ_LEN, dim=args.dim, depth=args.depth, heads=args.heads,
                              dropout=0.0).to(device)
    return MaskedProcess(model, SEQ_LEN, VOCAB_SIZE, MASK_ID, schedule="loglinear", device=device)


def save(model, path: Path, extra: dict) -> str:
    try:
        save_model(model, path, extra=extra, half=True)
        return "safetensors"
    except ModuleNotFoundError:  # a GPU image without safetensors: convert after unpacking
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"class": type(model).__name__, "config": model.config,
                                                      **extra}, indent=2))
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                   path / "model.pt")
        return "torch"


def steps_for_budget(process, data, args, budget_s: float) -> int:
    """Time a few training steps on a throwaway copy and size the run to the budget."""
    if args.smoke:
        return args.smoke_steps
    probe = build_process(args, process.device)
    probe.model.load_state_dict(process.model.state_dict())
    opt = torch.optim.AdamW(probe.model.parameters(), lr=1e-4)
    gen = torch.Generator(device=process.device).manual_seed(0)
    times = []
    for i in range(12):
        if process.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x0 = data[torch.randint(0, data.shape[0], (args.batch_size,))].to(process.device)
        with torch.autocast(device_type=process.device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = probe.nelbo(x0, generator=gen).mean() / SEQ_LEN
        opt.zero_grad()
        loss.backward()
        opt.step()
        if process.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times[2:])[len(times[2:]) // 2] * 1.4 + 2e-3   # EMA, validation, a shared machine
    return max(50, int(budget_s / per_step))


def train_one(name: str, data, valid, test, args, device, budget_s: float, seed: int) -> tuple:
    torch.manual_seed(seed)
    process = build_process(args, device)
    num_steps = steps_for_budget(process, data, args, budget_s)
    log(f"{name}: {sum(p.numel() for p in process.model.parameters())} parameters, {data.shape[0]} training "
        f"sequences, {num_steps} steps planned (budget {budget_s:.0f} s)")
    t0 = time.time()
    ema, history = train_masked_diffusion(
        process, data, num_steps=num_steps, batch_size=args.batch_size, lr=args.lr,
        warmup=min(500, num_steps // 10), seed=seed, valid_data=valid[:args.num_valid],
        eval_every=max(num_steps // 4, 1), log=lambda m: log(f"{name}: {m}"), amp=args.amp,
        time_budget_s=budget_s * 1.1)
    train_s = time.time() - t0
    ev = MaskedProcess(ema, SEQ_LEN, VOCAB_SIZE, MASK_ID, "loglinear", device=device)
    result = {"history": history, "num_steps_planned": num_steps, "train_time_s": train_s,
              "steps_done": history[-1]["step"] if history else 0,
              "test_nelbo_per_sequence": evaluate_nelbo(ev, ema, test, num_t_samples=8 if not args.smoke else 1),
              "uniform_nelbo_per_sequence": SEQ_LEN * math.log(4)}
    log(f"{name}: test NELBO {result['test_nelbo_per_sequence']:.3f} nats/seq "
        f"(uniform {result['uniform_nelbo_per_sequence']:.3f}) after {train_s:.0f} s")
    return ev, result


def load_oracle(data_dir: Path, name: str, device) -> MRLReward | None:
    path = data_dir / "oracle" / f"{name}.pt"
    if not path.exists():
        log(f"no {path}: skipping what needs the {name} predictor")
        return None
    model = Optimus5Prime()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return MRLReward(model.to(device).eval(), name=name)


def fit_mrl_value(process, reward, args, out: Path, device, budget_s: float) -> dict:
    try:
        from svdd.values import learned
        from svdd.domains.rna.value import value_network
    except ImportError as err:
        log(f"svdd.values.learned is not available ({err}); no SVDD-MC value network")
        return {"skipped": str(err)}
    gen = torch.Generator(device=device).manual_seed(args.seed + 7)
    kwargs = dict(num_rollouts=args.value_rollouts, num_steps=args.sample_steps, train_steps=args.value_train_steps,
                  batch_size=args.value_batch_size, lr=args.value_lr, loss="mse", alpha=0.0, generator=gen,
                  device=str(device), network=value_network(process))
    if args.smoke:
        kwargs.update(num_rollouts=16, train_steps=5, batch_size=16)
    t0 = time.time()
    value, cost = learned.fit_value(process, reward, **kwargs)
    path = out / "values" / "utr-random-mrl"
    info = {"cost": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in dict(cost).items()},
            "settings": {k: v for k, v in kwargs.items() if k not in ("generator", "network")},
            "network": type(kwargs["network"]).__name__, "wall_time_s": time.time() - t0}
    value.meta.update({"domain": "rna", "reward": "mrl", "model": "utr-random"})
    value.save(path)
    log(f"value network: {info['cost']}")
    return info


@torch.no_grad()
def evaluate(processes: dict, rewards: dict, args, device, values: dict, deadline: float) -> dict:
    """One seed, ``--eval-samples`` per method: reward medians under both predictors."""
    import svdd
    from svdd.algorithms import ALGORITHMS

    out = {}
    n = args.eval_samples
    for model_name, process in processes.items():
        for method, kw in (("ancestral", {}), ("best-of-n", {"num_candidates": args.eval_candidates}),
                           ("svdd-pm", {"num_candidates": args.eval_candidates}),
                           ("svdd-mc", {"num_candidates": args.eval_candidates}),
                           ("smc", {"alpha": 0.1})):
            if method not in ALGORITHMS:
                continue
            if time.time() > deadline:
                log(f"eval {model_name} {method}: skipped (over the time budget)")
                continue
            if method == "svdd-mc":
                if model_name not in values:
                    continue
                kw = {**kw, "value_fn": values[model_name]}
            gen = torch.Generator(device=device).manual_seed(args.seed)
            try:
                res = svdd.sample(process, rewards["mrl"], method=method, num_samples=n,
                                  num_steps=args.sample_steps, generator=gen, **kw)
            except Exception as err:  # an algorithm still in development must not sink the job
                log(f"eval {model_name} {method}: {type(err).__name__}: {err}")
                continue
            x0 = res.x0
            row = {"nfe_per_sample": res.info.get("nfe_per_sample"), "wall_time_s": res.info.get("wall_time_s")}
            for rname, rfn in rewards.items():
                r = rfn(x0).float().cpu()
                row[f"{rname}_median"] = float(r.median())
                row[f"{rname}_top10"] = float(r.quantile(0.9))
            from svdd.domains.rna.metrics import pairwise_diversity, uaug_count
            row["diversity"] = pairwise_diversity(x0.cpu())
            row["uaug_mean"] = float(uaug_count(x0.cpu()).float().mean())
            row["elbo_mean"] = float((-process.nelbo(x0, num_t_samples=4,
                                                     generator=torch.Generator(device=device).manual_seed(0))).mean())
            out[f"{model_name}/{method}"] = row
            log(f"eval {model_name} {method}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items()
                                                           if isinstance(v, float)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".gpu-data" / "rna"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds for the whole job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=None, help="default 128 on cuda, 64 on cpu")
    ap.add_argument("--depth", type=int, default=None, help="default 4 on cuda, 3 on cpu")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 on cuda, 128 on cpu")
    ap.add_argument("--lr", type=float, default=None, help="default 6e-4 on cuda, 1e-3 on cpu")
    ap.add_argument("--num-random", type=int, default=1_000_000, help="random 50-mers for utr-random")
    ap.add_argument("--stride", type=int, default=10, help="window stride over the 200-bp DHS sequences")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--value-rollouts", type=int, default=4096)
    ap.add_argument("--value-train-steps", type=int, default=3000)
    ap.add_argument("--value-batch-size", type=int, default=None, help="default 512 on cuda, 128 on cpu")
    ap.add_argument("--value-lr", type=float, default=3e-4)
    ap.add_argument("--eval-samples", type=int, default=256)
    ap.add_argument("--eval-candidates", type=int, default=8)
    ap.add_argument("--models", default="utr-random,utr-genomic")
    ap.add_argument("--no-value", action="store_true")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: 20 steps, small data")
    ap.add_argument("--smoke-steps", type=int, default=20)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    for name, on_gpu, on_cpu in (("dim", 128, 64), ("depth", 4, 3), ("batch_size", 512, 128),
                                 ("value_batch_size", 512, 128), ("lr", 6e-4, 1e-3)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    args.num_valid, args.num_test = (4096, 8192) if gpu else (1024, 2048)
    if args.smoke:
        args.num_random, args.eval_samples, args.value_rollouts = 2000, 8, 16
        args.dim, args.depth, args.heads, args.batch_size, args.sample_steps = 32, 1, 2, 32, 8
        args.num_valid, args.num_test = 64, 64
    device = torch.device(args.device)
    args.amp = device.type == "cuda"
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data)
    start = time.time()
    models = [m for m in args.models.split(",") if m]
    # time plan: the uniform model has little to learn (its optimum is the uniform denoiser);
    # the genomic model gets most of the budget; the value fit and the evaluation the rest
    share = {"utr-random": 0.10, "utr-genomic": 0.55}
    report: dict = {"args": {k: v for k, v in vars(args).items()}, "device": str(device),
                    "torch": torch.__version__}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    processes = {}
    arch = {"dim": args.dim, "depth": args.depth, "heads": args.heads}
    if "utr-random" in models:
        gen = torch.Generator().manual_seed(args.seed)
        train = rdata.random_utrs(args.num_random, gen)
        valid, test = rdata.random_utrs(args.num_valid, gen), rdata.random_utrs(args.num_test, gen)
        proc, res = train_one("utr-random", train, valid, test, args, device,
                              args.time_budget * share["utr-random"], args.seed)
        extra = {"schedule": "loglinear", "model_name": "utr-random", "data": "uniform random 50-mers",
                 "architecture": arch, "test_nelbo_per_sequence": res["test_nelbo_per_sequence"],
                 "steps": res["steps_done"], "seed": args.seed}
        res["format"] = save(proc.model, out / "utr-random", extra)
        report["utr-random"] = res
        processes["utr-random"] = proc
        del train
    if "utr-genomic" in models:
        tokens, split = rdata.load_packed(data_dir / "dhs.pt")
        if args.smoke:
            tokens, split = tokens[::200], split[::200]
        train = rdata.windows(tokens[split == 0], stride=args.stride)
        valid = rdata.windows(tokens[split == 1], stride=50)
        test = rdata.windows(tokens[split == 2], stride=50)
        gen = torch.Generator().manual_seed(args.seed + 1)
        valid = valid[torch.randperm(valid.shape[0], generator=gen)]
        test = test[torch.randperm(test.shape[0], generator=gen)][: args.num_test]
        proc, res = train_one("utr-genomic", train, valid, test, args, device,
                              args.time_budget * share["utr-genomic"], args.seed + 1)
        extra = {"schedule": "loglinear", "model_name": "utr-genomic",
                 "data": f"50-nt windows (stride {args.stride}, both strands) of ENCODE DHS training sequences "
                         "(dnadiffusion 0.0.0.dev0 wheel)",
                 "architecture": arch, "test_nelbo_per_sequence": res["test_nelbo_per_sequence"],
                 "steps": res["steps_done"], "seed": args.seed + 1, "num_training_windows": int(train.shape[0])}
        res["format"] = save(proc.model, out / "utr-genomic", extra)
        res["num_training_windows"] = int(train.shape[0])
        if "utr-random" in processes:  # cross-check: each model on the other's test data
            res["nelbo_of_random_sequences"] = evaluate_nelbo(proc, proc.model, rdata.random_utrs(
                args.num_test, torch.Generator().manual_seed(5)), num_t_samples=4)
            rp = processes["utr-random"]
            report["utr-random"]["nelbo_of_dhs_windows"] = evaluate_nelbo(rp, rp.model, test, num_t_samples=4)
        report["utr-genomic"] = res
        processes["utr-genomic"] = proc
        del train

    rewards = {n: r for n in ("mrl", "mrl-eval") if (r := load_oracle(data_dir, n, device)) is not None}
    values = {}
    if not args.no_value and "utr-random" in processes and "mrl" in rewards:
        remaining = args.time_budget - (time.time() - start)
        report["value_utr-random-mrl"] = fit_mrl_value(processes["utr-random"], rewards["mrl"], args, out, device,
                                                       remaining)
        if "skipped" not in report["value_utr-random-mrl"]:
            from svdd.values import load_value
            values["utr-random"] = load_value(out / "values" / "utr-random-mrl", device)
    (out / "train.json").write_text(json.dumps(report, indent=2, default=str))
    if not args.no_eval and "mrl" in rewards:
        report["evaluation"] = evaluate(processes, rewards, args, device, values,
                                        deadline=start + args.time_budget * 1.1)
    report["total_time_s"] = time.time() - start
    (out / "train.json").write_text(json.dumps(report, indent=2, default=str))
    log(f"done in {report['total_time_s']:.0f} s")


if __name__ == "__main__":
    main()
