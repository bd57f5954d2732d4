"""Translations as Fourier phase factors on the half-spectrum grid.

Translating real-space content by ``s = (sx, sy, sz)`` pixels, ``v'(r) = v(r - s)``,
multiplies its spectrum by ``exp(-2 pi i k . s)`` with ``k`` in cycles/pixel ordered
``(x, y, z)`` (:func:`subtomo.fourier.grid.rfft_freqs`). For integer shifts this is exactly
``torch.roll(v, shifts=(sz, sy, sx), dims=(-3, -2, -1))`` (periodic box). Any centring of the
spectrum works, since the factor multiplies it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from subtomo.fourier.grid import rfft_freqs

__all__ = ["phase_factors", "phase_shift", "shift_spectra_", "shift_spectra_2d_"]


def phase_factors(k: Tensor, shifts_px: Tensor) -> Tensor:
    """``exp(-2 pi i k s)`` for frequencies ``k (n,)`` (cycles/px) and shifts ``s (...)`` (px) on
    one axis: complex128 ``(..., n)``; ``k s`` is reduced modulo 1 before ``2 pi``."""
    cycles = shifts_px[..., None] * k
    cycles = cycles - torch.round(cycles)
    phase = -2.0 * math.pi * cycles
    return torch.polar(torch.ones_like(phase), phase)


def phase_shift(
    box: int, shifts_px: Tensor, device: torch.device | str | None = None
) -> Tensor:
    """Phase factors ``exp(-2 pi i k . s)``: complex ``(..., D, D, D // 2 + 1)``.

    ``shifts_px``: ``(..., 3)`` shifts ``(x, y, z)`` in pixels (of the ``D`` box). complex64
    for float32 (or integer) shifts, complex128 for float64. The phase ``k . s`` is reduced
    modulo 1 in float64 before multiplying by ``2 pi``, so large shifts stay accurate.
    """
    shifts = torch.as_tensor(shifts_px, device=device)
    if device is None:
        device = shifts.device
    if shifts.shape[-1] != 3:
        raise ValueError(f"expected shifts of shape (..., 3), got {tuple(shifts.shape)}")
    out_real = torch.float64 if shifts.dtype == torch.float64 else torch.float32
    k = rfft_freqs(box, device=device, dtype=torch.float64)  # (D, D, H, 3)
    lead = shifts.shape[:-1]
    s = shifts.to(device=device, dtype=torch.float64).reshape(-1, 3)
    cycles = torch.einsum("zyxc,bc->bzyx", k, s)
    cycles = cycles - torch.round(cycles)
    phase = (-2.0 * math.pi * cycles).to(out_real)
    out = torch.polar(torch.ones_like(phase), phase)
    return out.reshape(*lead, *k.shape[:-1])


def shift_spectra_(spectra: Tensor, shifts_px: Tensor) -> Tensor:
    """Multiply half spectra ``(B, D, D, D // 2 + 1)`` in place by ``exp(-2 pi i k . s)`` for
    shifts ``(B, 3)`` (``(x, y, z)``, px): the same as ``spectra * phase_shift(D, s)``, as
    three separable factors ``(B, D, D, 1)`` and ``(B, 1, 1, D // 2 + 1)`` with float64
    phases reduced modulo 1 (no full-grid phase volume). Returns ``spectra``."""
    box = spectra.shape[-2]
    device = spectra.device
    s = torch.as_tensor(shifts_px).to(device=device, dtype=torch.float64).reshape(-1, 3)
    full = torch.fft.fftfreq(box, device=device, dtype=torch.float64)
    half = torch.fft.rfftfreq(box, device=device, dtype=torch.float64)
    fz, fy, fx = (phase_factors(k, shift).to(spectra.dtype)
                  for k, shift in ((full, s[:, 2]), (full, s[:, 1]), (half, s[:, 0])))
    spectra *= (fz[:, :, None] * fy[:, None, :])[..., None]
    spectra *= fx[:, None, None, :]
    return spectra


def shift_spectra_2d_(spectra: Tensor, shifts_px: Tensor, scale: float = 1.0,
                      width_px: int | None = None) -> Tensor:
    """Multiply ``rfft2`` spectra ``(..., H, W // 2 + 1)`` of ``(H, W)`` images (``width_px``
    ``W``, default ``H``) in place by ``scale · exp(-2 pi i k . s)`` for shifts ``(..., 2)``
    (``(x, y)``, px, float64), as the separable factors ``(..., H, 1)`` (with ``scale``) and
    ``(..., 1, W // 2 + 1)`` (:func:`phase_factors`). Returns ``spectra``."""
    h = spectra.shape[-2]
    device = spectra.device
    ky = torch.fft.fftfreq(h, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(h if width_px is None else width_px, device=device,
                            dtype=torch.float64)
    spectra *= (phase_factors(ky, shifts_px[..., 1]) * scale).to(spectra.dtype)[..., :, None]
    spectra *= phase_factors(kx, shifts_px[..., 0]).to(spectra.dtype)[..., None, :]
    return spectra
