"""Tests for subtomo.geometry.euler against scipy, eulerangles and exact algebra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eulerangles import convert_eulers, euler2matrix
from scipy.spatial.transform import Rotation

from subtomo.geometry.euler import (
    angular_distance_deg,
    dynamo_to_relion,
    euler_to_matrix,
    matrix_to_euler,
    relion_to_dynamo,
    rotation_x,
    rotation_y,
    rotation_z,
    wrap_angle_deg,
)


def _random_angles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)], axis=-1
    )


def _degenerate_angles() -> np.ndarray:
    rows = []
    for tilt in (0.0, 180.0, 1e-9, 1e-6, 1e-3, 180.0 - 1e-9, 180.0 - 1e-6, 90.0):
        for rot, psi in ((0.0, 0.0), (30.0, 50.0), (-170.0, 175.0), (180.0, -180.0), (90, -90)):
            rows.append((rot, tilt, psi))
    return np.array(rows)


def _all_test_angles() -> np.ndarray:
    return np.concatenate([_random_angles(1000), _degenerate_angles()])


def test_euler_to_matrix_matches_scipy_transpose() -> None:
    ang = _all_test_angles()
    expected = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix().transpose(0, 2, 1)
    got = euler_to_matrix(torch.from_numpy(ang))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_euler_to_matrix_relion_entries_and_composition() -> None:
    rot, tilt, psi = 23.0, 61.0, -117.0
    a = euler_to_matrix(torch.tensor([rot, tilt, psi], dtype=torch.float64))
    r, t, p = (math.radians(x) for x in (rot, tilt, psi))
    assert a[2, 0].item() == pytest.approx(math.sin(t) * math.cos(r), abs=1e-14)
    assert a[0, 2].item() == pytest.approx(-math.cos(p) * math.sin(t), abs=1e-14)
    assert a[2, 2].item() == pytest.approx(math.cos(t), abs=1e-14)
    composed = rotation_z(torch.tensor(rot, dtype=torch.float64))
    composed = composed @ rotation_y(torch.tensor(tilt, dtype=torch.float64))
    composed = composed @ rotation_z(torch.tensor(psi, dtype=torch.float64))
    torch.testing.assert_close(a, composed.T, atol=1e-14, rtol=0)


def test_axis_rotations_match_scipy() -> None:
    ang = torch.tensor([-170.0, -33.0, 0.0, 45.0, 90.0, 180.0], dtype=torch.float64)
    for fn, axis in ((rotation_x, "x"), (rotation_y, "y"), (rotation_z, "z")):
        expected = Rotation.from_euler(axis, ang.numpy()[:, None], degrees=True).as_matrix()
        np.testing.assert_allclose(fn(ang).numpy(), expected, atol=1e-14)


def test_batch_shape_and_float32() -> None:
    ang = torch.from_numpy(_random_angles(60, seed=1)).reshape(3, 4, 5, 3)
    m64 = euler_to_matrix(ang)
    m32 = euler_to_matrix(ang.float())
    assert m64.shape == (3, 4, 5, 3, 3)
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), m64, atol=1e-6, rtol=0)
    back = matrix_to_euler(m32)
    assert back.shape == (3, 4, 5, 3) and back.dtype == torch.float32
    torch.testing.assert_close(euler_to_matrix(back).double(), m64, atol=1e-5, rtol=0)


def test_matrix_to_euler_round_trip_random_and_degenerate() -> None:
    ang = torch.from_numpy(_all_test_angles())
    mat = euler_to_matrix(ang)
    back = matrix_to_euler(mat)
    torch.testing.assert_close(euler_to_matrix(back), mat, atol=1e-6, rtol=0)
    # Actually far better than the 1e-6 requirement.
    assert (euler_to_matrix(back) - mat).abs().max() < 1e-12
    rot, tilt, psi = back.unbind(-1)
    assert bool(((rot > -180) & (rot <= 180)).all())
    assert bool(((psi > -180) & (psi <= 180)).all())
    assert bool(((tilt >= 0) & (tilt <= 180)).all())


def test_matrix_to_euler_recovers_generic_angles() -> None:
    ang = torch.from_numpy(_random_angles(500, seed=2))
    back = matrix_to_euler(euler_to_matrix(ang))
    torch.testing.assert_close(back, ang, atol=1e-9, rtol=0)


def test_matrix_to_euler_gimbal_lock_convention() -> None:
    # tilt = 0: only rot + psi matters; RELION puts it all into psi (rot = 0).
    back = matrix_to_euler(euler_to_matrix(torch.tensor([30.0, 0.0, 50.0], dtype=torch.float64)))
    torch.testing.assert_close(back, torch.tensor([0.0, 0.0, 80.0], dtype=torch.float64))
    # tilt = 180: only psi - rot matters; rot = 0.
    back = matrix_to_euler(euler_to_matrix(torch.tensor([30.0, 180.0, 50.0], dtype=torch.float64)))
    torch.testing.assert_close(back, torch.tensor([0.0, 180.0, 20.0], dtype=torch.float64))
    # Identity.
    back = matrix_to_euler(torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(back, torch.zeros(3, dtype=torch.float64))


def test_wrap_angle() -> None:
    x = torch.tensor([-540.0, -180.0, -179.0, 0.0, 180.0, 181.0, 360.0, 540.0])
    expected = torch.tensor([180.0, 180.0, -179.0, 0.0, 180.0, -179.0, 0.0, 180.0])
    torch.testing.assert_close(wrap_angle_deg(x), expected)


def _dynamo_angles() -> np.ndarray:
    rng = np.random.default_rng(3)
    rand = np.stack(
        [rng.uniform(-180, 180, 1000), rng.uniform(0, 180, 1000), rng.uniform(-180, 180, 1000)],
        axis=-1,
    )
    degenerate = np.array([[a, t, b] for t in (0.0, 180.0) for a, b in ((10, 20), (-150, 170))])
    return np.concatenate([rand, degenerate])


_META = {"dynamo": ("zxz", False), "relion": ("zyz", True)}


def _eulerangles_reference(angles: np.ndarray, source: str, target: str) -> tuple:
    """eulerangles' conversion, plus a mask of rows where it reproduces its own input pose.

    eulerangles' matrix2euler snaps some non-degenerate poses (e.g. tilt ~4 deg with
    narot ~ -180, or relion (90, 90, -90)) to a gimbal-lock solution, so its output then no
    longer describes the input rotation even by its own euler2matrix. Those rows are bugs of
    the reference and are excluded (and checked against exact algebra elsewhere).
    """
    out = convert_eulers(angles, source_meta=source, target_meta=target).copy()
    (ax_s, in_s), (ax_t, in_t) = _META[source], _META[target]
    m_s = euler2matrix(angles, axes=ax_s, intrinsic=in_s, right_handed_rotation=True)
    m_t = euler2matrix(out, axes=ax_t, intrinsic=in_t, right_handed_rotation=True)
    ok = np.abs(m_s - m_t).max(axis=(-1, -2)) < 1e-10
    return out, ok


def test_dynamo_to_relion_matches_eulerangles() -> None:
    dyn = _dynamo_angles()
    expected, ok = _eulerangles_reference(dyn, "dynamo", "relion")
    assert ok.mean() > 0.99 and ok[-4:].all()  # degenerate tilts 0 / 180 included
    got = dynamo_to_relion(torch.from_numpy(dyn))
    torch.testing.assert_close(
        euler_to_matrix(got)[ok],
        euler_to_matrix(torch.from_numpy(expected))[ok],
        atol=1e-10,
        rtol=0,
    )


def test_relion_to_dynamo_matches_eulerangles() -> None:
    rel = np.concatenate(
        [_random_angles(1000, seed=6), [[30, 0, 50], [-170, 0, 175], [30, 180, 50], [0, 180, 0]]]
    )
    expected, ok = _eulerangles_reference(rel, "relion", "dynamo")
    assert ok.mean() > 0.99 and ok[-4:].all()
    got = relion_to_dynamo(torch.from_numpy(rel))
    # Compare as rotations: Dynamo's ZXZ angles map to the same RELION matrix ...
    torch.testing.assert_close(
        euler_to_matrix(dynamo_to_relion(got))[ok],
        euler_to_matrix(dynamo_to_relion(torch.from_numpy(expected)))[ok],
        atol=1e-10,
        rtol=0,
    )
    # ... and as Dynamo rotation matrices (extrinsic zxz), via scipy.
    np.testing.assert_allclose(
        Rotation.from_euler("zxz", got.numpy(), degrees=True).as_matrix()[ok],
        Rotation.from_euler("zxz", expected, degrees=True).as_matrix()[ok],
        atol=1e-10,
    )


def test_relion_dynamo_exact_algebra() -> None:
    # Exhaustive ground truth, including near-gimbal-lock angles. Same pose:
    # Rz(rot) Ry(tilt) Rz(psi) == Rz(narot) Rx(tilt) Rz(tdrot) (extrinsic zxz of
    # (tdrot, tilt, narot)), because Rx(t) = Rz(-90) Ry(t) Rz(90).
    rel = _all_test_angles()
    dyn = relion_to_dynamo(torch.from_numpy(rel)).numpy()
    np.testing.assert_allclose(
        Rotation.from_euler("zxz", dyn, degrees=True).as_matrix(),
        Rotation.from_euler("ZYZ", rel, degrees=True).as_matrix(),
        atol=1e-12,
    )
    back = dynamo_to_relion(torch.from_numpy(dyn))
    torch.testing.assert_close(
        euler_to_matrix(back), euler_to_matrix(torch.from_numpy(rel)), atol=1e-12, rtol=0
    )


def test_dynamo_relion_explicit_relation() -> None:
    got = dynamo_to_relion(torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([-60.0, 20.0, 100.0], dtype=torch.float64))
    back = relion_to_dynamo(got)
    torch.testing.assert_close(back, torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64))


def test_angular_distance() -> None:
    rng = np.random.default_rng(4)
    rotvec = rng.normal(size=(200, 3))
    rotvec /= np.linalg.norm(rotvec, axis=-1, keepdims=True)
    theta = np.concatenate([[0.0, 1e-7, 1e-3, 90.0, 179.999, 180.0], rng.uniform(0, 180, 194)])
    delta = Rotation.from_rotvec(rotvec * np.radians(theta)[:, None]).as_matrix()
    b = euler_to_matrix(torch.from_numpy(_random_angles(200, seed=5)))
    a = torch.from_numpy(delta) @ b
    d = angular_distance_deg(a, b)
    np.testing.assert_allclose(d.numpy(), theta, atol=1e-6)
    # Symmetric and zero for identical rotations.
    torch.testing.assert_close(angular_distance_deg(b, a), d)
    assert angular_distance_deg(b, b).abs().max() < 1e-6
