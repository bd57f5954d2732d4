"""One small simulated tilt-series project shared by the tilt-series tests, and the check that a
command refuses bad input."""

from __future__ import annotations

import pytest

from subtomo.cli import main
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


@pytest.fixture
def refused(capsys):
    """``refused(argv, what, out)``: ``subtomo ARGV`` exits 2 with one line naming ``what`` and
    ``out`` is not written."""
    def check(argv: list[str], what: str, out) -> None:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0]
        assert not out.exists()
    return check
