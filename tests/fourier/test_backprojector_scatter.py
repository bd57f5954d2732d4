"""The fast Backprojector scatter (straight into the half grid, CTF-zero skipping) against a
plain per-corner reference, and the separable centring/translation of particle batches."""

from __future__ import annotations

import pytest
import torch

from subtomo.fourier.grid import centred_rfft
from subtomo.fourier.projector import Backprojector, selected_frequencies
from subtomo.fourier.shift import phase_shift
from subtomo.geometry.euler import euler_to_matrix
from subtomo.refine.batch import translated_rfft


def _rotations(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(n, 3, generator=g) * torch.tensor([360.0, 180.0, 360.0])
    return euler_to_matrix(angles)


def _reference(box: int, pad: int, spectra, A, ctf, max_radius_px=None):
    """float64 trilinear insertion as documented: ``-p`` conjugated for ``p_x < 0``, y/z
    wrapped mod P, x corners past P // 2 dropped; then Hermitian-completed planes."""
    big = pad * box
    half = big // 2 + 1
    flat, kvec = selected_frequencies(box, max_radius_px, torch.device("cpu"))
    mate = (kvec[:, 0] == 0) | ((box % 2 == 0) & (kvec[:, 0] == box // 2))
    hf = torch.where(mate, 0.5, 1.0).double()
    n_rot = spectra.shape[0]
    x = spectra.reshape(n_rot, -1)[:, flat].to(torch.complex128)
    c0 = (torch.ones(x.shape, dtype=torch.float64) if ctf is None
          else ctf.reshape(n_rot, -1)[:, flat].double())
    c = c0 * hf
    vals = (x * c).reshape(-1)
    c2 = (c0 * c).reshape(-1)
    p = torch.matmul(kvec * pad, A.double()).reshape(-1, 3)
    neg = p[:, 0] < 0
    p = torch.where(neg[:, None], -p, p)
    vals = torch.where(neg, vals.conj(), vals)
    base = torch.floor(p).long()
    frac = p - base
    data = torch.zeros(big * big * half, dtype=torch.complex128)
    weight = torch.zeros(big * big * half, dtype=torch.float64)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = ((frac[:, 2] if dz else 1 - frac[:, 2]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                     * (frac[:, 0] if dx else 1 - frac[:, 0]))
                xi = base[:, 0] + dx
                w = torch.where(xi < half, w, 0.0)
                xi = xi.clamp(max=half - 1)
                idx = (((base[:, 2] + dz) % big) * big + (base[:, 1] + dy) % big) * half + xi
                data.index_add_(0, idx, vals * w)
                weight.index_add_(0, idx, c2 * w)
    data, weight = data.view(big, big, half), weight.view(big, big, half)
    out_d, out_w = data.clone(), weight.clone()
    for col in [0] + ([big // 2] if big % 2 == 0 else []):
        d = torch.roll(torch.flip(data[:, :, col], (0, 1)), shifts=(1, 1), dims=(0, 1))
        w = torch.roll(torch.flip(weight[:, :, col], (0, 1)), shifts=(1, 1), dims=(0, 1))
        out_d[:, :, col] = data[:, :, col] + d.conj()
        out_w[:, :, col] = weight[:, :, col] + w
    return out_d, out_w


@pytest.mark.parametrize(("box", "pad", "radius", "with_ctf"), [
    (16, 2, None, True), (15, 2, None, True), (12, 3, 4.5, True), (16, 1, None, False),
    (11, 1, None, False),
])
def test_insert_matches_reference(box: int, pad: int, radius, with_ctf: bool) -> None:
    n = 9
    g = torch.Generator().manual_seed(box * pad)
    shape = (n, box, box, box // 2 + 1)
    spectra = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    ctf = None
    if with_ctf:
        ctf = torch.rand(shape, generator=g)
        ctf[ctf < 0.3] = 0.0  # exact zeros are skipped (missing wedge)
    A = _rotations(n, seed=box)
    bp = Backprojector(box, pad=pad, max_points=700)  # several rotation chunks
    bp.insert(spectra[:4], A[:4], None if ctf is None else ctf[:4], radius)
    _ = bp.data  # reading the sums in the middle changes nothing
    bp.insert(spectra[4:], A[4:], None if ctf is None else ctf[4:], radius)
    got_d, got_w = bp.symmetrised()
    ref_d, ref_w = _reference(box, pad, spectra, A, ctf, radius)
    scale = float(ref_d.abs().max())
    assert float((got_d.to(torch.complex128) - ref_d).abs().max()) < 1e-5 * scale
    assert float((got_w.double() - ref_w).abs().max()) < 1e-5 * float(ref_w.max())


def test_float64_and_scaled_matrices() -> None:
    box = 10
    g = torch.Generator().manual_seed(3)
    shape = (5, box, box, box // 2 + 1)
    spectra = torch.randn(shape, generator=g, dtype=torch.float64).to(torch.complex128)
    A = _rotations(5, seed=4).double()
    bp = Backprojector(box, pad=2, dtype=torch.float64)
    bp.insert(spectra, A)
    ref_d, ref_w = _reference(box, 2, spectra, A, None)
    got_d, got_w = bp.symmetrised()
    assert bp.data.dtype == torch.complex128
    assert torch.allclose(got_d, ref_d, atol=1e-10)
    assert torch.allclose(got_w, ref_w, atol=1e-10)
    # a regularised reconstruction leaves the float64 sums as they were (repeatable)
    before = bp.weight.clone()
    tau2 = torch.full((box // 2 + 1,), 5.0, dtype=torch.float64)
    first = bp.reconstruct(tau2=tau2)
    assert torch.equal(bp.weight, before)
    assert torch.equal(bp.reconstruct(tau2=tau2), first)
    # slightly non-orthogonal matrices reach past the Nyquist sphere: clamped, not an error
    wide = Backprojector(box, pad=2)
    wide.insert(spectra.to(torch.complex64), (A * 1.05).float())
    assert torch.isfinite(wide.reconstruct()).all()


@pytest.mark.parametrize("box", [16, 15])
def test_translated_rfft_matches_phase_shift(box: int) -> None:
    g = torch.Generator().manual_seed(box)
    volumes = torch.randn(3, box, box, box, generator=g)
    shifts = torch.randn(3, 3, generator=g) * 6.5 + torch.tensor([100.0, -40.0, 3.0])
    ref = centred_rfft(volumes) * phase_shift(box, shifts)
    got = translated_rfft(volumes.clone(), shifts)
    assert float((got - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    plain = translated_rfft(volumes.clone(), None)
    centred = centred_rfft(volumes)
    assert float((plain - centred).abs().max()) < 1e-5 * float(centred.abs().max())
