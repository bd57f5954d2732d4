"""``align_maps`` and ``subtomo maps align`` recover known rotations, shifts and hand flips.

The test maps are rendered from the atoms of an asymmetric pseudo-atomic model, moved
exactly (atoms at ``B p + u``), so the moving maps carry no interpolation error and the
ground-truth transform onto the truth is the inverse ``y -> B^T (y - u)``: rotation ``B^T``
and shift ``-B^T u`` (px).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from subtomo.cli import main
from subtomo.fourier.grid import soft_sphere
from subtomo.geometry.euler import angular_distance_deg, euler_to_matrix
from subtomo.geometry.symmetry import symmetric_distance_deg
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.maps.align_maps import align_maps
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import pseudo_atomic

BOX, PIXEL_A, SIGMA_A = 32, 4.0, 6.0
MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))  # z -> -z


@pytest.fixture(scope="module")
def scene() -> dict[str, torch.Tensor]:
    """Truth, a rotated + shifted copy, a mirrored + rotated + shifted copy, and the transform."""
    structure = pseudo_atomic(300, box_px=BOX, pixel_size_A=PIXEL_A, seed=1)
    atoms, amplitudes = structure.positions_A, structure.amplitudes

    def render(matrix: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
        moved = atoms @ matrix.T + shift_px * PIXEL_A
        return render_atoms(moved[None], amplitudes, BOX, PIXEL_A, SIGMA_A)[0]

    g = torch.Generator().manual_seed(7)
    angles = torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    rotation = euler_to_matrix(angles)  # (rot, tilt, psi) off any grid
    shift = torch.tensor([1.3, -2.6, 0.7], dtype=torch.float64)  # px
    return {
        "truth": render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)),
        "moved": render(rotation, shift),
        "mirrored": render(rotation @ MIRROR, shift),
        "rotation": rotation,
        "shift": shift,
    }


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation inside the sphere of radius D / 2 (independent of the module's)."""
    inside = soft_sphere(a.shape[-1], a.shape[-1], 0.0, dtype=torch.bool)
    return float(torch.corrcoef(torch.stack([a[inside], b[inside]]).double())[0, 1])


def test_recovers_rotation_and_shift(scene: dict[str, torch.Tensor]) -> None:
    truth, moved = scene["truth"], scene["moved"]
    rotation, shift = scene["rotation"], scene["shift"]
    assert correlation(moved, truth) < 0.5  # the maps start far apart

    result = align_maps(moved, truth, PIXEL_A)
    assert not result.flipped
    assert result.aligned.shape == moved.shape and result.aligned.dtype == moved.dtype
    assert result.matrix.shape == (3, 3) and result.matrix.dtype == torch.float64
    cc = correlation(result.aligned, truth)
    assert cc > 0.98
    assert result.score == pytest.approx(cc, abs=1e-4)
    # the inverse of the applied transform: rotation B^T, then shift -B^T u
    assert float(angular_distance_deg(result.matrix, rotation.T)) < 2.0
    assert float((result.shift_px - (-rotation.T @ shift)).norm()) < 0.3


def test_hand_flip(scene: dict[str, torch.Tensor]) -> None:
    truth, mirrored = scene["truth"], scene["mirrored"]
    rotation, shift = scene["rotation"], scene["shift"]

    result = align_maps(mirrored, truth, PIXEL_A, allow_flip=True)
    assert result.flipped
    assert correlation(result.aligned, truth) > 0.98
    # mirror(moving) has atoms at (F B F) p + F u, so the transform is (F B^T F, -F B^T u)
    expected = MIRROR @ rotation.T @ MIRROR
    assert float(angular_distance_deg(result.matrix, expected)) < 2.0
    assert float((result.shift_px - (-MIRROR @ rotation.T @ shift)).norm()) < 0.3

    # the unmirrored copy keeps its hand when the flip is allowed
    kept = align_maps(scene["moved"], truth, PIXEL_A, allow_flip=True)
    assert not kept.flipped
    assert correlation(kept.aligned, truth) > 0.98


def test_symmetric_reference() -> None:
    """With ``sym`` the global grid covers the asymmetric unit; any equivalent pose will do."""
    structure = pseudo_atomic(400, box_px=BOX, pixel_size_A=PIXEL_A, seed=3, symmetry="D2")
    rotation = euler_to_matrix(torch.tensor([-71.3, 118.6, 23.9], dtype=torch.float64))
    shift = torch.tensor([-0.8, 1.9, 2.2], dtype=torch.float64)
    maps = render_atoms(torch.stack([structure.positions_A,
                                     structure.positions_A @ rotation.T + shift * PIXEL_A]),
                        structure.amplitudes, BOX, PIXEL_A, SIGMA_A)
    truth, moved = maps[0], maps[1]

    result = align_maps(moved, truth, PIXEL_A, sym="D2")
    assert correlation(result.aligned, truth) > 0.98
    # matrix = R B^T for a symmetry operator R of the truth; the shift is then -matrix u
    assert float(symmetric_distance_deg(result.matrix.T[None], rotation[None], "D2")) < 2.0
    assert float((result.shift_px - (-result.matrix @ shift)).norm()) < 0.3


def test_cli_maps_align(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        scene: dict[str, torch.Tensor]) -> None:
    ref, moving, out = tmp_path / "ref.mrc", tmp_path / "moving.mrc", tmp_path / "aligned.mrc"
    write_mrc(ref, scene["truth"], PIXEL_A)
    write_mrc(moving, scene["moved"], PIXEL_A)

    assert main(["maps", "align", "--i", str(moving), "--ref", str(ref), "--o", str(out)]) == 0
    report = capsys.readouterr().out.strip()
    assert len(report.splitlines()) == 1
    assert "(rot, tilt, psi)" in report and "Å" in report and "flipped no" in report
    aligned, pixel_size_A = read_mrc(out)
    assert pixel_size_A == pytest.approx(PIXEL_A)
    assert aligned.shape == (BOX,) * 3
    assert correlation(torch.from_numpy(aligned), scene["truth"]) > 0.98

    for clash in (ref, moving):
        code = main(["maps", "align", "--i", str(moving), "--ref", str(ref), "--o", str(clash)])
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "overwrite an input" in err
    assert read_mrc(ref)[0].shape == (BOX,) * 3  # inputs untouched
