"""Every flavour → ParticleSet → every flavour → ParticleSet keeps poses, shifts, positions."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.errors import InputError
from subtomo.geometry.euler import angular_distance_deg
from subtomo.io.particles import ParticleSet
from subtomo.io.star import FLAVOURS, read_particles, write_particles
from subtomo.io.star_text import read_star, write_star
from subtomo.simulate.particles import random_particle_set


def centres_A(ps: ParticleSet) -> np.ndarray:
    """Particle centres in the tomogram, Å from the tomogram origin: coord·px − origin."""
    ps = ps.with_pixel_coordinates()
    xyz = ps.particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
    return xyz * ps.coordinate_pixel_size_A()[:, None] - ps.tomogram_shifts_A()


def assert_same_particles(truth: ParticleSet, other: ParticleSet) -> None:
    assert len(other) == len(truth)
    angle = angular_distance_deg(truth.rotation_matrices(), other.rotation_matrices())
    assert float(angle.max()) < 1e-4
    np.testing.assert_allclose(other.tomogram_shifts_A(), truth.tomogram_shifts_A(), atol=1e-4)
    np.testing.assert_allclose(centres_A(other), centres_A(truth), atol=1e-4)
    np.testing.assert_allclose(other.pixel_size_A(), truth.pixel_size_A(), rtol=1e-12)
    for column in ("rlnImageName", "rlnCtfImage", "rlnSubtomoDemoScore", "rlnRandomSubset"):
        assert (column in other.particles) == (column in truth.particles), column
        if column not in truth.particles:
            continue
        np.testing.assert_array_equal(other.particles[column].to_numpy(),
                                      truth.particles[column].to_numpy())
    assert list(other.tomo_names()) == list(truth.tomo_names())


@pytest.fixture(params=[False, True], ids=["plain", "subtomogram-angles"])
def truth(request, tmp_path) -> tuple[ParticleSet, object]:
    """A set of 3D subtomograms, or particles with subtomogram frames and no images (3D
    subtomograms in frames have no RELION 3.x form: tested below)."""
    ps = random_particle_set(120, seed=3, subtomogram_angles=request.param)
    if request.param:
        ps = replace(ps, particles=ps.particles.drop(columns=["rlnImageName", "rlnCtfImage"]))
    tomograms = tmp_path / "tomograms.star"
    write_star({"global": ps.tomograms}, tomograms)
    return ps, tomograms


@pytest.mark.parametrize(("first", "second"), list(itertools.product(FLAVOURS, FLAVOURS)))
def test_every_flavour_to_every_flavour(truth, tmp_path, first, second):
    ps, tomograms = truth
    write_particles(ps, tmp_path / "a.star", first)
    a = read_particles(tmp_path / "a.star", tomograms=tomograms)
    assert a.flavour == first
    assert_same_particles(ps, a)
    write_particles(a, tmp_path / "b.star", second)
    b = read_particles(tmp_path / "b.star", tomograms=tomograms)
    # Warp's flavour is RELION 3.0 with .tomostar names: names from Warp keep it Warp
    assert b.flavour == ("warp" if (first, second) == ("warp", "relion30") else second)
    assert_same_particles(ps, b)


def test_relion5_centred_coordinates_follow_relion(tmp_path):
    """RELION 5: centred Å = (coordinate px − size/2) × tilt-series pixel size."""
    ps = random_particle_set(20, seed=1)
    write_particles(ps, tmp_path / "p.star", "relion5")
    blocks = read_star(tmp_path / "p.star")
    assert list(blocks) == ["general", "optics", "particles"]
    df = blocks["particles"]
    expected = (ps.particles["rlnCoordinateX"] - 928 / 2) * 10.0
    np.testing.assert_allclose(df["rlnCenteredCoordinateXAngst"], expected, atol=1e-9)
    expected_z = (ps.particles["rlnCoordinateZ"] - 464 / 2) * 10.0
    np.testing.assert_allclose(df["rlnCenteredCoordinateZAngst"], expected_z, atol=1e-9)
    assert "rlnCoordinateX" not in df
    assert blocks["optics"]["rlnTomoTiltSeriesPixelSize"].iloc[0] == 10.0


def test_relion30_units(tmp_path):
    """RELION 3.0: origins in pixels of the image, pixel size = detector µm × 1e4 / mag."""
    ps = random_particle_set(10, seed=2)
    write_particles(ps, tmp_path / "p30.star", "relion30")
    df = read_star(tmp_path / "p30.star")[""]
    np.testing.assert_allclose(df["rlnOriginX"], ps.particles["rlnOriginXAngst"] / 5.0)
    np.testing.assert_allclose(df["rlnDetectorPixelSize"] * 1e4 / df["rlnMagnification"], 5.0)
    np.testing.assert_allclose(df["rlnCoordinateY"], ps.particles["rlnCoordinateY"])
    assert "rlnOriginXAngst" not in df and "rlnOpticsGroup" not in df


def test_warp_names_are_tomostar(tmp_path):
    ps = random_particle_set(10, seed=2)
    write_particles(ps, tmp_path / "w.star", "warp")
    df = read_star(tmp_path / "w.star")[""]
    assert df["rlnMicrographName"].str.fullmatch(r"TS_0\d\.tomostar").all()


def test_numbers_are_written_losslessly(tmp_path):
    """starfile's default '%.6f' turns 1.929012e-06 into 0.000002; we must not."""
    values = np.array([1.929012e-06, 0.1, 123456.789012345, -7.25e-11])
    df = pd.DataFrame({"rlnImageName": ["a", "b", "c", "d"], "rlnAngleRot": values,
                       "rlnAngleTilt": values, "rlnAnglePsi": values,
                       "rlnUnknownLabel": values})
    write_star({"particles": df}, tmp_path / "x.star")
    back = read_star(tmp_path / "x.star")["particles"]
    for column in ("rlnAngleRot", "rlnUnknownLabel"):
        np.testing.assert_array_equal(back[column].to_numpy(), values)


