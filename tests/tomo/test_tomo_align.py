"""tomo-align against simulated truth: alignment, motion, deformations, resolution; the job's
files read back; bad input; a killed run continued; two processes as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particle_series import particle_positions_px
from subtomo.io.ply import read_trajectory_mesh
from subtomo.io.star import read_particles
from subtomo.io.tomograms import (
    read_inputs,
    read_motion,
    read_optimisation_set,
    read_tomogram_set,
)
from subtomo.simulate.tiltseries import (
    TiltSeriesConfig,
    image_deformation,
    simulate_tiltseries,
)
from subtomo.tomo.alignment import AlignSettings, align_series, frame_transform
from subtomo.tomo.correlation import References, read_references, snr_weight
from subtomo.tomo.deformation import deformation_of
from subtomo.tomo.particles import with_tomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle
from subtomo.tomo.tomo_align import tomo_align

SMALL = dict(image_size_px=(224, 224), thickness_px=56, box_px=24, n_atoms=800,
             tilt_step_deg=4.0, noise_sigma=20.0)


def _truth_references(sim) -> References:
    volume = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    return References(volume, volume, 10.0, snr_weight(np.ones(volume.shape[0] // 2 + 1)))


def _load(sim, truth: bool):
    folder = sim.directory / "truth" if truth else sim.directory
    tset = read_tomogram_set(folder / "tomograms.star")
    ps = with_tomograms(read_particles(folder / "particles.star"), tset)
    return ps, tset


def _truth_xy(sim, name: str = "TS_01") -> torch.Tensor:
    """True image positions (N, T, 2) of the particles of ``name``: projections of the moving
    particles, deformed."""
    ps, tset = _load(sim, truth=True)
    ts = tset[name]
    rows = np.flatnonzero(ps.tomo_names().to_numpy() == name)
    xy = ts.project(particle_positions_px(ps, ts, rows, read_motion(sim.truth_motion_star)))
    coeffs = torch.from_numpy(np.load(sim.directory / "truth" / "deformations.npz")[name])
    return xy + image_deformation(coeffs, xy, ts.image_size_px)


def _rms_error(result, sim) -> float:
    """Gauge-free error: rms distance (px) of the refined image positions from the truth."""
    ts = result.ts
    pos = (torch.from_numpy(result.positions_px)[:, None]
           + torch.from_numpy(result.trajectories_A) / ts.pixel_size_A)
    xy = ts.project(pos)
    d = deformation_of(ts)
    if d is not None:
        xy = d.apply(xy)
    return float((xy - _truth_xy(sim)).norm(dim=-1).pow(2).mean().sqrt())


def _align(sim, refs, **options):
    ps, tset = _load(sim, truth=False)
    settings = AlignSettings(**{"box": 48, "max_shift_px": 6.0, **options})
    return align_series(tset["TS_01"], ps, np.arange(len(ps)), refs,
                        refs.projectors(settings.box, "cpu"), settings)


def test_alignment_from_its_own_reconstruction_reaches_the_truth(project):
    """Per-tilt errors of 1.5 px and 0.5°: the half maps reconstructed with the wrong geometry
    are references enough to bring the projected positions within 0.3 px rms, and the average
    to the resolution of the true geometry."""
    ps, tset = _load(project, truth=False)
    before = reconstruct_particle(ps, tset, box=24, progress=False)
    refs = References(before.half1, before.half2, 10.0, snr_weight(before.fsc.double().numpy()))
    ps0 = torch.from_numpy(particle_positions_px(ps, tset["TS_01"], np.arange(len(ps)))
                           .numpy()[:, 0])
    xy0 = tset["TS_01"].project(ps0)
    error_before = float((xy0 - _truth_xy(project)).norm(dim=-1).pow(2).mean().sqrt())
    result = _align(project, refs)
    error = _rms_error(result, project)
    assert error_before > 1.5
    assert error < 0.3

    truth_map = torch.from_numpy(read_mrc(project.truth_maps[0])[0])
    tps, ttset = _load(project, truth=True)
    true_rec = reconstruct_particle(tps, ttset, box=24, progress=False)
    new_ps = ps.subset(np.arange(len(ps)))
    new_ps.particles[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                      "rlnCenteredCoordinateZAngst"]] = (
        (result.positions_px - np.array(result.ts.tomo_size_px) / 2) * 10.0)
    tset.series["TS_01"] = result.ts
    after = reconstruct_particle(new_ps, tset, box=24, progress=False)
    res_true = resolution_at(fsc(true_rec.map, truth_map), 24, 10.0, 0.5)
    res_after = resolution_at(fsc(after.map, truth_map), 24, 10.0, 0.5)
    res_before = resolution_at(fsc(before.map, truth_map), 24, 10.0, 0.5)
    assert res_after <= 1.05 * res_true < res_before


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """Smooth, spatially correlated motion of up to 1.5 px, nothing else wrong."""
    out = tmp_path_factory.mktemp("moving")
    config = TiltSeriesConfig(**SMALL, n_particles=40, motion_px=1.5, motion_scale_px=100.0,
                              seed=1)
    return simulate_tiltseries(out, config, progress=False)


def test_motion_is_recovered_and_beats_a_static_fit(moving):
    """Velocities correlated over ℓ = 100 px (≈ 4 e/Å² per tilt, 10 Å px: RELION's σ_d = ℓ at
    ``--s_div`` ≈ 250 Å); the exponential kernel (RELION's default) with ``s_div`` 300 Å.
    Measured: 0.135 px without motion, 0.072 px with it."""
    refs = _truth_references(moving)
    static = _rms_error(_align(moving, refs), moving)
    motion = _rms_error(_align(moving, refs, motion=True, s_div=300.0), moving)
    assert motion <= 0.3
    assert motion <= 0.7 * static


@pytest.fixture(scope="module")
def deformed(tmp_path_factory):
    """A smooth cosine deformation of up to 2 px shared by all tilts, and per-tilt affine
    deformations (RELION's linear model)."""
    out = {}
    for kind, per_tilt in (("cosine", False), ("linear", True)):
        folder = tmp_path_factory.mktemp(f"deformed_{kind}")
        config = TiltSeriesConfig(**SMALL, n_particles=40, deformation_px=2.0,
                                  deformation_model=kind, deformation_per_tilt=per_tilt,
                                  position_error_px=0.5, seed=2)
        out[kind] = simulate_tiltseries(folder, config, progress=False)
    return out


def _held_out_error(result, sim) -> float:
    """Rms error (px) of held-out points (a 3D grid between the particles) projected by the
    refined model, in the frame the refined positions define (rigid + scale fit)."""
    tps, ttset = _load(sim, truth=True)
    truth = ttset["TS_01"]
    p = particle_positions_px(tps, truth, np.arange(len(tps)))[:, 0].numpy()
    to_refined = frame_transform(p, result.positions_px, scaling=True)
    w, h = truth.image_size_px
    grid = np.stack(np.meshgrid(np.linspace(0.2 * w, 0.8 * w, 7), np.linspace(0.2 * h, 0.8 * h, 7),
                                [20.0, 28.0, 36.0], indexing="ij"), -1).reshape(-1, 3)
    coeffs = torch.from_numpy(np.load(sim.directory / "truth" / "deformations.npz")["TS_01"])
    xt = truth.project(torch.from_numpy(grid))
    xt = xt + image_deformation(coeffs, xt, truth.image_size_px)
    xr = result.ts.project(torch.from_numpy(to_refined(grid)))
    d = deformation_of(result.ts)
    xr = d.apply(xr) if d is not None else xr
    return float((xr - xt).norm(dim=-1).pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def plain_held_out(deformed):
    """Held-out error of the fit without a deformation model, per simulated kind."""
    return {kind: _held_out_error(_align(sim, _truth_references(sim)), sim)
            for kind, sim in deformed.items()}


@pytest.mark.parametrize("model,kind,options,gain", [
    ("Fourier", "cosine", dict(def_w=5, def_h=6), 0.7),  # measured 0.116 / 0.480 px
    # 200 spline coefficients for 40 particles: a field shared by all tilts is nearly a change
    # of the particles' positions, so the plain fit is already close and the gain is smaller
    ("spline", "cosine", dict(def_w=5, def_h=5), 0.8),  # 0.324 / 0.480 px
    ("linear", "linear", dict(per_frame_deformation=True), 0.7),  # 0.045 / 0.301 px
])
def test_deformations_are_recovered_on_held_out_points(deformed, plain_held_out, model, kind,
                                                       options, gain):
    """Each model with its default regulariser (``def_reg`` unset)."""
    sim = deformed[kind]
    refs = _truth_references(sim)
    plain = plain_held_out[kind]
    result = _align(sim, refs, deformation=True, def_model=model, **options)
    held_out = _held_out_error(result, sim)
    assert held_out <= 0.5
    assert held_out < gain * plain


# ---- the job: files, bad input, continue, two processes -------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two small tilt series with per-tilt errors and motion, and the truth map as both
    references (``ref.mrc``)."""
    out = tmp_path_factory.mktemp("pair")
    config = TiltSeriesConfig(n_tomograms=2, n_particles=10, image_size_px=(160, 160),
                              thickness_px=40, box_px=20, n_atoms=500, tilt_step_deg=6.0,
                              noise_sigma=10.0, shift_error_px=1.0, angle_error_deg=0.3,
                              motion_px=1.0, seed=3)
    sim = simulate_tiltseries(out, config, progress=False)
    volume, pixel_size_A = read_mrc(sim.truth_maps[0])
    write_mrc(out / "ref.mrc", volume, pixel_size_A)
    return sim


def _args(sim, out, *extra):
    ref = str(sim.directory / "ref.mrc")
    return ["tomo-align", "--i", str(sim.optimisation_set), "--ref1", ref, "--ref2", ref,
            "--b", "32", "--r", "4", "--o", str(out), *extra]


def test_job_files_read_back_losslessly(pair, tmp_path, monkeypatch):
    monkeypatch.chdir(pair.directory)
    out = tmp_path / "job"
    ref = pair.directory / "ref.mrc"
    inputs = read_inputs(pair.optimisation_set)
    inputs.files.update(ref1=ref, ref2=ref)
    job = tomo_align(inputs, read_references(ref, ref), AlignSettings(
        box=32, max_shift_px=4.0, motion=True), out, reconstruct=False, write_matrices=True,
        command=["subtomo", "tomo-align"], progress=False)
    tset = read_tomogram_set(out / "tomograms.star")
    for name, ts in job.tomograms.series.items():
        back = tset[name]
        text = (out / "tilt_series" / f"{name}.star").read_text()
        for label in ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
                      "rlnTomoYShiftAngst", "rlnTomoProjX", "rlnTomoProjW",
                      "rlnMicrographPreExposure", "rlnDefocusU"):
            assert f"_{label} " in text
        for a, b in zip(ts.dof(), back.dof(), strict=True):  # via RELION 4's matrices
            assert float((a - b).abs().max()) < 1e-9
        assert torch.allclose(ts.matrices(), back.matrices(), atol=1e-9)
    ps = read_particles(out / "particles.star")
    assert ps.particles.equals(job.particles.particles)
    assert (ps.particles[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]] == 0).all(
        axis=None)
    motion = read_motion(out / "motion.star")
    assert set(motion) == set(job.trajectories)
    for name, traj in job.trajectories.items():
        assert np.array_equal(motion[name], traj)
    opt = read_optimisation_set(out / "optimisation_set.star")
    assert opt.particles.name == "particles.star" and opt.trajectories.name == "motion.star"
    assert opt.tomograms.name == "tomograms.star" and opt.ref1.samefile(ref)
    assert (out / "note.txt").read_text().startswith("subtomo tomo-align")
    for name in ("tilt_changes_TS_01.png", "tilt_changes_TS_02.png", "job.json"):
        assert (out / name).is_file()
    names = ps.tomo_names().to_numpy()
    for tomo in ("TS_01", "TS_02"):
        n, t = int((names == tomo).sum()), job.tomograms[tomo].n_tilts
        v1, e1 = read_trajectory_mesh(out / "Trajectories" / f"{tomo}_x1.ply")
        v8, e8 = read_trajectory_mesh(out / "Trajectories" / f"{tomo}_x8.ply")
        assert v1.shape == (n * t, 3) and e1.shape == (n * (t - 1), 2)
        assert np.array_equal(e1, e8)
        chains = e1.reshape(n, t - 1, 2)
        assert (chains[..., 1] - chains[..., 0] == 1).all()  # one polyline per particle
        start = v1.reshape(n, t, 3)[:, 0]  # first exposed tilt: the particle's position
        assert np.allclose(v8.reshape(n, t, 3) - start[:, None],
                           8 * (v1.reshape(n, t, 3) - start[:, None]), atol=1e-3)
    # the refinement helped
    xy = {}
    for label, (pset, tomos, traj) in {
            "given": (*_load(pair, False), None),
            "aligned": (job.particles, job.tomograms, job.trajectories)}.items():
        pset = with_tomograms(pset, tomos)
        rows = np.flatnonzero(pset.tomo_names().to_numpy() == "TS_01")
        xy[label] = tomos["TS_01"].project(particle_positions_px(pset, tomos["TS_01"], rows,
                                                                 traj))
    truth = _truth_xy(pair)
    errors = {k: float((v - truth).norm(dim=-1).pow(2).mean().sqrt()) for k, v in xy.items()}
    assert errors["aligned"] < 0.5 * errors["given"]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(pair, tmp_path, capsys):
    out = tmp_path / "bad"
    small = tmp_path / "small.mrc"
    volume, pixel_size_A = read_mrc(pair.directory / "ref.mrc")
    write_mrc(small, volume[2:-2, 2:-2, 2:-2], pixel_size_A)
    other_pixel_size_map = tmp_path / "apix.mrc"
    write_mrc(other_pixel_size_map, volume, 2 * pixel_size_A)
    unknown = tmp_path / "unknown.star"
    unknown.write_text(pair.particles_star.read_text().replace("\nTS_02\t", "\nTS_09\t", 1))
    other_motion = tmp_path / "motion.star"
    other_motion.write_text(pair.truth_motion_star.read_text().replace("TS_01/3", "TS_07/3"))
    cases = [
        (["--ref2", str(small)], "box"),
        (["--ref2", str(other_pixel_size_map)], "pixel size"),
        (["--p", str(unknown)], "TS_09"),
        (["--mot", str(other_motion)], "TS_01/3"),
        (["--r", "0"], "--r"),
        (["--rounds", "0"], "--rounds"),
        (["--sym", "X9"], "--sym"),
    ]
    for extra, words in cases:
        assert main(_args(pair, out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
        assert not out.exists()


def _run(args, cwd, nproc=1, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "subtomo", *args]
    else:
        # "--" keeps torchrun from reading RELION's short options (--r) as its own
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                   str(nproc), "--master_port", "29531", "-m", "subtomo", "--", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_killed_run_continues_and_two_processes_match_one(pair, tmp_path):
    cwd = pair.directory
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    _run(_args(pair, one, "--no_reconstruct", "--motion"), cwd)
    _run(_args(pair, two, "--no_reconstruct", "--motion"), cwd, nproc=2)
    assert np.abs(np.stack(list(read_motion(one / "motion.star").values()))).max() > 0
    for name in ("particles.star", "motion.star", "tilt_series/TS_01.star",
                 "tilt_series/TS_02.star"):
        assert (one / name).read_text().split("\n", 1)[1] == (
            two / name).read_text().split("\n", 1)[1], name

    process = _run(_args(pair, killed, "--no_reconstruct", "--motion"), cwd, wait=False)
    first = killed / "temp" / "round1" / "TS_01.json"
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists() and not (killed / "tomograms.star").exists()
    stamp = first.stat().st_mtime_ns
    assert main(_args(pair, killed, "--no_reconstruct")) == 2  # a fresh run refuses the folder
    _run(_args(pair, killed, "--no_reconstruct", "--motion", "--continue"), cwd)
    assert first.stat().st_mtime_ns == stamp  # the finished tilt series was not redone
    for name in ("particles.star", "motion.star", "tilt_series/TS_02.star"):
        assert (one / name).read_text().split("\n", 1)[1] == (
            killed / name).read_text().split("\n", 1)[1], name
