"""Tilt-series geometry against an independent implementation, RELION 4 ⇄ 5 round trips on a
real tomogram set, depth/defocus, centred coordinates and autograd through the five DOF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.errors import InputError
from subtomo.geometry.tilt import angles_from_matrices, project_points, projection_matrices
from subtomo.io.particles import ParticleSet
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import (
    MATRIX,
    _matrix_rows,
    read_tomogram_set,
    write_tomogram_set,
)

REAL = "relion/matching_tomograms.star"


def random_params(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)  # noqa
    return u(-3, 3), u(-60, 60), u(-95, 95), u(-200, 200), u(-200, 200)


@pytest.mark.parametrize("tomo_size,image_size", [((928, 928, 464), (928, 928)),
                                                  ((511, 600, 301), (401, 333))])
def test_projection_matches_independent_transcription(relion_alignment, tomo_size, image_size):
    params = random_params(7)
    ours = projection_matrices(*params, 2.5, tomo_size, image_size)
    points = torch.rand(50, 3, dtype=torch.float64) * torch.tensor(tomo_size)
    mine = project_points(ours, points)[..., :2]
    for t in range(7):
        theirs = relion_alignment.projection_matrix(*(float(p[t]) for p in params), tomo_size,
                                                    image_size, 2.5)
        projected = points.numpy() @ theirs[:3, :3].T + theirs[:3, 3]
        assert np.abs(mine[:, t].numpy() - projected[:, :2]).max() < 1e-3
        assert np.abs(ours[t].numpy() - theirs).max() < 1e-9


def test_angles_from_matrices_inverts_exactly():
    params = random_params(9, seed=3)
    for size in ((1000, 800, 300), (999, 801, 301)):
        mats = projection_matrices(*params, 1.7, size, (640, 480))
        back = angles_from_matrices(mats, 1.7, size, (640, 480))
        for a, b in zip(params, back, strict=True):
            assert torch.allclose(a, b, atol=1e-9)


def test_real_relion4_set_round_trips_through_relion5(cryoet_alignment_data, relion_alignment,
                                                      tmp_path, monkeypatch):
    """WarpTools' RELION 4 tomograms.star of a real data set (shipped in cryoet-alignment's
    sdist): matrices → RELION 5 angles → files → RELION 4 matrices; every particle projects
    within 1e-3 px of the original matrices, and the angles equal RELION's decomposition."""
    source = cryoet_alignment_data / REAL
    image_size = (4096, 4096)  # not stored in the file; any value gives the same projections
    tset = read_tomogram_set(source, image_size=image_size)
    assert len(tset) == 3 and all(ts.n_tilts == 31 for ts in tset.series.values())
    from subtomo.io.star_text import read_star

    blocks = read_star(source)
    monkeypatch.chdir(tmp_path)
    write_tomogram_set(tset, "r5/tomograms.star", flavour="relion5")
    r5 = read_tomogram_set("r5/tomograms.star", image_size=image_size)
    write_tomogram_set(r5, "r4/tomograms.star", flavour="relion4")
    r4 = read_tomogram_set("r4/tomograms.star", image_size=image_size)
    gen = np.random.default_rng(0)
    for name, ts in tset.series.items():
        original = torch.from_numpy(_matrix_rows(source, blocks[name], name))
        points = torch.from_numpy(gen.uniform(0, 1, (200, 3)) * np.array(ts.tomo_size_px))
        expected = project_points(original, points)[..., :2]
        for copy in (ts, r5[name], r4[name]):
            assert (copy.project(points) - expected).abs().max() < 1e-3
        xt, yt, zr, sx, sy = ts.dof()
        for t in range(ts.n_tilts):
            theirs = relion_alignment.eulers_from_matrix(original[t].numpy(), ts.tomo_size_px,
                                                         image_size, ts.pixel_size_A)
            ours = (xt[t], yt[t], zr[t], sx[t], sy[t])
            assert np.allclose([float(v) for v in ours], theirs, atol=1e-6)
        assert "rlnTomoYTilt" in read_star(r5[name].source)[name]
        assert set(MATRIX) <= set(read_star("r4/tomograms.star")[name].columns)


