"""The ``subtomo`` command end to end, through :func:`subtomo.cli.main`.

Expected numbers are worked by hand (downgrade) or come from scipy (pose matrices), not from
re-running subtomo's own conversions.
"""

# STAR rows below are laid out as RELION writes them, wider than the line limit.
# ruff: noqa: E501

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from subtomo.cli import main
from subtomo.io.star import read_particles, write_particles
from subtomo.simulate.particles import random_particle_set

# A RELION 3.1 refine output: pixel size 2.5 Å; origins chosen as exact multiples of 0.5 px.
RUN_IT023 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
opticsGroup1            1   300.000000     2.700000     0.070000     2.500000           64            3


# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnMicrographName #4
_rlnImageName #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnOriginXAngst #9
_rlnOriginYAngst #10
_rlnOriginZAngst #11
_rlnOpticsGroup #12
_rlnClassNumber #13
  100.000000   200.000000    50.000000 TS_01.tomostar Subtomograms/TS_01/000001_64.mrc  -45.500000    30.250000   170.000000     5.000000    -7.500000     2.500000            1            1
  310.500000    20.000000   150.000000 TS_01.tomostar Subtomograms/TS_01/000002_64.mrc  120.000000   150.000000   -10.125000    -1.250000     0.000000    12.500000            1            2
   64.000000   480.000000    99.000000 TS_02.tomostar Subtomograms/TS_02/000003_64.mrc    0.000000    90.000000     0.000000     0.000000    10.000000    -3.750000            1            1

