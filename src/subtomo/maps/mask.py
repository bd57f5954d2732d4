"""Soft-edged masks from a map, as ``relion_mask_create`` makes them.

1. optional low-pass (``lowpass_A``, Å) with a raised-cosine edge two Fourier shells wide;
2. binarise: voxels with value >= ``ini_threshold`` are in;
3. extend (or, if negative, shrink) the binary region by ``extend_inimask_px`` voxels, by
   Euclidean distance;
4. a raised-cosine soft edge ``W = width_soft_edge_px`` voxels wide beyond it.

With ``r`` the Euclidean distance (voxels) from a voxel to the nearest voxel of the (shrunk)
binary region and ``E = max(extend, 0)``: the mask is 1 for ``r <= E``,
``0.5 + 0.5 cos(pi (r - E) / W)`` for ``E < r < E + W`` and 0 beyond, as in RELION.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from subtomo.fourier.grid import lowpass_map

__all__ = ["create_mask", "lowpass_map"]  # lowpass_map lives in subtomo.fourier.grid


def create_mask(vol: Tensor | np.ndarray, pixel_size_A: float, ini_threshold: float,
                extend_inimask_px: float = 0, width_soft_edge_px: float = 0,
                lowpass_A: float | None = None) -> Tensor:
    """A mask in [0, 1] (same shape, dtype float32, device as ``vol``) like relion_mask_create.

    ``pixel_size_A``: voxel size (Å), used by ``lowpass_A`` (Å; None = no filter).
    ``ini_threshold``: binarisation threshold (map units); ``extend_inimask_px``: grow (> 0)
    or shrink (< 0) the binary region by this many voxels (Euclidean); ``width_soft_edge_px``:
    width (voxels) of the raised-cosine edge. Raises ``ValueError`` when no voxel reaches the
    threshold.
    """
    vol = torch.as_tensor(vol)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D map, got shape {tuple(vol.shape)}")
    if width_soft_edge_px < 0:
        raise ValueError(f"soft-edge width must be >= 0 pixels, got {width_soft_edge_px}")
    if not torch.is_floating_point(vol):
        vol = vol.to(torch.float32)
    if lowpass_A is not None and lowpass_A > 0:
        vol = lowpass_map(vol, pixel_size_A, lowpass_A)
    vmax = float(vol.max())
    if ini_threshold > vmax:
        raise ValueError(f"initial threshold {ini_threshold:g} is above the map maximum "
                         f"{vmax:g}{' after low-pass' if lowpass_A else ''}; the mask would be "
                         "empty (choose a lower --ini_threshold)")
    binary = (vol >= ini_threshold).cpu().numpy()
    if extend_inimask_px < 0:
        # shrink: keep voxels further than |extend| from the outside
        binary = ndimage.distance_transform_edt(binary) > -extend_inimask_px
        if not binary.any():
            raise ValueError(f"shrinking by {-extend_inimask_px:g} pixels empties the mask")
    extend = max(float(extend_inimask_px), 0.0)
    dist = ndimage.distance_transform_edt(~binary)  # voxels to the nearest voxel inside
    width = float(width_soft_edge_px)
    mask = (dist <= extend).astype(np.float64)
    if width > 0:
        d = dist - extend
        edge = (d > 0) & (d < width)
        mask[edge] = 0.5 + 0.5 * np.cos(np.pi * d[edge] / width)
    return torch.from_numpy(mask.astype(np.float32)).to(vol.device)
