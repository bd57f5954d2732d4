"""Fourier shell correlation and the resolution it implies.

For two maps with spectra ``F`` and ``G`` on a ``D`` box and integer shells
``s = round(|k| D)`` (see :mod:`subtomo.fourier.grid`)::

    FSC(s) = sum_{k in s} Re(F(k) conj G(k)) / sqrt(sum_{k in s} |F(k)|^2 * sum_{k in s} |G(k)|^2)

with sums over the *full* spectrum, evaluated on the half spectrum with Hermitian weights
(1 for the ``x = 0`` column and, for even ``D``, ``x = D / 2``; 2 elsewhere). Shells
``0 .. D // 2`` are returned; shells whose denominator is 0 (e.g. the DC shell of zero-mean
maps) give 0. The real-space centring convention does not matter for the FSC (a common
phase factor cancels), so real volumes are transformed with a plain ``rfftn``.

Shell ``s`` has resolution ``D * pixel_size_A / s`` Å (shell 0: infinity).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from subtomo.fourier.grid import hermitian_weights, rfft_shape, shell_index

__all__ = ["fsc", "resolution_at", "resolution_shell", "shell_resolution_A", "shell_to_A"]


def fsc(a: Tensor, b: Tensor, spectra: bool = False) -> Tensor:
    """FSC between ``a`` and ``b``: ``(..., D // 2 + 1)`` (float32, shells ``0 .. D // 2``).

    ``a``, ``b``: real volumes ``(..., D, D, D)`` or, with ``spectra=True``, half spectra
    ``(..., D, D, D // 2 + 1)`` (any centring, as long as both use the same). Leading batch
    axes broadcast. Sums are accumulated in float64 with one ``index_add_`` per quantity.
    """
    if spectra:
        if a.shape[-1] != a.shape[-3] // 2 + 1:
            raise ValueError(f"not a half spectrum of a cube: {tuple(a.shape)}")
        box = a.shape[-3]
        fa, fb = a, b
    else:
        box = a.shape[-1]
        fa = torch.fft.rfftn(a, dim=(-3, -2, -1))
        fb = torch.fft.rfftn(b, dim=(-3, -2, -1))
    shape = rfft_shape(box)
    if tuple(fa.shape[-3:]) != shape or tuple(fb.shape[-3:]) != shape:
        raise ValueError(f"shape mismatch: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    fa, fb = torch.broadcast_tensors(fa, fb)
    device = fa.device
    nshell = box // 2 + 1
    shells = shell_index(box, device).reshape(-1)
    keep = shells < nshell
    shells = shells[keep]
    w = hermitian_weights(box, device).to(torch.float64).expand(shape).reshape(-1)[keep]
    lead = fa.shape[:-3]
    fa = fa.reshape(-1, math.prod(shape))[:, keep].to(torch.complex128)
    fb = fb.reshape(-1, math.prod(shape))[:, keep].to(torch.complex128)
    quantities = torch.stack(
        [(fa * fb.conj()).real, fa.real**2 + fa.imag**2, fb.real**2 + fb.imag**2], dim=0
    ) * w  # (3, batch, n)
    sums = torch.zeros(3, fa.shape[0], nshell, dtype=torch.float64, device=device)
    sums.index_add_(2, shells, quantities)
    cross, pa, pb = sums.unbind(0)
    denom = torch.sqrt(pa * pb)
    out = torch.where(denom > 0, cross / torch.where(denom > 0, denom, 1.0), 0.0)
    return out.to(torch.float32).reshape(*lead, nshell)


def shell_resolution_A(box: int, pixel_size_A: float) -> Tensor:
    """Resolution (Å) of shells ``0 .. D // 2``: ``D * pixel_size_A / s`` (``inf`` at 0)."""
    s = torch.arange(box // 2 + 1, dtype=torch.float64)
    return (box * pixel_size_A / s).to(torch.float32)


def shell_to_A(shell: float, box: int, pixel_size_A: float) -> float:
    """Resolution (Å) of Fourier shell ``shell`` (may be fractional) of a ``box``-pixel box:
    ``D * pixel_size_A / shell``; ``inf`` for ``shell <= 0``."""
    return math.inf if shell <= 0 else box * pixel_size_A / shell


def resolution_shell(fsc_curve: Tensor, threshold: float = 0.143) -> int:
    """RELION's rule: the last shell before ``fsc_curve`` (shells ``0 .. D // 2``) first drops
    below ``threshold``, searched from shell 1 (compared in float64); the last shell if it
    never does."""
    curve = torch.as_tensor(fsc_curve, dtype=torch.float64).detach().cpu().reshape(-1)
    below = torch.nonzero(curve[1:] < threshold).reshape(-1)
    return int(below[0]) if below.numel() else curve.numel() - 1


def resolution_at(
    fsc_curve: Tensor, box: int, pixel_size_A: float, threshold: float = 0.143
) -> float:
    """Resolution (Å) where ``fsc_curve`` (shells ``0 .. D // 2``) first crosses ``threshold``.

    RELION's rule (:func:`resolution_shell`) with linear interpolation: ``j`` is the last
    shell before the first shell ``i = j + 1 >= 1`` with ``FSC(i) < threshold``. The crossing
    is placed at the fractional shell ``s = j + (FSC(j) - t) / (FSC(j) - FSC(i))`` (in
    ``[j, j + 1)``), and the result is ``D * pixel_size_A / s`` (:func:`shell_to_A`). Without
    interpolation this would be RELION's ``D * pixel_size_A / j``. If the curve never drops
    below the threshold the resolution of the last shell is returned (Nyquist,
    ``2 * pixel_size_A``, for even ``D``); if ``FSC(0)`` is already below it, ``inf``.
    """
    curve = torch.as_tensor(fsc_curve, dtype=torch.float64).detach().cpu().reshape(-1)
    j = resolution_shell(curve, threshold)
    if j == curve.numel() - 1:
        return shell_to_A(j, box, pixel_size_A)
    fj, fi = float(curve[j]), float(curve[j + 1])
    if fj < threshold:
        return math.inf
    return shell_to_A(j + (fj - threshold) / (fj - fi), box, pixel_size_A)
