"""The simulator renders atoms exactly where RELION's conventions put them."""

from __future__ import annotations

import math

import torch

from subtomo.geometry.euler import euler_to_matrix
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import class_variant, pseudo_atomic, rotated_positions


def centroid_A(volume: torch.Tensor, pixel_size_A: float) -> torch.Tensor:
    """Density-weighted centre (x, y, z) in Å from the box centre (voxel D//2)."""
    box = volume.shape[-1]
    axis = (torch.arange(box, dtype=torch.float64) - box // 2) * pixel_size_A
    v = volume.to(torch.float64)
    total = v.sum()
    return torch.stack([(v.sum((0, 1)) * axis).sum(), (v.sum((0, 2)) * axis).sum(),
                        (v.sum((1, 2)) * axis).sum()]) / total


def test_gaussian_matches_closed_form():
    """Voxel values equal a·exp(−|x−r|²/2σ²) at voxel centres; the sum is its integral."""
    pos = torch.tensor([[[6.0, -4.0, 2.0]]])
    vol = render_atoms(pos, torch.tensor([2.0]), 24, 2.0, 3.0, dtype=torch.float64)[0]
    z, y, x = 12 + 1, 12 - 2, 12 + 3  # voxel at (6, −4, 2) Å
    assert abs(float(vol[z, y, x]) - 2.0) < 1e-12
    dz = (torch.arange(24, dtype=torch.float64) - 12) * 2.0
    expected = 2.0 * math.exp(-((dz[x + 1] - 6.0) ** 2) / (2 * 9.0))
    assert abs(float(vol[z, y, x + 1]) - expected) < 1e-12
    integral = 2.0 * (2 * math.pi * 9.0) ** 1.5 / 2.0**3
    assert abs(float(vol.sum()) - integral) / integral < 1e-6


def test_rotation_and_shift_follow_relion():
    """A particle is the reference rotated by A (atom r → A r); content sits at −origin."""
    structure = pseudo_atomic(400, box_px=32, pixel_size_A=4.0, seed=1)
    angles = torch.tensor([[30.0, 70.0, -120.0]], dtype=torch.float64)
    A = euler_to_matrix(angles)[0]
    shift = torch.tensor([4.0, -8.0, 2.0], dtype=torch.float64)
    ref = render_atoms(structure.positions_A[None], structure.amplitudes, 32, 4.0, 5.0,
                       dtype=torch.float64)[0]
    particle = render_atoms(rotated_positions(structure, angles) - shift, structure.amplitudes,
                            32, 4.0, 5.0, dtype=torch.float64)[0]
    expected = A @ centroid_A(ref, 4.0) - shift
    assert torch.allclose(centroid_A(particle, 4.0), expected, atol=0.05)


def test_class_variants_differ_as_described():
    base = pseudo_atomic(900, box_px=32, pixel_size_A=4.0, seed=2)
    missing = class_variant(base, 2)
    hinged = class_variant(base, 3)
    assert len(missing.positions_A) == int((base.domain != 1).sum())
    moved = base.domain == 2
    assert torch.allclose(hinged.positions_A[~moved], base.positions_A[~moved])
    # the hinged domain turned 25° about z through the hinge point
    before = base.positions_A[moved] - base.hinge_point_A
    after = hinged.positions_A[moved] - base.hinge_point_A
    angle = torch.atan2(after[:, 1], after[:, 0]) - torch.atan2(before[:, 1], before[:, 0])
    angle = torch.rad2deg(torch.remainder(angle + math.pi, 2 * math.pi) - math.pi)
    assert torch.allclose(angle, torch.full_like(angle, 25.0), atol=1e-6)
