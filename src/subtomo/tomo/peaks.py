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
halo. A pick suppresses every peak within ``d`` of it, so at a threshold ``s`` a null peak
counts only if no peak of the score map above ``s`` lies within ``d``: near a particle the halo
peaks drop out, in the background (where the score map's peaks above ``s`` are rare) nearly all
count. That number ``n₀(s)`` is counted where there are enough peaks and extrapolated beyond
with an exponential tail fitted to the top 10 % (at least 10 peaks; maximum likelihood: the
mean excess).

Another kind of object is signal, not noise: where the peaks above the noise threshold fall
into two separated modes (:func:`split_modes`), the lower one is taken for objects the template
resembles but does not match, and the automatic threshold rises to the valley between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from sklearn.mixture import GaussianMixture
from torch import Tensor

__all__ = ["FalseAlarms", "cube_max", "false_alarms", "find_peaks", "split_modes"]


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
    """The null peaks' heights ``h`` (decreasing), for each the highest score ``m`` of a
    positive peak within the suppression distance (0 if none), and the tail fit."""

    heights: np.ndarray
    covered: np.ndarray
    tail_start: float
    tail_scale: float
    tail_count: int

    def null_count(self, threshold: float) -> float:
        """Expected false picks above ``threshold`` ``s``: the null peaks with ``h ≥ s`` that no
        pick above ``s`` covers (``m < s``); beyond the counted range, the fitted tail."""
        if threshold <= self.tail_start:
            return float(((self.heights >= threshold) & (self.covered < threshold)).sum())
        return self.tail_count * math.exp(-(threshold - self.tail_start) / self.tail_scale)

    def threshold_for(self, expected: float) -> float:
        """The lowest threshold at which at most ``expected`` false picks are expected."""
        lo, hi = (float(self.heights.min()) if len(self.heights) else 0.0), 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.null_count(mid) > expected else (lo, mid)
        return hi


def false_alarms(null: Tensor, min_distance_px: float, valid: Tensor, peaks_px: Tensor,
                 peak_scores: Tensor) -> FalseAlarms:
    """The empirical null of the module docstring from the null score map and the score map's
    peaks (``peaks_px`` ``(K, 3)``, ``peak_scores``)."""
    positions, heights = find_peaks(null, min_distance_px, valid=valid)
    h = heights.double().cpu().numpy()
    covered = np.zeros_like(h)
    if len(h) and len(peak_scores):
        tree = cKDTree(peaks_px.cpu().numpy().astype(np.float64))
        near = tree.query_ball_point(positions.cpu().numpy().astype(np.float64),
                                     r=min_distance_px)
        values = peak_scores.double().cpu().numpy()
        covered = np.array([values[n].max() if n else 0.0 for n in near])
    free = h[covered < h]  # the peaks that count at s = h
    n = len(free)
    if n < 2:
        return FalseAlarms(h, covered, 1.0, 1e-3, n)
    top = min(max(10, n // 10), n)
    start = float(free[top - 1])
    scale = max(float((free[:top] - start).sum() / max(top - 1, 1)), 1e-6)
    return FalseAlarms(h, covered, start, scale, top)


def split_modes(scores: np.ndarray, min_separation: float = 3.0, min_fraction: float = 0.1,
                max_valley: float = 0.25) -> tuple[float, float] | None:
    """Where two modes of ``scores`` part: a two-component Gaussian mixture; when the modes are
    separated (Ashman's ``D = √2 |μ₁ − μ₂| / √(σ₁² + σ₂²) > min_separation``), the lower one
    holds at least ``min_fraction`` and the mixture's density has a valley between the means
    below ``max_valley`` times its lower peak (a skewed single mode has none), the score at
    the valley and ``D``; else ``None``."""
    if len(scores) < 20:
        return None
    x = np.asarray(scores, dtype=np.float64)[:, None]
    gmm = GaussianMixture(2, random_state=0).fit(x)
    means, sds = gmm.means_[:, 0], np.sqrt(gmm.covariances_.reshape(-1))
    lower, upper = np.argsort(means)
    separation = math.sqrt(2) * (means[upper] - means[lower]) / math.sqrt(
        sds[0] ** 2 + sds[1] ** 2)
    if separation <= min_separation or gmm.weights_[lower] < min_fraction:
        return None
    grid = np.linspace(means[lower], means[upper], 512)[:, None]
    density = np.exp(gmm.score_samples(grid))
    valley = int(np.argmin(density))
    peaks = min(density[:valley + 1].max(), density[valley:].max())
    if density[valley] > max_valley * peaks:
        return None
    return float(grid[valley, 0]), float(separation)
