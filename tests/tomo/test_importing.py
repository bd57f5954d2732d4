"""``subtomo tomograms import`` / ``export`` end to end: a known alignment written as IMOD,
AreTomo and Warp files (with a SerialEM mdoc written from SerialEM's format description, a
ctfplotter file and seed 002's ``.order`` layout) must come back as RELION 5 tilt series that
project every particle within 1e-3 px of the truth, through RELION 4 and back out to IMOD;
bad input exits 2 with one line and writes nothing."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.geometry import tilt_imod
from subtomo.geometry.tilt import RelionParameters, project_points, projection_matrices
from subtomo.io import aretomo, imod
from subtomo.io.tomograms import read_tomogram_set, write_tomogram_set

APIX, IMAGE, THICK = 2.5, (64, 48), 40
ANGLES = np.arange(-60.0, 61.0, 6.0)  # 21 tilts, the stack sorted by angle
N = len(ANGLES)


def acquisition_rank(angles: np.ndarray) -> np.ndarray:
    """Dose-symmetric (Hagen) order: 0, +6, −6, −12, +12, +18, −18, ..."""
    order = [0.0]
    sign = 1
    for step in range(1, N):
        k = (step + 1) // 2
        order.append(sign * k * 6.0 if step % 2 else -sign * k * 6.0)
        if step % 2 == 0:
            sign = -sign
    return np.array([order.index(a) for a in angles])


def write_mdoc(path: Path, rank: np.ndarray, pixel=APIX) -> None:
    """A tilt-series mdoc as SerialEM writes one (header, titles, one section per image)."""
    lines = [f"PixelSpacing = {pixel}", "Voltage = 300", "ImageFile = TS_01.mrcs",
             f"ImageSize = {IMAGE[0]} {IMAGE[1]}", "DataMode = 2", "",
             "[T = SerialEM: Digitized on a Krios                     01-Mar-24  10:00:00    ]",
             "", "[T =     Tilt axis angle = 85.0, binning = 1  spot = 8  camera = 0]", ""]
    for z, angle in enumerate(ANGLES):
        seconds = 60 * int(rank[z])
        lines += [f"[ZValue = {z}]", f"TiltAngle = {angle + 0.003:.5f}",
                  "ExposureDose = 0", f"PixelSpacing = {pixel}", "Defocus = 3.1",
                  f"DateTime = 01-Mar-24  10:{seconds // 60:02d}:{seconds % 60:02d}", ""]
    path.write_text("\n".join(lines) + "\n")


def write_stack(path: Path, n: int = N) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((n, IMAGE[1], IMAGE[0]), dtype=np.float32))
        mrc.voxel_size = APIX


def truth(seed: int = 0) -> RelionParameters:
    rng = np.random.default_rng(seed)
    return RelionParameters(
        rng.uniform(-1, 1, N), ANGLES + rng.uniform(-0.5, 0.5, N), 85 + rng.uniform(-1, 1, N),
        rng.uniform(-30, 30, N), rng.uniform(-30, 30, N))


def projections(params, points, size=(IMAGE[0], IMAGE[1], THICK)):
    m = projection_matrices(*(torch.as_tensor(np.asarray(v)) for v in params), APIX, size,
                            IMAGE)
    return project_points(m, torch.as_tensor(points))[..., :2].numpy()


@pytest.fixture
def imod_project(tmp_path):
    """An IMOD tilt series of the true alignment: stack, mdoc, .xf/.tlt/.xtilt, .defocus."""
    d = tmp_path / "in"
    d.mkdir()
    params = truth()
    write_stack(d / "TS_01.mrcs")
    write_mdoc(d / "TS_01.mrcs.mdoc", acquisition_rank(ANGLES))
    al = tilt_imod.relion_to_imod(params, APIX, (*IMAGE, THICK), IMAGE)
    imod.write_imod_alignment(d / "TS_01", al)
    imod.write_defocus(d / "TS_01.defocus", al.tilt_deg, 30000 + 100 * ANGLES,
                                 29000 + 100 * ANGLES, np.full(N, 40.0))
    return d, params


def run(argv) -> int:
    return main([str(a) for a in argv])


def test_imod_mdoc_ctfplotter_import_relion4_and_back(imod_project, tmp_path, monkeypatch,
                                                      capsys):
    d, params = imod_project
    monkeypatch.chdir(tmp_path)
    assert run(["tomograms", "import", "--stack", d / "{name}.mrcs",
                "--mdoc", d / "{name}.mrcs.mdoc", "--imod", d / "{name}",
                "--defocus", d / "{name}.defocus", "--name", "TS_01", "--dose_per_tilt", 3,
                "--thickness", THICK, "--o", "r5/tomograms.star"]) == 0
    assert "Imported 1 tilt series (21 tilt images)" in capsys.readouterr().out
    ts = read_tomogram_set("r5/tomograms.star")["TS_01"]
    assert ts.tomo_size_px == (*IMAGE, THICK) and ts.pixel_size_A == APIX
    assert ts.voltage_kv == 300 and ts.hand == -1.0
    points = np.random.default_rng(9).uniform(0, 1, (200, 3)) * np.array(ts.tomo_size_px)
    expected = projections(params.as_tuple(), points)
    assert np.abs(ts.project(torch.as_tensor(points)).numpy() - expected).max() < 1e-3
    assert np.allclose(ts.pre_exposure, 3.0 * acquisition_rank(ANGLES))
    u, v, angle = ts.defocus()
    assert np.allclose(u, 30000 + 100 * ANGLES) and np.allclose(angle, 40.0)
    assert np.allclose(ts.column("rlnTomoNominalStageTiltAngle"), ANGLES + 0.003)
    assert np.allclose(ts.column("rlnTomoNominalTiltAxisAngle"), 85.0)
    assert ts.tilts["rlnMicrographName"].iloc[2].startswith("3@")
    # RELION 5 → RELION 4 (projection matrices) → IMOD files → the same alignment
    write_tomogram_set(read_tomogram_set("r5/tomograms.star"), "r4/tomograms.star",
                       flavour="relion4")
    r4 = read_tomogram_set("r4/tomograms.star")["TS_01"]
    assert np.abs(r4.project(torch.as_tensor(points)).numpy() - expected).max() < 1e-3
    assert run(["tomograms", "export", "--i", "r4/tomograms.star", "--aretomo", "--imod",
                "--o", "refused"]) == 2  # x-axis tilts: refused before writing anything
    assert "rlnTomoXTilt" in capsys.readouterr().err and not Path("refused").exists()
    assert run(["tomograms", "export", "--i", "r4/tomograms.star", "--imod", "--o", "out"]) == 0
    original = imod.read_imod_alignment(d / "TS_01.xf", d / "TS_01.tlt", d / "TS_01.xtilt")
    exported = imod.read_imod_alignment(Path("out/TS_01.xf"), Path("out/TS_01.tlt"),
                                        Path("out/TS_01.xtilt"))
    assert np.abs(exported.xf - original.xf).max() < 1e-5
    assert np.allclose(exported.tilt_deg, original.tilt_deg, atol=1e-5)
    back = imod.read_defocus(Path("out/TS_01.defocus"), N)
    assert np.allclose(back.defocus_u_A, u, atol=0.5)


def test_aretomo_import_with_dark_frame_and_order_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = truth(1)
    params.xtilt[:] = 0.0  # AreTomo has no per-tilt x-axis tilt
    write_stack(Path("TS_02.mrcs"), N + 1)
    sections = np.delete(np.arange(N + 1), 7)  # stack section 7 was dark
    aretomo.write_aln("TS_02.aln", params, APIX, (*IMAGE, N + 1), sections)
    # seed 002's .order layout: tilt angle, exposure counted in tilts
    order = "\n".join(f"{a:g} {r}" for a, r in zip(ANGLES, acquisition_rank(ANGLES),
                                                       strict=True))
    Path("TS_02.order").write_text(order + "\n")
    assert run(["tomograms", "import", "--stack", "TS_02.mrcs", "--aln", "TS_02.aln",
                "--order", "TS_02.order", "--order_scale", 2.5, "--defocus_um", 3.0,
                "--angpix", APIX, "--voltage", 200, "--thickness", THICK,
                "--o", "tomograms.star"]) == 0
    ts = read_tomogram_set("tomograms.star")["TS_02"]
    assert ts.n_tilts == N and "8@TS_02.mrcs" not in list(ts.tilts["rlnMicrographName"])
    assert ts.tilts["rlnMicrographName"].iloc[7].startswith("9@")
    assert "rlnTomoTiltSeriesName" not in ts.globals  # the stack is not one image per tilt
    points = np.random.default_rng(2).uniform(0, 1, (100, 3)) * np.array(ts.tomo_size_px)
    got = ts.project(torch.as_tensor(points)).numpy()
    assert np.abs(got - projections(params.as_tuple(), points)).max() < 1e-3
    assert np.allclose(np.sort(ts.pre_exposure), 2.5 * np.arange(N))
    assert np.allclose(ts.defocus()[0], 30000.0)


def test_warp_import_used_tilts(tmp_path, monkeypatch):
    """A Warp XML with one unused tilt; the stack holds only the used ones (WarpTools)."""
    monkeypatch.chdir(tmp_path)
    n = 5
    angles = np.array([-30.0, -15.0, 0.0, 15.0, 30.0])
    text = "\n".join(f"{a}" for a in angles)
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<TiltSeries AreAnglesInverted="False">
<Angles>{text}</Angles>
<Dose>{chr(10).join(str(3 * abs(a) / 15) for a in angles)}</Dose>
<UseTilt>True{chr(10)}False{chr(10)}True{chr(10)}True{chr(10)}True</UseTilt>
<AxisAngle>{chr(10).join(["84.5"] * n)}</AxisAngle>
<AxisOffsetX>{chr(10).join(["12.5", "0", "-7.5", "2.5", "25"])}</AxisOffsetX>
<AxisOffsetY>{chr(10).join(["-5", "0", "10", "0", "5"])}</AxisOffsetY>
<CTF><Param Name="PixelSize" Value="{APIX}" /><Param Name="Voltage" Value="300" />
<Param Name="Defocus" Value="2.5" /></CTF>
</TiltSeries>
"""
    Path("TS_03.xml").write_text(xml)
    write_stack(Path("TS_03.mrcs"), 4)
    assert run(["tomograms", "import", "--stack", "TS_03.mrcs", "--warp_xml", "TS_03.xml",
                "--thickness", THICK, "--o", "tomograms.star"]) == 0
    ts = read_tomogram_set("tomograms.star")["TS_03"]
    assert ts.n_tilts == 4 and np.allclose(ts.nominal_tilt_deg, [-30, 0, 15, 30])
    assert np.allclose(ts.column("rlnTomoYTilt"), [30, 0, -15, -30])  # Warp's frame
    assert np.allclose(ts.column("rlnTomoXShiftAngst"), [12.5, -7.5, 2.5, 25.0])
    assert np.allclose(ts.pre_exposure, [6, 0, 3, 6]) and np.allclose(ts.defocus()[0], 25000)


