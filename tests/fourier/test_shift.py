"""Phase shifts: integer shifts are exact rolls; sub-pixel shifts move smooth content."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.fourier.grid import centred_irfft, centred_rfft
from subtomo.fourier.shift import phase_shift, shift_spectra_2d_


@pytest.mark.parametrize("box", [16, 17])
def test_integer_shift_equals_roll(box: int) -> None:
    g = torch.Generator().manual_seed(box)
    vols = torch.randn(3, box, box, box, generator=g)
    shifts = torch.tensor([[3, -2, 5], [0, 1, -7], [-box - 1, 2 * box, 4]])
    moved = centred_irfft(centred_rfft(vols) * phase_shift(box, shifts), box)
    for vol, out, (sx, sy, sz) in zip(vols, moved, shifts.tolist(), strict=True):
        expected = torch.roll(vol, shifts=(sz, sy, sx), dims=(0, 1, 2))
        assert (out - expected).abs().max() < 1e-5


def _blob(box: int, centre: tuple[float, float, float], sigma: float) -> torch.Tensor:
    c = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))


@pytest.mark.parametrize("box", [24, 25])
def test_subpixel_shift_moves_a_smooth_blob(box: int) -> None:
    shift = (0.3, -1.7, 2.5)
    ref = _blob(box, (1.0, 0.5, -2.0), 2.0)
    target = _blob(box, (1.3, -1.2, 0.5), 2.0)
    phase = phase_shift(box, torch.tensor(shift, dtype=torch.float64))
    assert phase.shape == (box, box, box // 2 + 1) and phase.dtype == torch.complex128
    moved = centred_irfft(centred_rfft(ref) * phase, box)
    assert (moved - target).abs().max() < 1e-6


def test_batch_shape_and_formula() -> None:
    box = 10
    shifts = torch.randn(2, 3, 3)
    phase = phase_shift(box, shifts)
    assert phase.shape == (2, 3, box, box, box // 2 + 1) and phase.dtype == torch.complex64
    # Element (z=1, y=2, x=3): k = (3, 2, 1) / D.
    k = torch.tensor([3.0, 2.0, 1.0]) / box
    expected = torch.exp(-2j * math.pi * (shifts @ k).double()).to(torch.complex64)
    assert torch.allclose(phase[..., 1, 2, 3], expected, atol=1e-5)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 20)])
def test_2d_shift_of_images_is_a_roll_and_moves_a_cosine(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h)
    images = torch.randn(2, h, w, dtype=torch.float64, generator=g)
    shifts = torch.tensor([[3.0, -2.0], [-w - 1.0, 2.0 * h]], dtype=torch.float64)
    spectra = torch.fft.rfft2(images)
    moved = torch.fft.irfft2(shift_spectra_2d_(spectra, shifts, 2.0, width_px=w), s=(h, w))
    for image, out, (sx, sy) in zip(images, moved, shifts.long().tolist(), strict=True):
        assert torch.allclose(out, 2.0 * torch.roll(image, (sy, sx), (0, 1)), atol=1e-12)
    # a sub-pixel shift of cos(2 pi (3 x / w + 2 y / h)) moves its phase by 2 pi k . s
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")
    wave = torch.cos(2 * math.pi * (3 * x / w + 2 * y / h))
    s = torch.tensor([0.3, -1.7], dtype=torch.float64)
    got = torch.fft.irfft2(shift_spectra_2d_(torch.fft.rfft2(wave), s, width_px=w), s=(h, w))
    expected = torch.cos(2 * math.pi * (3 * (x - s[0]) / w + 2 * (y - s[1]) / h))
    assert torch.allclose(got, expected, atol=1e-12)