def _series(**extra) -> TiltSeries:
    angles = np.array([0.0, 30.0, -30.0])
    tilts = pd.DataFrame({"rlnTomoXTilt": 0.0, "rlnTomoYTilt": angles, "rlnTomoZRot": 0.0,
                          "rlnTomoXShiftAngst": 0.0, "rlnTomoYShiftAngst": 0.0,
                          "rlnDefocusU": 30000.0, "rlnDefocusV": 29000.0,
                          "rlnDefocusAngle": 10.0, "rlnMicrographPreExposure": [0.0, 3.0, 6.0]})
    globals_ = {"rlnTomoName": "TS_01", "rlnTomoTiltSeriesPixelSize": 10.0,
                "rlnTomoSizeX": 200, "rlnTomoSizeY": 100, "rlnTomoSizeZ": 60, "rlnTomoHand": -1.0,
                "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.07,
                **extra}
    return TiltSeries(globals_, tilts, image_size=(200, 100))


def test_depth_and_defocus_follow_relion_sign():
    ts = _series()
    above = torch.tensor([[100.0, 50.0, 40.0]], dtype=torch.float64)  # 10 px above the centre
    depth = ts.depth_px(above)
    theta = np.radians([0.0, 30.0, -30.0])
    assert np.allclose(depth[0].numpy(), 10 * np.cos(theta))
    u, v, angle = ts.defocus_at(above)
    assert np.allclose(u[0].numpy(), 30000.0 - 10.0 * 10 * np.cos(theta))
    assert np.allclose((u - v).numpy(), 1000.0) and np.allclose(angle.numpy(), 10.0)
    # the centre projects onto the image centre at every tilt
    centre = ts.project(torch.tensor([[100.0, 50.0, 30.0]], dtype=torch.float64))
    assert torch.allclose(centre, torch.tensor([100.0, 50.0], dtype=torch.float64))


def test_particle_set_uses_the_same_centre():
    ts = _series()
    df = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnCenteredCoordinateXAngst": [15.0],
                       "rlnCenteredCoordinateYAngst": [-25.0],
                       "rlnCenteredCoordinateZAngst": [5.0], "rlnOpticsGroup": [1]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0],
                           "rlnTomoTiltSeriesPixelSize": [10.0]})
    tomograms = pd.DataFrame([ts.globals])
    ps = ParticleSet(df, optics, tomograms).with_pixel_coordinates()
    px = ps.particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    expected = ts.centred_to_px(torch.tensor([[15.0, -25.0, 5.0]], dtype=torch.float64))
    assert np.allclose(px, expected.numpy())


def test_gradients_flow_through_the_five_dof():
    ts = _series()
    params = tuple(p.clone().requires_grad_(True) for p in ts.dof())
    points = torch.tensor([[80.0, 40.0, 20.0], [120.0, 70.0, 35.0]], dtype=torch.float64)

    def positions(*p):
        return ts.project(points, ts.matrices(p))

    assert torch.autograd.gradcheck(positions, params)
    # a shift of 10 Å moves every projection by one pixel
    out = positions(*params)
    out[..., 0].sum().backward()
    assert torch.allclose(params[3].grad, torch.full((3,), 2 / 10.0, dtype=torch.float64))


def test_bad_tomogram_sets_fail_with_one_line(tmp_path):
    ts = _series()
    write_tomogram_set([ts], tmp_path / "tomograms.star")
    star = tmp_path / "tilt_series" / "TS_01.star"
    star.write_text(star.read_text().replace("30.0", "130.0", 1))
    with pytest.raises(InputError, match="rlnTomoYTilt"):
        read_tomogram_set(tmp_path / "tomograms.star")
    bad = _series(rlnTomoTiltSeriesPixelSize=-1.0)
    write_tomogram_set([bad], tmp_path / "neg.star", tilt_series_dir="neg")
    with pytest.raises(InputError, match="rlnTomoTiltSeriesPixelSize"):
        read_tomogram_set(tmp_path / "neg.star")
