"""``subtomo select`` by class, ``duplicates`` and ``neighbours``: exact on constructed sets.

Particles are placed by their centres in Å (shifts applied); coordinates are then
(centre + origin) / pixel size, so large origins make raw coordinates and centres disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.cli import main
from subtomo.errors import InputError
from subtomo.geometry.euler import euler_to_matrix
from subtomo.io.particles import ParticleSet
from subtomo.io.star import read_particles, write_particles
from subtomo.selection import remove_duplicates, select_class, select_neighbours

TOMO_APIX = 10.0  # Å per tomogram pixel (coordinates)
IMAGE_APIX = 5.0  # Å per subtomogram pixel
SIZE_PX = (1000, 1000, 500)
FLAVOURS = ("relion5", "relion4", "relion31", "relion30")


def particle_set(
    centres_A: np.ndarray, origins_A: np.ndarray | None = None, tomos: list[str] | None = None,
    *, subtomogram_angles: np.ndarray | None = None, **columns: object,
) -> ParticleSet:
    """Particles whose centres (tomogram frame, Å from the corner) are ``centres_A``.

    ``origins_A`` are tomogram-frame shifts; with ``subtomogram_angles`` (deg) the stored
    origins are turned into the subtomogram frame, as RELION 4/5 keep them.
    """
    centres = np.asarray(centres_A, float)
    n = len(centres)
    shifts = np.zeros((n, 3)) if origins_A is None else np.asarray(origins_A, float)
    tomos = tomos or ["TS_01"] * n
    stored = shifts
    df = pd.DataFrame({
        "rlnTomoName": tomos,
        "rlnCoordinateX": (centres[:, 0] + shifts[:, 0]) / TOMO_APIX,
        "rlnCoordinateY": (centres[:, 1] + shifts[:, 1]) / TOMO_APIX,
        "rlnCoordinateZ": (centres[:, 2] + shifts[:, 2]) / TOMO_APIX,
        "rlnImageName": [f"{i:06d}@particles.mrcs" for i in range(n)],
        "rlnAngleRot": np.zeros(n), "rlnAngleTilt": np.zeros(n), "rlnAnglePsi": np.zeros(n),
    })
    if subtomogram_angles is not None:
        frames = euler_to_matrix(torch.tensor(subtomogram_angles, dtype=torch.float64)).numpy()
        stored = np.einsum("nji,nj->ni", frames, shifts)  # A^T · tomogram shift
        for i, axis in enumerate(("Rot", "Tilt", "Psi")):
            df[f"rlnTomoSubtomogram{axis}"] = subtomogram_angles[:, i]
    for i, axis in enumerate("XYZ"):
        df[f"rlnOrigin{axis}Angst"] = stored[:, i]
    df["rlnOpticsGroup"] = 1
    for label, values in columns.items():
        df[label] = values
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.07],
        "rlnImagePixelSize": [IMAGE_APIX], "rlnImageSize": [32], "rlnImageDimensionality": [3],
        "rlnTomoTiltSeriesPixelSize": [TOMO_APIX],
    })
    names = sorted(set(tomos))
    tomograms = pd.DataFrame({
        "rlnTomoName": names, "rlnTomoSizeX": SIZE_PX[0], "rlnTomoSizeY": SIZE_PX[1],
        "rlnTomoSizeZ": SIZE_PX[2], "rlnTomoTiltSeriesPixelSize": TOMO_APIX,
    })
    return ParticleSet(particles=df, optics=optics, tomograms=tomograms, flavour="relion4",
                       source="constructed")


def write(ps: ParticleSet, path: Path, flavour: str) -> Path:
    assert write_particles(ps, path, flavour) == flavour
    assert read_particles(path).flavour == flavour
    return path


def kept_rows(path: Path) -> list[int]:
    """Positions in the constructed set of the particles in ``path`` (from rlnImageName)."""
    names = read_particles(path).particles["rlnImageName"]
    return [int(name.split("@")[0]) for name in names]


def run(argv: list[str | Path], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- duplicates ------------------------------------------------------------------------------
def duplicates_case() -> tuple[ParticleSet, list[int]]:
    """Clusters of known size and scores (min distance 30 Å) and the rows that must stay."""
    base = np.array([4000.0, 4000.0, 2000.0])
    rows = [  # (centre offset Å, origin Å, tomogram, score)
        # cluster of 3; row 1 has a far coordinate (+1000 Å) that its origin brings back
        ((0, 0, 0), (0, 0, 0), "TS_01", 0.2),
        ((10, 5, 0), (1000, -800, 300), "TS_01", 0.9),  # 0.9 wins
        ((-8, 12, 6), (40, 40, 40), "TS_01", 0.5),
        # same coordinates as each other, origins 200 Å apart: centres far, both stay
        ((1000, 0, 0), (0, 0, 0), "TS_01", 0.1),
        ((1200, 0, 0), (-200, 0, 0), "TS_01", 0.3),
        # same centre as the winner of the first cluster, other tomogram: stays
        ((10, 5, 0), (0, 0, 0), "TS_02", 0.05),
        # cluster of 2, tie in score: the first in file order stays
        ((0, 2000, 0), (15, 0, 0), "TS_01", 0.7),
        ((3, 2000, 4), (-15, 0, 0), "TS_01", 0.7),
        # boundary: 30 − 0.01 Å apart is a duplicate (higher score stays) ...
        ((0, 0, 1000), (0, 0, 0), "TS_01", 0.4),
        ((29.99, 0, 1000), (7, -3, 2), "TS_01", 0.6),
        # ... 30 + 0.01 Å apart is not
        ((2000, 0, 1000), (0, 0, 0), "TS_01", 0.4),
        ((2000, 30.01, 1000), (7, -3, 2), "TS_01", 0.6),
        # chain a–b–c, a and c 40 Å apart: best b removes both neighbours
        ((0, 3000, 0), (0, 0, 0), "TS_01", 0.3),
        ((20, 3000, 0), (0, 0, 0), "TS_01", 0.8),
        ((40, 3000, 0), (0, 0, 0), "TS_01", 0.3),
        # chain with the middle worst: both ends stay (the middle is removed first)
        ((0, 3500, 0), (0, 0, 0), "TS_01", 0.9),
        ((20, 3500, 0), (0, 0, 0), "TS_01", 0.1),
        ((40, 3500, 0), (0, 0, 0), "TS_01", 0.8),
    ]
    offsets, origins, tomos, scores = zip(*rows, strict=True)
    ps = particle_set(base + np.array(offsets, float), np.array(origins, float), list(tomos),
                      rlnMaxValueProbDistribution=list(scores))
    expected = [1, 3, 4, 5, 6, 9, 10, 11, 13, 15, 17]
    return ps, expected


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_duplicates_keep_the_most_probable(tmp_path, flavour):
    ps, expected = duplicates_case()
    star = write(ps, tmp_path / "in.star", flavour)
    out = tmp_path / "out.star"
    kept = remove_duplicates(star, out, 30.0)
    assert kept_rows(out) == expected
    assert len(kept) == len(expected)
    assert read_particles(out).flavour == flavour
    # the kept rows are the input rows, unchanged
    before = read_particles(star).particles.iloc[expected].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_particles(out).particles, before)


def test_duplicates_with_subtomogram_frames(tmp_path):
    """RELION 4/5 origins live in the subtomogram frame; the centre uses the rotated shift."""
    ps, expected = duplicates_case()
    angles = np.random.default_rng(4).uniform(-180, 180, (len(ps), 3))
    origins = ps.particles[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
    centres = ps.particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    centres = centres * TOMO_APIX - origins
    turned = particle_set(centres, origins, list(ps.particles["rlnTomoName"]),
                          subtomogram_angles=angles,
                          rlnMaxValueProbDistribution=ps.particles["rlnMaxValueProbDistribution"])
    for flavour in ("relion5", "relion4"):
        star = write(turned, tmp_path / f"{flavour}.star", flavour)
        remove_duplicates(star, tmp_path / f"{flavour}_out.star", 30.0)
        assert kept_rows(tmp_path / f"{flavour}_out.star") == expected


def test_duplicates_score_fallbacks(tmp_path):
    centres = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0], [500, 0, 0], [505, 0, 0]], float)
    centres += 1000.0
    loglike = [1.0, 5.0, 2.0, -3.0, -1.0]
    both = particle_set(centres, rlnLogLikeliContribution=loglike,
                        rlnMaxValueProbDistribution=[0.9, 0.1, 0.1, 0.1, 0.2])
    remove_duplicates(write(both, tmp_path / "both.star", "relion31"), tmp_path / "a.star", 15.0)
    # probability first: 0 stays and removes 1; 2 is 20 Å from 0 and its duplicate 1 is gone
    assert kept_rows(tmp_path / "a.star") == [0, 2, 4]

    only_loglike = particle_set(centres, rlnLogLikeliContribution=loglike)
    star = write(only_loglike, tmp_path / "ll.star", "relion31")
    remove_duplicates(star, tmp_path / "b.star", 15.0)
    assert kept_rows(tmp_path / "b.star") == [1, 4]

    no_score = write(particle_set(centres), tmp_path / "none.star", "relion31")
    remove_duplicates(no_score, tmp_path / "c.star", 15.0)
    assert kept_rows(tmp_path / "c.star") == [0, 2, 3]  # file order decides

    with pytest.raises(InputError, match="numbers") as info:
        remove_duplicates(star, tmp_path / "d.star", 15.0, score_label="rlnImageName")
    assert info.value.field == "rlnImageName"
    # an explicit score overrides the defaults: lowest loglike rows win with its negative
    negative = particle_set(centres, rlnLogLikeliContribution=loglike,
                            rlnNegLogLike=[-v for v in loglike])
    star_neg = write(negative, tmp_path / "neg.star", "relion31")
    remove_duplicates(star_neg, tmp_path / "f.star", 15.0, score_label="rlnNegLogLike")
    assert kept_rows(tmp_path / "f.star") == [0, 2, 3]
    with pytest.raises(InputError, match="score column") as info:
        remove_duplicates(star, tmp_path / "e.star", 15.0, score_label="rlnNoSuchScore")
    assert info.value.field == "rlnNoSuchScore"


def test_duplicates_exactly_at_the_distance_are_kept(tmp_path):
    """Closer than the distance means strictly closer: exactly 30 Å apart both stay."""
    centres = np.array([[100, 100, 100], [130, 100, 100], [100, 130, 100], [120, 120, 100]],
                       float)
    for flavour in ("relion5", "relion30"):
        star = write(particle_set(centres), tmp_path / f"{flavour}.star", flavour)
        remove_duplicates(star, tmp_path / f"{flavour}_out.star", 30.0)
        # row 3 is 22.4 Å from row 0 and 20.6 Å from rows 1, 2; file order: 0 stays first
        assert kept_rows(tmp_path / f"{flavour}_out.star") == [0, 1, 2]


def test_duplicates_cli(tmp_path, capsys):
    ps, expected = duplicates_case()
    star = write(ps, tmp_path / "in.star", "relion5")
    out = tmp_path / "out.star"
    code, stdout, _ = run(["select", "duplicates", "--i", star, "--min_distance", "30",
                           "--o", out], capsys)
    assert code == 0
    assert kept_rows(out) == expected
    assert stdout.strip() == (f"Kept {len(expected)} of {len(ps)} particles (duplicates within "
                              f"30 Å removed); wrote {out}.")
    code, _, err = run(["select", "duplicates", "--i", star, "--min_distance", "0",
                        "--o", tmp_path / "zero.star"], capsys)
    assert code == 2 and "--min_distance" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "zero.star").exists()


# ---- neighbours ------------------------------------------------------------------------------
SPACING = 100.0
TOLERANCE = 10.0


def lattice_case(rng: np.random.Generator) -> tuple[ParticleSet, dict[str, list[int]]]:
    """A jittered 5×5 square lattice (spacing 100 Å) plus outliers, with random origins.

    Neighbours at 100 ± 10 Å: corners 2, edges 3, interior 4; diagonals (141 Å) do not count.
    """
    ij = np.array([(i, j) for j in range(5) for i in range(5)], float)
    lattice = np.c_[ij * SPACING, np.zeros(25)] + rng.uniform(-2, 2, (25, 3))
    edge = (ij == 0) | (ij == 4)
    corner, side = edge.all(axis=1), edge.any(axis=1) & ~edge.all(axis=1)
    extras = np.array([
        [2000, 2000, 0],  # isolated
        [3000, 0, 0], [3060, 0, 0],  # a pair at the wrong spacing
        [3000, 1000, 0], [3100, 1000, 0],  # a dimer at the right spacing: 1 neighbour each
        [-100, 0, 0],  # 100 Å from corner (0, 0) but in another tomogram
    ], float)
    centres = np.r_[lattice, extras] + np.array([1000.0, 1000.0, 1000.0])
    origins = rng.uniform(-50, 50, (len(centres), 3))  # raw coordinates are no lattice
    tomos = ["TS_01"] * (len(centres) - 1) + ["TS_02"]
    ps = particle_set(centres, origins, tomos)
    rows = np.arange(25)
    expected = {
        "1": [*range(25), 28, 29],
        "2": list(range(25)),
        "3": list(rows[~corner]),
        "4": list(rows[~corner & ~side]),
    }
    assert len(expected["3"]) == 21 and len(expected["4"]) == 9
    return ps, expected


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_neighbours_on_a_lattice(tmp_path, flavour):
    ps, expected = lattice_case(np.random.default_rng(7))
    star = write(ps, tmp_path / "in.star", flavour)
    for n, rows in expected.items():
        out = tmp_path / f"n{n}.star"
        kept = select_neighbours(star, out, SPACING, TOLERANCE, int(n))
        assert kept_rows(out) == rows, n
        assert len(kept) == len(rows)
        assert read_particles(out).flavour == flavour
    with pytest.raises(InputError, match="no particle has 5 neighbours") as info:
        select_neighbours(star, tmp_path / "n5.star", SPACING, TOLERANCE, 5)
    assert info.value.field == "--min_neighbours"
    assert not (tmp_path / "n5.star").exists()


def test_neighbours_need_shifts_applied(tmp_path):
    """Without the origins (raw coordinates) the jittered lattice falls apart."""
    ps, expected = lattice_case(np.random.default_rng(7))
    raw = ps.particles.copy()
    raw[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]] = 0.0
    ps_raw = particle_set(raw[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
                          * TOMO_APIX, None, list(raw["rlnTomoName"]))
    star = write(ps_raw, tmp_path / "raw.star", "relion31")
    kept = select_neighbours(star, tmp_path / "out.star", SPACING, TOLERANCE, 1)
    assert kept_rows(tmp_path / "out.star") != expected["1"]
    assert len(kept) < len(expected["1"])


def test_neighbour_bounds_are_inclusive(tmp_path):
    centres = np.array([[0, 0, 0], [110, 0, 0], [0, 90, 0], [1000, 0, 0], [1110.5, 0, 0],
                        [1000, 89.5, 0]], float) + 500.0
    star = write(particle_set(centres), tmp_path / "in.star", "relion5")
    select_neighbours(star, tmp_path / "out.star", SPACING, TOLERANCE, 1)
    assert kept_rows(tmp_path / "out.star") == [0, 1, 2]
    select_neighbours(star, tmp_path / "two.star", SPACING, TOLERANCE, 2)
    assert kept_rows(tmp_path / "two.star") == [0]


def test_neighbours_cli(tmp_path, capsys):
    ps, expected = lattice_case(np.random.default_rng(8))
    star = write(ps, tmp_path / "in.star", "relion5")
    out = tmp_path / "out.star"
    code, stdout, _ = run(["select", "neighbours", "--i", star, "--distance", "100",
                           "--tolerance", "10", "--min_neighbours", "3", "--o", out], capsys)
    assert code == 0
    assert kept_rows(out) == expected["3"]
    assert stdout.strip() == (f"Kept 21 of {len(ps)} particles (at least 3 neighbours at "
                              f"100 ± 10 Å); wrote {out}.")
    for bad, field in ((["--distance", "-1", "--tolerance", "10"], "--distance"),
                       (["--distance", "100", "--tolerance", "-1"], "--tolerance")):
        code, _, err = run(["select", "neighbours", "--i", star, "--o", tmp_path / "bad.star",
                            *bad, "--min_neighbours", "3"], capsys)
        assert code == 2 and err.startswith(f"subtomo: error: {field}: ")
        assert len(err.strip().splitlines()) == 1
    code, _, err = run(["select", "neighbours", "--i", star, "--o", tmp_path / "bad.star",
                        "--distance", "100", "--tolerance", "10", "--min_neighbours", "0"],
                       capsys)
    assert code == 2 and f"{star}: --min_neighbours: " in err
    assert not (tmp_path / "bad.star").exists()


# ---- by class --------------------------------------------------------------------------------
CLASSES = [1, 3, 2, 3, 4, 1]


def class_case(subtomogram_angles: bool = False) -> ParticleSet:
    rng = np.random.default_rng(11)
    centres = rng.uniform(1000, 4000, (len(CLASSES), 3))
    origins = rng.uniform(-40, 40, (len(CLASSES), 3))
    angles = rng.uniform(-180, 180, (len(CLASSES), 3)) if subtomogram_angles else None
    return particle_set(centres, origins, ["TS_01", "TS_02"] * 3, subtomogram_angles=angles,
                        rlnClassNumber=CLASSES)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_select_class(tmp_path, flavour, capsys):
    star = write(class_case(), tmp_path / "run_it025_data.star", flavour)
    out = tmp_path / "particles.star"
    code, stdout, _ = run(["select", "--i", star, "--class", "3", "--o", out], capsys)
    assert code == 0
    assert kept_rows(out) == [1, 3]
    assert stdout.strip() == f"Kept 2 of 6 particles (class 3); wrote {out}."
    before = read_particles(star).particles.iloc[[1, 3]].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_particles(out).particles, before)
    assert read_particles(out).flavour == flavour
    for spelling in (["--class", "3", "--class", "4"], ["--class", "3,4"], ["--class", "4,3"]):
        assert run(["select", "-i", star, *spelling, "-o", out], capsys)[0] == 0
        assert kept_rows(out) == [1, 3, 4]
    assert select_class(star, out, [1, 2]).particles["rlnClassNumber"].tolist() == [1, 2, 1]


@pytest.mark.parametrize(("flavour", "frames"), [
    ("relion5", False), ("relion5", True), ("relion4", True), ("relion31", False),
    ("relion30", False)])
def test_select_class_recenter(tmp_path, flavour, frames, capsys):
    ps = class_case(subtomogram_angles=frames)
    star = write(ps, tmp_path / "in.star", flavour)
    out = tmp_path / "out.star"
    code, stdout, _ = run(["select", "--i", star, "--class", "3,4", "--recenter", "--o", out],
                          capsys)
    assert code == 0 and "recentred" in stdout
    before, after = read_particles(star).subset([1, 3, 4]), read_particles(out)
    assert kept_rows(out) == [1, 3, 4]
    np.testing.assert_array_equal(after.shifts_A(), np.zeros((3, 3)))
    labels = (["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
               "rlnCenteredCoordinateZAngst"] if flavour == "relion5" else
              ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"])
    scale = 1.0 if flavour == "relion5" else TOMO_APIX
    moved = after.particles[labels].to_numpy(float) - before.particles[labels].to_numpy(float)
    np.testing.assert_allclose(moved * scale, -before.tomogram_shifts_A(), atol=1e-9)
    assert np.abs(moved).max() > 0.1
    # angles and other columns are untouched
    for column in ("rlnAngleRot", "rlnImageName", "rlnTomoSubtomogramTilt"):
        if column in before.particles:
            np.testing.assert_array_equal(after.particles[column], before.particles[column])


def test_select_class_bad_input(tmp_path, capsys):
    ps = class_case()
    no_class = ps.particles.drop(columns="rlnClassNumber")
    star = write(ParticleSet(no_class, ps.optics, ps.tomograms, flavour="relion31"),
                 tmp_path / "noclass.star", "relion31")
    out = tmp_path / "out.star"
    code, stdout, err = run(["select", "--i", star, "--class", "3", "--o", out], capsys)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"subtomo: error: {star}: rlnClassNumber: ")
    assert not out.exists()

    star = write(ps, tmp_path / "in.star", "relion31")
    code, _, err = run(["select", "--i", star, "--class", "7", "--o", out], capsys)
    assert code == 2 and "rlnClassNumber" in err and "class 7" in err and "1, 2, 3, 4" in err
    assert not out.exists()

    before = star.read_bytes()
    code, _, err = run(["select", "--i", star, "--class", "3", "--o", star], capsys)
    assert code == 2 and "overwrite" in err and len(err.strip().splitlines()) == 1
    assert star.read_bytes() == before
    assert set(tmp_path.iterdir()) == {tmp_path / "noclass.star", star}  # no stray temporaries


def test_select_argument_forms(tmp_path, capsys):
    star = write(class_case(), tmp_path / "in.star", "relion31")
    out = tmp_path / "out.star"
    with pytest.raises(SystemExit) as info:  # neither --class nor a subcommand
        main(["select", "--i", str(star), "--o", str(out)])
    assert info.value.code == 2 and "--class" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["select", "--class", "3"])
    assert "--i and --o" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["select", "--i", str(star), "--class", "x", "--o", str(out)])
    assert "class number" in capsys.readouterr().err
    code, _, err = run(["select", "--class", "3", "random", "--i", star, "--n", "2",
                        "--o", out], capsys)
    assert code == 2 and "do not combine" in err
    assert not out.exists()
    # the subcommands still work as before
    assert run(["select", "random", "--i", star, "--n", "2", "--o", out], capsys)[0] == 0
    assert len(read_particles(out)) == 2