def test_subtomogram_angles_compose_into_full_orientation(tmp_path):
    """RELION 3.x has no subtomogram frame: angles written there are the composed ones."""
    ps = random_particle_set(30, seed=5, subtomogram_angles=True)
    ps = replace(ps, particles=ps.particles.drop(columns=["rlnImageName", "rlnCtfImage"]))
    write_particles(ps, tmp_path / "p31.star", "relion31")
    df = read_star(tmp_path / "p31.star")["particles"]
    assert "rlnTomoSubtomogramRot" not in df
    from subtomo.geometry.euler import euler_to_matrix

    full = euler_to_matrix(torch.tensor(df[["rlnAngleRot", "rlnAngleTilt",
                                            "rlnAnglePsi"]].to_numpy()))
    part = euler_to_matrix(torch.tensor(ps.particles[["rlnAngleRot", "rlnAngleTilt",
                                                      "rlnAnglePsi"]].to_numpy()))
    sub = euler_to_matrix(torch.tensor(ps.particles[[
        "rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]].to_numpy()))
    assert float(angular_distance_deg(full, sub @ part).max()) < 1e-6


@pytest.mark.parametrize("flavour", ["relion30", "relion31", "warp"])
def test_framed_3d_subtomograms_have_no_relion3_form(tmp_path, flavour):
    """3D subtomograms cut in their subtomogram frames: the composed angles would not describe
    the volumes, the frame's angles not the particles in the tomogram. Refused, nothing written;
    identity frames are no frames."""
    ps = random_particle_set(10, seed=5, subtomogram_angles=True)
    with pytest.raises(InputError) as error:
        write_particles(ps, tmp_path / "p.star", flavour)
    assert error.value.field == "rlnTomoSubtomogramRot"
    assert not (tmp_path / "p.star").exists()
    df = ps.particles.copy()
    df[["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]] = 0.0
    write_particles(replace(ps, particles=df), tmp_path / "p.star", flavour)
    assert "rlnTomoSubtomogramRot" not in read_star(tmp_path / "p.star")[
        "" if flavour != "relion31" else "particles"]


def test_real_warp_subtomogram_file(starfile_sdist, tmp_path):
    """A real Warp subtomogram STAR (RELION 3.0 flavour, shipped with starfile) survives 3.1."""
    path = starfile_sdist / "tests" / "data" / "one_loop.star"
    raw = read_star(path)["particles"]
    ps = read_particles(path)
    assert ps.flavour == "relion30" and len(ps) == len(raw) == 16
    np.testing.assert_allclose(ps.pixel_size_A(), 5.0)  # 5.0 µm × 1e4 / 10000
    assert int(ps.optics["rlnImageDimensionality"].iloc[0]) == 3
    write_particles(ps, tmp_path / "p31.star", "relion31")
    write_particles(read_particles(tmp_path / "p31.star"), tmp_path / "p30.star", "relion30")
    back = read_star(tmp_path / "p30.star")[""]
    for column in ("rlnCoordinateX", "rlnCoordinateZ", "rlnAngleTilt", "rlnCtfMaxResolution"):
        np.testing.assert_array_equal(back[column].to_numpy(float), raw[column].to_numpy(float))
    for column in ("rlnImageName", "rlnCtfImage", "rlnMicrographName"):
        np.testing.assert_array_equal(back[column].to_numpy(), raw[column].to_numpy())
