"""Tests for subtomo.geometry.symmetry: group structure and RELION's axis placement."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from subtomo.geometry.symmetry import group_order, symmetry_operators

PHI = (1.0 + math.sqrt(5.0)) / 2.0
PROPER = ["C1", "C2", "c6", "C13", "D1", "D2", "d7", "T", "O", "I", "I1", "I2", "I3", "I4"]


def _rot(axis: tuple[float, float, float], angle_deg: float) -> torch.Tensor:
    """Active rotation by Rodrigues' formula, independent of the module."""
    k = np.asarray(axis, dtype=float)
    k /= np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = math.radians(angle_deg)
    return torch.from_numpy(np.eye(3) + math.sin(t) * kx + (1 - math.cos(t)) * kx @ kx)


def _contains(ops: torch.Tensor, m: torch.Tensor, tol: float = 1e-6) -> bool:
    return bool(((ops - m).abs().amax(dim=(-1, -2)) < tol).any())


def _has_axis(ops: torch.Tensor, axis: tuple[float, float, float], fold: int) -> bool:
    return _contains(ops, _rot(axis, 360.0 / fold))


def _expected_order(name: str) -> int:
    key = name.upper()
    if key[0] in "CD" and key[1:].isdigit():
        return int(key[1:]) * (2 if key[0] == "D" else 1)
    return {"T": 12, "O": 24}.get(key, 60)


