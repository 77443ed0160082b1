"""GPU path on the CPU: bf16 autocast of the denoiser, batches sized to memory (arithmetic and the
CUDA probe on fake memory counters), and step loops that never make the host wait for the
device (counted with a dispatch mode; the same check under CUDA's sync debug mode is marked gpu)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import svdd
from svdd import accelerator
from svdd.accelerator import (PrecisionError, auto_max_batch_size, autocast, batch_size_for_memory, memory_line,
                              resolve_precision, set_precision)
from svdd.algorithms import AlgorithmError
from svdd.cli import main
from svdd.domains import DomainError, get_domain
from svdd.nn.denoisers import MaskedTransformer
from svdd.process import GaussianProcess, MaskedProcess, linear_beta_alphas_cumprod

V, L, MASK = 6, 12, 5


class TinyEps(nn.Module):
    """A small ε-network ``(x (B, D), timestep (B,)) -> ε (B, D)``, called like a diffusers UNet."""

    def __init__(self, dim: int = 4, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x, timestep):
        return self.net(torch.cat([x, timestep.float()[:, None] / 1000], dim=1))


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    return MaskedTransformer(vocab_size=V, seq_len=L, dim=32, depth=2, heads=2).eval()


@pytest.fixture(scope="module")
def eps_model():
    torch.manual_seed(0)
    return TinyEps().eval()


def masked(model, **kw):
    return MaskedProcess(model, L, V, MASK, **kw)


def gaussian(model, **kw):
    return GaussianProcess(model, linear_beta_alphas_cumprod(1000), sample_shape=(4,), **kw)


def token_reward(x0):
    """Cheap, device-side: count of token 1 minus 0.3 × count of token 2."""
    return (x0 == 1).float().sum(-1) - 0.3 * (x0 == 2).float().sum(-1)


def vector_reward(x0):
    return x0.sum(-1)


# -- precision ------------------------------------------------------------------------------------
def test_precision_names_resolve_and_bad_ones_fail():
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert isinstance(autocast("fp32", "cpu"), contextlib.nullcontext)
    with pytest.raises(PrecisionError, match="fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(PrecisionError):
        masked(lambda x, t: x, precision="half")
    with pytest.raises(PrecisionError, match="has no precision option"):
        set_precision(object(), "bf16")
    assert set_precision(object(), "fp32") is not None   # fp32 needs nothing from the process


def test_bf16_masked_transformer_is_close_to_fp32_and_samples_are_valid_tokens(transformer):
    """Tolerances: bf16 keeps 8 significand bits (relative rounding up to 2^-8 ≈ 0.4 % per operand);
    logits of this 2-layer model are O(1) and pass a handful of bf16 matmuls, measured error
    0.01 in logits and 0.002 in probabilities. We allow 0.05 and 0.02: ~5-10x the measurement,
    still far below the O(1) changes a wrong model or a wrong cast would make."""
    p32, p16 = masked(transformer), masked(transformer, precision="bf16")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, MASK, (64, L), generator=g)
    x[torch.rand(64, L, generator=g) < 0.5] = MASK
    with torch.no_grad():
        a, b = p32.predict_x0(x, 0.5), p16.predict_x0(x, 0.5)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max() <= 0.02
    assert not torch.equal(a, b)                       # autocast really ran in bf16
    assert torch.allclose(b.sum(-1), torch.ones(64, L), atol=1e-5) and (b[..., MASK] == 0).all()
    # transition probabilities are still built and normalised in float64
    trans = p16.transition(x, 0.5, 0.25, x0_hat=b)
    assert trans.probs.dtype == torch.float64
    assert torch.allclose(trans.probs.sum(-1), torch.ones(64, L, dtype=torch.float64), atol=1e-12)
    for method, kw in (("ancestral", {}), ("svdd-pm", {"num_candidates": 4, "alpha": 0.5})):
        res = svdd.sample(p16, token_reward, method=method, num_samples=16, num_steps=6,
                          generator=torch.Generator().manual_seed(1), **kw)
        assert res.x0.dtype == torch.long and ((res.x0 >= 0) & (res.x0 < MASK)).all()
        assert torch.isfinite(res.rewards).all()


def test_bf16_gaussian_eps_model_is_close_to_fp32(eps_model):
    """ε outputs are O(0.2): measured bf16 error 0.0015; allowed 0.02. x0 = (x_t − sqrt(1−ᾱ)ε)/sqrt(ᾱ)
    amplifies the ε error by sqrt((1−ᾱ)/ᾱ) (≈ 3.4 at t = 500): allowed 0.1 there."""
    p32, p16 = gaussian(eps_model), gaussian(eps_model, precision="bf16")
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (1000.0, 500.0, 50.0):
            ea, eb = p32.model_output(x, t), p16.model_output(x, t)
            assert eb.dtype == torch.float32 and (ea - eb).abs().max() <= 0.02 and not torch.equal(ea, eb)
        assert (p32.predict_x0(x, 500.0) - p16.predict_x0(x, 500.0)).abs().max() <= 0.1
    res = svdd.sample(p16, vector_reward, method="svdd-pm", num_samples=8, num_steps=10, num_candidates=3,
                      generator=torch.Generator().manual_seed(0))
    assert res.x0.dtype == torch.float32 and torch.isfinite(res.x0).all()


def test_precision_leaves_python_denoisers_unchanged():
    from svdd.testing import MaskedToy

    toy = MaskedToy()
    a = svdd.sample(toy.process(), toy.reward, method="svdd-pm", num_samples=50, num_steps=4,
                    generator=torch.Generator().manual_seed(0))
    p = toy.process()
    p.precision = "bf16"
    b = svdd.sample(p, toy.reward, method="svdd-pm", num_samples=50, num_steps=4,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.x0, b.x0)


def test_domain_load_process_sets_precision():
    domain = get_domain("toy-masked")
    assert domain.load_process().precision == "fp32"
    assert domain.load_process(precision="bf16").precision == "bf16"
    with pytest.raises(DomainError, match="precision must be one of"):
        domain.load_process(precision="int8")


# -- batch sized to memory ------------------------------------------------------------------------
def test_batch_size_arithmetic_on_fake_numbers():
    # 10 GB free, 1 GB fixed, 1 MB per row, safety 0.8: (8 GB - 1 GB) / 1 MB = 7000 rows
    assert batch_size_for_memory(10e9, 1e6, fixed_bytes=1e9, safety=0.8) == 7000
    assert batch_size_for_memory(10e9, 1e6, fixed_bytes=1e9, cap=512) == 512
    assert batch_size_for_memory(1e3, 1e6) == 1                       # never below one row
    assert memory_line((2, 8), (1e9 + 2e6, 1e9 + 8e6)) == pytest.approx((1e6, 1e9))
    assert memory_line((2, 8), (5e6, 5e6)) == pytest.approx((5e6 / 8, 0.0))   # no growth: conservative
    with pytest.raises(ValueError):
        batch_size_for_memory(1e9, 0.0)
    with pytest.raises(ValueError):
        memory_line((8, 2), (1.0, 2.0))


def test_auto_batch_size_on_cpu_means_no_chunking_unless_capped():
    x = torch.zeros(100, 3)
    assert auto_max_batch_size(lambda x: x, x) is None
    assert auto_max_batch_size(lambda x: x, x, cap=16) == 16


def test_cuda_probe_on_fake_memory_counters(monkeypatch):
    """The probe path with torch.cuda's counters replaced by a fake allocator: a forward on n rows
    peaks at 300 MB + n · 2 MB above what was allocated; 4 GB free + 1 GB cached unused."""
    state = {"allocated": 500e6, "peak": 500e6}

    def forward(x):
        state["peak"] = max(state["peak"], state["allocated"] + 300e6 + x.shape[0] * 2e6)
        return x

    fake = {"synchronize": lambda device=None: None,
            "memory_allocated": lambda device=None: state["allocated"],
            "reset_peak_memory_stats": lambda device=None: state.update(peak=state["allocated"]),
            "max_memory_allocated": lambda device=None: state["peak"],
            "mem_get_info": lambda device=None: (4e9, 80e9),
            "memory_reserved": lambda device=None: state["allocated"] + 1e9}
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    rows = accelerator._cuda_probe(forward, torch.zeros(64, 3), safety=0.8, cap=None, probe_rows=(2, 8))
    assert rows == int((0.8 * 5e9 - 300e6) // 2e6)   # 1850
    assert accelerator._cuda_probe(forward, torch.zeros(64, 3), safety=0.8, cap=100, probe_rows=(2, 8)) == 100
    # a first call with fewer rows than the probes (one sample) is probed at the same sizes
    assert accelerator._cuda_probe(forward, torch.zeros(1, 3), safety=0.8, cap=None, probe_rows=(2, 8)) == rows


def test_max_batch_size_auto_is_resolved_once_and_chunks(monkeypatch, transformer):
    calls = []
    monkeypatch.setattr(svdd.algorithms._common, "auto_max_batch_size",
                        lambda forward, x: calls.append(x.shape[0]) or 5)
    sizes = []

    def spy(x, t):
        sizes.append(x.shape[0])
        return transformer(x, t)

    kw = dict(method="svdd-pm", num_samples=6, num_steps=3, num_candidates=3, deduplicate=False)
    auto = svdd.sample(masked(spy), token_reward, max_batch_size="auto",
                       generator=torch.Generator().manual_seed(0), **kw)
    assert len(calls) == 1 and max(sizes) == 5
    fixed = svdd.sample(masked(transformer), token_reward, max_batch_size=5,
                        generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(auto.x0, fixed.x0) and auto.info["nfe"] == fixed.info["nfe"]


def test_max_batch_size_auto_on_cpu_is_identical_to_no_chunking(transformer):
    kw = dict(method="svdd-pm", num_samples=8, num_steps=4, num_candidates=3, alpha=0.5)
    a = svdd.sample(masked(transformer), token_reward, generator=torch.Generator().manual_seed(0), **kw)
    b = svdd.sample(masked(transformer), token_reward, max_batch_size="auto",
                    generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.rewards, b.rewards)
    with pytest.raises(AlgorithmError, match="max_batch_size"):
        svdd.sample(masked(transformer), token_reward, max_batch_size="big", **kw)


# -- no host round-trips in the step loops ------------------------------------------------------
# (aten._assert_async, the masked time check, is not here: it is asynchronous on CUDA by design)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "unique_dim", "_unique2", "unique_consecutive", "masked_select"}


class HostSyncCounter(TorchDispatchMode):
    """Records, while ``active``, every op that makes the host wait for the device: reading a value
    (``.item()``, ``bool()``, ``float()``, ``int()``, indexing a list with a tensor all dispatch
    ``aten._local_scalar_dense``), ops with a data-dependent output size (``unique``, ``nonzero``,
    ``masked_select``), and the Python-level copies to the host that do not dispatch on the CPU
    (``.tolist()``, ``.cpu()``, ``.numpy()``, patched by the fixture). It cannot see a plain
    ``.to(device)`` copy (a no-op on the CPU); the gpu-marked test below covers that."""

    def __init__(self):
        super().__init__()
        self.active = False
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active and func.overloadpacket.__name__ in SYNC_OPS:
            self.calls.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def paused(self):
        was, self.active = self.active, False
        try:
            yield
        finally:
            self.active = was


@pytest.fixture
def counter(monkeypatch):
    c = HostSyncCounter()
    for name in ("tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def patched(self, *a, _original=original, _name=name, **k):
            if c.active:
                c.calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, patched)
    return c


class LoopScope:
    """Switches counting on when the run's ``prior()`` returns (the step loop starts; the time
    grid's one host copy is made before it) and off at the last step's callback; the user's
    reward function runs uncounted (host rewards may sync)."""

    def __init__(self, process, counter, num_steps: int):
        self.process, self.counter, self.num_steps = process, counter, num_steps

    def __getattr__(self, name):
        return getattr(self.process, name)

    def prior(self, *a, **k):
        x = self.process.prior(*a, **k)
        self.counter.active = True
        return x

    def callback(self, info):
        if info.step == self.num_steps - 1:
            self.counter.active = False

    def reward(self, fn):
        def reward_fn(x0):
            with self.counter.paused():
                return fn(x0)
        return reward_fn


def count_syncs(counter, process, reward, method, num_steps, **kw):
    scope = LoopScope(process, counter, num_steps)
    with counter:
        res = svdd.sample(scope, scope.reward(reward), method=method, num_samples=6, num_steps=num_steps,
                          callback=scope.callback, **kw)
    assert not counter.active
    return res, list(counter.calls)


LOOPS = [("ancestral", {}), ("best-of-n", {"num_candidates": 3}),
         ("svdd-pm", {"num_candidates": 4, "deduplicate": False}),
         ("svdd-pm", {"num_candidates": 4, "alpha": 0.5, "deduplicate": False}),
         ("svdd-r", {"num_candidates": 4, "alpha": 0.5, "alpha_resample": 1.0, "replace_fraction": 0.2,
                     "deduplicate": False})]


@pytest.mark.parametrize("method, kw", LOOPS)
def test_masked_step_loops_make_no_host_round_trips(counter, transformer, method, kw):
    res, calls = count_syncs(counter, masked(transformer), token_reward, method, 5,
                             generator=torch.Generator().manual_seed(0), **kw)
    assert calls == []
    assert res.x0.shape == (6, L)


@pytest.mark.parametrize("method, kw", LOOPS[:4])
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_gaussian_step_loops_make_no_host_round_trips(counter, eps_model, method, kw, eta):
    kw = {k: v for k, v in kw.items() if k != "deduplicate"}
    _, calls = count_syncs(counter, gaussian(eps_model, eta=eta), vector_reward, method, 5,
                           generator=torch.Generator().manual_seed(0), **kw)
    assert calls == []


def test_deduplication_is_the_one_sync_per_step(counter, transformer):
    """deduplicate=True (the masked default) calls torch.unique once per step: its output size
    depends on the data, so the host must wait. Documented; everything else stays sync-free."""
    _, calls = count_syncs(counter, masked(transformer), token_reward, "svdd-pm", 5, num_candidates=4,
                           generator=torch.Generator().manual_seed(0))
    assert calls == ["unique_dim"] * 5


def test_counter_sees_host_reads(counter, transformer):
    """The check can fail: a denoiser wrapper that reads a value and copies to the host is caught."""
    def syncing(x, t):
        assert bool((t >= 0).all()) and isinstance(t.tolist(), list)
        return transformer(x, t)

    _, calls = count_syncs(counter, masked(syncing), token_reward, "ancestral", 4,
                           generator=torch.Generator().manual_seed(0))
    assert calls.count("_local_scalar_dense") == 4 and calls.count("tolist") == 4


def test_masked_time_check_still_raises_on_the_cpu(transformer):
    """The check moved to torch._assert_async (no host read on a GPU) and is still a ValueError here."""
    x = torch.full((2, L), MASK)
    with pytest.raises(ValueError, match="noisier"):
        masked(transformer).transition(x, 0.25, 0.5)


def test_per_step_records_become_python_floats_after_the_loop(transformer):
    res = svdd.sample(masked(transformer), token_reward, method="svdd-pm", num_samples=4, num_steps=3,
                      num_candidates=2, generator=torch.Generator().manual_seed(0))
    assert len(res.info["value_mean"]) == 3 and all(type(v) is float for v in res.info["value_mean"])


def test_reward_counts_invalid_outputs_without_a_host_read_per_call():
    from svdd.rewards.base import as_reward

    r = as_reward(lambda x: torch.where(x[:, 0] > 0, torch.nan, 1.0))
    out = r(torch.tensor([[1.0], [-1.0], [2.0]]))
    assert out.tolist() == [0.0, 1.0, 0.0] and r._invalid.pending is not None
    r(torch.tensor([[3.0]]))
    assert r.invalid == 3 and r._invalid.pending is None and r.counters()["reward_invalid"] == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_loops_do_not_sync_under_cuda_sync_debug_mode(transformer, eps_model):  # pragma: no cover
    """On a GPU, torch.cuda.set_sync_debug_mode("error") raises at any synchronising call
    (including host-to-device copies from pageable memory) inside the loop scope."""

    class CudaScope:
        active = False
        calls: list = []

        @contextlib.contextmanager
        def paused(self):
            torch.cuda.set_sync_debug_mode("default")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("error" if self.active else "default")

        def __setattr__(self, name, value):
            object.__setattr__(self, name, value)
            if name == "active":
                torch.cuda.set_sync_debug_mode("error" if value else "default")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            torch.cuda.set_sync_debug_mode("default")

    cases = [(masked(transformer.cuda()), token_reward), (gaussian(eps_model.cuda()), vector_reward)]
    try:
        for process, reward in cases:
            for method, kw in LOOPS:
                scope = CudaScope()
                kw = dict(kw) if process.kind == "masked" else {k: v for k, v in kw.items() if k != "deduplicate"}
                count_syncs(scope, process, reward, method, 4, generator=torch.Generator("cuda").manual_seed(0), **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        transformer.cpu()
        eps_model.cpu()


# -- CLI --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--precision", "fp16"], "--precision must be one of fp32, bf16, auto"),
    (["--max-batch-size", "0"], "--max-batch-size must be a positive integer or 'auto'"),
    (["--max-batch-size", "lots"], "--max-batch-size must be a positive integer or 'auto'"),
])
def test_cli_bad_precision_or_batch_size_is_a_one_line_error(tmp_path, capsys, argv, needle):
    base = ["sample", "--domain", "toy-masked", "--num-samples", "4", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svdd: error:") and needle in err[0]
    assert not (tmp_path / "r").exists()


def test_cli_runs_with_bf16_and_auto_batch_size(tmp_path):
    out = tmp_path / "r"
    assert main(["sample", "--domain", "toy-masked", "--num-samples", "8", "--num-candidates", "2", "--precision",
                 "bf16", "--max-batch-size", "auto", "--no-baseline", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["precision"] == "bf16" and config["max_batch_size"] == "auto"
