"""A search under a tiny memory budget (no section cache, one particle per group, the smallest
rotation chunks) finds exactly the poses of the unlimited search, and its plan follows the
budget. (Scores agree to float32 rounding: batched matrix products of other batch sizes may
sum in another order.)"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from test_score import blob_volume, particles

from subtomo.align.search import MIN_ROTATION_CHUNK, Searcher, SearchSettings
from subtomo.fourier.projector import Projector
from subtomo.geometry.euler import euler_to_matrix

POSES = ("matrices", "shifts_px", "top_matrices", "top_shifts_px")


def _same(a, b) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in POSES:
            assert torch.equal(x, y), f.name
        else:
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6), f.name


@pytest.fixture(scope="module")
def data():
    box = 20
    projector = Projector(blob_volume(box, seed=2))
    g = torch.Generator().manual_seed(11)
    n = 5
    A = euler_to_matrix(torch.rand(n, 3, generator=g).double() * 360).float()
    shifts = (torch.rand(n, 3, generator=g) - 0.5) * 3
    ctf = 0.3 + torch.rand(n, box, box, box // 2 + 1, generator=g)
    spectra = particles(projector, A, shifts, ctf, noise=0.3)
    return projector, spectra, ctf, A


@pytest.mark.parametrize("local", [False, True])
def test_tiny_budget_gives_identical_results(data, local):
    projector, spectra, ctf, A = data
    settings = SearchSettings(order=1 if not local else 3, local=local, offset_range_px=2.0,
                              offset_step_px=1.0, coarse_radius_px=6.0, fine_radius_px=9.0,
                              top_k=2, perturb_deg=3.0, seed=4)
    prior = A if local else None
    inv_sigma2 = torch.full((11,), 0.5)
    free = Searcher(projector, settings)
    tight = Searcher(projector, settings, cache_bytes=0, work_bytes=1)
    if not local:
        assert free.grid_sections is not None and tight.grid_sections is None
        assert tight.rotation_chunk(1, 27) == MIN_ROTATION_CHUNK < free.grid.shape[0]
    assert tight.coarse_group(5) == tight.fine_group(5) == 1
    _same(free.search(spectra, ctf, inv_sigma2, prior),
          tight.search(spectra, ctf, inv_sigma2, prior))


def test_plan_follows_the_budget(data):
    projector, *_ = data
    settings = SearchSettings(order=2, offset_range_px=2.0, offset_step_px=1.0,
                              coarse_radius_px=6.0, fine_radius_px=9.0)
    probe = Searcher(projector, settings, cache_bytes=0)
    need = probe.section_cache_bytes
    assert Searcher(projector, settings, cache_bytes=need).grid_sections is not None
    assert Searcher(projector, settings, cache_bytes=need - 1).grid_sections is None
    small = Searcher(projector, settings, cache_bytes=0, work_bytes=64 << 20)
    large = Searcher(projector, settings, cache_bytes=0, work_bytes=1 << 30)
    assert small.fine_group(1000) < large.fine_group(1000) <= 1000
    assert small.rotation_chunk(8, 27) <= large.rotation_chunk(8, 27)
