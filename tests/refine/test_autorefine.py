"""Auto-refine against simulated ground truth: better poses and map, honest resolution, RELION
outputs, resume after a kill, clear errors on bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.geometry.euler import angular_distance_deg
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.star import read_particles, write_particles
from subtomo.refine.autorefine import RefineOptions, auto_refine, fine_enough
from subtomo.refine.job import search_radii
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

BOX, APIX = 32, 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """200 noisy particles, starting poses 8° rms and 1 px rms off; reference from them."""
    root = tmp_path_factory.mktemp("refine")
    config = SimulationConfig(n=200, box_px=BOX, pixel_size_A=APIX, n_atoms=1500,
                              noise_sigma=4.0, seed=11)
    sim = simulate_subtomograms(root / "sim", config, progress=False)
    start = read_particles(sim.particles_star)
    reference = reconstruct(start, ctf=True, progress=False).map
    write_mrc(root / "ref.mrc", reference, APIX)
    truth_map = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    return root, sim, start, reference, truth_map


def _fsc05(volume: torch.Tensor, truth: torch.Tensor) -> float:
    return resolution_at(fsc(volume, truth), BOX, APIX, threshold=0.5)


def test_refinement_recovers_poses_and_map(data, tmp_path):
    root, sim, start, reference, truth_map = data
    truth = read_particles(sim.truth_star)
    options = RefineOptions(ctf=True, auto_local_healpix_order=3, max_iter=8)
    result = auto_refine(start, reference, tmp_path / "job", options=options, progress=False)
    before = angular_distance_deg(truth.rotation_matrices(), start.rotation_matrices())
    after = angular_distance_deg(truth.rotation_matrices(), result.particles.rotation_matrices())
    assert float(after.median()) < 0.7 * float(before.median())
    shift_before = np.linalg.norm(truth.shifts_A() - start.shifts_A(), axis=1)
    shift_after = np.linalg.norm(truth.shifts_A() - result.particles.shifts_A(), axis=1)
    assert np.median(shift_after) < 0.6 * np.median(shift_before)
    refined = _fsc05(result.reconstruction.map, truth_map)
    true_pose = _fsc05(reconstruct(truth, ctf=True, progress=False).map, truth_map)
    assert refined < _fsc05(reference, truth_map)
    assert refined <= 1.10 * true_pose
    # gold standard: the half-map resolution is the map's true resolution (no overfitting)
    assert result.reconstruction.resolution_A == pytest.approx(refined, rel=0.10)
    halves = result.particles.particles["rlnRandomSubset"].to_numpy()
    assert set(np.unique(halves)) == {1, 2}
    # RELION's last step: after convergence one more iteration searches to Nyquist and joins
    # the halves; its map is closer to the truth than the last regular iteration's
    final, last = result.history[-1], result.iterations - 1
    assert result.converged and final["final"] and final["search_radius_px"][1] == BOX / 2
    before = read_particles(tmp_path / "job" / f"run_it{last:03d}_data.star")
    joined_before = reconstruct(before, ctf=True, halves=True, progress=False).map
    error_before = angular_distance_deg(truth.rotation_matrices(), before.rotation_matrices())
    assert refined < _fsc05(joined_before, truth_map)  # measured: 11.07 vs 11.17 Å
    assert float(after.median()) < float(error_before.median())  # 2.56° vs 2.77°


def test_fine_enough_follows_resolution():
    assert not fine_enough(2, 10.0, 150.0)
    assert fine_enough(5, 10.0, 150.0)
    assert fine_enough(2, 80.0, 150.0)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_final_iteration_widens_the_fine_pass_only():
    """The final iteration searches to Nyquist, its coarse pass stays the converged one's
    (at 128³ a coarse pass to 0.6 Nyquist made the poses worse: 2.56° → 3.79°)."""
    for box, pixel_size_A, res, order in ((128, 2.0, 11.7, 5), (48, 4.0, 12.0, 4),
                                          (64, 3.0, 20.0, 3)):
        diameter = 0.8 * box * pixel_size_A
        coarse, fine = search_radii(res, order, box, pixel_size_A, diameter, False)
        coarse_final, fine_final = search_radii(res, order, box, pixel_size_A, diameter, False,
                                                True)
        assert fine_final == box / 2 > fine
        assert coarse_final == coarse <= 0.6 * fine + 1e-9


def test_cli_outputs_and_resume_after_kill(data, tmp_path, capsys):
    root, sim, *_ = data
    job = tmp_path / "Refine3D" / "job001"
    args = ["refine", "--i", str(sim.particles_star), "--ref", str(root / "ref.mrc"),
            "--ctf", "--auto_local_healpix_order", "3", "--j", "2"]
    assert main([*args, "--o", str(job), "--iter", "2"]) == 0
    for name in ("run_it001_data.star", "run_it002_half1_class001.mrc",
                 "run_it002_half2_class001.mrc", "run_it002_model.star",
                 "run_it002_sampling.star", "run_data.star", "run_class001.mrc",
                 "run_half1_class001_unfil.mrc", "run_model.star", "run_class001_fsc.png",
                 "run_resolution.png", "job.json"):
        assert (job / name).is_file(), name
    data_it2 = read_particles(job / "run_it002_data.star")
    assert {"rlnMaxValueProbDistribution", "rlnLogLikeliContribution",
            "rlnRandomSubset"} <= set(data_it2.particles.columns)
    assert len(data_it2) == 200
    # a second run into the same folder is refused; nothing is touched
    first = _digest(job / "run_it001_data.star")
    assert main([*args, "--o", str(job)]) == 2
    assert "--continue" in capsys.readouterr().err
    # kill during iteration 2: its state file never appeared -> resume from iteration 1
    (job / "run_it002_optimiser.json").unlink()
    assert main([*args, "--continue", str(job), "--iter", "3"]) == 0
    assert _digest(job / "run_it001_data.star") == first
    assert (job / "run_it003_optimiser.json").is_file()
    resumed = read_particles(job / "run_it003_data.star")
    assert np.array_equal(resumed.particles["rlnRandomSubset"].to_numpy(),
                          data_it2.particles["rlnRandomSubset"].to_numpy())
    # killed after its last iteration, before the final files: continuing writes them
    (job / "run_class001.mrc").unlink()
    assert main([*args, "--continue", str(job), "--iter", "3"]) == 0
    assert (job / "run_class001.mrc").is_file()
    assert not (job / "run_it004_optimiser.json").exists()


def test_bad_inputs_give_one_line_and_write_nothing(data, tmp_path, capsys):
    root, sim, *_ = data
    base = ["refine", "--i", str(sim.particles_star), "--ctf"]
    small = tmp_path / "small.mrc"
    write_mrc(small, torch.randn(24, 24, 24), APIX)
    wrong_pixel_size_map = tmp_path / "apix.mrc"
    write_mrc(wrong_pixel_size_map, torch.randn(BOX, BOX, BOX), 5.0)
    mask = tmp_path / "mask.mrc"
    write_mrc(mask, torch.full((BOX, BOX, BOX), 1.5), APIX)
    no_ctf = tmp_path / "no_ctf.star"
    ps = read_particles(sim.particles_star)
    ps.particles = ps.particles.drop(columns=["rlnCtfImage"])
    write_particles(ps, no_ctf, "relion31")
    cases = [
        (["--ref", str(small)], "box size"),
        (["--ref", str(wrong_pixel_size_map)], "pixel size"),
        (["--ref", str(root / "ref.mrc"), "--mask", str(mask)], "[0, 1]"),
    ]
    for extra, expected in cases:
        job = tmp_path / f"job_{len(list(tmp_path.iterdir()))}"
        assert main([*base, *extra, "--o", str(job)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not job.exists() or not any(job.iterdir())
    job = tmp_path / "job_ctf"
    assert main(["refine", "--i", str(no_ctf), "--ctf", "--ref", str(root / "ref.mrc"),
                 "--o", str(job)]) == 2
    assert "rlnCtfImage" in capsys.readouterr().err
    assert not job.exists() or not any(job.iterdir())


def test_global_search_from_random_orientations(tmp_path):
    """Random starting orientations, the 30 Å low-passed truth as reference: ≥ 90 % of the
    particles end within 10° of their true pose."""
    from subtomo.fourier.grid import lowpass_map
    from subtomo.geometry.so3 import random_rotations

    config = SimulationConfig(n=120, box_px=BOX, pixel_size_A=APIX, n_atoms=1500,
                              noise_sigma=2.0, seed=21)
    sim = simulate_subtomograms(tmp_path / "sim", config, progress=False)
    truth = read_particles(sim.truth_star)
    start = read_particles(sim.particles_star)
    angles = random_rotations(len(start), torch.Generator().manual_seed(5)).numpy()
    for i, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        start.particles[label] = angles[:, i]
    reference = lowpass_map(torch.from_numpy(read_mrc(sim.truth_maps[0])[0]), APIX, 30.0)
    options = RefineOptions(ctf=True, firstiter_cc=True, max_iter=3)
    result = auto_refine(start, reference, tmp_path / "job", options=options, progress=False)
    error = angular_distance_deg(truth.rotation_matrices(), result.particles.rotation_matrices())
    assert float((error < 10).double().mean()) >= 0.9


def test_reference_on_another_greyscale_needs_no_firstiter_cc(data, tmp_path):
    """A reference 30× brighter than the particles (another program's scale): measured and
    corrected before iteration 1, the poses come out as from the particles' own scale;
    uncorrected, the likelihood hides the reference's strongest Fourier components in the
    missing wedge and the poses are lost."""
    import json

    from subtomo.fourier.grid import lowpass_map

    root, sim, start, reference, truth_map = data
    rows = list(range(100))
    ps, truth = start.subset(rows), read_particles(sim.truth_star).subset(rows)
    bright = 30.0 * lowpass_map(truth_map, APIX, 30.0)
    errors, scales = {}, {}
    for greyscale in (True, False):
        job = tmp_path / f"greyscale_{greyscale}"
        result = auto_refine(ps, bright, job, progress=False, options=RefineOptions(
            ctf=True, max_iter=1, greyscale=greyscale))
        errors[greyscale] = float(angular_distance_deg(
            truth.rotation_matrices(), result.particles.rotation_matrices()).median())
        state = json.loads((job / "run_it001_optimiser.json").read_text())
        scales[greyscale] = state["schedule"]["reference_scale"]
    assert 30.0 * scales[True] == pytest.approx(1.0, rel=0.25)  # the particles' scale is 1
    assert scales[False] == 1.0
    assert errors[True] < 10.0  # order 2 (15°, oversampled 7.5°) global search
    assert errors[False] > 30.0


def test_noise_outside_the_mask_keeps_the_noise_model(data, tmp_path):
    """With --particle_diameter, zeros outside the mask (--zero_mask) lower the measured noise
    power by the masked-out fraction; RELION's default, noise of the current spectrum outside
    the mask, keeps it at the data's own (ground truth: the particles' residual against the
    true map at their true poses), and the poses are as good."""
    from subtomo.align.score import Frequencies, noise_power
    from subtomo.fourier.projector import Projector
    from subtomo.io.star_text import read_star
    from subtomo.refine.images import iterate_batches

    root, sim, start, reference, truth_map = data
    rows = list(range(100))
    ps, truth = start.subset(rows), read_particles(sim.truth_star).subset(rows)
    n_shells = BOX // 2 + 1
    freqs = Frequencies.within(BOX, BOX / 2)
    projector = Projector(truth_map.float())
    sums, counts = torch.zeros(n_shells, dtype=torch.float64), torch.zeros(n_shells,
                                                                           dtype=torch.float64)
    origins = torch.as_tensor(truth.shifts_A() / APIX, dtype=torch.float32)
    for batch in iterate_batches(truth, np.arange(len(truth)), box=BOX, ctf=True,
                                 shifts_px=origins):
        sections = projector.sample(truth.rotation_matrices()[batch.rows].float(), freqs.k_px)
        s, c = noise_power(batch.spectra, batch.ctf, freqs, torch.zeros(len(batch.rows), 3),
                           sections, n_shells)
        sums, counts = sums + s, counts + c
    true_sigma2 = (sums / counts).numpy()
    ratio, errors = {}, {}
    for zero_mask in (True, False):
        job = tmp_path / f"zero_mask_{zero_mask}"
        result = auto_refine(ps, reference, job, progress=False, options=RefineOptions(
            ctf=True, max_iter=2, particle_diameter_A=80.0, zero_mask=zero_mask,
            auto_local_healpix_order=3))
        sigma2 = read_star(job / "run_model.star")["model_optics_group_1"]["rlnSigma2Noise"]
        ratio[zero_mask] = sigma2.to_numpy()[8:15] / true_sigma2[8:15]
        errors[zero_mask] = float(angular_distance_deg(
            truth.rotation_matrices(), result.particles.rotation_matrices()).median())
    np.testing.assert_allclose(ratio[False], 1.0, atol=0.15)
    assert ratio[True].max() < 0.5
    assert errors[False] <= errors[True] + 0.5


def test_solvent_noise_has_the_asked_power_in_every_shell():
    """The noise filled in outside the particle mask has E|n(k)|² = sigma2(|k|) in every shell,
    the lowest included, where the Hermitian planes (k_x = 0, Nyquist) are a large part of the
    shell; each particle's noise depends on its seed only, not on its batch."""
    from subtomo.fourier.grid import shell_index
    from subtomo.refine.expectation import solvent_noise

    box, n = 32, 400
    sigma2 = torch.linspace(4.0, 1.0, box // 2 + 1, dtype=torch.float64)
    noise = solvent_noise(sigma2, box, np.arange(n), "cpu", torch.float32)
    power = (torch.fft.rfftn(noise.double(), dim=(-3, -2, -1)).abs() ** 2).mean(0)
    shells = shell_index(box)
    for k in (1, 2, 3, 8, 16):
        measured = float(power[shells == k].mean())
        count = int((shells == k).sum()) * n
        assert abs(measured / float(sigma2[k]) - 1) < 4 / count ** 0.5 + 0.01, (k, measured)
    again = solvent_noise(sigma2, box, np.array([7, 3]), "cpu", torch.float32)
    assert torch.equal(again[1], noise[3]) and torch.equal(again[0], noise[7])


def test_flatten_solvent_without_a_mask_uses_the_particle_sphere(data, tmp_path, monkeypatch):
    """As relion_refine: --flatten_solvent with --particle_diameter and no --mask searches
    against references multiplied by the particle's soft sphere; without --flatten_solvent
    the references are searched as they are."""
    import subtomo.refine.autorefine as autorefine
    from subtomo.fourier.grid import soft_sphere

    _, _, start, reference, _ = data
    seen = []
    original = autorefine.reference_for_search

    def spy(volume, solvent_mask, options):
        searched = original(volume, solvent_mask, options)
        seen.append((volume, searched))
        return searched

    monkeypatch.setattr(autorefine, "reference_for_search", spy)
    sphere = soft_sphere(BOX, 80.0 / APIX)
    for flatten in (True, False):
        seen.clear()
        auto_refine(start.subset(np.arange(40)), reference, tmp_path / f"f{flatten}",
                    progress=False, options=RefineOptions(
                        ctf=True, max_iter=1, particle_diameter_A=80.0,
                        flatten_solvent=flatten))
        assert len(seen) >= 2
        for volume, searched in seen:
            expected = volume * sphere if flatten else volume
            torch.testing.assert_close(searched, expected)
        assert float((sphere < 0.5).float().mean()) > 0.3  # the sphere does cut something