"""

# centre = coordinate - origin / 2.5 Å, worked by hand from the rows above
DOWNGRADED_XYZ = [
    (100.0 - 2.0, 200.0 + 3.0, 50.0 - 1.0),
    (310.5 + 0.5, 20.0 - 0.0, 150.0 - 5.0),
    (64.0 - 0.0, 480.0 - 4.0, 99.0 + 1.5),
]
ORIGINS_PX = [(2.0, -3.0, 1.0), (-0.5, 0.0, 5.0), (0.0, 4.0, -1.5)]
ANGLES = [(-45.5, 30.25, 170.0), (120.0, 150.0, -10.125), (0.0, 90.0, 0.0)]


def single_table(path: Path):
    blocks = starfile.read(path, always_dict=True)
    assert len(blocks) == 1, list(blocks)
    return next(iter(blocks.values()))


@pytest.fixture
def relion5_star(tmp_path: Path) -> Path:
    ps = random_particle_set(40, seed=7)
    path = tmp_path / "in.star"
    assert write_particles(ps, path, "relion5") == "relion5"
    return path


def test_star_info_relion5(capsys, relion5_star):
    assert main(["star", "info", str(relion5_star)]) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["flavour"] == "relion5"
    assert fields["particles"] == "40"
    assert fields["coordinates"] == "centred Å"
    assert fields["pixel_size_A"] == "[5.0]"
    assert fields["tomograms"] == "3"


def test_star_downgrade_applies_origins(capsys, tmp_path):
    star = tmp_path / "run_it023_data.star"
    star.write_text(RUN_IT023)
    assert main(["star", "downgrade", "-s", str(star)]) == 0
    out_path = tmp_path / "run_it023_data_rln3.0.star"
    assert out_path.is_file()
    assert str(out_path) in capsys.readouterr().out
    df = single_table(out_path)
    assert len(df) == 3
    np.testing.assert_allclose(
        df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float),
        DOWNGRADED_XYZ, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(
        df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float), ANGLES)
    assert not {"rlnOriginX", "rlnOriginY", "rlnOriginZ", "rlnOriginXAngst"} & set(df.columns)
    assert list(df["rlnImageName"]) == [f"Subtomograms/TS_0{1 + (i == 2)}/00000{i + 1}_64.mrc"
                                        for i in range(3)]
    assert list(df["rlnClassNumber"]) == [1, 2, 1]
    # RELION 3.0 pixel size: detector pixel (µm) × 10⁴ / magnification = 2.5 Å
    pixel_size_A = df["rlnDetectorPixelSize"].to_numpy(float) * 1e4 / df["rlnMagnification"].to_numpy(
        float)
    np.testing.assert_allclose(pixel_size_A, 2.5, rtol=1e-12)
    assert read_particles(out_path).flavour == "warp"  # .tomostar names: Warp reads it as is


def test_star_downgrade_keep_origins(tmp_path):
    star = tmp_path / "run_it023_data.star"
    star.write_text(RUN_IT023)
    out_path = tmp_path / "kept.star"
    assert main(["star", "downgrade", "--s", str(star), "--o", str(out_path),
                 "--keep_origins"]) == 0
    assert not (tmp_path / "run_it023_data_rln3.0.star").exists()
    df = single_table(out_path)
    np.testing.assert_allclose(df[["rlnOriginX", "rlnOriginY", "rlnOriginZ"]].to_numpy(float),
                               ORIGINS_PX, rtol=0, atol=1e-12)
    original = np.array([(100.0, 200.0, 50.0), (310.5, 20.0, 150.0), (64.0, 480.0, 99.0)])
    np.testing.assert_array_equal(
        df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float), original)
    np.testing.assert_array_equal(
        df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float), ANGLES)
    assert "rlnOriginXAngst" not in df


def _select(star: Path, out: Path, seed: int, n: int = 10) -> list[str]:
    assert main(["select", "random", "--i", str(star), "--n", str(n), "--seed", str(seed),
                 "--o", str(out)]) == 0
    return list(starfile.read(out, always_dict=True)["particles"]["rlnImageName"])


def test_select_random(capsys, tmp_path, relion5_star):
    everything = starfile.read(relion5_star, always_dict=True)["particles"]
    names = _select(relion5_star, tmp_path / "sub.star", seed=1)
    assert len(names) == 10
    assert len(set(names)) == 10
    assert set(names) <= set(everything["rlnImageName"])
    # file order is kept
    position = {name: i for i, name in enumerate(everything["rlnImageName"])}
    assert [position[n] for n in names] == sorted(position[n] for n in names)
    assert read_particles(tmp_path / "sub.star").flavour == "relion5"
    # the selected rows are the input rows, unchanged
    sub = starfile.read(tmp_path / "sub.star", always_dict=True)["particles"]
    original = everything.set_index("rlnImageName").loc[names].reset_index()
    for column in ("rlnCenteredCoordinateXAngst", "rlnAngleTilt", "rlnOriginZAngst"):
        np.testing.assert_array_equal(sub[column].to_numpy(), original[column].to_numpy())

    assert _select(relion5_star, tmp_path / "again.star", seed=1) == names
    assert _select(relion5_star, tmp_path / "other.star", seed=2) != names
    assert "10 randomly selected" in capsys.readouterr().out


def test_select_random_keeps_relion30_flavour(tmp_path):
    star = tmp_path / "run_it023_data.star"
    star.write_text(RUN_IT023)
    assert main(["star", "downgrade", "-s", str(star), "--keep_origins"]) == 0
    old = tmp_path / "run_it023_data_rln3.0.star"
    before = read_particles(old).flavour
    assert main(["select", "random", "--i", str(old), "--n", "2", "--o",
                 str(tmp_path / "two.star")]) == 0
    df = single_table(tmp_path / "two.star")
    assert len(df) == 2
    assert read_particles(tmp_path / "two.star").flavour == before


def test_poses_export(capsys, tmp_path, relion5_star):
    out = tmp_path / "poses.pkl"
    assert main(["poses", "export", "--i", str(relion5_star), "-D", "48", "--Apix", "5",
                 "-o", str(out)]) == 0
    assert "40 particles" in capsys.readouterr().out
    with open(out, "rb") as handle:
        rot, trans, euler = pickle.load(handle)
    df = starfile.read(relion5_star, always_dict=True)["particles"]
    n = len(df)
    assert rot.shape == (n, 3, 3) and trans.shape == (n, 3) and euler.shape == (n, 3)
    angles = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    expected = np.transpose(
        Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix(), (0, 2, 1))
    np.testing.assert_allclose(rot, expected, atol=2e-6)
    origins = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    np.testing.assert_allclose(trans, origins / 5.0 / 48, rtol=1e-12, atol=1e-15)
    assert np.abs(trans).max() > 0  # the shifts are not all zero
    # the Euler angles stored describe the same rotations
    np.testing.assert_allclose(
        Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix(),
        Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix(), atol=1e-9)


def test_demo_writes_every_output(tmp_path):
    assert main(["demo", "--o", str(tmp_path / "demo"), "--n", "60", "--subtomograms", "0",
                 "--classification", "0", "--tiltseries", "0", "--hetero", "0"]) == 0
    out = tmp_path / "demo" / "interop"
    for name in ("particles_relion5.star", "particles_relion30.star", "particles_warp.star",
                 "particles.tbl", "particles.doc", "subset.star", "poses.pkl"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    assert read_particles(out / "particles_relion5.star").flavour == "relion5"
    assert read_particles(out / "particles_warp.star").flavour == "warp"
    assert len(read_particles(out / "subset.star")) == 20
    assert len((out / "particles.tbl").read_text().splitlines()) == 60
    with open(out / "poses.pkl", "rb") as handle:
        assert len(pickle.load(handle)[0]) == 20
    assert not list(out.glob(".*.tmp"))


def test_demo_checks_compare_in_their_direction():
    from subtomo.demo_checks import Check, exit_status

    at_most, at_least = Check("p", "f", 1.0, "<=", 1.0), Check("p", "f", 0.9, ">=", 0.9)
    assert at_most.passed and at_least.passed
    assert not Check("p", "f", 1.01, "<=", 1.0).passed
    assert not Check("p", "f", 0.89, ">=", 0.9).passed
    assert not Check("p", "f", float("nan"), "<=", 1.0).passed
    assert exit_status([at_most, at_least]) == 0
    assert exit_status([at_most, Check("p", "f", 2.0, "<=", 1.0)]) == 1


def test_demo_exits_non_zero_when_a_part_misses_its_bound(tmp_path, monkeypatch, capsys):
    """The exit status follows every part's checks, not the STAR round trips alone: the same
    demo passes with the heterogeneity part at its bounds and fails when its junk removal
    falls short of its bound (the part replaced by one that returns those figures)."""
    import subtomo.demo
    from subtomo.demo_checks import EXPECTED

    at_bounds = {name: bound for name, (_, bound) in EXPECTED["hetero"].items()}
    assert "junk_removed" in at_bounds
    short = {**at_bounds, "junk_removed": at_bounds["junk_removed"] - 0.05}
    args = ["demo", "--o", str(tmp_path / "demo"), "--n", "30", "--subtomograms", "0",
            "--classification", "0", "--tiltseries", "0", "--hetero", "10"]
    for figures, status in ((at_bounds, 0), (short, 1)):
        monkeypatch.setattr(subtomo.demo, "run_hetero_demo",
                            lambda *args, figures=figures, **kwargs: dict(figures))
        assert main(args) == status
    out = capsys.readouterr().out
    assert "FAILED: hetero junk_removed" in out


def test_hetero_demo_removes_the_junk_and_keeps_the_good_particles(tmp_path):
    """The heterogeneity part at the demo's settings, against the simulated truth: every figure
    within its printed bound, and the selection and maps written."""
    from rich.console import Console

    from subtomo.demo import run_hetero_demo
    from subtomo.demo_checks import checks

    figures = run_hetero_demo(tmp_path / "het", 200, 0, Console(quiet=True))
    assert figures["junk"] == 60
    failed = [c for c in checks("hetero", figures) if not c.passed]
    assert not failed, failed
    job = tmp_path / "het" / "Hetero" / "job001"
    assert (job / "selected.star").is_file()
    assert len(read_particles(job / "selected.star")) == round(
        figures["good_kept"] * 140 + (1 - figures["junk_removed"]) * 60)


def test_classification_demo_recovers_the_simulated_classes(tmp_path):
    """Initial model → classification → selection of the default (quick) demo, against the
    simulation's true classes and maps."""
    from rich.console import Console

    from subtomo.demo import QUICK, run_classification_demo

    figures = run_classification_demo(tmp_path / "cls", QUICK.classification, 0,
                                      Console(quiet=True), QUICK)
    from subtomo.demo_checks import checks

    assert not [c for c in checks("classification", figures) if not c.passed]  # the printed bounds
    last_model = sum(QUICK.initial_model[:3])
    for name in (f"InitialModel/job001/run_it{last_model:03d}_class001.mrc",
                 f"InitialModel/job001/run_it{last_model:03d}_data.star",
                 "Class3D/job001/run_classes.png",
                 f"Class3D/job001/run_it{QUICK.classify_iterations:03d}_model.star",
                 "Select/job001/particles.star"):
        assert (tmp_path / "cls" / name).is_file(), name
    assert figures["initial_model_fsc05_A"] <= 30.0
    assert figures["adjusted_rand_index"] >= 0.9
    for t in (1, 2, 3):
        assert figures[f"class_{t}_fsc05_A"] <= 20.0
    assert figures["selected_purity"] >= 0.95
    selected = read_particles(tmp_path / "cls" / "Select" / "job001" / "particles.star")
    assert len(selected) == figures["selected_particles"]
    assert set(selected.particles["rlnClassNumber"]) == {int(figures["selected_class"])}


