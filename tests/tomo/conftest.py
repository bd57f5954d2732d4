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


@pytest.fixture(scope="session")
def stacks_project(tmp_path_factory):
    """``(root, sim, truth_opt)``: a noisy project (σ 10) with astigmatism and its tilt axis at
    85°, its 2D stacks in ``root/x`` and reconstruct-particle's map of it in ``root/rp`` (box
    24, true geometry), shared by the export tests; each writes its own folder in ``root``."""
    root = tmp_path_factory.mktemp("stacks_project")
    config = TiltSeriesConfig(n_particles=30, image_size_px=(224, 224), thickness_px=56,
                              box_px=24, n_atoms=800, tilt_step_deg=4.0, tilt_axis_deg=85.0,
                              astigmatism_A=1500.0, noise_sigma=10.0, seed=2)
    sim = simulate_tiltseries(root / "sim", config, progress=False)
    truth_opt = sim.truth_tomograms_star.parent / "optimisation_set.star"
    assert main(["extract", "--i", str(truth_opt), "--b", "24", "--2d_stacks", "--o",
                 str(root / "x")]) == 0
    assert main(["reconstruct-particle", "--i", str(truth_opt), "--b", "24", "--o",
                 str(root / "rp")]) == 0
    return root, sim, truth_opt


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
