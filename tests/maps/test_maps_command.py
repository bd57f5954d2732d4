"""``mask create``, ``symmetrize`` and ``align-symmetry`` through their argparse front end."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from subtomo.commands import maps
from subtomo.errors import InputError
from subtomo.fourier.grid import soft_sphere
from subtomo.geometry.euler import euler_to_matrix, rotation_z
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.maps.rotate import rotate_volume


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="subtomo")
    maps.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture
def c4_map(tmp_path: Path, blobs) -> Path:
    """A C4 map of blobs turned off-axis (tilt 30°), written at 2.5 Å/px."""
    ops = torch.stack([rotation_z(torch.tensor(a, dtype=torch.float64)) for a in (0, 90, 180, 270)])
    turn = euler_to_matrix(torch.tensor([20.0, 30.0, -40.0], dtype=torch.float64))
    p = torch.tensor([[6.0, 2.0, 3.0], [3.0, -1.0, -5.0]], dtype=torch.float64)
    centres = torch.einsum("gij,nj->ngi", ops, p).reshape(-1, 3) @ turn.T
    path = tmp_path / "map.mrc"
    write_mrc(path, blobs(centres, 1.6, 32, dtype=torch.float32), 2.5)
    return path


def test_mask_create(tmp_path: Path, c4_map: Path) -> None:
    out = tmp_path / "mask.mrc"
    assert _run(["mask", "create", "--i", str(c4_map), "--o", str(out), "--ini_threshold",
                 "0.5", "--extend_inimask", "2", "--width_soft_edge", "3"]) == 0
    mask, pixel_size_A = read_mrc(out)
    data, _ = read_mrc(c4_map)
    assert pixel_size_A == pytest.approx(2.5)
    assert mask.min() >= 0 and mask.max() == 1
    assert np.all(mask[data >= 0.5] == 1)
    with pytest.raises(InputError, match="above the map maximum"):
        _run(["mask", "create", "--i", str(c4_map), "--o", str(out), "--ini_threshold", "5"])
    with pytest.raises(InputError, match="overwrite an input"):
        _run(["mask", "create", "--i", str(c4_map), "--o", str(c4_map), "--ini_threshold", "0.5"])


def test_symmetrize_and_align(tmp_path: Path, c4_map: Path) -> None:
    aligned_path = tmp_path / "aligned.mrc"
    assert _run(["align-symmetry", "--i", str(c4_map), "--o", str(aligned_path),
                 "--sym", "C4"]) == 0
    aligned, pixel_size_A = read_mrc(aligned_path)
    assert pixel_size_A == pytest.approx(2.5)
    # the aligned map is (nearly) C4-symmetric about z: a quarter turn is exact on the grid
    quarter = rotate_volume(torch.from_numpy(aligned), rotation_z(torch.tensor(90.0)))
    inside = soft_sphere(aligned.shape[-1], 28.0, 0.0, dtype=torch.bool)
    a, b = torch.from_numpy(aligned)[inside], quarter[inside]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.99

    sym_path = tmp_path / "sym.mrc"
    assert _run(["symmetrize", "--i", str(aligned_path), "--o", str(sym_path), "--sym", "c4"]) == 0
    sym, _ = read_mrc(sym_path)
    quarter = rotate_volume(torch.from_numpy(sym), rotation_z(torch.tensor(90.0)))
    assert float((quarter - torch.from_numpy(sym))[inside].abs().max()) < 1e-5

    with pytest.raises(InputError, match="unknown symmetry group") as info:
        _run(["symmetrize", "--i", str(aligned_path), "--o", str(sym_path), "--sym", "Q7"])
    assert info.value.field == "--sym"
    with pytest.raises(InputError, match="overwrite an input"):
        _run(["align-symmetry", "--i", str(c4_map), "--o", str(c4_map), "--sym", "C4"])
