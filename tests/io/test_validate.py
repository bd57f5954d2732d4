"""The checks of :mod:`subtomo.io.validate` (one clear line naming file, particle and field),
and :func:`subtomo.io.files.removed_on_input_error` (a failed job leaves nothing, and never
touches what was there before)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from subtomo.errors import InputError
from subtomo.io import validate
from subtomo.io.files import removed_on_input_error


def message(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    return str(info.value)


def test_finite_names_the_first_bad_voxel_and_particle():
    volume = np.zeros((4, 5, 6), np.float32)
    validate.volume(volume, "ok.mrc")
    volume[1, 2, 3] = np.nan
    volume[3, 0, 0] = np.inf
    text = message(lambda: validate.volume(volume, "p.mrc", field="rlnImageName",
                                           what="subtomogram", particle=7))
    assert text == ("p.mrc: rlnImageName: particle 7: subtomogram has 2 NaN or infinite "
                    "value(s) of 120 (first at z, y, x = 1, 2, 3)")
    tensor = torch.tensor([1.0, 2.0, -math.inf])
    assert message(lambda: validate.finite(tensor, "a.star", field="rlnAngleRot",
                                           rows=[4, 5, 6], lines=[10, 11, 12])) == (
        "a.star:12: rlnAngleRot: particle 6: value -inf is not a finite number")


def test_positive_range_tilt_and_defocus():
    validate.positive([1.0, 2.5], None, field="--angpix")
    assert message(lambda: validate.positive([1.0, 0.0], "x.star", field="rlnImagePixelSize",
                                             what="pixel size", unit="Å", rows=[1, 2])) == (
        "x.star: rlnImagePixelSize: particle 2: pixel size must be positive, got 0 Å")
    assert "got nan" in message(lambda: validate.positive(float("nan"), None, field="--pad"))
    validate.tilt_angles([-90.0, 0.0, 90.0], "ts.star")
    assert message(lambda: validate.tilt_angles([0.0, -91.5], "ts.star",
                                                field="rlnTomoNominalStageTiltAngle",
                                                rows=[1, 2])) == (
        "ts.star: rlnTomoNominalStageTiltAngle: tilt 2: tilt angle -91.5° is outside -90 "
        "to 90°")
    validate.defocus_A([0.0, 25000.0, 200000.0], "p.star")
    assert message(lambda: validate.defocus_A(-1.0, "p.star", field="rlnDefocusU",
                                              particle=3)) == (
        "p.star: rlnDefocusU: particle 3: defocus -1 Å is outside 0 to 20 µm")
    assert message(lambda: validate.in_range(1.5, 0.0, 1.0, "o.star", field="x")) == (
        "o.star: x: value 1.5 is outside 0 to 1")
    assert "must be at least 0" in message(
        lambda: validate.in_range(-2.0, 0.0, math.inf, None, field="--dose"))


def test_voxel_size_zero_is_unset_negative_refused():
    validate.voxel_size(0.0, "m.mrc")
    assert "voxel size -1 Å" in message(lambda: validate.voxel_size(-1.0, "m.mrc"))


def test_removed_on_input_error(tmp_path):
    job = tmp_path / "Refine3D" / "job001"
    with pytest.raises(InputError), removed_on_input_error(job):
        job.mkdir(parents=True)
        (job / "run_it001_data.star").write_text("x")
        raise InputError("p.mrc", "NaN")
    assert not (tmp_path / "Refine3D").exists()  # the parent it made goes too

    job.mkdir(parents=True)
    (job / "mine.txt").write_text("keep")
    (job / "sub").mkdir()
    with pytest.raises(InputError), removed_on_input_error(job):
        (job / "run_it001_data.star").write_text("x")
        (job / "sub" / "new.mrc").write_text("x")
        (job / "newdir").mkdir()
        raise InputError("p.mrc", "NaN")
    assert sorted(p.name for p in job.rglob("*")) == ["mine.txt", "sub"]

    with pytest.raises(KeyboardInterrupt), removed_on_input_error(job):  # a kill keeps all
        (job / "run_it001_data.star").write_text("x")
        raise KeyboardInterrupt
    assert (job / "run_it001_data.star").exists()
