"""RELION-compatible HEALPix orientation sampling (pure torch; healpy is not used).

At HEALPix order ``N`` (``Nside = 2**N``) RELION samples the ``12 * Nside**2`` HEALPix pixel
centres as viewing directions (``rot = phi``, ``tilt = theta``, degrees) and, for each, the
in-plane angle ``psi = 0, step, 2 step, ...`` with ``step = 360 / (6 * Nside)`` degrees (the
reported angular sampling; order 2: 192 directions x 24 psi = 4608 rotations, 15 degrees).
Pixel centres follow the standard RING-scheme ``pix2ang`` formulas; only the set of points
matters, not their numbering.

Matrices are RELION's ``A = euler_to_matrix(rot, tilt, psi)`` (reference -> particle); the
viewing direction of a pose is ``A.T @ e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)``.

Symmetry: for a point group with operators ``R_g`` the poses ``A`` and ``A @ R_g.T`` are
equivalent, so direction ``d`` is equivalent to ``R_g @ d``. Directions are restricted to the
Dirichlet (Voronoi) asymmetric unit around the fixed generic unit vector ``c`` =
normalised ``(0.31, 0.17, 0.93)``: keep ``d`` iff ``c.d >= c.(R_g d) - 1e-6`` for every proper
``R_g``. ``c`` lies on no rotation axis of any group in :mod:`subtomo.geometry.symmetry`.
Improper operators (``Ci``, ``Cs``) are ignored since ``A @ R_g.T`` would not be a rotation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from subtomo.geometry.euler import euler_to_matrix, matrix_to_euler
from subtomo.geometry.so3 import rotation_vector_to_matrix
from subtomo.geometry.symmetry import symmetry_operators

__all__ = [
    "ASU_CENTRE",
    "angular_step_deg",
    "cell_children",
    "healpix_directions",
    "local_rotations",
    "nside",
    "rotation_grid",
]

#: Generic direction (unnormalised) around which the asymmetric unit of directions is built.
ASU_CENTRE: tuple[float, float, float] = (0.31, 0.17, 0.93)
_ASU_EPS = 1e-6
_F64 = torch.float64


def nside(order: int) -> int:
    """HEALPix ``Nside = 2**order`` (``order >= 0``)."""
    if order < 0:
        raise ValueError(f"HEALPix order must be >= 0, got {order}")
    return 2**order


def angular_step_deg(order: int) -> float:
    """RELION's reported angular sampling at ``order``: ``360 / (6 * Nside)`` degrees."""
    return 360.0 / (6 * nside(order))


def healpix_directions(
    order: int, *, dtype: torch.dtype = _F64, device: torch.device | str | None = None
) -> Tensor:
    """HEALPix pixel centres as (12 * 4**order, 2) ``(rot, tilt)`` in degrees, ring order.

    ``rot = phi`` in [0, 360), ``tilt = theta`` in (0, 180), north to south.
    """
    n = nside(order)
    thetas, phis = [], []
    for i in range(1, 4 * n):  # ring index, 1 .. 4 Nside - 1
        k = min(i, 4 * n - i)  # ring index counted from the nearer pole
        if k < n:  # polar cap: 4k pixels, 1 - |z| = k^2 / (3 Nside^2)
            theta = 2.0 * math.asin(k / (math.sqrt(6.0) * n))
            theta = theta if i < n else math.pi - theta
            count, shift, dphi = 4 * k, 0.5, math.pi / (2 * k)
        else:  # equatorial belt: 4 Nside pixels, z = (2 Nside - i) * 2 / (3 Nside)
            theta = math.acos((2 * n - i) * 2.0 / (3.0 * n))
            count, shift, dphi = 4 * n, 0.5 if (i + n) % 2 == 0 else 0.0, math.pi / (2 * n)
        phis.append((torch.arange(count, dtype=_F64) + shift) * dphi)
        thetas.append(torch.full((count,), theta, dtype=_F64))
    out = torch.rad2deg(torch.stack([torch.cat(phis), torch.cat(thetas)], dim=-1))
    return out.to(dtype=dtype, device=device)


def _unit_vectors(rot_tilt_deg: Tensor) -> Tensor:
    rot, tilt = torch.deg2rad(rot_tilt_deg).unbind(-1)
    st = torch.sin(tilt)
    return torch.stack([st * torch.cos(rot), st * torch.sin(rot), torch.cos(tilt)], dim=-1)


