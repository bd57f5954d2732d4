"""Warp tilt-series XML: the real ``warp/00254.xml`` (a Warp run on EMPIAR-10499, from the
cryoet-alignment 0.2.0 sdist, in ``tests/data/cryoet_alignment``) and synthetic ones written the
way Warp's ``SaveMeta`` writes them, against Warp's projection (``GetPositionsInOneTilt``)
transcribed here with Warp's ``Matrix3.Euler`` and ``RotateX`` element by element."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.errors import InputError
from subtomo.geometry.tilt import project_points, projection_matrices
from subtomo.io.tomograms import read_tomogram_set
from subtomo.io.warp_xml import read_warp_xml, warp_to_relion


def warp_euler(rot, tilt, psi):
    """Warp ``Matrix3.Euler`` (row-major M11..M33)."""
    ca, cb, cg = np.cos(rot), np.cos(tilt), np.cos(psi)
    sa, sb, sg = np.sin(rot), np.sin(tilt), np.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def warp_rotate_x(a):
    """Warp ``Matrix3.RotateX``: constructor args are column-major (m11, m21, m31, m12, ...)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def warp_positions(ws, t, points_A, volume_A, image_A):
    """``GetPositionsInOneTilt`` without volume warps (Å)."""
    r = warp_euler(0.0, np.radians(ws.angles_deg[t] + ws.level_angle_y),
                   np.radians(-ws.axis_angle_deg[t])) @ warp_rotate_x(np.radians(ws.level_angle_x))
    out = (points_A - volume_A / 2) @ r.T
    out[:, :2] += ws.axis_offset_A[t] + image_A / 2 - ws.movement_A[t]
    return out[:, :2]


def ours(params, pixel_size_A, size, image, points_px):
    m = projection_matrices(*(torch.as_tensor(v) for v in params.as_tuple()), pixel_size_A, size,
                            image)
    return project_points(m, torch.as_tensor(points_px))[..., :2].numpy()


def check_against_warp(ws, pixel_size_A, size, image, seed=0):
    params = warp_to_relion(ws, pixel_size_A, size, image)
    used = np.flatnonzero(ws.use)
    points = np.random.default_rng(seed).uniform(0, 1, (150, 3)) * np.array(size)
    got = ours(params, pixel_size_A, size, image, points)
    for j, t in enumerate(used):
        expected = warp_positions(ws, t, points * pixel_size_A, np.array(size) * pixel_size_A,
                                  np.array(image) * pixel_size_A) / pixel_size_A
        assert np.abs(got[:, j] - expected).max() < 1e-3
    return params


def test_real_warp_xml(cryoet_alignment_data):
    ws = read_warp_xml(cryoet_alignment_data / "warp/00254.xml")
    assert ws.n_tilts == 41 and ws.use.all() and ws.pixel_size_A == 1.0
    assert ws.angles_deg[0] == -60.01 and ws.dose[20] == 0 and ws.dose[0] == 117
    assert np.all(ws.axis_angle_deg == np.float64("-4.2999735"))
    assert ws.axis_offset_A[0, 0] == pytest.approx(271.82022)
    assert ws.movie_paths[0] == "../2/TS_01_041_-60.0.tif" and not ws.angles_inverted
    assert np.all(ws.defocus_um == 1.0) and ws.hand == -1.0  # no CTF fit: global Defocus
    for size, image in (((4000, 4000, 1500), (4000, 4000)), ((3837, 3709, 1201), (3837, 3709))):
        params = check_against_warp(ws, 1.0, size, image)
    assert np.allclose(params.ytilt, -ws.angles_deg) and np.allclose(params.zrot, -4.2999735)


