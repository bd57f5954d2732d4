"""Per-particle poses of ``subtomo hetero train --estpose``: a local search against the decoded
maps every ``--pose-every`` epochs.

Each particle ``i`` carries a correction ``δ_i = (ω_i, δs_i)`` (rotation vector rad, shift Å)
of its given pose: ``A_i' = A_i exp([ω_i]×)``, origin' = origin + δs_i (:class:`PoseTable`;
:func:`subtomo.hetero.forward.corrected_poses`). Before epochs ``e = k · every`` (k ≥ 1:
the first ``every`` epochs are the warm-up, while the decoded maps are the consensus and
little more) the latent means of the previous epoch are split into :data:`POSE_MAPS` groups
(KMeans); the network decodes the map at each group's centre (rigid bodies moved by its
dynamics latent), Fourier-resampled to the particle box. Each particle is searched against
its group's map by :class:`subtomo.align.search.Searcher` in local mode around its current
pose ``A_i'``: rotations on a cubic grid of the step of HEALPix order :data:`POSE_ORDER`
(0.94°) within :data:`POSE_RADIUS_STEPS` steps (1.9°, 33 rotations), then the 9 of half that
step around the best one; translations within ``--offset-range`` px (at least 1; step 1 px, then
0.5 px); scored by the normalised cross-correlation through the particle's CTF,
``Re Σ_k h C conj(P) X e^{-2πi k.t} / (Σ_k h C² |P|²)^½``, on the frequencies the training
compares (the loss box's Nyquist). The best hypothesis is the new pose:
``ω_i = log(A_i^T A_new)``, ``δs_i += t a``; the next epochs train and encode with it.

Each search moves a pose by 2.3° at most; the searches every few epochs add up. A wider
search does worse where the decoded maps are not yet right: on 300 hinged particles (48³,
SNR 0.3, median error 2.6°), searched against the decoded maps of the second epoch, the
median error became 2.2° within 1.9°, 2.3° within 2.8°, 3.0° within 7.5° at 3.75° steps; the
true maps of 8 hinge angles give 2.1° (within 7.5°), one map (the consensus) 3.6°: a pose can
trade against a hinge the map does not hold. Where the decoded maps are noisy the best of ~40
hypotheses is partly noise, and the searches pull poses away: on 500 three-class subtomograms
(32³, noise σ 10; bench/bench_hetero_anchors.py's composition set) the median error went
1.92° → 2.16° → 2.70° over two searches and KMeans-3 ARI 0.84 → 0.45. Hence off by default.

With several processes each searches its share of the particles (``Context.shard``) and the
rows are summed over processes (each row has one owner). The corrections are saved in every
checkpoint (``poses`` → ``delta`` (N, 6), the format ``select`` reads) and restored by
``--continue``; the search is deterministic, so a continued run repeats it exactly.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.cluster import KMeans

from subtomo.align.search import Searcher, SearchSettings
from subtomo.fourier.grid import resample_map
from subtomo.fourier.projector import Projector
from subtomo.geometry.healpix import angular_step_deg
from subtomo.hetero.forward import corrected_poses, sample_model
from subtomo.parallel.distributed import Context
from subtomo.refine.images import iterate_batches

if TYPE_CHECKING:
    from subtomo.hetero.run import Run

__all__ = ["POSE_MAPS", "POSE_ORDER", "POSE_RADIUS_STEPS", "SEARCH_BATCHES", "PoseTable",
           "decoded_groups", "matrix_to_rotation_vector", "pose_searcher", "search_due",
           "search_poses", "search_rows"]

POSE_MAPS = 8  # latent groups, one decoded map each
POSE_ORDER = 6  # HEALPix order of the coarse local step: 0.94°, fine 0.47°
POSE_RADIUS_STEPS = 2  # coarse rotations within this many steps of the current pose (1.9°)
SEARCH_BATCHES = 4  # training batches per batch read by the search


class PoseTable:
    """Per-particle corrections ``delta`` (N, 6) = (rotation vector rad, shift Å)."""

    def __init__(self, n: int) -> None:
        self.delta = torch.zeros(n, 6, dtype=torch.float64)

    def rows(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        return self.delta[torch.as_tensor(rows)].float().to(device)

    def exchange(self, owned: np.ndarray, ctx: Context) -> None:
        """Every process's ``owned`` rows to every process (each row has one owner)."""
        if ctx.world == 1:
            return
        keep = torch.zeros(len(self.delta), 1, dtype=torch.bool)
        keep[torch.as_tensor(owned)] = True
        self.delta.copy_(ctx.sum_(torch.where(keep, self.delta, torch.zeros_like(self.delta))))

    def state(self) -> dict:
        return {"delta": self.delta}

    def load(self, state: dict) -> None:
        self.delta.copy_(state["delta"])


def search_due(epoch: int, every: int) -> bool:
    """Whether the poses are searched before ``epoch``: at ``every``, ``2 every``, …"""
    return every > 0 and epoch >= every and epoch % every == 0


