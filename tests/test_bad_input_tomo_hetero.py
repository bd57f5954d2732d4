"""Bad input and faults for the tilt-series and heterogeneity commands, as a new user meets them.

One small simulated project (a tilt series of 8 particles, its reference maps from
reconstruct-particle, 24 subtomograms and a 2-epoch hetero run with its analysis) is built once;
each case runs ``subtomo`` in a fresh copy after breaking one thing, and checks the contract of
:class:`subtomo.errors.InputError`: non-zero exit, stderr exactly one line ``subtomo: error:
...`` naming the file or option, no traceback, nothing written, no input changed. Killed jobs
(the folder states a SIGKILL leaves) finish after ``--continue`` with the results of an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from subtomo.cli import main
from subtomo.io.mrc import write_mrc
from subtomo.io.star_text import write_star

OPT = "P/optimisation_set.star"
TS = "P/tilt_series/TS_01.star"
STACK = "P/tilt_series/TS_01.mrcs"
TOMOS = "P/tomograms.star"
PARTS = "P/particles.star"
HP = "H/particles.star"
REFS = "R/optimisation_set.star"
TOMOS30 = "tomograms30.star"
TOMOGRAM = "TS_026/TS_026.mrc"

EX = ["extract", "--i", OPT, "--o", "OUT", "--b", "16"]
RP = ["reconstruct-particle", "--i", OPT, "--o", "OUT", "--b", "16"]
RT = ["reconstruct-tomogram", "--i", OPT, "--o", "OUT", "--bin", "4"]
TA = ["tomo-align", "--i", REFS, "--o", "OUT", "--b", "16", "--r", "4", "--no_reconstruct"]
TX = ["tomograms", "export", "--i", TOMOS, "--o", "OUT", "--imod"]
HT = ["hetero", "train", "--i", HP, "--o", "OUT", "--zdim", "2", "-n", "2", "-b", "8"]
E30 = ["extract", "--tomograms_star", TOMOS30, "--b", "16", "--o", "OUT"]
PE = ["poses", "export", "--i", HP, "--o", "p.pkl", "--box", "16"]
SIM = ["simulate", "tiltseries", "--o", "S", "--n", "2", "--size", "64", "64",
       "--thickness", "20", "--box", "16"]


# ---- the shared project ----------------------------------------------------------------------
def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def _tomogram_route(folder: Path) -> None:
    """RELION 3.0's route: a tomogram, its coordinates and IMOD files, tomograms30.star."""
    (folder / "TS_026").mkdir()
    write_mrc(folder / "TS_026/TS_026.mrc", np.random.default_rng(0).normal(
        size=(48, 48, 48)).astype(np.float32), 10.0)
    np.savetxt(folder / "TS_026/TS_026.coords", [[20.3, 30.6, 25.2], [24.7, 23.1, 20.9]])
    angles = np.arange(-60.0, 61.0, 15.0)
    np.savetxt(folder / "TS_026/TS_026.tlt", angles)
    np.savetxt(folder / "TS_026/TS_026.order", np.stack([angles, np.abs(angles) / 5], 1))
    lines = ["1 0 0.0 0.0 0.0 3"] + [f"{i + 1} {i + 1} {a} {a} {3000 + 5 * i} {2900 + 5 * i} 20"
                                     for i, a in enumerate(angles)]
    (folder / "TS_026/ctfplotter.defocus").write_text("\n".join(lines) + "\n")
    write_star({"": pd.DataFrame({"rlnMicrographName": ["TS_026/TS_026.mrc"]})},
               folder / TOMOS30)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    here = os.getcwd()
    os.chdir(root)
    try:
        _run(["simulate", "tiltseries", "--o", "P", "--tomograms", "1", "--n", "8", "--size",
              "160", "160", "--thickness", "40", "--angpix", "10", "--box", "16",
              "--tilt-step", "6"])
        _run(["reconstruct-particle", "--i", OPT, "--o", "R", "--b", "16"])
        _tomogram_route(root)
        _run(["simulate", "subtomograms", "--o", "H", "--n", "24", "--box", "16", "--angpix",
              "10", "--classes", "2"])
        _run(["hetero", "train", "--i", HP, "--o", "HT", "--zdim", "2", "-n", "2", "-b", "8"])
        _run(["hetero", "analyze", "HT", "1", "--ksample", "3", "--pcs", "2", "--skip-umap"])
    finally:
        os.chdir(here)
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the project, the working directory."""
    folder = tmp_path / "w"
    shutil.copytree(base, folder)
    monkeypatch.chdir(folder)
    return folder


def run_cli(argv: list[str]) -> int:
    """``subtomo ARGV`` with warnings printed to stderr, as a terminal shows them (pytest
    would otherwise collect them out of sight)."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        try:
            return main(argv)
        except SystemExit as exc:  # an option argparse refuses
            return int(exc.code)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