# ---- bad input -----------------------------------------------------------------------------
def run_bad(capsys, argv, out: Path) -> str:
    status = run(argv)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("subtomo: error: "), captured.err
    assert not out.exists() and not (out.parent / "tilt_series").exists()
    return lines[0]


def edit_line(path: Path, number: int, text: str | None) -> None:
    lines = path.read_text().splitlines()
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case,expected", [
    ("xf_columns", r"TS_01.xf:3: 5 columns, expected 6"),
    ("xf_fewer", r"TS_01.xf: A11: 20 views, fewer than the 21 images of"),
    ("tlt_nan", r"TS_01.tlt:5: tilt angle: 'nan' is not a finite number"),
    ("tlt_range", r"TS_01.tlt:1: tilt angle: tilt angle 95° outside ±90°"),
    ("pixel", r"TS_01.mrcs.mdoc: PixelSpacing: pixel size 2.5 Å disagrees with 2.6 Å"),
    ("mdoc_fewer", r"TS_01.mrcs.mdoc: ZValue: 20 ZValue sections, fewer than the 21"),
    ("defocus_views", r"TS_01.defocus:23: view start: views 22–22 outside 1..21"),
])
def test_bad_input_exits_2_with_one_line(imod_project, tmp_path, capsys, case, expected):
    d, _ = imod_project
    extra = []
    if case == "xf_columns":
        edit_line(d / "TS_01.xf", 3, "1 0 0 1 0")
    elif case == "xf_fewer":
        edit_line(d / "TS_01.xf", N, None)
        edit_line(d / "TS_01.tlt", N, None)
        edit_line(d / "TS_01.xtilt", N, None)
    elif case == "tlt_nan":
        edit_line(d / "TS_01.tlt", 5, "nan")
    elif case == "tlt_range":
        edit_line(d / "TS_01.tlt", 1, "95.0")
    elif case == "pixel":
        extra = ["--angpix", 2.6]
    elif case == "mdoc_fewer":
        rank = acquisition_rank(ANGLES)
        write_mdoc(d / "TS_01.mrcs.mdoc", rank)
        text = (d / "TS_01.mrcs.mdoc").read_text()
        (d / "TS_01.mrcs.mdoc").write_text(text[:text.index(f"[ZValue = {N - 1}]")])
    elif case == "defocus_views":
        with open(d / "TS_01.defocus", "a") as f:
            f.write("22\t22\t63.00\t63.00\t3100.0\t3000.0\t40.00\n")
    out = tmp_path / "out" / "tomograms.star"
    message = run_bad(capsys, ["tomograms", "import", "--stack", d / "TS_01.mrcs",
                               "--mdoc", d / "TS_01.mrcs.mdoc", "--imod", d / "TS_01",
                               "--defocus", d / "TS_01.defocus", "--dose_per_tilt", 3,
                               "--thickness", THICK, "--o", out, *extra], out)
    assert __import__("re").search(expected, message), message


def test_ctfplotter_on_the_aligned_stack(imod_project):
    """Astigmatism angles measured on the aligned stack (seed 002 runs ctfplotter on the .ali)
    turn into the raw image's frame: a direction at β in the aligned image is at β + ZRot in the
    raw one (the .xf rotates raw images by −ZRot)."""
    from subtomo.tomo.importing import Optics, Sources, import_tilt_series

    d, params = imod_project
    src = Sources("TS_01", d / "TS_01.mrcs", mdoc=d / "TS_01.mrcs.mdoc", imod=d / "TS_01",
                  defocus=d / "TS_01.defocus")
    raw = import_tilt_series(src, Optics(dose_per_tilt=3, thickness_px=THICK)).tilt_series
    aligned = import_tilt_series(src, Optics(dose_per_tilt=3, thickness_px=THICK,
                                             defocus_frame="aligned")).tilt_series
    assert np.allclose(raw.defocus()[2], 40.0)
    assert np.allclose(aligned.defocus()[2], 40.0 + params.zrot, atol=1e-6)
