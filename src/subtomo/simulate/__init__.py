"""Simulators with ground truth for tests, benches and the demo: structures, rendering,
particle sets, subtomograms and tilt series (never the referee: see the README)."""

__all__ = [
    "particles",
    "motion",
    "render",
    "structure",
    "subtomograms",
    "tiltseries",
]
