"""Grant & Grigorieff exposure filter."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.ctf.dose import critical_exposure, dose_filter


def test_constants_and_known_values() -> None:
    # Ne(k) = 0.245 k^−1.665 + 2.81 (eLife 2015;4:e06980, RELION src/jaz/optics/damage.cpp)
    for k in (0.05, 0.1, 0.25, 1 / 3.0):
        assert float(critical_exposure(k)) == pytest.approx(0.245 * k ** -1.665 + 2.81, rel=1e-6)
    # at 4 Å after 20 e/Å²: exp(−20 / (2 (0.245 · 4^1.665 + 2.81)))
    want = math.exp(-20.0 / (2 * (0.245 * 4.0 ** 1.665 + 2.81)))
    assert float(dose_filter(torch.tensor(0.25, dtype=torch.float64), 20.0)) == pytest.approx(
        want, rel=1e-12)
    assert want == pytest.approx(0.1501, abs=2e-4)  # the number written out by hand


def test_limits_and_monotonicity() -> None:
    k = torch.linspace(0.0, 0.5, 101, dtype=torch.float64)
    assert float(dose_filter(k[0], 100.0)) == 1.0
    torch.testing.assert_close(dose_filter(k, 0.0), torch.ones_like(k))
    w = dose_filter(k, 30.0)
    assert bool((w[1:] < w[:-1]).all())  # more damage at higher frequency
    assert bool((dose_filter(k[1:], 60.0) < w[1:]).all())  # and with more exposure


def test_batched_over_tilts() -> None:
    k = torch.linspace(0.01, 0.4, 20)
    exposure = torch.arange(0.0, 123.0, 3.0)
    out = dose_filter(k, exposure[:, None])
    assert out.shape == (41, 20)
    for t in (0, 7, 40):
        torch.testing.assert_close(out[t], dose_filter(k, float(exposure[t])))
