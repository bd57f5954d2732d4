"""IMOD's text files: .xf, .tlt, tilt.com, ctfplotter .defocus, .order (seed 002's example
lines, copied into the tests) and real files (cryoet-alignment 0.2.0 sdist)."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.io import imod

SEED_DEFOCUS = """1       0       0.0     0.0     0.0     3
40      40      -60.00  -60.00   3416.3  3248.6   88.22
39      39      -57.00  -57.00   3632.9  3484.6   88.70
36      36      -54.00  -54.00   3931.3  3782.7   87.20
"""


def test_ctfplotter_defocus_of_seed_002(tmp_path):
    path = tmp_path / "ctfplotter.defocus"
    path.write_text(SEED_DEFOCUS)
    angles = np.linspace(-60, 60, 41)
    ctf = imod.read_defocus(path, 41, angles)
    assert ctf.row_values.shape == (3, 4)
    assert ctf.defocus_u_A[39] == pytest.approx(34163.0)
    assert ctf.defocus_v_A[39] == pytest.approx(32486.0)
    u = ctf.filled(angles).defocus_u_A
    assert u[39] == pytest.approx(34163.0) and u[38] == pytest.approx(36329.0)
    assert u[0] == pytest.approx(34163.0)  # nearest angle (−60°) for uncovered views
    path.write_text("1 2 -3 3 2500\n")  # older, non-astigmatic format
    assert imod.read_defocus(path, 2).defocus_v_A[0] == pytest.approx(25000.0)
    path.write_text("1 0 0.0 0.0 0.0 3\n1 1 0 0 250000 250000 0\n")
    with pytest.raises(InputError, match="0–20 µm"):
        imod.read_defocus(path, 1)


def test_tlt_and_order(tmp_path):
    (tmp_path / "a.tlt").write_text("-3.0\n0.0\n 3.0\n")
    assert np.allclose(imod.read_angles(tmp_path / "a.tlt"), [-3, 0, 3])
    (tmp_path / "a.order").write_text("-2 1.0\n0 0\n2 1.0\n")
    angles, dose = imod.read_order(tmp_path / "a.order")
    assert np.allclose(angles, [-2, 0, 2]) and np.allclose(dose, [1, 0, 1])
    (tmp_path / "bad.tlt").write_text("1\nx\n")
    with pytest.raises(InputError) as err:
        imod.read_angles(tmp_path / "bad.tlt")
    assert ":2" in str(err.value)


def test_real_imod_tlt(cryoet_alignment_data):
    """IMOD's .tlt of a real tilt series (cryoet-alignment 0.2.0 sdist)."""
    angles = imod.read_angles(cryoet_alignment_data / "convert/imod_1/tilt_1.tlt")
    assert len(angles) > 20 and np.all(np.abs(angles) <= 70)
    assert np.all(np.diff(angles) > 0)


def test_tilt_com_entries(tmp_path):
    com = tmp_path / "tilt.com"
    com.write_text("$tilt -StandardInput\nIMAGEBINNED 2\nTHICKNESS 300\nXAXISTILT 0.8\n"
                   "OFFSET -1.5\nSHIFT 3.0 -4.5\nEXCLUDELIST 1,3-4\nFULLIMAGE 1024 1000\n"
                   "$if (-e ./savework) ./savework\n")
    out = imod.read_tilt_com(com)
    assert out.binning == 2 and out.thickness_px == 600 and out.shift_px == (6.0, -9.0)
    assert out.xaxis_tilt_deg == 0.8 and out.angle_offset_deg == -1.5
    assert out.exclude == [1, 3, 4] and out.full_image == (1024, 1000)
    com.write_text("XAXISTILT abc\n")
    with pytest.raises(InputError, match=r"tilt.com:1: XAXISTILT"):
        imod.read_tilt_com(com)