def _asymmetric_mask(directions: Tensor, sym: str) -> Tensor:
    """Bool mask of unit vectors (N, 3) in the Dirichlet asymmetric unit of ``sym``."""
    ops = symmetry_operators(sym, dtype=_F64, device=directions.device)
    ops = ops[torch.linalg.det(ops) > 0]
    c = torch.tensor(ASU_CENTRE, dtype=_F64, device=directions.device)
    c = c / torch.linalg.vector_norm(c)
    images = ops.transpose(-1, -2) @ c  # rows R_g^T c, so images @ d = c . (R_g d)
    return ((directions @ c)[:, None] >= directions @ images.T - _ASU_EPS).all(dim=1)


def rotation_grid(
    order: int,
    sym: str = "C1",
    *,
    perturb_deg: float = 0.0,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """RELION HEALPix rotation grid: (matrices (R, 3, 3), angles (R, 3) rot/tilt/psi degrees).

    All directions of the asymmetric unit of ``sym`` (direction-major) times all
    ``6 * Nside`` psi values. ``perturb_deg != 0`` left-multiplies every matrix by one random
    rotation ``P`` of exactly ``perturb_deg`` degrees about a random axis (``A -> P @ A``,
    seeded by ``seed``), so every rotation moves by ``perturb_deg``; left multiplication
    commutes with the symmetry equivalence ``A ~ A @ R_g.T``, so the perturbed grid still
    covers SO(3) modulo the group. Perturbed angles come from ``matrix_to_euler`` (rot and
    psi in (-180, 180]); unperturbed ones are the grid values (rot, psi in [0, 360)).
    """
    dirs = healpix_directions(order)
    dirs = dirs[_asymmetric_mask(_unit_vectors(dirs), sym)]
    n_psi = 6 * nside(order)
    psi = torch.arange(n_psi, dtype=_F64) * angular_step_deg(order)
    angles = torch.cat(
        [dirs.repeat_interleave(n_psi, dim=0), psi.repeat(dirs.shape[0])[:, None]], dim=-1
    )
    mats = euler_to_matrix(angles)
    if perturb_deg != 0.0:
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        axis = torch.randn(3, generator=gen, dtype=_F64)
        axis = axis / torch.linalg.vector_norm(axis)
        mats = rotation_vector_to_matrix(axis * math.radians(perturb_deg)) @ mats
        angles = matrix_to_euler(mats)
    return mats.to(dtype=dtype, device=device), angles.to(dtype=dtype, device=device)


def local_rotations(
    step_deg: float,
    radius_deg: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Small rotations (J, 3, 3) around the identity, identity first, sorted by angle.

    Cubic grid of spacing ``step_deg`` (degrees) in rotation-vector (axis * angle) space,
    keeping rotations by at most ``radius_deg`` degrees. Meant as candidates ``A_i @ delta_j``.
    """
    if step_deg <= 0 or radius_deg < 0:
        raise ValueError(f"need step_deg > 0 and radius_deg >= 0, got {step_deg}, {radius_deg}")
    m = int(math.floor(radius_deg / step_deg + 1e-9))
    ticks = torch.arange(-m, m + 1, dtype=_F64) * math.radians(step_deg)
    v = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), dim=-1).reshape(-1, 3)
    norm = torch.linalg.vector_norm(v, dim=-1)
    keep = norm <= math.radians(radius_deg) * (1.0 + 1e-12)
    v, norm = v[keep], norm[keep]
    v = v[torch.argsort(norm, stable=True)]
    return rotation_vector_to_matrix(v).to(dtype=dtype, device=device)


def cell_children(
    step_deg: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The identity and the 8 centres of the half-size sub-cells (rotation vectors
    ``(±1, ±1, ±1) step / 4``) of a cubic cell of ``step_deg`` (degrees) in rotation-vector
    space: RELION's one-order oversampling of a local grid point, (9, 3, 3)."""
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=_F64)] * 3)
    v = torch.cat([torch.zeros(1, 3, dtype=_F64), corners]) * math.radians(step_deg) / 4
    return rotation_vector_to_matrix(v).to(dtype=dtype, device=device)
