"""MRC volumes and 3D CTF volumes in RELION's (full, centred) and Warp's (half) layouts.

The expected on-disk arrays come from an analytic centrosymmetric weight w(k), evaluated at the
integer frequency each voxel stands for, and are read with ``mrcfile`` directly, not with the
reader under test.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from subtomo.errors import InputError
from subtomo.io.mrc import (
    read_ctf_volume,
    read_mrc,
    read_mrc_header,
    write_ctf_volume,
    write_mrc,
)


def weight(kz: np.ndarray, ky: np.ndarray, kx: np.ndarray, box: int) -> np.ndarray:
    """An anisotropic weight with w(-k) = w(k) but not w(-kz, ky, kx) = w(k).

    The cross terms vanish on the Nyquist planes (|k| = box/2) of even boxes, where +box/2 and
    -box/2 are the same frequency, so the function is well defined there.
    """
    gauss = np.exp(-(kz**2 / 30.0 + ky**2 / 45.0 + kx**2 / 70.0))
    cross = np.sin(2 * np.pi * (kx * ky + ky * kz + 2 * kx * kz) / box)
    return (gauss * (1.0 + 0.5 * cross) + 0.1).astype(np.float64)


def half_weights(box: int) -> np.ndarray:
    """w on the rfftn grid (box, box, box // 2 + 1), zero frequency at index 0."""
    kz = np.fft.fftfreq(box, 1 / box)[:, None, None]
    ky = np.fft.fftfreq(box, 1 / box)[None, :, None]
    kx = np.fft.rfftfreq(box, 1 / box)[None, None, :]
    return weight(kz, ky, kx, box)


def raw(path: Path) -> np.ndarray:
    with mrcfile.open(path) as mrc:
        return np.asarray(mrc.data, dtype=np.float64).copy()


def test_weight_is_centrosymmetric_but_not_mirror_symmetric():
    box = 8
    k = np.arange(-3, 4, dtype=float)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    w = weight(kz, ky, kx, box)
    np.testing.assert_allclose(w, weight(-kz, -ky, -kx, box), rtol=1e-12)
    assert not np.allclose(w, weight(-kz, ky, kx, box))
    assert not np.allclose(w, weight(kz, ky, -kx, box))
    assert not np.allclose(w, np.transpose(w, (2, 1, 0)))


# ---- plain volumes ---------------------------------------------------------------------------
def test_write_read_mrc_keeps_data_and_voxel_size(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(4, 5, 6)).astype(np.float32)
    path = tmp_path / "vol.mrc"
    write_mrc(path, data, 1.35)
    back, voxel = read_mrc(path)
    assert back.dtype == np.float32
    assert back.shape == (4, 5, 6)
    np.testing.assert_array_equal(back, data)
    assert voxel == pytest.approx(1.35, rel=1e-6)
    assert read_mrc_header(path) == ((4, 5, 6), pytest.approx(1.35, rel=1e-6))
    with mrcfile.open(path) as mrc:  # x is the fastest axis on disk
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (6, 5, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.mrc"]


def test_write_mrc_accepts_tensors_and_stacks(tmp_path):
    data = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    path = tmp_path / "stack.mrcs"
    write_mrc(path, data, 7.0, stack=True)
    back, voxel = read_mrc(path)
    np.testing.assert_array_equal(back, data.numpy().astype(np.float32))
    assert voxel == 7.0
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
    shape, _ = read_mrc_header(path)
    assert shape == (2, 3, 4)


def test_read_mrc_missing_file(tmp_path):
    with pytest.raises(InputError) as info:
        read_mrc(tmp_path / "absent.mrc")
    assert str(tmp_path / "absent.mrc") in str(info.value)


# ---- CTF volumes -----------------------------------------------------------------------------
@pytest.mark.parametrize("box", [16, 15])
def test_relion_layout_is_full_and_centred(tmp_path, box):
    weights = torch.from_numpy(half_weights(box).astype(np.float32))
    path = tmp_path / "ctf_relion.mrc"
    write_ctf_volume(path, weights, 4.2, layout="relion")
    disk = raw(path)
    assert disk.shape == (box, box, box)
    k = np.arange(box) - box // 2  # voxel i holds frequency i - box // 2 on each axis
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    np.testing.assert_allclose(disk, weight(kz, ky, kx, box), rtol=2e-6, atol=1e-7)
    c = box // 2
    assert disk[c, c, c] == pytest.approx(1.1, rel=1e-6)  # zero frequency at the centre
    with mrcfile.open(path) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(4.2, rel=1e-6)


@pytest.mark.parametrize("box", [16, 15])
def test_warp_layout_is_the_half_array(tmp_path, box):
    expected = half_weights(box)
    weights = torch.from_numpy(expected.astype(np.float32))
    path = tmp_path / "ctf_warp.mrc"
    write_ctf_volume(path, weights, 4.2, layout="warp")
    disk = raw(path)
    assert disk.shape == (box, box, box // 2 + 1)
    np.testing.assert_allclose(disk, expected, rtol=2e-6, atol=1e-7)
    assert disk[0, 0, 0] == pytest.approx(1.1, rel=1e-6)  # zero frequency at index 0


@pytest.mark.parametrize("box", [16, 15])
@pytest.mark.parametrize("layout", ["relion", "warp"])
def test_ctf_volume_round_trip(tmp_path, box, layout):
    expected = half_weights(box).astype(np.float32)
    path = tmp_path / f"ctf_{layout}.mrc"
    write_ctf_volume(path, torch.from_numpy(expected), 4.2, layout=layout)
    back = read_ctf_volume(path, box)
    assert isinstance(back, torch.Tensor)
    assert tuple(back.shape) == (box, box, box // 2 + 1)
    np.testing.assert_allclose(back.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("box", [16, 15])
def test_relion_volume_written_by_hand_reads_as_half_weights(tmp_path, box):
    """A centred full volume built straight from w(k) reads as w on the rfftn grid."""
    k = np.arange(box) - box // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    path = tmp_path / "ctf_hand.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(weight(kz, ky, kx, box).astype(np.float32))
    back = read_ctf_volume(path, box)
    np.testing.assert_allclose(back.numpy(), half_weights(box), rtol=2e-6, atol=1e-7)


def test_ctf_volume_of_wrong_shape(tmp_path):
    box = 16
    path = tmp_path / "ctf_bad.mrc"
    write_mrc(path, np.ones((box, box, box - 1), dtype=np.float32), 4.2)
    with pytest.raises(InputError) as info:
        read_ctf_volume(path, box)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "(16, 16, 15)" in message
    assert "(16, 16, 16)" in message and "(16, 16, 9)" in message


def test_unknown_ctf_layout(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_ctf_volume(tmp_path / "x.mrc", torch.ones(8, 8, 5), 1.0, layout="dynamo")
    assert not any(tmp_path.iterdir())
