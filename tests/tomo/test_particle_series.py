"""Particle series (2D stacks): reconstruction against direct insertion and the truth, the
pseudo-subtomogram scores against the sum of the tilts' 2D likelihoods, refinement from
perturbed poses, the files extract writes for them, and bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import mrcfile
import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.fourier.grid import frequencies_2d, hermitian_weights, shell_radius_px
from subtomo.fourier.projector import Projector
from subtomo.geometry.euler import angular_distance_deg, matrix_to_euler
from subtomo.geometry.so3 import rotation_vector_to_matrix
from subtomo.io.mrc import read_mrc
from subtomo.io.particle_series import (
    attach_tomograms,
    particle_positions_px,
    read_particle_input,
    read_stack_spectra,
)
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_optimisation_set, read_tomogram_set
from subtomo.refine.autorefine import RefineOptions, auto_refine
from subtomo.refine.images import iterate_batches
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle

BOX, APIX = 24, 10.0


@pytest.fixture(scope="module")
def stacks(project, tmp_path_factory):
    """2D stacks of the shared project at its true geometry, read back as a series."""
    out = tmp_path_factory.mktemp("stacks")
    ps = read_particles(project.truth_particles_star)
    tset = read_tomogram_set(project.truth_tomograms_star)
    result = extract_subtomograms(ps, tset, out, ExtractOptions(box=BOX, stacks_2d=True),
                                  progress=False)
    series = attach_tomograms(read_particles(result.star),
                              read_tomogram_set(project.truth_tomograms_star))
    return series, result.star


def _fsc05(volume, truth):
    return resolution_at(fsc(volume, truth), BOX, APIX, threshold=0.5)


def test_stack_reconstruction_is_as_close_to_the_truth_as_direct_insertion(project, stacks,
                                                                          tmp_path):
    """Issue 26's bar with the true poses: the map from the 2D stacks is at least as close to
    the truth (FSC 0.5) as direct insertion of the same tilt images (reconstruct-particle) and
    as extract-3D → reconstruct."""
    series, _ = stacks
    truth = torch.from_numpy(read_mrc(project.truth_maps[0])[0])
    ps = read_particles(project.truth_particles_star)
    tset = read_tomogram_set(project.truth_tomograms_star)
    direct = reconstruct_particle(ps, tset, box=BOX, progress=False)
    x3 = extract_subtomograms(ps, tset, tmp_path / "x3", ExtractOptions(box=BOX), progress=False)
    three_d = reconstruct(read_particles(x3.star), ctf=True, halves=True, progress=False)
    from_stacks = reconstruct(series, ctf=True, halves=True, progress=False)
    ours = _fsc05(from_stacks.map, truth)
    assert ours <= 1.01 * _fsc05(direct.map, truth)
    assert ours <= 1.01 * _fsc05(three_d.map, truth)
    assert ours < 30.0


def test_pseudo_subtomogram_scores_are_the_sum_of_the_tilt_likelihoods(project, tmp_path):
    """Noise-free particles: L(A) = Re Σ C X̄ P_A − ½ Σ C² |P_A|² from the whitened
    pseudo-subtomogram equals Σ_t [Re Σ c_t Ȳ_t P_A(R_tᵀk) − ½ Σ c_t² |P_A(R_tᵀk)|²] over 16
    poses within 12° of the truth, up to interpolation."""
    config = TiltSeriesConfig(n_particles=3, image_size_px=(160, 160), thickness_px=40,
                              box_px=BOX, n_atoms=600, tilt_step_deg=6.0, seed=4)
    sim = simulate_tiltseries(tmp_path / "sim", config, progress=False)
    ps = read_particles(sim.truth_particles_star)
    tset = read_tomogram_set(sim.truth_tomograms_star)
    written = extract_subtomograms(ps, tset, tmp_path / "x", ExtractOptions(
        box=BOX, stacks_2d=True), progress=False)
    series = attach_tomograms(read_particles(written.star), tset)
    rows = np.arange(len(series))
    batch = next(iterate_batches(series, rows, box=BOX, ctf=True))
    ts = tset[str(series.tomo_names().iloc[0])]
    y, visible = read_stack_spectra(series, rows, ts.n_tilts, BOX)
    frames = ts.matrices()[:, :3, :3].float()
    positions = particle_positions_px(series, ts, rows, apply_origins=False)
    u, v, angle = (x.float()[..., None, None] for x in ts.defocus_at(positions))
    freqs = frequencies_2d(BOX, APIX).float()
    c2d = ctf_2d(freqs, u, v, angle, ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast) * \
        dose_filter(freqs.norm(dim=-1), torch.as_tensor(ts.pre_exposure).float()[:, None, None])
    projector = Projector(torch.from_numpy(read_mrc(sim.truth_maps[0])[0]).float())
    radius = 0.8 * BOX / 2
    gen = torch.Generator().manual_seed(0)
    k2 = frequencies_2d(BOX, 1.0 / BOX).float()  # Fourier px of the box: (S, S//2+1, 2)
    inside2 = k2.norm(dim=-1) <= radius
    k3 = torch.cat([k2, torch.zeros_like(k2[..., :1])], -1)[inside2]
    h2 = hermitian_weights(BOX).expand(BOX, -1)[inside2]
    inside3 = shell_radius_px(BOX) <= radius
    h3 = hermitian_weights(BOX).expand(BOX, BOX, -1)[inside3]
    for i in range(len(series)):
        true_pose = series.rotation_matrices()[i].float()
        w = torch.randn(16, 3, generator=gen) * math.radians(12.0) / math.sqrt(3)
        w[0] = 0.0
        poses = rotation_vector_to_matrix(w.double()).float() @ true_pose
        P3 = projector.spectra(poses)[:, inside3]
        cx = (batch.ctf[i] * batch.spectra[i])[inside3]
        c2 = (batch.ctf[i] ** 2)[inside3]
        l3 = ((h3 * (cx.conj() * P3).real).sum(-1) - 0.5 * (h3 * c2 * P3.abs() ** 2).sum(-1))
        l2 = torch.zeros(len(poses))
        for t in torch.nonzero(visible[i])[:, 0]:
            P2 = projector.sample(frames[t] @ poses, k3)
            yt, c = y[i, t][inside2], c2d[i, t][inside2]
            l2 += (h2 * (yt.conj() * P2).real).sum(-1) - 0.5 * (h2 * c**2 * P2.abs() ** 2).sum(-1)
        d3, d2 = l3 - l3.mean(), l2 - l2.mean()
        assert float(torch.corrcoef(torch.stack([d3, d2]))[0, 1]) > 0.98
        assert float((d3 * d2).sum() / (d2 * d2).sum()) == pytest.approx(1.0, abs=0.15)
        assert int(l3.argmax()) == int(l2.argmax()) == 0


def test_refinement_on_stacks_reaches_the_true_pose_map(project, stacks, tmp_path):
    series, _ = stacks
    truth = torch.from_numpy(read_mrc(project.truth_maps[0])[0])
    gen = torch.Generator().manual_seed(3)
    A = series.rotation_matrices()
    w = torch.randn(len(series), 3, generator=gen, dtype=torch.float64) * math.radians(6 / 3**.5)
    angles = matrix_to_euler(rotation_vector_to_matrix(w) @ A).numpy()
    df = series.particles.copy()
    for j, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        df[label] = angles[:, j]
    shifts = torch.randn(len(series), 3, generator=gen, dtype=torch.float64).numpy()
    for j, label in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        df[label] = (df[label] if label in df else 0.0) + shifts[:, j] * APIX / 3**.5
    start = replace(series, particles=df)
    reference = reconstruct(start, ctf=True, progress=False).map
    result = auto_refine(start, reference, tmp_path / "job", options=RefineOptions(
        ctf=True, healpix_order=3, auto_local_healpix_order=3, max_iter=6,
        particle_diameter_A=200),
        progress=False)
    true_pose = _fsc05(reconstruct(series, ctf=True, progress=False).map, truth)
    refined = _fsc05(result.reconstruction.map, truth)
    assert refined < _fsc05(reference, truth)
    assert refined <= 1.05 * true_pose  # 30 particles: the 3 % bar is measured by bench_series
    before = angular_distance_deg(A, start.rotation_matrices())
    after = angular_distance_deg(A, result.particles.rotation_matrices())
    assert float(after.median()) < 0.8 * float(before.median())


def test_extract_writes_a_set_the_next_command_reads(project, tmp_path, capsys):
    truth_opt = project.truth_tomograms_star.parent / "optimisation_set.star"
    assert main(["extract", "--i", str(truth_opt), "--b", str(BOX), "--2d_stacks",
                 "--max_dose", "40", "--o", str(tmp_path / "x")]) == 0
    opt = read_optimisation_set(tmp_path / "x" / "optimisation_set.star")
    assert opt.require("particles").resolve() == (tmp_path / "x" / "particles.star").resolve()
    series = read_particle_input(tmp_path / "x" / "optimisation_set.star")
    ts = series.series.tomograms[str(series.tomo_names().iloc[0])]
    flags = series.particles["rlnTomoVisibleFrames"].iloc[0].strip("[]").split(",")
    assert len(flags) == ts.n_tilts  # one flag per tilt of the series, excluded tilts 0
    assert all(f == "0" for f, dose in zip(flags, ts.pre_exposure, strict=True) if dose > 40)
    with mrcfile.open(tmp_path / "x" / series.particles["rlnImageName"].iloc[0]) as m:
        assert m.data.shape[0] == sum(f == "1" for f in flags)
    capsys.readouterr()
    assert main(["reconstruct", "--ios", str(tmp_path / "x" / "optimisation_set.star"),
                 "--o", str(tmp_path / "r.mrc")]) == 0
    assert (tmp_path / "r.mrc").is_file()


def _one_line_exit_2(capsys, argv, what):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and what in err


def test_bad_particle_series_input(project, stacks, tmp_path, capsys):
    _, star = stacks
    tomos = str(project.truth_tomograms_star)
    out = tmp_path / "r.mrc"
    # a 2D-stack set without its tomograms
    _one_line_exit_2(capsys, ["reconstruct", "--i", str(star), "--o", str(out)],
                     "rlnTomoTiltSeriesStarFile")
    # particles naming a tomogram (projection matrices) that is not in the set
    ps = read_particles(star)
    ps.particles.loc[0, "rlnTomoName"] = "TS_99"
    from subtomo.io.star import write_particles
    write_particles(ps, star.parent / "other.star", "relion5")
    _one_line_exit_2(capsys, ["reconstruct", "--i", str(star.parent / "other.star"),
                              "--tomograms", tomos, "--o", str(out)], "TS_99")
    # a stack with fewer images than its visible tilts
    ps = read_particles(star)
    stack = star.parent / ps.particles["rlnImageName"].iloc[1]
    short = stack.with_name("short_stack2d.mrcs")
    with mrcfile.open(stack) as m:
        mrcfile.new(short, m.data[:-2].copy()).close()
    ps.particles.loc[1, "rlnImageName"] = str(short.relative_to(star.parent))
    write_particles(ps, star.parent / "short.star", "relion5")
    _one_line_exit_2(capsys, ["reconstruct", "--i", str(star.parent / "short.star"),
                              "--tomograms", tomos, "--o", str(out)], "visible tilts")
    assert not out.exists()
