"""The GEMM scores equal the direct likelihood sums of the oracle; the search finds known poses."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.align.score import (
    Frequencies,
    exhaustive_scores,
    noise_power,
    particle_terms,
    scores_per_particle,
    scores_shared,
    translated_columns,
)
from subtomo.align.search import (
    Searcher,
    SearchSettings,
    exhaustive_search,
    translation_grid,
)
from subtomo.fourier.grid import centred_rfft
from subtomo.fourier.projector import Projector
from subtomo.geometry.euler import angular_distance_deg, euler_to_matrix
from subtomo.geometry.healpix import rotation_grid


def blob_volume(box: int, seed: int = 0) -> torch.Tensor:
    """An asymmetric cluster of Gaussian blobs (no symmetry, so poses are unique)."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(12, 3, generator=g) - 0.5) * box * 0.45
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for i, c in enumerate(centres):
        r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        vol += (1 + 0.2 * i) * torch.exp(-r2 / (2 * 1.6**2))
    return vol.float()


def particles(projector: Projector, A: torch.Tensor, shifts_px: torch.Tensor,
              ctf: torch.Tensor | None, noise: float = 0.0, seed: int = 1) -> torch.Tensor:
    """Spectra C V(A^T k) e^{+2 pi i k.s}: content at -s, found back by the translation s."""
    box = projector.box
    spectra = projector.spectra(A)
    freqs = Frequencies.within(box, box / 2)
    phase = torch.ones(A.shape[0], spectra[0].numel(), dtype=spectra.dtype)
    phase[:, freqs.flat] = freqs.phases(-shifts_px)
    spectra = spectra * phase.view_as(spectra)
    if ctf is not None:
        spectra = spectra * ctf
    if noise:
        g = torch.Generator().manual_seed(seed)
        spectra = spectra + centred_rfft(noise * torch.randn(A.shape[0], box, box, box,
                                                             generator=g))
    return spectra


