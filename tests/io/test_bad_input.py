"""Bad input reaches the user as one line naming file, line and field, with exit status 2.

Each case drives the ``subtomo`` command through :func:`subtomo.cli.main` and checks the contract
of :class:`subtomo.errors.InputError`: stderr is exactly one line ``subtomo: error: path:line:
field: message``, and nothing (not even a temporary file) is left in the output folder.
The STAR inputs are literal text laid out as RELION 3.0 / 3.1 write them.
"""

# STAR rows below are laid out as RELION writes them, wider than the line limit.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path

import pytest

from subtomo.cli import main

# ---- literal inputs --------------------------------------------------------------------------
OPTICS_31 = """
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
opticsGroup1            1   300.000000     2.700000     0.070000    10.000000           32            3

"""

PARTICLES_31_HEADER = """
# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnImageName #4
_rlnAngleRot #5
_rlnAngleTilt #6
_rlnAnglePsi #7
_rlnOriginXAngst #8
_rlnOriginYAngst #9
_rlnOriginZAngst #10
_rlnOpticsGroup #11
"""

ROWS_31 = [
    "  100.000000   200.000000    50.000000 Subtomograms/TS_01/000001_32.mrc    10.000000"
    "    20.000000    30.000000     1.000000     2.000000     3.000000            1 ",
    "  110.000000   210.000000    60.000000 Subtomograms/TS_01/000002_32.mrc    11.000000"
    "    21.000000    31.000000     0.500000     0.500000     0.500000            1 ",
    "  120.000000   220.000000    70.000000 Subtomograms/TS_01/000003_32.mrc    12.000000"
    "    22.000000    32.000000    -1.000000    -2.000000    -3.000000            1 ",
]

RELION30_HEADER = """
data_

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnCoordinateZ #3
_rlnMicrographName #4
_rlnImageName #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnOriginX #9
_rlnOriginY #10
_rlnOriginZ #11
_rlnMagnification #12
_rlnDetectorPixelSize #13
"""

ROWS_30 = [
    "100.0 200.0 50.0 TS_01.tomostar 000001.mrc 10.0 20.0 30.0 1.0 2.0 3.0 10000.0 10.0",
    "110.0 210.0 60.0 TS_01.tomostar 000002.mrc 11.0 21.0 31.0 0.5 0.5 0.5 10000.0 10.0",
    "120.0 220.0 70.0 TS_01.tomostar 000003.mrc 12.0 22.0 32.0 0.0 0.0 0.0 10000.0 10.0",
    "130.0 230.0 80.0 TS_01.tomostar 000004.mrc 13.0 23.0 33.0 0.0 0.0 0.0 10000.0 10.0",
]


def relion31(rows: list[str] = ROWS_31, *, optics: str = OPTICS_31,
             header: str = PARTICLES_31_HEADER) -> str:
    return optics + header + "\n".join(rows) + "\n\n"


def relion30(rows: list[str] = ROWS_30, *, header: str = RELION30_HEADER) -> str:
    return header + "\n".join(rows) + "\n\n"


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of ``text`` that contains ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def dynamo_row(tag: int, tomo: int, width: int = 35) -> str:
    values = [0.0] * 35
    values[0] = tag  # tag
    values[1] = 1  # aligned
    values[6:9] = [10.0 * tag, 20.0, 30.0]  # tdrot, tilt, narot
    values[19] = tomo  # column 20: tomogram index
    values[23:26] = [100.0 + tag, 200.0, 50.0]  # x, y, z
    return " ".join(f"{v:g}" for v in values[:width])


# ---- helpers ---------------------------------------------------------------------------------
@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    return inputs, outputs


def run_bad(capsys: pytest.CaptureFixture[str], argv: list[str], out_dir: Path) -> str:
    """Run the CLI on bad input; check status 2, one error line and an empty output folder."""
    before = sorted(p.name for p in out_dir.iterdir())
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 2, (status, captured.err)
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("subtomo: error: "), lines[0]
    assert captured.err.endswith("\n")
    after = sorted(p.name for p in out_dir.iterdir())
    assert after == before, f"left behind: {sorted(set(after) - set(before))}"
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- STAR files ------------------------------------------------------------------------------
def test_truncated_star_row_names_file_and_line(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_31)
    rows[1] = rows[1].rsplit(maxsplit=4)[0]  # drop the last four fields of the second row
    text = relion31(rows)
    star = write(inputs / "bad.star", text)
    line = line_of(text, "000002_32.mrc")
    assert line == 35  # 17 header lines of data_optics + 17 of data_particles, then row 2
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}:{line}:" in message
    assert ": rlnOriginXAngst:" in message  # the first label without a value
    assert "7 values" in message and "11 labels" in message


