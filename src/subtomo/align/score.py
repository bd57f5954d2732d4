"""Scores of (rotation, translation) hypotheses as dense matrix products.

Model (RELION's, per particle ``i``): the centred half spectrum ``X_i`` of a subtomogram is
``C_i(k) V(A^T k) e^{-2 pi i k.t}`` plus Gaussian noise of variance ``sigma^2(|k|)`` per
Fourier coefficient, with ``C_i`` its 3D CTF, ``A`` the RELION rotation and ``t`` (px) the
translation that centres it. Up to a term that depends on neither ``A`` nor ``t``, the
log-likelihood of hypothesis ``(A, t)`` is

    L_i(A, t) = Re sum_k w(k) C_i(k) conj(P_A(k)) X_i(k) e^{-2 pi i k.t}
                - 1/2 sum_k w(k) C_i(k)^2 |P_A(k)|^2,

with ``P_A(k) = V(A^T k)`` and ``w(k) = h(k) / sigma^2(|k|)`` (``h``: the Hermitian
multiplicity of a half-spectrum coefficient, 1 on the ``x = 0`` plane, else 2), summed over
the frequencies ``|k| D <= r`` of the current resolution limit. Written on real views
(``re, im`` interleaved, length ``2n``), both sums are matrix products:

- cross term: ``[P_A]`` (rotations x 2n) @ ``[w C_i X_i e^{-2 pi i k.t}]^T`` (2n x particles
  * translations), since ``Re(conj(p) z) = p_re z_re + p_im z_im``;
- power term: ``|P_A|^2`` (rotations x n) @ ``[w C_i^2]^T`` (n x particles).

Translations enter as phase-shifted copies of each particle's column. When the rotations
are shared by a batch (a global grid) these are single GEMMs; when every particle has its own
rotations (local searches, oversampling) they are batched GEMMs (``bmm``). The
cross-correlation score (RELION's ``--firstiter_cc``) is the cross term over the square root
of the power term, with ``w = h``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from subtomo.fourier.grid import hermitian_weights
from subtomo.fourier.projector import selected_frequencies


@dataclass
class Frequencies:
    """Half-spectrum coefficients used in a score, ``|k| D <= radius_px``.

    ``flat``: indices into the flattened ``(D, D, D // 2 + 1)`` grid; ``k_px``: ``(n, 3)``
    frequencies ``(x, y, z)`` in Fourier pixels; ``shell``: ``round(|k| D)``;
    ``multiplicity``: Hermitian multiplicity ``h``.
    """

    box: int
    radius_px: float
    flat: Tensor
    k_px: Tensor
    shell: Tensor
    multiplicity: Tensor

    @classmethod
    def within(cls, box: int, radius_px: float, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Frequencies:
        device = torch.device(device)
        flat, k = selected_frequencies(box, radius_px, device)
        shell = k.norm(dim=1).round().long()
        mult = hermitian_weights(box, device).to(dtype)[k[:, 0].long()]
        return cls(box, float(radius_px), flat, k.to(dtype), shell, mult)

    def __len__(self) -> int:
        return int(self.flat.numel())

    def phases(self, shifts_px: Tensor) -> Tensor:
        """``e^{-2 pi i k.t}`` for translations ``shifts_px`` ``(..., 3)``: ``(..., n)``."""
        cycles = torch.matmul(shifts_px.to(torch.float64), self.k_px.to(torch.float64).T)
        cycles = (cycles / self.box) % 1.0
        phase = (-2.0 * math.pi * cycles).to(self.k_px.dtype)
        return torch.polar(torch.ones_like(phase), phase)


@dataclass
class ParticleTerms:
    """Per-particle factors of the score on a :class:`Frequencies` selection.

    ``y = w C X`` (complex ``(B, n)``), ``c2w = w C^2`` (``(B, n)``), ``x2w = sum w |X|^2``
    (``(B,)``, the hypothesis-independent part of the log-likelihood).
    """

    y: Tensor
    c2w: Tensor
    x2w: Tensor
    cc: bool


def particle_terms(
    spectra: Tensor, ctf: Tensor | None, freqs: Frequencies, inv_sigma2: Tensor | None,
    cc: bool = False,
) -> ParticleTerms:
    """Score factors of particles ``spectra`` ``(B, D, D, D // 2 + 1)`` with CTF weights
    ``ctf`` (same shape, or ``None``: all ones) and noise ``1 / sigma^2`` per shell
    (``inv_sigma2``, ``(D // 2 + 1,)``; ``None`` or ``cc``: 1)."""
    b = spectra.shape[0]
    flat = freqs.flat.to(spectra.device)
    x = spectra.reshape(b, -1).index_select(1, flat)
    w = freqs.multiplicity.to(spectra.device)
    if inv_sigma2 is not None and not cc:
        w = w * inv_sigma2.to(device=spectra.device, dtype=w.dtype)[freqs.shell.to(w.device)]
    if ctf is None:
        c = torch.ones_like(x.real)
    else:
        c = ctf.reshape(b, -1).index_select(1, flat.to(ctf.device)).to(x.real.dtype)
    wc = w * c
    return ParticleTerms(wc * x, wc * c, (w * (x.real**2 + x.imag**2)).sum(1), cc)


def _as_real(z: Tensor) -> Tensor:
    """Complex ``(..., n)`` as real ``(..., 2n)`` (re, im interleaved; a view when possible)."""
    return torch.view_as_real(z.contiguous()).flatten(-2)


def translated_columns(terms: ParticleTerms, phases: Tensor) -> Tensor:
    """Real ``(B, T, 2n)`` columns ``w C X e^{-2 pi i k.t}`` for translation phases
    ``(T, n)`` shared by the batch, or ``(B, T, n)`` per particle."""
    return _as_real(terms.y[:, None, :] * phases)


def scores_shared(projections: Tensor, terms: ParticleTerms, columns: Tensor,
                  section_power: Tensor | None = None) -> Tensor:
    """Scores ``(B, R, T)`` of rotations shared by the batch.

    ``projections``: complex ``(R, n)`` reference sections ``P_A``; ``columns``: from
    :func:`translated_columns`, ``(B, T, 2n)``; ``section_power``: ``|P_A|^2`` if cached.
    One GEMM for the cross term, one for the power.
    """
    b, t, _ = columns.shape
    if section_power is None:
        section_power = projections.abs().square()
    cross = torch.matmul(_as_real(projections), columns.reshape(b * t, -1).T)  # (R, B*T)
    power = torch.matmul(section_power, terms.c2w.T)  # (R, B)
    cross = cross.view(-1, b, t).permute(1, 0, 2)
    power = power.T[:, :, None]
    if terms.cc:
        return cross / power.clamp(min=1e-30).sqrt()
    return cross - 0.5 * power


def scores_per_particle(projections: Tensor, terms: ParticleTerms, columns: Tensor) -> Tensor:
    """Scores ``(B, J, T)`` when every particle has its own ``J`` rotations.

    ``projections``: complex ``(B, J, n)``; ``columns``: ``(B, T, 2n)``. Batched GEMMs.
    """
    cross = torch.bmm(_as_real(projections), columns.transpose(1, 2))  # (B, J, T)
    power = torch.bmm(projections.real**2 + projections.imag**2, terms.c2w[:, :, None])
    if terms.cc:
        return cross / power.clamp(min=1e-30).sqrt()
    return cross - 0.5 * power


def exhaustive_scores(
    projections: Tensor, spectra: Tensor, ctf: Tensor | None, freqs: Frequencies,
    shifts_px: Tensor, inv_sigma2: Tensor | None = None,
) -> Tensor:
    """Test oracle: ``L_i(A, t)`` ``(B, R, T)`` by direct sums over frequencies, one
    hypothesis at a time, from ``-1/2 sum w |X e^{-2 pi i k.t} - C P|^2 + 1/2 sum w |X|^2``."""
    b = spectra.shape[0]
    flat = freqs.flat
    w = freqs.multiplicity.double()
    if inv_sigma2 is not None:
        w = w * inv_sigma2.double()[freqs.shell]
    out = torch.empty(b, projections.shape[0], shifts_px.shape[0], dtype=torch.float64)
    for i in range(b):
        x = spectra[i].reshape(-1)[flat].to(torch.complex128)
        c = torch.ones_like(w) if ctf is None else ctf[i].reshape(-1)[flat].double()
        for r in range(projections.shape[0]):
            p = projections[r].to(torch.complex128)
            for t in range(shifts_px.shape[0]):
                phase = freqs.phases(shifts_px[t][None])[0].to(torch.complex128)
                residual = x * phase - c * p
                out[i, r, t] = (-0.5 * (w * residual.abs() ** 2).sum()
                                + 0.5 * (w * x.abs() ** 2).sum())
    return out


def _residuals(spectra: Tensor, ctf: Tensor | None, freqs: Frequencies, shifts_px: Tensor,
               projections: Tensor) -> tuple[Tensor, Tensor]:
    """``(X e^{-2 pi i k.t} - C P, C)`` on ``freqs`` at each particle's hypothesis
    (``shifts_px`` ``(B, 3)``, ``projections`` ``(B, n)``); ``C`` is 1 without ``ctf``."""
    b = spectra.shape[0]
    flat = freqs.flat.to(spectra.device)
    x = spectra.reshape(b, -1).index_select(1, flat) * freqs.phases(shifts_px)
    if ctf is None:
        c = torch.ones_like(x.real)
    else:
        c = ctf.reshape(b, -1).index_select(1, flat.to(ctf.device)).to(x.real.dtype)
    return x - c * projections, c


def noise_power(spectra: Tensor, ctf: Tensor | None, freqs: Frequencies, shifts_px: Tensor,
                projections: Tensor, n_shells: int) -> tuple[Tensor, Tensor]:
    """Per-shell sums of ``h |X e^{-2 pi i k.t} - C P|^2`` over the coefficients a particle
    measured (``C != 0``; all when ``ctf`` is ``None``) and of their multiplicity ``h``:
    ``(sums, counts)`` float64 ``(n_shells,)``, so ``sigma^2 = sums / counts``.

    ``shifts_px`` ``(B, 3)`` and ``projections`` ``(B, n)``: each particle's best hypothesis.
    """
    residual, c = _residuals(spectra, ctf, freqs, shifts_px, projections)
    h = freqs.multiplicity.to(c.device) * (c != 0)
    power = (h * (residual.real**2 + residual.imag**2)).sum(0).double()
    shells = freqs.shell.to(c.device)
    sums = torch.zeros(n_shells, dtype=torch.float64, device=c.device).index_add_(0, shells, power)
    counts = torch.zeros_like(sums).index_add_(0, shells, h.sum(0).double())
    return sums, counts


def residual_power(spectra: Tensor, ctf: Tensor | None, freqs: Frequencies, shifts_px: Tensor,
                   projections: Tensor, inv_sigma2: Tensor, n_shells: int) -> Tensor:
    """Per-shell sums of ``w C^2 |X e^{-2 pi i k.t} - C P|^2`` (``(B, n_shells)``, float64)
    at each particle's hypothesis (``shifts_px`` ``(B, 3)``, ``projections`` ``(B, n)``): a
    particle's share ``C (X - C P) / D`` of a reference it is part of raises its score by
    this over ``D`` (see :func:`subtomo.refine.expectation._own_share`)."""
    residual, c = _residuals(spectra, ctf, freqs, shifts_px, projections)
    shells = freqs.shell.to(c.device)
    w = freqs.multiplicity.to(c.device) * inv_sigma2.to(c.device)[shells]
    power = (w * c**2 * (residual.real**2 + residual.imag**2)).double()
    return torch.zeros(c.shape[0], n_shells, dtype=torch.float64, device=c.device).scatter_add_(
        1, shells.expand(c.shape[0], -1), power)
