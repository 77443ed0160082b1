"""Sampling throughput against raw denoiser throughput (issues 6 and 8, GPU path).

For each shipped masked model (DNA ``dhs-mdlm``, molecules ``moses-selfies``) and a reward cheap
enough that the denoiser dominates (DNA: the domain's GC fraction; molecules: a token-count
score defined here, so RDKit is not timed), at ``B`` final samples and ``M`` candidates:

(a) raw forward: rows/s of ``process.predict_x0`` on ``B·M`` half-masked rows at t = 0.5 (the
    rows one step of either sampler sends to the denoiser), no sampling;
(b) ancestral sampling of ``B·M`` sequences: sequences/s (candidate throughput) and nfe/s;
(c) SVDD-PM with ``num_candidates = M`` producing ``B`` samples: final samples/s, candidate
    throughput ``B·M``/s and nfe/s; once as the library runs it (identical children deduplicated,
    counted once in nfe) and once with ``deduplicate=False`` (every call has the B·M rows of (a)).

Flow transformers (issue 15): ``sd3`` (``SD3Transformer2DModel``) and ``flux``
(``FluxTransformer2DModel``, packed latents) of a small random config, through
``svdd.from_diffusers(model, FlowMatchEulerDiscreteScheduler(...))`` with prompt embeddings and
no VAE (the reward reads the latents: their mean, so the denoiser dominates), eta = 1. For them
(a) is ``predict_x0`` on ``B·M`` N(0, I) latents at σ = 0.5, (b) and (c) as above (a Gaussian
kernel's children always differ, so dedup changes nothing). ``--flow-size`` scales the tiny
config up (``small``: CPU; ``large``: a GPU check; neither is SD3- or Flux-sized).

Reported: SVDD-PM candidate throughput ÷ ancestral throughput (issue 6 target ≥ 0.9) and
SVDD-PM nfe/s ÷ raw forward rows/s (issue 8 target ≥ 0.85 with a cheap reward). Repeats are
interleaved across (a), (b), (c) so a noisy shared machine slows all three alike; medians are
reported, and every timing, the load average and the machine go to ``--out``.

    python benchmarks/throughput.py --device cpu --threads 1 --out benchmarks/results/throughput/cpu.json
    python benchmarks/throughput.py --device cuda --batch-size 64 --num-steps 128 --precision auto \\
        --max-batch-size auto --out runs/throughput/cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import svdd
from svdd.accelerator import auto_max_batch_size, resolve_precision
from svdd.domains import get_domain

from reward_throughput import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

DOMAINS = ("dna", "molecules")
FLOWS = ("sd3", "flux")
# random flow transformers: (layers, heads, head dim, latent side); "large" only makes sense on a GPU
FLOW_SIZES = {"small": (1, 2, 16, 16), "large": (8, 8, 64, 64)}
FLOW_CLASSES = {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel"}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


class TokenCountReward:
    """Cheap molecules reward on token ids, computed on the samples' device: the fraction of
    positions holding token 1 minus half the fraction holding token 2 (no decoding, no RDKit)."""

    name = "token-count"

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = x0.long()
        return (x0 == 1).float().mean(-1) - 0.5 * (x0 == 2).float().mean(-1)


class LatentMean:
    """Cheap latent reward for the flow cases: the mean latent value per sample."""

    name = "latent-mean"

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.float().flatten(1).mean(-1)


def load_flow(name: str, device: str, precision: str, size: str = "small"):
    """A random SD3 / Flux transformer + FlowMatch scheduler as an svdd process (eta = 1)."""
    import diffusers

    layers, heads, head_dim, side = FLOW_SIZES[size]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "sd3":
        model = diffusers.SD3Transformer2DModel(
            sample_size=side, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=head_dim,
            num_attention_heads=heads, caption_projection_dim=heads * head_dim, joint_attention_dim=64,
            pooled_projection_dim=64, out_channels=4).eval()
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        extra = {"encoder_hidden_states": torch.randn(1, 8, 64, generator=g),
                 "pooled_projections": torch.randn(1, 64, generator=g)}
        shape = None
    else:
        model = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=4 * 4, num_layers=layers, num_single_layers=layers,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=64,
            pooled_projection_dim=64, axes_dims_rope=[head_dim // 4, head_dim // 4, head_dim // 2],
            guidance_embeds=True).eval()
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
        extra = {"encoder_hidden_states": torch.randn(1, 8, 64, generator=g),
                 "pooled_projections": torch.randn(1, 64, generator=g), "guidance_scale": 3.5}
        shape = (4, side, side)
    model = model.to(device)
    process = svdd.from_diffusers(model, scheduler, device=device, eta=1.0,
                                  **({"sample_shape": shape} if shape else {}), **extra)
    if precision != "fp32":
        from svdd.accelerator import set_precision

        set_precision(process, precision)
    return process, LatentMean()


def load(domain: str, device: str, precision: str, flow_size: str = "small"):
    if domain in FLOWS:
        return load_flow(domain, device, precision, flow_size)
    process = get_domain(domain).load_process(device=device, precision=precision)
    reward = get_domain("dna").make_reward("gc") if domain == "dna" else TokenCountReward()
    return process, reward


def half_masked(process, rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, process.mask_id, (rows, process.seq_len), generator=g)
    masked = torch.rand(rows, process.seq_len, generator=g) < 0.5
    return torch.where(masked, torch.full_like(x0, process.mask_id), x0).to(process.device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def measurements(process, reward, args) -> dict[str, Callable[[], dict]]:
    """The timed measurements; each returns the counts its throughput is made of."""
    B, M, K = args.batch_size, args.num_candidates, args.num_steps
    if getattr(process, "kind", None) == "gaussian":   # flow: N(0, I) latents at σ = 0.5
        x = process.prior(B * M, generator=torch.Generator(device=process.device).manual_seed(0)) \
            if hasattr(process, "prior") else torch.randn(B * M, *process.sample_shape, device=process.device)
        t = torch.tensor(0.5 * process.num_train_timesteps, dtype=torch.float64, device=process.device)
    else:
        x = half_masked(process, B * M)
        t = torch.tensor(0.5, dtype=torch.float64, device=process.device)

    def generator():
        return torch.Generator(device=process.device).manual_seed(args.seed)

    def forward(rows: torch.Tensor) -> torch.Tensor:
        return process.predict_x0(rows, t)

    cap = args.max_batch_size           # the samplers' chunking, applied to the raw forward too
    if cap == "auto":
        cap = auto_max_batch_size(forward, x)
    cap = cap or x.shape[0]

    def raw_forward():
        with torch.no_grad():
            for _ in range(args.forward_calls):
                for i in range(0, x.shape[0], cap):
                    forward(x[i:i + cap])
        return {"rows": B * M * args.forward_calls}

    def ancestral():
        res = svdd.sample(process, reward, method="ancestral", num_samples=B * M, num_steps=K,
                          generator=generator(), max_batch_size=args.max_batch_size)
        return {"sequences": B * M, "nfe": res.info["nfe"]}

    def svdd_pm(deduplicate: bool):
        res = svdd.sample(process, reward, method="svdd-pm", num_samples=B, num_steps=K, num_candidates=M,
                          generator=generator(), max_batch_size=args.max_batch_size, deduplicate=deduplicate)
        return {"final": B, "candidates": B * M, "nfe": res.info["nfe"]}

    return {"raw_forward": raw_forward, "ancestral": ancestral, "svdd_pm": lambda: svdd_pm(True),
            "svdd_pm_no_dedup": lambda: svdd_pm(False)}


def run_domain(domain: str, args) -> dict:
    process, reward = load(domain, args.device, args.precision, getattr(args, "flow_size", "small"))
    tasks = measurements(process, reward, args)
    for fn in tasks.values():          # warm-up: allocator, kernels, autocast caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in tasks}
    counts: dict[str, dict] = {}
    load_avg = []
    for _ in range(args.repeats):      # interleaved: all measurements see the same machine
        for name, fn in tasks.items():
            load_avg.append(os.getloadavg()[0])
            dt, counts[name] = timed(fn, args.device)
            times[name].append(dt)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    raw_rows_s = counts["raw_forward"]["rows"] / med["raw_forward"]
    anc = counts["ancestral"]
    result = {
        "model": (f"random {FLOW_CLASSES[domain]} ({args.flow_size})" if domain in FLOWS
                  else get_domain(domain).default_model),
        "reward": getattr(reward, "name", type(reward).__name__),
        **({"sample_shape": list(process.sample_shape)} if domain in FLOWS
           else {"seq_len": process.seq_len, "vocab_size": process.vocab_size}),
        "parameters": sum(p.numel() for p in process.model.parameters()),
        "raw_forward": {"rows_per_call": args.batch_size * args.num_candidates, "calls": args.forward_calls,
                        "median_s": med["raw_forward"], "rows_per_s": raw_rows_s},
        "ancestral": {"sequences": anc["sequences"], "nfe": anc["nfe"], "median_s": med["ancestral"],
                      "sequences_per_s": anc["sequences"] / med["ancestral"],
                      "nfe_per_s": anc["nfe"] / med["ancestral"]},
        "times_s": times,
        "load_average_1min": load_avg,
        "ratios": {"ancestral_nfe_per_s_over_raw_rows_per_s": anc["nfe"] / med["ancestral"] / raw_rows_s},
    }
    for name in ("svdd_pm", "svdd_pm_no_dedup"):
        pm, dt = counts[name], med[name]
        result[name] = {"final_samples": pm["final"], "num_candidates": args.num_candidates, "nfe": pm["nfe"],
                        "median_s": dt, "final_per_s": pm["final"] / dt, "candidates_per_s": pm["candidates"] / dt,
                        "nfe_per_s": pm["nfe"] / dt, "deduplicate": name == "svdd_pm"}
        ancestral_rate = result["ancestral"]["sequences_per_s"]
        result["ratios"][f"{name}_candidates_over_ancestral"] = pm["candidates"] / dt / ancestral_rate
        result["ratios"][f"{name}_nfe_per_s_over_raw_rows_per_s"] = pm["nfe"] / dt / raw_rows_s
    return result


def parse_max_batch_size(text: str | None):
    return None if text is None else (text if text == "auto" else int(text))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS + FLOWS,
                   help="masked domains and/or the flow transformers sd3, flux")
    p.add_argument("--flow-size", default="small", choices=sorted(FLOW_SIZES), help="random flow transformer size")
    p.add_argument("--batch-size", type=int, default=16, help="B: final samples of SVDD-PM")
    p.add_argument("--num-candidates", type=int, default=10, help="M")
    p.add_argument("--num-steps", type=int, default=16, help="K (small on the CPU)")
    p.add_argument("--forward-calls", type=int, default=4, help="raw forward calls per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats (median reported)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    p.add_argument("--max-batch-size", default=None, help="N or auto (rows per denoiser call)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    args.max_batch_size = parse_max_batch_size(args.max_batch_size)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    torch.set_num_threads(args.threads)
    started = time.time()
    meta = {
        "machine": f"{cpu_model()}, os.cpu_count() = {os.cpu_count()}", "device": args.device,
        "device_name": device_name(args.device), "torch": torch.__version__, "svdd": svdd.__version__,
        "torch_threads": torch.get_num_threads(), "precision": args.precision,
        "resolved_precision": resolve_precision(args.precision, args.device),
        "batch_size": args.batch_size, "num_candidates": args.num_candidates, "num_steps": args.num_steps,
        "rows_per_denoiser_call": args.batch_size * args.num_candidates, "max_batch_size": args.max_batch_size,
        "repeats": args.repeats, "load_average_before": list(os.getloadavg()),
    }
    results = {"meta": meta, "domains": {}}
    for domain in args.domains:
        results["domains"][domain] = run_domain(domain, args)
    meta["load_average_after"] = list(os.getloadavg())
    meta["wall_time_s"] = time.time() - started
    print(f"{meta['device_name']} ({args.device}, {meta['resolved_precision']}, {meta['torch_threads']} threads), "
          f"B = {args.batch_size}, M = {args.num_candidates}, K = {args.num_steps}")
    print(f"{'domain':<10} {'svdd-pm':<9} {'raw rows/s':>11} {'anc seq/s':>10} {'pm cand/s':>10} {'pm nfe/s':>9} "
          f"{'cand ratio':>11} {'nfe/raw':>8}")
    for domain, r in results["domains"].items():
        for name in ("svdd_pm", "svdd_pm_no_dedup"):
            print(f"{domain:<10} {'dedup' if r[name]['deduplicate'] else 'no dedup':<9} "
                  f"{r['raw_forward']['rows_per_s']:>11.1f} {r['ancestral']['sequences_per_s']:>10.2f} "
                  f"{r[name]['candidates_per_s']:>10.2f} {r[name]['nfe_per_s']:>9.1f} "
                  f"{r['ratios'][name + '_candidates_over_ancestral']:>11.3f} "
                  f"{r['ratios'][name + '_nfe_per_s_over_raw_rows_per_s']:>8.3f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
