"""Impose point-group symmetry on a map: the mean of its copies rotated by the group's operators.

``symmetrize(v, G) = (1 / |G|) sum_g rotate_volume(v, g)`` with RELION's operators
(:func:`subtomo.geometry.symmetry.symmetry_operators`), about the centre voxel ``D // 2``.

The default ``order="fourier"`` rotates by exact quarter turns plus Fourier shears
(band-limited interpolation, see :mod:`subtomo.maps.rotate`): for a map whose content lies
inside the sphere of radius ``D / 2`` and whose spectrum is negligible beyond ~0.35
cycles/voxel, the rotated copies are the continuous map's rotations to ~1e-9 (content outside
that sphere is dropped: the output is zero in the corners), so the output
is invariant under every operator of the group to that accuracy (measured on a 48^3 map of
Gaussian blobs, sigma = 2.5 voxels: relative L2 change under a band-limited 60° turn of the
C6-symmetrised map 2.5e-13 in float64, 2.4e-7 in float32; difference from the analytic
symmetric map 1.3e-13). ``order="linear"`` (trilinear, a plain real-space symmetrisation)
blurs each copy a little differently: the output differs from the analytic map by 8e-3 and
changes by 1.2e-2 under a trilinear 60° turn (as does the analytic map itself).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from subtomo.geometry.symmetry import symmetry_operators
from subtomo.maps.rotate import rotate_volume

__all__ = ["symmetrize"]

_CHUNK_VOXELS = 1 << 23


def symmetrize(vol: Tensor | np.ndarray, sym: str, order: str = "fourier",
               device: torch.device | str | None = None) -> Tensor:
    """Symmetrise a (D, D, D) map under point group ``sym`` (e.g. ``"C6"``, ``"D2"``, ``"I"``).

    ``order``: interpolation of :func:`rotate_volume` (``"fourier"`` default, ``"linear"``,
    ``"nearest"``). Operators are applied in batches. Raises ``ValueError`` for an unknown group.
    Returns a tensor of the input's dtype on ``device`` (default: the input's).
    """
    vol = torch.as_tensor(vol)
    if device is not None:
        vol = vol.to(device)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D map, got shape {tuple(vol.shape)}")
    if not torch.is_floating_point(vol):
        vol = vol.to(torch.float32)
    ops = symmetry_operators(sym, device=vol.device)
    if ops.shape[0] == 1:
        return vol.clone()
    step = max(1, _CHUNK_VOXELS // vol.numel())
    total = torch.zeros_like(vol, dtype=torch.float64)
    for start in range(0, ops.shape[0], step):
        total += rotate_volume(vol, ops[start : start + step], order=order).sum(0)
    return (total / ops.shape[0]).to(vol.dtype)
