"""The simulator's motion generators against their definitions: accumulation in dose order,
amplitude, the gradient field's exact affinity, the short field's correlation length."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.io.tomograms import read_motion
from subtomo.simulate.motion import MOTION_KINDS, accumulate, beam_motion, bump_motion
from subtomo.tomo.motion_model import motion_basis, trajectories

SIZE = (400.0, 300.0, 80.0)


def _positions(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=gen, dtype=torch.float64) * torch.tensor(SIZE)


def _steps(motion: torch.Tensor, pre_exposure: np.ndarray) -> torch.Tensor:
    """Per-step velocities ``(N, T − 1, 3)`` in dose order."""
    order = np.argsort(pre_exposure, kind="stable")
    return motion[:, order].diff(dim=1)


# a dose-symmetric order, in table (tilt-angle) order: 0°, +, +, −, −, …
PRE = np.array([18.0, 15.0, 9.0, 6.0, 0.0, 3.0, 12.0, 21.0, 24.0])


@pytest.mark.parametrize("kind", MOTION_KINDS)
def test_accumulated_in_dose_order_and_scaled(kind):
    x = _positions(30)
    gen = torch.Generator().manual_seed(3)
    motion = beam_motion(kind, x, PRE, 1.5, 80.0, SIZE, gen)
    assert motion.shape == (30, len(PRE), 3)
    assert torch.all(motion[:, int(np.argmin(PRE))] == 0)  # the first exposed tilt
    assert float(motion.norm(dim=-1).amax()) == pytest.approx(1.5, rel=1e-12)
    twice = beam_motion(kind, x, PRE, 3.0, 80.0, SIZE, torch.Generator().manual_seed(3))
    assert torch.allclose(twice, 2 * motion, rtol=0, atol=1e-12)
    assert torch.all(beam_motion(kind, x, PRE, 0.0, 80.0, SIZE, gen) == 0)


def test_accumulate_sums_the_velocities_of_the_earlier_steps():
    gen = torch.Generator().manual_seed(0)
    velocity = torch.randn(4, len(PRE), 3, generator=gen, dtype=torch.float64)
    motion = accumulate(velocity, PRE, 1.0)
    order = np.argsort(PRE)
    expected = torch.zeros_like(velocity)
    for k in range(1, len(PRE)):  # tilt order[k]: the steps of tilts order[1..k]
        expected[:, order[k]] = velocity[:, order[1:k + 1]].sum(1)
    expected = expected / expected.norm(dim=-1).amax()
    assert torch.allclose(motion, expected, atol=1e-12)


def test_gradient_field_is_affine_in_position_per_step():
    x = _positions(40)
    motion = beam_motion("gradient", x, PRE, 1.5, 0.0, SIZE, torch.Generator().manual_seed(1))
    steps = _steps(motion, PRE)  # (N, T − 1, 3)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, 4)
    for m in range(steps.shape[1]):
        fit = torch.linalg.lstsq(design, steps[:, m]).solution
        assert (design @ fit - steps[:, m]).abs().max() < 1e-12
        assert float(fit[:3].norm()) > 1e-4 * float(fit[3].norm())  # not merely rigid


def test_short_field_has_the_stated_correlation_length():
    """Velocity correlation over a distance d: exp(−d² / ℓ²) (far from the tomogram's faces)."""
    scale = 40.0
    centre = torch.tensor(SIZE, dtype=torch.float64) / 2
    d = torch.tensor([0.0, 0.5, 1.0, 3.0]) * scale
    x = centre + torch.stack([d, torch.zeros(4), torch.zeros(4)], 1).to(torch.float64) - (
        torch.tensor([1.5 * scale, 0, 0], dtype=torch.float64))
    pre = np.arange(600.0)
    motion = bump_motion(x, pre, 1.0, scale, SIZE, torch.Generator().manual_seed(5))
    v = _steps(motion, pre).reshape(4, -1)  # every step and axis: samples of one field
    corr = torch.corrcoef(v)[0]
    expected = torch.exp(-(d / scale) ** 2).to(corr)
    assert torch.allclose(corr, expected, atol=0.08)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="motion kind"):
        beam_motion("brownian", _positions(3), PRE, 1.0, 10.0, SIZE, torch.Generator())


def test_command_simulates_each_kind(tmp_path):
    out = tmp_path / "p"
    assert main(["simulate", "tiltseries", "--o", str(out), "--n", "5", "--size", "128", "128",
                 "--box", "16", "--thickness", "32", "--pseudo-atoms", "100", "--tilt-step",
                 "30", "--motion", "1.0", "--motion-kind", "short", "--seed", "4"]) == 0
    config = json.loads((out / "simulation.json").read_text())
    assert config["motion_kind"] == "short" and config["motion_scale_px"] == 32.0
    motion = np.stack(list(read_motion(out / "truth" / "motion.star").values())) / 10.0
    assert math.isclose(np.linalg.norm(motion, axis=-1).max(), 1.0, rel_tol=1e-6)
    assert main(["simulate", "tiltseries", "--o", str(tmp_path / "q"), "--motion-scale", "0",
                 "--motion", "1"]) == 2
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("kind", MOTION_KINDS)
def test_motion_model_reproduces_the_simulated_trajectories(kind):
    """The dose orders agree: the motion model (all its basis vectors, RELION's order from
    ``rlnMicrographPreExposure``) holds each simulated trajectory exactly, the table in tilt-angle
    order and the exposures of a dose-symmetric scheme (0°, +3°, +6°, −3°, −6°, …)."""
    scheme = TiltScheme.dose_symmetric(tilt_range_deg=30.0, tilt_step_deg=3.0,
                                       dose_per_tilt=3.0).sorted_by_angle()
    pre = np.array(scheme.pre_exposure_e_per_A2)
    x = _positions(25, seed=2)
    motion = beam_motion(kind, x, pre, 1.5, 80.0, SIZE, torch.Generator().manual_seed(4))
    mb = motion_basis(x, np.argsort(pre, kind="stable"), 0.1, 300.0)
    assert mb.n_basis == len(x)  # full rank: any velocity field is a combination
    steps = _steps(motion, pre)  # (N, T − 1, 3) in dose order
    q = torch.linalg.solve(mb.basis, steps.reshape(len(x), -1)).reshape(len(x), -1, 3)
    assert torch.allclose(trajectories(q.transpose(0, 1), mb), motion, atol=1e-9)
