"""SerialEM ``.mdoc`` through ``mdocfile``: the real ``tests/test_data/tilt_series.mdoc`` of the
mdocfile 0.2.3 sdist (41 images, dose-symmetric from 0°, no dose calibration) and a copy whose
stack is re-sorted by angle, so that the acquisition order has to come from ``DateTime``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.io.mdoc import read_mdoc


def test_real_tilt_series_mdoc(mdocfile_sdist):
    md = read_mdoc(mdocfile_sdist / "tests/test_data/tilt_series.mdoc")
    assert md.n_tilts == 41 and md.pixel_size_A == 5.4 and md.tilt_axis_deg == 85.3
    assert md.image_size == (924, 958) and md.voltage_kv is None
    assert list(np.round(md.tilt_deg[:7])) == [0, 3, -3, -6, 6, 9, -9]  # dose-symmetric
    assert list(md.acquisition_order) == list(range(41))  # this stack is in acquisition order
    with pytest.raises(InputError, match="ExposureDose: ExposureDose is 0"):
        md.pre_exposure()
    assert np.allclose(md.pre_exposure(2.0), 2.0 * np.arange(41))


def sorted_by_angle(text: str) -> str:
    """The same mdoc with its sections renumbered in tilt-angle order (as a stack re-sorted by
    angle would have them); DateTime keeps the acquisition order."""
    head, *sections = re.split(r"\n(?=\[ZValue = )", text)
    angle = [float(re.search(r"TiltAngle = (\S+)", s).group(1)) for s in sections]
    out = [head]
    for z, i in enumerate(np.argsort(angle)):
        out.append(re.sub(r"\[ZValue = \d+\]", f"[ZValue = {z}]", sections[i]).rstrip("\n")
                   + "\n")
    return "\n".join(out)


def test_acquisition_order_comes_from_datetime(mdocfile_sdist, tmp_path):
    text = (mdocfile_sdist / "tests/test_data/tilt_series.mdoc").read_text()
    (tmp_path / "sorted.mdoc").write_text(sorted_by_angle(text))
    md = read_mdoc(tmp_path / "sorted.mdoc")
    assert np.all(np.diff(md.tilt_deg) > 0)
    zero = int(np.argmin(np.abs(md.tilt_deg)))
    pre = md.pre_exposure(3.0)
    assert pre[zero] == 0.0 and pre[zero + 1] == 3.0 and pre[zero - 1] == 6.0  # 0, +3, −3
    assert sorted(pre) == list(3.0 * np.arange(41))
    # recorded doses are summed in acquisition order, the image's own excluded
    (tmp_path / "dosed.mdoc").write_text(sorted_by_angle(text).replace("ExposureDose = 0",
                                                                       "ExposureDose = 2.5"))
    assert np.allclose(read_mdoc(tmp_path / "dosed.mdoc").pre_exposure(), pre / 3.0 * 2.5)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.replace("TiltAngle = 3.00113", "TiltAngle = 93.0"), "TiltAngle: .ZValue = 1"),
    (lambda s: s.replace("[ZValue = 2]", "[ZValue = 7]"), "ZValue: ZValue sections"),
    (lambda s: s.replace("PixelSpacing = 5.4\nSpotSize", "PixelSpacing = 5.5\nSpotSize", 1),
     "PixelSpacing: PixelSpacing differs"),
])
def test_bad_mdoc(mdocfile_sdist, tmp_path, edit, match):
    text = (mdocfile_sdist / "tests/test_data/tilt_series.mdoc").read_text()
    (tmp_path / "bad.mdoc").write_text(edit(text))
    with pytest.raises(InputError, match=match):
        read_mdoc(tmp_path / "bad.mdoc")
