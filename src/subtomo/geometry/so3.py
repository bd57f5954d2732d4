"""Rotation maths on SO(3): rotation vectors (Rodrigues), random rotations, a rotation grid.

Rotations are active and right-handed, ``p -> R p`` on column vectors ``(x, y, z)``. A
rotation by ``θ`` (radians) about the unit axis ``k`` is Rodrigues' formula

    ``R = I + sin θ [k]× + (1 - cos θ) [k]×²``,   ``[k]× v = k × v``,

and a rotation vector ``w = θ k`` gives ``R = exp([w]×)`` by the same formula. Angles of poses
are RELION's ZYZ Euler angles in degrees (:mod:`subtomo.geometry.euler`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from subtomo.geometry.euler import rotation_y, rotation_z

__all__ = [
    "axis_angle_to_matrix",
    "fibonacci_rotation_grid",
    "random_rotations",
    "rotation_vector_to_matrix",
]


def _cross_matrix(k: Tensor) -> Tensor:
    """``[k]×`` (..., 3, 3) of vectors ``k`` (..., 3): ``[k]× v = k × v``."""
    zero = torch.zeros_like(k[..., 0])
    return torch.stack([torch.stack([zero, -k[..., 2], k[..., 1]], -1),
                        torch.stack([k[..., 2], zero, -k[..., 0]], -1),
                        torch.stack([-k[..., 1], k[..., 0], zero], -1)], -2)


def _rodrigues(unit_axis: Tensor, angle_rad: Tensor) -> Tensor:
    """``I + sin θ [k]× + (1 - cos θ) [k]×²`` for unit axes (..., 3) and angles θ (...)."""
    kx = _cross_matrix(unit_axis)
    theta = angle_rad[..., None, None]
    eye = torch.eye(3, dtype=kx.dtype, device=kx.device)
    return eye + torch.sin(theta) * kx + (1 - torch.cos(theta)) * (kx @ kx)


def rotation_vector_to_matrix(w: Tensor) -> Tensor:
    """Rotation matrices ``exp([w]×)`` (..., 3, 3) of rotation vectors ``w = θ k`` (..., 3),
    radians: Rodrigues' formula with ``k = w / θ``.

    Below ``θ² < eps`` (the dtype's machine epsilon) it is the Taylor form
    ``I + (1 - θ²/6) [w]× + (1/2 - θ²/24) [w]×²`` (exact to rounding there), so the
    result is differentiable at ``w = 0`` with ``∂R/∂w_i = [e_i]×``.
    """
    theta2 = (w * w).sum(-1)
    small = theta2 < torch.finfo(w.dtype).eps
    safe = torch.where(small[..., None], torch.ones_like(w), w)
    theta = torch.linalg.vector_norm(safe, dim=-1)
    exact = _rodrigues(safe / theta[..., None], theta)
    wx = _cross_matrix(w)
    t2 = theta2[..., None, None]
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    taylor = eye + (1 - t2 / 6) * wx + (0.5 - t2 / 24) * (wx @ wx)
    return torch.where(small[..., None, None], taylor, exact)


def axis_angle_to_matrix(axis: Tensor | tuple[float, float, float],
                         angle_rad: float | Tensor) -> Tensor:
    """Rotations (..., 3, 3), float64, by ``angle_rad`` (radians) about ``axis`` (..., 3, any
    length, normalised here); batch shapes broadcast."""
    a = torch.as_tensor(axis, dtype=torch.float64)
    a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    return _rodrigues(a, torch.as_tensor(angle_rad, dtype=torch.float64))


def random_rotations(n: int, gen: torch.Generator) -> Tensor:
    """``n`` uniformly distributed RELION angles (rot, tilt, psi) in degrees, float64, drawn
    from ``gen``: rot, psi uniform in [-180, 180), ``cos(tilt)`` uniform in [-1, 1]."""
    rot = torch.rand(n, generator=gen, dtype=torch.float64) * 360 - 180
    psi = torch.rand(n, generator=gen, dtype=torch.float64) * 360 - 180
    tilt = torch.rad2deg(torch.arccos(torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1))
    return torch.stack([rot, tilt, psi], dim=1)


def fibonacci_rotation_grid(step_deg: float, in_plane: bool = True) -> Tensor:
    """About uniform SO(3) sampling (N, 3, 3), float64: Fibonacci directions × in-plane
    angles, ~``step_deg`` apart.

    ``n = ceil(1.15 · 4π / step²)`` directions ``(rot, tilt)`` with ``cos tilt = 1 - 2 i / n``
    and ``rot = i · π (3 - √5)`` (``i = 1/2, 3/2, ...``), times ``ceil(360 / step_deg)`` psi
    (one, psi = 0, if not ``in_plane``); the matrices are RELION's
    ``(Rz(rot) Ry(tilt) Rz(psi)).T``, so ``R.T e_z`` is the direction ``(rot, tilt)``.
    """
    step = math.radians(step_deg)
    n_dir = max(2, int(math.ceil(4 * math.pi / step**2 * 1.15)))
    i = torch.arange(n_dir, dtype=torch.float64) + 0.5
    tilt = torch.rad2deg(torch.arccos(1 - 2 * i / n_dir))
    rot = torch.rad2deg(torch.remainder(i * math.pi * (3 - math.sqrt(5)), 2 * math.pi))
    n_psi = max(1, int(math.ceil(360.0 / step_deg))) if in_plane else 1
    psi = torch.arange(n_psi, dtype=torch.float64) * 360.0 / n_psi
    direction = rotation_z(rot) @ rotation_y(tilt)  # (n_dir, 3, 3)
    mats = (direction[:, None] @ rotation_z(psi)[None]).reshape(-1, 3, 3)
    return mats.transpose(-1, -2).contiguous()
