"""Every collective runs on the process's device (NCCL reduces only tensors on the rank's GPU).

No GPU here: the process device is PyTorch's lazy device (a second device that computes on the
CPU), and torch.distributed's collectives are replaced by a recorder of a world of two in
which the other rank contributes zeros (a sum is then the rank's own values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from subtomo.parallel.distributed import Context, process_device


@pytest.fixture(scope="module")
def device():
    pytest.importorskip("torch._lazy.ts_backend").init()
    return torch.device("lazy", 0)


@pytest.fixture
def recorded(monkeypatch, device):
    """The device of every tensor given to a collective (the other rank holds zeros)."""
    calls = []

    def all_reduce(tensor, *args, **kwargs):
        calls.append(("all_reduce", tensor.device))

    def broadcast(tensor, src, *args, **kwargs):
        calls.append(("broadcast", tensor.device))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "broadcast", broadcast)
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: None)
    return calls


def _off_device(calls, device) -> list:
    assert calls
    return [c for c in calls if c[1] != device]


def test_ranks_map_to_gpus_and_nccl_only_with_a_gpu_each():
    assert process_device("cuda", 1, 2, 1) == (torch.device("cuda", 0), "gloo")
    assert process_device("cuda", 3, 4, 2) == (torch.device("cuda", 1), "gloo")
    assert process_device("cuda", 1, 2, 2) == (torch.device("cuda", 1), "nccl")
    assert process_device("cuda", 2, 4, 8) == (torch.device("cuda", 2), "nccl")
    assert process_device("cpu", 1, 2, 0) == (torch.device("cpu"), "gloo")


def test_context_reduces_on_its_device(recorded, device):
    ctx = Context(rank=0, world=2, device=device)
    values = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(ctx.sum_array(values), values)
    spectrum = torch.arange(4.0) * (1 + 2j)
    assert torch.equal(ctx.sum_(spectrum.clone()), spectrum)  # a CPU tensor, reduced there
    assert ctx.broadcast_flag(True) is True
    ctx.barrier()
    assert [name for name, _ in recorded] == ["all_reduce", "all_reduce", "broadcast"]
    assert _off_device(recorded, device) == []


def test_refine_e_step_reduces_on_the_process_device(recorded, device, tmp_path):
    from subtomo.align.search import SearchSettings
    from subtomo.io.mrc import read_mrc
    from subtomo.io.star import read_particles
    from subtomo.refine import outputs
    from subtomo.refine.expectation import EStepSettings, Model, Particles, Poses, expectation
    from subtomo.refine.job import initial_sigma2
    from subtomo.refine.reconstruct import half_sets
    from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

    sim = simulate_subtomograms(tmp_path, SimulationConfig(
        n=6, box_px=16, pixel_size_A=8.0, n_atoms=300, noise_sigma=1.0, seed=2), progress=False)
    ps = read_particles(sim.particles_star)
    ref = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    ctx = Context(rank=0, world=2, device=device)
    matrices, origins = outputs.volume_poses(ps, 8.0)
    sigma2 = initial_sigma2(ps, np.arange(len(ps)), 16, True,
                            torch.as_tensor(origins, dtype=torch.float32), None, "cpu", ctx, 4)
    settings = SearchSettings(order=1, offset_range_px=1.0, offset_step_px=1.0,
                              coarse_radius_px=5.0, fine_radius_px=7.0, perturb_deg=5.0)
    e = expectation(Particles(ps, half_sets(ps), 16, None, "cpu"), np.arange(len(ps)),
                    Model(([ref], [ref]), np.ones(1), sigma2), Poses(matrices, origins),
                    EStepSettings(settings, ctf=True, batch_size=4), ctx, progress=False)
    assert e.matrices.shape == matrices.shape
    assert len(recorded) >= 12  # noise sums, 3 + 4 E-step sums, 5 pose arrays
    assert _off_device(recorded, device) == []


def test_hetero_training_reduces_on_the_process_device(recorded, device, tmp_path):
    from subtomo.hetero import inputs as hi
    from subtomo.hetero import train as tr
    from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

    sim = simulate_subtomograms(tmp_path / "sim", SimulationConfig(
        n=12, box_px=16, pixel_size_A=10.0, n_atoms=300, noise_sigma=0.5, seed=2),
        progress=False)
    inputs = hi.read_inputs(sim.particles_star, ctf=True)
    options = hi.TrainOptions(zdim=2, epochs=1, batch_size=4, estpose=True, seed=1)
    ctx = Context(rank=0, world=2, device=device)
    tr.train(inputs, tmp_path / "run", options, ctx=ctx, device="cpu", progress=False)
    names = {name for name, _ in recorded}
    assert names == {"all_reduce"}  # gradients, pose table, loss sums, latents
    assert _off_device(recorded, device) == []