@pytest.fixture(scope="module")
def setup():
    box = 16
    projector = Projector(blob_volume(box))
    g = torch.Generator().manual_seed(3)
    ctf = 0.2 + torch.rand(3, box, box, box // 2 + 1, generator=g)
    A = euler_to_matrix(torch.rand(3, 3, generator=g).double() * 360).float()
    shifts = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    return box, projector, ctf, A, shifts


def test_gemm_scores_equal_direct_likelihood(setup):
    box, projector, ctf, A, shifts = setup
    spectra = particles(projector, A, shifts, ctf, noise=0.5)
    freqs = Frequencies.within(box, 6.0)
    inv_sigma2 = torch.linspace(0.5, 2.0, box // 2 + 1)
    rotations = torch.cat([A, euler_to_matrix(torch.tensor([[10.0, 20.0, 30.0]])).float()])
    hypotheses = translation_grid(1.5, 1.0)  # 19 translations
    sections = projector.sample(rotations, freqs.k_px)
    terms = particle_terms(spectra, ctf, freqs, inv_sigma2)
    columns = translated_columns(terms, freqs.phases(hypotheses))
    shared = scores_shared(sections, terms, columns)
    oracle = exhaustive_scores(sections, spectra, ctf, freqs, hypotheses, inv_sigma2)
    assert shared.shape == oracle.shape == (3, 4, 19)
    scale = oracle.abs().max()
    assert torch.allclose(shared.double(), oracle, atol=2e-5 * float(scale))
    per_particle = scores_per_particle(sections.expand(3, -1, -1), terms, columns)
    assert torch.allclose(per_particle, shared, atol=1e-5 * float(scale))
    # each particle's own pose and its origin win
    best = shared.reshape(3, -1).argmax(1)
    assert (best // 19).tolist() == [0, 1, 2]
    for i in range(3):
        assert torch.allclose(hypotheses[best[i] % 19], shifts[i])


def test_cross_correlation_score(setup):
    box, projector, ctf, A, shifts = setup
    spectra = particles(projector, A, shifts, ctf)
    freqs = Frequencies.within(box, 6.0)
    sections = projector.sample(A, freqs.k_px)
    terms = particle_terms(spectra, ctf, freqs, None, cc=True)
    columns = translated_columns(terms, freqs.phases(shifts[:1] * 0))
    cc = scores_shared(sections, terms, columns)[:, :, 0]
    w = freqs.multiplicity
    for i in range(3):
        for r in range(3):
            c = ctf[i].reshape(-1)[freqs.flat]
            x = spectra[i].reshape(-1)[freqs.flat]
            cross = (w * c * (sections[r].conj() * x).real).sum()
            power = (w * c**2 * sections[r].abs() ** 2).sum()
            assert float(cc[i, r]) == pytest.approx(float(cross / power.sqrt()), rel=1e-4)


def test_global_search_recovers_grid_poses_like_the_oracle(setup):
    box, projector, ctf, _, _ = setup
    grid, _ = rotation_grid(1)
    g = torch.Generator().manual_seed(5)
    pick = torch.randperm(grid.shape[0], generator=g)[:6]
    shifts = torch.tensor([[2.0, 0, 0], [0, -2.0, 0], [0, 0, 0], [2.0, 2.0, 0], [0, 0, -2.0],
                           [-2.0, 0, 2.0]])
    ctf6 = torch.cat([ctf, ctf])
    spectra = particles(projector, grid[pick], shifts, ctf6, noise=0.05)
    settings = SearchSettings(order=1, offset_range_px=3.0, offset_step_px=2.0,
                              coarse_radius_px=6.0, fine_radius_px=7.0, top_k=1)
    searcher = Searcher(projector, settings)
    result = searcher.search(spectra, ctf6, None)
    rot, shift = exhaustive_search(projector, grid, searcher.coarse_shifts, spectra, ctf6,
                                   searcher.coarse)
    assert rot[:, 0].tolist() == pick.tolist()  # the oracle finds the true grid poses
    error = angular_distance_deg(result.matrices, grid[pick])
    assert float(error.max()) < 1e-3  # fine pass keeps the exact pose (identity is in its grid)
    assert torch.allclose(result.shifts_px, shifts, atol=1e-5)
    assert torch.allclose(result.top_weights.sum(1), torch.ones(6))


def test_local_search_refines_off_grid_pose(setup):
    box, projector, ctf, A, shifts = setup
    spectra = particles(projector, A, torch.zeros(3, 3), ctf)
    off = euler_to_matrix(torch.tensor([[0.0, 6.0, 0.0]])).float()
    prior = A @ off  # 6° away from the truth
    settings = SearchSettings(order=4, local=True, offset_range_px=1.0, offset_step_px=1.0,
                              coarse_radius_px=6.0, fine_radius_px=8.0)
    result = Searcher(projector, settings).search(spectra, ctf, None, prior)
    error = angular_distance_deg(result.matrices, A)
    assert float(error.max()) < settings.step_deg / 2 * math.sqrt(3) / 2 + 0.2
    assert float(result.shifts_px.abs().max()) <= 0.5


def test_translation_grid_and_noise_power():
    grid = translation_grid(6.0, 2.0)
    assert grid.shape[0] == 123 and torch.equal(grid[0], torch.zeros(3))
    assert translation_grid(1.0, 1.0).shape[0] == 7
    box = 12
    projector = Projector(blob_volume(box, seed=2))
    freqs = Frequencies.within(box, box / 2)
    A = torch.eye(3)[None].expand(2, 3, 3)
    spectra = particles(projector, A, torch.zeros(2, 3), None)
    sections = projector.sample(A, freqs.k_px)
    sums, counts = noise_power(spectra, None, freqs, torch.zeros(2, 3), sections, box // 2 + 1)
    assert float(sums.max()) < 1e-8 * float((spectra.abs() ** 2).sum())
    # every coefficient of the full spectrum within Nyquist is counted once per particle
    full = torch.fft.fftfreq(box, 1 / box)
    kz, ky, kx = torch.meshgrid(full, full, full, indexing="ij")
    inside = (kx**2 + ky**2 + kz**2 <= (box / 2) ** 2 + 1e-9).sum()
    assert float(counts.sum()) == pytest.approx(2 * float(inside))


def test_skip_align_scores_the_prior_pose_only(setup):
    box, projector, ctf, A, shifts = setup
    spectra = particles(projector, A, torch.zeros(3, 3), ctf, noise=0.5)
    prior = A @ euler_to_matrix(torch.tensor([[0.0, 4.0, 0.0]])).float()
    settings = SearchSettings(skip_align=True, fine_radius_px=6.0, coarse_radius_px=6.0)
    searcher = Searcher(projector, settings)
    result = searcher.search(spectra, ctf, None, prior)
    assert torch.equal(result.matrices, prior)
    assert torch.equal(result.shifts_px, torch.zeros(3, 3))
    assert torch.equal(result.top_weights, torch.ones(3, 1))
    oracle = exhaustive_scores(projector.sample(prior, searcher.fine.k_px), spectra, ctf,
                               searcher.fine, torch.zeros(1, 3))
    expected = oracle[torch.arange(3), torch.arange(3), 0].float()
    assert torch.allclose(result.score, expected, rtol=1e-4)
    assert torch.allclose(result.log_evidence, result.score)


def test_local_prior_on_the_angular_change(setup):
    """A particle that fits its prior's 7.5° neighbour best moves there without a prior or
    with a wide one, and stays at the prior with σ_ang = 0.3°; the prior adds −d²/2σ² exactly.
    (1/σ² = 1e-3 puts the likelihood gain of the true pose at about 45.)"""
    box, projector, ctf, A, shifts = setup
    spectra = particles(projector, A, torch.zeros(3, 3), ctf)
    inv_sigma2 = torch.full((box // 2 + 1,), 1e-3)
    off = euler_to_matrix(torch.tensor([[0.0, 7.5, 0.0]])).float()
    prior = A @ off
    base = dict(order=3, local=True, local_radius_deg=8.0, offset_range_px=0.0,
                offset_step_px=1.0, coarse_radius_px=6.0, fine_radius_px=8.0)
    for sigma in (None, 50.0):
        moved = Searcher(projector, SearchSettings(**base, sigma_ang_deg=sigma)).search(
            spectra, ctf, inv_sigma2, prior)
        assert float(angular_distance_deg(moved.matrices, A).max()) < 2.0
    held = Searcher(projector, SearchSettings(**base, sigma_ang_deg=0.3)).search(
        spectra, ctf, inv_sigma2, prior)
    assert float(angular_distance_deg(held.matrices, prior).max()) < 1e-3
    searcher = Searcher(projector, SearchSettings(**base, sigma_ang_deg=2.0))
    change = searcher.local_rotations
    angles = angular_distance_deg(change, torch.eye(3).expand_as(change))
    assert torch.allclose(searcher._log_prior(change), -0.5 * (angles / 2.0) ** 2, atol=1e-3)