def test_averaging_demo_reports_consistent_resolutions(tmp_path):
    """The averaging half of the demo runs end to end and its figures agree with the truth."""
    from rich.console import Console

    from subtomo.demo import QUICK, run_averaging_demo

    figures = run_averaging_demo(tmp_path / "avg", QUICK.subtomograms, 0, Console(quiet=True),
                                 QUICK.refine_iterations, QUICK.averaging_noise)
    from subtomo.demo_checks import checks

    assert not [c for c in checks("averaging", figures) if not c.passed]  # the printed bounds
    assert figures["median_pose_error_refined_deg"] < 0.6 * figures["median_pose_error_start_deg"]
    job = "Refine3D/job001/"
    for name in (f"{job}run_class001.mrc", f"{job}run_half1_class001_unfil.mrc", "mask_c6.mrc",
                 "postprocess.mrc", f"{job}run_class001_fsc.png", "random_subset.mrc"):
        assert (tmp_path / "avg" / name).is_file(), name
    # the gold-standard estimate is within two shells of the truth's FSC-0.5 resolution
    shell = lambda res: 32 * 4.0 / res  # noqa: E731
    assert abs(shell(figures["half_map_resolution_A"]) - shell(
        figures["true_fsc05_resolution_A"])) <= 2


def test_tiltseries_demo_recovers_the_truth(tmp_path):
    """The tilt-series part of the demo: picking finds the particles where they are, the
    subtomograms extracted at the picks rebuild the map as reconstruct-particle does, and
    refinement from the picks' orientations brings the poses back (figures against the
    simulated truth)."""
    from rich.console import Console

    from subtomo.demo import run_tiltseries_demo

    figures = run_tiltseries_demo(tmp_path / "ts", 40, 0, Console(quiet=True))
    from subtomo.demo_checks import checks

    assert not [c for c in checks("tiltseries", figures) if not c.passed]  # the printed bounds
    assert figures["pick_precision"] >= 0.95 and figures["pick_recall"] >= 0.9
    assert 36 <= figures["particles"] <= 42
    # extraction loses nothing against the direct reconstruction from the tilt series
    assert figures["extract_reconstruct_fsc05_truth_A"] <= 1.05 * figures[
        "reconstruct_particle_fsc05_truth_A"]
    assert figures["median_pose_error_refined_deg"] < 0.4 * figures[
        "median_pose_error_start_deg"]
    assert figures["refined_fsc05_truth_A"] <= 1.05 * figures[
        "reconstruct_particle_fsc05_truth_A"]
    for name in ("rec_TS_01.mrc", "postprocess.mrc", "Extract/particles.star",
                 "Refine3D/job001/run_class001.mrc"):
        assert (tmp_path / "ts" / name).is_file(), name


