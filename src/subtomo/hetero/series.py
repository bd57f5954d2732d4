"""2D-stack particle sets (particle series) in ``subtomo hetero train``: the decoder is scored
on the CTF-weighted central slices of each visible tilt, the encoder reads the tilts gathered
into the pseudo-subtomogram.

Notation: particle ``i`` with premultiplied crops ``Y_it = c_it X_it`` of its visible tilts
(:mod:`subtomo.io.particle_series`), ``c_it`` the 2D CTF of tilt ``t`` at the particle's depth
times the dose filter (as :mod:`subtomo.tomo.crops` computes it), ``R_t`` the tilt's frame.

**Decoder likelihood** (``--tilt-loss slices``, the default for these sets). The decoded map at
the particle's pose (``P_i = F[V(z_i)]`` at the loss box ``L``, the B-factor envelope of
:func:`~subtomo.hetero.forward.ctf_filter`) is cut along each tilt's central slice by
:meth:`subtomo.ctf.slice_gather.SliceGather.slices` (the adjoint of the gather that makes the
pseudo-subtomograms, so one interpolation serves both) and compared with the crop::

    res_i = (1 / L²) Σ_t v_it Σ_k₂ h(k₂) |ŝ_i c_it(k₂) P_i(R_tᵀ k₂) − X_it(k₂)|²,  |k₂| ≤ L / 2

with ``X_it = Y_it / c_it`` (the crop before premultiplication; frequencies where ``|c_it| <``
:data:`MIN_CTF` are left out, the 2D origin too), ``v_it`` the visible-frame flag, ``h`` the
Hermitian multiplicity and ``ŝ_i`` the contrast scale of :mod:`subtomo.hetero.run`. ``res_i /
2σ²`` is the sum over tilts of the 2D Gaussian negative log-likelihoods (up to a constant),
``σ²`` the noise per pixel estimated from the residuals against the consensus over the same
coefficients (:func:`terms_count`); the 3D path's ``1 / N_M`` normalisation is kept. A crop
centred at ``−o`` (origin ``o``, 3D px) is shifted by ``(R_t o)_xy`` in each tilt. By the
identity of :mod:`subtomo.ctf.slice_gather` this equals the Fourier-space likelihood of the
pseudo-subtomogram ``Σ_k W |P|² − 2 Re B̄ P`` up to interpolation (tested), but without its
real-space mask and without the tent's smoothing across tilts in ``W``.

**Encoder**: the whitened pseudo-subtomogram ``X = B / √W`` with ``C = √W``
(:func:`subtomo.refine.series.series_batch`), read by the 3D encoder of the 3D path. With the
default ``--ctfalpha 1`` its input is ``C X = B = Σ_t τ_t Y_t``, the back-projection of the
premultiplied visible tilts. Since the slices are ``Gᵀ P`` (normalised), the data enter the
likelihood above only through ``Re Σ_t Ȳ_t (Gᵀ P)_t ≈ Re Σ_k B̄ P``: ``B`` is (up to that
normalisation) a sufficient statistic of the tilts for the decoded map, so the encoder sees what
the decoder is scored on; the pooling over visible tilts is the gather itself (invisible tilts
add 0 to ``B`` and ``W``), one 3D encoder pass whatever the number of tilts. Measured
(bench/RESULTS.md, "hetero on 2D stacks", 120 particles, two classes or a hinge, single runs):
with this encoder the latents of 2D stacks separate the classes as well as those of 3D
subtomograms of the same particles at σ ≤ 120 per tilt pixel (ARI 1.00 and 1.00, 0.93 vs
0.87); they follow the hinge nearly as well at σ 20 and 40 (|ρ| 0.93 vs 0.95, 0.95 vs 0.96; on
another project at σ 40 0.75 vs 0.85), later in training. An encoder of per-tilt 2D encodings
pooled over the visible tilts (tomoDRGN's) was not tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.ctf.slice_gather import SliceGather
from subtomo.fourier.grid import frequencies_2d, hermitian_weights
from subtomo.fourier.shift import shift_spectra_2d_
from subtomo.io.particles import ParticleSet
from subtomo.refine.batch import ParticleBatch
from subtomo.refine.images import _read_ahead
from subtomo.refine.series import TiltGroup, gather_operator, series_batch, tilt_groups

__all__ = ["MIN_CTF", "TiltBatch", "TiltTerms", "select_rows", "slice_residuals",
           "terms_count", "tilt_batches", "tilt_terms"]

MIN_CTF = 0.05  # |c| below this: the crop frequency is left out (< 0.25 % of its signal power)


@dataclass
class TiltTerms:
    """The 2D data of the particles ``at`` (indices into the batch, on the device) of one tilt
    series at the loss box ``L``: ``data`` ``X_it`` and ``ctf`` ``c_it`` ``(n, T, L, L // 2 +
    1)`` (both 0 where left out), ``weight`` ``h`` × the disc ``(L, L // 2 + 1)``, the
    ``gather`` of that tilt series at ``L`` and ``counts`` ``(n,)`` the coefficients compared."""

    at: Tensor
    data: Tensor
    ctf: Tensor
    weight: Tensor
    gather: SliceGather
    counts: Tensor


@dataclass
class TiltBatch(ParticleBatch):
    """A :class:`ParticleBatch` of pseudo-subtomograms (the encoder's input) with the tilts'
    :class:`TiltTerms` (the decoder's likelihood), one per tilt series in the batch."""

    tilts: list[TiltTerms] = field(default_factory=list)


def _crop_2d(spectra: Tensor, size: int) -> Tensor:
    """Fourier crop of centred ``rfft2`` spectra ``(..., S, S // 2 + 1)`` to ``size``."""
    full = spectra.shape[-2]
    if size == full:
        return spectra
    rows = torch.cat([torch.arange((size + 1) // 2), torch.arange(full - size // 2, full)])
    return spectra.index_select(-2, rows.to(spectra.device))[..., : size // 2 + 1]


def tilt_terms(ps: ParticleSet, group: TiltGroup, rows: np.ndarray, box: int, loss_box: int,
               device: torch.device, shifts_px: Tensor | None) -> TiltTerms:
    """The :class:`TiltTerms` of ``group`` (its stacks read at ``box``) at ``loss_box``, the
    crops shifted by the origins ``shifts_px`` (N, 3) px of ``rows``, as the 3D spectra are."""
    L, ts = loss_box, group.ts
    pixel_size_A = float(ps.pixel_size_A()[0]) * box / L
    y = _crop_2d(group.y, L) * (L / box) ** 3  # the 3D spectra's scale at L (crop_spectrum)
    freqs = frequencies_2d(L, pixel_size_A, device=device, dtype=torch.float32)
    u, v, angle = (x[..., None, None] for x in group.defocus)
    exposure = torch.as_tensor(ts.pre_exposure, device=device, dtype=torch.float32)
    c = ctf_2d(freqs, u, v, angle, ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast) * \
        dose_filter(freqs.norm(dim=-1), exposure[:, None, None])
    keep = (c.abs() >= MIN_CTF) & group.visible[..., None, None]
    keep[..., 0, 0] = False  # the crop's mean: an offset, no signal
    c = torch.where(keep, c, 0.0)
    x = torch.where(keep, y / torch.where(keep, c, 1.0), 0.0).to(torch.complex64)
    if shifts_px is not None:  # content at −origin: each crop by the origin's projection
        frames = ts.matrices(device=device)[:, :2, :3].to(torch.float64)  # rows u_t, v_t
        s = torch.as_tensor(shifts_px)[torch.as_tensor(rows, dtype=torch.long)].to(device)
        x = shift_spectra_2d_(x, torch.einsum("tij,nj->nti", frames, s.to(torch.float64)))
    k = freqs.norm(dim=-1) * (L * pixel_size_A)
    weight = hermitian_weights(L, device) * (k <= L / 2)
    gather = gather_operator(ps.series, ts, L, pixel_size_A, 1, device)  # type: ignore[arg-type]
    counts = (keep * weight).sum((1, 2, 3))
    return TiltTerms(torch.as_tensor(group.at, device=device), x, c, weight, gather, counts)


def tilt_batches(ps: ParticleSet, rows: np.ndarray, *, box: int, loss_box: int,
                 batch_size: int, device: torch.device, shifts_px: Tensor | None = None):
    """:class:`TiltBatch` es of ``rows`` of the series ``ps``, the stacks read once per batch
    (one batch read ahead, as :func:`subtomo.refine.images.iterate_batches`)."""
    def load(chunk: np.ndarray) -> TiltBatch:
        groups = tilt_groups(ps, chunk, box, device)
        batch = series_batch(ps, chunk, box=box, device=device, shifts_px=shifts_px,
                             groups=groups)
        terms = [tilt_terms(ps, g, chunk[g.at], box, loss_box, device, shifts_px)
                 for g in groups]
        return TiltBatch(batch.rows, batch.spectra, batch.ctf, terms)
    return _read_ahead(load, rows, batch_size)


def slice_residuals(spectra: Tensor, scale: Tensor, batch: TiltBatch) -> Tensor:
    """``res_i`` (B,) of the module docstring for the model spectra ``spectra`` ``(B, L, L, L //
    2 + 1)`` (centred, at each particle's pose, envelope applied) and contrast scales ``scale``
    (B,); one sparse product per tilt series, no loop over tilts."""
    L = spectra.shape[-2]
    res = spectra.real.new_zeros(len(spectra))
    for term in batch.tilts:
        slices = term.gather.slices(spectra[term.at])  # (n, T, L, L // 2 + 1)
        diff = scale[term.at, None, None, None] * term.ctf * slices - term.data
        per = (diff.real ** 2 + diff.imag ** 2) * term.weight
        res = res.index_add(0, term.at, per.sum((1, 2, 3)) / L ** 2)
    return res


def terms_count(batch: ParticleBatch, mask_voxels: float) -> float:
    """The number of terms of the batch's residuals (σ² is their sum over this): the compared
    crop coefficients of a :class:`TiltBatch`, the mask's voxels per subtomogram otherwise."""
    if isinstance(batch, TiltBatch):
        return float(sum(float(t.counts.sum()) for t in batch.tilts))
    return mask_voxels * len(batch.rows)


def select_rows(batch: ParticleBatch, sel: Tensor) -> ParticleBatch:
    """The particles ``sel`` (indices into the batch) of ``batch``, tilts included."""
    ctf = None if batch.ctf is None else batch.ctf[sel]
    rows = batch.rows[sel.cpu().numpy()]
    if not isinstance(batch, TiltBatch):
        return ParticleBatch(rows, batch.spectra[sel], ctf)
    device = batch.spectra.device
    new = torch.full((len(batch.rows),), -1, dtype=torch.long, device=device)
    new[sel.to(device)] = torch.arange(len(sel), device=device)
    terms = []
    for term in batch.tilts:
        keep = new[term.at] >= 0
        if bool(keep.any()):
            terms.append(replace(term, at=new[term.at][keep], data=term.data[keep],
                                 ctf=term.ctf[keep], counts=term.counts[keep]))
    return TiltBatch(rows, batch.spectra[sel], ctf, terms)