@pytest.mark.parametrize("name", PROPER)
def test_group_structure(name: str) -> None:
    ops = symmetry_operators(name)
    n = _expected_order(name)
    assert ops.shape == (n, 3, 3) and ops.dtype == torch.float64
    assert group_order(name) == n
    torch.testing.assert_close(ops[0], torch.eye(3, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    torch.testing.assert_close(ops @ ops.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(ops), torch.ones(n, dtype=torch.float64))
    # Closure: every product is in the set; all operators distinct.
    products = (ops[:, None] @ ops[None]).reshape(-1, 3, 3)
    dist = (products[:, None] - ops[None]).abs().amax(dim=(-1, -2))
    assert bool((dist.amin(dim=1) < 1e-10).all())
    pair = (ops[:, None] - ops[None]).abs().amax(dim=(-1, -2)) + 10 * torch.eye(n)
    assert bool((pair > 1e-3).all())


def test_improper_groups() -> None:
    ci = symmetry_operators("ci")
    torch.testing.assert_close(ci, torch.stack([torch.eye(3), -torch.eye(3)]).double())
    cs = symmetry_operators("Cs")
    torch.testing.assert_close(cs[1], torch.diag(torch.tensor([1.0, 1.0, -1.0])).double())
    assert group_order("CS") == 2


def test_cyclic_and_dihedral_axes() -> None:
    assert _has_axis(symmetry_operators("c6"), (0, 0, 1), 6)
    d2 = symmetry_operators("D2")
    for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        assert _has_axis(d2, axis, 2)
    # Dn = {Rz(360k/n), Rx(180) Rz(360k/n)}: n-fold on z, a 2-fold on x.
    d7 = symmetry_operators("d7")
    expected = [_rot((0, 0, 1), 360 * k / 7) for k in range(7)]
    expected += [_rot((1, 0, 0), 180) @ m for m in expected]
    for m in expected:
        assert _contains(d7, m)
    assert not _has_axis(symmetry_operators("D7"), (0, 1, 0), 2)


def test_octahedral_is_signed_permutations() -> None:
    ops = symmetry_operators("O")
    expected = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            for row, (col, s) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = s
            if torch.linalg.det(m) > 0:
                expected.append(m)
    assert len(expected) == 24
    for m in expected:
        assert _contains(ops, m, 1e-12)
    for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        assert _has_axis(ops, axis, 4)


def _preserves(ops: torch.Tensor, points: np.ndarray) -> bool:
    pts = torch.from_numpy(points)
    moved = torch.einsum("gij,pj->gpi", ops, pts)
    dist = (moved[:, :, None] - pts[None, None]).norm(dim=-1).amin(dim=-1)
    return bool((dist < 1e-9).all())


def test_tetrahedral_relion_orientation() -> None:
    ops = symmetry_operators("T")
    # RELION: 3-fold on z, 2-fold along (0, 0.816496, 0.577350).
    assert _has_axis(ops, (0, 0, 1), 3)
    assert _has_axis(ops, (0, 0.816496, 0.577350), 2)
    r = 2 * math.sqrt(2) / 3
    verts = np.array(
        [[0, 0, 1]]
        + [[r * math.cos(a), r * math.sin(a), -1 / 3] for a in np.radians([90, 210, 330])]
    )
    assert _preserves(ops, verts)


def _icosahedron(v: tuple[float, float, float]) -> np.ndarray:
    """12 vertices: cyclic permutations of (+-a, +-b, +-c) for v = (a, b, c) with one zero."""
    out = []
    for shift in range(3):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            p = np.roll(np.asarray(v) * np.asarray(signs), shift)
            if not any(np.allclose(p, q) for q in out):
                out.append(p)
    assert len(out) == 12
    return np.array(out)


@pytest.mark.parametrize(
    ("name", "two", "five", "three"),
    [
        # Axes exactly as listed in RELION's src/symmetries.cpp (fill_symmetry_class).
        ("I1", (1, 0, 0), (0.85065080702670, 0, -0.5257311142635), (0.9341723640, 0.3568220765, 0)),
        ("I2", (0, 0, 1), (0.525731114, 0, 0.850650807), (0, 0.356822076, 0.934172364)),
        (
            "I3",
            (-0.5257311143, 0, 0.8506508070),
            (0, 0, 1),
            (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428),
        ),
        (
            "I4",
            (0.5257311143, 0, 0.8506508070),
            (0.8944271932547096, 0, 0.4472135909903704),
            (0.4911234778630044, 0.3568220764705179, 0.7946544753759428),
        ),
    ],
)
def test_icosahedral_relion_axes(name: str, two: tuple, five: tuple, three: tuple) -> None:
    ops = symmetry_operators(name)
    assert _has_axis(ops, two, 2)
    assert _has_axis(ops, five, 5)
    assert _has_axis(ops, three, 3)


def test_icosahedral_settings_documented() -> None:
    i1, i2 = symmetry_operators("I1"), symmetry_operators("I2")
    torch.testing.assert_close(symmetry_operators("i"), i2)
    # I1 and I2: 2-folds on x, y, z (222 settings).
    for ops in (i1, i2):
        for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            assert _has_axis(ops, axis, 2)
    # I2 (Crowther): front-most 5-folds in xz; I1 (Heymann standard): in yz.
    assert _preserves(i2, _icosahedron((1.0, 0.0, PHI)))
    assert _preserves(i1, _icosahedron((0.0, 1.0, PHI)))
    assert _has_axis(i2, (1, 0, PHI), 5) and not _has_axis(i2, (0, 1, PHI), 5)
    assert _has_axis(i1, (0, 1, PHI), 5) and not _has_axis(i1, (1, 0, PHI), 5)
    # I3 and I4: 5-fold on z and a 2-fold on y; front-most 5-fold in -xz (I3) / +xz (I4).
    i3, i4 = symmetry_operators("I3"), symmetry_operators("I4")
    for ops in (i3, i4):
        assert _has_axis(ops, (0, 0, 1), 5)
        assert _has_axis(ops, (0, 1, 0), 2)
    tilt = math.atan(2.0)  # angle between neighbouring 5-folds
    assert _has_axis(i3, (-math.sin(tilt), 0, math.cos(tilt)), 5)
    assert _has_axis(i4, (math.sin(tilt), 0, math.cos(tilt)), 5)
    assert not _has_axis(i3, (math.sin(tilt), 0, math.cos(tilt)), 5)


def test_dtype_device_and_case() -> None:
    ops = symmetry_operators("d2", dtype=torch.float32, device="cpu")
    assert ops.dtype == torch.float32 and ops.device.type == "cpu"
    torch.testing.assert_close(ops.double(), symmetry_operators("D2"), atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", ["X3", "C0", "D", "I5", "Q", "", "C6h", "Oh"])
def test_unknown_group_raises(name: str) -> None:
    with pytest.raises(ValueError, match="unknown symmetry group"):
        symmetry_operators(name)