def test_tomo_align_demo_recovers_the_geometry(tmp_path, monkeypatch):
    """The tomo-align part of the demo: per-tilt errors and motion (2.75 px rms) are corrected
    to under 0.5 px against the truth, and the average comes within 10 % of the one with the
    true geometry."""
    from rich.console import Console

    from subtomo.demo_tomo_align import run_tomo_align_demo

    monkeypatch.chdir(tmp_path)  # a relative output folder, as `subtomo demo` gives it
    figures = run_tomo_align_demo(Path("ta"), 40, 0, Console(quiet=True))
    from subtomo.demo_checks import checks

    assert not [c for c in checks("tomo_align", figures) if not c.passed]  # the printed bounds
    assert Path.cwd() == tmp_path  # the demo's working directory is given back
    assert figures["error_given_px"] > 2.0
    assert figures["error_aligned_px"] < 0.5
    assert figures["fsc05_aligned_A"] <= 1.1 * figures["fsc05_true_geometry_A"]
    assert figures["fsc05_given_A"] > 1.5 * figures["fsc05_aligned_A"]
    job = tmp_path / "ta" / "project" / "TomoAlign" / "job004"
    # RELION runs in the project folder: the files it reads name paths relative to it
    opt = (tmp_path / "ta" / "project" / "ReconstructParticle" / "job003" /
           "optimisation_set.star").read_text()
    assert "TomoAlign/job002/particles.star" in opt and "ta/project" not in opt
    for name in ("tomograms.star", "particles.star", "motion.star", "optimisation_set.star",
                 "Trajectories/TS_01_x1.ply", "Trajectories/TS_01_x8.ply"):
        assert (job / name).is_file(), name


