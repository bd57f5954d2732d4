"""No command writes over its inputs: a job whose output (a file, or a file it would write into
its output folder) is one of the files it reads — those named inside its STAR files included —
or whose output file is an existing folder, stops with exit status 2 and one line naming the
file and the option, before writing anything; every input keeps its bytes and every folder its
listing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import run_bad

from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """``tilts/``: a tilt-series project (4 particles, 16 px boxes); ``subtomos/``: six
    subtomograms (16³); ``Job/``: a job folder holding earlier outputs used as inputs."""
    root = tmp_path_factory.mktemp("outputs") / "root"
    root.mkdir()
    cwd = Path.cwd()
    os.chdir(root)  # STAR files name their files relative to the project folder
    try:
        simulate_tiltseries(Path("tilts"), TiltSeriesConfig(
            n_particles=4, image_size_px=(96, 96), thickness_px=32, box_px=16, n_atoms=200,
            tilt_step_deg=15.0, seed=1), progress=False)
        simulate_subtomograms(Path("subtomos"), SimulationConfig(
            n=6, box_px=16, pixel_size_A=8.0, n_atoms=300, noise_sigma=1.0), progress=False)
    finally:
        os.chdir(cwd)
    truth, _ = read_mrc(root / "subtomos" / "truth_class001.mrc")
    shutil.copy(root / "tilts" / "tomograms.star", root / "tilts" / "other_tomograms.star")
    job = root / "Job"
    job.mkdir()
    write_mrc(job / "run_class001.mrc", truth, 8.0)  # an earlier job's map, now a reference
    write_mrc(job / "mask.mrc", (truth > 0.1 * truth.max()).astype(np.float32), 8.0)
    write_mrc(job / "postprocess_masked.mrc", truth, 8.0)
    (job / "run_data.star").write_text((root / SUB).read_text().replace(  # names from root
        "\tSubtomograms/", "\tsubtomos/Subtomograms/"))
    (job / "tilt_series").mkdir()
    (job / "tilt_series" / "TS_01.star").write_text(  # an angle list where import writes
        "\n".join(f"{a:g}" for a in np.arange(-60, 61, 15)) + "\n")
    return root


@pytest.fixture
def root(simulated, tmp_path, monkeypatch) -> Path:
    """A private copy, as the working (project) folder."""
    copy = tmp_path / "root"
    shutil.copytree(simulated, copy)
    monkeypatch.chdir(copy)
    return copy


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()} | {str(p.relative_to(root)) + "/": b"" for p in root.rglob("*")
                               if p.is_dir()}


OPT = "tilts/optimisation_set.star"
SUB = "subtomos/particles.star"
REFS = ["--ref1", "subtomos/truth_class001.mrc", "--ref2", "subtomos/truth_class001.mrc"]
# (command, the input file the message names)
CASES = {
    "extract into the project": (["extract", "--i", OPT, "--b", "16", "--o", "tilts"], OPT),
    "extract with --p": (["extract", "--p", "tilts/particles.star", "--t",
                          "tilts/tomograms.star", "--b", "16", "--o", "tilts"],
                         "tilts/particles.star"),
    "extract into a stack": (["extract", "--i", OPT, "--b", "16", "--o",
                              "tilts/tilt_series/TS_01.mrcs"], "tilts/tilt_series/TS_01.mrcs"),
    "reconstruct-particle": (["reconstruct-particle", "--i", OPT, "--b", "16", "--o", "tilts"],
                             OPT),
    "reconstruct-tomogram": (["reconstruct-tomogram", "--i", OPT, "--o", "tilts"],
                             "tilts/tomograms.star"),
    "reconstruct-tomogram per-tilt file": (
        ["reconstruct-tomogram", "--t", "tilts/other_tomograms.star", "--o", "tilts"],
        "tilts/tilt_series/TS_01.star"),
    "tomo-align": (["tomo-align", "--i", OPT, *REFS, "--b", "16", "--o", "tilts"], OPT),
    "tomograms import": (["tomograms", "import", "--stack", "tilts/tilt_series/{name}.mrcs",
                          "--tlt", "Job/tilt_series/{name}.star", "--name", "TS_01",
                          "--angpix", "10", "--voltage", "300", "--dose_per_tilt", "3",
                          "--defocus_um", "3", "--thickness", "32", "--tilt_axis", "0",
                          "--o", "Job/tomograms.star"], "Job/tilt_series/TS_01.star"),
    "refine": (["refine", "--i", SUB, "--ref", "Job/run_class001.mrc", "--ctf", "--o", "Job"],
               "Job/run_class001.mrc"),
    "classify": (["classify", "--i", SUB, "--ref", "Job/run_class001.mrc", "--K", "2",
                  "--ctf", "--o", "Job"], "Job/run_class001.mrc"),
    "initial-model": (["initial-model", "--i", "Job/run_data.star", "--ctf", "--o", "Job"],
                      "Job/run_data.star"),
    "hetero train": (["hetero", "train", "--i", SUB, "--ref", "Job/run_class001.mrc", "-r",
                      "Job/mask.mrc", "--ctf", "--o", "Job"], "Job/mask.mrc"),
    "postprocess": (["postprocess", "--i", "Job/run_class001.mrc", "--i2",
                     "Job/postprocess_masked.mrc", "--mask", "Job/mask.mrc", "--o", "Job"],
                    "Job/postprocess_masked.mrc"),
    "reconstruct over a subtomogram": (
        ["reconstruct", "--i", SUB, "--o", "subtomos/Subtomograms/particle_000001.mrc"],
        "subtomos/Subtomograms/particle_000001.mrc"),
    "select into the input's folder": (["select", "random", "--i", SUB, "--n", "2", "--o",
                                        "subtomos"], "subtomos"),
    "select --class": (["select", "--i", SUB, "--class", "1", "--o", SUB], SUB),
    "star convert into the input's folder": (["star", "convert", "--i", SUB, "--relion30",
                                              "--o", "subtomos/Subtomograms"],
                                             "subtomos/Subtomograms"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_never_overwrite_inputs(capsys, root, case):
    argv, named = CASES[case]
    before = snapshot(root)
    line = run_bad(capsys, argv, root)
    assert f"{named}: --" in line or f"{Path(named).resolve()}: --" in line \
        or f"error: {named}: " in line, line
    assert snapshot(root) == before
