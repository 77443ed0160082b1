"""Regulatory DNA: design 200-bp HepG2-specific enhancers (DHS) with a shipped masked-diffusion
model and a pair of independently trained activity oracles.

- model ``dhs-mdlm``: absorbing-state diffusion over {A, C, G, T} (+ mask) at length 200, MDLM
  log-linear schedule, dilated-CNN denoiser trained on 39,254 ENCODE DHS sequences of four cell
  types (training chromosomes); 128 sampling steps by default, like the SVDD paper.
- rewards ``hepg2`` (guidance oracle, odd chromosomes), ``hepg2-eval`` (evaluation oracle, even
  chromosomes), ``gc[:target]``, ``motif:<TF>`` (JASPAR 2024).
- per-sample columns: GC, both oracles, hits of the HepG2 factors; set metrics: diversity,
  ELBO, k-mer spectrum distance and motif enrichment with real-sequence baselines; FASTA output.

See docs/dna.md for the data, the training runs and measured numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..base import Domain, DomainError
from . import data, models
from .data import ASSETS, MASK_ID, SEQ_LEN, VOCAB_SIZE, decode, encode
from .rewards import REWARDS, OracleReward, load_oracle, oracle_available

MODEL_DIRS = {"dhs-mdlm": ASSETS / "dhs-mdlm"}
VALUE_DIRS = {"hepg2": ASSETS / "value_hepg2"}
DEFAULT_NUM_STEPS = 128


def load_pretrained(name: str = "dhs-mdlm", device: str | torch.device = "cpu", **_):
    """The shipped masked-diffusion process (``MaskedProcess``) on ``device``."""
    from ...nn import load_model
    from ...process.masked import MaskedProcess

    path = MODEL_DIRS[name]
    if not (path / "model.safetensors").exists():
        raise DomainError(f"the DNA model {name!r} is not installed at {path}; train it with "
                          f"`python scripts/prepare_dna.py && python scripts/train_dna.py` (docs/dna.md)")
    model = load_model(path, device=device)
    return MaskedProcess(model, SEQ_LEN, VOCAB_SIZE, MASK_ID, "loglinear", device=device)


def random_process(device: str | torch.device = "cpu", seed: int = 0, **model_kwargs):
    """An untrained tiny process with the real tokenisation, for tests and dry runs."""
    from ...process.masked import MaskedProcess

    torch.manual_seed(seed)
    kw = dict(dim=16, dilations=(1, 2)) | model_kwargs
    model = models.DilatedConvDenoiser(**kw).to(device).eval()
    return MaskedProcess(model, SEQ_LEN, VOCAB_SIZE, MASK_ID, "loglinear", device=device)


def _oracle_scores(x0: Tensor) -> dict[str, list]:
    cols = {}
    for which, col in (("guidance", "hepg2"), ("evaluation", "hepg2_eval")):
        if oracle_available(which):
            with torch.no_grad():
                cols[col] = OracleReward(load_oracle(which), name=col)(x0.cpu()).tolist()
    return cols


def sample_columns(x0: Tensor, decoded: list[str], process=None) -> dict[str, list]:
    """Per-sample columns: GC fraction, both oracles' HepG2 log-odds, HepG2-factor motif hits."""
    x0 = x0.cpu()
    p = data.one_hot(x0)
    cols: dict[str, list] = {"gc": [round(v, 4) for v in ((p[..., 1] + p[..., 2]).mean(dim=1)).tolist()]}
    cols.update({k: [round(v, 4) for v in vals] for k, vals in _oracle_scores(x0).items()})
    try:
        from .motifs import motif_counts

        cols.update({f"motif_{f}": c.tolist() for f, c in motif_counts(x0).items()})
    except DomainError:
        pass  # pyjaspar missing: the metrics report it
    return cols


def compute_metrics(x0: Tensor, decoded: Optional[list[str]] = None, process=None, *,
                    likelihood_samples: int = 4) -> dict:
    """Set metrics with real baselines (see ``svdd.domains.dna.metrics``)."""
    from . import metrics as M

    x0 = x0.cpu()
    out: dict = {"num_sequences": int(len(x0)), "diversity": M.diversity(x0), "gc_mean": float(data.one_hot(x0)[..., 1:3].sum(-1).mean())}
    real, cell = M.real_subset()
    hep = real[cell == data.HEPG2][: max(len(x0), 2)]
    out["diversity_real_hepg2"] = M.diversity(hep)
    if process is not None and getattr(process, "kind", None) == "masked":
        out.update(M.quantile_summary(M.log_likelihood(process, x0, num_t_samples=likelihood_samples), "log_likelihood"))
    for col, vals in _oracle_scores(x0).items():
        out.update(M.quantile_summary(torch.tensor(vals), col))
    out.update(M.kmer_metrics(x0))
    try:
        out.update(M.motif_metrics(x0))
    except DomainError as err:
        out["motif_note"] = str(err)
    return out


def write_fasta(out_dir: Path, x0: Tensor, decoded: list[str], rewards: Tensor, info: Optional[dict] = None) -> list[Path]:
    """``samples.fasta``: ``>sample_00000 <reward>=… hepg2_eval=…`` (``svdd.domains.fasta``: the
    guidance reward under its name, then the evaluation oracle's score)."""
    from ..fasta import write_fasta_file

    info = info or {}
    scores = {info.get("reward", "reward"): [float(v) for v in torch.as_tensor(rewards).reshape(-1).tolist()]}
    evaluation = info.get("evaluation")
    if evaluation is None:
        evaluation = {k: v for k, v in _oracle_scores(x0.cpu()).items() if k.endswith("_eval")}
    scores.update(evaluation)
    return [write_fasta_file(Path(out_dir) / "samples.fasta", decoded, scores)]


def read_fasta(path: str | Path) -> list[str]:
    """Sequences of a FASTA file (e.g. to score or compare designed enhancers)."""
    seqs, cur = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append("".join(cur))
            cur = []
        elif line.strip():
            cur.append(line.strip())
    if cur:
        seqs.append("".join(cur))
    return seqs


def value_network(process=None) -> torch.nn.Module:
    """The SVDD-MC value network for DNA (time-conditioned dilated CNN, ``(x_t, t) -> (B,)``)."""
    return models.ValueNetwork()


def _register_value_network() -> None:
    try:
        from ...values import register_value_network
    except ImportError:  # pragma: no cover - older svdd without learned values
        return
    register_value_network(models.ValueNetwork)


_register_value_network()

DOMAIN = Domain(
    name="dna",
    description="200-bp regulatory DNA (ENCODE DHS), masked diffusion; HepG2 enhancer design with held-out oracle",
    models={"dhs-mdlm": lambda device="cpu", **kw: load_pretrained("dhs-mdlm", device, **kw)},
    default_model="dhs-mdlm",
    rewards=REWARDS,
    default_reward="hepg2",
    default_num_steps=DEFAULT_NUM_STEPS,
    decode=decode,
    sample_columns=sample_columns,
    metrics=compute_metrics,
    write_files=write_fasta,
    sample_column="sequence",
    extra={"value_network": value_network, "values": VALUE_DIRS, "pyproject_extra": "dna"},
)

__all__ = ["DOMAIN", "load_pretrained", "random_process", "encode", "decode", "compute_metrics", "sample_columns",
           "write_fasta", "read_fasta", "value_network"]
