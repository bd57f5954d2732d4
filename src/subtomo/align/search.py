"""Coarse-to-fine orientation and translation search of particle batches against a reference.

One pass of :class:`Searcher` over a batch (the scores are those of :mod:`subtomo.align.score`):

1. **Coarse**: every particle is scored at frequencies ``|k| D <= coarse_radius_px`` against
   either the HEALPix grid of ``order`` (global; RELION's directions and psi steps, restricted to
   the asymmetric unit of the symmetry group, one section per rotation shared by the whole batch,
   so the scores are GEMMs) or against its prior rotation composed with a small grid of
   rotations of the same step within ``local_radius_deg`` (local; batched GEMMs), and against
   translations on a grid of ``offset_step_px`` within ``offset_range_px`` of the current origin.
2. **Fine** (RELION's adaptive oversampling by one order): the ``top_k`` best coarse hypotheses
   of each particle are refined on rotations at half the step within 0.75 steps of them (in
   local searches, whose coarse grid is cubic, the best one on its cell's centre and 8
   children at ±step/4) and on translations at half the offset step, using all frequencies up
   to ``fine_radius_px``.

With ``sigma_ang_deg``, local hypotheses carry RELION's Gaussian prior on the angular change
from the current pose (searched within 3 sigma); with ``skip_align``, each particle is scored at
its current pose only (classification without alignment).

The best fine hypothesis is the new pose; the log-sum-exp and the largest normalised
probability over the fine hypotheses are RELION's ``rlnLogLikeliContribution`` (up to a
constant) and ``rlnMaxValueProbDistribution``. :func:`exhaustive_search` scores every
hypothesis of a grid with the same kernels and is the oracle the tests compare against.

Memory. Without limits a :class:`Searcher` keeps the coarse sections of every rotation of the
global grid (8 bytes per rotation and coarse coefficient: about 0.3 GiB at order 3 with
1,000 coefficients) and scores a whole batch at once. With ``cache_bytes`` it keeps them only
if they fit, else it samples them per chunk of rotations for every batch; with
``work_bytes`` it splits a batch into groups of particles whose coarse and fine passes fit
(the fine pass costs about ``K (12 J + 8 T + 16) + 48`` bytes per particle and fine
coefficient, for K candidates, J oversampled rotations and T fine translations) and the
rotations into chunks whose scores fit. A particle's scores do not depend on the chunks (its
own rows and columns of the same products, to float32 rounding), so neither do the poses; a
group holds at least one particle and a chunk at least :data:`MIN_ROTATION_CHUNK` rotations,
the floor of the working memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from subtomo.align.score import (
    Frequencies,
    ParticleTerms,
    particle_terms,
    scores_per_particle,
    scores_shared,
    translated_columns,
)
from subtomo.fourier.projector import Projector
from subtomo.geometry.healpix import (
    angular_step_deg,
    cell_children,
    local_rotations,
    rotation_grid,
)

SHARED_SCORE_ELEMENTS = 1 << 25  # most (B x rotations x translations) scores live at once
MIN_ROTATION_CHUNK = 64  # rotations scored together at least (GEMMs, not matrix-vector)
SAMPLE_BYTES_PER_POINT = 48  # Projector.sample's temporaries per (rotation, frequency) point


def translation_grid(range_px: float, step_px: float, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Translations ``(T, 3)`` (px) on a cubic grid of ``step_px`` within a sphere of
    ``range_px`` (RELION's offset search), the zero translation first."""
    n = int(math.floor(range_px / step_px + 1e-6)) if step_px > 0 else 0
    axis = torch.arange(-n, n + 1, dtype=torch.float64) * step_px
    grid = torch.cartesian_prod(axis, axis, axis) if n else torch.zeros(1, 3, dtype=torch.float64)
    grid = grid[grid.norm(dim=1) <= range_px + 1e-6]
    grid = grid[torch.argsort(grid.norm(dim=1), stable=True)]
    return grid.to(device=device, dtype=dtype)


