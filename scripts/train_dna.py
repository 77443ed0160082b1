"""Train the DNA domain's models from ``.gpu-data/dna/dhs.npz`` (see scripts/prepare_dna.py).

1. two HepG2 activity oracles (4-way cell-type CNNs): *guidance* on the odd training
   chromosomes, *evaluation* on the even ones; epochs picked on chr2, scored on chr1 (test)
   and on the other half's chromosomes;
2. the masked-diffusion model (``DilatedConvDenoiser``, MDLM log-linear schedule) on all
   training-split sequences (chr3..chrY, all four cell types), EMA weights, NELBO on chr1;
3. pretrained samples (128 steps) and a quick SVDD-PM / best-of-N check (M = 10) scored by
   both oracles; 4. the SVDD-MC value network for ``hepg2`` (``svdd.values.fit_value``).

Writes into ``--out``: ``dhs-mdlm/``, ``oracle_guidance/``, ``oracle_evaluation/``,
``value_hepg2/`` (config + safetensors; ``.pt`` state dicts when safetensors is missing),
``samples_*.npy`` (uint8 tokens) and ``train.json`` (histories, metrics, costs, the exact
settings). Runs on CPU too (``--device cpu --tiny`` for a smoke test).

    python scripts/train_dna.py --data .gpu-data/dna --out runs/dna-train --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.domains.dna import data as D  # noqa: E402
from svdd.domains.dna.models import DilatedConvDenoiser, ValueNetwork  # noqa: E402
from svdd.domains.dna.rewards import OracleReward  # noqa: E402
from svdd.domains.dna.training import auroc, evaluate_oracle, predict_logits, log_odds_from_logits, train_oracle  # noqa: E402
from svdd.nn import save_model, train_masked_diffusion  # noqa: E402
from svdd.process import MaskedProcess  # noqa: E402

T0 = time.time()

# Model sizes and batch sizes per machine. The CPU profile (one thread, ~20 minutes) trades
# width for optimiser steps; both are recorded in train.json and in the saved configs.
PROFILES = {
    "gpu": dict(denoiser=dict(dim=128, kernel_size=9, dilations=(1, 2, 4, 8, 16, 1, 2, 4, 8, 16), dropout=0.1),
                oracle=dict(dim=128, dilations=(1, 2, 4, 1, 2, 4)),
                value=dict(dim=96, dilations=(1, 2, 4, 8, 16, 1, 2, 4)),
                batch_size=512, oracle_batch_size=256, value_batch_size=512, probe_steps=40,
                nelbo_t_samples=8, valid_size=1024, value_check_rollouts=512),
    "cpu": dict(denoiser=dict(dim=64, kernel_size=5, dilations=(1, 2, 4, 8, 16, 32, 64, 1), dropout=0.0),
                oracle=dict(dim=64, dilations=(1, 2, 4, 1)), value=dict(dim=32, dilations=(1, 2, 4, 8, 16, 1)),
                batch_size=64, oracle_batch_size=64, value_batch_size=128, probe_steps=5,
                nelbo_t_samples=4, valid_size=512, value_check_rollouts=128),
    "tiny": dict(denoiser=dict(dim=32, dilations=(1, 2, 4)), oracle=dict(dim=32, dilations=(1, 2)),
                 value=dict(dim=16, dilations=(1, 2)), batch_size=64, oracle_batch_size=64, value_batch_size=64,
                 probe_steps=3, nelbo_t_samples=2, valid_size=64, value_check_rollouts=64),
}


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def save(model, path: Path, extra=None) -> str:
    try:
        save_model(model, path, extra=extra)
        return "safetensors"
    except ImportError:  # the GPU machine may lack safetensors: convert later with --convert
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"class": type(model).__name__, "config": model.config,
                                                      **(extra or {})}, indent=2))
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path / "model.pt")
        return "pt"


def convert(out: Path) -> None:
    """Turn ``model.pt``/``value.pt`` left by a machine without safetensors into safetensors."""
    from safetensors.torch import save_file

    for pt in list(out.rglob("model.pt")) + list(out.rglob("value.pt")):
        state = torch.load(pt, map_location="cpu")
        save_file({k: v.contiguous() for k, v in state.items()}, str(pt.with_suffix(".safetensors")))
        pt.unlink()
        print(f"converted {pt}")


def quantiles(x: torch.Tensor) -> dict:
    x = x.double().cpu()
    return {"median": float(x.median()), "top10": float(torch.quantile(x, 0.9)), "mean": float(x.mean())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train the DNA models (oracles, diffusion, value)")
    ap.add_argument("--data", default=str(ROOT / ".gpu-data" / "dna"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "dna-train"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle-epochs", type=int, default=30)
    ap.add_argument("--oracle-budget", type=float, default=40.0, help="seconds per oracle")
    ap.add_argument("--diffusion-budget", type=float, default=180.0, help="seconds")
    ap.add_argument("--diffusion-steps", type=int, default=None, help="fix the step count (else from a timing probe)")
    ap.add_argument("--max-diffusion-steps", type=int, default=60000)
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None,
                    help="model/batch sizes (default: gpu on CUDA, cpu otherwise, tiny with --tiny)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 (gpu) / 2e-3 (cpu)")
    ap.add_argument("--num-steps", type=int, default=128, help="sampling steps")
    ap.add_argument("--num-samples", type=int, default=1024)
    ap.add_argument("--check-samples", type=int, default=256)
    ap.add_argument("--check-candidates", type=int, default=10)
    ap.add_argument("--value-rollouts", type=int, default=1024)
    ap.add_argument("--value-train-steps", type=int, default=3000)
    ap.add_argument("--deadline", type=float, default=420.0, help="skip optional stages after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="smoke test: tiny models, data and budgets")
    ap.add_argument("--convert", metavar="DIR", help="only convert .pt weights under DIR to safetensors")
    args = ap.parse_args(argv)
    if args.convert:
        return convert(Path(args.convert))

    torch.manual_seed(args.seed)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    prof_name = args.profile or ("tiny" if args.tiny else "gpu" if device.type == "cuda" else "cpu")
    prof = PROFILES[prof_name]
    args.batch_size = args.batch_size or prof["batch_size"]
    args.lr = args.lr or (1e-3 if prof_name == "gpu" else 2e-3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args), "profile": prof_name, "torch": torch.__version__, "device": str(device),
                    "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}

    def dump():
        (out / "train.json").write_text(json.dumps(report, indent=2, default=float))

    z = np.load(Path(args.data) / "dhs.npz")
    tokens = torch.from_numpy(z["tokens"].astype(np.int64))
    cell = torch.from_numpy(z["cell_type"].astype(np.int64))
    chr_names = [str(c) for c in z["chr_names"]]
    chrom = np.array([chr_names[i] for i in z["chr"]])
    split = np.array([str(z["split_names"][i]) for i in z["split"]])
    masks = {s: torch.from_numpy(split == s) for s in D.SPLITS}
    halves = {h: torch.from_numpy(np.isin(chrom, c) & (split == "training")) for h, c in D.ORACLE_HALVES.items()}
    if args.tiny:
        sub = lambda m: m & (torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.03)  # noqa: E731
        masks = {k: sub(v) for k, v in masks.items()}
        halves = {k: sub(v) for k, v in halves.items()}
    log(f"data: {len(tokens)} sequences; " + ", ".join(f"{k}={int(v.sum())}" for k, v in {**masks, **halves}.items()))
    report["data"] = {k: int(v.sum()) for k, v in {**masks, **halves}.items()}

    # 1. oracles ---------------------------------------------------------------------------------
    oracles, report["oracles"] = {}, {}
    for i, (which, m) in enumerate(halves.items()):
        model, hist = train_oracle(tokens[m], cell[m], tokens[masks["validation"]], cell[masks["validation"]],
                                   epochs=2 if args.tiny else args.oracle_epochs, seed=args.seed + i,
                                   batch_size=prof["oracle_batch_size"], device=device,
                                   time_budget_s=args.oracle_budget, model_kwargs=prof["oracle"],
                                   log=lambda s, w=which: log(f"{w} {s}"))
        other = halves["evaluation" if which == "guidance" else "guidance"]
        res = {"history": hist, "test_chr1": evaluate_oracle(model, tokens[masks["test"]], cell[masks["test"]]),
               "other_half": evaluate_oracle(model, tokens[other], cell[other]),
               "train_chromosomes": list(D.ORACLE_HALVES[which])}
        res["format"] = save(model, out / f"oracle_{which}", extra={"trained_on": list(D.ORACLE_HALVES[which])})
        report["oracles"][which] = res
        oracles[which] = model
        log(f"{which} oracle: test {res['test_chr1']} other-half {res['other_half']}")
    test_lo = {w: log_odds_from_logits(predict_logits(o, tokens[masks['test']])) for w, o in oracles.items()}
    report["oracle_agreement_test_pearson"] = float(torch.corrcoef(torch.stack(list(test_lo.values())))[0, 1])
    report["real_test_log_odds"] = {w: quantiles(v) for w, v in test_lo.items()}
    report["real_test_hepg2_log_odds"] = {w: quantiles(v[cell[masks['test']] == D.HEPG2]) for w, v in test_lo.items()}
    dump()

    # 2. diffusion model -------------------------------------------------------------------------
    model_kwargs = prof["denoiser"]
    train_x = tokens[masks["training"]]
    valid_x = tokens[masks["validation"]][:prof["valid_size"]]

    def new_process():
        torch.manual_seed(args.seed)
        return MaskedProcess(DilatedConvDenoiser(**model_kwargs).to(device), D.SEQ_LEN, D.VOCAB_SIZE, D.MASK_ID,
                             "loglinear", device=device)

    amp = device.type == "cuda"
    steps = args.diffusion_steps
    if steps is None:
        if args.tiny:
            steps = 30
        else:  # timing probe on a throwaway model: pick the step count that fits the budget
            probe_steps = prof["probe_steps"]
            t0 = time.time()
            train_masked_diffusion(new_process(), train_x, num_steps=probe_steps, batch_size=args.batch_size,
                                   warmup=10, eval_every=10**9, log=lambda s: None, amp=amp)
            per_step = (time.time() - t0) / probe_steps
            steps = int(min(args.max_diffusion_steps, max(100, 0.92 * args.diffusion_budget / per_step)))
            log(f"probe: {per_step * 1000:.1f} ms/step -> {steps} steps")
    process = new_process()
    t0 = time.time()
    ema, hist = train_masked_diffusion(process, train_x, num_steps=steps, batch_size=args.batch_size, lr=args.lr,
                                       warmup=min(1000, steps // 10), seed=args.seed, valid_data=valid_x,
                                       eval_every=max(steps // 10, 1), log=lambda s: log("diffusion " + s), amp=amp,
                                       time_budget_s=args.diffusion_budget * 1.2)
    report["diffusion"] = {"num_train_steps": steps, "steps_done": hist[-1]["step"] if hist else 0,
                           "batch_size": args.batch_size, "lr": args.lr, "history": hist,
                           "train_time_s": time.time() - t0, "config": ema.config,
                           "num_parameters": sum(p.numel() for p in ema.parameters())}
    report["diffusion"]["format"] = save(ema, out / "dhs-mdlm", extra={"seq_len": D.SEQ_LEN, "mask_id": D.MASK_ID,
                                                                        "schedule": "loglinear"})
    ema.eval()
    proc = MaskedProcess(ema, D.SEQ_LEN, D.VOCAB_SIZE, D.MASK_ID, "loglinear", device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        for name in ("test",) if prof_name != "gpu" else ("test", "validation"):
            x = tokens[masks[name]].to(device)
            nelbo = torch.cat([proc.nelbo(x[i:i + 1024], num_t_samples=prof["nelbo_t_samples"], generator=gen)
                               for i in range(0, len(x), 1024)])
            report["diffusion"][f"nelbo_{name}"] = {"per_sequence": float(nelbo.mean()), "per_bp": float(nelbo.mean()) / D.SEQ_LEN,
                                                     "hepg2_per_sequence": float(nelbo[cell[masks[name]] == D.HEPG2].mean())}
    log(f"diffusion: {report['diffusion'].get('nelbo_test')}")
    dump()

    # 3. samples and a quick guided check -------------------------------------------------------
    import svdd

    rewards = {w: OracleReward(o, D.HEPG2, name=w) for w, o in oracles.items()}
    checks = report["samples"] = {}
    n_samples = 64 if args.tiny else args.num_samples
    n_steps = 8 if args.tiny else args.num_steps
    res = svdd.sample(proc, rewards["guidance"], method="ancestral", num_samples=n_samples, num_steps=n_steps,
                      generator=torch.Generator(device=device).manual_seed(args.seed))
    np.save(out / "samples_ancestral.npy", res.x0.cpu().numpy().astype(np.uint8))
    checks["ancestral"] = {"n": n_samples, "guidance": quantiles(res.rewards),
                           "evaluation": quantiles(rewards["evaluation"](res.x0)), "wall_time_s": res.info["wall_time_s"]}
    log(f"ancestral: {checks['ancestral']}")
    M = args.check_candidates
    n_check = 16 if args.tiny else args.check_samples
    for method, kw in (("svdd-pm", {"num_candidates": M}), ("best-of-n", {"num_candidates": M})):
        if time.time() - T0 > args.deadline:
            log(f"skip {method}: deadline")
            continue
        try:
            res = svdd.sample(proc, rewards["guidance"], method=method, num_samples=n_check, num_steps=n_steps,
                              generator=torch.Generator(device=device).manual_seed(args.seed), **kw)
        except Exception as err:  # keep the run going; the check is optional
            log(f"{method} failed: {type(err).__name__}: {err}")
            continue
        np.save(out / f"samples_{method}_M{M}.npy", res.x0.cpu().numpy().astype(np.uint8))
        checks[method] = {"n": n_check, "M": M, "guidance": quantiles(res.rewards),
                          "evaluation": quantiles(rewards["evaluation"](res.x0)),
                          "nfe_per_sample": res.info.get("nfe_per_sample"), "wall_time_s": res.info["wall_time_s"]}
        log(f"{method}: {checks[method]}")
    dump()

    # 4. SVDD-MC value network ------------------------------------------------------------------
    if time.time() - T0 > args.deadline - 60:
        log("skip value fit: deadline")
    else:
        from svdd.values import fit_value, register_value_network

        register_value_network(ValueNetwork)
        torch.manual_seed(args.seed)
        net = ValueNetwork(**prof["value"])
        value, cost = fit_value(proc, rewards["guidance"], num_rollouts=32 if args.tiny else args.value_rollouts,
                                num_steps=n_steps, network=net, train_steps=20 if args.tiny else args.value_train_steps,
                                batch_size=prof["value_batch_size"], lr=1e-3, loss="mse",
                                generator=torch.Generator().manual_seed(args.seed), device=device,
                                rollout_batch_size=512, log=lambda s: log(s))
        # quality: Pearson r between v(x_t, t) and r(x0) on fresh rollouts, per time
        from svdd.algorithms._common import Run
        from svdd.algorithms.ancestral import rollout

        run = Run(proc, rewards["guidance"])
        with torch.no_grad():
            x0, traj = rollout(run, prof["value_check_rollouts"], n_steps, torch.Generator(device=device).manual_seed(args.seed + 7),
                               record_states=True)
            r = rewards["guidance"](x0).float()
            corr = {}
            for k in sorted({0, len(traj) // 4, len(traj) // 2, 3 * len(traj) // 4, len(traj) - 1}):
                t, x = traj[k]
                v = value(x, t).float()
                corr[f"t={float(t):.3f}"] = float(torch.corrcoef(torch.stack([v, r]))[0, 1])
        report["value"] = {"cost": cost, "pearson_vs_reward_by_t": corr, "network": net.config}
        log(f"value: cost {cost} corr {corr}")
        try:
            value.save(out / "value_hepg2")
        except ImportError:
            p = out / "value_hepg2"
            p.mkdir(parents=True, exist_ok=True)
            meta = {"network": type(net).__name__, "config": net.config, "time_scale": value.time_scale, **value.meta}
            (p / "value.json").write_text(json.dumps(meta, indent=2, default=float))
            torch.save({k: v.detach().cpu() for k, v in value.state_dict().items()}, p / "value.pt")
    report["total_time_s"] = time.time() - T0
    dump()
    log("done")


if __name__ == "__main__":
    main()
