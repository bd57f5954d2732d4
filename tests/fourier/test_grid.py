"""Grids, shells, Hermitian weights and centred transforms against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.fourier.grid import (
    centred_irfft,
    centred_rfft,
    frequencies_2d,
    hermitian_weights,
    lowpass,
    lowpass_mask,
    radial_average,
    resample_map,
    rfft_freqs,
    shell_index,
    soft_sphere,
)

BOXES = [8, 9, 16, 17]


@pytest.mark.parametrize("box", BOXES)
def test_freqs_and_shells_match_numpy(box: int) -> None:
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    k = rfft_freqs(box, dtype=torch.float64).numpy()
    assert k.shape == (box, box, box // 2 + 1, 3)
    np.testing.assert_allclose(k[..., 0], np.broadcast_to(kx, k.shape[:-1]), atol=1e-12)
    np.testing.assert_allclose(k[..., 1], np.broadcast_to(ky, k.shape[:-1]), atol=1e-12)
    np.testing.assert_allclose(k[..., 2], np.broadcast_to(kz, k.shape[:-1]), atol=1e-12)
    brute = np.rint(np.sqrt(kx**2 + ky**2 + kz**2) * box).astype(np.int64)
    np.testing.assert_array_equal(shell_index(box).numpy(), brute)


@pytest.mark.parametrize("box", BOXES)
def test_hermitian_weights_give_full_spectrum_sums(box: int) -> None:
    g = torch.Generator().manual_seed(box)
    u = torch.randn(box, box, box, generator=g, dtype=torch.float64)
    v = torch.randn(box, box, box, generator=g, dtype=torch.float64)
    fu, fv = centred_rfft(u), centred_rfft(v)
    w = hermitian_weights(box).to(torch.float64)
    # Parseval: sum over the full spectrum of |F|^2 = N * sum |v|^2.
    n = box**3
    assert torch.allclose((w * fu.abs() ** 2).sum(), n * (u**2).sum(), rtol=1e-10)
    assert torch.allclose((w * (fu * fv.conj()).real).sum(), n * (u * v).sum(), rtol=1e-10)
    # And equal to the full numpy FFT's sum, shell by shell.
    full = np.fft.fftn(u.numpy())
    fz, fy, fx = np.meshgrid(*(np.fft.fftfreq(box),) * 3, indexing="ij")
    shells_full = np.rint(np.sqrt(fx**2 + fy**2 + fz**2) * box).astype(int)
    power_full = np.bincount(shells_full.ravel(), np.abs(full.ravel()) ** 2)
    power_half = np.bincount(shell_index(box).numpy().ravel(),
                             (w * fu.abs() ** 2).numpy().ravel())
    np.testing.assert_allclose(power_half, power_full, rtol=1e-10)


@pytest.mark.parametrize("box", [8, 9])
def test_radial_average_matches_full_spectrum_average(box: int) -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, box, box, box, generator=g, dtype=torch.float64)
    power = centred_rfft(v).abs() ** 2
    avg = radial_average(power, box)
    assert avg.shape == (2, box // 2 + 1)
    full = np.abs(np.fft.fftn(v.numpy(), axes=(-3, -2, -1))) ** 2
    fz, fy, fx = np.meshgrid(*(np.fft.fftfreq(box),) * 3, indexing="ij")
    shells = np.rint(np.sqrt(fx**2 + fy**2 + fz**2) * box).astype(int).ravel()
    for b in range(2):
        sums = np.bincount(shells, full[b].ravel())[: box // 2 + 1]
        counts = np.bincount(shells)[: box // 2 + 1]
        np.testing.assert_allclose(avg[b].numpy(), sums / counts, rtol=1e-10)
    const = torch.full((box, box, box // 2 + 1), 3.0)
    assert torch.allclose(radial_average(const, box), torch.full((box // 2 + 1,), 3.0))


@pytest.mark.parametrize("box", [8, 9, 12])
def test_centred_rfft_convention(box: int) -> None:
    # A delta at the centre voxel D // 2 has a constant, real spectrum.
    delta = torch.zeros(box, box, box)
    delta[box // 2, box // 2, box // 2] = 1.0
    spec = centred_rfft(delta)
    assert spec.shape == (box, box, box // 2 + 1)
    assert torch.allclose(spec, torch.ones_like(spec), atol=1e-6)
    v = torch.randn(box, box, box)
    assert torch.allclose(centred_irfft(centred_rfft(v), box), v, atol=1e-5)


def test_lowpass_raised_cosine() -> None:
    box = 32
    mask = lowpass_mask(box, 8.0, edge_px=4.0, dtype=torch.float64)
    r = torch.linalg.vector_norm(rfft_freqs(box, dtype=torch.float64), dim=-1) * box
    assert torch.all(mask[r <= 6.0] == 1.0)
    assert torch.all(mask[r >= 10.0] == 0.0)
    on_edge = (r - 8.0).abs() < 1e-9
    assert on_edge.any() and torch.allclose(mask[on_edge], torch.tensor(0.5, dtype=mask.dtype))
    band = (r > 6.0) & (r < 10.0)
    expected = 0.5 * (1 + torch.cos(torch.pi * (r[band] - 6.0) / 4.0))
    assert torch.allclose(mask[band], expected)
    spec = torch.randn(box, box, box // 2 + 1, dtype=torch.complex64)
    assert torch.allclose(lowpass(spec, box, 8.0, 4.0), spec * mask.float())


def _waves(box: int, waves: list[tuple[tuple[int, int, int], float]]) -> torch.Tensor:
    """``sum cos(2 pi k . r / L + phase)`` sampled on ``box`` voxels over one field of view
    ``L``, ``r`` from the centre voxel ``box // 2``; ``k`` integer cycles per field of view."""
    u = (torch.arange(box, dtype=torch.float64) - box // 2) / box
    z, y, x = torch.meshgrid(u, u, u, indexing="ij")
    out = torch.zeros(box, box, box, dtype=torch.float64)
    for (kx, ky, kz), phase in waves:
        out += torch.cos(2 * torch.pi * (kx * x + ky * y + kz * z) + phase)
    return out


@pytest.mark.parametrize(("size", "box"), [(24, 16), (24, 15), (23, 16), (15, 24), (16, 24),
                                           (16, 33)])
def test_resample_map_samples_a_band_limited_map_on_the_new_grid(size: int, box: int) -> None:
    waves = [((0, 0, 0), 0.0), ((3, -2, 5), 0.4), ((-7, 1, 0), 1.3), ((2, 6, -6), -2.0)]
    got = resample_map(_waves(size, waves), box)
    assert torch.allclose(got, _waves(box, waves), atol=1e-12)
    assert resample_map(_waves(size, waves).float(), box).dtype == torch.float32


@pytest.mark.parametrize("size", [12, 13])
def test_resample_map_upsampling_keeps_every_voxel_of_any_map(size: int) -> None:
    """Padding is the real trigonometric interpolant (even boxes: the Nyquist term split
    evenly between +-D/2), so an integer upsampling keeps the map's own voxel values."""
    vol = torch.randn(size, size, size, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(size))
    for factor in (2, 3):
        up = resample_map(vol, factor * size)
        at = factor * (torch.arange(size) - size // 2) + factor * size // 2
        assert torch.allclose(up[at][:, at][:, :, at], vol, atol=1e-12)
    if size % 2:  # no Nyquist term: cropping undoes padding
        assert torch.allclose(resample_map(resample_map(vol, 20), size), vol, atol=1e-12)


@pytest.mark.parametrize("box", [16, 17])
def test_soft_sphere_is_a_raised_cosine_edge_outside_the_radius(box: int) -> None:
    c = box // 2
    r = np.sqrt(((np.indices((box,) * 3) - c) ** 2).sum(0))
    diameter, width = 0.5 * box, 3.0
    t = np.clip((r - diameter / 2) / width, 0, 1)
    got = soft_sphere(box, diameter, width, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, 0.5 * (1 + np.cos(np.pi * t)), atol=1e-15)
    assert got[c, c, c] == 1.0 and got[0, 0, 0] == 0.0
    hard = soft_sphere(box, 2 * 5.5, 0.0, dtype=torch.bool).numpy()
    assert np.array_equal(hard, r <= 5.5)


def test_frequencies_2d_match_numpy() -> None:
    k = frequencies_2d((15, 20), (2.0, 3.0))
    assert k.shape == (15, 11, 2) and k.dtype == torch.float64
    gy, gx = np.meshgrid(np.fft.fftfreq(15, 3.0), np.fft.rfftfreq(20, 2.0), indexing="ij")
    np.testing.assert_allclose(k[..., 0].numpy(), gx, rtol=1e-15)
    np.testing.assert_allclose(k[..., 1].numpy(), gy, rtol=1e-15)
    assert torch.equal(frequencies_2d(8), frequencies_2d((8, 8), 1.0))
