"""Memory as a budget: the E step under the smallest plan (no section cache, one particle per
batch and per search group) gives the poses of the unlimited one and the same maps; plans
follow the budget; the back-projector holds nothing but its two sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo import memory
from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.projector import Backprojector
from subtomo.geometry.euler import euler_to_matrix
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.parallel.distributed import Context
from subtomo.refine import outputs
from subtomo.refine.expectation import (
    EStepSettings,
    Model,
    Particles,
    Plan,
    Poses,
    expectation,
    plan_memory,
)
from subtomo.refine.job import initial_sigma2
from subtomo.refine.reconstruct import half_sets
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    sim = simulate_subtomograms(folder, SimulationConfig(
        n=10, box_px=16, pixel_size_A=8.0, n_atoms=300, noise_sigma=1.0, classes=2, seed=2),
        progress=False)
    ps = read_particles(sim.particles_star)
    maps = [torch.from_numpy(read_mrc(p)[0]) for p in sim.truth_maps]
    return ps, maps


@pytest.mark.parametrize("classes", [1, 2])
def test_smallest_plan_gives_the_same_e_step(simulated, classes):
    ps, maps = simulated
    box, pixel_size_A = 16, 8.0
    matrices, origins = outputs.volume_poses(ps, pixel_size_A)
    sigma2 = initial_sigma2(ps, np.arange(len(ps)), box, True,
                            torch.as_tensor(origins, dtype=torch.float32), None, "cpu",
                            Context(), 4)
    settings = SearchSettings(order=1, offset_range_px=2.0, offset_step_px=1.0,
                              coarse_radius_px=5.0, fine_radius_px=7.0, perturb_deg=5.0)
    model = Model((maps[:classes], maps[:classes]), np.ones(classes) / classes, sigma2)
    data = Particles(ps, half_sets(ps), box, None, "cpu")
    step = EStepSettings(settings, ctf=True, batch_size=4)
    runs = {}
    for name, plan in (("unlimited", Plan(4, None, None)), ("smallest", Plan(1, 0, 1))):
        runs[name] = expectation(data, np.arange(len(ps)), model, Poses(matrices, origins),
                                 step, Context(), progress=False, plan=plan)
    a, b = runs["unlimited"], runs["smallest"]
    np.testing.assert_array_equal(a.matrices, b.matrices)
    np.testing.assert_array_equal(a.origins_px, b.origins_px)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-5)
    for pair_a, pair_b in zip(a.backprojectors, b.backprojectors, strict=True):
        for bp_a, bp_b in zip(pair_a, pair_b, strict=True):
            scale = float(bp_a.weight.abs().max())
            assert torch.allclose(bp_a.weight, bp_b.weight, atol=1e-5 * scale)
            assert torch.allclose(bp_a.data, bp_b.data,
                                  atol=1e-5 * float(bp_a.data.abs().max()))


def test_plan_follows_the_budget():
    def step(max_memory_gib: float) -> EStepSettings:
        return EStepSettings(SearchSettings(), ctf=True, batch_size=32,
                             max_memory_gib=max_memory_gib)

    held = memory.used_bytes() / memory.GiB
    small = plan_memory(step(held + 0.5), box=64, k_classes=1, n_searched=1, device="cpu")
    large = plan_memory(step(held + 8), box=64, k_classes=1, n_searched=1, device="cpu")
    assert small.batch_size < large.batch_size == 32
    assert small.work_bytes < large.work_bytes and small.cache_bytes < large.cache_bytes
    with pytest.raises(InputError, match="--max_memory"):  # the fixed part alone is too big
        plan_memory(EStepSettings(SearchSettings(), max_memory_gib=held + 0.01), box=256,
                    k_classes=4,
                    n_searched=4, device="cpu")
    with pytest.raises(InputError, match="--max_memory: must be a positive number"):
        memory.budget_bytes(-1.0)
    auto = memory.budget_bytes(None)
    assert memory.used_bytes() < auto <= memory.available_bytes() + memory.used_bytes()


def test_backprojector_holds_only_its_two_sums():
    box, pad = 12, 2
    bp = Backprojector(box, pad=pad)
    g = torch.Generator().manual_seed(0)
    spectra = torch.randn(3, box, box, box // 2 + 1, dtype=torch.complex64, generator=g)
    bp.insert(spectra, euler_to_matrix(torch.rand(3, 3, generator=g).double() * 90).float())
    held = sum(t.numel() * t.element_size() for t in vars(bp).values()
               if isinstance(t, torch.Tensor) and t.numel() > 1000)
    assert held == memory.backprojector_bytes(box, pad)
