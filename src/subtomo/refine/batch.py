"""One batch of particle data as the refinement engine sees it, for subtomograms and for
particle series (2D stacks).

Every consumer (E step, reconstruction, initial model, σ², greyscale, heterogeneity) scores a
particle from its centred 3D half spectrum ``X`` and CTF volume ``C`` (model ``X = C V + n``).
A particle series gives the same pair as a whitened pseudo-subtomogram (:mod:`.series`):
``X = B / √W``, ``C = √W`` with ``B = Σ_t τ Y_t`` and ``W = Σ_t τ c_t²``, so that ``C X = B`` and
``C² = W`` are RELION 4/5's pseudo-subtomogram data and weights: every score term is the sum of
the tilts' 2D terms, and a map inserts ``C X = B`` with weights ``C² = W``. RELION's 3D
pseudo-subtomograms (CTF-premultiplied ``B`` on disk with ``W`` in their weights file) become the
same pair (:func:`whitened`, :mod:`.images`), so every consumer reads both kinds of data through
one piece of maths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from subtomo.fourier.shift import shift_spectra_

__all__ = ["ParticleBatch", "translated_rfft", "whitened"]


@dataclass
class ParticleBatch:
    """One batch: row indices, centred spectra (B, D, D, D//2+1), CTF weights or None."""

    rows: np.ndarray
    spectra: torch.Tensor
    ctf: torch.Tensor | None


def translated_rfft(volumes: torch.Tensor, shifts_px: torch.Tensor | None) -> torch.Tensor:
    """Centred half spectra of ``volumes`` ``(B, D, D, D)``, translated by ``shifts_px``
    ``(B, 3)`` (``(x, y, z)`` px; ``None``: no translation).

    The centring (``ifftshift``, a shift by ``-D // 2``) and the translation are one phase
    factor ``exp(-2 pi i k . (s - D // 2))``, applied in place as separable factors
    (:func:`subtomo.fourier.shift.shift_spectra_`) instead of an ``ifftshift`` copy and a
    full-grid phase volume.
    """
    box = volumes.shape[-1]
    spectra = torch.fft.rfftn(volumes, dim=(-3, -2, -1))
    s = torch.full((volumes.shape[0], 3), -float(box // 2), dtype=torch.float64,
                   device=spectra.device)
    if shifts_px is not None:
        s = s + shifts_px.to(device=spectra.device, dtype=torch.float64)
    return shift_spectra_(spectra, s)


def whitened(numerator: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair ``(X, C)`` of CTF-premultiplied data: ``X = B / √W``, ``C = √W`` (both 0 where
    ``W <= 0``), so that ``C X = B`` and ``C² = W`` (numerator ``B``, weight ``W``, same shape).
    With ``B = Σ c Y`` and ``W = Σ c²`` of images ``Y = c V + n`` (noise σ²), ``X = C V + n'``
    with ``Var n' <= σ²``: the model of an ordinary subtomogram."""
    root = weight.clamp_min(0.0).sqrt()
    spectra = torch.where(root > 0, numerator / root.clamp_min(1e-30), 0.0)
    return spectra.to(numerator.dtype), root
