"""The true density of a simulated tomogram, and scores of a reconstructed one against it.

:mod:`subtomo.simulate.tiltseries` never builds the tomogram: it projects atoms. Its truth as a
volume is the true map (``truth/class001.mrc``, centred on voxel ``box // 2``) at each true
particle, rotated as the simulator rotates the atoms: ``T(y) = Σᵢ ρ(Rᵢᵀ (y − pᵢ))`` (``pᵢ`` the
position in tilt-series px, ``Rᵢ`` the matrix of the pose's Euler angles), sampled
trilinearly at the tilt-series pixel, then Fourier-cropped to a binned grid whose voxel ``j``
lies at tomogram position ``binning × j`` (RELION 5's zero origin, as
``relion_tomo_reconstruct_tomogram`` and :mod:`subtomo.tomo.reconstruct_tomogram` sample).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from subtomo.geometry.euler import euler_to_matrix
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_tomogram_set

__all__ = ["fourier_crop", "masked", "masked_fsc", "particle_mask", "tomogram_score",
           "truth_tomogram"]


def _particles(truth: Path, name: str):
    ts = read_tomogram_set(truth / "tomograms.star")[name]
    table = read_particles(truth / "particles.star").particles
    table = table[table["rlnTomoName"] == name]
    centres = ts.centred_to_px(torch.tensor(
        table[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy(float)))
    angles = torch.tensor(table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    return ts, centres, euler_to_matrix(angles)


def truth_tomogram(truth: str | Path, binning: int, name: str = "TS_01") -> Tensor:
    """``(Z, Y, X)``: the true density of tomogram ``name`` of the simulated project whose
    ``truth/`` folder is ``truth``, on the grid of a tomogram at integer ``binning``."""
    truth = Path(truth)
    ts, centres, rotations = _particles(truth, name)
    density = torch.from_numpy(read_mrc(truth / "class001.mrc")[0]).float()
    nx, ny, nz = ts.tomo_size_px
    full = torch.zeros((nz, ny, nx))
    box = density.shape[-1]
    reach = torch.arange(-(box // 2) - 2, box // 2 + 3, dtype=torch.float64)
    offsets = torch.stack(torch.meshgrid(reach, reach, reach, indexing="ij"), -1).flip(-1)
    bounds = torch.tensor([nx, ny, nz])
    for p, r in zip(centres, rotations, strict=True):
        voxel = torch.floor(p) + offsets  # (…, 3) x, y, z tomogram px
        local = (voxel - p) @ r + box // 2  # Rᵀ (y − p), map px from its corner
        values = F.grid_sample(density[None, None], (2 * local / (box - 1) - 1).float()[None],
                               align_corners=True)[0, 0]
        inside = ((voxel >= 0) & (voxel < bounds)).all(-1)
        index = voxel[inside].long()
        full.index_put_((index[:, 2], index[:, 1], index[:, 0]), values[inside],
                        accumulate=True)
    return fourier_crop(full, binning)


def fourier_crop(volume: Tensor, binning: int) -> Tensor:
    """Every ``binning``-th voxel of ``volume`` after dropping its frequencies beyond the new
    Nyquist (values on the same scale)."""
    shape = [n // binning for n in volume.shape]
    spectrum = torch.fft.rfftn(volume)
    for dim in (0, 1):
        n, m = volume.shape[dim], shape[dim]
        keep = torch.cat([torch.arange(0, m // 2), torch.arange(n - m // 2, n)])
        spectrum = spectrum.index_select(dim, keep)
    spectrum = spectrum[..., :shape[2] // 2 + 1]
    return torch.fft.irfftn(spectrum, s=shape) / binning**3


def particle_mask(truth: str | Path, binning: int, shape: tuple[int, int, int],
                  radius_px: float, name: str = "TS_01") -> Tensor:
    """Soft mask ``(Z, Y, X)`` of the particle regions on the binned grid: 1 within
    ``radius_px`` (tilt-series px) of a true centre, a cosine fall-off to 0 over 2 voxels."""
    _, centres, _ = _particles(Path(truth), name)
    axes = [torch.arange(n, dtype=torch.float32) * binning for n in shape]
    zyx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    nearest = torch.full((zyx.shape[0],), float("inf"))
    for c in centres.float():
        nearest = torch.minimum(nearest, (zyx - c.flip(0)).norm(dim=-1))
    edge = ((nearest - radius_px) / (2.0 * binning)).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * edge))).reshape(shape)


def masked_fsc(a: Tensor, b: Tensor, pixel_size_A: float) -> tuple[Tensor, float]:
    """FSC of two volumes of any shape over shells ``1 / (X · pixel)`` wide (X their largest
    side), shells ``0 … X // 2``; and that width (1/Å)."""
    fa, fb = torch.fft.rfftn(a.double()), torch.fft.rfftn(b.double())
    k = torch.stack(torch.meshgrid(
        *[torch.fft.fftfreq(n, d=pixel_size_A) for n in a.shape[:2]],
        torch.fft.rfftfreq(a.shape[2], d=pixel_size_A), indexing="ij"), -1).norm(dim=-1)
    side = max(a.shape)
    step = 1 / (side * pixel_size_A)
    shell = torch.round(k / step).long().flatten()
    n = side // 2 + 1
    keep = shell < n
    sums = [torch.zeros(n, dtype=torch.float64).index_add_(0, shell[keep], q.flatten()[keep])
            for q in ((fa * fb.conj()).real, fa.abs() ** 2, fb.abs() ** 2)]
    return sums[0] / torch.sqrt(sums[1] * sums[2]).clamp_min(1e-30), step


def masked(volume: Tensor, mask: Tensor) -> Tensor:
    """``volume`` minus its mean within the soft ``mask``, times the mask."""
    v = volume.double()
    return (v - (v * mask).sum() / mask.sum()) * mask


def tomogram_score(volume: Tensor, truth: Tensor, mask: Tensor, pixel_size_A: float,
                   diameter_A: float) -> tuple[float, float, float]:
    """Pearson correlation of ``volume`` with ``truth`` within the soft ``mask``
    (:func:`masked` volumes), and of the same masked volumes the FSC 0.5 resolution (Å; the
    first shell under 0.5 beyond ``1 / diameter_A``, where the mask and the missing wedge rule,
    interpolated; Nyquist if none) and the mean FSC over the shells up to Nyquist
    (:func:`masked_fsc`)."""
    a, b = masked(volume, mask), masked(truth, mask)
    r = float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))
    curve, step = masked_fsc(a, b, pixel_size_A)
    first = max(1, math.ceil(1 / (step * diameter_A)))
    below = (curve[first:] < 0.5).nonzero()
    resolution = 2 * pixel_size_A
    if len(below):
        i = int(below[0]) + first
        x = i - 1 + float((curve[i - 1] - 0.5) / (curve[i - 1] - curve[i]))
        resolution = 1 / (x * step)
    return r, resolution, float(curve[1:].mean())
