"""Analytic test maps for tests/maps: sums of Gaussian blobs, whose rotations are exact."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def blob_map(centres: torch.Tensor, sigma_px: float, box: int,
             amplitudes: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(box,)*3 map (z, y, x) of Gaussian blobs at ``centres`` (N, 3) (x, y, z) in voxels
    relative to the centre voxel ``box // 2``."""
    centres = torch.as_tensor(centres, dtype=torch.float64).reshape(-1, 3)
    amp = torch.ones(len(centres), dtype=torch.float64) if amplitudes is None else amplitudes
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    # separable: exp(-|r - c|^2 / 2s^2) = gx * gy * gz
    g = torch.exp(-((axis[None, :] - centres.T[:, :, None]) ** 2) / (2 * sigma_px**2))
    gx, gy, gz = g[0], g[1], g[2]  # (N, box)
    out = torch.einsum("n,nz,ny,nx->zyx", amp.to(torch.float64), gz, gy, gx)
    return out.to(dtype)


@pytest.fixture
def blobs() -> Callable[..., torch.Tensor]:
    return blob_map
