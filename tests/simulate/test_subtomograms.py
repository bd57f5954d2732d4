"""Simulated data sets: files, truth, noise support and atomic models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.ctf.volume import ctf_volume
from subtomo.fourier.grid import centred_rfft
from subtomo.io.mrc import read_ctf_volume, read_mrc
from subtomo.io.star import read_particles
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms, tilt_scheme


def test_noise_lives_only_where_tilts_sample(tmp_path):
    """Outside the sampled region (missing wedge) a subtomogram's spectrum is exactly zero."""
    config = SimulationConfig(n=3, box_px=24, n_atoms=300, noise_sigma=3.0, classes=3)
    sim = simulate_subtomograms(tmp_path, config, progress=False)
    _, sampling = ctf_volume(24, 4.0, tilt_scheme(config), 3e4)
    wedge = sampling == 0
    assert 0.15 < float(wedge.float().mean()) < 0.5
    for name in sim.truth.particles["rlnImageName"]:
        spectrum = centred_rfft(torch.from_numpy(read_mrc(tmp_path / name)[0]))
        peak = float(spectrum.abs().max())
        assert float(spectrum[wedge].abs().max()) < 1e-4 * peak
        assert float(spectrum[~wedge].abs().mean()) > 1e-2 * peak / 24
    ctf = read_ctf_volume(tmp_path / sim.truth.particles["rlnCtfImage"].iloc[0], 24)
    assert float(ctf[wedge].abs().max()) == 0.0


def test_truth_and_starting_poses(tmp_path):
    """particles.star = truth perturbed by the asked rms angle; classes and hinge in truth."""
    config = SimulationConfig(n=200, box_px=16, n_atoms=100, angle_error_deg=8.0,
                              shift_error_px=1.0, classes=3)
    sim = simulate_subtomograms(tmp_path, config, progress=False)
    truth, start = read_particles(sim.truth_star), read_particles(sim.particles_star)
    from subtomo.geometry.euler import angular_distance_deg

    err = angular_distance_deg(truth.rotation_matrices(), start.rotation_matrices())
    assert 6.0 < float(err.pow(2).mean().sqrt()) < 10.0
    shift_err = np.linalg.norm(truth.shifts_A() - start.shifts_A(), axis=1) / 4.0
    assert 0.7 < float(np.sqrt((shift_err**2).mean())) < 1.3
    assert set(truth.particles["rlnClassNumber"]) == {1, 2, 3}
    assert "rlnClassNumber" not in start.particles
    assert len(sim.truth_maps) == 3


def test_atomic_model_via_gemmi(tmp_path):
    pytest.importorskip("gemmi", reason="gemmi reads atomic models (pip install gemmi)")
    from subtomo.simulate.structure import from_model

    lines = []
    rng = np.random.default_rng(0)
    for i, (x, y, z) in enumerate(rng.normal(0, 8, (40, 3)) + 50, start=1):
        lines.append(f"ATOM  {i:5d}  CA  ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     "  1.00 20.00           C")
    (tmp_path / "m.pdb").write_text("\n".join(lines) + "\nEND\n")
    structure = from_model(tmp_path / "m.pdb")
    assert structure.positions_A.shape == (40, 3)
    assert torch.allclose(structure.positions_A.mean(0), torch.zeros(3, dtype=torch.float64),
                          atol=1e-6)
    assert torch.all(structure.amplitudes == 6.0)  # carbon
    config = SimulationConfig(n=2, box_px=16, model=str(tmp_path / "m.pdb"))
    sim = simulate_subtomograms(tmp_path / "sim", config, progress=False)
    assert read_mrc(sim.truth_maps[0])[0].max() > 0


def test_continuous_hinge_values_are_recorded(tmp_path):
    config = SimulationConfig(n=6, box_px=24, n_atoms=600, hinge_max_deg=30.0,
                              angle_error_deg=0.0, shift_error_px=0.0, seed=3)
    sim = simulate_subtomograms(tmp_path, config, progress=False)
    hinge = sim.truth.particles["rlnSubtomoHingeDeg"].to_numpy()
    assert np.all((hinge >= 0) & (hinge <= 30)) and np.ptp(hinge) > 5
    back = read_particles(sim.truth_star).particles["rlnSubtomoHingeDeg"].to_numpy()
    np.testing.assert_allclose(back, hinge)  # unknown label carried through the STAR file
