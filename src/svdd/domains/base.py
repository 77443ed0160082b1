"""What a domain pack provides to the CLI and benchmarks.

A domain only *wires* things: it loads a pretrained process, builds rewards by name, decodes
samples to the domain's text form (SMILES, DNA), computes domain metrics and writes domain
files (SDF, FASTA, PNG). Algorithms never import a domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch import Tensor


def _is_import_path(name) -> bool:
    from ..plugins import is_import_path

    return is_import_path(name)


class DomainError(ValueError):
    """A user-facing domain problem (unknown model/reward, missing optional dependency)."""


@dataclass
class Domain:
    name: str
    description: str
    # model name -> loader(device) -> DiffusionProcess
    models: dict[str, Callable[..., Any]]
    default_model: str
    # reward name -> (factory(argument or None, **options) -> reward callable, one-line description)
    rewards: dict[str, tuple[Callable[..., Any], str]]
    default_reward: str
    default_num_steps: int = 50
    # x0 (B, ...) -> list of strings for samples.csv (SMILES, sequences, "" for images)
    decode: Optional[Callable[[Tensor], list[str]]] = None
    # (x0, decoded, process) -> {column: list} extra per-sample columns (e.g. validity)
    sample_columns: Optional[Callable[..., dict[str, list]]] = None
    # (x0, decoded, process) -> {metric: float} set-level metrics (diversity, validity, ...)
    metrics: Optional[Callable[..., dict[str, Any]]] = None
    # (reward_spec, options) -> notices: fetch what the run's rewards and metrics need BEFORE
    # sampling (see prepare_data); raises for data a reward needs, returns a notice for metric-only
    # data that fell back. None: the domain fetches nothing at run time (dna, rna: shipped subsets)
    prefetch: Optional[Callable[..., list[str]]] = None
    # (out_dir: Path, x0, decoded, rewards, info) -> list of files written (SDF, FASTA, PNG)
    write_files: Optional[Callable[..., list[Path]]] = None
    extra: dict = field(default_factory=dict)  # the pyproject extra that installs its dependencies
    # name of samples.csv's readable column: "smiles", "sequence", "image" (a PNG path), "sample"
    sample_column: str = "sample"
    # (out_dir: Path, x0, prefix: str, info) -> one relative file path per sample (per-sample PNGs)
    sample_files: Optional[Callable[..., list[str]]] = None

    def load_process(self, model: Optional[str] = None, device: str = "cpu", precision: Optional[str] = None,
                     **options):
        """The pretrained process ``model`` on ``device``; ``precision`` (``"fp32"``, ``"bf16"``,
        ``"auto"``) sets the denoiser forward's precision (``svdd.accelerator``)."""
        name = model or self.default_model
        if name not in self.models and _is_import_path(name):   # the user's own process factory
            from ..plugins import load_user_process

            return load_user_process(name, device=device)
        if name not in self.models:
            raise DomainError(f"unknown model {name!r} for domain {self.name!r}; choose one of "
                              f"{sorted(self.models)} (see `svdd list models`)")
        process = self.models[name](device=device, **options)
        if precision is not None:
            from ..accelerator import PrecisionError, set_precision

            try:
                set_precision(process, precision)
            except PrecisionError as err:
                raise DomainError(f"{self.name} model {name!r}: {err}") from None
        return process

    def shipped_value(self, model: Optional[str], reward: str) -> Optional[Path]:
        """The value network this domain ships for ``model`` and ``reward`` (``extra['values']``), if
        any: a key ``"<model>/<reward>"``, or the reward alone, which belongs to the default model."""
        values = self.extra.get("values") or {}
        model = model or self.default_model
        keys = [f"{model}/{reward}"] + ([reward] if model == self.default_model else [])
        for key in keys:
            if key in values and Path(values[key]).exists():
                return Path(values[key])
        return None

    def prepare_data(self, reward_spec: Optional[str] = None, options: Optional[dict] = None,
                     notify: Optional[Callable[[str], None]] = None) -> list[str]:
        """Fetch, before any sampling, the data a run of ``reward_spec`` needs (``prefetch``).
        A failure to fetch what a reward needs raises a one-line ``DomainError``/``DataError``
        saying what to run; metric-only data that falls back gives a notice, printed to stderr
        (or passed to ``notify``) and returned."""
        if self.prefetch is None:
            return []
        notices = list(self.prefetch(reward_spec or self.default_reward, dict(options or {})) or [])
        if notify is None:
            import sys

            def notify(message: str) -> None:
                print(f"svdd: note: {message}", file=sys.stderr)
        for message in notices:
            notify(message)
        return notices

    def make_reward(self, spec: Optional[str] = None, **options):
        """Build a reward from ``"name"``, ``"name:arg"`` or a weighted sum ``"a+0.5*b:arg"``."""
        from ..rewards.base import parse_reward_spec

        def factory(term: str):
            from ..plugins import is_import_path, load_user_reward

            name, _, arg = term.partition(":")
            if name in self.rewards:
                return self.rewards[name][0](arg or None, **options)
            if is_import_path(term):          # the user's own reward, MODULE:NAME
                return load_user_reward(term)
            choices = f"one of {sorted(self.rewards)} (see `svdd list rewards`) or " if self.rewards else ""
            raise DomainError(f"unknown reward {term!r} for domain {self.name!r}; choose {choices}your own "
                              "reward as MODULE:NAME")

        spec = spec or self.default_reward
        if not spec:
            raise DomainError(f"domain {self.name!r} has no default reward; pass --reward MODULE:NAME (your reward "
                              "callable) or a reward of a domain")
        return parse_reward_spec(spec, factory)
