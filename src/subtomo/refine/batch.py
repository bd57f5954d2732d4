"""One batch of particle data as the refinement engine sees it, for subtomograms and for
particle series (2D stacks).

Every consumer (E step, reconstruction, initial model, σ², greyscale, heterogeneity) scores a
particle from its centred 3D half spectrum ``X`` and CTF volume ``C`` (model ``X = C V + n``).
A particle series gives the same pair as a whitened pseudo-subtomogram (:mod:`.series`):
``X = B / √W``, ``C = √W`` with ``B = Σ_t τ Y_t`` and ``W = Σ_t τ c_t²``, so that ``C X = B`` and
``C² = W`` are RELION 4/5's pseudo-subtomogram data and weights and every score term is the sum
of the tilts' 2D terms. Maps are built from the slices themselves (:class:`SeriesSlices`):
each visible tilt's premultiplied crop inserted at ``R_t A`` with weight ``c_t²``, the direct
insertion of ``relion_tomo_reconstruct_particle``, with no second gridding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from subtomo.fourier.projector import Backprojector
from subtomo.fourier.shift import shift_spectra_, shift_spectra_2d_

__all__ = ["ParticleBatch", "SeriesSlices", "translated_rfft"]


@dataclass
class SeriesSlices:
    """The 2D data of a batch of particle series: premultiplied centred crop spectra ``Y``
    ``(N, T, S, S // 2 + 1)``, ``c = CTF × exposure`` on the same grid, ``visible (N, T)`` and
    the tilt rotations ``frames (N, T, 3, 3)`` (rows: image x, image y, beam)."""

    spectra: Tensor
    ctf: Tensor
    visible: Tensor
    frames: Tensor

    def subset(self, index: Tensor) -> SeriesSlices:
        return SeriesSlices(self.spectra[index], self.ctf[index], self.visible[index],
                            self.frames[index])

    def shifted(self, shifts_px: Tensor) -> Tensor:
        """``Y`` translated as the 3D shift ``s`` ``(N, 3)`` (px, tomogram frame) moves each
        tilt's image: by ``(R_t s)_{x,y}``."""
        s2 = (self.frames @ shifts_px.to(self.frames)[:, None, :, None])[..., :2, 0]
        return shift_spectra_2d_(self.spectra.clone(), s2.to(torch.float64))

    def insert(self, bp: Backprojector, A: Tensor, ops: Tensor, *, shifts_px: Tensor | None = None,
               weights: Tensor | None = None, max_radius_px: float | None = None) -> None:
        """Insert every visible tilt at ``R_t A R_g`` (each symmetry operator ``R_g``): data
        ``+= p Y`` (translated by ``shifts_px``), weights ``+= p c²`` (``p``: ``weights``, 1)."""
        y = self.spectra if shifts_px is None else self.shifted(shifts_px)
        c = self.ctf
        if weights is not None:
            w = weights.to(c.dtype).view(-1, 1, 1, 1)
            y, c = y * w.to(y.dtype), c * w.sqrt()
        sel = self.visible
        if not bool(sel.any()):
            return
        frames = (self.frames @ A.to(self.frames)[:, None])[sel].to(torch.float32)
        y, c = y[sel], c[sel]
        for op in ops:
            bp.insert_slices(y, frames @ op.to(frames), c, max_radius_px, premultiplied=True)


@dataclass
class ParticleBatch:
    """One batch: row indices, centred spectra (B, D, D, D//2+1), CTF weights or None, and for
    particle series their slices."""

    rows: np.ndarray
    spectra: torch.Tensor
    ctf: torch.Tensor | None
    slices: SeriesSlices | None = None


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
