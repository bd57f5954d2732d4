"""Tilt schemes: acquisition orders and exposure history."""

from __future__ import annotations

import pytest

from subtomo.ctf.tilt_scheme import TiltScheme


def test_dose_symmetric_small() -> None:
    s = TiltScheme.dose_symmetric(tilt_range_deg=6, tilt_step_deg=3, dose_per_tilt=2.5, group=2)
    assert s.tilt_angles_deg == (0.0, 3.0, 6.0, -3.0, -6.0)
    assert s.pre_exposure_e_per_A2 == (0.0, 2.5, 5.0, 7.5, 10.0)
    assert s.defocus_offset_A == (0.0,) * 5


def test_dose_symmetric_full() -> None:
    s = TiltScheme.dose_symmetric()  # ±60°, 3°, group 2
    assert s.n_tilts == 41
    assert s.tilt_angles_deg[:9] == (0.0, 3.0, 6.0, -3.0, -6.0, 9.0, 12.0, -9.0, -12.0)
    assert sorted(s.tilt_angles_deg) == [3.0 * i for i in range(-20, 21)]
    assert s.pre_exposure_e_per_A2[-1] == pytest.approx(120.0)
    g1 = TiltScheme.dose_symmetric(9, 3, 1.0, group=1)
    assert g1.tilt_angles_deg == (0.0, 3.0, -3.0, 6.0, -6.0, 9.0, -9.0)
    g3 = TiltScheme.dose_symmetric(12, 3, 1.0, group=3)  # last group partial
    assert g3.tilt_angles_deg == (0.0, 3.0, 6.0, 9.0, -3.0, -6.0, -9.0, 12.0, -12.0)


def test_sequential_and_bidirectional() -> None:
    assert TiltScheme.sequential(6, 3, 1.0).tilt_angles_deg == (-6.0, -3.0, 0.0, 3.0, 6.0)
    assert TiltScheme.sequential(6, 3, 1.0, from_negative=False).tilt_angles_deg == (
        6.0, 3.0, 0.0, -3.0, -6.0)
    assert TiltScheme.bidirectional(9, 3, 1.0).tilt_angles_deg == (
        0.0, 3.0, 6.0, 9.0, -3.0, -6.0, -9.0)
    b = TiltScheme.bidirectional(9, 3, 2.0, start_angle_deg=-3.0)
    assert b.tilt_angles_deg == (-3.0, 0.0, 3.0, 6.0, 9.0, -6.0, -9.0)
    assert b.pre_exposure_e_per_A2 == (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
    b = TiltScheme.bidirectional(9, 3, 1.0, start_angle_deg=3.0, first_positive=False)
    assert b.tilt_angles_deg == (3.0, 0.0, -3.0, -6.0, -9.0, 6.0, 9.0)


def test_sorted_by_angle_keeps_pairs() -> None:
    s = TiltScheme((0.0, 3.0, -3.0), (0.0, 1.0, 2.0), (10.0, 20.0, 30.0))
    t = s.sorted_by_angle()
    assert t.tilt_angles_deg == (-3.0, 0.0, 3.0)
    assert t.pre_exposure_e_per_A2 == (2.0, 0.0, 1.0)
    assert t.defocus_offset_A == (30.0, 10.0, 20.0)


def test_validation() -> None:
    with pytest.raises(ValueError):
        TiltScheme((0.0, 3.0), (0.0,))
    with pytest.raises(ValueError):
        TiltScheme((0.0,), (-1.0,))
    with pytest.raises(ValueError):
        TiltScheme.dose_symmetric(10, 3)
    with pytest.raises(ValueError):
        TiltScheme.bidirectional(9, 3, start_angle_deg=1.0)
