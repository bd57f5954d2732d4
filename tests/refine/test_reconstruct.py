"""Reconstruction against simulated ground truth (issue bar: FSC ≥ 0.99 to 0.9 Nyquist)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.fourier.fsc import fsc
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms


def simulate(tmp_path_factory, name: str, **kwargs):
    config = SimulationConfig(**{"n": 150, "box_px": 32, "pixel_size_A": 4.0, "n_atoms": 1500,
                                 "angle_error_deg": 0.0, "shift_error_px": 0.0, **kwargs})
    return simulate_subtomograms(tmp_path_factory.mktemp(name), config, progress=False)


def shells_up_to(box: int, fraction: float = 0.9) -> int:
    """Last integer shell at or below ``fraction`` of Nyquist (box / 2)."""
    return int(np.floor(fraction * box / 2))


@pytest.mark.parametrize("box", [32, 33])
def test_noise_free_true_poses_reach_truth(tmp_path_factory, box):
    sim = simulate(tmp_path_factory, f"clean{box}", box_px=box)
    result = reconstruct(read_particles(sim.truth_star), ctf=True, progress=False)
    truth = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    curve = fsc(result.map, truth)
    assert float(curve[1: shells_up_to(box) + 1].min()) >= 0.99


def test_noise_free_with_symmetry(tmp_path_factory):
    sim = simulate(tmp_path_factory, "c6", symmetry="C6", n=60)
    result = reconstruct(read_particles(sim.truth_star), ctf=True, sym="C6", progress=False)
    truth = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    curve = fsc(result.map, truth)
    assert float(curve[1: shells_up_to(32) + 1].min()) >= 0.99


def test_half_map_fsc_predicts_fsc_against_truth(tmp_path_factory):
    """√(2F/(1+F)) of the half-map FSC matches the FSC of the full map against the truth."""
    sim = simulate(tmp_path_factory, "noisy", n=300, noise_sigma=1.5)
    result = reconstruct(read_particles(sim.truth_star), ctf=True, halves=True, progress=False)
    truth = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    half = result.fsc.clamp(min=0)
    expected = torch.sqrt(2 * half / (1 + half))
    measured = fsc(result.map, truth)
    below = torch.nonzero(half < 0.143)
    last = int(below[0]) if len(below) else len(half)
    assert 4 <= last < len(half), "noise should put the 0.143 point inside the box"
    np.testing.assert_allclose(measured[1:last].numpy(), expected[1:last].numpy(), atol=0.05)


def test_cli_writes_half_maps_fsc_and_plot(tmp_path_factory):
    sim = simulate(tmp_path_factory, "cli", n=40, noise_sigma=1.0)
    out = sim.directory / "rec" / "ref.mrc"
    code = main(["reconstruct", "--i", str(sim.particles_star), "--o", str(out), "--3d_rot",
                 "--ctf", "--halves"])
    assert code == 0
    for suffix in ("_half1.mrc", "_half2.mrc", "_fsc.star", "_fsc.png"):
        assert (out.parent / f"ref{suffix}").is_file()
    data, voxel = read_mrc(out)
    assert data.shape == (32, 32, 32) and voxel == pytest.approx(4.0)


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory):
    return simulate(tmp_path_factory, "bad", n=6, box_px=16, n_atoms=200)


def _run_bad(sim, capsys, *extra: str, star=None) -> str:
    out = sim.directory / "bad_out" / "map.mrc"
    code = main(["reconstruct", "--i", str(star or sim.particles_star), "--o", str(out),
                 "--ctf", *extra])
    lines = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    errors = [line for line in lines if line.startswith("subtomo: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0]  # progress bars may precede
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))
    return errors[0]


def test_bad_input_unknown_symmetry(small_sim, capsys):
    assert "--sym" in _run_bad(small_sim, capsys, "--sym", "X7")


def test_bad_input_wrong_ctf_volume(small_sim, capsys):
    from subtomo.io.mrc import write_mrc

    ctf = small_sim.directory / "Subtomograms" / "particle_000003_ctf.mrc"
    backup = ctf.read_bytes()
    write_mrc(ctf, np.ones((10, 10, 10), np.float32), 4.0)
    try:
        message = _run_bad(small_sim, capsys)
    finally:
        ctf.write_bytes(backup)
    assert "particle_000003_ctf.mrc" in message and "(16, 16, 9)" in message


def test_bad_input_missing_image_and_empty_selection(small_sim, capsys, tmp_path):
    from subtomo.io.star import write_particles

    ps = read_particles(small_sim.particles_star)
    ps.particles.loc[2, "rlnImageName"] = "Subtomograms/nowhere.mrc"
    write_particles(ps, small_sim.directory / "missing.star", "relion31")
    message = _run_bad(small_sim, capsys, star=small_sim.directory / "missing.star")
    assert "nowhere.mrc" in message and "rlnImageName" in message
    ps = read_particles(small_sim.particles_star)
    ps.particles["rlnRandomSubset"] = 1
    write_particles(ps, small_sim.directory / "one_half.star", "relion31")
    message = _run_bad(small_sim, capsys, "--subset", "2",
                       star=small_sim.directory / "one_half.star")
    assert "half set 2 is empty" in message


def test_maxres_removes_higher_frequencies(small_sim):
    from subtomo.fourier.grid import centred_rfft, shell_radius_px

    result = reconstruct(read_particles(small_sim.truth_star), ctf=True, maxres_A=16.0,
                         progress=False)
    spectrum = centred_rfft(result.map).abs()
    radius = shell_radius_px(16)
    cutoff = 16 * 4.0 / 16.0  # 4 Fourier pixels, raised-cosine edge ±1
    assert float(spectrum[radius >= cutoff + 1].max()) < 1e-4 * float(spectrum.max())
    assert float(spectrum[(radius > 0) & (radius <= cutoff - 1)].max()) > 0.01 * float(
        spectrum.max())
