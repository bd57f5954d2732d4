"""Peaks of a score map and how many of them are false alarms.

Peaks: the maxima of their cube of half-width ``⌊d/√3⌋`` (separable max-pools; the cube fits
inside the sphere of radius ``d``), then greedy suppression in score order (a k-d tree gives
each candidate's neighbours), so that no two picks are closer than ``d``
(``min_distance_px``) and none is lost to a higher one farther away.

False alarms, from an empirical null: template matching also records, per voxel, the best
score of the contrast-inverted template (:mod:`subtomo.tomo.template_matching`), which no
particle matches, while noise matches it as often as the template itself (noise is
symmetric). The peaks of that null map, found with the same suppression, are false alarms by
construction — except where the inverted template matches a particle's own rim or band-pass
halo; those null peaks sit next to a higher score and are dropped. Their number above a
threshold ``s``, ``n₀(s)``, is counted where there are enough of them and extrapolated beyond
with an exponential tail fitted to the top 10 % (at least 10 peaks; maximum likelihood: the
mean excess). ``n₀(s)`` is the expected number of false picks above ``s``; it slightly
overstates it where particles fill much of the volume (noise peaks there lose to the particle
they sit next to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = ["FalseAlarms", "cube_max", "false_alarms", "find_peaks"]


def cube_max(volume: Tensor, half: int) -> Tensor:
    """The maximum over the cube of half-width ``half`` about each voxel (separable: three
    1D max-pools)."""
    out = volume[None, None]
    k = 2 * half + 1
    for kernel, pad in (((k, 1, 1), (half, 0, 0)), ((1, k, 1), (0, half, 0)),
                        ((1, 1, k), (0, 0, half))):
        out = F.max_pool3d(out, kernel, stride=1, padding=pad)
    return out[0, 0]


def find_peaks(scores: Tensor, min_distance_px: float, *, floor: float = -math.inf,
               limit: int | None = None, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Peaks of ``scores`` (Z, Y, X): ``(positions (K, 3) as (z, y, x) voxel indices, scores
    (K,))`` in decreasing score, no two closer than ``min_distance_px``, all above ``floor``,
    at most ``limit``."""
    half = max(1, int(min_distance_px / math.sqrt(3)))
    s = scores if valid is None else torch.where(valid, scores, -math.inf)
    cand = torch.nonzero((s == cube_max(s, half)) & (s > floor))
    values = s[tuple(cand.T)]
    order = torch.argsort(values, descending=True)
    cand, values = cand[order], values[order]
    points = cand.cpu().numpy().astype(np.float64)
    neighbours = cKDTree(points).query_ball_point(points, r=min_distance_px * (1 - 1e-9))
    suppressed = np.zeros(len(points), dtype=bool)
    keep: list[int] = []
    for i in range(len(points)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[neighbours[i]] = True
        if limit is not None and len(keep) >= limit:
            break
    index = torch.as_tensor(keep, dtype=torch.long, device=scores.device)
    return cand[index], values[index]


@dataclass
class FalseAlarms:
    """The null peaks' heights (decreasing), the valid volume (voxels) and the tail fit."""

    heights: Tensor
    volume_voxels: float
    tail_start: float
    tail_scale: float
    tail_count: int

    def null_count(self, threshold: float) -> float:
        """Expected number of null peaks above ``threshold`` (counted, else the fitted tail)."""
        if threshold <= self.tail_start:
            return float((self.heights >= threshold).sum())
        return self.tail_count * math.exp(-(threshold - self.tail_start) / self.tail_scale)

    def threshold_for(self, expected: float) -> float:
        """The lowest threshold at which at most ``expected`` null peaks are expected."""
        lo, hi = (float(self.heights.min()) if len(self.heights) else 0.0), 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.null_count(mid) > expected else (lo, mid)
        return hi


def false_alarms(null: Tensor, min_distance_px: float, valid: Tensor,
                 scores: Tensor | None = None) -> FalseAlarms:
    """The empirical null of the module docstring from the null score map; with ``scores``,
    a null peak is dropped where the score map holds a higher value within its cube (the
    inverted template matching a particle's rim or its band-pass halo: particles make these,
    noise rarely does above the null's bulk)."""
    positions, heights = find_peaks(null, min_distance_px, valid=valid)
    if scores is not None and len(heights):
        half = max(1, int(min_distance_px))
        pooled = cube_max(scores, half)
        keep = pooled[tuple(positions.T)] <= heights
        heights = heights[keep]
    n = len(heights)
    if n < 2:
        return FalseAlarms(heights, float(valid.sum()), 1.0, 1e-3, n)
    top = min(max(10, n // 10), n)
    start = float(heights[top - 1])
    excess = (heights[:top] - start).double()
    scale = max(float(excess.sum() / max(top - 1, 1)), 1e-6)
    return FalseAlarms(heights, float(valid.sum()), start, scale, top)