@pytest.mark.parametrize("binning", [4, 1])
def test_real_warp_xml_with_a_binned_stack(cryoet_alignment_data, tmp_path, capsys, binning):
    """``ts_stack --angpix`` stacks are binned from the XML's CTF/PixelSize: the stack's pixel
    size is taken, Warp's Å shifts become stack pixels at it, and a note names the binning."""
    xml = cryoet_alignment_data / "warp/00254.xml"
    ws = read_warp_xml(xml)
    pixel_size_A, image, thickness = ws.pixel_size_A * binning, (96, 80), 40
    with mrcfile.new(tmp_path / "TS.mrc") as mrc:
        mrc.set_data(np.zeros((ws.n_tilts, image[1], image[0]), np.int8))
        mrc.voxel_size = pixel_size_A
    out = tmp_path / "tomograms.star"
    assert main(["tomograms", "import", "--stack", str(tmp_path / "TS.mrc"), "--warp_xml",
                 str(xml), "--thickness", str(thickness), "--o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("binning 4 inferred" in printed) == (binning == 4), printed
    # a header of 1 Å is MRC's "unset": the XML's pixel size then, with a note
    assert ("no pixel size in the header" in printed) == (binning == 1), printed
    ts = read_tomogram_set(out)["TS"]
    assert ts.pixel_size_A == pixel_size_A and ts.tomo_size_px == (*image, thickness)
    shifts_px = np.stack([ts.column(f"rlnTomo{a}ShiftAngst") for a in "XY"], -1) / pixel_size_A
    np.testing.assert_allclose(shifts_px, (ws.axis_offset_A - ws.movement_A) / pixel_size_A,
                               atol=1e-9)
    size = np.array(ts.tomo_size_px)
    points = np.random.default_rng(2).uniform(0, 1, (100, 3)) * size
    got = ts.project(torch.as_tensor(points)).numpy()[..., :2]
    for t in range(ws.n_tilts):
        expected = warp_positions(ws, t, points * pixel_size_A, size * pixel_size_A,
                                  np.array(image) * pixel_size_A)
        assert np.abs(got[:, t] - expected / pixel_size_A).max() < 1e-3


def synthetic_xml(n=7, inverted=False):
    rng = np.random.default_rng(7)
    angles = np.linspace(-45, 45, n)
    lines = lambda v: "\n".join(f"{x:.6f}" for x in v)  # noqa: E731
    use = ["True"] * n
    use[1] = "False"
    nodes = lambda name, v: (f'<{name} Width="1" Height="1" Depth="{n}" MarginX="0" '  # noqa
                             'MarginY="0" MarginZ="0">' + "".join(
                                 f'<Node X="0" Y="0" Z="{i}" Value="{x}" />'
                                 for i, x in enumerate(v)) + f"</{name}>")
    return f"""\ufeff<?xml version="1.0" encoding="utf-8"?>
<TiltSeries AreAnglesInverted="{inverted}" PlaneNormal="0, 0, 1" LevelAngleX="1.5"
 LevelAngleY="-2.25" Bfactor="0" Weight="1">
<Angles>{lines(angles)}</Angles>
<Dose>{lines(np.abs(angles) / 15 * 3)}</Dose>
<UseTilt>{chr(10).join(use)}</UseTilt>
<AxisAngle>{lines(rng.uniform(84, 86, n))}</AxisAngle>
<AxisOffsetX>{lines(rng.uniform(-80, 80, n))}</AxisOffsetX>
<AxisOffsetY>{lines(rng.uniform(-80, 80, n))}</AxisOffsetY>
<MoviePath>{chr(10).join(f"TS_{i}.tif" for i in range(n))}</MoviePath>
<CTF><Param Name="PixelSize" Value="2.5" /><Param Name="Voltage" Value="300" />
<Param Name="Cs" Value="2.7" /><Param Name="Amplitude" Value="0.07" />
<Param Name="Defocus" Value="3.0" /></CTF>
{nodes("GridCTF", np.linspace(3.0, 3.6, n))}
{nodes("GridCTFDefocusDelta", np.full(n, 0.1))}
{nodes("GridCTFDefocusAngle", np.full(n, 35.0))}
{nodes("GridMovementX", rng.uniform(-20, 20, n))}
{nodes("GridMovementY", rng.uniform(-20, 20, n))}
</TiltSeries>
"""


def test_synthetic_warp_xml_levels_movement_and_ctf(tmp_path):
    (tmp_path / "ts.xml").write_text(synthetic_xml())
    ws = read_warp_xml(tmp_path / "ts.xml")
    assert list(ws.use) == [True, False] + [True] * 5
    assert ws.level_angle_x == 1.5 and ws.level_angle_y == -2.25
    assert np.allclose(ws.defocus_um, np.linspace(3.0, 3.6, 7))
    assert np.allclose(ws.defocus_delta_um, 0.1) and np.allclose(ws.defocus_angle_deg, 35)
    assert np.any(ws.movement_A != 0)
    params = check_against_warp(ws, 2.5, (300, 301, 81), (300, 301))
    assert len(params.ytilt) == 6 and np.allclose(params.xtilt, 1.5)
    (tmp_path / "inv.xml").write_text(synthetic_xml(inverted=True))
    assert read_warp_xml(tmp_path / "inv.xml").hand == 1.0


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.replace("<Angles>-45.000000", "<Angles>-95.000000"), "Angles: tilt 1"),
    (lambda s: s.replace("<Dose>9.000000", "<Dose>nan"), "Dose: value 1 is not finite"),
    (lambda s: s.replace("<UseTilt>True\n", "<UseTilt>"), "UseTilt: <UseTilt> has 6"),
    (lambda s: s.replace("</TiltSeries>", ""), "not valid XML"),
])
def test_bad_warp_xml(tmp_path, edit, match):
    (tmp_path / "bad.xml").write_text(edit(synthetic_xml()))
    with pytest.raises(InputError, match=match):
        read_warp_xml(tmp_path / "bad.xml")
