"""Render atoms as Gaussian densities on a voxel grid (exact at any pose; no interpolation).

density(x) = Σ_j a_j exp(−|x − r_j|² / (2σ²)) sampled at voxel centres, x in Å from the box
centre (voxel D//2). The Gaussian is separable, so the whole volume is one matrix product:
V[z, (y, x)] = Σ_j (a_j g_z[j, z]) · (g_y[j, y] g_x[j, x]) — no truncation, BLAS speed.
"""

from __future__ import annotations

import math

import torch


def render_atoms(
    positions_A: torch.Tensor,
    amplitudes: torch.Tensor,
    box_px: int,
    pixel_size_A: float,
    sigma_A: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Volumes (B, D, D, D) (z, y, x) from atoms ``positions_A`` (B, M, 3) (x, y, z) in Å."""
    device = torch.device(device) if device is not None else positions_A.device
    pos = positions_A.to(device=device, dtype=dtype) / pixel_size_A  # px from the centre
    axis = torch.arange(box_px, device=device, dtype=dtype) - box_px // 2
    sigma_px = sigma_A / pixel_size_A
    # (B, M, D) 1D profiles along x, y, z
    g = torch.exp(-((axis - pos[..., None]) ** 2) / (2 * sigma_px**2))
    gx, gy, gz = g[:, :, 0], g[:, :, 1], g[:, :, 2]
    weighted_z = gz * amplitudes.to(device=device, dtype=dtype)[None, :, None]
    batch, n_atoms = gx.shape[:2]
    volume = torch.zeros(batch, box_px, box_px * box_px, device=device, dtype=dtype)
    chunk = max(1, 2**25 // (batch * box_px * box_px))  # bounds the (B, m, D²) plane tensor
    for start in range(0, n_atoms, chunk):
        part = slice(start, start + chunk)
        plane = (gy[:, part, :, None] * gx[:, part, None, :]).reshape(batch, -1, box_px**2)
        volume.baddbmm_(weighted_z[:, part].transpose(1, 2), plane)
    return volume.reshape(-1, box_px, box_px, box_px)


def render_projected_atoms(
    positions_px: torch.Tensor,
    amplitudes: torch.Tensor,
    size_px: int,
    sigma_px: float,
) -> torch.Tensor:
    """Projections ``(B, S, S)`` (y, x) of Gaussian atoms seen along the beam.

    ``positions_px``: ``(B, M, 2)`` projected atom centres (x, y) in pixels of the patch
    (pixel centres at integer coordinates, origin at pixel 0), sub-pixel exact. Each atom of a
    3D density ``a exp(−|r|² / 2σ²)`` sampled on voxels of the same size integrates along the
    beam to ``a √(2π) σ exp(−|r₂|² / 2σ²)`` (σ in pixels), the sum of its voxels along z: the
    projection is on the scale of the map rendered by :func:`render_atoms`.
    """
    axis = torch.arange(size_px, device=positions_px.device, dtype=positions_px.dtype)
    g = torch.exp(-((axis - positions_px[..., None]) ** 2) / (2 * sigma_px**2))  # (B, M, 2, S)
    weight = amplitudes.to(positions_px) * (math.sqrt(2 * math.pi) * sigma_px)
    gx = g[:, :, 0] * weight[..., :, None]
    return torch.bmm(g[:, :, 1].transpose(1, 2), gx)
