"""De novo initial model from random orientations against simulated ground truth (C1 and C6),
its job files, resume from a checkpoint and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from subtomo.cli import main
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.maps.align_maps import align_maps
from subtomo.refine.initial_model import InitialModelOptions, initial_model, schedule
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

BOX, APIX = 32, 6.0
QUICK = dict(iter_ini=4, iter_inbetween=8, iter_final=3, batch_ini=60, batch_final=120,
             ini_high_A=40.0, final_high_A=20.0, ctf=True, checkpoint_every=5)


def _simulate(root: Path, symmetry: str, seed: int, n: int = 200):
    config = SimulationConfig(n=n, box_px=BOX, pixel_size_A=APIX, n_atoms=1500,
                              symmetry=symmetry, noise_sigma=4.0, seed=seed)
    return simulate_subtomograms(root, config, progress=False)


def _fsc05_after_alignment(volume: torch.Tensor, truth: torch.Tensor, sym: str) -> float:
    """FSC-0.5 resolution (Å) vs the truth after aligning (hand flip allowed)."""
    aligned = align_maps(volume, truth, APIX, allow_flip=True, sym=sym).aligned
    return resolution_at(fsc(aligned, truth), BOX, APIX, threshold=0.5)


@pytest.mark.parametrize("sym", ["C1", "C6"])
def test_initial_model_from_random_orientations(tmp_path, sym):
    # C6 sees each particle six times: 100 reach 14.2 Å (200: 14.8 Å) in two thirds the time
    sim = _simulate(tmp_path / "sim", sym, seed=21, n=200 if sym == "C1" else 100)
    ps = read_particles(sim.particles_star)
    truth = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    result = initial_model(ps, tmp_path / "job", options=InitialModelOptions(sym=sym, **QUICK),
                           progress=False)
    assert result.iterations == 15
    assert _fsc05_after_alignment(result.reconstructions[0].map, truth, sym) <= 30.0
    # the starting blob is far from it: the model was built, not given
    blob = read_mrc(tmp_path / "job" / "run_it005_class001.mrc")[0]
    assert blob.shape == (BOX, BOX, BOX)


def test_schedule_follows_relion_options():
    o = InitialModelOptions(iter_ini=2, iter_inbetween=4, iter_final=2, batch_ini=10,
                            batch_final=50, ini_high_A=40.0, final_high_A=20.0)
    steps = [schedule(o, i, 1000, 150.0) for i in range(1, 9)]
    assert [s[0] for s in steps[:2]] == [40.0, 40.0]
    assert steps[3][0] == pytest.approx(1 / (0.5 / 40 + 0.5 / 20))  # half-way in frequency
    assert [s[1] for s in steps] == [10, 10, 20, 30, 40, 50, 50, 1000]  # last: all particles
    assert steps[0][2] == 1 and steps[-1][2] == 2  # 7.5° fine step > 20/150 rad → order 2


def test_cli_initial_model_files_and_bad_input(tmp_path, capsys):
    sim = _simulate(tmp_path / "sim", "C1", seed=22)
    job = tmp_path / "InitialModel" / "job001"
    args = ["initial-model", "--i", str(sim.particles_star), "--o", str(job), "--ctf",
            "--iter_ini", "2", "--iter_inbetween", "3", "--iter_final", "1",
            "--batch_ini", "40", "--batch_final", "60", "--ini_high", "40",
            "--final_high", "24", "--checkpoint_every", "3"]
    assert main(args) == 0
    for name in ("run_it003_class001.mrc", "run_it006_class001.mrc", "run_it006_data.star",
                 "run_it006_model.star", "run_it006_optimiser.json", "run_classes.png",
                 "run_class_occupancy.png", "job.json"):
        assert (job / name).exists(), name
    assert not (job / "run_it003_optimiser.pt").exists()  # only the newest statistics kept
    final = read_particles(job / "run_it006_data.star")
    assert len(final) == 200 and set(final.particles["rlnClassNumber"]) == {1}
    capsys.readouterr()
    assert main(args) == 2  # the folder holds a run
    assert "previous run" in capsys.readouterr().err
    assert main(args[:3] + ["--o", str(tmp_path / "k0"), "--K", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_resume_after_a_kill_gives_the_same_model(tmp_path, monkeypatch):
    """Killed in iteration 5 (after the checkpoint of 3): --continue redoes 4 to 6 and ends
    where the uninterrupted run ends."""
    import subtomo.refine.initial_model as im

    sim = _simulate(tmp_path / "sim", "C1", seed=23)
    ps = read_particles(sim.particles_star)
    options = InitialModelOptions(iter_ini=2, iter_inbetween=3, iter_final=1, batch_ini=40,
                                  batch_final=60, ini_high_A=40.0, final_high_A=24.0,
                                  ctf=True, checkpoint_every=3)
    whole = initial_model(ps, tmp_path / "whole", options=options, progress=False)
    real, calls = im.expectation, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(im, "expectation", dying)
    with pytest.raises(KeyboardInterrupt):
        initial_model(ps, tmp_path / "job", options=options, progress=False)
    monkeypatch.setattr(im, "expectation", real)
    assert (tmp_path / "job" / "run_it003_optimiser.pt").exists()
    resumed = initial_model(ps, tmp_path / "job", options=options, progress=False,
                            continue_from=True)
    assert resumed.iterations == 6
    a, b = whole.reconstructions[0].map, resumed.reconstructions[0].map
    assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.999
