"""torchrun with two CPU processes (gloo) gives the result of one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from subtomo.geometry.euler import angular_distance_deg
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.star import read_particles
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms


def _refine(args: list[str], nproc: int, cwd) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "subtomo", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                   str(nproc), "--master_port", "29517", "-m", "subtomo", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """60 particles of two classes, 24³, and their consensus reconstruction."""
    root = tmp_path_factory.mktemp("dist")
    config = SimulationConfig(n=60, box_px=24, pixel_size_A=5.0, n_atoms=800, noise_sigma=2.0,
                              classes=2, seed=4)
    sim = simulate_subtomograms(root / "sim", config, progress=False)
    reference = reconstruct(read_particles(sim.particles_star), ctf=True, progress=False).map
    write_mrc(root / "ref.mrc", reference, 5.0)
    return sim


def test_two_processes_match_one(tmp_path, small):
    sim = small
    ref = str(sim.directory.parent / "ref.mrc")
    common = ["refine", "--i", str(sim.particles_star), "--ref", ref,
              "--ctf", "--iter", "2", "--j", "1", "--batch", "8"]
    _refine([*common, "--o", str(tmp_path / "one")], 1, tmp_path)
    _refine([*common, "--o", str(tmp_path / "two")], 2, tmp_path)
    one = read_particles(tmp_path / "one" / "run_it002_data.star")
    two = read_particles(tmp_path / "two" / "run_it002_data.star")
    assert np.array_equal(one.particles["rlnRandomSubset"], two.particles["rlnRandomSubset"])
    angles = angular_distance_deg(one.rotation_matrices(), two.rotation_matrices()).numpy()
    assert np.mean(angles < 1e-3) >= 0.95  # float sums in another order may flip rare ties
    assert np.abs(one.shifts_A() - two.shifts_A()).max(axis=1).mean() < 0.05
    model_one = (tmp_path / "one" / "run_it002_model.star").read_text()
    model_two = (tmp_path / "two" / "run_it002_model.star").read_text()
    res = [float(m.split("rlnCurrentResolution")[1].split()[0]) for m in (model_one, model_two)]
    assert res[0] == pytest.approx(res[1], rel=0.02)


def test_two_processes_classify_and_initial_model_like_one(tmp_path, small):
    sim = small
    ref = str(sim.directory.parent / "ref.mrc")
    common = ["classify", "--i", str(sim.particles_star), "--ref", ref, "--ctf", "--K", "2",
              "--iter", "3", "--skip_align", "--j", "1", "--batch", "8"]
    _refine([*common, "--o", str(tmp_path / "c1")], 1, tmp_path)
    _refine([*common, "--o", str(tmp_path / "c2")], 2, tmp_path)
    one, two = (read_particles(tmp_path / c / "run_it003_data.star").particles
                for c in ("c1", "c2"))
    assert np.mean(one["rlnClassNumber"] == two["rlnClassNumber"]) >= 0.95
    common = ["initial-model", "--i", str(sim.particles_star), "--ctf", "--iter_ini", "1",
              "--iter_inbetween", "1", "--iter_final", "1", "--batch_ini", "30",
              "--batch_final", "30", "--ini_high", "30", "--final_high", "25", "--j", "1",
              "--batch", "8"]
    _refine([*common, "--o", str(tmp_path / "m1")], 1, tmp_path)
    _refine([*common, "--o", str(tmp_path / "m2")], 2, tmp_path)
    maps = [read_mrc(tmp_path / m / "run_it003_class001.mrc")[0].ravel() for m in ("m1", "m2")]
    assert np.corrcoef(maps)[0, 1] > 0.99
