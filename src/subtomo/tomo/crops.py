"""Per-particle, per-tilt crops of a tilt series: the one place 2D particle data come from.

For a batch of particles and all tilts of one tilt series (batched over both, no loop per tilt):

1. :func:`prepare_images` Fourier-crops the tilt images once to (nearly) the working pixel
   size (any ratio): an image of ``W × H`` px becomes ``W' × H'`` with ``W' = round(W p / p')``;
   pixel 0 stays pixel 0, so positions scale by ``W'/W`` and ``H'/H``, and the exact pixel
   size of each axis is kept (``p W / W'``, ``p H / H'``).
2. :func:`particle_crops` projects each particle (tomogram px, one position per tilt with
   motion) with the tilt series' matrices (and its 2D deformations, when it has any:
   :mod:`subtomo.tomo.deformation`), crops an ``S × S`` window whose centre pixel
   ``S // 2`` is the integer part of the projected position (index gather) and moves the
   sub-pixel remainder into a Fourier phase: the returned centred spectra
   ``X(k) = Σ_r crop(r) exp(−2πi k·(r − S//2 − d))`` are those of the particle centred exactly.
   Contrast is flipped (raw images show protein dark; crops show it white, as RELION's
   tomography programs do) and the spectra are scaled so that they equal the central sections
   of the map on its own scale at the working pixel size (image values count voxels of the
   input pixel size along the beam; the DFT sums pixels of the working size).
3. With ``ctf=True`` each (particle, tilt) also gets ``c = CTF × exposure filter``: the CTF
   at the particle's depth (:meth:`TiltSeries.defocus_at`) and the Grant–Grigorieff filter at
   the tilt's pre-exposure (:func:`subtomo.ctf.dose.dose_filter`).

A tilt whose window leaves the image is marked invisible (``visible`` false, its spectrum and
CTF zero), as RELION's ``Tomogram::isVisible`` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.fourier.grid import frequencies_2d, soft_sphere
from subtomo.fourier.shift import shift_spectra_2d_
from subtomo.geometry.tilt import project_points
from subtomo.io.tilt_series import TiltSeries
from subtomo.tomo.deformation import deformation_of

__all__ = ["PreparedImages", "TiltCrops", "particle_crops", "prepare_images"]


@dataclass
class PreparedImages:
    """Tilt images at the working pixel size: ``images (T, H', W')``; ``scale`` maps tilt-series
    pixels to these (x, y); ``pixel_size_A`` per axis (x, y); ``input_pixel_size_A``."""

    images: Tensor
    scale: tuple[float, float]
    pixel_size_A: tuple[float, float]
    input_pixel_size_A: float


@dataclass
class TiltCrops:
    """Crops of ``N`` particles in ``T`` tilts: centred half spectra ``(N, T, S, S // 2 + 1)``,
    CTF × exposure ``c`` (same shape, real) or None, ``visible (N, T)``, and the frequencies
    ``(S, S // 2 + 1, 2)`` (x, y) in 1/Å."""

    spectra: Tensor
    ctf: Tensor | None
    visible: Tensor
    freqs_per_A: Tensor


def prepare_images(images: Tensor, pixel_size_A: float, target_pixel_size_A: float
                   ) -> PreparedImages:
    """Fourier-crop ``images (T, H, W)`` to about ``target_pixel_size_A`` (never upsampled);
    values keep their scale (the mean of an image is unchanged)."""
    t, h, w = images.shape
    factor = max(target_pixel_size_A / pixel_size_A, 1.0)
    w2, h2 = max(2, round(w / factor)), max(2, round(h / factor))
    if (w2, h2) == (w, h):
        return PreparedImages(images, (1.0, 1.0), (pixel_size_A, pixel_size_A), pixel_size_A)
    out = torch.empty((t, h2, w2), dtype=images.dtype, device=images.device)
    rows = torch.cat([torch.arange(0, (h2 + 1) // 2), torch.arange(h - h2 // 2, h)])
    for i in range(t):  # one image at a time bounds memory for 4k stacks
        spec = torch.fft.rfft2(images[i])
        cropped = spec[rows.to(images.device), : w2 // 2 + 1]
        if w2 % 2 == 0:
            cropped[:, -1] = cropped[:, -1].real  # the new Nyquist column is real
        out[i] = torch.fft.irfft2(cropped, s=(h2, w2)).to(images.dtype) * (w2 * h2 / (w * h))
    return PreparedImages(out, (w2 / w, h2 / h), (pixel_size_A * w / w2, pixel_size_A * h / h2),
                          pixel_size_A)


def crop_circle(crops: Tensor, falloff_px: float = 5.0) -> Tensor:
    """``c (X - m)`` for crops ``(..., S, S)``: RELION 5's ``TomoExtraction::cropCircle``
    (``relion_tomo_reconstruct_particle`` and ``relion_tomo_subtomo`` unless
    ``--no_circle_crop``). ``c`` is 1 within radius ``S/2 - falloff_px`` of the centre pixel
    ``S // 2``, a raised cosine down to 0 at ``S/2``, 0 beyond; ``m`` is each crop's mean beyond
    radius ``S/2`` (the corners). Noise in the corners, outside every view of the particle's
    sphere, no longer reaches the map."""
    size = crops.shape[-1]
    c = soft_sphere(size, size - 2.0 * falloff_px, falloff_px, crops.device, crops.dtype, ndim=2)
    corners = (soft_sphere(size, size, 0.0, crops.device, crops.dtype, ndim=2) == 0).to(
        crops.dtype)
    mean = (crops * corners).sum((-2, -1), keepdim=True) / corners.sum().clamp(min=1)
    return c * (crops - mean)


def particle_crops(
    ts: TiltSeries,
    prepared: PreparedImages,
    positions_px: Tensor,
    size: int,
    output_pixel_size_A: float,
    *,
    ctf: bool = True,
    dose_weighting: bool = True,
    flip: bool = True,
    matrices: Tensor | None = None,
    circle_crop: bool = False,
) -> TiltCrops:
    """Crops of particles at tomogram positions ``(N, 3)`` or ``(N, T, 3)`` (tilt-series px).

    ``size``: crop (px of the prepared images); ``output_pixel_size_A``: voxel size of the map
    the spectra are sections of (sets their scale). ``matrices``: projection matrices (default:
    the tilt series'). ``circle_crop``: each crop through :func:`crop_circle`. Returns spectra
    in ``prepared.images``' dtype's complex type.
    """
    images = prepared.images
    device = images.device
    t, h, w = images.shape
    m = ts.matrices(device=device) if matrices is None else matrices.to(device)
    pos = positions_px.to(device=device, dtype=torch.float64)
    xy = project_points(m, pos)[..., :2]
    deformation = deformation_of(ts)  # 2D image deformations (tomo-align), when present
    if deformation is not None:
        xy = deformation.apply(xy)
    xy = xy * torch.tensor(prepared.scale, dtype=torch.float64, device=device)
    corner = torch.round(xy) - size // 2
    sub = xy - torch.round(xy)  # (N, T, 2) in [−0.5, 0.5]
    visible = ((corner[..., 0] >= 0) & (corner[..., 0] + size <= w) & (corner[..., 1] >= 0)
               & (corner[..., 1] + size <= h))
    if size <= min(h, w):  # every S × S window of every image, as a view; one gather
        windows = images.unfold(1, size, 1).unfold(2, size, 1)  # (T, H−S+1, W−S+1, S, S)
        crops = windows[torch.arange(t, device=device), corner[..., 1].long().clamp(0, h - size),
                        corner[..., 0].long().clamp(0, w - size)]  # (N, T, S, S)
        crops[~visible] = 0.0
        if circle_crop:
            crops = crop_circle(crops)
    else:  # no window fits: nothing is visible
        crops = images.new_zeros(*visible.shape, size, size)

    spectra = torch.fft.rfft2(crops)
    # centring and sub-pixel position as one separable phase: shift by −(S//2 + d)
    shift = -(size // 2 + sub)
    px, py = prepared.pixel_size_A
    scale = (prepared.input_pixel_size_A / output_pixel_size_A) * (
        px * py / output_pixel_size_A**2) * (-1.0 if flip else 1.0)
    shift_spectra_2d_(spectra, shift, scale)

    freqs = frequencies_2d(size, prepared.pixel_size_A, device=device)
    weights = None
    if ctf:
        u, v, angle = ts.defocus_at(pos, m)
        real = images.dtype
        weights = ctf_2d(freqs.to(real), u[..., None, None].to(real), v[..., None, None].to(real),
                         angle[..., None, None].to(real), ts.voltage_kv, ts.cs_mm,
                         ts.amplitude_contrast)
        if dose_weighting:
            exposure = torch.as_tensor(ts.pre_exposure, device=device, dtype=real)
            weights = weights * dose_filter(freqs.norm(dim=-1).to(real),
                                            exposure[:, None, None])
        weights = weights * visible[..., None, None].to(real)
    return TiltCrops(spectra, weights, visible, freqs)