# ---- ways to break things --------------------------------------------------------------------
def sub(path: str, old: str, new: str, count: int = 0) -> None:
    p = Path(path)
    text = p.read_text()
    assert re.search(old, text, flags=re.M), (path, old)
    p.write_text(re.sub(old, new, text, count=count, flags=re.M))


def drop_column(path: str, label: str):
    return lambda: sub(path, rf"^_{label}\b", f"_rlnUnknownLabel{label[3:]}")


def remove(path: str):
    return lambda: os.remove(path)


def truncate(path: str):
    def f():
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
    return f


def header_nx(path: str, nx: int):
    def f():
        with mrcfile.open(path, "r+", permissive=True) as mrc:
            mrc.header.nx = nx
    return f


def read_only_folder():
    os.makedirs("RO")
    os.chmod("RO", stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


def a_file(name: str = "F"):
    return lambda: Path(name).write_text("not a folder\n")


def not_a_job():
    os.makedirs("NJ")
    Path("NJ/notes.txt").write_text("x\n")


def empty_table(path: str, first_column: str):
    return lambda: sub(path, rf"^{first_column}\t.*\n", "")


def out_in(argv: list[str], where: str) -> list[str]:
    i = argv.index("--o") + 1
    return [*argv[:i], f"{where}/{argv[i]}", *argv[i + 1:]]


def with_box(argv: list[str], box: str) -> list[str]:
    i = argv.index("--b") + 1
    return [*argv[:i], box, *argv[i + 1:]]


# (id, argv, how to break the project, a word the message must hold)
CASES = [
    # files named in a STAR file
    ("EX missing stack", EX, remove(STACK), "TS_01.mrcs"),
    ("RT missing tilt STAR", RT, remove(TS), "TS_01.star"),
    ("TA missing particles", TA, remove(PARTS), "particles"),
    ("HT missing subtomogram", HT, remove("H/Subtomograms/particle_000003.mrc"), "000003"),
    # truncated MRC files, headers that disagree with the data
    ("EX truncated stack", EX, truncate(STACK), "truncated"),
    ("RP truncated stack", RP, truncate(STACK), "truncated"),
    ("RT truncated stack", RT, truncate(STACK), "truncated"),
    ("TA truncated stack", TA, truncate(STACK), "truncated"),
    ("EX header size", EX, header_nx(STACK, 150), "header"),
    ("TA header size", TA, header_nx(STACK, 150), "header"),
    ("TA truncated reference", TA, truncate("R/half1.mrc"), "half1.mrc"),
    ("HT truncated subtomogram", HT, truncate("H/Subtomograms/particle_000003.mrc"), "000003"),
    ("E30 truncated tomogram", E30, truncate(TOMOGRAM), "truncated"),
    ("E30 header size", E30, header_nx(TOMOGRAM, 40), "header"),
    ("E30 missing tomogram", E30, remove(TOMOGRAM), "TS_026.mrc"),
    ("HT header size", HT, header_nx("H/Subtomograms/particle_000003.mrc", 12), "000003"),
    ("HT truncated CTF", [*HT, "--ctf"], truncate("H/Subtomograms/particle_000003_ctf.mrc"),
     "_ctf"),
    # a tilt table that names an image the stack does not hold
    ("EX tilt table names an image beyond the stack", EX, lambda: sub(TS, r"^21@", "45@"),
     "image 45"),
    ("RT tilt table names an image beyond the stack", RT, lambda: sub(TS, r"^21@", "45@"),
     "image 45"),
    # required columns missing, text in a number column
    ("EX no pre-exposure", EX, drop_column(TS, "rlnMicrographPreExposure"),
     "rlnMicrographPreExposure"),
    ("RP no x-tilt", RP, drop_column(TS, "rlnTomoXTilt"), "rlnTomoXTilt"),
    ("TX no x-tilt", TX, drop_column(TS, "rlnTomoXTilt"), "rlnTomoXTilt"),
    ("RT no voltage", RT, drop_column(TOMOS, "rlnVoltage"), "rlnVoltage"),
    ("TA no defocus angle", TA, drop_column(TS, "rlnDefocusAngle"), "rlnDefocusAngle"),
    ("EX text defocus", EX, lambda: sub(TS, r"\t39663\.\d+", "\tabc", 1), "rlnDefocusU"),
    ("RP no tomogram names", RP, drop_column(PARTS, "rlnTomoName"), "rlnTomoName"),
    ("TA absent tomogram", TA, lambda: sub(PARTS, r"^TS_01\t", "TS_09\t", 1), "TS_09"),
    ("HT text angle", HT, lambda: sub(HP, r"^(sim_TS_01\.tomostar\t)\S+", r"\1abc", 1),
     "rlnCoordinateX"),
    # empty particle tables
    ("EX no particles", EX, empty_table(PARTS, "TS_01"), "particles"),
    ("HT no particles", HT, empty_table(HP, "sim_TS_01.tomostar"), "particles"),
    ("PE no particles", PE, empty_table(HP, "sim_TS_01.tomostar"), "particles"),
    # boxes
    ("EX odd box", with_box(EX, "15"), None, "--b"),
    ("RP odd box", with_box(RP, "15"), None, "--b"),
    ("TA odd box", with_box(TA, "15"), None, "--b"),
    ("EX box wider than the images", with_box(EX, "400"), None, "--b"),
    ("TA box wider than the images", with_box(TA, "400"), None, "--b"),
    ("EX zero box", with_box(EX, "0"), None, "--b"),
    ("E30 odd box", with_box(E30, "15"), None, "--b"),
    ("EX zero crop", [*EX, "--crop", "0"], None, "--crop"),
    ("EX zero binning", [*EX, "--bin", "0"], None, "--bin"),
    ("EX text for the box", with_box(EX, "abc"), None, "--b"),
    ("EX unknown 2D padding", [*EX, "--pad2d", "3"], None, "--pad2d"),
    ("EX background radius beyond the box", [*EX, "--norm", "--bg_radius", "100"], None,
     "--bg_radius"),
    ("TA negative motion sigma", [*TA, "--motion", "--s_vel", "-1"], None, "--s_vel"),
    ("RT negative SNR", [*RT, "--ctf", "wiener", "--snr", "-1"], None, "--snr"),
    ("TX zero image size", [*TX, "--image_size", "0", "0"], None, "--image_size"),
    ("RP crop larger than box", [*RP, "--crop", "32"], None, "--crop"),
    ("TA unknown deformation model", [*TA, "--deformation", "--def_model", "bogus"], None,
     "--def_model"),
    ("SIM thinner than a box", [*SIM[:-3], "8", *SIM[-2:]], None, "--thickness"),
    # hetero options and folders
    ("HT zdim 0", [*HT, "--zdim", "0"], None, "--zdim"),
    ("HT no epochs", [*HT, "-n", "0"], None, "-n"),
    ("HT negative learning rate", [*HT, "--lr", "-1"], None, "--lr"),
    ("HT continue a folder that is no run", ["hetero", "train", "--continue", "NJ"],
     not_a_job, "NJ"),
    ("HT continue with other options", ["hetero", "train", "--continue", "HT", "--zdim", "5"],
     None, "--zdim"),
    ("HT load a missing checkpoint", ["hetero", "train", "--load", "HT/weights.7.pt"], None,
     "weights.7.pt"),
    ("HA epoch not trained", ["hetero", "analyze", "HT", "5"], None, "epoch 5"),
    ("HA truncated latents", ["hetero", "analyze", "HT", "1", "--ksample", "3", "--skip-umap"],
     truncate("HT/z.1.npy"), "z.1.npy"),
    ("HE truncated checkpoint", ["hetero", "eval-vol", "HT", "1", "kmeans", "3"],
     truncate("HT/weights.1.pt"), "weights.1.pt"),
    ("HT load a truncated checkpoint", ["hetero", "train", "--load", "HT/weights.1.pt"],
     truncate("HT/weights.1.pt"), "weights.1.pt"),
    ("HT mask of another box", [*HT, "--mask", TOMOGRAM], None, "--mask"),
    ("HS particles not the run's", ["hetero", "select", "HT", "1", "--i", HP, "--kmeans", "3",
                                    "--clusters", "0", "--o", "S.star"],
     lambda: sub(HP, r"^sim_TS_01\.tomostar\t.*\n", "", 1), "--i"),
    ("HE KMeans not analysed", ["hetero", "eval-vol", "HT", "1", "kmeans", "4"], None,
     "kmeans4"),
    ("HS cluster out of range", ["hetero", "select", "HT", "1", "--kmeans", "3", "--clusters",
                                 "7", "--o", "S.star"], None, "cluster 7"),
    ("TA continue a folder that is no job", [*TA, "--continue", "NJ"], not_a_job, "NJ"),
    # outputs that cannot be written
    ("EX read-only folder", out_in(EX, "RO"), read_only_folder, "read-only"),
    ("RT read-only folder", out_in(RT, "RO"), read_only_folder, "read-only"),
    ("HT read-only folder", out_in(HT, "RO"), read_only_folder, "read-only"),
    ("EX output under a file", out_in(EX, "F"), a_file(), "not a folder"),
    ("TX output under a file", out_in(TX, "F"), a_file(), "not a folder"),
    ("HT output under a file", out_in(HT, "F"), a_file(), "not a folder"),
    ("PE output under a file", ["poses", "export", "--i", HP, "--o", "F/p.pkl", "--box", "16"],
     a_file(), "not a folder"),
    ("SIM output under a file", out_in(SIM, "F"), a_file(), "not a folder"),
    ("HA read-only run", ["hetero", "analyze", "HT", "1", "--ksample", "3", "--skip-umap"],
     lambda: os.chmod("HT", 0o555), "read-only"),
]


@pytest.mark.parametrize("argv, breaks, word", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(work, capsys, argv, breaks, word):
    if breaks is not None:
        breaks()
    before = snapshot(work)
    try:
        status = run_cli(argv)
    finally:
        for folder in ("RO", "HT"):
            if (work / folder).is_dir():
                os.chmod(work / folder, 0o755)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("subtomo: error: ") and "Traceback" not in err
    assert word in lines[0], lines[0]
    assert len(lines[0]) < 250, lines[0]  # short
    assert snapshot(work) == before  # nothing written, no input changed


# ---- killed jobs -----------------------------------------------------------------------------
def _star_tables(job: str, name: str) -> str:
    """A STAR file of a job without its time-stamped comment line, the job folder's name in
    the file names it lists replaced by ``JOB``."""
    text = (Path(job) / name).read_text().replace(f"{job}/", "JOB/")
    return "".join(ln for ln in text.splitlines(True) if not ln.startswith("#"))


def test_tomo_align_killed_before_writing_runs_after_continue(work, capsys):
    """A kill before the job folder exists (or while it holds only folders): --continue runs
    the job from the start, as an uninterrupted run."""
    assert main(TA) == 0
    os.makedirs("K/temp")  # what a kill right after the first mkdir leaves
    assert main([*TA[:4], "K", *TA[5:], "--continue"]) == 0
    assert main([*TA[:4], "K2", *TA[5:], "--continue"]) == 0  # no folder at all
    for name in ("tomograms.star", "particles.star", "motion.star", "tilt_series/TS_01.star"):
        assert _star_tables("K", name) == _star_tables("OUT", name), name
        assert _star_tables("K2", name) == _star_tables("OUT", name), name


def test_tomo_align_killed_mid_run_resumes(work):
    """The state of a kill after the settings were saved, before a tilt series finished."""
    assert main(TA) == 0
    os.makedirs("K/temp")
    shutil.copy("OUT/temp/settings.json", "K/temp/settings.json")
    assert main([*TA[:4], "K", *TA[5:], "--r", "3", "--continue"]) == 2  # other options
    assert sorted(p.name for p in Path("K").rglob("*")) == ["settings.json", "temp"]
    assert main([*TA[:4], "K", *TA[5:], "--continue"]) == 0
    for name in ("tomograms.star", "particles.star", "motion.star", "tilt_series/TS_01.star"):
        assert _star_tables("K", name) == _star_tables("OUT", name), name


def _killed_after(run: Path, epochs: int, to: Path) -> None:
    """The files a hetero run has after ``epochs`` epochs (a SIGKILL then)."""
    to.mkdir()
    for p in run.iterdir():
        m = re.match(r"(weights|z)\.(\d+)\.", p.name)
        if p.is_file() and (m is None or int(m.group(2)) < epochs) and p.name != "log.tsv":
            shutil.copy(p, to / p.name)


def test_hetero_train_killed_resumes_to_the_same_latents(work):
    """Killed after its first epoch, before any, or before the folder existed: --continue
    (with the same command) ends with the latents of the uninterrupted run."""
    full = np.load("HT/z.1.npy")
    _killed_after(Path("HT"), 1, Path("K1"))
    assert main(["hetero", "train", "--continue", "K1"]) == 0
    _killed_after(Path("HT"), 0, Path("K0"))
    assert main(["hetero", "train", "--continue", "K0"]) == 0
    assert main([*HT[:5], "K", *HT[6:], "--continue", "K"]) == 0  # nothing written yet
    for folder in ("K1", "K0", "K"):
        assert np.array_equal(np.load(f"{folder}/z.1.npy"), full), folder
        assert not Path(folder, "z.2.npy").exists()  # the run's own epoch count


def _kill_when(argv: list[str], marker: Path, timeout_s: float = 120.0) -> None:
    """Start ``subtomo ARGV`` in a process and SIGKILL it once ``marker`` exists (or let it end
    if it is faster)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "subtomo", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while process.poll() is None and not marker.exists():
        assert time.monotonic() - start < timeout_s, "the job wrote nothing"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_jobs_killed_by_sigkill_finish_after_continue(work):
    """A real SIGKILL in the middle of hetero train and of tomo-align, then ``--continue`` with
    the same command: the results of the uninterrupted runs."""
    train = [*HT[:5], "K", *HT[6:]]
    _kill_when(train, Path("K/weights.0.pt"))
    assert main([*train, "--continue", "K"]) == 0
    # equal up to the summation order of another thread count: under load the killed process
    # can finish its last epoch before the kill lands, and it ran with its own torch threads
    np.testing.assert_allclose(np.load("K/z.1.npy"), np.load("HT/z.1.npy"), rtol=0, atol=1e-5)
    align = [*TA[:4], "A", *TA[5:]]
    _kill_when(align, Path("A/temp/settings.json"))
    assert main([*align, "--continue"]) == 0
    assert main(TA) == 0
    for name in ("tomograms.star", "particles.star", "motion.star", "tilt_series/TS_01.star"):
        assert _star_tables("A", name) == _star_tables("OUT", name), name
