"""Bad values are refused: NaN or infinity in subtomograms, CTF volumes, references, masks and
maps; non-positive pixel sizes, voltages and box sizes; defocus outside 0–20 µm; stage tilts
outside ±90°. Each case drives the ``subtomo`` command and checks the contract: exit status 2,
one line on stderr naming the file, the particle (where there is one) and the field, and
nothing written — not even a job folder.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from test_bad_input import run_bad, write

from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """Six tiny subtomograms with CTF volumes (16³, 8 Å/px)."""
    folder = tmp_path_factory.mktemp("sim") / "data"
    simulate_subtomograms(folder, SimulationConfig(n=6, box_px=16, pixel_size_A=8.0,
                                                   n_atoms=300, noise_sigma=1.0),
                          progress=False)
    return folder


@pytest.fixture
def data(simulated, tmp_path) -> Path:
    """A private copy of the simulated set (tests spoil files in it)."""
    folder = tmp_path / "data"
    shutil.copytree(simulated, folder)
    return folder


def spoil_volume(path: Path, value: float, at=(3, 4, 5)) -> None:
    volume, pixel_size_A = read_mrc(path, finite=False)
    volume[at] = value
    with warnings.catch_warnings():  # mrcfile warns about the NaN we write on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        write_mrc(path, volume, pixel_size_A)


def replace_column(star: Path, label: str, row: int, value: str) -> int:
    """Set ``label`` of particle ``row`` (1-based) of the particles block; returns its line."""
    lines = star.read_text().splitlines()
    block = max(i for i, line in enumerate(lines) if line.startswith("data_particles"))
    labels = [i for i, line in enumerate(lines) if i > block and line.startswith("_rln")]
    column = next(k for k, i in enumerate(labels) if lines[i].split()[0] == f"_{label}")
    number = labels[-1] + row
    fields = lines[number].split("\t")
    fields[column] = value
    lines[number] = "\t".join(fields)
    star.write_text("\n".join(lines) + "\n")
    return number + 1


def replace_optics(star: Path, label: str, value: str) -> int:
    """Set ``label`` of the (single) optics group; returns its line."""
    lines = star.read_text().splitlines()
    labels = [i for i, line in enumerate(lines) if line.startswith("_rln")]
    end = next(i for i in labels if lines[i].startswith("_rlnImageDimensionality"))
    column = next(k for k, i in enumerate(labels) if lines[i].split()[0] == f"_{label}")
    fields = lines[end + 1].split("\t")
    fields[column] = value
    lines[end + 1] = "\t".join(fields)
    star.write_text("\n".join(lines) + "\n")
    return end + 2


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ---- NaN and infinity in volumes -------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_reconstruct_refuses_a_subtomogram_with_nan_or_inf(capsys, data, out, value):
    spoil_volume(data / "Subtomograms" / "particle_000004.mrc", value)
    line = run_bad(capsys, ["reconstruct", "--i", data / "particles.star", "--o",
                            out / "map.mrc"], out)
    assert "particle_000004.mrc: rlnImageName: particle 4 of particles.star: subtomogram " \
           "has 1 NaN or infinite value(s)" in line
    assert "(first at z, y, x = 3, 4, 5)" in line


def test_reconstruct_refuses_a_ctf_volume_with_inf(capsys, data, out):
    spoil_volume(data / "Subtomograms" / "particle_000002_ctf.mrc", -np.inf)
    line = run_bad(capsys, ["reconstruct", "--i", data / "particles.star", "--o",
                            out / "map.mrc", "--ctf"], out)
    assert "particle_000002_ctf.mrc: rlnCtfImage: particle 2" in line
    assert "CTF volume has 1 NaN or infinite" in line


@pytest.mark.parametrize("command", [
    ["refine", "--ref", "{ref}", "--ini_high", "40"],
    ["classify", "--ref", "{ref}", "--K", "2", "--iter", "1"],
    ["initial-model", "--iter_ini", "1", "--iter_inbetween", "0", "--iter_final", "1"],
    # particle 5 held out for validation: first read in the encoding pass after epoch 0
    ["hetero", "train", "--ref", "{ref}", "--split", "{split}", "-n", "1"],
])
def test_jobs_refuse_a_nan_subtomogram_and_leave_no_job_folder(capsys, data, out, command):
    """The NaN is found while streaming particles, after the job folder was made: the folder
    (and its parent, made by the job) is removed again."""
    spoil_volume(data / "Subtomograms" / "particle_000005.mrc", np.nan)
    ref = data / "truth_class001.mrc"
    split = write(data / "split.json", '{"n": 6, "val": [4]}')
    argv = [c.format(ref=ref, split=split) for c in command]
    line = run_bad(capsys, [*argv, "--i", data / "particles.star", "--o",
                            out / "Jobs" / "job001", "--ctf"], out)
    assert "particle_000005.mrc: rlnImageName: particle 5 of particles.star" in line


def test_a_failed_continue_keeps_what_existed(capsys, data, out):
    """An existing job folder keeps its files; only what the failed run wrote goes."""
    job = out / "job001"
    job.mkdir()
    (job / "notes.txt").write_text("mine")
    spoil_volume(data / "Subtomograms" / "particle_000001.mrc", np.nan)
    run_bad(capsys, ["refine", "--i", data / "particles.star", "--ref",
                     data / "truth_class001.mrc", "--o", job, "--ctf"], job)
    assert (job / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("which", ["ref", "mask"])
def test_refine_refuses_a_nan_reference_or_mask(capsys, data, out, which):
    ref = data / "truth_class001.mrc"
    mask = data / "mask.mrc"
    write_mrc(mask, np.ones((16, 16, 16), np.float32), 8.0)
    spoil_volume(ref if which == "ref" else mask, np.nan, at=(0, 0, 0))
    line = run_bad(capsys, ["refine", "--i", data / "particles.star", "--ref", ref, "--mask",
                            mask, "--o", out / "job001"], out)
    assert f"{(ref if which == 'ref' else mask).name}: " in line
    assert "1 NaN or infinite value(s) of 4096 (first at z, y, x = 0, 0, 0)" in line


@pytest.mark.parametrize("spoilt", ["half2", "mask"])
def test_postprocess_refuses_nan_maps(capsys, data, out, spoilt):
    paths = {name: data / f"{name}.mrc" for name in ("half1", "half2", "mask")}
    truth, _ = read_mrc(data / "truth_class001.mrc")
    for name, path in paths.items():
        write_mrc(path, truth if name != "mask" else np.ones_like(truth), 8.0)
    spoil_volume(paths[spoilt], np.nan)
    line = run_bad(capsys, ["postprocess", "--i", paths["half1"], "--i2", paths["half2"],
                            "--mask", paths["mask"], "--o", out / "post"], out)
    option, what = {"half2": ("--i2", "map"), "mask": ("--mask", "mask")}[spoilt]
    assert f"{spoilt}.mrc: {option}: {what} has 1 NaN" in line


@pytest.mark.parametrize("command", [
    ["mask", "create", "--ini_threshold", "0.1"], ["symmetrize", "--sym", "C2"],
    ["align-symmetry", "--sym", "C2"]])
def test_map_commands_refuse_nan_maps(capsys, data, out, command):
    spoil_volume(data / "truth_class001.mrc", np.inf)
    line = run_bad(capsys, [*command, "--i", data / "truth_class001.mrc", "--o",
                            out / "out.mrc"], out)
    assert "truth_class001.mrc: --i: map has 1 NaN or infinite" in line


# ---- pixel sizes, voltages, box sizes --------------------------------------------------------
@pytest.mark.parametrize("value", ["-4", "0", "nan"])
@pytest.mark.parametrize("command", [
    ["reconstruct", "--i", "{star}", "--o", "{out}/map.mrc"],
    ["refine", "--i", "{star}", "--ref", "{ref}", "--o", "{out}/job"],
    ["star", "convert", "--i", "{star}", "--o", "{out}/x.star"],
    ["mask", "create", "--i", "{ref}", "--o", "{out}/m.mrc", "--ini_threshold", "0.1"],
    ["poses", "export", "--i", "{star}", "--o", "{out}/p.pkl", "--box", "16", "--Apix"],
    ["simulate", "subtomograms", "--o", "{out}/sim", "--n", "2"],
])
def test_non_positive_angpix_is_refused(capsys, data, out, command, value):
    argv = [c.format(star=data / "particles.star", ref=data / "truth_class001.mrc", out=out)
            for c in command]
    if argv[-1] != "--Apix":
        argv.append("--angpix")
    line = run_bad(capsys, [*argv, value], out)
    assert ": --angpix: " in line or ": --Apix: " in line or ": --angpix" in line


@pytest.mark.parametrize(("label", "value", "message"), [
    ("rlnImagePixelSize", "-4.0", "optics group 1: value must be positive, got -4 Å"),
    ("rlnImagePixelSize", "0", "optics group 1: value must be positive, got 0 Å"),
    ("rlnVoltage", "0", "optics group 1: value must be positive, got 0 kV"),
    ("rlnImageSize", "-16", "optics group 1: value must be positive, got -16 px"),
    ("rlnAmplitudeContrast", "1.5", "optics group 1: value 1.5 is outside 0 to 1"),
])
def test_star_optics_values_are_refused(capsys, data, out, label, value, message):
    star = data / "particles.star"
    number = replace_optics(star, label, value)
    line = run_bad(capsys, ["reconstruct", "--i", star, "--o", out / "map.mrc"], out)
    assert f"particles.star:{number}: {label}: {message}" in line


@pytest.mark.parametrize(("label", "value", "message"), [
    ("rlnDefocusU", "-5000", "particle 3: defocus -5000 Å is outside 0 to 20 µm"),
    ("rlnDefocusV", "250000", "particle 3: defocus 250000 Å is outside 0 to 20 µm"),
    ("rlnAngleTilt", "nan", "particle 3: value nan is not a finite number"),
    ("rlnOriginXAngst", "inf", "particle 3: value inf is not a finite number"),
])
def test_star_particle_values_are_refused(capsys, data, out, label, value, message):
    star = data / "particles.star"
    line_number = replace_column(star, label, 3, value)
    line = run_bad(capsys, ["star", "convert", "--i", star, "--o", out / "x.star"], out)
    assert f"particles.star:{line_number}: {label}: {message}" in line


def test_relion30_detector_pixel_size_is_refused(capsys, tmp_path, out):
    from test_bad_input import ROWS_30, line_of, relion30

    rows = [*ROWS_30[:2], ROWS_30[2].replace("10000.0 10.0", "10000.0 -10.0"), ROWS_30[3]]
    star = write(tmp_path / "p30.star", relion30(rows))
    line = run_bad(capsys, ["star", "convert", "--i", star, "--o", out / "x.star"], out)
    number = line_of(star.read_text(), "-10.0")
    assert line.endswith(f"p30.star:{number}: rlnDetectorPixelSize: particle 3: value must be "
                         "positive, got -10 µm")


def test_negative_mrc_voxel_size_is_refused(capsys, data, out):
    path = data / "truth_class001.mrc"
    with mrcfile.open(path, "r+") as mrc:
        mrc.voxel_size = -8.0
    line = run_bad(capsys, ["mask", "create", "--i", path, "--o", out / "m.mrc",
                            "--ini_threshold", "0.1"], out)
    assert "truth_class001.mrc: voxel size (MRC header): voxel size -8 Å" in line


@pytest.mark.parametrize("argv", [
    ["simulate", "subtomograms", "--o", "{out}/sim", "--box", "0"],
    ["poses", "export", "--i", "{star}", "--o", "{out}/p.pkl", "--box", "-16"],
    ["reconstruct", "--i", "{star}", "--o", "{out}/map.mrc", "--max_memory", "0"],
    ["refine", "--i", "{star}", "--ref", "{ref}", "--o", "{out}/job", "--pad", "0"],
    ["classify", "--i", "{star}", "--ref", "{ref}", "--o", "{out}/job", "--K", "0"],
])
def test_non_positive_sizes_are_refused(capsys, data, out, argv):
    argv = [c.format(star=data / "particles.star", ref=data / "truth_class001.mrc", out=out)
            for c in argv]
    line = run_bad(capsys, argv, out)
    assert "must be positive, got" in line


# ---- defocus and tilt angles -----------------------------------------------------------------
@pytest.mark.parametrize(("option", "value", "message"), [
    ("--defocus", "-1:3", "--defocus: -1 µm is outside 0 to 20 µm"),
    ("--defocus", "2:25", "--defocus: 25 µm is outside 0 to 20 µm"),
    ("--tilt-range", "95", "--tilt_range: 95° is outside 0 to 90°"),
    ("--tilt-step", "7", "--tilt_step: tilt_range_deg 60.0 is not a multiple of the step 7.0"),
])
def test_simulation_parameters_are_refused(capsys, out, option, value, message):
    line = run_bad(capsys, ["simulate", "subtomograms", "--o", out / "sim", "--n", "2",
                            f"{option}={value}"], out)
    assert line.endswith(message)


def test_stage_tilt_in_a_tilt_series_star_is_refused(capsys, tmp_path, out):
    star = write(tmp_path / "TS_01.star", "data_TS_01\n\nloop_\n_rlnMicrographName #1\n"
                 "_rlnTomoNominalStageTiltAngle #2\n_rlnMicrographPreExposure #3\n"
                 "TS_01_001.mrc 0.0 0.0\nTS_01_002.mrc 3.0 3.0\nTS_01_003.mrc 93.0 6.0\n")
    line = run_bad(capsys, ["star", "info", star], out)
    assert line.endswith("TS_01.star:9: rlnTomoNominalStageTiltAngle: data_TS_01 row 3: "
                         "tilt angle 93° is outside -90 to 90°")


def test_dynamo_wedge_tilt_and_nan_are_refused(capsys, tmp_path, out):
    from test_bad_input import dynamo_row

    rows = [dynamo_row(1, 1), dynamo_row(2, 1)]
    wide = rows[1].split()
    wide[14] = "120"  # ymaxtilt, column 15
    table = write(tmp_path / "t.tbl", "\n".join([rows[0], " ".join(wide)]) + "\n")
    line = run_bad(capsys, ["convert", "dynamo2star", "--i", table, "--o", out / "x.star"],
                   out)
    assert line.endswith("t.tbl:2: ymaxtilt (column 15): particle 2: tilt angle 120° is "
                         "outside -90 to 90°")
    nan = rows[0].split()
    nan[24] = "nan"  # y, column 25
    table = write(tmp_path / "n.tbl", " ".join(nan) + "\n")
    line = run_bad(capsys, ["convert", "dynamo2star", "--i", table, "--o", out / "x.star"],
                   out)
    assert line.endswith("n.tbl:1: y (column 25): particle 1: value nan is not a finite number")
