"""End-state maps of a heterogeneity run against the true states (bench_hetero_anchors.py).

Each tool's decoder is evaluated at the ends of its latent path, found from its latents alone:
three classes, the KMeans-3 centres (each cluster called by the true class most of its particles
have); a hinge, PC1's 5th and 95th percentiles (the end whose particles have the smaller true
angle is called 0°). Each map is scored against the true map of its state in a soft sphere
(radius 0.4 box): the mean FSC over the shells to Nyquist, and, since the states differ in a
small part of the map (the true class maps agree to mean FSC ≈ 0.8), the correlation of the
decoded maps' differences from their mean with the true maps' differences from theirs
(r 1: the decoded states differ as the true ones; 0: not at all). Maps of a smaller box (OPUS
crops its output to 0.85 of the box) are compared with the truths cropped about their centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from subtomo.fourier.fsc import fsc
from subtomo.io.mrc import read_mrc


def read_map(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(read_mrc(path)[0], dtype=np.float32).copy())


def truth_maps(part: str, folder: Path, hinge_config=None) -> list[torch.Tensor]:
    """The true states: class maps 1, 2, 3, or the hinge at 0° and 30°."""
    if part == "hinge":
        from subtomo.simulate.render import render_atoms
        from subtomo.simulate.subtomograms import build_structure

        base = build_structure(hinge_config)
        return [render_atoms(base.hinged(a).positions_A[None], base.amplitudes,
                             hinge_config.box_px, hinge_config.pixel_size_A,
                             hinge_config.sigma_A)[0].float() for a in (0.0, 30.0)]
    names = ([folder / "truth" / f"class00{c}.mrc" for c in (1, 2, 3)] if part == "tiltseries"
             else [folder / f"truth_class00{c}.mrc" for c in (1, 2, 3)])
    return [read_map(p) for p in names]


def end_points(part: str, z: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Latent points of the path's ends and the index of the true state each is called."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if part == "hinge":
        pca = PCA(1).fit(z)
        s = pca.transform(z)[:, 0]
        lo, hi = np.percentile(s, (5, 95))
        points = pca.inverse_transform(np.array([[lo], [hi]]))
        low_first = target[s <= lo].mean() <= target[s >= hi].mean()
        return points, [0, 1] if low_first else [1, 0]
    km = KMeans(3, n_init=10, random_state=0).fit(z)
    labels = [int(np.bincount(target[km.labels_ == c].astype(int)).argmax()) - 1
              for c in range(3)]
    return km.cluster_centers_, labels


def scores(maps: torch.Tensor, truths: list[torch.Tensor], labels: list[int]) -> str:
    """``mean FSC / r(differences)`` (module docstring) of decoded ``maps`` (m, d, d, d)."""
    d = maps.shape[-1]
    start = truths[0].shape[-1] // 2 - d // 2
    cut = (slice(start, start + d),) * 3
    true = torch.stack([truths[i][cut] for i in labels]).double()
    maps = maps.double()
    g = torch.arange(d, dtype=torch.float64) - d // 2
    r = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2).sqrt()
    mask = torch.clamp((0.4 * d + 2 - r) / 4, 0, 1)  # soft edge 4 voxels
    mean_fsc = np.mean([float(fsc(m * mask, t * mask)[1:d // 2].mean())
                        for m, t in zip(maps, true, strict=True)])
    dm = ((maps - maps.mean(0)) * mask).flatten()
    dt = ((true - true.mean(0)) * mask).flatten()
    dm, dt = dm - dm.mean(), dt - dt.mean()
    r_diff = float(dm @ dt / (dm.norm() * dt.norm()).clamp(min=1e-30))
    return f"{mean_fsc:.2f} / {r_diff:.2f}"
