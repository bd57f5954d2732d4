"""Real particle-series sets read as they ship (provenance in tests/data/*/PROVENANCE.md).

- ``warptools_70s``: WarpTools 2D particle series (tomoDRGN's test set, EMPIAR-10499 70S);
- ``cryodrgn_subtilts``: Warp 1 sub-tilt series, one STAR row per tilt image (cryoDRGN's).

Every number asserted here is read from the files themselves or stated in them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc
from subtomo.io.mrc import read_mrc, read_mrc_header, read_section
from subtomo.io.particle_series import (
    attach_tomograms,
    particle_positions_px,
    read_particle_input,
)
from subtomo.io.star import read_particles, write_particles
from subtomo.io.star_text import read_star, write_star
from subtomo.io.tomograms import read_inputs, read_tomogram_set
from subtomo.io.warp1_series import read_warp1_series
from subtomo.refine.reconstruct import reconstruct

DATA = Path(__file__).resolve().parents[1] / "data"
WARP = DATA / "warptools_70s"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"
PARTICLES = WARP / f"{STEM}.star"
TOMOGRAMS = WARP / f"{STEM}_tomograms.star"
OPTIMISATION = WARP / f"{STEM}_optimisation_set.star"
MAP = WARP / "warptools_test_box-32_angpix-12_reconstruct.mrc"
TOMODRGN = WARP / "tomodrgn_backproject_voxel_noflip.mrc"  # tomoDRGN e19eae9, PROVENANCE.md
NAMES = ["Unt_083.tomostar", "Unt_050.tomostar", "Unt_076.tomostar", "Unt_088.tomostar"]
SUBTILTS = DATA / "cryodrgn_subtilts"
SUBTILT_STAR = SUBTILTS / "sta_testing_bin8.star"
SUBTILT_STACK = SUBTILTS / "ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs"


def _visible(value: str) -> np.ndarray:
    return np.array([int(v) for v in value.strip("[]").split(",")], dtype=bool)


def _matrices_in_file(name: str) -> np.ndarray:
    """``(T, 4, 4)`` as written in the file (rows ``rlnTomoProjX/Y/Z/W``)."""
    table = read_star(TOMOGRAMS)[name]
    return np.stack([np.stack([np.array(v.strip("[]").split(","), float)
                               for v in table[label]])
                     for label in ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ",
                                   "rlnTomoProjW")], axis=1)


@pytest.mark.parametrize("folder", [WARP, SUBTILTS])
def test_files_are_the_upstream_ones(folder):
    listed = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text()
                  .splitlines())
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert present - set(listed) == {"SHA256SUMS", "PROVENANCE.md"}
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


# ---- WarpTools: tomograms.star --------------------------------------------------------------
def test_warptools_tomogram_set_reads_with_its_placeholder_tilt_series():
    tset = read_tomogram_set(TOMOGRAMS)
    assert tset.names == NAMES
    table = read_star(TOMOGRAMS)["global"]
    assert set(table["rlnTomoTiltSeriesName"]) == {"dummy_tiltseries.mrc"}
    assert not (WARP / "dummy_tiltseries.mrc").exists()
    for name in NAMES:
        ts = tset[name]
        assert isinstance(ts.name, str)
        assert ts.n_tilts == 37 == int(ts.globals["rlnTomoFrameCount"])
        assert ts.pixel_size_A == 1.667
        assert ts.tomo_size_px == (4400, 6000, 1400)
        assert ts.hand == -1.0
        assert ts.warptools  # rotation-only matrices
        assert ts.image_size_px == (4400, 6000)  # the placeholder size: the tomogram's X, Y
        file_table = read_star(TOMOGRAMS)[name]
        for label in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfScalefactor",
                      "rlnMicrographPreExposure"):
            assert np.array_equal(ts.column(label), file_table[label].to_numpy(float))


@pytest.mark.parametrize("name", NAMES)
def test_warptools_matrices_are_rotations_read_as_written(name):
    mats = _matrices_in_file(name)
    rot = mats[:, :3, :3]
    assert np.all(mats[:, :3, 3] == 0)  # no translation column
    assert np.all(mats[:, 3] == [0, 0, 0, 1])
    assert np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max() < 1e-6
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-6)

    ts = read_tomogram_set(TOMOGRAMS)[name]
    ours = ts.matrices().numpy()
    assert np.abs(ours[:, :3, :3] - rot).max() < 1e-6
    assert np.abs(ours[:, :2, 3]).max() < 1e-3  # px: voxel 0 onto pixel 0, as RELION reads it
    # depth along each tilt's beam = third row of the file's rotation applied to (p - centre)
    centre = torch.tensor(ts.tomo_size_px, dtype=torch.float64) / 2
    point = centre + torch.tensor([700.0, -900.0, 250.0], dtype=torch.float64)
    depth = ts.depth_px(point[None])[0].numpy()
    assert np.abs(depth - rot[:, 2] @ (point - centre).numpy()).max() < 1e-3


def test_warptools_excluded_tilts_have_zero_ctf_scale_and_are_invisible():
    tset = read_tomogram_set(TOMOGRAMS)
    ps = read_particles(PARTICLES)
    for name in NAMES:
        excluded = tset[name].column("rlnCtfScalefactor") < 0.0005
        rows = ps.particles[ps.particles["rlnTomoName"] == name]
        for value in rows["rlnTomoVisibleFrames"]:
            assert np.array_equal(~_visible(value), excluded)
    assert np.flatnonzero(tset["Unt_083.tomostar"].column("rlnCtfScalefactor") < 0.0005
                          ).tolist() == [0, 5, 35]


# ---- WarpTools: particles --------------------------------------------------------------------
def test_warptools_particles_read_from_the_file_and_from_the_optimisation_set():
    direct = read_particles(PARTICLES)
    via_set = read_particles(OPTIMISATION)
    pd.testing.assert_frame_equal(direct.particles, via_set.particles)
    inputs = read_inputs(OPTIMISATION)
    assert inputs.tomograms.names == NAMES
    pd.testing.assert_frame_equal(inputs.particles.particles, direct.particles)

    ps = direct
    assert ps.general == {"rlnTomoSubTomosAre2DStacks": 1}
    assert len(ps) == 40
    assert ps.particles["rlnTomoName"].value_counts().to_dict() == dict.fromkeys(NAMES, 10)
    assert all(isinstance(n, str) for n in ps.particles["rlnTomoName"])
    optics = ps.optics.set_index("rlnOpticsGroup")
    assert optics["rlnImageDimensionality"].tolist() == [2] * 4
    assert optics["rlnImagePixelSize"].tolist() == [12.0] * 4
    assert optics["rlnImageSize"].tolist() == [32] * 4
    assert optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [1] * 4
    assert optics["rlnTomoTiltSeriesPixelSize"].tolist() == [1.667] * 4
    assert np.allclose(optics["rlnTomoSubtomogramBinning"], 12.0 / 1.667, atol=1e-4)
    assert np.all(ps.particles[["rlnOriginXAngst", "rlnOriginYAngst",
                                "rlnOriginZAngst"]].to_numpy() == 0)
    assert "rlnTomoVisibleFrames" in ps.particles


def test_warptools_coordinates_are_in_particle_pixels_not_tilt_series_pixels():
    """WarpTools (before warpem/warp 7ad2dcc) wrote rlnCoordinateX/Y/Z in pixels of the
    exported particles (12 Å), not of the tilt series (rlnTomoTiltSeriesPixelSize 1.667 Å)."""
    ps = read_particles(PARTICLES)
    xyz = ps.particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    extent_A = np.array([4400, 6000, 1400]) * 1.667
    assert np.all(xyz * 12.0 <= extent_A)  # inside the tomogram at 12 Å per pixel
    depth_fraction = xyz[:, 2] * 12.0 / extent_A[2]
    assert depth_fraction.max() - depth_fraction.min() > 0.75  # spread through the depth
    assert xyz[:, 2].max() < 0.14 * 1400  # at 1.667 Å they would all sit in the lowest 14 %


def test_warptools_positions_count_particle_pixels():
    """The tilt-series position of each particle (its depth, hence its defocus) reads
    rlnCoordinateX/Y/Z in the particles' 12 Å pixels (WarpTools ``ReconstructParticleSeries``:
    coordinate = position / BinnedPixelSizeMean), not in rlnTomoTiltSeriesPixelSize's."""
    ps = read_particle_input(OPTIMISATION)
    xyz = read_particles(PARTICLES).particles[
        ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    for name in NAMES:
        rows = np.flatnonzero(ps.particles["rlnTomoName"] == name)
        pos = particle_positions_px(ps, ps.series.tomograms[name], rows).numpy()
        assert np.allclose(pos, (xyz[rows] * 12.0 / 1.667)[:, None], atol=1e-6)


def test_warptools_positions_survive_a_written_and_reread_set(tmp_path):
    """Written as RELION 5 (centred Å, what our commands write) and read again with the same
    tomograms, the particles keep their positions: the rescaling is not applied twice."""
    ps = read_particle_input(OPTIMISATION)
    path = tmp_path / "particles.star"
    write_particles(ps, path)
    again = read_particle_input(path, tomograms=TOMOGRAMS)
    assert "rlnCenteredCoordinateZAngst" in read_star(path)["particles"]
    for name in NAMES:
        ts = ps.series.tomograms[name]
        rows = np.flatnonzero(ps.particles["rlnTomoName"] == name)
        assert torch.allclose(particle_positions_px(again, ts, rows),
                              particle_positions_px(ps, ts, rows), atol=1e-6)


def test_relion4_matrices_keep_coordinates_in_tilt_series_pixels(tmp_path):
    """With a translation column (RELION 4's own matrices), the set is not WarpTools': its
    coordinates are tilt-series pixels, as RELION reads them, and are not rescaled."""
    lines = []
    for line in TOMOGRAMS.read_text().splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[0].startswith("[") and parts[3] == "[0,0,0,1]":
            parts[0] = parts[0][:-3] + ",5.0]"  # x translation 5 px
            line = "  ".join(parts)
        lines.append(line)
    tomograms = tmp_path / "tomograms.star"
    tomograms.write_text("\n".join(lines) + "\n")
    tset = read_tomogram_set(tomograms, image_size=(4400, 6000))
    assert not any(tset[name].warptools for name in NAMES)
    ps = attach_tomograms(read_particles(PARTICLES), tset)
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
    assert np.array_equal(ps.particles[columns].to_numpy(),
                          read_particles(PARTICLES).particles[columns].to_numpy())


def _mirror_z(volume: torch.Tensor) -> torch.Tensor:
    """``V(x, y, -z)`` about the box centre ``D // 2`` (``flip`` alone mirrors about
    ``(D - 1) / 2`` and shifts by a voxel)."""
    return torch.roll(volume.flip(0), 1, 0)


def test_warptools_set_reconstructs_in_the_hand_of_its_geometry():
    """With its given poses, the set reconstructs to the mirror image of the map tomoDRGN
    ships with it: the files' geometry (read as RELION and Warp read it: rlnTomoProjX/Y/Z are
    the rows of R_t, image = R_t (x - centre); each tilt at R_t A) has the other hand, which
    tomoDRGN's tests undo with ``backproject_voxel --flip`` ("the handedness of this toy data set
    is inverted", its docs). Measured (FSC at 128 / 64 / 43 / 32 Å): against the mirrored
    shipped map 0.84 / 0.64 / 0.63 / 0.43, as is below 0.5 / 0.2 / 0.15; against tomoDRGN's own
    ``backproject_voxel --uninvert-data`` of the files (kept here) 0.93 / 0.84 / 0.83 / 0.79.
    40 particles carry no more: the half-map FSC is 0.37 at 64 Å and 0.26 at 43 Å (33 Å at
    0.143), for which a perfect reference would give at most sqrt(2F / (1 + F)) = 0.73 / 0.64."""
    ps = read_particle_input(OPTIMISATION)
    rec = reconstruct(ps, ctf=True, halves=True, progress=False)
    shipped = torch.from_numpy(np.asarray(read_mrc(MAP)[0], dtype=np.float32))
    mirrored = fsc(rec.map.float(), _mirror_z(shipped)).numpy()
    as_is = fsc(rec.map.float(), shipped).numpy()
    shells = [3, 6, 9]  # 128, 64, 43 Å (box 32 × 12 Å / shell)
    assert np.all(mirrored[shells] > [0.78, 0.55, 0.55])
    assert np.all(as_is[shells] < [0.5, 0.2, 0.15])
    assert 28.0 < rec.resolution_A < 40.0  # half-map FSC 0.143: 33 Å
    # issue 26's bar: the same hand as tomoDRGN's own reconstruction of these files, FSC ≥ 0.8
    # out to 40 Å (measured 0.93 / 0.84 / 0.83 / 0.80 at 128 / 64 / 43 / 38 Å)
    tomodrgn = torch.from_numpy(np.asarray(read_mrc(TOMODRGN)[0], dtype=np.float32))
    against = fsc(rec.map.float(), tomodrgn).numpy()
    assert np.all(against[1:11] >= 0.8)  # shells 1–10: 384 … 38.4 Å
    assert fsc(rec.map.float(), _mirror_z(tomodrgn)).numpy()[6] < 0.3  # the hand is seen


def test_warptools_stacks_hold_every_tilt_in_table_order():
    """Each stack has one image per tilt of its tilt series (37), visible or not; the images
    of excluded tilts are ~0; image strength follows exposure (dose-weighted, table order)."""
    ps = read_particles(PARTICLES)
    tset = read_tomogram_set(TOMOGRAMS)
    for name in NAMES:
        rows = ps.particles[ps.particles["rlnTomoName"] == name]
        spread = []
        for image_name, frames in zip(rows["rlnImageName"], rows["rlnTomoVisibleFrames"],
                                      strict=True):
            path = WARP / image_name
            (n, ny, nx), voxel_A = read_mrc_header(path)
            assert (n, ny, nx, voxel_A) == (tset[name].n_tilts, 32, 32, 12.0)
            assert n == len(_visible(frames)) >= _visible(frames).sum()
            with mrcfile.open(path, permissive=True) as mrc:
                assert mrc.header.mode == 12  # float16
            images = np.stack([read_section(path, i) for i in range(n)])
            std = images.std(axis=(1, 2))
            visible = _visible(frames)
            assert np.all(np.abs(images[~visible]).max(axis=(1, 2)) < 1e-3)
            assert std[visible].min() > 0.1
            spread.append(std)
        std = np.mean(spread, axis=0)
        dose = tset[name].pre_exposure
        kept = tset[name].column("rlnCtfScalefactor") > 0.0005
        assert std.argmax() == dose.argmin() == 18
        assert spearmanr(std[kept], -dose[kept]).correlation > 0.9


def test_tomodrgn_map_header():
    (nz, ny, nx), voxel_A = read_mrc_header(MAP)
    assert (nz, ny, nx) == (32, 32, 32)
    assert voxel_A == pytest.approx(12.0024, abs=1e-4)
    with mrcfile.open(MAP, permissive=True) as mrc:
        assert mrc.header.label[0].decode().startswith("Relion")


# ---- Warp 1 sub-tilt series (cryoDRGN) -------------------------------------------------------
def test_warp1_series_groups_images_into_particles():
    table = read_star(SUBTILT_STAR)[""]
    ps, series = read_warp1_series(SUBTILT_STAR)
    assert len(table) == 219
    assert list(series) == list(dict.fromkeys(table["rlnGroupName"]))
    assert [len(s) for s in series.values()] == [39, 39, 39, 39, 39, 24]
    assert ps.particles["rlnTomoParticleName"].tolist() == list(series)
    assert ps.particles["rlnRandomSubset"].tolist() == [2, 2, 2, 2, 1, 2]
    assert [_visible(v).sum() for v in ps.particles["rlnTomoVisibleFrames"]] == [
        39, 39, 39, 39, 39, 24]
    assert set(ps.particles["rlnImageName"]) == {SUBTILT_STACK.name}
    assert ps.general == {"rlnTomoSubTomosAre2DStacks": 1}
    optics = ps.optics.iloc[0]
    assert optics["rlnImageDimensionality"] == 2
    assert optics["rlnImagePixelSize"] == pytest.approx(1.96)  # 1.96 µm × 10⁴ / 10000
    assert (optics["rlnVoltage"], optics["rlnSphericalAberration"],
            optics["rlnAmplitudeContrast"]) == (300.0, 2.7, 0.07)

    first = 0
    for s in series.values():
        indices = [i for _, i in s.images]
        assert indices == list(range(first, first + len(s)))  # contiguous, in file order
        first += len(s)
        assert {p for p, _ in s.images} == {SUBTILT_STACK}
        assert np.array_equal(s.columns["rlnCtfBfactor"], -13.0 * np.arange(1, len(s) + 1))
        assert np.all(np.diff(s.columns["rlnCtfScalefactor"]) <= 0)
        assert np.all(s.shifts_A == 0)
    assert read_mrc_header(SUBTILT_STACK)[0] == (220, 64, 64)  # one image more than used
    rows = table.iloc[:39]
    s = next(iter(series.values()))
    assert np.array_equal(s.angles_deg, rows[["rlnAngleRot", "rlnAngleTilt",
                                              "rlnAnglePsi"]].to_numpy(float))
    assert np.array_equal(s.defocus, rows[["rlnDefocusU", "rlnDefocusV",
                                           "rlnDefocusAngle"]].to_numpy(float))
    assert s.micrographs[:3] == ["ay19102021_L3_position6_21.mrc",
                                 "ay19102021_L3_position6_22.mrc",
                                 "ay19102021_L3_position6_20.mrc"]


def test_warp1_series_pixel_size_override_scales_shifts(tmp_path):
    table = read_star(SUBTILT_STAR)[""].copy()
    table["rlnOriginX"] = 1.0
    table["rlnOriginY"] = -2.0
    write_star({"": table}, tmp_path / "shifted.star")
    ps, series = read_warp1_series(tmp_path / "shifted.star", pixel_size_A=14.56)
    assert ps.optics["rlnImagePixelSize"].iloc[0] == 14.56
    for s in series.values():
        assert np.all(s.shifts_A == [14.56, -29.12])


def test_warp1_series_without_a_particle_label_is_refused(tmp_path):
    table = read_star(SUBTILT_STAR)[""].drop(columns="rlnGroupName")
    write_star({"": table}, tmp_path / "ungrouped.star")
    with pytest.raises(InputError) as err:
        read_warp1_series(tmp_path / "ungrouped.star")
    assert err.value.field == "rlnGroupName"
    assert str(tmp_path / "ungrouped.star") in str(err.value)


def test_optimisation_set_naming_a_missing_particles_file_is_refused(tmp_path):
    write_star({"": {"rlnTomoParticlesFile": "nowhere.star",
                     "rlnTomoTomogramsFile": str(TOMOGRAMS)}}, tmp_path / "opt.star")
    with pytest.raises(InputError) as err:
        read_particles(tmp_path / "opt.star")
    assert err.value.field == "rlnTomoParticlesFile"
    assert "nowhere.star" in str(err.value)


def test_rotation_only_matrices_that_are_not_rotations_are_refused(tmp_path):
    blocks = read_star(TOMOGRAMS)
    table = blocks["Unt_050.tomostar"].copy()
    table.loc[4, "rlnTomoProjX"] = "[0.2,-0.99,0.05,0]"  # not a unit row any more
    blocks["Unt_050.tomostar"] = table
    write_star(blocks, tmp_path / "tomograms.star")
    with pytest.raises(InputError) as err:
        read_tomogram_set(tmp_path / "tomograms.star")
    assert err.value.field == "rlnTomoProjX"
    assert "Unt_050.tomostar" in str(err.value)