def test_ctfplotter_versions(tmp_path):
    """Version 3 (seed 002's header ``1 0 0.0 0.0 0.0 3``: astigmatism), version 2 (ctfplotter's
    own writer: ``%d\\t%d\\t%5.2f\\t%5.2f\\t%6.0f`` and the version after the first line), and
    an old file numbering views one low (repaired from the tilt angles as IMOD does)."""
    path = tmp_path / "v3.defocus"
    path.write_text(SEED_DEFOCUS)
    ctf = imod.read_defocus(path, 40)
    assert ctf.version == 3 and ctf.flags == 1
    assert ctf.defocus_u_A[39] == pytest.approx(34163.0) and ctf.defocus_v_A[38] == 34846.0
    assert ctf.angle_deg[35] == pytest.approx(87.20) and np.isnan(ctf.defocus_u_A[0])
    v2 = tmp_path / "v2.defocus"
    v2.write_text("1\t2\t-60.00\t-57.00\t  3416   2\n3\t3\t-54.00\t-54.00\t  3931\n")
    ctf = imod.read_defocus(v2, 3)
    assert ctf.version == 2 and list(ctf.defocus_u_A) == [34160.0, 34160.0, 39310.0]
    assert np.array_equal(ctf.defocus_u_A, ctf.defocus_v_A)
    old = tmp_path / "old.defocus"
    old.write_text("0\t0\t-60.00\t-60.00\t  3416\n1\t1\t-57.00\t-57.00\t  3632\n")
    ctf = imod.read_defocus(old, 2, np.array([-60.0, -57.0]))
    assert list(ctf.defocus_u_A) == [34160.0, 36320.0]
    imod.write_defocus(tmp_path / "w.defocus", np.array([-3.0, 0.0]), np.array([30000.0, 31000]),
                     np.array([29000.0, 30500]), np.array([10.0, -20.0]))
    back = imod.read_defocus(tmp_path / "w.defocus", 2)
    assert np.allclose(back.defocus_v_A, [29000, 30500]) and np.allclose(back.angle_deg,
                                                                         [10, -20])


def test_order_list_from_seed_002(tmp_path):
    """Seed 002's ``.order`` example (angle, exposure counted in tilts) matched by angle."""
    lines = [f"{a} {abs(a) // 2}.00000000000000000000" for a in range(-30, 32, 2)]
    (tmp_path / "TS.order").write_text("\n".join(lines) + "\n")
    pre = imod.exposure_from_order(tmp_path / "TS.order", np.array([0.1, -2.0, 29.9]), scale=3.0)
    assert list(pre) == [0.0, 3.0, 45.0]
    with pytest.raises(InputError, match="no row within"):
        imod.exposure_from_order(tmp_path / "TS.order", np.array([45.0]))
    # one row per view and the views' angles offset by 3.4° (tiltalign's AngleOffset)
    views = np.arange(-30.0, 32.0, 2.0) + 3.4
    pre = imod.exposure_from_order(tmp_path / "TS.order", views, scale=2.0)
    assert np.allclose(pre, 2.0 * (np.round(np.abs(views - 3.4)) // 2))


@pytest.mark.parametrize("content,line,field", [
    ("1 0 0 1 0\n", 1, None),  # five columns
    ("1 0 0 1 0 0\n1 0 0 1 nan 0\n", 2, "DX"),
    ("1 0 0 1 0 0\n1 0 x 1 0 0\n", 2, "A21"),
])
def test_bad_xf_names_line_and_field(tmp_path, content, line, field):
    path = tmp_path / "bad.xf"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        imod.read_xf(path)
    assert f"bad.xf:{line}" in str(err.value)
    if field:
        assert field in str(err.value)


def test_bad_tlt_and_mismatched_counts(tmp_path):
    (tmp_path / "a.xf").write_text("1 0 0 1 0 0\n1 0 0 1 0 0\n")
    (tmp_path / "a.tlt").write_text("-3\n95\n")
    with pytest.raises(InputError, match=r"a.tlt:2: tilt angle: tilt angle 95° outside"):
        imod.read_imod_alignment(tmp_path / "a.xf", tmp_path / "a.tlt")
    (tmp_path / "a.tlt").write_text("-3\n")
    with pytest.raises(InputError, match="1 tilt angles but"):
        imod.read_imod_alignment(tmp_path / "a.xf", tmp_path / "a.tlt")
