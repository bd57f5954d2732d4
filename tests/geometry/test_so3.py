"""Tests for subtomo.geometry.so3 against scipy's rotations and exact properties of SO(3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from subtomo.geometry.euler import angular_distance_deg, euler_to_matrix
from subtomo.geometry.so3 import (
    axis_angle_to_matrix,
    fibonacci_rotation_grid,
    random_rotations,
    rotation_vector_to_matrix,
)

F64 = torch.float64


def _rotation_vectors(n: int, seed: int) -> torch.Tensor:
    """Random axes with angles from 1e-10 to 3 rad (both sides of the small-angle branch)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.randn(n, 3, generator=g, dtype=F64)
    axes = axes / axes.norm(dim=1, keepdim=True)
    return axes * torch.logspace(-10, math.log10(3.0), n, dtype=F64)[:, None]


def test_rotation_vectors_match_scipy():
    w = _rotation_vectors(400, seed=0)
    expected = torch.from_numpy(Rotation.from_rotvec(w.numpy()).as_matrix())
    assert torch.allclose(rotation_vector_to_matrix(w), expected, rtol=0, atol=2e-15)
    assert torch.equal(rotation_vector_to_matrix(torch.zeros(2, 3, dtype=F64)),
                       torch.eye(3, dtype=F64).expand(2, 3, 3))


def test_rotation_vectors_in_float32_match_float64():
    w = _rotation_vectors(400, seed=1)
    got = rotation_vector_to_matrix(w.float()).double()
    assert torch.allclose(got, rotation_vector_to_matrix(w), rtol=0, atol=4 * 2.0**-23)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_gradient_at_zero_is_the_cross_product_matrix(dtype):
    """d exp([w]x) / dw_i at w = 0 is [e_i]x, exactly."""
    jac = torch.autograd.functional.jacobian(rotation_vector_to_matrix, torch.zeros(3, dtype=dtype))
    e = torch.eye(3, dtype=dtype)
    cross = torch.stack([torch.linalg.cross(e[i].expand(3, 3), e, dim=-1).T for i in range(3)])
    assert torch.equal(jac.permute(2, 0, 1), cross)


def test_the_gradient_near_zero_is_finite_and_continuous():
    for scale in (1e-12, 1e-7, 1e-4, 1e-2):
        w = torch.tensor([0.3, -0.5, 0.8], dtype=F64) * scale
        jac = torch.autograd.functional.jacobian(rotation_vector_to_matrix, w)
        at_zero = torch.autograd.functional.jacobian(rotation_vector_to_matrix, torch.zeros(3,
                                                                                       dtype=F64))
        assert torch.allclose(jac, at_zero, rtol=0, atol=2 * scale)


def test_axis_angle_is_the_rotation_vector_of_the_unit_axis():
    g = torch.Generator().manual_seed(2)
    axes = torch.randn(50, 3, generator=g, dtype=F64) * 3
    angles = (torch.rand(50, generator=g, dtype=F64) - 0.5) * 4 * math.pi
    got = axis_angle_to_matrix(axes, angles)
    unit = axes / axes.norm(dim=1, keepdim=True)
    expected = torch.from_numpy(Rotation.from_rotvec((unit * angles[:, None]).numpy()).as_matrix())
    assert torch.allclose(got, expected, rtol=0, atol=1e-14)
    # one axis, many angles (broadcast)
    fan = axis_angle_to_matrix((0.0, 0.0, 2.0), torch.tensor([0.0, math.pi / 2], dtype=F64))
    assert torch.allclose(fan[1], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=F64),
                          atol=1e-15)
    assert torch.equal(fan[0], torch.eye(3, dtype=F64))


def test_random_rotations_are_uniform_and_follow_the_generator():
    n = 20000
    angles = random_rotations(n, torch.Generator().manual_seed(3))
    assert angles.dtype == F64 and angles.shape == (n, 3)
    assert torch.equal(angles, random_rotations(n, torch.Generator().manual_seed(3)))
    # Haar measure: E[R] = 0, each entry has variance 1/3 (5 sigma bound)
    mean = euler_to_matrix(angles).mean(0)
    assert float(mean.abs().max()) < 5 * math.sqrt(1 / 3 / n)
    # cos(tilt) uniform on [-1, 1]: its mean 0 and variance 1/3
    c = torch.cos(torch.deg2rad(angles[:, 1]))
    assert abs(float(c.mean())) < 5 * math.sqrt(1 / 3 / n)
    assert abs(float(c.var()) - 1 / 3) < 0.01


@pytest.mark.parametrize("step_deg", [20.0, 30.0])
def test_fibonacci_grid_covers_so3_within_its_step(step_deg):
    grid = fibonacci_rotation_grid(step_deg)
    eye = torch.eye(3, dtype=F64).expand_as(grid)
    assert torch.allclose(grid @ grid.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(grid), torch.ones(len(grid), dtype=F64))
    probes = euler_to_matrix(random_rotations(300, torch.Generator().manual_seed(4)))
    nearest = angular_distance_deg(probes[:, None], grid[None]).amin(1)
    assert float(nearest.max()) < step_deg


def test_fibonacci_grid_without_in_plane_angles_has_one_matrix_per_direction():
    grid = fibonacci_rotation_grid(15.0, in_plane=False)
    directions = grid.transpose(-1, -2)[:, :, 2]  # R.T e_z
    n = len(grid)
    i = np.arange(n) + 0.5
    assert np.allclose(directions[:, 2].numpy(), 1 - 2 * i / n, atol=1e-12)
