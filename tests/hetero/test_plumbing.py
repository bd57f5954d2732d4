"""Checkpoints, resuming after a kill, torchrun processes and bad input (tiny data)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.io.mrc import write_mrc
from subtomo.io.poses import poses_opus, write_poses_pickle
from subtomo.io.star import read_particles

COMMON = ["--ctf", "-b", "4", "--zdim", "3", "--seed", "7", "--j", "1"]


def _subtomo(args: list[str], cwd, nproc: int = 1, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "subtomo", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                   str(nproc), "--master_port", "29541", "-m", "subtomo", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_kill_and_continue_gives_the_uninterrupted_latents(tmp_path, tiny):
    """With --estpose and a pose search before every epoch from 1: the run killed after an
    epoch whose poses were searched, continued, ends with the uninterrupted run's latents and
    poses (the saved corrections are the next search's starting poses)."""
    star = str(tiny.particles_star)
    args = ["hetero", "train", "--i", star, "-n", "4", "--estpose", "--pose-every", "1"]
    _subtomo([*args, "--o", "full", *COMMON], tmp_path)
    run = _subtomo([*args, "--o", "killed", *COMMON], tmp_path, wait=False)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "weights.1.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done = sorted(p.name for p in (tmp_path / "killed").glob("weights.*.pt"))
    assert "weights.1.pt" in done and "weights.3.pt" not in done
    _subtomo(["hetero", "train", "--continue", "killed", "-n", "4"], tmp_path)
    full, resumed = (np.load(tmp_path / d / "z.3.npy") for d in ("full", "killed"))
    assert np.allclose(full, resumed, atol=1e-5)
    state = torch.load(tmp_path / "killed" / "weights.3.pt", weights_only=True)
    assert {"model", "training", "optimizer", "mu", "logvar", "rng_state", "epoch"} <= set(
        state)  # model: the weight average (--ema 2), training: the weights to resume from
    poses = [torch.load(tmp_path / d / "weights.3.pt", weights_only=True)["poses"]["delta"]
             for d in ("full", "killed")]
    assert poses[0].abs().max() > 0 and torch.allclose(poses[0], poses[1], atol=1e-6)
    assert len((tmp_path / "killed" / "log.tsv").read_text().splitlines()) == 5


def test_two_processes_reach_the_validation_loss_of_one(tmp_path, tiny):
    """Also with a pose search before epoch 1: each process searches its share of the
    particles and the rows are exchanged, so both runs save the same poses."""
    star = str(tiny.particles_star)
    common = ["hetero", "train", "--i", star, "-n", "2", "--lamb", "0", *COMMON[:-4],
              "--seed", "7", "--j", "1", "--zdim", "3", "--estpose", "--pose-every", "1"]
    _subtomo([*common, "-b", "8", "--o", "one"], tmp_path)
    _subtomo([*common, "-b", "4", "--o", "two"], tmp_path, nproc=2)
    losses = [float((tmp_path / d / "log.tsv").read_text().splitlines()[-1].split("\t")[5])
              for d in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    one, two = (np.load(tmp_path / d / "z.1.npy") for d in ("one", "two"))
    assert np.abs(one - two).max() < 1e-3 * max(1.0, np.abs(one).max())
    poses = [torch.load(tmp_path / d / "weights.1.pt", weights_only=True)["poses"]["delta"]
             for d in ("one", "two")]
    moved = poses[0].abs().amax(1) > 0
    assert moved.float().mean() > 0.5  # most particles moved, by the same in both runs
    assert torch.allclose(poses[0], poses[1], atol=1e-5)


def _fails(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny, capsys):
    star = str(tiny.particles_star)
    ps = read_particles(star)
    poses = tmp_path / "poses.pkl"
    write_poses_pickle(poses_opus(ps.angles_deg()[:-1], ps.shifts_A()[:-1], 16, 10.0), poses)
    out = tmp_path / "run"
    err = _fails(["hetero", "train", "--i", star, "--poses", str(poses), "--o", str(out),
                  "--ctf"], capsys)
    assert "poses.pkl" in err and "--poses" in err and "39 poses" in err
    write_mrc(tmp_path / "mask.mrc", np.ones((20, 20, 20), np.float32), 10.0)
    err = _fails(["hetero", "train", "--i", star, "-r", str(tmp_path / "mask.mrc"), "--o",
                  str(out), "--ctf"], capsys)
    assert "mask.mrc" in err and "--mask" in err and "16³" in err
    err = _fails(["hetero", "train", "--i", star, "--templateres", "40", "--o", str(out)],
                 capsys)
    assert "--templateres" in err and "40" in err
    err = _fails(["hetero", "train", "--i", star, "--estpose", "--pose-every", "0", "--o",
                  str(out)], capsys)
    assert "--pose-every" in err and "0" in err
    assert not out.exists()
    assert main(["hetero", "train", "--i", star, "-n", "1", "--o", str(out), *COMMON]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.rglob("*"))
    for command in (["analyze", str(out), "3"], ["eval-vol", str(out), "3", "kmeans", "2"],
                    ["select", str(out), "3", "--kmeans", "2"]):
        err = _fails(["hetero", *command], capsys)
        assert "EPOCH" in err and "epoch 3" in err
    err = _fails(["hetero", "train", "--i", star, "-n", "1", "--o", str(out)], capsys)
    assert "--continue" in err
    assert sorted(p.name for p in out.rglob("*")) == before