def test_series_demo_gains_at_the_tomo_align_step(tmp_path, monkeypatch):
    """The 2D-stack part of the demo: stacks cut once with per-tilt errors; refine →
    tomo-align --motion → refine on the same stacks comes within 10 % of the true geometry's
    map and gains at least 5 % at the tomo-align step (measured 50.1 → 21.4 Å, truth 21.2 Å)."""
    from rich.console import Console

    from subtomo.demo_checks import checks
    from subtomo.demo_series import run_series_demo

    monkeypatch.chdir(tmp_path)
    figures = run_series_demo(Path("s"), 40, 0, Console(quiet=True))
    assert not [c for c in checks("series", figures) if not c.passed]
    assert Path.cwd() == tmp_path
    assert figures["aligned_refined_fsc05_A"] <= 1.1 * figures["true_geometry_fsc05_A"]
    assert figures["refined_fsc05_A"] >= 1.05 * figures["aligned_refined_fsc05_A"]
    project = tmp_path / "s" / "project"
    assert not list((project / "TomoAlign" / "job002").glob("Subtomograms"))  # no re-cut
    opt = (project / "Refine3D" / "job003" / "run_optimisation_set.star").read_text()
    assert "TomoAlign/job002/tomograms.star" in opt and "TomoAlign/job002/motion.star" in opt


def test_start_up_loads_no_numerical_library():
    """``subtomo --help`` and option errors answer before torch, pandas, SciPy or matplotlib
    load: every command defers its imports (tests/test_architecture.py, REASONS)."""
    code = ("import sys, subtomo.cli; print(sorted({'torch', 'pandas', 'scipy', 'matplotlib', "
            "'sklearn', 'starfile'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