@dataclass
class SearchSettings:
    """One iteration's sampling. Angles in degrees, lengths in pixels."""

    order: int = 2
    local: bool = False
    local_radius_deg: float | None = None  # default: 2 steps of ``order``
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    coarse_radius_px: float = 8.0
    fine_radius_px: float = 12.0
    sym: str = "C1"
    top_k: int = 2
    significant: int = 8  # most hypotheses kept per particle for weighted reconstruction
    cc: bool = False
    perturb_deg: float = 0.0
    seed: int = 0
    skip_align: bool = False  # score each particle at its prior pose only
    sigma_ang_deg: float | None = None  # local searches: Gaussian prior on the pose change

    @property
    def step_deg(self) -> float:
        return angular_step_deg(self.order)


@dataclass
class SearchResult:
    """Best pose per particle of a batch and its posterior statistics.

    ``matrices``: RELION rotations ``(B, 3, 3)``; ``shifts_px``: ``(B, 3)`` translations to add
    to the current origins; ``score``: best log-likelihood (or CC); ``log_evidence``:
    log-sum-exp over the fine hypotheses; ``max_probability``: the best's share;
    ``projection``: the best reference section on the fine frequencies ``(B, n)``;
    ``top_matrices`` ``(B, M, 3, 3)``, ``top_shifts_px`` ``(B, M, 3)`` and ``top_weights``
    ``(B, M)``: the most probable hypotheses and their posterior weights (summing to 1; zero
    beyond the significant ones), for posterior-weighted reconstruction.
    """

    matrices: Tensor
    shifts_px: Tensor
    score: Tensor
    log_evidence: Tensor
    max_probability: Tensor
    projection: Tensor
    top_matrices: Tensor
    top_shifts_px: Tensor
    top_weights: Tensor

    def take(self, index: Tensor) -> SearchResult:
        """The results of particles ``index`` (a boolean mask or indices over the batch)."""
        return SearchResult(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def cat(parts: list[SearchResult]) -> SearchResult:
        """The results of consecutive groups of a batch as one."""
        if len(parts) == 1:
            return parts[0]
        return SearchResult(*(torch.cat([getattr(p, f.name) for p in parts])
                              for f in fields(SearchResult)))


class Searcher:
    """The search of one reference (a :class:`Projector`) with fixed :class:`SearchSettings`.

    ``cache_bytes``: most memory for the coarse sections of the global grid, kept for all
    batches (``None``: no limit); beyond it they are sampled per chunk of rotations for every
    batch. ``work_bytes``: most memory for the transient work of one :meth:`search` call
    (``None``: no limit; see the module docs).
    """

    def __init__(self, projector: Projector, settings: SearchSettings,
                 cache_bytes: int | None = None, work_bytes: int | None = None) -> None:
        self.projector = projector
        self.settings = s = settings
        self.work_bytes = work_bytes
        device, box = projector.device, projector.box
        fine_radius = min(s.fine_radius_px, box / 2)
        self.coarse = Frequencies.within(box, min(s.coarse_radius_px, fine_radius), device)
        self.fine = Frequencies.within(box, fine_radius, device)
        self.coarse_shifts = translation_grid(s.offset_range_px, s.offset_step_px, device)
        half = s.offset_step_px / 2
        self.fine_shifts = translation_grid(half * math.sqrt(3), half, device)
        step = s.step_deg
        if s.local:  # the coarse cell is a cube: its 8 half-step children and its centre
            self.fine_rotations = cell_children(step, device=device)
        else:
            self.fine_rotations = local_rotations(step / 2, 0.75 * step, device=device)
        self.grid_sections: Tensor | None = None
        if s.skip_align:
            self.fine_rotations = torch.eye(3, device=device)[None]
            self.fine_shifts = torch.zeros(1, 3, device=device)
        elif s.local:
            radius = s.local_radius_deg
            if radius is None:  # RELION searches 3 sigma_ang around the prior
                radius = 3 * s.sigma_ang_deg if s.sigma_ang_deg else 2 * step
            self.local_rotations = local_rotations(step, radius, device=device)
        else:
            self.grid, _ = rotation_grid(s.order, s.sym, perturb_deg=s.perturb_deg, seed=s.seed,
                                         device=device)
            if cache_bytes is None or self.section_cache_bytes <= cache_bytes:
                self.grid_sections = projector.sample(self.grid, self.coarse.k_px)

    @property
    def section_cache_bytes(self) -> int:
        """Memory of the coarse sections of the whole global grid (complex64)."""
        return 8 * self.n_coarse_rotations * len(self.coarse)

    def _sample_bytes(self, rotations: int, n: int) -> int:
        """Memory of ``rotations`` sampled sections on ``n`` coefficients and the sampler's
        temporaries (at most ``max_points`` points at a time)."""
        points = min(rotations * n, self.projector.max_points)
        return 8 * rotations * n + SAMPLE_BYTES_PER_POINT * points

    def coarse_group(self, b: int) -> int:
        """Particles of a batch of ``b`` searched together in the coarse pass."""
        if self.work_bytes is None or self.settings.skip_align:
            return b
        n, t = len(self.coarse), self.coarse_shifts.shape[0]
        per_particle = 8 * t * n + 48 * n  # translated columns and particle terms
        if self.settings.local:  # own sections, their power and scores
            j = self.local_rotations.shape[0]
            per_particle += 12 * j * n + 12 * j * t
            fixed = self._sample_bytes(0, n) + 8 * t * n  # sampler, shared phases
        else:  # shared sections of a chunk of rotations and its scores
            fixed = 8 * t * n + self._rotation_chunk_bytes(MIN_ROTATION_CHUNK, 1)
        group = (self.work_bytes - fixed) // per_particle
        return int(max(1, min(b, group)))

    def _rotation_chunk_bytes(self, rotations: int, b: int) -> int:
        """Transient memory of scoring ``rotations`` grid rotations against ``b`` particles."""
        n, t = len(self.coarse), self.coarse_shifts.shape[0]
        scores = 12 * b * t * rotations  # products, scores and their flat copy
        power = 4 * rotations * n
        sections = 0 if self.grid_sections is not None else self._sample_bytes(rotations, n)
        return scores + power + sections

    def rotation_chunk(self, b: int, t: int) -> int:
        """Grid rotations scored at once against ``b`` particles and ``t`` translations."""
        n_rot = self.grid.shape[0]
        chunk = max(1, SHARED_SCORE_ELEMENTS // max(1, b * t))
        if self.work_bytes is not None:
            n = len(self.coarse)
            columns = 8 * b * t * n + 48 * b * n
            per_rotation = 12 * b * t + 4 * n + (
                0 if self.grid_sections is not None else 8 * n + SAMPLE_BYTES_PER_POINT * n)
            chunk = min(chunk, (self.work_bytes - columns) // per_rotation)
        return int(min(n_rot, max(chunk, MIN_ROTATION_CHUNK)))

    def fine_group(self, b: int) -> int:
        """Particles of a batch of ``b`` searched together in the fine pass."""
        if self.work_bytes is None:
            return b
        n = len(self.fine)
        k = 1 if self.settings.skip_align else self.settings.top_k
        j, t = self.fine_rotations.shape[0], self.fine_shifts.shape[0]
        per_particle = n * (k * (12 * j + 8 * t + 16) + 48)
        fixed = 8 * t * n + SAMPLE_BYTES_PER_POINT * self.projector.max_points
        return int(max(1, min(b, (self.work_bytes - fixed) // per_particle)))

    @property
    def n_coarse_rotations(self) -> int:
        s = self.settings
        if s.skip_align:
            return 1
        return self.local_rotations.shape[0] if s.local else self.grid.shape[0]

    def search(self, spectra: Tensor, ctf: Tensor | None, inv_sigma2: Tensor | None,
               prior: Tensor | None = None) -> SearchResult:
        """Search a batch: ``spectra``/``ctf`` ``(B, D, D, D // 2 + 1)`` centred on the current
        origins, ``inv_sigma2`` per shell, ``prior`` ``(B, 3, 3)`` rotations (local search).
        The batch is searched in groups of particles that fit ``work_bytes``."""
        s = self.settings
        if (s.local or s.skip_align) and prior is None:
            raise ValueError("a local search needs prior rotations")
        b = spectra.shape[0]
        group = self.coarse_group(b)
        parts = []
        for start in range(0, b, group):
            part = slice(start, start + group)
            parts.append(self._search_group(
                spectra[part], None if ctf is None else ctf[part], inv_sigma2,
                None if prior is None else prior[part]))
        return SearchResult.cat(parts)

    def _search_group(self, spectra: Tensor, ctf: Tensor | None, inv_sigma2: Tensor | None,
                      prior: Tensor | None) -> SearchResult:
        """The coarse pass of a group of particles, then its fine pass in groups."""
        s = self.settings
        if s.skip_align:
            candidates = prior[:, None]
            centres = torch.zeros(spectra.shape[0], 1, 3, device=spectra.device)
        else:
            candidates, centres = self._coarse(spectra, ctf, inv_sigma2, prior)
        b = spectra.shape[0]
        group = self.fine_group(b)
        parts = []
        for start in range(0, b, group):
            part = slice(start, start + group)
            parts.append(self._fine(spectra[part], None if ctf is None else ctf[part],
                                    inv_sigma2, candidates[part], centres[part],
                                    None if prior is None or s.skip_align else prior[part]))
        return SearchResult.cat(parts)

    def _coarse(self, spectra: Tensor, ctf: Tensor | None, inv_sigma2: Tensor | None,
                prior: Tensor | None) -> tuple[Tensor, Tensor]:
        """The best coarse rotations ``(B, K, 3, 3)`` and translations ``(B, K, 3)`` (px)."""
        s = self.settings
        terms = particle_terms(spectra, ctf, self.coarse, inv_sigma2, s.cc)
        columns = translated_columns(terms, self.coarse.phases(self.coarse_shifts))
        if s.local:
            rotations = prior[:, None] @ self.local_rotations[None]  # (B, J, 3, 3)
            b, j = rotations.shape[:2]
            sections = self.projector.sample(rotations.reshape(-1, 3, 3), self.coarse.k_px)
            scores = scores_per_particle(sections.view(b, j, -1), terms, columns)
            scores = scores + self._log_prior(self.local_rotations)[None, :, None]
            rot_index, shift_index = _top(scores, 1)  # the prior's neighbourhood is one basin
            candidates = torch.gather(rotations, 1, rot_index[..., None, None].expand(
                -1, -1, 3, 3))
        else:
            rot_index, shift_index = self._global_top(terms, columns)
            candidates = self.grid[rot_index]
        return candidates, self.coarse_shifts[shift_index]

    def _log_prior(self, change: Tensor) -> Tensor:
        """Log Gaussian prior ``-d^2 / (2 sigma_ang^2)`` ``(...)`` of rotations ``change``
        ``(..., 3, 3)`` (relative to the prior pose) by their angle d (degrees); zeros without
        ``sigma_ang`` or outside local searches."""
        s = self.settings
        if not s.local or not s.sigma_ang_deg or s.cc:
            return change.new_zeros(change.shape[:-2])
        cos = ((change.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
        return -0.5 * (torch.rad2deg(torch.arccos(cos)) / s.sigma_ang_deg) ** 2

    def _global_top(self, terms: ParticleTerms, columns: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k (rotation, translation) of every particle over the shared grid, in chunks of
        rotations (their sections cached or sampled now)."""
        b, t = columns.shape[:2]
        n_rot = self.grid.shape[0]
        chunk = self.rotation_chunk(b, t)
        best_scores, best_flat = None, None
        for start in range(0, n_rot, chunk):
            if self.grid_sections is not None:
                sections = self.grid_sections[start:start + chunk]
            else:
                sections = self.projector.sample(self.grid[start:start + chunk],
                                                 self.coarse.k_px)
            scores = scores_shared(sections, terms, columns, sections.abs().square())
            del sections
            values, flat = scores.reshape(b, -1).topk(min(self.settings.top_k,
                                                          scores[0].numel()), dim=1)
            del scores
            flat = flat + start * t  # flat index over (rotation, translation)
            if best_scores is None:
                best_scores, best_flat = values, flat
            else:
                merged = torch.cat([best_scores, values], 1)
                keep = merged.topk(min(self.settings.top_k, merged.shape[1]), dim=1).indices
                best_scores = torch.gather(merged, 1, keep)
                best_flat = torch.gather(torch.cat([best_flat, flat], 1), 1, keep)
        return best_flat // t, best_flat % t

    def _fine(self, spectra: Tensor, ctf: Tensor | None, inv_sigma2: Tensor | None,
              candidates: Tensor, centres: Tensor, prior: Tensor | None = None) -> SearchResult:
        """Oversampled search around ``candidates`` ``(B, K, 3, 3)`` and ``centres``
        ``(B, K, 3)`` (px) at the fine frequencies (with the local prior around ``prior``)."""
        s = self.settings
        b, k = candidates.shape[:2]
        terms = particle_terms(spectra, ctf, self.fine, inv_sigma2, s.cc)
        y = (terms.y[:, None, :] * self.fine.phases(centres)).reshape(b * k, -1)
        rows = ParticleTerms(y, terms.c2w.repeat_interleave(k, 0),
                             terms.x2w.repeat_interleave(k, 0), s.cc)
        columns = translated_columns(rows, self.fine.phases(self.fine_shifts))
        rotations = candidates.reshape(-1, 1, 3, 3) @ self.fine_rotations[None]  # (BK, J, 3, 3)
        j = rotations.shape[1]
        sections = self.projector.sample(rotations.reshape(-1, 3, 3), self.fine.k_px)
        sections = sections.view(b * k, j, -1)
        scores = scores_per_particle(sections, rows, columns)  # (BK, J, T)
        if prior is not None and s.local and s.sigma_ang_deg:
            change = prior.repeat_interleave(k, 0)[:, None].transpose(-1, -2) @ rotations
            scores = scores + self._log_prior(change)[..., None]
        t = scores.shape[2]
        flat_scores = scores.reshape(b, -1)  # (B, K * J * T)
        m = min(1 if s.cc else s.significant, flat_scores.shape[1])
        values, index = flat_scores.topk(m, dim=1)  # (B, M), best first
        best = values[:, 0]
        if s.cc:
            log_evidence, max_probability = best, torch.ones_like(best)
            weights = torch.ones_like(values)
        else:
            log_evidence = torch.logsumexp(flat_scores.double(), dim=1).to(best.dtype)
            max_probability = torch.exp(best - log_evidence)
            weights = _significant(values)
        cand, rest = index // (j * t), index % (j * t)
        rot, shift = rest // t, rest % t
        particle = torch.arange(b, device=index.device)[:, None].expand(-1, m)
        row = particle * k + cand
        matrices = rotations[row, rot]  # (B, M, 3, 3)
        shifts = centres[particle, cand] + self.fine_shifts[shift]  # (B, M, 3)
        return SearchResult(matrices[:, 0], shifts[:, 0], best, log_evidence, max_probability,
                            sections[row[:, 0], rot[:, 0]], matrices, shifts, weights)


def _significant(log_scores: Tensor, mass: float = 0.99) -> Tensor:
    """Posterior weights of the ``M`` best hypotheses ``(B, M)`` (sorted, best first),
    renormalised over the smallest prefix that holds ``mass`` of their probability."""
    p = torch.softmax(log_scores.double(), dim=1)
    before = torch.cumsum(p, dim=1) - p
    p = torch.where(before < mass, p, torch.zeros_like(p))
    return (p / p.sum(1, keepdim=True)).to(log_scores.dtype)


def _top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices ``(rotation, translation)`` ``(B, k)`` of the k best of ``(B, R, T)`` scores."""
    b, _, t = scores.shape
    flat = scores.reshape(b, -1).topk(min(k, scores[0].numel()), dim=1).indices
    return flat // t, flat % t


def exhaustive_search(projector: Projector, rotations: Tensor, shifts_px: Tensor,
                      spectra: Tensor, ctf: Tensor | None, freqs: Frequencies,
                      inv_sigma2: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Best (rotation index, translation index) ``(B,)`` over every hypothesis of the grids
    ``rotations`` ``(R, 3, 3)`` x ``shifts_px`` ``(T, 3)`` (the test oracle of the search)."""
    terms = particle_terms(spectra, ctf, freqs, inv_sigma2)
    columns = translated_columns(terms, freqs.phases(shifts_px))
    scores = scores_shared(projector.sample(rotations, freqs.k_px), terms, columns)
    return _top(scores, 1)
