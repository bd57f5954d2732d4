"""Fourier grids, shells and centred transforms for cubic volumes (half spectra, ``rfftn``).

Conventions (binding for the whole package):

* A volume is a real ``(z, y, x)`` tensor on a cubic box of ``D`` voxels per side (``D`` even
  or odd). Its real-space centre is voxel ``D // 2`` on every axis (RELION's origin).
* The *centred spectrum* of ``v`` is ``V = rfftn(ifftshift(v))`` over the last three axes,
  shape ``(..., D, D, D // 2 + 1)``, zero frequency at index 0 on every axis. Because of the
  ``ifftshift``, ``V(k) = sum_r v(r) exp(-2 pi i k . r)`` with ``r`` measured from the centre
  voxel, so a centred, real, point-symmetric object has a real spectrum.
* Frequencies are in cycles per pixel. As vectors they are ordered ``(x, y, z)``: axis 0 of
  the array is ``z`` (``fftfreq(D)``), axis 1 is ``y`` (``fftfreq(D)``), axis 2 is ``x``
  (``rfftfreq(D)``, non-negative). For even ``D`` the Nyquist row of ``z``/``y`` is at
  ``-0.5``; the ``x`` column ``D / 2`` is at ``+0.5``.
* Shells are integer radii ``round(|k| D)`` (RELION's ``ROUND(sqrt(kp^2 + ip^2 + jp^2))``);
  shell ``s`` has resolution ``D * pixel_size / s``. Shells ``0 .. D // 2`` are the ones
  inside the Nyquist sphere; corner voxels have larger indices and are ignored by averages.
* Half-spectrum sums: the column ``x = 0`` (and, for even ``D``, ``x = D / 2``) holds
  coefficients that appear once in the full spectrum; every other column stands for itself
  and its Hermitian mate ``F(-k) = conj(F(k))``. Multiplying by :func:`hermitian_weights`
  (1 or 2) makes half-spectrum sums of ``|F|^2`` or ``Re(F conj G)`` equal to full-spectrum
  sums.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "centred_irfft",
    "centred_rfft",
    "crop_spectrum",
    "frequencies_2d",
    "hermitian_weights",
    "lowpass",
    "lowpass_map",
    "lowpass_mask",
    "pad_spectrum",
    "radial_average",
    "resample_map",
    "rfft_freqs",
    "rfft_shape",
    "shell_index",
    "shell_radius_px",
    "soft_sphere",
]

_DIMS = (-3, -2, -1)


def rfft_shape(box: int) -> tuple[int, int, int]:
    """Shape ``(D, D, D // 2 + 1)`` of the half spectrum of a ``D``-voxel cube."""
    return (box, box, box // 2 + 1)


def _int_freqs(box: int, device: torch.device | str | None) -> tuple[Tensor, Tensor, Tensor]:
    """Integer frequency indices ``(iz, iy, ix)`` (``k * D``), broadcastable to the half grid."""
    full = torch.fft.fftfreq(box, d=1.0 / box, device=device, dtype=torch.float64).round().long()
    half = torch.arange(box // 2 + 1, device=device)
    return full.view(-1, 1, 1), full.view(1, -1, 1), half.view(1, 1, -1)


def rfft_freqs(
    box: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Frequencies (cycles/px) of the half grid, ``(D, D, D // 2 + 1, 3)`` ordered ``(x, y, z)``."""
    iz, iy, ix = _int_freqs(box, device)
    shape = rfft_shape(box)
    k = torch.stack(
        [ix.expand(shape), iy.expand(shape), iz.expand(shape)], dim=-1
    ).to(dtype)
    return k / box


def frequencies_2d(shape_px: int | tuple[int, int],
                   pixel_size_A: float | tuple[float, float] = 1.0,
                   device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """Frequencies ``(H, W // 2 + 1, 2)`` ordered ``(kx, ky)`` of the ``rfft2`` of ``(H, W)``
    images (``shape_px``: ``(H, W)``, or ``S`` for ``S × S``): ``ky = fftfreq(H, py)``,
    ``kx = rfftfreq(W, px)``, in 1/Å for ``pixel_size_A = (px, py)`` (or one size for both),
    cycles/pixel for the default 1."""
    h, w = (shape_px, shape_px) if isinstance(shape_px, int) else shape_px
    px, py = pixel_size_A if isinstance(pixel_size_A, tuple | list) else (pixel_size_A,) * 2
    ky = torch.fft.fftfreq(h, py, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(w, px, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def shell_radius_px(
    box: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Continuous radius ``|k| * D`` (Fourier pixels of the ``D`` box) on the half grid."""
    iz, iy, ix = _int_freqs(box, device)
    r2 = iz * iz + iy * iy + ix * ix
    return r2.to(torch.float64).sqrt().to(dtype)


def shell_index(box: int, device: torch.device | str | None = None) -> Tensor:
    """Integer shell ``round(|k| * D)`` of every half-spectrum voxel: long ``(D, D, D // 2 + 1)``.

    Computed from exact integer squared radii in float64, so it is exact (no ties exist:
    ``sqrt(n)`` is never a half-integer for integer ``n``).
    """
    iz, iy, ix = _int_freqs(box, device)
    r2 = iz * iz + iy * iy + ix * ix
    return r2.to(torch.float64).sqrt().round().long()


def hermitian_weights(box: int, device: torch.device | str | None = None) -> Tensor:
    """Multiplicity of each half-spectrum column in the full spectrum: ``(D // 2 + 1,)``.

    1 for ``x = 0`` and (even ``D``) ``x = D / 2``, 2 otherwise. Broadcasts against
    ``(..., D, D, D // 2 + 1)`` arrays (last axis).
    """
    w = torch.full((box // 2 + 1,), 2.0, device=device)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def radial_average(values: Tensor, box: int) -> Tensor:
    """Average of half-spectrum ``values (..., D, D, D // 2 + 1)`` over shells ``0 .. D // 2``.

    Hermitian-weighted, so this equals the average over the full spectrum. Real or complex
    input; returns ``(..., D // 2 + 1)`` with the input's dtype. Corner voxels (shell
    ``> D // 2``) are ignored.
    """
    shape = rfft_shape(box)
    if tuple(values.shape[-3:]) != shape:
        raise ValueError(f"expected (..., {shape}), got {tuple(values.shape)}")
    device = values.device
    nshell = box // 2 + 1
    shells = shell_index(box, device).reshape(-1)
    w = hermitian_weights(box, device).expand(shape).reshape(-1)
    keep = shells < nshell
    shells, w = shells[keep], w[keep]
    lead = values.shape[:-3]
    flat = values.reshape(-1, math.prod(shape))[:, keep]
    acc_dtype = torch.complex128 if values.is_complex() else torch.float64
    sums = torch.zeros(flat.shape[0], nshell, dtype=acc_dtype, device=device)
    sums.index_add_(1, shells, flat.to(acc_dtype) * w.to(torch.float64))
    counts = torch.zeros(nshell, dtype=torch.float64, device=device)
    counts.index_add_(0, shells, w.to(torch.float64))
    return (sums / counts).to(values.dtype).reshape(*lead, nshell)


def _half_box_sign(box: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(-1)^(kz + ky + kx)`` on the half grid: the spectrum's factor of a shift by ``D / 2``
    voxels on every axis, i.e. of ``ifftshift`` for an even box ``D``."""
    k = 1 - 2 * (torch.arange(box, device=device) % 2)
    return (k[:, None, None] * k[None, :, None] * k[None, None, : box // 2 + 1]).to(dtype)


def centred_rfft(vol: Tensor) -> Tensor:
    """Centred half spectrum ``rfftn(ifftshift(vol))`` over the last three axes (for an even
    box the shift is a sign pattern on the spectrum: no copy of the volume)."""
    box = vol.shape[-1]
    if box % 2:
        return torch.fft.rfftn(torch.fft.ifftshift(vol, dim=_DIMS), dim=_DIMS)
    return torch.fft.rfftn(vol, dim=_DIMS) * _half_box_sign(box, vol.device, vol.dtype)


def centred_irfft(spec: Tensor, box: int) -> Tensor:
    """Inverse of :func:`centred_rfft`: ``fftshift(irfftn(spec, s=(D, D, D)))``."""
    if box % 2:
        vol = torch.fft.irfftn(spec, s=(box, box, box), dim=_DIMS)
        return torch.fft.fftshift(vol, dim=_DIMS)
    sign = _half_box_sign(box, spec.device, spec.real.dtype)
    return torch.fft.irfftn(spec * sign, s=(box, box, box), dim=_DIMS)


def lowpass_mask(
    box: int,
    resolution_px_radius: float,
    edge_px: float = 2.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Raised-cosine low-pass on the half grid, ``(D, D, D // 2 + 1)``.

    With radius ``r = |k| D`` (Fourier pixels), cut-off ``R = resolution_px_radius`` and
    width ``w = edge_px``: 1 for ``r <= R - w/2``, 0 for ``r >= R + w/2`` and
    ``0.5 * (1 + cos(pi * (r - R + w/2) / w))`` in between (``w = 0``: hard edge ``r <= R``).
    """
    r = shell_radius_px(box, device, torch.float64)
    if edge_px <= 0:
        return (r <= resolution_px_radius).to(dtype)
    t = ((r - (resolution_px_radius - 0.5 * edge_px)) / edge_px).clamp(0.0, 1.0)
    return (0.5 * (1.0 + torch.cos(math.pi * t))).to(dtype)


def lowpass(spec: Tensor, box: int, resolution_px_radius: float, edge_px: float = 2.0) -> Tensor:
    """Multiply a half spectrum by :func:`lowpass_mask` (cut-off radius in Fourier pixels)."""
    real_dtype = spec.real.dtype if spec.is_complex() else spec.dtype
    mask = lowpass_mask(box, resolution_px_radius, edge_px, spec.device, real_dtype)
    return spec * mask


def lowpass_map(vol: Tensor, pixel_size_A: float, resolution_A: float,
                edge_px: float = 2.0) -> Tensor:
    """Low-pass a cubic real map to ``resolution_A`` (Å) with :func:`lowpass_mask`'s edge.

    The cut-off radius is ``D · pixel_size_A / resolution_A`` Fourier pixels (RELION's
    ``lowPassFilterMap`` with a raised-cosine edge ``edge_px`` shells wide).
    """
    if resolution_A <= 0 or pixel_size_A <= 0:
        raise ValueError("low-pass resolution and pixel size must be positive (Å)")
    box = vol.shape[-1]
    real = vol.dtype if vol.dtype == torch.float64 else torch.float32
    spec = lowpass(centred_rfft(vol.to(real)), box, box * pixel_size_A / resolution_A, edge_px)
    return centred_irfft(spec, box).to(vol.dtype)


def soft_sphere(box: int, diameter_px: float, width_px: float = 5.0,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32, ndim: int = 3) -> Tensor:
    """Real-space soft sphere ``(D, D, D)`` about the centre voxel ``D // 2``: 1 within
    ``diameter_px / 2``, a raised-cosine edge ``width_px`` wide outside it, then 0 (RELION's
    particle mask and, with diameter ``D`` and width 3, its ``softMaskOutsideMap``).
    ``ndim=2``: the disc ``(D, D)``."""
    axis = torch.arange(box, device=device, dtype=torch.float64) - box // 2
    r = torch.stack(torch.meshgrid([axis] * ndim, indexing="ij")).square().sum(0).sqrt()
    edge = ((r - diameter_px / 2) / width_px).clamp(0, 1) if width_px > 0 else (
        r > diameter_px / 2).to(torch.float64)
    return (0.5 + 0.5 * torch.cos(math.pi * edge)).to(dtype)


def crop_spectrum(spec: Tensor, box: int) -> Tensor:
    """Fourier crop of centred half spectra ``(..., D, D, D // 2 + 1)`` to ``box`` (<= D).

    Keeps the frequencies of the smaller grid, the same in cycles/Å (the cropped box has pixel
    size ``pixel_size * D / box``): integer indices ``0 .. (box - 1) // 2`` and
    ``-(box // 2) .. -1`` along z and y, ``0 .. box // 2`` along x. Sums are not rescaled:
    ``centred_irfft(crop_spectrum(F, box), box) * (box / D) ** 3`` is the real-space map at
    the coarser sampling, on the same density scale.
    """
    size = spec.shape[-3]
    if tuple(spec.shape[-3:]) != rfft_shape(size):
        raise ValueError(f"not a half spectrum of a cube: {tuple(spec.shape)}")
    if box > size:
        raise ValueError(f"cannot crop a {size}-voxel spectrum to {box}")
    if box == size:
        return spec
    pos, neg = (box + 1) // 2, box // 2
    rows = torch.cat([torch.arange(pos), torch.arange(size - neg, size)]).to(spec.device)
    return spec.index_select(-3, rows).index_select(-2, rows)[..., : box // 2 + 1]


def pad_spectrum(spec: Tensor, box: int) -> Tensor:
    """Zero-pad centred half spectra ``(..., D, D, D // 2 + 1)`` to ``box`` (>= D), the same
    frequencies in cycles/Å (``crop_spectrum(pad_spectrum(F, box), D) = F`` for odd ``D``; for
    even ``D`` the Nyquist planes come back halved).

    Frequencies ``-(D // 2) .. (D - 1) // 2`` keep their integer index. For even ``D`` the
    Nyquist coefficient ``F(-D/2)`` stands for both ``±D/2``; it is split evenly between them
    on each axis (``F/2`` at ``+D/2`` and at ``-D/2``), so that the padded spectrum is the
    real trigonometric interpolant: ``centred_irfft(pad_spectrum(F, box), box) * (box / D)³``
    takes the map's own values on its voxels (``box`` a multiple of ``D``).
    """
    size = spec.shape[-3]
    if tuple(spec.shape[-3:]) != rfft_shape(size):
        raise ValueError(f"not a half spectrum of a cube: {tuple(spec.shape)}")
    if box < size:
        raise ValueError(f"cannot pad a {size}-voxel spectrum to {box}")
    if box == size:
        return spec
    pos, neg = (size + 1) // 2, size // 2
    src = torch.cat([torch.arange(pos), torch.arange(size - neg, size)]).to(spec.device)
    dst = torch.cat([torch.arange(pos), torch.arange(box - neg, box)]).to(spec.device)
    out = spec.new_zeros((*spec.shape[:-3], box, box, box // 2 + 1))
    out[..., dst[:, None], dst[None, :], : size // 2 + 1] = spec[..., src[:, None], src[None, :], :]
    if size % 2 == 0:
        nyq, mirror = box - size // 2, size // 2  # rows -D/2 and +D/2 of the padded grid
        for dim in (-3, -2):
            half = out.select(dim, nyq) * 0.5
            out.select(dim, nyq).copy_(half)
            out.select(dim, mirror).copy_(half)
        out[..., size // 2] *= 0.5  # column +D/2; its mate -D/2 is implied (Hermitian)
    return out


def resample_map(vol: Tensor, box: int) -> Tensor:
    """A cubic real map ``(D, D, D)`` on ``box`` voxels over the same field of view, by Fourier
    cropping (``box < D``, :func:`crop_spectrum`) or padding (``box > D``,
    :func:`pad_spectrum`): ``centred_irfft(F', box) · (box / D)³`` with ``F = centred_rfft(vol)``,
    so densities keep their level and voxel ``D // 2`` stays the centre ``box // 2``."""
    size = vol.shape[-1]
    if box == size:
        return vol
    real = torch.float64 if vol.dtype == torch.float64 else torch.float32
    spec = centred_rfft(vol.to(real))
    spec = crop_spectrum(spec, box) if box < size else pad_spectrum(spec, box)
    return (centred_irfft(spec, box) * (box / size) ** 3).to(vol.dtype)
