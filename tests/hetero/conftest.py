"""Small simulated data sets shared by the hetero tests (made once per session)."""

from __future__ import annotations

import pytest
import torch

from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """One torch thread for these small (16³–32³) problems: as fast as two on an idle machine,
    and on a loaded 2-core CI machine two threads spin at their barriers and double the CPU
    time (the subprocess tests set OMP_NUM_THREADS=1 for the same reason)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _simulate(factory, name: str, **kwargs):
    config = SimulationConfig(**{"box_px": 24, "pixel_size_A": 8.0, "n_atoms": 1500,
                                 "angle_error_deg": 2.0, "shift_error_px": 0.3, **kwargs})
    return simulate_subtomograms(factory.mktemp(name), config, progress=False)


@pytest.fixture(scope="session")
def classes3(tmp_path_factory):
    """Three compositions (full, one subunit missing, a domain rotated 25°), 24³ at 8 Å/px,
    CTF, noise; poses nearly right (the bar with pose errors is in bench/bench_hetero.py)."""
    return _simulate(tmp_path_factory, "classes3", n=180, classes=3, noise_sigma=1.0,
                     n_atoms=1000, angle_error_deg=0.5, shift_error_px=0.1, seed=11)


@pytest.fixture(scope="session")
def hinge(tmp_path_factory):
    """A domain hinged over 0–30°, starting poses off by 4° rms, little noise."""
    return _simulate(tmp_path_factory, "hinge", n=120, hinge_max_deg=30.0, noise_sigma=0.5,
                     n_atoms=1000, angle_error_deg=4.0, shift_error_px=0.5, seed=12)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """40 particles of 16³ for the plumbing tests (resume, processes, bad input)."""
    return _simulate(tmp_path_factory, "tiny", n=40, box_px=16, pixel_size_A=10.0,
                     n_atoms=400, classes=2, noise_sigma=0.5, seed=2)


@pytest.fixture(scope="session")
def clean(tmp_path_factory):
    """Noise-free particles (exact forward-model checks)."""
    return _simulate(tmp_path_factory, "clean", n=6, classes=3, noise_sigma=0.0,
                     angle_error_deg=0.0, shift_error_px=0.0, seed=3)
