"""What a molecule run fetches before it samples (``Domain.prefetch``), and what it does when it cannot.

- dockstring's receptors, for a reward with ``docking:<target>`` terms: required — the reward
  cannot score without them, so a failed fetch fails the run before sampling, in one line that
  says what to run (``svdd.cache.fetch_wheel``: ``pip download --no-deps --only-binary=:all:``,
  SHA-256 checked, cached atomically).
- the MOSES train / test SMILES (``molsets`` wheel, 51 MB), for the novelty, FCD and MOSES
  (SNN / Frag / Scaf) metrics: metric-only — a failed fetch prints a notice and the run goes on;
  novelty and the MOSES metrics are then measured against the shipped 2,000-molecule samples
  (``novelty_reference`` / ``moses_reference`` in ``summary.json`` say so) and FCD is not
  reported (``fcd_note`` says why).
"""

from __future__ import annotations

import importlib.util
from typing import Optional

from ...cache import DataError
from ..base import DomainError


def prefetch(reward_spec: Optional[str], options: Optional[dict] = None) -> list[str]:
    """Fetch the data a run of ``reward_spec`` needs; returns notices for metric-only data that
    could not be fetched, raises ``DomainError`` (one line) for data the reward needs."""
    from .data import molsets_wheel
    from .docking import docking_targets, targets_dir

    notices: list[str] = []
    if docking_targets(reward_spec):
        targets_dir(download=True)   # DomainError naming the pip command when it cannot
    if importlib.util.find_spec("moses") is None:   # an installed moses package has the CSVs itself
        try:
            molsets_wheel(download=True)
        except (DataError, DomainError) as err:
            notices.append(f"the MOSES data set is unavailable ({err}); novelty and the MOSES metrics are "
                           "measured against the shipped 2,000-molecule samples and FCD is not reported")
    return notices