def test_truncated_row_after_blank_line_in_loop(capsys, dirs):
    """starfile reads a loop on past blank lines, so rows there must be checked too."""
    inputs, outputs = dirs
    rows = list(ROWS_31)
    rows[2] = rows[2].rsplit(maxsplit=1)[0]  # no rlnOpticsGroup on the last row
    rows.insert(2, "")
    text = relion31(rows)
    star = write(inputs / "blank.star", text)
    line = line_of(text, "000003_32.mrc")
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}:{line}: rlnOpticsGroup:" in message
    assert "10 values" in message


def test_non_numeric_after_blank_line_in_loop(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_31)
    rows[2] = rows[2].replace("22.000000", "abc")
    rows.insert(1, "")
    text = relion31(rows)
    star = write(inputs / "blank.star", text)
    line = line_of(text, "abc")
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}:{line}: rlnAngleTilt:" in message


def test_blank_line_between_rows_is_still_read(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_31)
    rows.insert(1, "")
    star = write(inputs / "blank.star", relion31(rows))
    assert main(["star", "info", str(star)]) == 0
    assert "particles: 3" in capsys.readouterr().out


def test_truncated_relion30_row(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_30)
    rows[3] = rows[3].rsplit(maxsplit=1)[0]
    text = relion30(rows)
    star = write(inputs / "bad30.star", text)
    line = line_of(text, "000004.mrc")
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}:{line}: rlnDetectorPixelSize:" in message


def test_non_numeric_angle_names_line_and_field(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_31)
    rows[2] = rows[2].replace("22.000000", "abc")
    text = relion31(rows)
    star = write(inputs / "bad.star", text)
    line = line_of(text, "abc")
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}:{line}: rlnAngleTilt:" in message
    assert "'abc'" in message


def test_non_numeric_coordinate_in_relion30(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_30)
    rows[1] = rows[1].replace("110.0", "1l0.0", 1)
    text = relion30(rows)
    star = write(inputs / "bad30.star", text)
    line = line_of(text, "1l0.0")
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}:{line}: rlnCoordinateX:" in message
    assert "'1l0.0'" in message


def test_missing_tilt_column(capsys, dirs):
    inputs, outputs = dirs
    header = PARTICLES_31_HEADER.replace("_rlnAngleTilt #6\n", "")
    rows = [" ".join(r.split()[:5] + r.split()[6:]) for r in ROWS_31]
    star = write(inputs / "notilt.star", relion31(rows, header=header))
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion31"], outputs)
    assert f"{star}: rlnAngleTilt:" in message
    assert "missing" in message


def test_optics_without_group_number(capsys, dirs):
    inputs, outputs = dirs
    optics = OPTICS_31.replace("_rlnOpticsGroup #2\n", "").replace(
        "opticsGroup1            1 ", "opticsGroup1 ")
    star = write(inputs / "nogroup.star", relion31(optics=optics))
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion30"], outputs)
    assert f"{star}: rlnOpticsGroup:" in message
    assert "data_optics" in message


def test_particle_in_undefined_optics_group(capsys, dirs):
    inputs, outputs = dirs
    rows = list(ROWS_31)
    rows[1] = rows[1].rstrip()[:-1] + "2 "
    star = write(inputs / "group2.star", relion31(rows))
    message = run_bad(capsys, ["star", "convert", "--i", star, "--o", outputs / "out.star",
                               "--relion30"], outputs)
    assert f"{star}: rlnOpticsGroup:" in message
    assert "optics group 2" in message


