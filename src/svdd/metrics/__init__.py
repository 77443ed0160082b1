"""Metrics: statistics of reward distributions (``stats``), and set-level sample metrics
(diversity, naturalness) used by the CLI summaries, domain packs and benchmark reports."""
