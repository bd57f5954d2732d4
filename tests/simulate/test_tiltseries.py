"""Simulated tilt series against an independent rendering: rotate the atoms into each tilt's
frame, render them as a 3D voxel volume and sum along the beam; plus files, motion, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.geometry.euler import euler_to_matrix
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_motion, read_optimisation_set, read_tomogram_set
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import pseudo_atomic
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

CONFIG = dict(image_size_px=(160, 128), thickness_px=40, pixel_size_A=10.0,
              box_px=20, n_atoms=300, tilt_range_deg=60.0, tilt_step_deg=30.0,
              dose_per_tilt=0.0, defocus_um=(0.0, 0.0), defocus_tilt_sd_A=0.0, cs_mm=0.0,
              amplitude_contrast=1.0)  # CTF ≡ 1 and no dose filter: images are −projections


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts")
    config = TiltSeriesConfig(**CONFIG, n_particles=6, motion_px=1.5, shift_error_px=1.0,
                              angle_error_deg=0.5, position_error_px=2.0, seed=1)
    return simulate_tiltseries(out, config, progress=False), config


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One particle (in projection, particles of a thick tomogram overlap), with motion."""
    out = tmp_path_factory.mktemp("one")
    config = TiltSeriesConfig(**CONFIG, n_particles=1, motion_px=1.5, seed=2)
    return simulate_tiltseries(out, config, progress=False), config


def test_images_are_projections_at_the_projected_positions(single):
    sim, config = single
    ts = sim.truth_tomograms["TS_01"]
    images = ts.read_images()
    truth = read_particles(sim.truth_particles_star).particles
    motion = read_motion(sim.truth_motion_star)
    structure = pseudo_atomic(config.n_atoms, box_px=config.box_px,
                              pixel_size_A=config.pixel_size_A, seed=config.seed)
    pixel_size_A, box = config.pixel_size_A, 32
    mats = ts.matrices()
    for i in (0,):
        row = truth.iloc[i]
        centred = torch.tensor([row[f"rlnCenteredCoordinate{a}Angst"] for a in "XYZ"],
                               dtype=torch.float64)
        A = euler_to_matrix(torch.tensor([[row["rlnAngleRot"], row["rlnAngleTilt"],
                                           row["rlnAnglePsi"]]], dtype=torch.float64))[0]
        for t in range(ts.n_tilts):
            position = ts.centred_to_px(centred) + torch.from_numpy(
                motion[row["rlnTomoParticleName"]][t]) / pixel_size_A
            xy = (mats[t, :3, :3] @ position + mats[t, :3, 3])[:2]
            corner = torch.round(xy) - box // 2
            offset = (xy - torch.round(xy)) * pixel_size_A  # sub-pixel part, Å
            atoms = structure.positions_A @ (mats[t, :3, :3] @ A).T
            atoms[:, :2] += offset
            volume = render_atoms(atoms[None], structure.amplitudes, box, pixel_size_A,
                                  config.sigma_A,
                                  dtype=torch.float64)[0]
            expected = -volume.sum(0)  # along the beam (z of the tilt frame)
            x0, y0 = int(corner[0]), int(corner[1])
            patch = images[t, y0:y0 + box, x0:x0 + box].double()
            assert (patch - expected).abs().max() < 2e-3 * expected.abs().max()


def test_project_files_truth_and_errors(simulated):
    sim, config = simulated
    opt = read_optimisation_set(sim.optimisation_set)
    given = read_tomogram_set(opt.require("tomograms"))["TS_01"]
    truth = read_tomogram_set(sim.truth_tomograms_star)["TS_01"]
    assert given.n_tilts == truth.n_tilts == 5
    assert given.read_images().shape == (5, 128, 160)
    shift = given.column("rlnTomoXShiftAngst") - truth.column("rlnTomoXShiftAngst")
    assert 0 < np.abs(shift).max() < 5 * config.pixel_size_A
    angle = given.column("rlnTomoYTilt") - truth.column("rlnTomoYTilt")
    assert 0 < np.abs(angle).max() < 3.0
    ps = read_particles(opt.require("particles"))
    true_ps = read_particles(sim.truth_particles_star)
    error = (ps.particles["rlnCenteredCoordinateXAngst"]
             - true_ps.particles["rlnCenteredCoordinateXAngst"]).abs()
    assert 0 < error.max() < 10 * config.pixel_size_A
    motion = np.stack(list(read_motion(sim.truth_motion_star).values()))
    norms = np.linalg.norm(motion, axis=-1) / config.pixel_size_A
    assert norms.max() == pytest.approx(1.5, rel=1e-6)
    first = np.argmin(truth.pre_exposure)
    assert np.all(norms[:, first] == 0)


def test_command_writes_a_project_and_refuses_bad_input(tmp_path, capsys):
    assert main(["simulate", "tiltseries", "--o", str(tmp_path / "p"), "--n", "3", "--size",
                 "96", "96", "--box", "16", "--thickness", "32", "--pseudo-atoms", "200",
                 "--tilt-step", "20"]) == 0
    assert (tmp_path / "p" / "optimisation_set.star").is_file()
    capsys.readouterr()
    assert main(["simulate", "tiltseries", "--o", str(tmp_path / "q"), "--n", "3", "--size",
                 "20", "20"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "q").exists()
    volume, pixel_size_A = read_mrc(tmp_path / "p" / "truth" / "class001.mrc")
    assert volume.shape == (16, 16, 16) and pixel_size_A == 10.0
