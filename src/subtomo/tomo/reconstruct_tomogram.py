"""Tomograms by weighted back-projection (``relion_tomo_reconstruct_tomogram``), for picking
and looking.

1. The tilt images are Fourier-cropped once to the binned pixel size (any binning,
   :func:`subtomo.tomo.crops.prepare_images`).
2. Each image is filtered in 2D Fourier space: the weighting of back-projection, ``|k⊥|``, the
   frequency across the tilt axis (the image direction of the tomogram's y axis under the tilt's
   rotation), floored where the slices of the thin tomogram overlap — ``ramp`` — or the SIRT-like
   filter ``|k⊥| (1 − (1 − 1/|k⊥|)^N)`` (Zeng, J. Struct. Biol. 178:271, 2012; ``|k⊥|`` in
   Fourier pixels, ``N`` iterations: a ramp at low frequency that flattens beyond ``N``, like
   ``N`` SIRT iterations) — or ``none``; every frequency up to
   Nyquist kept as it is (no apodisation: the Fourier crop already band-limits the images, and a
   cosine fall-off to 0 at Nyquist would low-pass the tomogram, half-Nyquist halved). Optionally
   the CTF of the tilt at the tomogram centre is phase-flipped (``flip``) or Wiener-divided
   (``wiener``, ``CTF / (CTF² + 1/SNR)``).
   The ramp's floor: in a tomogram ``T`` voxels thick each tilt's central slice is ``1/T`` wide
   along z, so at ``|k⊥|`` about ``(W/T) / (|k⊥| Δθ)`` tilts overlap (``W`` the image width in
   pixels, ``Δθ`` the tilt step), at most all ``n``: the inverse of that count is
   ``max(|k⊥|, W / (T Θ))``, ``Θ = n Δθ`` the tilt span (and at least half a Fourier pixel).
3. Back-projection: voxel ``(x, y, z)`` of the binned tomogram is the tomogram position
   ``bin × (x, y, z)`` (tilt-series px, RELION's zero origin), projected with each tilt's RELION 5
   matrix and sampled bilinearly; the sum is divided by the number of tilts that see the voxel.
   Rows of voxels are processed at once over all tilts (``grid_sample``), in chunks small
   enough for the CPU cache: no loop per voxel or tilt.

Contrast is that of the images (raw tilt series: protein dark), as RELION's tomograms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.errors import InputError
from subtomo.fourier.grid import frequencies_2d
from subtomo.io.tilt_series import TiltSeries
from subtomo.tomo.crops import prepare_images

__all__ = ["FILTERS", "reconstruct_tomogram", "tilt_filters"]

FILTERS = ("ramp", "sirt", "none")
CTF_MODES = ("none", "flip", "wiener")


def tilt_filters(ts: TiltSeries, shape: tuple[int, int], pixel_size_A: tuple[float, float],
                 weighting: str = "ramp", iterations: int = 10, ctf: str = "none",
                 snr: float = 10.0, device=None, thickness_px: float | None = None) -> Tensor:
    """2D filters ``(T, H, W // 2 + 1)`` for the rfft2 of images of ``shape (H, W)``;
    ``thickness_px``: the tomogram's depth in voxels of the images' pixel (the ramp's floor)."""
    if weighting not in FILTERS:
        raise InputError(None, f"unknown filter {weighting!r}; choose from {FILTERS}",
                         field="--filter")
    if ctf not in CTF_MODES:
        raise InputError(None, f"unknown CTF mode {ctf!r}; choose from {CTF_MODES}",
                         field="--ctf")
    h, w = shape
    rot = ts.matrices(device=device)[:, :3, :3].float()
    axis = rot[:, :2, 1]  # image direction of the tomogram's y axis
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = frequencies_2d((h, w), device=device, dtype=torch.get_default_dtype())
    kx, ky = k[..., 0] * w, k[..., 1] * h  # Fourier px of each axis
    scale = max(h, w)
    kyn, kxn = ky / h * scale, kx / w * scale  # isotropic Fourier px of the larger side
    across = (kxn[None] * axis[:, 1, None, None] - kyn[None] * axis[:, 0, None, None]).abs()
    if weighting == "ramp":
        filt = across.clamp_min(max(0.5, _overlap_floor(ts, scale, thickness_px)))
    elif weighting == "sirt":
        k = across.clamp_min(1.0)
        filt = k * (1 - (1 - 1 / k) ** iterations)
    else:
        filt = torch.ones_like(across)
    if ctf != "none":
        freqs = torch.stack(torch.broadcast_tensors(kx / (w * pixel_size_A[0]),
                                                    ky / (h * pixel_size_A[1])), -1)
        u, v, angle = (torch.as_tensor(x, dtype=torch.float32, device=device)
                       for x in ts.defocus())
        c = ctf_2d(freqs, u[:, None, None], v[:, None, None], angle[:, None, None],
                   ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast)
        filt = filt * (torch.sign(c) if ctf == "flip" else c / (c * c + 1.0 / snr))
    return filt


def _overlap_floor(ts: TiltSeries, width_px: int, thickness_px: float | None) -> float:
    """``W / (T Θ)`` (Fourier px): below it every tilt's slice covers the frequency, with the
    tilt span ``Θ = n Δθ`` (radians, ``Δθ`` the mean step); 0 without a thickness."""
    tilts = np.radians(ts.nominal_tilt_deg)
    if not thickness_px or len(tilts) < 2 or np.ptp(tilts) <= 0:
        return 0.0
    return width_px * (len(tilts) - 1) / (thickness_px * float(np.ptp(tilts)) * len(tilts))


def reconstruct_tomogram(
    ts: TiltSeries,
    *,
    binning: float = 8.0,
    size_px: tuple[int, int, int] | None = None,
    weighting: str = "ramp",
    iterations: int = 10,
    ctf: str = "none",
    snr: float = 10.0,
    device: str | torch.device = "cpu",
    chunk_floats: int = 1 << 19,
    progress: bool = True,
) -> tuple[Tensor, float]:
    """The tomogram ``(Z, Y, X)`` at ``binning`` and its voxel size (Å). ``size_px``: the
    unbinned ``(X, Y, Z)`` (default: the tilt series' tomogram size)."""
    if binning <= 0:
        raise InputError(None, "binning must be positive", field="--bin")
    size = size_px or ts.tomo_size_px
    shape = tuple(max(1, int(s / binning + 0.5)) for s in size)  # RELION: w / spacing + 0.5
    ts.check_images()
    binned = []
    for t in range(ts.n_tilts):  # one full-size image in memory at a time
        prepared = prepare_images(ts.read_images([t]).to(device), ts.pixel_size_A,
                                  ts.pixel_size_A * binning)
        binned.append(prepared.images)
    images = torch.cat(binned)
    t, h, w = images.shape
    filt = tilt_filters(ts, (h, w), prepared.pixel_size_A, weighting, iterations, ctf, snr,
                        device, thickness_px=shape[2]).to(images.device)
    images = torch.fft.irfft2(torch.fft.rfft2(images) * filt, s=(h, w))
    mats = ts.matrices(device=device)
    # image px of the binned images = (P · (bin · voxel)) × scale, as one affine map per tilt
    scale = torch.tensor([prepared.scale[0], prepared.scale[1]], dtype=torch.float64,
                         device=mats.device)
    affine = (mats[:, :2] * scale[None, :, None]).to(torch.float32)  # (T, 2, 4)
    affine[:, :, :3] *= binning
    nx, ny, nz = shape
    dev = images.device
    out = torch.empty((nz, ny, nx), dtype=torch.float32, device=dev)
    xs = torch.arange(nx, dtype=torch.float32, device=dev)
    ys = torch.arange(ny, dtype=torch.float32, device=dev)
    # grid_sample coordinates (align_corners): pixel p -> 2 p / (n - 1) - 1
    norm = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=dev)
    affine = affine * norm[None, :, None]
    affine[:, :, 3] -= 1.0
    a = affine.transpose(1, 2)  # (T, 4, 2): the x, y, z and constant terms of (gx, gy)
    base = (a[:, None, None, 0] * xs[:, None] + a[:, None, None, 1] * ys[:, None, None]
            + a[:, None, None, 3])  # (T, Y, X, 2)
    stack = images[:, None]
    # rows of (z, y) in chunks whose (T, rows, X, 2) grid stays in cache (~2 MB)
    rows = max(1, min(ny, chunk_floats // max(1, 2 * t * nx)))
    for z in tqdm(range(nz), desc=f"back-projecting {ts.name}", disable=None if progress else True,
                  unit="slice"):
        shift = a[:, None, None, 2] * torch.tensor(float(z), device=dev)  # (T, 1, 1, 2)
        for y0 in range(0, ny, rows):
            grid = base[:, y0:y0 + rows] + shift  # (T, rows, X, 2)
            total = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True).sum(0)[0]
            reach = grid.abs()
            seen = (torch.maximum(reach[..., 0], reach[..., 1]) <= 1.0).sum(0)  # tilts seeing it
            out[z, y0:y0 + rows] = total / seen.clamp_min(1)
    return out, ts.pixel_size_A * binning
