"""FSC against exact cases and an analytic signal-plus-noise model; resolution read-out."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.fourier.fsc import fsc, resolution_at, resolution_shell, shell_resolution_A, shell_to_A
from subtomo.fourier.grid import (
    centred_irfft,
    centred_rfft,
    hermitian_weights,
    radial_average,
    shell_index,
)


def _shell_counts(box: int) -> torch.Tensor:
    """Number of full-spectrum coefficients per shell 0 .. D // 2."""
    w = hermitian_weights(box).expand(box, box, box // 2 + 1).reshape(-1)
    counts = torch.bincount(shell_index(box).reshape(-1), w)
    return counts[: box // 2 + 1]


@pytest.mark.parametrize("box", [16, 17])
def test_identical_and_negated_maps(box: int) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(box, box, box, generator=g) + 0.5  # non-zero DC
    assert torch.allclose(fsc(a, a), torch.ones(box // 2 + 1), atol=1e-6)
    assert torch.allclose(fsc(a, -a), -torch.ones(box // 2 + 1), atol=1e-6)
    spec = centred_rfft(a)
    assert torch.allclose(fsc(spec, 2.0 * spec, spectra=True), torch.ones(box // 2 + 1),
                          atol=1e-6)


@pytest.mark.parametrize("box", [32, 33])
def test_independent_noise_is_uncorrelated(box: int) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, box, box, box, generator=g)
    curve = fsc(a, b)
    bound = 4.0 / _shell_counts(box).sqrt()
    assert torch.all(curve.abs()[1:] < bound[1:])


def test_signal_plus_noise_matches_snr_model() -> None:
    """a = s + n1, b = s + n2 with per-shell SNR(s): FSC = SNR / (1 + SNR)."""
    box = 32
    g = torch.Generator().manual_seed(2)
    shells = shell_index(box).double()
    # Signal spectrum amplitude falls with radius: SNR(s) = 4 exp(-(s / 8)^2), noise white.
    amplitude = 2.0 * torch.exp(-0.5 * (shells / 8.0) ** 2)
    white = centred_rfft(torch.randn(box, box, box, generator=g, dtype=torch.float64))
    # Exactly unit power per shell, so the signal's shell power is exactly amplitude^2.
    power = radial_average(white.abs() ** 2, box)
    keep = shell_index(box) <= box // 2
    white = torch.where(keep, white / power[shell_index(box).clamp(max=box // 2)].sqrt(), 0)
    noise_power = box**3  # per coefficient, for unit-variance white noise
    s = centred_irfft(white * amplitude * math.sqrt(noise_power), box)
    n1, n2 = torch.randn(2, box, box, box, generator=g, dtype=torch.float64)
    curve = fsc(s + n1, s + n2).double()
    radius = torch.arange(box // 2 + 1, dtype=torch.float64)
    snr = 4.0 * torch.exp(-((radius / 8.0) ** 2))
    expected = snr / (1.0 + snr)
    tolerance = 4.0 / _shell_counts(box).double().sqrt()
    assert torch.all((curve - expected).abs()[2:] < tolerance[2:])
    # On average over shells the estimate is much tighter than the per-shell bound.
    assert (curve - expected).abs()[2:].mean() < 0.02


def test_batched_fsc_equals_single() -> None:
    box = 12
    a = torch.randn(3, box, box, box)
    b = torch.randn(3, box, box, box) + a
    batched = fsc(a, b)
    assert batched.shape == (3, box // 2 + 1)
    for i in range(3):
        assert torch.allclose(batched[i], fsc(a[i], b[i]), atol=1e-6)


def test_resolution_at_interpolates_the_first_crossing() -> None:
    box, pixel_size_A = 64, 1.5
    curve = 1.0 - torch.arange(box // 2 + 1, dtype=torch.float64) / 20.0
    # First below 0.143: shell 18 (0.10); shell 17 is 0.15 -> s = 17 + 0.007 / 0.05.
    s = 17 + (0.15 - 0.143) / 0.05
    assert math.isclose(resolution_at(curve, box, pixel_size_A), box * pixel_size_A / s,
                        rel_tol=1e-9)
    # Only the first crossing counts, even if the curve rises again.
    bumpy = curve.clone()
    bumpy[25:] = 0.9
    assert math.isclose(resolution_at(bumpy, box, pixel_size_A), box * pixel_size_A / s,
                        rel_tol=1e-9)
    # 0.5 threshold: curve[10] = 0.5 is not below, curve[11] = 0.45 is -> s = 10.
    assert math.isclose(resolution_at(curve, box, pixel_size_A, 0.5), box * pixel_size_A / 10,
                        rel_tol=1e-9)
    # Never below: Nyquist.
    assert math.isclose(resolution_at(torch.ones(33), box, pixel_size_A), 2 * pixel_size_A)
    assert resolution_at(torch.zeros(33), box, pixel_size_A) == math.inf


def test_shell_resolution() -> None:
    res = shell_resolution_A(64, 2.0)
    assert res.shape == (33,) and math.isinf(res[0])
    assert math.isclose(float(res[1]), 128.0) and math.isclose(float(res[32]), 4.0)


def test_resolution_shell_is_relions_last_shell_before_the_drop() -> None:
    curve = 1.0 - torch.arange(33, dtype=torch.float64) / 20.0  # shell 18 first < 0.143
    assert resolution_shell(curve) == 17
    assert resolution_shell(curve.float(), 0.5) == 10  # 0.5 itself is not below
    bumpy = curve.clone()
    bumpy[25:] = 0.9
    assert resolution_shell(bumpy) == 17
    assert resolution_shell(torch.ones(33)) == 32  # never below: the last shell
    zero_first = torch.ones(33)
    zero_first[0] = 0.0  # shell 0 is not searched
    assert resolution_shell(zero_first) == 32
    assert shell_to_A(17, 64, 1.5) == 64 * 1.5 / 17
    assert shell_to_A(0, 64, 1.5) == math.inf and shell_to_A(-1.0, 64, 1.5) == math.inf
