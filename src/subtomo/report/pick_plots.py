"""Plots of a picking job: the peak scores against the null's with the threshold, and a slab of
the tomogram with the picks circled (matplotlib's object API, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from subtomo.report.plots import _save

__all__ = ["plot_pick_slice", "plot_scores"]


def plot_scores(picks: Mapping[str, object], path: str | Path, dpi: int = 110) -> Path:
    """Histogram of the peak heights of every tomogram's score map and of its null map, with
    each tomogram's threshold."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for name, p in picks.items():
        null = np.asarray(p.null.heights)
        scores = np.asarray(p.peaks)
        top = max(float(null.max()) if len(null) else 0.0, float(scores.max()) if len(
            scores) else 0.0, p.threshold) * 1.05
        bins = np.linspace(0.0, max(top, 1e-3), 60)
        ax.hist(scores, bins=bins, histtype="step", label=f"{name}: peaks")
        ax.hist(null, bins=bins, histtype="step", linestyle=":", label=f"{name}: null peaks")
        ax.axvline(p.threshold, linestyle="--", color="k")
    ax.set_yscale("log")
    ax.set_xlabel("normalised cross-correlation")
    ax.set_ylabel("peaks")
    ax.set_title("Template-matching peaks; dashed: threshold")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_pick_slice(tomogram: np.ndarray, picks: object, path: str | Path, *,
                    binning: float, radius_px: float, dpi: int = 110) -> Path:
    """The tomogram ``(Z, Y, X)`` averaged over a slab of ``2 radius`` voxels about the median
    depth of the picks, with the picks in that slab circled (``binning``: tilt-series px per
    voxel; ``radius_px``: circle radius, voxels)."""
    pos = np.asarray(picks.positions_px, dtype=float) / binning
    z = int(np.median(pos[:, 2])) if len(pos) else tomogram.shape[0] // 2
    half = max(1, int(radius_px))
    slab = tomogram[max(0, z - half): z + half + 1].mean(0)
    fig = Figure(figsize=(6.0, 6.0 * slab.shape[0] / max(slab.shape[1], 1) + 0.4))
    ax = fig.add_subplot()
    lo, hi = np.percentile(slab, [1, 99])
    ax.imshow(slab, cmap="gray", vmin=lo, vmax=hi, origin="lower")
    near = np.abs(pos[:, 2] - z) <= radius_px if len(pos) else np.zeros(0, bool)
    for x, y, _ in pos[near]:
        ax.add_patch(Circle((x, y), radius_px, fill=False, color="tab:orange", lw=1))
    ax.set_title(f"{int(near.sum())} of {len(pos)} picks within {half} voxels of z = {z}")
    ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path, dpi)
