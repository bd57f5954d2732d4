"""create_mask against distances computed independently (k-d tree over the thresholded voxels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from subtomo.maps.mask import create_mask, lowpass_map


def _sphere_map(box: int, radius: float) -> torch.Tensor:
    """radius - |r| (a cone): thresholding at 0 gives the voxel ball of ``radius``."""
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return (radius - torch.sqrt(x**2 + y**2 + z**2)).float()


def _distance_to(region: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels) from every voxel to the nearest voxel of ``region``."""
    inside = np.argwhere(region)
    every = np.argwhere(np.ones_like(region, dtype=bool))
    dist, _ = cKDTree(inside).query(every)
    return dist.reshape(region.shape)


@pytest.mark.parametrize(("extend", "width"), [(3, 5), (0, 4), (2, 0)])
def test_extension_and_raised_cosine_edge(extend: int, width: int) -> None:
    box, radius = 32, 6.3
    vol = _sphere_map(box, radius)
    mask = create_mask(vol, 2.0, 0.0, extend_inimask_px=extend, width_soft_edge_px=width)
    assert mask.shape == vol.shape and mask.dtype == torch.float32
    m = mask.double().numpy()
    assert m.min() >= 0.0 and m.max() <= 1.0
    r = _distance_to(vol.numpy() >= 0.0)  # distance from the thresholded region
    assert np.all(m[r <= extend] == 1.0)  # within `extend` px: exactly 1
    beyond = r >= extend + width if width else r > extend
    assert np.all(m[beyond] == 0.0)  # beyond the edge: exactly 0
    edge = (r > extend) & (r < extend + width)
    if width:
        assert edge.sum() > 100
        d = r[edge] - extend
        np.testing.assert_allclose(m[edge], 0.5 + 0.5 * np.cos(math.pi * d / width), atol=1e-5)


def test_shrink_with_negative_extension() -> None:
    vol = _sphere_map(24, 7.2)
    mask = create_mask(vol, 1.0, 0.0, extend_inimask_px=-2).numpy()
    region = vol.numpy() >= 0
    # kept: voxels of the region more than 2 px from every voxel outside it
    depth = _distance_to(~region)
    np.testing.assert_array_equal(mask, (region & (depth > 2)).astype(np.float32))


def test_threshold_above_maximum_is_refused() -> None:
    vol = _sphere_map(16, 4.0)
    with pytest.raises(ValueError, match="above the map maximum"):
        create_mask(vol, 1.0, float(vol.max()) + 0.1)


def test_lowpass_removes_high_frequencies() -> None:
    gen = torch.Generator().manual_seed(0)
    vol = torch.randn(32, 32, 32, generator=gen, dtype=torch.float64)
    out = lowpass_map(vol, pixel_size_A=2.0, resolution_A=16.0)  # cutoff: shell 32*2/16 = 4
    spec = torch.fft.fftn(out).abs()
    f = torch.fft.fftfreq(32, dtype=torch.float64) * 32
    shell = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    assert float(spec[shell >= 5.0].max()) < 1e-9  # beyond cutoff + 1 shell: gone
    ratio = spec[shell <= 3.0] / torch.fft.fftn(vol).abs()[shell <= 3.0]
    torch.testing.assert_close(ratio, torch.ones_like(ratio))  # below cutoff - 1: untouched
    # the mask thresholds the filtered map
    mask = create_mask(vol.float(), 2.0, 0.3, lowpass_A=16.0)
    torch.testing.assert_close(mask, (out >= 0.3).float())
