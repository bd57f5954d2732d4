"""Particle series (2D stacks) for the refinement engine: one batch of stacks becomes whitened
pseudo-subtomograms (:mod:`.batch` has the model).

Per tilt series, a :class:`subtomo.ctf.slice_gather.SliceGather` without normalisation maps the
premultiplied crop spectra ``Y_t`` (stacks that are not premultiplied,
``rlnCtfDataAreCtfPremultiplied 0``, are multiplied by ``c_t`` first) to
``B(k) = Σ_t τ_t(k) Y_t(k·u_t, k·v_t)`` (bilinear in the plane, the tent ``τ`` across it)
and grids ``W(k) = Σ_t τ_t(k) c_t(k)²`` with each particle's defocus at its depth in each
tilt, its dose filter and its visible tilts. The engine then sees
``X = B / √W`` and ``C = √W`` (0 where ``W = 0``): ``C X = B``, ``C² = W``, and the noise of ``X``
has at most the crops' variance, since ``Var B = Σ τ² c² σ² ≤ W σ²``. Scores are then the sums
over the tilts of the 2D log-likelihoods (tested), and maps insert ``B`` with weights ``W``. The
operators are built once per tilt series and kept (a few per job). Translations
(``rlnOrigin``) shift ``B``, as subtomograms, at read time.

Why this and not the slices inserted one by one (direct insertion, as
``relion_tomo_reconstruct_particle`` and ``subtomo reconstruct-particle`` do): the true-pose map
from these pseudo-subtomograms is closer to the truth than direct insertion and than extract-3D
(``bench/bench_series.py``), and the M step inserts one 3D spectrum instead of every tilt's
slice, so that a 2D-stack iteration costs what a 3D one does. Zero-padding the crops before the
gather (``pad2d = 2``) makes the in-plane interpolation exact but loses the bilinear kernel's
smoothing of the sparse high-frequency samples (the real-space taper it amounts to), which
costs more than it gives; it is off by default.

The crops are centred on the projection of each particle's coordinate under the geometry they
were cut with (recorded in the set's general block). Geometry refined since (``tomo-align``:
tilt angles and shifts, trajectories) enters the rotations and CTFs, and each crop is
re-centred by a 2D phase shift of ``−(p_now − p_cut)``, the move of the particle's projection
``p = P_t x + m_t`` in that tilt: no re-extraction. 2D image deformations are not yet applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.ctf.slice_gather import SliceGather, padded_spectra
from subtomo.fourier.grid import frequencies_2d
from subtomo.fourier.shift import shift_spectra_, shift_spectra_2d_
from subtomo.io.particle_series import SeriesSource, particle_positions_px, read_stack_spectra
from subtomo.io.particles import ParticleSet
from subtomo.io.tilt_series import TiltSeries
from subtomo.refine.batch import ParticleBatch, whitened

__all__ = ["TiltGroup", "gather_operator", "series_batch", "tilt_groups"]

KEPT_OPERATORS = 4  # gather operators kept per job (one per tilt series)


def gather_operator(source: SeriesSource, ts: TiltSeries, box: int, pixel_size_A: float, pad2d: int,
            device: torch.device) -> SliceGather:
    """The unnormalised gather operator of tilt series ``ts`` (kept on ``source``)."""
    cache = source.operators
    key = (ts.name, box, pixel_size_A, pad2d, str(device), ts.matrices().numpy().tobytes())
    if key not in cache:
        cache[key] = SliceGather(
            box, pixel_size_A, ts.matrices(device=device)[:, :3, :3],
            (pixel_size_A, pixel_size_A), box * pad2d,
            torch.as_tensor(ts.pre_exposure).float(), voltage_kv=ts.voltage_kv,
            cs_mm=ts.cs_mm, amplitude_contrast=ts.amplitude_contrast, normalise=False,
            squared_ctf=True, centre=False)
        while len(cache) > KEPT_OPERATORS:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def _premultiplied(y: Tensor, ts: TiltSeries, positions_px: Tensor, pixel_size_A: float,
                   box: int) -> Tensor:
    """Crop spectra ``Y (N, T, S, S//2+1)`` of stacks that are not CTF-premultiplied
    (``rlnCtfDataAreCtfPremultiplied 0``, as ``subtomo export tomodrgn`` writes them by default)
    × ``CTF × exposure`` at each particle's depth: the premultiplied data the gather expects."""
    freqs = frequencies_2d(box, pixel_size_A, device=y.device, dtype=torch.float32)
    u, v, angle = (x.float()[..., None, None] for x in ts.defocus_at(positions_px))
    c = ctf_2d(freqs, u, v, angle, ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast)
    exposure = torch.as_tensor(ts.pre_exposure, device=y.device, dtype=torch.float32)
    return y * (c * dose_filter(freqs.norm(dim=-1), exposure[:, None, None]))


@dataclass
class TiltGroup:
    """The stacks of the particles ``at`` (indices into a batch) of one tilt series ``ts``:
    crop spectra ``y`` ``(n, T, S, S // 2 + 1)`` (premultiplied, re-centred on the current
    geometry, 0 at invisible tilts), ``visible`` ``(n, T)`` and the defocus ``(u, v, angle)`` Å,
    Å, ° ``(n, T)`` at each particle's depth."""

    ts: TiltSeries
    at: np.ndarray
    y: Tensor
    visible: Tensor
    defocus: tuple[Tensor, Tensor, Tensor]


def tilt_groups(ps: ParticleSet, chunk: np.ndarray, box: int, device: torch.device
                ) -> list[TiltGroup]:
    """The :class:`TiltGroup` of each tilt series of rows ``chunk`` of the series ``ps``."""
    source: SeriesSource = ps.series  # type: ignore[assignment]
    pixel_size_A = float(ps.pixel_size_A()[0])
    names = ps.tomo_names().to_numpy()[chunk]
    raw = np.nan_to_num(ps.optics_column("rlnCtfDataAreCtfPremultiplied"), nan=1.0) == 0
    groups = []
    for name in dict.fromkeys(names):
        at = np.flatnonzero(names == name)
        rows = chunk[at]
        ts = source.tomograms[name]
        y, visible = read_stack_spectra(ps, rows, ts.n_tilts, box)
        y, visible = y.to(device), visible.to(device)
        positions = particle_positions_px(ps, ts, rows, source.motion,
                                          apply_origins=False).to(device)
        if source.cut_with is not None:  # geometry refined since the cut: re-centre the crops
            cut = source.cut_with
            then = particle_positions_px(ps, cut.tomograms[name], rows, cut.motion,
                                         apply_origins=False).to(device)
            moved = ts.project(positions) - cut.tomograms[name].project(then)
            y = shift_spectra_2d_(y, -moved * (ts.pixel_size_A / pixel_size_A))
        if raw[rows].any():
            at_raw = torch.as_tensor(raw[rows], device=device)
            y[at_raw] = _premultiplied(y[at_raw], ts, positions[at_raw], pixel_size_A, box)
        defocus = tuple(x.float() for x in ts.defocus_at(positions))
        groups.append(TiltGroup(ts, at, y, visible, defocus))
    return groups


def series_batch(ps: ParticleSet, chunk: np.ndarray, *, box: int, device: torch.device | str,
                 shifts_px: Tensor | None = None, pad2d: int = 1,
                 groups: list[TiltGroup] | None = None) -> ParticleBatch:
    """The :class:`ParticleBatch` of rows ``chunk`` of the particle series ``ps`` (module
    docstring): whitened pseudo-subtomograms and their CTF volumes ``√W`` (of the stacks
    ``groups`` if already read)."""
    source: SeriesSource = ps.series  # type: ignore[assignment]
    device = torch.device(device)
    pixel_size_A = float(ps.pixel_size_A()[0])
    n, half = len(chunk), box // 2 + 1
    spectra = torch.empty((n, box, box, half), dtype=torch.complex64, device=device)
    weights = torch.empty((n, box, box, half), dtype=torch.float32, device=device)
    for group in groups if groups is not None else tilt_groups(ps, chunk, box, device):
        rows = chunk[group.at]
        u, v, angle = group.defocus
        gather = gather_operator(source, group.ts, box, pixel_size_A, pad2d, device)
        w = gather.ctf((u + v) / 2, astigmatism_A=u - v, astigmatism_angle_deg=angle,
                       active=group.visible).reshape(-1, box, box, half).clamp_min(0.0)
        y = group.y
        padded = padded_spectra(y, box, box * pad2d) if pad2d > 1 else y
        shifts = None if shifts_px is None else torch.as_tensor(shifts_px)[
            torch.as_tensor(rows, dtype=torch.long)].to(device)
        b = gather.half_spectra(padded)
        if shifts is not None:  # content at −origin: translate by +origin, as subtomograms
            b = shift_spectra_(b.contiguous(), shifts)
        index = torch.as_tensor(group.at, device=device)
        spectra[index], weights[index] = whitened(b.to(spectra.dtype), w)
    return ParticleBatch(chunk, spectra, weights)
