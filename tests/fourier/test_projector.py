"""Projector and Backprojector against analytic spectra of Gaussian blobs.

A Gaussian blob of amplitude ``a`` and width ``sigma`` (px) at ``r`` (px from the centre,
``(x, y, z)``) has the centred spectrum ``a (2 pi sigma^2)^(3/2) exp(-2 pi^2 sigma^2 |k|^2)
exp(-2 pi i k . r)``; the particle rotated by ``A`` has its blobs at ``A r``.
"""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.fourier.fsc import fsc
from subtomo.fourier.grid import centred_irfft, centred_rfft, rfft_freqs
from subtomo.fourier.projector import Backprojector, Projector
from subtomo.fourier.reconstruction import gridding_kernel
from subtomo.geometry.euler import euler_to_matrix

Blobs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _blobs(box: int, n: int, radius_px: float, sigma: tuple[float, float], seed: int) -> Blobs:
    """Positions inside a sphere of ``radius_px``, widths in ``sigma``, amplitudes 0.5-1.5."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=g, dtype=torch.float64)
    direction /= torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    pos = direction * radius_px * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    sig = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    amp = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return pos, sig, amp


def _render(box: int, blobs: Blobs) -> torch.Tensor:
    pos, sig, amp = blobs
    c = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for (px, py, pz), s, a in zip(pos.tolist(), sig.tolist(), amp.tolist(), strict=True):
        vol += a * torch.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * s * s))
    return vol.float()


def _spectra(box: int, blobs: Blobs, A: torch.Tensor | None = None) -> torch.Tensor:
    """Analytic centred spectra ``(B, D, D, D // 2 + 1)`` of the blobs rotated by ``A``.

    Each blob's spectrum factorises over axes: ``prod_axis exp(-2 pi^2 sigma^2 k_axis^2 -
    2 pi i k_axis r_axis)``, so the sum over blobs is one ``einsum``.
    """
    pos, sig, amp = blobs
    A = torch.eye(3, dtype=torch.float64)[None] if A is None else A.double()
    full = torch.fft.fftfreq(box, dtype=torch.float64)
    half = torch.fft.rfftfreq(box, dtype=torch.float64)
    rotated = torch.einsum("bij,nj->bni", A, pos)  # (B, n, 3) as (x, y, z)
    scale = amp * (2 * math.pi * sig**2) ** 1.5

    def factor(k: torch.Tensor, axis: int) -> torch.Tensor:
        gauss = torch.exp(-2 * math.pi**2 * sig[:, None] ** 2 * k**2)  # (n, K)
        return gauss * torch.exp(-2j * math.pi * rotated[..., axis, None] * k)  # (B, n, K)

    fx, fy, fz = factor(half, 0), factor(full, 1), factor(full, 2)
    out = torch.einsum("bnz,bny,bnx->bzyx", fz * scale[:, None], fy, fx)
    return out.to(torch.complex64)


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rot_psi = 360.0 * torch.rand(n, 2, generator=g)
    tilt = torch.rad2deg(torch.arccos(1 - 2 * torch.rand(n, generator=g)))  # uniform on S2
    return euler_to_matrix(torch.stack([rot_psi[:, 0], tilt, rot_psi[:, 1]], dim=-1))


def _within(box: int, fraction: float) -> torch.Tensor:
    return torch.linalg.vector_norm(rfft_freqs(box), dim=-1) * box <= fraction * box / 2


def _rel_err(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b)[..., mask].abs().norm() / b[..., mask].abs().norm())


@pytest.mark.parametrize("box", [32, 33])
def test_identity_sections(box: int) -> None:
    blobs = _blobs(box, 8, box / 10, (1.5, 2.0), seed=box)
    vol = _render(box, blobs)
    inside = _within(box, 0.9)
    eye = torch.eye(3)[None]
    # Without gridding correction, A = I samples grid points: exact.
    raw = Projector(vol, pad=2, gridding_correction=False).spectra(eye)[0]
    assert _rel_err(raw, centred_rfft(vol), inside) < 1e-5
    # With it, A = I returns exactly the spectrum of vol / g (g: the trilinear kernel's
    # transform), within 1 % of the volume's own spectrum for this compact object.
    corrected = Projector(vol, pad=2).spectra(eye)[0]
    expected = centred_rfft(vol / gridding_kernel(box, 2 * box))
    assert _rel_err(corrected, expected, _within(box, 1.0)) < 1e-5
    assert _rel_err(corrected, centred_rfft(vol), inside) < 1e-2
    # Zero beyond Nyquist and beyond max_radius_px.
    assert torch.all(raw[~_within(box, 1.0)] == 0)
    limited = Projector(vol, pad=2).spectra(eye, max_radius_px=5.0)[0]
    r = torch.linalg.vector_norm(rfft_freqs(box), dim=-1) * box
    assert torch.all(limited[r > 5.0] == 0) and torch.equal(limited[r <= 5.0], corrected[r <= 5])


@pytest.mark.parametrize("box", [32, 33])
def test_rotated_sections_match_analytic_spectra(box: int) -> None:
    blobs = _blobs(box, 8, box / 5, (1.5, 2.0), seed=box + 1)
    projector = Projector(_render(box, blobs), pad=2)
    A = _random_rotations(20, seed=box)
    got = projector.spectra(A)
    expected = _spectra(box, blobs, A)
    curves = fsc(got, expected, spectra=True)
    shells = int(0.9 * box / 2)
    assert curves[:, : shells + 1].min() > 0.999
    # Gridding bias ~ (pi^2 / 3) |r|^2 / P^2 at each blob (blobs reach |r| = D / 5).
    assert _rel_err(got, expected, _within(box, 0.9)) < 2e-2


@pytest.mark.parametrize("box", [16, 17])
@pytest.mark.parametrize("axis_angles", [(90.0, 0.0, 0.0), (0.0, 90.0, 0.0), (90.0, 90.0, -90.0)])
def test_right_angle_rotations_permute_voxels(box: int, axis_angles: tuple) -> None:
    """particle(r) = ref(A^T r): for right-angle A the section is a voxel permutation."""
    g = torch.Generator().manual_seed(3)
    vol = torch.randn(box, box, box, generator=g)
    A = euler_to_matrix(torch.tensor(axis_angles)).round()
    c = torch.arange(box) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], dim=-1).to(A)  # (D, D, D, 3) as (x, y, z)
    src = torch.remainder((r @ A).long() + box // 2, box)  # A^T r, wrapped into the box
    rotated = vol[src[..., 2], src[..., 1], src[..., 0]]
    got = Projector(vol, pad=2, gridding_correction=False).spectra(A[None])[0]
    inside = _within(box, 1.0)
    assert _rel_err(got, centred_rfft(rotated), inside) < 1e-5


@pytest.mark.parametrize("box", [32, 33])
def test_backprojection_reconstructs_the_volume(box: int) -> None:
    # sigma = 1 px keeps the spectrum within ~1/40 of its peak at 0.9 Nyquist; trilinear
    # gridding has an error floor of ~1e-3 of the strongest coefficients, so shells far
    # below that (e.g. sigma = 1.5 px: 1e-4 at 0.9 Nyquist) cannot reach FSC 0.99.
    blobs = _blobs(box, 12, box / 5, (1.0, 1.0), seed=box + 2)
    truth = centred_irfft(_spectra(box, blobs)[0], box)
    A = _random_rotations(300, seed=box + 3)
    spectra = _spectra(box, blobs, A)
    shells = int(0.9 * box / 2)

    plain = Backprojector(box, pad=2)
    plain.insert(spectra, A)
    rec = plain.reconstruct()
    assert fsc(rec, truth)[: shells + 1].min() > 0.99
    assert float((rec - truth).norm() / truth.norm()) < 0.05

    g = torch.Generator().manual_seed(box)
    ctf = 0.1 + torch.rand(spectra.shape, generator=g)
    weighted = Backprojector(box, pad=2)
    weighted.insert(ctf * spectra, A, ctf)  # observed = ctf * signal
    rec_ctf = weighted.reconstruct()
    assert fsc(rec_ctf, truth)[: shells + 1].min() > 0.99
    assert float((rec_ctf - truth).norm() / truth.norm()) < 0.05


def test_merge_equals_single_accumulator() -> None:
    box = 16
    blobs = _blobs(box, 4, 3.0, (1.0, 1.5), seed=5)
    A = _random_rotations(20, seed=6)
    spectra = _spectra(box, blobs, A)
    ctf = torch.rand(spectra.shape)
    whole = Backprojector(box, pad=2, max_points=5000)  # also exercises chunking
    whole.insert(spectra, A, ctf)
    first, second = Backprojector(box, pad=2), Backprojector(box, pad=2)
    first.insert(spectra[:7], A[:7], ctf[:7])
    second.insert(spectra[7:], A[7:], ctf[7:])
    first.merge(second)
    assert torch.allclose(first.data, whole.data, rtol=1e-5, atol=1e-4)
    assert torch.allclose(first.weight, whole.weight, rtol=1e-5, atol=1e-5)
    assert torch.allclose(first.reconstruct(), whole.reconstruct(), atol=1e-5)


def test_regularisation() -> None:
    box = 16
    blobs = _blobs(box, 4, 3.0, (1.0, 1.5), seed=7)
    A = _random_rotations(50, seed=8)
    bp = Backprojector(box, pad=2)
    bp.insert(_spectra(box, blobs, A), A)
    plain = bp.reconstruct()
    # Huge tau^2 (either shell convention) changes nothing; tiny tau^2 suppresses the map.
    assert torch.allclose(bp.reconstruct(tau2=torch.full((box + 1,), 1e12)), plain, atol=1e-4)
    assert torch.allclose(bp.reconstruct(tau2=torch.full((box // 2 + 1,), 1e12)), plain,
                          atol=1e-4)
    small = bp.reconstruct(tau2=torch.full((box // 2 + 1,), 1e-6))
    assert small.norm() < 1e-3 * plain.norm()
    # A Wiener constant equal to the weight halves the map (every coefficient has W = 50).
    half = bp.reconstruct(wiener_constant=50.0)
    assert torch.allclose(half, 0.5 * plain, atol=0.05 * float(plain.abs().max()))