def matrix_to_rotation_vector(R: torch.Tensor) -> torch.Tensor:
    """The rotation vector ``ω`` (..., 3) rad with ``exp([ω]×) = R`` (angle below π):
    ``θ = acos((tr R - 1) / 2)``, ``ω = θ / (2 sin θ) (R32 - R23, R13 - R31, R21 - R12)``
    (``θ / (2 sin θ) → 1/2`` as ``θ → 0``)."""
    R = R.double()
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    theta = torch.arccos(cos)
    skew = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                        R[..., 1, 0] - R[..., 0, 1]], -1)
    factor = torch.where(theta > 1e-6, theta / (2 * torch.sin(theta).clamp_min(1e-12)),
                         0.5 + theta ** 2 / 12)
    return skew * factor[..., None]


def decoded_groups(run: Run, mu: np.ndarray, k: int = POSE_MAPS
                   ) -> tuple[np.ndarray, torch.Tensor]:
    """The latent group of every particle (N,) (KMeans on the latent means ``mu``, seeded) and
    the map the network decodes at each group's centre, on the particle box (K, D, D, D)."""
    k = max(1, min(k, len(np.unique(mu, axis=0))))
    if k == 1:
        labels, centres = np.zeros(len(mu), dtype=int), mu.mean(0, keepdims=True)
    else:
        km = KMeans(n_clusters=k, n_init=3, random_state=run.options.seed).fit(mu)
        labels, centres = km.labels_, km.cluster_centers_
    net, t = run.net, run.boxes.template_box
    z = torch.as_tensor(centres, dtype=torch.float32, device=run.device)
    with torch.no_grad():
        maps, _ = net.maps(z)
        eye = torch.eye(3, device=run.device).expand(len(z), 3, 3)
        moved = sample_model(net, maps.view(-1, t, t, t), z, eye,
                             torch.zeros(len(z), 3, device=run.device), t,
                             net.template_pixel_size_A)
        return labels, torch.stack([resample_map(m, run.boxes.box) for m in moved])


def pose_searcher(reference: torch.Tensor, run: Run) -> Searcher:
    """The local search of one decoded map ``reference`` (D³) (module docstring)."""
    fine_px = run.boxes.loss_box / 2
    step = angular_step_deg(POSE_ORDER)
    settings = SearchSettings(order=POSE_ORDER, local=True,
                              local_radius_deg=POSE_RADIUS_STEPS * step,
                              offset_range_px=max(run.options.offset_range_px, 1.0),
                              offset_step_px=1.0, coarse_radius_px=2 * fine_px / 3,
                              fine_radius_px=fine_px, top_k=1, cc=True)
    return Searcher(Projector(reference.float().to(run.device), pad=2), settings)


def search_rows(run: Run, rows: np.ndarray, labels: np.ndarray, references: torch.Tensor
                ) -> tuple[torch.Tensor, int]:
    """New corrections (len(rows), 6) of ``rows``, each particle searched against
    ``references[labels[i]]`` around its current corrected pose, and the rotations scored
    per particle."""
    pixel = run.boxes.pixel_size_A
    delta = run.poses.delta
    origins = run.origins_px + delta[:, 3:] / pixel  # the current full origins
    out = torch.zeros(len(rows), 6, dtype=torch.float64)
    where = {int(r): j for j, r in enumerate(rows)}
    searchers = [pose_searcher(ref, run) for ref in references]
    scored = searchers[0].n_coarse_rotations + len(searchers[0].fine_rotations)
    for batch in iterate_batches(run.inputs.particles, rows, box=run.boxes.box,
                                 ctf=run.options.ctf,
                                 batch_size=SEARCH_BATCHES * run.options.batch_size,
                                 device=run.device, shifts_px=origins):
        batch.spectra[..., 0, 0, 0] = 0
        idx = torch.as_tensor(batch.rows)
        A0 = run.A[idx].double()
        prior, _ = corrected_poses(A0, torch.zeros(len(idx), 3, dtype=torch.float64),
                                   delta[idx])
        for g in np.unique(labels[batch.rows]):
            sel = torch.as_tensor(np.flatnonzero(labels[batch.rows] == g))
            found = searchers[g].search(batch.spectra[sel],
                                        None if batch.ctf is None else batch.ctf[sel], None,
                                        prior[sel].float().to(run.device))
            new_A = found.matrices.double().cpu()
            keep = [where[int(r)] for r in batch.rows[sel.numpy()]]
            out[keep, :3] = matrix_to_rotation_vector(A0[sel].transpose(1, 2) @ new_A)
            out[keep, 3:] = delta[idx[sel], 3:] + found.shifts_px.double().cpu() * pixel
    return out, scored


def search_poses(run: Run, mu: np.ndarray, ctx: Context) -> dict:
    """Search every particle's pose against the decoded map of its latent group (this
    process's share, then exchanged): the new corrections are in ``run.poses``. Returns the
    budget: particles, rotations scored per particle, seconds."""
    wall = time.perf_counter()
    labels, references = decoded_groups(run, mu)
    mine = ctx.shard(np.arange(len(run.inputs.particles)))
    found, scored = search_rows(run, mine, labels, references)
    run.poses.delta[torch.as_tensor(mine)] = found
    run.poses.exchange(mine, ctx)
    return {"pose_particles": len(run.inputs.particles), "pose_rotations": scored,
            "pose_maps": len(references), "pose_s": time.perf_counter() - wall}

