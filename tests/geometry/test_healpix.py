"""Tests for subtomo.geometry.healpix against analytic HEALPix facts and covering properties."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.geometry.euler import angular_distance_deg, euler_to_matrix
from subtomo.geometry.healpix import (
    ASU_CENTRE,
    angular_step_deg,
    cell_children,
    healpix_directions,
    local_rotations,
    nside,
    rotation_grid,
)
from subtomo.geometry.symmetry import symmetry_operators

F64 = torch.float64
GROUPS = ["C1", "C2", "C3", "C6", "C13", "D2", "D7", "T", "O", "I", "I1", "I3", "I4"]


def _unit(rot_tilt_deg: torch.Tensor) -> torch.Tensor:
    rot, tilt = torch.deg2rad(rot_tilt_deg).unbind(-1)
    return torch.stack(
        [torch.sin(tilt) * torch.cos(rot), torch.sin(tilt) * torch.sin(rot), torch.cos(tilt)], -1
    )


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    """Uniform random rotations (Haar) via normalised Gaussian quaternions."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=F64)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _nearest_deg(q: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Angular distance (degrees) from each q (M,3,3) to its nearest grid rotation (R,3,3)."""
    trace = q.reshape(-1, 9) @ grid.reshape(-1, 9).T  # trace(q @ a.T)
    cos = ((trace.max(dim=1).values - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def _asu_mask(sym: str, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-grid direction vectors and the mask of those kept by rotation_grid."""
    dirs = healpix_directions(order)
    _, angles = rotation_grid(order, sym, dtype=F64)
    kept = torch.unique(angles[:, :2], dim=0)
    mask = ((dirs[:, None] - kept[None]).abs().amax(-1) < 1e-9).any(1)
    return _unit(dirs), mask


@pytest.mark.parametrize("order", range(5))
def test_pixel_count_and_ranges(order: int) -> None:
    d = healpix_directions(order)
    assert nside(order) == 2**order
    assert d.shape == (12 * 4**order, 2) and d.dtype == F64
    assert (d[:, 0] >= 0).all() and (d[:, 0] < 360).all()
    assert (d[:, 1] > 0).all() and (d[:, 1] < 180).all()
    assert torch.unique(d, dim=0).shape[0] == d.shape[0]
    assert angular_step_deg(order) == pytest.approx(60.0 / 2**order)


def test_order0_base_pixels() -> None:
    v = _unit(healpix_directions(0))
    expected = []
    for z, phase in ((2 / 3, 0.25), (0.0, 0.0), (-2 / 3, 0.25)):
        for k in range(4):
            phi = math.pi * (phase + k / 2)
            r = math.sqrt(1 - z * z)
            expected.append([r * math.cos(phi), r * math.sin(phi), z])
    e = torch.tensor(expected, dtype=F64)
    assert ((v[:, None] - e[None]).abs().amax(-1).amin(1) < 1e-12).all()
    assert ((e[:, None] - v[None]).abs().amax(-1).amin(1) < 1e-12).all()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ring_positions(order: int) -> None:
    """First ring: 4 pixels at z = 1 - 1/(3 Nside^2), phi = 45 + 90k; equator: 4 Nside, z = 0."""
    n = nside(order)
    v = _unit(healpix_directions(order))
    d = healpix_directions(order)
    assert torch.allclose(v[:4, 2], torch.full((4,), 1 - 1 / (3 * n * n), dtype=F64))
    assert torch.allclose(d[:4, 0], torch.tensor([45.0, 135.0, 225.0, 315.0], dtype=F64))
    assert int((v[:, 2].abs() < 1e-12).sum()) == 4 * n
    z_belt = torch.unique(torch.round(v[:, 2], decimals=12))
    assert z_belt.numel() == 4 * n - 1  # number of iso-latitude rings


def test_equal_area_moments() -> None:
    z = _unit(healpix_directions(3))[:, 2]
    assert abs(z.mean().item()) < 1e-12
    assert (z**2).mean().item() == pytest.approx(1 / 3, abs=1e-3)


@pytest.mark.parametrize("order", range(5))
def test_nearest_neighbour_spacing(order: int) -> None:
    v = _unit(healpix_directions(order))
    dots = v @ v.T
    dots.fill_diagonal_(-2.0)
    nn = torch.rad2deg(torch.acos(dots.max(dim=1).values.clamp(-1, 1)))
    ref = math.degrees(math.sqrt(math.pi / 3)) / 2**order  # sqrt(pixel area) = 58.6 / 2^N
    # measured: order 0 all acos(sqrt(10)/6) = 58.19 deg; orders 1-4 in [0.81, 1.03] x ref
    assert nn.min() >= 0.75 * ref and nn.max() <= 1.1 * ref
    if order == 0:
        assert torch.allclose(nn, torch.full_like(nn, math.degrees(math.acos(10**0.5 / 6))))


def test_rotation_grid_order2_c1() -> None:
    mats, angles = rotation_grid(2, dtype=F64)
    assert mats.shape == (4608, 3, 3) and angles.shape == (4608, 3)
    assert torch.allclose(torch.linalg.det(mats), torch.ones(4608, dtype=F64))
    assert torch.allclose(mats @ mats.transpose(-1, -2), torch.eye(3, dtype=F64).expand_as(mats))
    assert torch.allclose(euler_to_matrix(angles), mats)
    psi = torch.unique(angles[:, 2])
    assert torch.allclose(psi, torch.arange(24, dtype=F64) * 15.0)
    # measured covering radius (max over 4e5 random rotations): 13.5 deg = 0.90 step
    nearest = _nearest_deg(_random_rotations(200, seed=0), mats)
    assert nearest.max() < 1.0 * angular_step_deg(2)
    f32, _ = rotation_grid(2)
    assert f32.dtype == torch.float32


def test_asu_centre_is_generic() -> None:
    c = torch.tensor(ASU_CENTRE, dtype=F64)
    c = c / c.norm()
    for sym in GROUPS[1:]:
        ops = symmetry_operators(sym)
        assert (ops[1:] @ c - c).norm(dim=-1).min() > 0.1, sym


@pytest.mark.parametrize("n", [2, 3, 5, 6, 7, 13])
def test_cn_asymmetric_unit_size(n: int) -> None:
    _, mask = _asu_mask(f"C{n}", 4)
    assert int(mask.sum()) * n == pytest.approx(3072, rel=0.03)


@pytest.mark.parametrize("sym", ["C1", "Ci", "Cs"])
def test_trivial_proper_groups_keep_all(sym: str) -> None:
    mats, _ = rotation_grid(1, sym)
    assert mats.shape[0] == 48 * 12


@pytest.mark.parametrize("sym", GROUPS)
def test_asymmetric_unit_covers_sphere(sym: str) -> None:
    order = 3
    v, mask = _asu_mask(sym, order)
    ops = symmetry_operators(sym)
    images = (ops @ v[mask].T).transpose(1, 2).reshape(-1, 3)
    dist = torch.rad2deg(torch.acos((v @ images.T).max(dim=1).values.clamp(-1, 1)))
    assert dist.max() < angular_step_deg(order)  # measured <= 0.90 step
    assert int(mask.sum()) * ops.shape[0] == pytest.approx(768, rel=0.2)


def _covering_modulo(mats: torch.Tensor, sym: str, q: torch.Tensor) -> torch.Tensor:
    ops = symmetry_operators(sym)
    return torch.stack([_nearest_deg(q @ g.T, mats) for g in ops]).amin(0)


@pytest.mark.parametrize("perturb", [0.0, 7.0])
def test_c6_grid_covers_so3_modulo_c6(perturb: float) -> None:
    mats, _ = rotation_grid(2, "C6", perturb_deg=perturb, seed=1, dtype=F64)
    assert mats.shape[0] == 35 * 24  # 35 of 192 directions, ~1/6
    nearest = _covering_modulo(mats, "C6", _random_rotations(200, seed=1))
    assert nearest.max() < 1.0 * angular_step_deg(2)  # measured max 13.5 deg over 2e4


def test_perturbation_moves_every_rotation_by_angle() -> None:
    base, _ = rotation_grid(1, "D2", dtype=F64)
    mats, angles = rotation_grid(1, "D2", perturb_deg=3.5, seed=42, dtype=F64)
    dist = angular_distance_deg(mats, base)
    assert torch.allclose(dist, torch.full_like(dist, 3.5), atol=1e-9)
    # left multiplication by one P: mats @ base.T is the same matrix for every pose
    p = mats @ base.transpose(-1, -2)
    assert torch.allclose(p, p[:1].expand_as(p), atol=1e-12)
    assert torch.allclose(euler_to_matrix(angles), mats, atol=1e-12)
    again, _ = rotation_grid(1, "D2", perturb_deg=3.5, seed=42, dtype=F64)
    other, _ = rotation_grid(1, "D2", perturb_deg=3.5, seed=43, dtype=F64)
    assert torch.equal(mats, again)
    assert not torch.allclose(mats, other)


@pytest.mark.parametrize(
    ("step", "radius", "count"), [(2.0, 1.9, 1), (2.0, 2.0, 7), (1.0, 1.5, 19)]
)
def test_local_rotations_small_counts(step: float, radius: float, count: int) -> None:
    assert local_rotations(step, radius).shape == (count, 3, 3)


def test_local_rotations_cover_ball() -> None:
    step, radius = 2.0, 8.0
    deltas = local_rotations(step, radius, dtype=F64)
    eye = torch.eye(3, dtype=F64)
    assert torch.equal(deltas[0], eye)
    angle = angular_distance_deg(deltas, eye.expand_as(deltas))
    assert angle.max() <= radius + 1e-9
    assert torch.all(angle[1:] >= angle[:-1] - 1e-9)
    assert torch.allclose(torch.linalg.det(deltas), torch.ones(len(deltas), dtype=F64))
    # random rotations within radius / 2 of the identity
    g = torch.Generator().manual_seed(5)
    axis = torch.randn(300, 3, generator=g, dtype=F64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    theta = torch.deg2rad(torch.rand(300, generator=g, dtype=F64) * radius / 2)
    k = torch.zeros(300, 3, 3, dtype=F64)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(-1, -2)
    s, c = torch.sin(theta)[:, None, None], torch.cos(theta)[:, None, None]
    q = eye + s * k + (1 - c) * (k @ k)
    assert _nearest_deg(q, deltas).max() <= step * math.sqrt(3) / 2 + 1e-6


def test_cell_children_tile_the_local_cell():
    """Identity first, then 8 rotations at step/4·√3 from it; every point of the coarse cell
    (cube of side ``step`` in rotation-vector space) is within step/4·√3 of one of them."""
    step = 8.0
    children = cell_children(step, dtype=torch.float64)
    assert children.shape == (9, 3, 3)
    assert torch.allclose(children[0], torch.eye(3, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(8, 3, 3)
    angles = angular_distance_deg(children[1:], eye)
    expected = torch.full((8,), step / 4 * math.sqrt(3), dtype=torch.float64)
    assert torch.allclose(angles, expected, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    v = (torch.rand(500, 3, generator=g, dtype=torch.float64) - 0.5) * math.radians(step)
    K = torch.zeros(500, 3, 3, dtype=torch.float64)
    K[:, 2, 1], K[:, 0, 2], K[:, 1, 0] = v[:, 0], v[:, 1], v[:, 2]
    R = torch.linalg.matrix_exp(K - K.transpose(1, 2))  # exp of the rotation vector v
    nearest = angular_distance_deg(R[:, None], children[None]).min(dim=1).values
    assert float(nearest.max()) <= step / 4 * math.sqrt(3) * 1.01
