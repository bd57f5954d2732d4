"""IMOD alignments ⇄ RELION 5 parameters, checked against IMOD's own projection written out from
its sources (``tilt.f90``, ``cubinterp.c``, ``clip rotx``), on random and real files.

Real files: ``tests/data/convert/imod_1/tilt_1.{xf,tlt,xtilt}`` + ``tilt.com`` (an etomo run,
59 views) and ``tests/data/test.xf`` (AreTomo-written, with magnification) from the
cryoet-alignment 0.2.0 sdist; ``tests/test_data/xf_file.xf`` (etomo, 41 views) from the
yet-another-imod-wrapper 0.1.2 sdist; WarpTools' RELION 4 ``matching_tomograms.star`` from
cryoet-alignment.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.errors import InputError
from subtomo.geometry import tilt_imod as ig
from subtomo.geometry.tilt import RelionParameters, project_points, projection_matrices
from subtomo.io import imod
from subtomo.io.star_text import read_star
from subtomo.io.tomograms import MATRIX, _matrix_rows, read_tomogram_set


def imod_project(points, xf, tilt, xtilt, tomo_size, image_size, *, xaxis=0.0, offset=0.0,
                 shift=(0.0, 0.0)):
    """Raw-image positions (N, T, 2) of points in the ``trimvol -rx`` volume, the IMOD way.

    tilt.f90: xcenOut = WIDTH/2 + 0.5 + SHIFT_x (1-based, integer half), ycenOut =
    THICKNESS/2 + 0.5 + SHIFT_z, centerSlice = ny/2. + 0.5; xp = xx cosβ + yy sinα' sinβ' +
    zz cosα sinβ', yp = yy cosα − zz sinα' with sinβ' = −sin(tilt + OFFSET), sinα' =
    −sin(xtilt − XAXISTILT). clip rotx: thickness index iy = Z − 1 − z. cubinterp: aligned =
    A (raw − nx/2 edge centre) + D.
    """
    x, y, z = (points[:, i, None] for i in range(3))
    nx, ny, nz = tomo_size
    ix, iz1 = x + 1.0, (nz - 1 - z) + 1.0  # 1-based output column and thickness index
    xx = ix - (nx // 2 + 0.5 + shift[0])
    yy = (y + 1.0) - (ny / 2.0 + 0.5)
    zz = iz1 - (nz // 2 + 0.5 + shift[1])
    beta = np.radians(np.asarray(tilt) + offset)
    alpha = np.radians(np.asarray(xtilt) - xaxis)
    sinb, cosb = -np.sin(beta), np.cos(beta)
    sina, cosa = -np.sin(alpha), np.cos(alpha)
    xp = xx * cosb + yy * sina * sinb + zz * cosa * sinb
    yp = yy * cosa - zz * sina
    aligned = np.stack([xp, yp], axis=-1)  # relative to the aligned image centre
    a, d = xf[:, :, :2], xf[:, :, 2]
    raw = np.einsum("tij,ntj->nti", np.linalg.inv(a), aligned - d)
    w, h = image_size
    return raw + np.array([w / 2.0 - 0.5, h / 2.0 - 0.5])  # edge centre → pixel index


def ours(params, pixel_size_A, tomo_size, image_size, points):
    mats = projection_matrices(*(torch.as_tensor(v) for v in params.as_tuple()), pixel_size_A,
                               tomo_size, image_size)
    return project_points(mats, torch.as_tensor(points))[..., :2].numpy()


def random_alignment(rng, n, *, mag=1.0):
    phi = np.radians(rng.uniform(-180, 180, n))
    a = mag * np.stack([np.stack([np.cos(phi), -np.sin(phi)], -1),
                        np.stack([np.sin(phi), np.cos(phi)], -1)], axis=1)
    d = rng.uniform(-40, 40, (n, 2))
    return np.concatenate([a, d[:, :, None]], axis=2)


@pytest.mark.parametrize("tomo_size,image_size,com", [
    ((928, 960, 300), (928, 960), imod.TiltCom()),
    ((511, 477, 151), (530, 490), imod.TiltCom(xaxis_tilt_deg=1.7, angle_offset_deg=-2.3,
                                               shift_px=(6.0, -11.0))),
])
def test_conversion_projects_every_point_as_imod_does(tomo_size, image_size, com):
    rng = np.random.default_rng(3)
    n = 21
    al = imod.ImodAlignment(random_alignment(rng, n), rng.uniform(-65, 65, n),
                            rng.uniform(-4, 4, n), com)
    points = rng.uniform(0, 1, (300, 3)) * np.array(tomo_size)
    expected = imod_project(points, al.xf, al.tilt_deg, al.xtilt_deg, tomo_size, image_size,
                            xaxis=com.xaxis_tilt_deg, offset=com.angle_offset_deg,
                            shift=com.shift_px)
    params = ig.imod_to_relion(al, 1.7, tomo_size, image_size)
    assert np.abs(ours(params, 1.7, tomo_size, image_size, points) - expected).max() < 1e-3
    assert params.distortion_px < 1e-9
    # and back: the same projections from the written .xf/.tlt/.xtilt
    back = ig.relion_to_imod(params, 1.7, tomo_size, image_size)
    again = imod_project(points, back.xf, back.tilt_deg, back.xtilt_deg, tomo_size,
                         image_size)
    assert np.abs(again - expected).max() < 1e-3


def test_relion_importer_is_half_a_pixel_off(yaiw_xf, tmp_path):
    """RELION 5's importer (yet-another-imod-wrapper's XF) gives the same angles but shifts
    −A⁻¹·D, ignoring the half-pixel difference between IMOD's and RELION's centres, which no
    longer cancels once rotated by the tilt axis: up to ~1.5 px; ours is exact (test above)."""
    rng = np.random.default_rng(5)
    al = imod.ImodAlignment(random_alignment(rng, 15), np.linspace(-60, 60, 15), np.zeros(15))
    imod.write_xf(tmp_path / "a.xf", al.xf)
    theirs = yaiw_xf.from_file(tmp_path / "a.xf", initial_tilt_axis_rotation_angle=None)
    params = ig.imod_to_relion(al, 1.0, (1000, 1000, 400), (1000, 1000))
    with pytest.warns(UserWarning):
        zrot = theirs.in_plane_rotations
    assert np.allclose(zrot, params.zrot, atol=1e-6)
    gap = np.abs(np.stack([params.shift_x_A, params.shift_y_A], -1) - theirs.specimen_shifts)
    assert 0.3 < gap.max() < 1.6


def test_real_etomo_files(cryoet_alignment_data, yaiw_sdist, yaiw_xf, tmp_path):
    """An etomo run (cryoet-alignment's imod_1) and another (yet-another-imod-wrapper's
    xf_file.xf, whose align.log reports a rotation angle of 85.2° for every view; the .xf also
    holds the coarse prealignment, so its angles spread by a few tenths)."""
    base = cryoet_alignment_data / "convert/imod_1"
    al = imod.read_imod_alignment(base / "tilt_1.xf", base / "tilt_1.tlt",
                                  base / "tilt_1.xtilt", base / "tilt.com")
    assert al.n_views == 59 and al.tilt_deg[0] == -52.24 and al.tilt_deg[-1] == 63.76
    com = al.tilt_com
    assert (com.binning, com.thickness_px, com.full_image) == (4, 8000, (3708, 3832))
    assert com.xaxis_tilt_deg == 0.0 and com.shift_px == (0.0, 0.0)
    size, image = (3708, 3832, 8000), (3708, 3832)
    params = ig.imod_to_relion(al, 1.0, size, image)
    assert np.allclose(params.zrot, -np.degrees(np.arctan2(al.xf[:, 1, 0], al.xf[:, 0, 0])))
    points = np.random.default_rng(0).uniform(0, 1, (200, 3)) * np.array(size)
    # the file's 2×2 matrices are rotations to ~1e-6 (IMOD printed 7 decimals): exact for
    # their nearest rotations, and within that 1e-6 relative error for the file as it is
    u, _, vt = np.linalg.svd(al.xf[:, :, :2])
    rotation_only = np.concatenate([u @ vt, al.xf[:, :, 2:]], axis=2)
    expected = imod_project(points, rotation_only, al.tilt_deg, al.xtilt_deg, size, image)
    got = ours(params, 1.0, size, image, points)
    assert np.abs(got - expected).max() < 1e-3
    as_is = imod_project(points, al.xf, al.tilt_deg, al.xtilt_deg, size, image)
    assert np.abs(got - as_is).max() < 1e-2 and params.distortion_px < 5e-3
    # write and read back: the same alignment to the precision IMOD printed
    written = imod.write_imod_alignment(tmp_path / "copy", ig.relion_to_imod(params, 1.0, size,
                                                                             image))
    again = imod.read_imod_alignment(*written)
    assert np.abs(again.xf[:, :, :2] - al.xf[:, :, :2]).max() < 1e-6
    assert np.abs(again.xf[:, :, 2] - al.xf[:, :, 2]).max() < 1e-3  # printed to 1e-3
    assert np.allclose(again.tilt_deg, al.tilt_deg)

    xf = imod.read_xf(yaiw_sdist / "tests/test_data/xf_file.xf")
    other = imod.ImodAlignment(xf, np.zeros(len(xf)), np.zeros(len(xf)))
    zrot = ig.imod_to_relion(other, 1.0, (928, 928, 300), (928, 928)).zrot
    assert len(xf) == 41 and np.all(np.abs(zrot - 85.2) < 0.5)  # log: 85.2 (+ prealignment)
    relion = yaiw_xf.from_file(yaiw_sdist / "tests/test_data/xf_file.xf", 85.0)
    assert np.allclose(relion.in_plane_rotations, zrot, atol=1e-6)


def test_magnification_is_reported(cryoet_alignment_data):
    """cryoet-alignment's test.xf: its third transform has magnification 0.9993; dropping it
    moves a point at distance r from the centre by |1/m − 1|·r."""
    xf = imod.read_xf(cryoet_alignment_data / "test.xf")
    angles = imod.read_angles(cryoet_alignment_data / "test.rawtlt", "tlt",
                              "tilt angle")
    assert list(angles) == [-66.0, -64.5, -63.0]
    al = imod.ImodAlignment(xf, angles, np.zeros(3))
    params = ig.imod_to_relion(al, 1.0, (2000, 2000, 500), (2000, 2000))
    mags = np.sqrt(np.linalg.det(xf[:, :, :2]))
    expected = np.max(np.abs(1 / mags - 1)) * np.hypot(1000, 1000)
    assert params.distortion_px == pytest.approx(expected, rel=1e-4)
    assert 0.5 < params.distortion_px < 2.0


def test_real_relion4_set_round_trips_through_imod(cryoet_alignment_data, tmp_path):
    """RELION 4 matrices (WarpTools, 3 tilt series × 31 tilts) → RELION 5 → IMOD files → RELION
    5: random particles project within 1e-3 px of the original matrices (the issue's bar)."""
    source = cryoet_alignment_data / "relion/matching_tomograms.star"
    image = (4096, 4096)
    tset = read_tomogram_set(source, image_size=image)
    blocks = read_star(source)
    rng = np.random.default_rng(1)
    for name, ts in tset.series.items():
        params = RelionParameters(*(p.numpy() for p in ts.dof()))
        al = ig.relion_to_imod(params, ts.pixel_size_A, ts.tomo_size_px, image)
        files = imod.write_imod_alignment(tmp_path / "ts", al)
        back = ig.imod_to_relion(imod.read_imod_alignment(*files), ts.pixel_size_A,
                                 ts.tomo_size_px, image)
        original = torch.from_numpy(_matrix_rows(source, blocks[name], name))
        points = rng.uniform(0, 1, (200, 3)) * np.array(ts.tomo_size_px)
        expected = project_points(original, torch.from_numpy(points))[..., :2].numpy()
        got = ours(back, ts.pixel_size_A, ts.tomo_size_px, image, points)
        assert np.abs(got - expected).max() < 1e-3
        assert set(MATRIX) <= set(blocks[name].columns)


def test_mirror_is_refused(tmp_path):
    (tmp_path / "m.xf").write_text("-1 0 0 1 0 0\n")
    al = imod.ImodAlignment(imod.read_xf(tmp_path / "m.xf"), np.zeros(1), np.zeros(1),
                            source=str(tmp_path / "m.xf"))
    with pytest.raises(InputError, match="mirrors"):
        ig.imod_to_relion(al, 1.0, (10, 10, 10), (10, 10))
