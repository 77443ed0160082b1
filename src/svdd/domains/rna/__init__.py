"""RNA domain: design 50-nt 5′ UTRs with high mean ribosome load (the SVDD paper's MRL task).

Models ``utr-random`` / ``utr-genomic`` (masked diffusion, ``models.py``), rewards ``mrl``,
``mrl-eval``, ``stability`` (``rewards.py``; the Optimus 5-Prime port is in ``oracle.py``),
metrics ELBO, diversity, GC, uAUG count, MFE (``metrics.py``), FASTA with U or T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import Tensor

from ..base import Domain, DomainError
from . import metrics as _metrics
from .models import ASSETS, MODEL_DESCRIPTIONS, MODEL_NAMES, available_models, load_utr_process
from .oracle import ENV_VAR, Optimus5Prime, load_optimus, mrl_reward
from .rewards import REWARDS
from .tokens import ALPHABET, MASK_ID, SEQ_LEN, VOCAB_SIZE, decode, encode, one_hot


def _decode(x0: Tensor) -> list[str]:
    return decode(x0, rna=True)


def _sample_columns(x0: Tensor, decoded: list[str], process=None, oracle_dir: Optional[str] = None,
                    **_options) -> dict[str, list]:
    """Per-sample GC, uAUG count, MFE and, when the predictors are reachable (``oracle_dir=`` or
    ``$SVDD_UTR_ORACLE_DIR``), the evaluation oracle's MRL ``mrl_eval``."""
    cols = {"gc_content": [round(v, 4) for v in _metrics.gc_content(x0).tolist()],
            "uaug_count": _metrics.uaug_count(x0).tolist()}
    try:
        cols["mfe"] = [round(v, 2) for v in _metrics.mfe(x0).tolist()]
    except DomainError:
        pass
    try:
        cols["mrl_eval"] = [round(v, 4) for v in mrl_reward("mrl-eval", oracle_dir)(x0.long().cpu()).tolist()]
    except DomainError:
        pass
    return cols


def _set_metrics(x0: Tensor, decoded: list[str], process=None, **_options) -> dict:
    extra = {}
    base = getattr(process, "process", process)
    if "utr-genomic" in available_models() and getattr(base, "model_name", None) != "utr-genomic":
        # naturalness under the DHS prior too, whatever model sampled
        extra["genomic"] = load_utr_process("utr-genomic", device=str(getattr(base, "device", "cpu")))
    return _metrics.sequence_metrics(x0.long(), process, extra_processes=extra)


def write_fasta(path: Path, sequences: list[str], rewards: Optional[Tensor] = None, alphabet: str = "U", *,
                reward_name: str = "reward", evaluation: Optional[dict] = None) -> Path:
    """Write ``sequences`` to FASTA with U (``alphabet="U"``, RNA) or T (``"T"``, DNA); headers
    ``>sample_00000 <reward_name>=… mrl_eval=…`` as every sequence domain (``svdd.domains.fasta``)."""
    from ..fasta import write_fasta_file

    alphabet = alphabet.upper()
    if alphabet not in ("U", "T"):
        raise DomainError(f"FASTA alphabet must be 'U' (RNA) or 'T' (DNA), got {alphabet!r}")
    seqs = [s.upper().replace("T", "U") if alphabet == "U" else s.upper().replace("U", "T") for s in sequences]
    scores = {} if rewards is None else {reward_name: [float(v) for v in rewards.reshape(-1).tolist()]}
    scores.update(evaluation or {})
    return write_fasta_file(Path(path), seqs, scores)


def _write_files(out_dir: Path, x0: Tensor, decoded: list[str], rewards: Tensor, info: dict,
                 alphabet: Optional[str] = None, **_options) -> list[Path]:
    info = info or {}
    alphabet = alphabet or info.get("fasta_alphabet", "U")
    return [write_fasta(Path(out_dir) / "samples.fasta", decoded, rewards, alphabet=alphabet,
                        reward_name=info.get("reward", "reward"), evaluation=info.get("evaluation"))]


def _value_network(process):
    from .value import value_network  # registers UTRValueNet with svdd.values.learned

    return value_network(process)


def _register_value_network() -> None:
    try:
        from . import value  # noqa: F401  (so load_value can read a saved UTRValueNet)
    except ImportError:  # svdd.values.learned missing in a partial install
        pass


_register_value_network()


def _model_loader(name: str):
    def load(device: str = "cpu", **_options):
        return load_utr_process(name, device=device)
    load.__doc__ = MODEL_DESCRIPTIONS[name]
    return load


DOMAIN = Domain(
    name="rna",
    description="50-nt 5' UTRs with high mean ribosome load (Optimus 5-Prime predictors, Sample et al. 2019)",
    models={name: _model_loader(name) for name in MODEL_NAMES},
    default_model="utr-random",
    rewards=REWARDS,
    default_reward="mrl",
    default_num_steps=50,
    decode=_decode,
    sample_columns=_sample_columns,
    metrics=_set_metrics,
    write_files=_write_files,
    sample_column="sequence",
    extra={"install": "rna", "evaluation_reward": "mrl-eval", "oracle_env": ENV_VAR,
           "model_descriptions": MODEL_DESCRIPTIONS, "fasta_alphabets": ("U", "T"), "value_network": _value_network,
           # shipped SVDD-MC value networks, "<model>/<reward>" -> folder for svdd.values.load_value
           "values": {"utr-random/mrl": str(ASSETS / "values" / "utr-random-mrl")}},
)

__all__ = ["DOMAIN", "ALPHABET", "MASK_ID", "SEQ_LEN", "VOCAB_SIZE", "Optimus5Prime", "decode", "encode",
           "load_optimus", "load_utr_process", "mrl_reward", "one_hot", "write_fasta"]
