"""One small simulated tilt-series project shared by the tilt-series tests."""

from __future__ import annotations

import pytest

from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

SMALL = dict(n_particles=30, image_size_px=(224, 224), thickness_px=56, box_px=24, n_atoms=800,
             tilt_step_deg=4.0, seed=0)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """Noisy project (σ 20) whose tomograms.star has per-tilt errors (1.5 px, 0.5°); the truth
    is in ``truth/``. Returns the simulation record."""
    out = tmp_path_factory.mktemp("tilt_project")
    config = TiltSeriesConfig(**SMALL, noise_sigma=20.0, shift_error_px=1.5,
                              angle_error_deg=0.5)
    return simulate_tiltseries(out, config, progress=False)
