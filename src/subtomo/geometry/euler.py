"""Euler angles and rotation matrices in RELION's convention (batched, torch).

Convention (identical to RELION's ``Euler_angles2matrix`` / ``Euler_matrix2angles``,
XMIPP and SPIDER): angles ``(rot, tilt, psi)`` in degrees, intrinsic ZYZ, right-handed
(positive angles rotate counter-clockwise looking down the axis). With the active
rotations::

    Rz(a) = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    Ry(b) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]

RELION's matrix is ``A = (Rz(rot) @ Ry(tilt) @ Rz(psi)).T``; e.g.
``A[2, 0] = sin(tilt) cos(rot)`` and ``A[0, 2] = -cos(psi) sin(tilt)``. ``A`` acts on
column vectors (x, y, z): a reference point r appears at ``A @ r`` in the particle, i.e. it
rotates the reference into the particle (``rlnAngleRot/Tilt/Psi``). scipy's
``Rotation.from_euler('ZYZ', [rot, tilt, psi], degrees=True).as_matrix()`` equals ``A.T``.

Dynamo uses ZXZ angles ``(tdrot, tilt, narot)`` in degrees. For the same particle pose
(checked against ``eulerangles.convert_eulers(..., 'dynamo', 'relion')``)::

    rot = narot - 90,  tilt = tilt,  psi = tdrot + 90   (mod 360)

All functions accept any leading batch shape, float32/float64 and any device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "angular_distance_deg",
    "dynamo_to_relion",
    "euler_to_matrix",
    "matrix_to_euler",
    "relion_to_dynamo",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "wrap_angle_deg",
]


def _as_float(x: Tensor | float) -> Tensor:
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    return x


def wrap_angle_deg(angle_deg: Tensor) -> Tensor:
    """Wrap angles (degrees) into the half-open interval (-180, 180]."""
    angle_deg = _as_float(angle_deg)
    return angle_deg - 360.0 * torch.ceil((angle_deg - 180.0) / 360.0)


def _axis_rotation(angle_deg: Tensor | float, axis: int) -> Tensor:
    a = torch.deg2rad(_as_float(angle_deg))
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def rotation_x(angle_deg: Tensor | float) -> Tensor:
    """Active right-handed rotation about x by ``angle_deg`` (degrees); shape (..., 3, 3)."""
    return _axis_rotation(angle_deg, 0)


def rotation_y(angle_deg: Tensor | float) -> Tensor:
    """Active right-handed rotation about y by ``angle_deg`` (degrees); shape (..., 3, 3)."""
    return _axis_rotation(angle_deg, 1)


def rotation_z(angle_deg: Tensor | float) -> Tensor:
    """Active right-handed rotation about z by ``angle_deg`` (degrees); shape (..., 3, 3)."""
    return _axis_rotation(angle_deg, 2)


def euler_to_matrix(angles_deg: Tensor) -> Tensor:
    """RELION ``Euler_angles2matrix``: (..., 3) ``(rot, tilt, psi)`` in degrees -> (..., 3, 3).

    Returns ``A = (Rz(rot) @ Ry(tilt) @ Rz(psi)).T``.
    """
    angles = torch.deg2rad(_as_float(angles_deg))
    if angles.shape[-1] != 3:
        raise ValueError(f"expected angles of shape (..., 3), got {tuple(angles.shape)}")
    ca, cb, cg = torch.cos(angles).unbind(-1)
    sa, sb, sg = torch.sin(angles).unbind(-1)
    cc, cs = cb * ca, cb * sa
    sc, ss = sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _matrix_to_quaternion(rot: Tensor) -> Tensor:
    """Unit quaternion (w, x, y, z) of an active rotation matrix (Shepperd's method)."""
    m00, m01, m02 = rot[..., 0, 0], rot[..., 0, 1], rot[..., 0, 2]
    m10, m11, m12 = rot[..., 1, 0], rot[..., 1, 1], rot[..., 1, 2]
    m20, m21, m22 = rot[..., 2, 0], rot[..., 2, 1], rot[..., 2, 2]
    trace = m00 + m11 + m22
    # Four candidates, each proportional to q; pick the best-conditioned one.
    cand = torch.stack(
        [
            torch.stack([1 + trace, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], dim=-1),
        ],
        dim=-2,
    )
    diag = torch.stack([trace, m00, m11, m22], dim=-1)
    best = torch.argmax(diag, dim=-1, keepdim=True)
    q = torch.gather(cand, -2, best[..., None].expand(*best.shape, 4)).squeeze(-2)
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def matrix_to_euler(matrix: Tensor) -> Tensor:
    """RELION ``Euler_matrix2angles``: (..., 3, 3) -> (..., 3) ``(rot, tilt, psi)`` in degrees.

    ``rot`` and ``psi`` are in (-180, 180], ``tilt`` in [0, 180]. At gimbal lock
    (tilt = 0 or 180) ``rot`` is set to 0 and the whole in-plane rotation goes to ``psi``,
    as in RELION. Uses the quaternion route, accurate to machine precision everywhere.
    """
    matrix = _as_float(matrix)
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected matrices of shape (..., 3, 3), got {tuple(matrix.shape)}")
    # R = Rz(rot) Ry(tilt) Rz(psi) = A.T with quaternion q = qz(rot) qy(tilt) qz(psi):
    #   w = cos(t/2) cos((r+p)/2), z = cos(t/2) sin((r+p)/2)
    #   y = sin(t/2) cos((r-p)/2), x = -sin(t/2) sin((r-p)/2)
    w, x, y, z = _matrix_to_quaternion(matrix.transpose(-1, -2)).unbind(-1)
    half_cos = torch.hypot(w, z)
    half_sin = torch.hypot(x, y)
    tilt = 2.0 * torch.atan2(half_sin, half_cos)
    sum_ = 2.0 * torch.atan2(z, w)  # rot + psi
    diff = 2.0 * torch.atan2(-x, y)  # rot - psi
    tol = 16.0 * torch.finfo(matrix.dtype).eps
    at_zero = half_sin <= tol
    at_180 = half_cos <= tol
    zero = torch.zeros_like(sum_)
    rot = torch.where(at_zero | at_180, zero, 0.5 * (sum_ + diff))
    psi = torch.where(at_zero, sum_, torch.where(at_180, -diff, 0.5 * (sum_ - diff)))
    tilt = torch.where(at_zero, zero, torch.where(at_180, torch.full_like(tilt, math.pi), tilt))
    out = torch.stack([rot, tilt, psi], dim=-1)
    out = torch.rad2deg(out)
    return torch.stack(
        [wrap_angle_deg(out[..., 0]), out[..., 1], wrap_angle_deg(out[..., 2])], dim=-1
    )


def dynamo_to_relion(tdrot_tilt_narot_deg: Tensor) -> Tensor:
    """Dynamo ZXZ ``(tdrot, tilt, narot)`` -> RELION ZYZ ``(rot, tilt, psi)``, all degrees.

    ``rot = narot - 90``, ``tilt = tilt``, ``psi = tdrot + 90``; rot/psi wrapped to
    (-180, 180].
    """
    a = _as_float(tdrot_tilt_narot_deg)
    tdrot, tilt, narot = a.unbind(-1)
    return torch.stack([wrap_angle_deg(narot - 90.0), tilt, wrap_angle_deg(tdrot + 90.0)], -1)


def relion_to_dynamo(rot_tilt_psi_deg: Tensor) -> Tensor:
    """RELION ZYZ ``(rot, tilt, psi)`` -> Dynamo ZXZ ``(tdrot, tilt, narot)``, all degrees.

    ``tdrot = psi - 90``, ``tilt = tilt``, ``narot = rot + 90``; tdrot/narot wrapped to
    (-180, 180].
    """
    a = _as_float(rot_tilt_psi_deg)
    rot, tilt, psi = a.unbind(-1)
    return torch.stack([wrap_angle_deg(psi - 90.0), tilt, wrap_angle_deg(rot + 90.0)], -1)


def angular_distance_deg(a: Tensor, b: Tensor) -> Tensor:
    """Rotation angle (degrees, in [0, 180]) of ``a @ b.T`` for (..., 3, 3) rotations.

    Uses ``atan2(|skew part|, trace part)``, which is accurate for tiny and near-180 angles.
    """
    r = a @ b.transpose(-1, -2)
    trace = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    skew = torch.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]],
        dim=-1,
    )
    sin2 = torch.linalg.vector_norm(skew, dim=-1)  # 2 sin(theta)
    cos2 = (trace - 1.0).clamp(-2.0, 2.0)  # 2 cos(theta)
    return torch.rad2deg(torch.atan2(sin2, cos2))
