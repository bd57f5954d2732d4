"""Pose pickles for OPUS-TOMO and cryoDRGN, checked against what those tools produce.

Expected values come from the peers, not from re-running subtomo:

* RELION's ``Euler_angles2matrix`` (``src/euler.cpp``) for simple angles, worked by hand;
* ``testing/data/pose.star.pkl`` in alncat/opusTomo, the pickle that ``cryodrgn parse_pose_star
  data/FinalRefinement-OriginalParticles-PfCRT.star -o pose.star.pkl -D 300`` wrote
  (``testing/test_parse.sh``); its STAR gives rlnOriginX/Y in pixels;
* scipy: ``Rotation.from_euler('ZYZ', [rot, tilt, psi], degrees=True).as_matrix()`` is ``A.T``.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.io.poses import (
    dumps_portable,
    poses_cryodrgn,
    poses_opus,
    relion_matrices,
    shifts_to_box_fraction,
    write_poses_pickle,
)

# (rot, tilt, psi) -> RELION matrix A, worked from Euler_angles2matrix by hand.
HAND = [
    ((0.0, 0.0, 0.0), [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
    ((90.0, 0.0, 0.0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((0.0, 0.0, 90.0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((0.0, 90.0, 0.0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
    ((90.0, 90.0, 0.0), [[0, 0, -1], [-1, 0, 0], [0, 1, 0]]),
    ((0.0, 90.0, 90.0), [[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
]

# First three particles of opusTomo testing/data/FinalRefinement-OriginalParticles-PfCRT.star
# (rlnAngleRot, rlnAngleTilt, rlnAnglePsi; rlnOriginX, rlnOriginY in px; 1.035 Å/px) and the
# rows cryoDRGN wrote for them to testing/data/pose.star.pkl with -D 300.
PEER_ANGLES = np.array(
    [
        [16.093530, 86.352776, 98.225690],
        [9.049278, 56.252975, -12.76814],
        [76.378900, 103.415276, 164.730220],
    ]
)
PEER_ORIGIN_PX = np.array([[-0.14063, -0.04688], [-0.14062, 0.046875], [-0.10937, -0.23438]])
PEER_APIX = 1.035
PEER_ROT = np.array(
    [
        [
            [-0.28309893, 0.94840288, 0.14278294],
            [-0.02083069, -0.15491828, 0.98770765],
            [0.95886447, 0.27664471, 0.06361309],
        ],
        [
            [0.56980749, -0.13304058, -0.8109375],
            [-0.03214782, 0.98244412, -0.18376633],
            [0.82114916, 0.13078131, 0.55552706],
        ],
        [
            [-0.20324816, 0.27954388, 0.93837381],
            [0.95195336, -0.16780218, 0.25617813],
            [0.2290742, 0.94535583, -0.23200725],
        ],
    ]
)
PEER_TRANS = np.array(
    [
        [-4.68766667e-04, -1.56266667e-04],
        [-4.68733333e-04, 1.56250000e-04],
        [-3.64566667e-04, -7.81266667e-04],
    ]
)


@pytest.mark.parametrize(("angles", "expected"), HAND)
def test_relion_matrix_simple_angles(angles, expected):
    got = relion_matrices(np.array([angles]))
    assert got.shape == (1, 3, 3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got[0], expected, atol=1e-12)


def test_relion_matrix_general_angle_closed_form():
    # rot=30, tilt=60, psi=45: entries of Euler_angles2matrix with exact trig values.
    r2, r3 = np.sqrt(2.0), np.sqrt(3.0)
    ca, sa, cb, sb, cg, sg = r3 / 2, 0.5, 0.5, r3 / 2, r2 / 2, r2 / 2
    expected = [
        [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
        [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
        [sb * ca, sb * sa, cb],
    ]
    got = relion_matrices(np.array([[30.0, 60.0, 45.0]]))[0]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got[2], [3 / 4, r3 / 4, 1 / 2], atol=1e-12)


def test_relion_matrix_is_transpose_of_scipy_zyz():
    scipy_rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(7)
    angles = np.column_stack(
        [rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)]
    )
    expected = scipy_rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    got = relion_matrices(angles)
    np.testing.assert_allclose(got, np.transpose(expected, (0, 2, 1)), atol=1e-12)
    np.testing.assert_allclose(
        got @ np.transpose(got, (0, 2, 1)), np.eye(3)[None].repeat(50, 0), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=1e-12)


def test_relion_matrix_accepts_reversed_and_read_only_input():
    angles = np.array([[0.0, 90.0, 0.0], [90.0, 0.0, 0.0]])
    angles.setflags(write=False)
    got = relion_matrices(angles[::-1])
    np.testing.assert_allclose(got, [HAND[1][1], HAND[3][1]], atol=1e-12)


def test_cryodrgn_matches_peer_pickle():
    shifts_a = PEER_ORIGIN_PX * PEER_APIX
    rot, trans = poses_cryodrgn(PEER_ANGLES, shifts_a, 300, PEER_APIX)
    assert rot.dtype == np.float64 and rot.shape == (3, 3, 3)
    assert trans.dtype == np.float64 and trans.shape == (3, 2)
    np.testing.assert_allclose(rot, PEER_ROT, atol=1e-7)
    np.testing.assert_allclose(trans, PEER_TRANS, rtol=1e-6, atol=1e-12)


def test_cryodrgn_drops_z_and_defaults_to_zero():
    angles = np.zeros((2, 3))
    shifts = np.array([[10.5, -21.0, 99.0], [0.0, 2.1, -5.0]])
    _, trans = poses_cryodrgn(angles, shifts, 236, 2.1)
    np.testing.assert_allclose(trans, [[5 / 236, -10 / 236], [0.0, 1 / 236]], rtol=1e-12)
    _, zero = poses_cryodrgn(angles, None, 236, 2.1)
    assert zero.shape == (2, 2) and not zero.any()


def test_opus_object_layout_and_values():
    # dsd parse_pose_star STAR -D 236 --Apix 2.1: rlnOrigin*Angst / Apix / D, sign kept.
    angles = np.array([[90.0, 0.0, 0.0], [0.0, 90.0, 0.0]])
    shifts = np.array([[10.5, -10.5, 21.0], [0.0, 0.0, -2.1]])
    obj = poses_opus(angles, shifts, 236, 2.1)
    assert isinstance(obj, tuple) and len(obj) == 3
    rot, trans, euler = obj
    assert rot.dtype == np.float32 and rot.shape == (2, 3, 3)
    assert trans.dtype == np.float64 and trans.shape == (2, 3)
    assert euler.dtype == np.float64 and euler.shape == (2, 3)
    np.testing.assert_allclose(
        trans[0], [0.021186440677966, -0.021186440677966, 0.042372881355932], rtol=1e-12
    )
    np.testing.assert_allclose(trans[1], [0.0, 0.0, -1 / 236], rtol=1e-12)
    np.testing.assert_allclose(rot[0], HAND[1][1], atol=1e-7)
    np.testing.assert_allclose(rot[1], HAND[3][1], atol=1e-7)
    np.testing.assert_array_equal(euler, angles)
    assert euler is not angles
    # what OPUS-TOMO's PoseTracker.load does with it: trans <= 1, times D gives pixels again
    assert np.all(trans <= 1)
    np.testing.assert_allclose(trans[0] * 236, [5.0, -5.0, 10.0], rtol=1e-12)


def test_opus_matches_peer_rotations():
    shifts = np.column_stack([PEER_ORIGIN_PX * PEER_APIX, np.zeros(3)])
    rot, trans, euler = poses_opus(PEER_ANGLES, shifts, 300, PEER_APIX)
    np.testing.assert_allclose(rot, PEER_ROT.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(trans[:, :2], PEER_TRANS, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(trans[:, 2], 0.0)


def test_opus_without_shifts_writes_zeros():
    rot, trans, _ = poses_opus(np.zeros((4, 3)), None, 64, 1.0)
    assert trans.shape == (4, 3) and trans.dtype == np.float64 and not trans.any()
    assert rot.shape == (4, 3, 3)


def test_opus_empty():
    rot, trans, euler = poses_opus(np.zeros((0, 3)), np.zeros((0, 3)), 64, 1.0)
    assert rot.shape == (0, 3, 3) and trans.shape == (0, 3) and euler.shape == (0, 3)


@pytest.mark.parametrize(
    ("angles", "shifts", "box", "pixel_size_A", "match"),
    [
        (np.zeros((2, 2)), np.zeros((2, 3)), 64, 1.0, "angles"),
        (np.zeros(3), np.zeros((1, 3)), 64, 1.0, "angles"),
        (np.array([[0.0, np.nan, 0.0]]), np.zeros((1, 3)), 64, 1.0, "finite"),
        (np.zeros((2, 3)), np.zeros((2, 2)), 64, 1.0, "3D shifts"),
        (np.zeros((2, 3)), np.zeros((3, 3)), 64, 1.0, "rows"),
        (np.zeros((1, 3)), np.array([[65.0, 0, 0]]), 64, 1.0, "larger than the box"),
        (np.zeros((1, 3)), np.array([[0, -64.1, 0]]), 64, 1.0, "larger than the box"),
        (np.zeros((1, 3)), np.zeros((1, 3)), 0, 1.0, "box_px"),
        (np.zeros((1, 3)), np.zeros((1, 3)), 64.0, 1.0, "box_px"),
        (np.zeros((1, 3)), np.zeros((1, 3)), 64, 0.0, "pixel_size"),
        (np.zeros((1, 3)), np.zeros((1, 3)), 64, float("nan"), "pixel_size"),
    ],
)
def test_opus_rejects_bad_input(angles, shifts, box, pixel_size_A, match):
    with pytest.raises(ValueError, match=match):
        poses_opus(angles, shifts, box, pixel_size_A)


def test_shift_of_whole_box_is_allowed():
    np.testing.assert_allclose(
        shifts_to_box_fraction(np.array([[64.0, -64.0]]), 64, 1.0), [[1.0, -1.0]]
    )


class _Numpy1Unpickler(pickle.Unpickler):
    """Refuses what numpy 1.x (as pinned by OPUS-TOMO and cryoDRGN) could not import."""

    def find_class(self, module, name):
        if module.startswith("numpy._core") or module.startswith("numpy.core"):
            raise AssertionError(f"pickle names {module}.{name}")
        assert (module, name) in {("numpy", "ndarray"), ("builtins", "bytearray")}, (module, name)
        return super().find_class(module, name)


def test_pickle_is_portable_and_round_trips(tmp_path):
    obj = poses_opus(PEER_ANGLES, np.zeros((3, 3)), 300, PEER_APIX)
    out = write_poses_pickle(obj, tmp_path / "sub" / "poses.pkl")
    assert out == tmp_path / "sub" / "poses.pkl"
    raw = out.read_bytes()
    assert raw[:2] == b"\x80\x04"  # protocol 4
    loaded = _Numpy1Unpickler(io.BytesIO(raw)).load()
    assert isinstance(loaded, tuple) and len(loaded) == 3
    for got, want in zip(loaded, obj, strict=True):
        assert type(got) is np.ndarray
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable  # the peers scale trans in place
    assert pickle.loads(raw)[0].dtype == np.float32
    assert os.listdir(out.parent) == ["poses.pkl"]


def test_pickle_non_contiguous_and_scalars():
    arr = np.arange(12.0).reshape(3, 4)[:, ::2]
    back = pickle.loads(dumps_portable((arr, np.float32(2.5), np.int64(7))))
    np.testing.assert_array_equal(back[0], arr)
    assert back[1:] == (2.5, 7)


def test_write_refuses_input_and_keeps_old_file(tmp_path):
    star = tmp_path / "particles.star"
    star.write_text("data_particles\n")
    obj = poses_cryodrgn(np.zeros((1, 3)), None, 64, 1.0)
    with pytest.raises(InputError):
        write_poses_pickle(obj, star, inputs=[star])
    assert star.read_text() == "data_particles\n"

    out = tmp_path / "poses.pkl"
    write_poses_pickle(obj, out, inputs=[star, None])
    before = out.read_bytes()
    with pytest.raises(TypeError):
        write_poses_pickle((np.array([object()]),), out)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["particles.star", "poses.pkl"]


@pytest.mark.parametrize("stacks", [False, True], ids=["3d-subtomograms", "2d-stacks"])
def test_export_of_framed_particles_gives_the_pose_in_their_volumes(tmp_path, stacks):
    """Subtomogram frames (RELION 4/5): 3D subtomograms are cut in them, so the exported pose
    is the relative one (``rlnAngle*``, ``rlnOrigin*``); 2D stacks are gathered in the
    tomogram frame, so it is the composed ``A_sub · A`` with ``A_sub · origin``."""
    from dataclasses import replace

    import torch

    from subtomo import interop
    from subtomo.geometry.euler import angular_distance_deg
    from subtomo.io.poses import read_poses_pickle
    from subtomo.io.star import read_particles, write_particles
    from subtomo.simulate.particles import random_particle_set

    ps = random_particle_set(12, seed=4, subtomogram_angles=True)
    if stacks:
        ps = replace(ps, general={"rlnTomoSubTomosAre2DStacks": 1})
    write_particles(ps, tmp_path / "p.star", "relion5")
    ps = read_particles(tmp_path / "p.star")
    assert ps.are_2d_stacks() == stacks
    box, apix = 48, float(ps.pixel_size_A()[0])
    interop.export_poses(tmp_path / "p.star", tmp_path / "poses.pkl", box_px=box, fmt="opus")
    rot, origins = read_poses_pickle(tmp_path / "poses.pkl", box, apix)
    expected = ps.rotation_matrices() if stacks else ps.particle_matrices()
    shifts = ps.tomogram_shifts_A() if stacks else ps.shifts_A()
    other = ps.particle_matrices() if stacks else ps.rotation_matrices()
    assert float(angular_distance_deg(torch.as_tensor(rot), expected).max()) < 1e-4
    assert float(angular_distance_deg(torch.as_tensor(rot), other).min()) > 1.0
    np.testing.assert_allclose(origins, shifts, atol=1e-3)
