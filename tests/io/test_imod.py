"""IMOD readers: .tlt, .order, ctfplotter .defocus (seed 002's example lines) and real files."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.io.imod import defocus_per_view, read_ctfplotter, read_order, read_tlt

SEED_DEFOCUS = """1       0       0.0     0.0     0.0     3
40      40      -60.00  -60.00   3416.3  3248.6   88.22
39      39      -57.00  -57.00   3632.9  3484.6   88.70
36      36      -54.00  -54.00   3931.3  3782.7   87.20
"""


def test_ctfplotter_defocus_of_seed_002(tmp_path):
    path = tmp_path / "ctfplotter.defocus"
    path.write_text(SEED_DEFOCUS)
    table = read_ctfplotter(path)
    assert table.shape == (3, 7)
    assert table[0, 4] == pytest.approx(34163.0) and table[0, 5] == pytest.approx(32486.0)
    angles = np.linspace(-60, 60, 41)
    u, v, a = defocus_per_view(table, angles)
    assert u[39] == pytest.approx(34163.0) and u[38] == pytest.approx(36329.0)
    assert u[0] == pytest.approx(34163.0)  # nearest angle (−60°) for uncovered views
    path.write_text("1 2 -3 3 2500\n")  # older, non-astigmatic format
    assert read_ctfplotter(path)[0, 5] == pytest.approx(25000.0)
    path.write_text("1 1 0 0 250000 250000 0\n")
    with pytest.raises(InputError, match="0–20 µm"):
        read_ctfplotter(path)


def test_tlt_and_order(tmp_path):
    (tmp_path / "a.tlt").write_text("-3.0\n0.0\n 3.0\n")
    assert np.allclose(read_tlt(tmp_path / "a.tlt"), [-3, 0, 3])
    (tmp_path / "a.order").write_text("-2 1.0\n0 0\n2 1.0\n")
    angles, dose = read_order(tmp_path / "a.order")
    assert np.allclose(angles, [-2, 0, 2]) and np.allclose(dose, [1, 0, 1])
    (tmp_path / "bad.tlt").write_text("1\nx\n")
    with pytest.raises(InputError) as err:
        read_tlt(tmp_path / "bad.tlt")
    assert ":2" in str(err.value)


def test_real_imod_tlt(cryoet_alignment_sdist):
    """IMOD's .tlt of a real tilt series (cryoet-alignment 0.2.0 sdist)."""
    angles = read_tlt(cryoet_alignment_sdist / "tests/data/convert/imod_1/tilt_1.tlt")
    assert len(angles) > 20 and np.all(np.abs(angles) <= 70)
    assert np.all(np.diff(angles) > 0)
