"""Picklable zero-argument factories that build a domain's process or reward inside a worker.

A worker must build its own model and reward (a GPU worker loads the model onto its device; a
docking worker computes its receptor maps), so the driver ships *recipes*, not objects:

    DomainProcessFactory("molecules", model=None, device="cuda")()   # -> MaskedProcess
    DomainRewardFactory("molecules", "docking:parp1", num_workers=1)()  # -> reward_fn
    ValueFactory("runs/value-qed", device="cuda")()                    # -> fitted value_fn (svdd-mc)
"""

from __future__ import annotations

from typing import Optional


class DomainProcessFactory:
    def __init__(self, domain: str, model: Optional[str] = None, device: str = "cpu", **options):
        self.domain, self.model, self.device, self.options = domain, model, device, options

    def __call__(self):
        from ..domains import get_domain

        return get_domain(self.domain).load_process(self.model, device=self.device, **self.options)

    def __repr__(self) -> str:
        return f"DomainProcessFactory({self.domain!r}, model={self.model!r}, device={self.device!r})"


class DomainRewardFactory:
    def __init__(self, domain: str, reward: Optional[str] = None, **options):
        self.domain, self.reward, self.options = domain, reward, options

    def __call__(self):
        from ..domains import get_domain

        return get_domain(self.domain).make_reward(self.reward, **self.options)

    def __repr__(self) -> str:
        return f"DomainRewardFactory({self.domain!r}, {self.reward!r})"


class ValueFactory:
    """A fitted SVDD-MC value (``svdd fit-value`` output folder), loaded in the worker, or the
    user's ``MODULE:FACTORY`` (called with a process from ``process_factory`` if it takes one)."""

    def __init__(self, path: str, device: str = "cpu", process_factory=None):
        self.path, self.device, self.process_factory = str(path), device, process_factory

    def __call__(self):
        from pathlib import Path

        from ..plugins import is_import_path, load_user_value
        from ..values.learned import load_value

        if is_import_path(self.path) and not Path(self.path).exists():
            process = self.process_factory() if self.process_factory is not None else None
            return load_user_value(self.path, process)
        return load_value(self.path, device=self.device)

    def __repr__(self) -> str:
        return f"ValueFactory({self.path!r}, device={self.device!r})"
