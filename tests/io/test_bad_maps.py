"""Maps that hold nothing are refused: a reference that is constant (all zero, or one value
everywhere) or empty, a mask with no voxel above 0 or empty, by every command that takes a map.
Each case checks the contract: exit status 2, one line naming the file and the option, nothing
written."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from test_bad_input import run_bad

from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

BOX, APIX = 16, 8.0
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """Six subtomograms (16³, 8 Å/px) and a small tilt-series project."""
    folder = tmp_path_factory.mktemp("maps") / "data"
    simulate_subtomograms(folder, SimulationConfig(n=6, box_px=BOX, pixel_size_A=APIX,
                                                   n_atoms=300, noise_sigma=1.0),
                          progress=False)
    simulate_tiltseries(folder / "tilts", TiltSeriesConfig(
        n_particles=4, image_size_px=(96, 96), thickness_px=32, box_px=BOX, n_atoms=200,
        tilt_step_deg=15.0, seed=1), progress=False)
    truth, _ = read_mrc(folder / "truth_class001.mrc")
    write_mrc(folder / "ref.mrc", truth, APIX)
    write_mrc(folder / "half2.mrc", truth + 0.01 * np.random.default_rng(0).normal(
        size=truth.shape).astype(np.float32), APIX)
    write_mrc(folder / "mask.mrc", (np.abs(truth) > 0.1 * np.abs(truth).max()).astype(
        np.float32), APIX)
    return folder


@pytest.fixture
def data(simulated, tmp_path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(simulated, folder)
    return folder


def write_bad(path: Path, kind: str) -> Path:
    """A map that holds nothing: ``zero``, ``constant`` (2.5), ``negative`` (all −1: a mask
    masking everything out) or ``empty`` (no voxels)."""
    if kind == "empty":
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.zeros((0, BOX, BOX), np.float32))
            mrc.voxel_size = APIX
        return path
    value = {"zero": 0.0, "constant": 2.5, "negative": -1.0}[kind]
    write_mrc(path, np.full((BOX, BOX, BOX), value, np.float32), APIX)
    return path


SUBTOMO = ["--i", "{data}/particles.star", "--ctf"]
TILTS = ["tomo-align", "--i", "{data}/tilts/optimisation_set.star", "--b", "16"]
POST = ["postprocess", "--i", "{data}/ref.mrc", "--i2", "{data}/half2.mrc", "--mask",
        "{data}/mask.mrc"]
# (command with {data}/ref.mrc etc., the option whose map is replaced by a bad one)
COMMANDS = [
    (["refine", *SUBTOMO, "--ref", "{data}/ref.mrc"], "--ref"),
    (["refine", *SUBTOMO, "--ref", "{data}/ref.mrc", "--mask", "{data}/mask.mrc"], "--mask"),
    (["classify", *SUBTOMO, "--K", "2", "--ref", "{data}/ref.mrc"], "--ref"),
    (["classify", *SUBTOMO, "--K", "2", "--ref", "{data}/ref.mrc", "--mask",
      "{data}/mask.mrc"], "--mask"),
    (["hetero", "train", *SUBTOMO, "--ref", "{data}/ref.mrc"], "--ref"),
    (["hetero", "train", *SUBTOMO, "--ref", "{data}/ref.mrc", "-r", "{data}/mask.mrc"],
     "--mask"),
    ([*TILTS, "--ref1", "{data}/ref.mrc", "--ref2", "{data}/half2.mrc"], "--ref1"),
    ([*TILTS, "--ref1", "{data}/ref.mrc", "--ref2", "{data}/half2.mrc"], "--ref2"),
    ([*TILTS, "--ref1", "{data}/ref.mrc", "--ref2", "{data}/half2.mrc", "--mask",
      "{data}/mask.mrc"], "--mask"),
    (POST, "--i"), (POST, "--i2"), (POST, "--mask"),
    (["mask", "create", "--i", "{data}/ref.mrc", "--ini_threshold", "0.1"], "--i"),
    (["symmetrize", "--i", "{data}/ref.mrc", "--sym", "C2"], "--i"),
    (["align-symmetry", "--i", "{data}/ref.mrc", "--sym", "C2"], "--i"),
    (["maps", "align", "--i", "{data}/ref.mrc", "--ref", "{data}/half2.mrc"], "--i"),
    (["maps", "align", "--i", "{data}/ref.mrc", "--ref", "{data}/half2.mrc"], "--ref"),
]
OUTPUT = {"refine": "job", "classify": "job", "hetero": "job", "tomo-align": "job",
          "postprocess": "job", "mask": "out.mrc", "symmetrize": "out.mrc",
          "align-symmetry": "out.mrc", "maps": "out.mrc"}
MESSAGES = {("reference", "zero"): "map is constant (every voxel 0)",
            ("reference", "constant"): "map is constant (every voxel 2.5)",
            ("mask", "zero"): "mask has no voxel above 0 (largest 0)",
            ("mask", "negative"): "mask has no voxel above 0 (largest -1)",
            ("reference", "empty"): "map is empty", ("mask", "empty"): "mask is empty"}


@pytest.mark.parametrize(("command", "option"), COMMANDS,
                         ids=[f"{' '.join(c[:2] if c[0] in ('hetero', 'mask', 'maps') else c[:1])}"
                              f" {o}" for c, o in COMMANDS])
@pytest.mark.parametrize("kind", ["zero", "constant", "empty"])
def test_commands_refuse_maps_that_hold_nothing(capsys, data, tmp_path, command, option, kind):
    """``constant`` is 2.5 everywhere for a reference and −1 everywhere for a mask (a mask of
    ones everywhere is valid: it masks nothing out)."""
    role = "mask" if option == "--mask" else "reference"
    if kind == "constant" and role == "mask":
        kind = "negative"
    argv = [a.format(data=data) for a in command]
    flag = option if option in argv else "-r"  # hetero train's -r is --mask
    position = len(argv) - argv[::-1].index(flag)
    argv[position] = str(write_bad(data / "bad.mrc", kind))
    out = tmp_path / "out"
    out.mkdir()
    line = run_bad(capsys, [*argv, "--o", out / OUTPUT[argv[0]]], out)
    assert f"bad.mrc: {option}: {MESSAGES[role, kind]}" in line, line
