"""The pieces of tomo-align against exact results: RELION's 2D deformation models, the GP
motion basis, bicubic interpolation of CC maps, the gauge basis and a CC map's peak."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.io.tilt_series import TiltSeries
from subtomo.simulate.tiltseries import deformation_offsets
from subtomo.tomo import deformation as deform
from subtomo.tomo.alignment import frame_transform, gauge_basis
from subtomo.tomo.correlation import interpolate
from subtomo.tomo.motion_model import motion_basis, trajectories

SIZE = (300, 200)


def test_linear_model_is_relions_affine_form():
    c = torch.tensor([0.01, -0.02, 0.005], dtype=torch.float64)
    xy = torch.tensor([[10.0, 20.0], [150.0, 100.0], [290.0, 5.0]], dtype=torch.float64)
    d = deform.offsets("linear", c, xy, SIZE, (3, 3))
    r = xy - torch.tensor([150.0, 100.0], dtype=torch.float64)
    expected = torch.stack([c[0] * r[:, 0], c[1] * r[:, 0] + c[2] * r[:, 1]], -1)
    assert torch.allclose(d, expected)


def test_spline_interpolates_node_values_and_slopes():
    grid = (4, 3)
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(deform.n_coefficients("spline", grid), generator=gen, dtype=torch.float64)
    nodes = c.reshape(2, grid[1], grid[0], 4)
    spacing = (SIZE[0] / (grid[0] - 1), SIZE[1] / (grid[1] - 1))
    for j in range(grid[1]):
        for i in range(grid[0]):
            p = torch.tensor([i * spacing[0], j * spacing[1]], dtype=torch.float64)
            p = p.clamp(max=torch.tensor(SIZE, dtype=torch.float64) - 1e-6)
            p.requires_grad_(True)
            d = deform.offsets("spline", c, p, SIZE, grid)
            assert torch.allclose(d.detach(), nodes[:, j, i, 0], atol=1e-6)
            for dim in (0, 1):  # slopes are per grid cell
                (g,) = torch.autograd.grad(d[dim], p, retain_graph=True)
                assert g[0] * spacing[0] == pytest.approx(float(nodes[dim, j, i, 1]), abs=1e-5)
                assert g[1] * spacing[1] == pytest.approx(float(nodes[dim, j, i, 2]), abs=1e-5)


def test_fourier_model_holds_the_simulators_cosine_fields_exactly():
    """cos(π m u) cos(π n v) = ½ [cos(f₊·p) + cos(f₋·p)] with f± = (m π/W, ±n π/H): RELION's
    Fourier model on a 5 × 6 grid (x ≤ 2, y in −3 … 2) spans the simulator's fields (m, n ≤ 2)."""
    grid = (5, 6)
    freqs = deform.fourier_frequencies(grid, SIZE)
    gen = torch.Generator().manual_seed(1)
    cos_coeffs = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    cos_coeffs[:, 0, 0] = 0
    z = torch.zeros(2, len(freqs), 2, dtype=torch.float64)
    w, h = SIZE
    for m in range(3):
        for n in range(3):
            for sign in ((1,) if n == 0 or m == 0 else (1, -1)):
                f = torch.tensor([m * math.pi / w, sign * n * math.pi / h], dtype=torch.float64)
                if m == 0 and n == 0:
                    continue
                k = int(((freqs - f).abs().sum(1) < 1e-12).nonzero())
                share = 1.0 if (m == 0 or n == 0) else 0.5
                z[:, k, 0] += share * cos_coeffs[:, m, n]
    xy = torch.rand(50, 2, generator=gen, dtype=torch.float64) * torch.tensor(SIZE)
    ours = deform.offsets("Fourier", z.reshape(-1), xy, SIZE, grid)
    truth = deformation_offsets(cos_coeffs, xy, SIZE)
    assert torch.allclose(ours, truth, atol=1e-10)


