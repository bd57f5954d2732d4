"""2D CTF against RELION's formula written out independently, analytic zeros, astigmatism."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.ctf.ctf2d import ctf_2d, electron_wavelength_A


def relion_ctf(x: float, y: float, def_u: float, def_v: float, azimuth_deg: float, kv: float,
               cs_mm: float, q0: float, phase_deg: float = 0.0, bfac: float = 0.0) -> float:
    """RELION src/ctf.cpp CTF::initialise + src/ctf.h CTF::getCTF, transcribed term by term."""
    local_cs = cs_mm * 1e7
    local_kv = kv * 1e3
    rad_azimuth = math.radians(azimuth_deg)
    defocus_average = -(def_u + def_v) * 0.5
    defocus_deviation = -(def_u - def_v) * 0.5
    lam = 12.2643247 / math.sqrt(local_kv * (1.0 + local_kv * 0.978466e-6))
    k1 = math.pi / 2 * 2 * lam
    k2 = math.pi / 2 * local_cs * lam ** 3
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    k4 = -bfac / 4.0
    k5 = math.radians(phase_deg)
    u2 = x * x + y * y
    if abs(x) < 1e-6 and abs(y) < 1e-6:
        deltaf = 0.0
    else:
        ellipsoid_ang = math.atan2(y, x) - rad_azimuth
        deltaf = defocus_average + defocus_deviation * math.cos(2 * ellipsoid_ang)
    argument = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
    return -math.sin(argument) * math.exp(k4 * u2)


def test_wavelength_300kv() -> None:
    # 0.0196876 Å (often quoted truncated as 0.019687 Å)
    assert electron_wavelength_A(300.0) == pytest.approx(0.0196876, abs=1e-7)
    # independent: λ = h / sqrt(2 m e V (1 + e V / (2 m c²))) with CODATA 2018 constants
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    for kv in (100.0, 200.0, 300.0):
        volts = kv * 1e3
        lam = h / math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c))) * 1e10
        assert electron_wavelength_A(kv) == pytest.approx(lam, rel=2e-5)
    t = electron_wavelength_A(torch.tensor([300.0], dtype=torch.float64))
    assert float(t[0]) == pytest.approx(electron_wavelength_A(300.0), rel=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        (25000.0, 25000.0, 0.0, 300.0, 2.7, 0.07, 0.0, 0.0),
        (31000.0, 27000.0, 37.5, 300.0, 2.7, 0.1, 0.0, 0.0),
        (15000.0, 14000.0, -120.0, 200.0, 2.0, 0.07, 90.0, 50.0),
        (42000.0, 40000.0, 10.0, 300.0, 0.01, 0.0, 0.0, 100.0),
    ],
)
def test_matches_relion_formula(params: tuple[float, ...]) -> None:
    du, dv, ang, kv, cs, q, ps, b = params
    pts = [(0.0, 0.0), (0.01, 0.0), (0.0, 0.02), (0.031, -0.017), (-0.05, 0.08),
           (0.12, 0.07), (-0.2, -0.11), (0.25, 0.0)]
    freqs = torch.tensor(pts, dtype=torch.float64)
    got = ctf_2d(freqs, du, dv, ang, kv, cs, q, ps, b)
    want = torch.tensor([relion_ctf(x, y, du, dv, ang, kv, cs, q, ps, b) for x, y in pts],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_zero_frequency_is_amplitude_contrast() -> None:
    out = ctf_2d(torch.zeros(1, 2, dtype=torch.float64), 20000.0, 20000.0, 0.0, 300.0, 2.7, 0.07)
    assert float(out[0]) == pytest.approx(0.07, abs=1e-12)


@pytest.mark.parametrize("cs_mm", [0.0, 2.7])
def test_zeros_where_chi_is_n_pi(cs_mm: float) -> None:
    """Q = 0: CTF = sin(π λ Δf k² − π/2 Cs λ³ k⁴) vanishes where the phase is nπ."""
    df, kv = 20000.0, 300.0
    lam = electron_wavelength_A(kv)
    cs = cs_mm * 1e7
    zeros = []
    for n in range(1, 8):
        if cs == 0:
            x = n / (lam * df)
        else:  # (π/2) Cs λ³ x² − π λ Δf x + n π = 0, smaller root, x = k²
            x = (lam * df - math.sqrt((lam * df) ** 2 - 2 * cs * lam ** 3 * n)) / (cs * lam ** 3)
        zeros.append(math.sqrt(x))
    k = torch.tensor(zeros, dtype=torch.float64)
    for direction in (0.0, 1.1, 2.5):  # isotropic: any direction
        freqs = torch.stack([k * math.cos(direction), k * math.sin(direction)], dim=-1)
        at = ctf_2d(freqs, df, df, 0.0, kv, cs_mm, 0.0)
        assert at.abs().max() < 1e-9
        before = ctf_2d(freqs * (1 - 1e-3), df, df, 0.0, kv, cs_mm, 0.0)
        after = ctf_2d(freqs * (1 + 1e-3), df, df, 0.0, kv, cs_mm, 0.0)
        assert bool((before * after < 0).all())  # a sign change at every zero
    # first lobe positive for underfocus (RELION's sign)
    first = ctf_2d(torch.tensor([[0.5 * zeros[0], 0.0]], dtype=torch.float64), df, df, 0.0, kv,
                   cs_mm, 0.0)
    assert float(first[0]) > 0.5


def test_astigmatism_angle_direction() -> None:
    """ΔfU lies along the astigmatism angle (from x), ΔfV perpendicular to it."""
    du, dv, ang = 30000.0, 20000.0, 30.0
    k = torch.linspace(0.01, 0.3, 50, dtype=torch.float64)

    def along(deg: float) -> torch.Tensor:
        a = math.radians(deg)
        return torch.stack([k * math.cos(a), k * math.sin(a)], dim=-1)

    args = (300.0, 2.7, 0.07)
    torch.testing.assert_close(ctf_2d(along(ang), du, dv, ang, *args),
                               ctf_2d(along(ang), du, du, 0.0, *args))
    torch.testing.assert_close(ctf_2d(along(ang + 90), du, dv, ang, *args),
                               ctf_2d(along(ang + 90), dv, dv, 0.0, *args))
    torch.testing.assert_close(ctf_2d(along(ang + 180), du, dv, ang, *args),
                               ctf_2d(along(ang + 180), du, du, 0.0, *args))
    assert not torch.allclose(ctf_2d(along(ang), du, dv, ang, *args),
                              ctf_2d(along(ang), dv, dv, 0.0, *args))


def test_broadcast_over_batch() -> None:
    freqs = torch.rand(100, 2, dtype=torch.float64) * 0.4 - 0.2
    defocus = torch.tensor([12000.0, 25000.0, 40000.0], dtype=torch.float64)
    batched = ctf_2d(freqs[None], defocus[:, None], defocus[:, None] - 500, 45.0, 300.0, 2.7, 0.1)
    assert batched.shape == (3, 100)
    for i, d in enumerate(defocus.tolist()):
        torch.testing.assert_close(batched[i], ctf_2d(freqs, d, d - 500, 45.0, 300.0, 2.7, 0.1))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ctf_2d(torch.zeros(3, 3), 1e4, 1e4, 0.0, 300.0, 2.7, 0.07)
    with pytest.raises(ValueError):
        ctf_2d(torch.zeros(3, 2), 1e4, 1e4, 0.0, 300.0, 2.7, 1.5)
