"""Train the shipped molecule model: a masked-diffusion transformer over SELFIES tokens.

Inputs come from ``scripts/prepare_molecules.py`` (``train/valid/test.npy`` uint8 token ids and
``tokenizer.json``). The model (``svdd.nn.MaskedTransformer``) is trained with
``svdd.nn.train_masked_diffusion`` (MDLM NELBO, log-linear schedule, AdamW, EMA) and saved in
fp16 safetensors with its config and tokenizer. Afterwards the script

- estimates the test-set NELBO (nats per molecule, 4 t-samples per sequence) of the EMA model,
- draws ``--num-samples`` molecules with plain ancestral sampling for each ``--sample-steps``
  (token ids saved as ``samples_s{K}.npy``; validity/FCD/... are computed where RDKit is,
  with ``python -m svdd.domains.molecules.evaluate``).

``--num-steps`` fixes the number of optimiser steps (deterministic given ``--seed``); without it
the script times a few steps and fits as many as ``--time-budget`` allows (the count used is in
``train.json``, so the run can be repeated exactly with ``--num-steps``).

    python scripts/train_molecules.py --device cuda --time-budget 300 --out /tmp/mol
    python scripts/train_molecules.py --device cpu --num-steps 20 --dim 64 --depth 2 --num-samples 64 --out /tmp/m
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from svdd.nn import MaskedTransformer, save_model, train_masked_diffusion  # noqa: E402
from svdd.nn.train import evaluate_nelbo  # noqa: E402
from svdd.process.masked import MaskedProcess  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def calibrate_steps(process, data, batch_size, amp, seconds, n=10):
    """Time ``n`` training steps on a throwaway copy of the model; return steps per second."""
    model = copy.deepcopy(process.model).train()
    proc = MaskedProcess(model, process.seq_len, process.vocab_size, process.mask_id, device=process.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=process.device).manual_seed(123)
    x0 = data[:batch_size].to(process.device)
    for i in range(n + 2):
        if i == 2:
            if process.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.time()
        with torch.autocast(device_type=process.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = proc.nelbo(x0, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if process.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.time() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / ".gpu-data" / "molecules"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--num-steps", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=40_000)
    ap.add_argument("--stop-at-step", type=int, default=None,
                    help="stop after this step (the cosine still spans --num-steps): replays a time-budgeted run")
    ap.add_argument("--time-budget", type=float, default=300.0, help="seconds of training")
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--sample-steps", default="32,64")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    tok_meta = json.loads((data_dir / "tokenizer.json").read_text())
    vocab_size, seq_len = len(tok_meta["tokens"]), tok_meta["max_len"]
    mask_id = vocab_size - 1
    arrays = {k: torch.from_numpy(np.load(data_dir / f"{k}.npy").astype(np.int64)) for k in ("train", "valid", "test")}
    log(f"data: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()) + f"; vocab {vocab_size}; device {device}")

    torch.manual_seed(args.seed)  # parameter initialisation only
    model = MaskedTransformer(vocab_size, seq_len, dim=args.dim, depth=args.depth, heads=args.heads).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    process = MaskedProcess(model, seq_len, vocab_size, mask_id, schedule="loglinear", device=device)

    num_steps = args.num_steps
    rate = None
    if num_steps is None:
        rate = calibrate_steps(process, arrays["train"], args.batch_size, amp, args.time_budget)
        num_steps = int(min(args.max_steps, max(50, 0.85 * rate * args.time_budget)))
        log(f"calibration: {rate:.1f} steps/s -> num_steps {num_steps}")
    log(f"model: {n_params / 1e6:.2f} M parameters; training {num_steps} steps at batch {args.batch_size}")
    t0 = time.time()
    ema, history = train_masked_diffusion(
        process, arrays["train"], num_steps=num_steps, batch_size=args.batch_size, lr=args.lr,
        warmup=min(args.warmup, max(num_steps // 10, 1)), seed=args.seed, valid_data=arrays["valid"][:2000],
        eval_every=max(num_steps // 10, 1), log=log, amp=amp, time_budget_s=args.time_budget * 1.15,
        stop_at_step=args.stop_at_step)
    train_time = time.time() - t0
    steps_done = history[-1]["step"] if history else 0

    model_dir = out / "moses-selfies"
    save_model(ema, model_dir, extra={"schedule": "loglinear", "mask_id": mask_id, "pad_id": 0,
                                      "default_num_steps": 32, "trained_steps": steps_done, "seed": args.seed,
                                      "batch_size": args.batch_size, "lr": args.lr}, half=True)
    shutil.copy(data_dir / "tokenizer.json", model_dir / "tokenizer.json")
    log(f"saved {model_dir} ({(model_dir / 'model.safetensors').stat().st_size / 1e6:.1f} MB) after {train_time:.0f}s")

    # evaluate the saved (fp16-rounded) weights, as users will load them
    from svdd.nn import load_model

    ema = load_model(model_dir, device=device)
    eval_proc = MaskedProcess(ema, seq_len, vocab_size, mask_id, schedule="loglinear", device=device)
    results = {"num_parameters": n_params, "num_steps": num_steps, "steps_done": steps_done,
               "calibrated_steps_per_s": rate, "train_time_s": train_time, "history": history,
               "args": vars(args), "device": str(device),
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    with torch.no_grad():
        t1 = time.time()
        results["test_nelbo_nats_per_molecule"] = evaluate_nelbo(eval_proc, ema, arrays["test"], num_t_samples=4, seed=1)
        results["valid_nelbo_nats_per_molecule"] = evaluate_nelbo(eval_proc, ema, arrays["valid"], num_t_samples=4, seed=2)
        results["num_test"] = int(arrays["test"].shape[0])
        log(f"test NELBO {results['test_nelbo_nats_per_molecule']:.3f} nats/molecule "
            f"({results['test_nelbo_nats_per_molecule'] / seq_len:.4f} per token) in {time.time() - t1:.0f}s")

        import svdd

        zero = lambda x: torch.zeros(x.shape[0], device=x.device)  # noqa: E731 - ancestral only needs a reward for x0
        for k in [int(s) for s in args.sample_steps.split(",") if s]:
            t1 = time.time()
            res = svdd.sample(eval_proc, zero, method="ancestral", num_samples=args.num_samples, num_steps=k,
                              generator=torch.Generator(device=device).manual_seed(args.seed + k),
                              max_batch_size=2048)
            np.save(out / f"samples_s{k}.npy", res.x0.cpu().numpy().astype(np.uint8))
            results[f"sampling_s{k}_wall_time_s"] = time.time() - t1
            log(f"sampled {args.num_samples} molecules with {k} steps in {time.time() - t1:.1f}s")
    (out / "train.json").write_text(json.dumps(results, indent=2))
    log("done")


if __name__ == "__main__":
    main()
