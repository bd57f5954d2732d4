"""Tests for subtomo.tomo.import_formats: which stack images each alignment format keeps, the
angles it gives them, and its count checks (one line naming the file and field)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.geometry.tilt import RelionParameters
from subtomo.io import aretomo, warp_xml
from subtomo.tomo import import_formats

ANGLES = np.array([-30.0, -15.0, 0.0, 15.0, 30.0])
USE = [True, False, True, True, True]


def _warp(tmp_path: Path) -> warp_xml.WarpTiltSeries:
    nl = "\n"
    path = tmp_path / "TS.xml"
    path.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<TiltSeries AreAnglesInverted="True">
<Angles>{nl.join(str(a) for a in ANGLES)}</Angles>
<Dose>{nl.join(str(i) for i in range(5))}</Dose>
<UseTilt>{nl.join(str(u) for u in USE)}</UseTilt>
<CTF><Param Name="Voltage" Value="200" /><Param Name="Defocus" Value="2.5" /></CTF>
</TiltSeries>
""")
    return warp_xml.read_warp_xml(path)


@pytest.mark.parametrize("n_stack,images,stack_angles", [
    (5, [0, 2, 3, 4], ANGLES),  # every tilt in the stack: the unused one left out
    (4, [0, 1, 2, 3], ANGLES[USE]),  # WarpTools: the stack holds the used tilts only
])
def test_warp_keeps_the_used_tilts(tmp_path, n_stack, images, stack_angles):
    notes: list[str] = []
    view = import_formats.from_warp(_warp(tmp_path), Path("TS.xml"), n_stack, Path("s.mrcs"),
                                    notes)
    assert view.images.tolist() == images
    assert np.array_equal(view.stack_angles_deg, stack_angles)
    assert np.array_equal(view.nominal_deg, ANGLES[USE])
    assert np.array_equal(view.pre_exposure, np.flatnonzero(USE).astype(float))
    assert np.allclose(view.ctf[0], 25000.0) and view.ctf[3] is None
    assert view.voltage_kv() == 200.0 and view.hand == 1.0
    assert notes[0] == "1 tilts with UseTilt False left out"


def test_warp_count_is_checked(tmp_path):
    with pytest.raises(InputError, match=r"TS.xml: Angles: 5 tilts \(4 used\), more than the "
                                         r"3 images of s.mrcs"):
        import_formats.from_warp(_warp(tmp_path), Path("TS.xml"), 3, Path("s.mrcs"), [])


def test_aretomo_leaves_dark_frames_out(tmp_path):
    n = 6
    params = RelionParameters(np.zeros(n - 1), np.linspace(-40, 40, n - 1),
                              np.full(n - 1, 85.0), np.zeros(n - 1), np.zeros(n - 1))
    sections = np.delete(np.arange(n), 2)
    path = tmp_path / "TS.aln"
    aretomo.write_aln(path, params, 2.0, (64, 48, n), sections)
    notes: list[str] = []
    view = import_formats.from_aretomo(aretomo.read_aln(path), path, n, Path("s.mrcs"), notes)
    assert view.images.tolist() == sections.tolist()
    assert np.isnan(view.stack_angles_deg[2])
    assert np.allclose(np.delete(view.stack_angles_deg, 2), params.ytilt)
    assert notes == ["1 dark frames dropped by AreTomo left out"]
    converted = view.to_relion(2.0, (64, 48, 20), (64, 48), notes)
    assert np.allclose(converted.ytilt, params.ytilt) and np.allclose(converted.zrot, 85.0)
    with pytest.raises(InputError, match=r"RawSize: 6 images \(RawSize\), fewer than the 7"):
        import_formats.from_aretomo(aretomo.read_aln(path), path, n + 1, Path("s.mrcs"), [])


def test_angles_only_keep_every_image():
    view = import_formats.from_angles(ANGLES, 5)
    assert view.images.tolist() == [0, 1, 2, 3, 4] and view.to_relion is None
    assert np.array_equal(view.nominal_deg, ANGLES)
    assert import_formats.from_angles(None, 5).nominal_deg is None