@pytest.mark.parametrize("model", deform.MODELS)
def test_deformation_gradients_and_star_round_trip(model):
    grid = (4, 5)
    gen = torch.Generator().manual_seed(2)
    n = deform.n_coefficients(model, grid)
    coeffs = (torch.randn(3, n, generator=gen, dtype=torch.float64) * 0.01).requires_grad_(True)
    xy = (torch.rand(2, 3, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1) * torch.tensor(
        SIZE)
    xy.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, p: deform.offsets(model, c, p, SIZE, grid), (coeffs, xy))
    tilts = pd.DataFrame({"rlnTomoYTilt": [0.0, 3.0, -3.0], "rlnDefocusU": 3e4})
    ts = TiltSeries({"rlnTomoName": "a", "rlnTomoTiltSeriesPixelSize": 1.0, "rlnTomoSizeX": 300,
                     "rlnTomoSizeY": 200, "rlnTomoSizeZ": 50}, tilts, image_size=SIZE)
    back = deform.deformation_of(deform.with_deformation(
        ts, deform.Deformation(model, grid, coeffs.detach(), SIZE)))
    assert back.model == model and back.grid == grid
    assert torch.equal(back.coefficients, coeffs.detach())
    assert deform.deformation_of(deform.with_deformation(ts, None)) is None


def test_motion_basis_reproduces_the_covariance_and_starts_at_rest():
    gen = torch.Generator().manual_seed(3)
    pos = torch.rand(20, 3, generator=gen, dtype=torch.float64) * 200
    for square in (False, True):
        mb = motion_basis(pos, np.arange(5), 0.7, 80.0, square)
        d = torch.cdist(pos, pos)
        kernel = torch.exp(-(d / 80.0) ** 2) if square else torch.exp(-d / 80.0)
        assert torch.allclose(mb.basis @ mb.basis.T, 0.49 * kernel, atol=1e-9)
    order = np.array([2, 1, 3, 0, 4])  # dose order of the five tilts
    mb = motion_basis(pos, order, 0.7, 80.0)
    q = torch.randn(4, mb.n_basis, 3, generator=gen, dtype=torch.float64)
    traj = trajectories(q, mb)
    assert torch.equal(traj[:, 2], torch.zeros(20, 3, dtype=torch.float64))
    velocity = torch.einsum("pb,mbc->pmc", mb.basis, q)
    assert torch.allclose(traj[:, 0] - traj[:, 3], velocity[:, 2])  # tilt 0 follows tilt 3
    assert motion_basis(pos, order, 0.7, 80.0, max_basis=4).n_basis == 4


def test_bicubic_interpolation_is_exact_for_quadratics_and_differentiable():
    s = 15
    y, x = torch.meshgrid(torch.arange(s, dtype=torch.float64),
                          torch.arange(s, dtype=torch.float64), indexing="ij")

    def f(px, py):
        return 0.3 * px * px - 0.2 * px * py + 0.1 * py * py + px - 2 * py + 1

    maps = f(x, y)[None].expand(4, s, s)
    uv = torch.tensor([[5.3, 6.7], [7.0, 7.0], [4.25, 9.9], [10.5, 3.1]], dtype=torch.float64,
                      requires_grad=True)
    values = interpolate(maps, uv)
    assert torch.allclose(values, f(uv[:, 0], uv[:, 1]), atol=1e-9)
    (grad,) = torch.autograd.grad(values.sum(), uv)
    u, v = uv.detach()[:, 0], uv.detach()[:, 1]
    assert torch.allclose(grad[:, 0], 0.6 * u - 0.2 * v + 1, atol=1e-6)
    assert torch.allclose(grad[:, 1], -0.2 * u + 0.2 * v - 2, atol=1e-6)


def test_gauge_basis_spans_rigid_motions_of_the_particles():
    gen = torch.Generator().manual_seed(5)
    pos = torch.rand(12, 3, generator=gen, dtype=torch.float64) * 100
    b = gauge_basis(pos)
    assert b.shape == (36, 6) and torch.allclose(b.T @ b, torch.eye(6, dtype=torch.float64))
    angle = 1e-5
    rot = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle),
                        math.cos(angle), 0], [0, 0, 1]], dtype=torch.float64)
    moved = (pos - 50) @ rot.T + 50 + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    change = (moved - pos).reshape(-1)
    assert (change - b @ (b.T @ change)).norm() < 1e-7 * change.norm()
    assert gauge_basis(pos, scaling=True).shape == (36, 7)


def test_frame_transform_recovers_a_known_similarity():
    from subtomo.geometry.euler import euler_to_matrix

    rng = np.random.default_rng(6)
    p = rng.uniform(0, 100, (20, 3))
    rot = euler_to_matrix(torch.tensor([[30.0, 50.0, -20.0]], dtype=torch.float64))[0].numpy()
    q = 1.01 * p @ rot.T + [3.0, -2.0, 5.0]
    assert np.allclose(frame_transform(p, q, scaling=True)(p), q)
    rigid = frame_transform(p, p @ rot.T + 1.0)
    assert np.allclose(rigid(p), p @ rot.T + 1.0)
