"""Tilt-series projection geometry in RELION 5's convention (batched, differentiable torch).

Formula: RELION 5 ``src/jaz/tomography/tomogram.cpp`` ``Tomogram::setProjectionMatrix``::

    P_f = T(shift_f / pixel + image centre) · Rz(ZRot) · Ry(YTilt) · Rx(XTilt) · T(−specimen centre)

with ``shift_f = (rlnTomoXShiftAngst, rlnTomoYShiftAngst)`` in Å, the tilt-series pixel size
``rlnTomoTiltSeriesPixelSize`` in Å, ``Rx/Ry/Rz`` active right-handed rotations by
``rlnTomoXTilt/YTilt/ZRot`` degrees (gravis ``t3Matrix::rotation``, the GL formula), the image
centre ``(int(W/2), int(H/2), 0)`` of the tilt images and the specimen centre
``(int(X/2), int(Y/2), int(Z/2))`` of the tomogram (``rlnTomoSizeX/Y/Z``): integer divisions,
as the C++ computes them. ``P_f`` maps a tomogram position (tilt-series pixels, origin at voxel
0, the coordinates RELION's C++ calls "decentred pixels") to the tilt image's pixel
coordinates (x = column, y = row, origin at pixel 0); its third row is the depth along the
beam.

Centred coordinates: RELION 5 ``rlnCenteredCoordinateX/Y/ZAngst`` are relative to the tomogram
centre ``size / 2`` (exact halves: ``Tomogram::centre = (w0/2.0, h0/2.0, d0/2.0)`` in
``TomogramSet::loadTomogram``, used by ``ParticleSet::getParticleCoordDecenteredPixel`` in
``particle_set.cpp``)::

    position_px = rlnCenteredCoordinate*Angst / rlnTomoTiltSeriesPixelSize + size / 2

For even sizes (the usual case) this centre equals the projection's specimen centre; for odd
sizes RELION's C++ differs from itself by half a pixel, and we reproduce it as it is. RELION 5's
Python picking tools (``tomography_python_programs/get_particle_poses``) use
``(size / 2 − 1) × pixel`` instead, so their centred coordinates are one pixel larger than the C++
programs read them; we follow the C++ (:func:`tomogram_centre_px` is the one place).

Depth and defocus: ``Tomogram::getDepthOffset`` is ``(P_f p).z − (P_f centre).z``, the
component of ``p − centre`` along the beam ``Rᵀ ẑ``; ``Tomogram::getCtf`` adds
``rlnTomoHand × pixel × rlnTomoDefocusSlope × depth`` (Å) to both defocus values of the tilt.

Inverse: :func:`angles_from_matrices` recovers the 5 parameters from a RELION 4
``rlnTomoProjX/Y/Z/W`` matrix as ``Tomogram::getProjectionAnglesFromMatrix`` does
(geometrictools' XYZ decomposition), but with the same integer specimen centre as the forward
formula so that the round trip is exact for odd sizes too (RELION's own uses ``w/2.0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from subtomo.geometry.euler import rotation_x, rotation_y, rotation_z

__all__ = [
    "RelionParameters",
    "angles_from_matrices",
    "image_centre_px",
    "project_points",
    "projection_matrices",
    "specimen_centre_px",
    "tilt_rotations",
    "tomogram_centre_px",
]


@dataclass
class RelionParameters:
    """The five RELION 5 parameters per tilt (deg, deg, deg, Å, Å) and, for IMOD input, the
    largest position error (px at the image corners) from dropping magnification or skew."""

    xtilt: np.ndarray
    ytilt: np.ndarray
    zrot: np.ndarray
    shift_x_A: np.ndarray
    shift_y_A: np.ndarray
    distortion_px: float = 0.0

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return self.xtilt, self.ytilt, self.zrot, self.shift_x_A, self.shift_y_A


def tomogram_centre_px(size_px) -> Tensor:
    """Origin of ``rlnCenteredCoordinate*Angst``: ``size / 2`` (tilt-series px), ``(..., 3)``."""
    return torch.as_tensor(size_px, dtype=torch.float64) / 2.0


def specimen_centre_px(size_px) -> Tensor:
    """Rotation centre of the projection: ``int(size / 2)`` per axis (px), ``(..., 3)``."""
    return torch.div(torch.as_tensor(size_px, dtype=torch.int64), 2,
                     rounding_mode="floor").to(torch.float64)


def image_centre_px(image_size_px) -> Tensor:
    """Tilt-image centre ``(int(W / 2), int(H / 2))`` (px)."""
    return specimen_centre_px(image_size_px)


def tilt_rotations(xtilt_deg: Tensor, ytilt_deg: Tensor, zrot_deg: Tensor) -> Tensor:
    """``Rz(ZRot) · Ry(YTilt) · Rx(XTilt)``: ``(..., 3, 3)``; rows are the image x and y axes
    and the beam direction in tomogram coordinates."""
    return rotation_z(zrot_deg) @ rotation_y(ytilt_deg) @ rotation_x(xtilt_deg)


def projection_matrices(
    xtilt_deg: Tensor,
    ytilt_deg: Tensor,
    zrot_deg: Tensor,
    shift_x_A: Tensor,
    shift_y_A: Tensor,
    pixel_size_A: float,
    tomo_size_px,
    image_size_px,
) -> Tensor:
    """RELION 5 projection matrices ``(T, 4, 4)``: tomogram px → image px (see module docs).

    The five per-tilt parameters are ``(T,)`` tensors (degrees and Å); gradients flow through
    them. Sizes are ``(X, Y, Z)`` and ``(W, H)`` in tilt-series pixels.
    """
    params = torch.broadcast_tensors(*(torch.as_tensor(p) for p in (
        xtilt_deg, ytilt_deg, zrot_deg, shift_x_A, shift_y_A)))
    dtype = params[0].dtype if torch.is_floating_point(params[0]) else torch.float64
    xt, yt, zr, sx, sy = (p.to(dtype) for p in params)
    rot = tilt_rotations(xt, yt, zr)
    centre = specimen_centre_px(tomo_size_px).to(device=rot.device, dtype=dtype)
    image_centre = image_centre_px(image_size_px).to(device=rot.device, dtype=dtype)
    shift = torch.stack([sx / pixel_size_A + image_centre[0], sy / pixel_size_A
                         + image_centre[1], torch.zeros_like(sx)], dim=-1)
    translation = shift - rot @ centre
    top = torch.cat([rot, translation[..., None]], dim=-1)
    bottom = torch.zeros(*top.shape[:-2], 1, 4, dtype=dtype, device=rot.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def project_points(matrices: Tensor, points_px: Tensor) -> Tensor:
    """Apply projection matrices ``(T, 4, 4)`` to tomogram positions.

    ``points_px``: ``(N, 3)`` (one position per particle) or ``(N, T, 3)`` (a position per
    particle and tilt, e.g. with motion). Returns ``(N, T, 3)``: image x, y (px) and the depth
    coordinate (px, the third row of ``P``).
    """
    m = matrices.to(points_px.dtype)
    if points_px.ndim == 2:
        return torch.einsum("tij,nj->nti", m[:, :3, :3], points_px) + m[:, :3, 3]
    return torch.einsum("tij,ntj->nti", m[:, :3, :3], points_px) + m[:, :3, 3]


def angles_from_matrices(matrices: Tensor, pixel_size_A: float, tomo_size_px, image_size_px
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(xtilt, ytilt, zrot, shift_x_A, shift_y_A)`` of projection matrices ``(T, 4, 4)``.

    RELION ``Tomogram::getProjectionAnglesFromMatrix``: ``xtilt = atan2(A21, A22)``,
    ``ytilt = asin(−A20)``, ``zrot = atan2(A10, A00)`` (gimbal lock at |A20| = 1 as there), then
    the shifts from the translation column with the forward formula's centres.
    """
    a = torch.as_tensor(matrices, dtype=torch.float64)
    a20 = a[:, 2, 0].clamp(-1.0, 1.0)
    regular = a20.abs() < 1.0
    xt = torch.where(regular, torch.atan2(a[:, 2, 1], a[:, 2, 2]), torch.zeros_like(a20))
    yt = torch.asin(-a20)
    zr = torch.where(regular, torch.atan2(a[:, 1, 0], a[:, 0, 0]),
                     torch.where(a20 <= -1.0, -torch.atan2(-a[:, 1, 2], a[:, 1, 1]),
                                 torch.atan2(-a[:, 1, 2], a[:, 1, 1])))
    xt, yt, zr = (torch.rad2deg(v) for v in (xt, yt, zr))
    rot = tilt_rotations(xt, yt, zr)
    centre = specimen_centre_px(tomo_size_px)
    image_centre = image_centre_px(image_size_px)
    shift_px = a[:, :2, 3] + (rot @ centre)[:, :2] - image_centre
    return xt, yt, zr, shift_px[:, 0] * pixel_size_A, shift_px[:, 1] * pixel_size_A