def test_star_info_missing_file(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "particles.star"
    message = run_bad(capsys, ["star", "info", missing], tmp_path)
    assert message == f"subtomo: error: {missing}: file not found"


# ---- Dynamo tables ---------------------------------------------------------------------------
def test_dynamo_short_row(capsys, dirs):
    inputs, outputs = dirs
    rows = [dynamo_row(tag, 1) for tag in range(1, 6)]
    rows[3] = rows[3].rsplit(maxsplit=2)[0]  # 33 columns on line 4
    table = write(inputs / "t.tbl", "\n".join(rows) + "\n")
    doc = write(inputs / "t.doc", "1 tomograms/TS_01.mrc\n")
    message = run_bad(capsys, ["convert", "dynamo2star", "--i", table, "--tm", doc,
                               "--o", outputs / "out.star", "--relion31", "--angpix", "10"],
                      outputs)
    assert f"{table}:4:" in message
    assert "33" in message and "35" in message


def test_dynamo_table_with_20_columns(capsys, dirs):
    inputs, outputs = dirs
    rows = [dynamo_row(tag, 1, width=20) for tag in range(1, 4)]
    table = write(inputs / "t.tbl", "\n".join(rows) + "\n")
    doc = write(inputs / "t.doc", "1 tomograms/TS_01.mrc\n")
    message = run_bad(capsys, ["convert", "dynamo2star", "--i", table, "--tm", doc,
                               "--o", outputs / "out.star", "--relion31", "--angpix", "10"],
                      outputs)
    assert f"{table}:1:" in message
    assert "20 columns" in message and "26" in message


def test_table_map_missing_index(capsys, dirs):
    inputs, outputs = dirs
    rows = [dynamo_row(1, 1), dynamo_row(2, 1), dynamo_row(3, 7), dynamo_row(4, 2)]
    table = write(inputs / "t.tbl", "\n".join(rows) + "\n")
    doc = write(inputs / "t.doc", "1 tomograms/TS_01.mrc\n2 tomograms/TS_02.mrc\n")
    message = run_bad(capsys, ["convert", "dynamo2star", "--i", table, "--tm", doc,
                               "--o", outputs / "out.star", "--relion31", "--angpix", "10"],
                      outputs)
    assert message.startswith(f"subtomo: error: {doc}:")
    assert "tomogram index 7" in message
    assert "row 3" in message and "column 20" in message


def test_dynamo2star_missing_table_map(capsys, dirs):
    inputs, outputs = dirs
    table = write(inputs / "t.tbl", dynamo_row(1, 1) + "\n")
    doc = inputs / "missing.doc"
    message = run_bad(capsys, ["convert", "dynamo2star", "--i", table, "--tm", doc,
                               "--o", outputs / "out.star", "--relion31", "--angpix", "10"],
                      outputs)
    assert message == f"subtomo: error: {doc}: file not found"


# ---- outputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["star", "convert", "--relion30", "--i", "{p}", "--o", "{p}"],
    ["star", "downgrade", "-s", "{p}", "--o", "{p}"],
    ["select", "random", "--n", "2", "--i", "{p}", "--o", "{p}"],
    ["poses", "export", "-D", "32", "--i", "{p}", "-o", "{p}"],
])
def test_output_over_input_is_refused(capsys, tmp_path, command):
    star = write(tmp_path / "particles.star", relion31())
    before = star.read_bytes()
    message = run_bad(capsys, [str(star) if a == "{p}" else a for a in command], tmp_path)
    assert str(star) in message
    assert "overwrite" in message
    assert star.read_bytes() == before


def test_output_over_input_via_other_spelling(capsys, tmp_path, monkeypatch):
    star = write(tmp_path / "particles.star", relion31())
    before = star.read_bytes()
    monkeypatch.chdir(tmp_path)
    message = run_bad(capsys, ["star", "convert", "--relion30", "--i", str(star),
                               "--o", "./sub/../particles.star"], tmp_path)
    assert "particles.star" in message and "overwrite" in message
    assert star.read_bytes() == before


def test_select_more_than_available(capsys, dirs):
    inputs, outputs = dirs
    star = write(inputs / "particles.star", relion31())
    message = run_bad(capsys, ["select", "random", "--i", star, "--o", outputs / "sub.star",
                               "--n", "4"], outputs)
    assert f"{star}: --n:" in message
    assert "4" in message and "3" in message
