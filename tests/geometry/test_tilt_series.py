"""Tests for the split of a tilt series into its geometry (subtomo.geometry.tilt_series, no
images) and its images (subtomo.io.tilt_series): the same projections from both, the image size
read from the stack header only by the io class, and copies that keep their class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.errors import InputError
from subtomo.geometry.tilt_series import TiltSeriesGeometry
from subtomo.io.mrc import write_mrc
from subtomo.io.tilt_series import TiltSeries

W, H = 40, 30


def _parts(stack: str) -> tuple[dict, pd.DataFrame]:
    angles = np.array([0.0, 30.0, -30.0])
    tilts = pd.DataFrame({"rlnTomoXTilt": 0.0, "rlnTomoYTilt": angles, "rlnTomoZRot": 85.0,
                          "rlnTomoXShiftAngst": [0.0, 5.0, -5.0], "rlnTomoYShiftAngst": 0.0})
    globals_ = {"rlnTomoName": "TS_01", "rlnTomoTiltSeriesPixelSize": 2.5,
                "rlnTomoSizeX": W, "rlnTomoSizeY": H, "rlnTomoSizeZ": 20,
                "rlnTomoTiltSeriesName": stack}
    return globals_, tilts


def test_geometry_needs_no_images_and_says_when_it_lacks_their_size(tmp_path):
    globals_, tilts = _parts(str(tmp_path / "absent.mrcs"))
    with pytest.raises(InputError, match="rlnMicrographName: tilt series TS_01: tilt-image "
                                         "size unknown"):
        TiltSeriesGeometry(globals_, tilts).matrices()
    given = TiltSeriesGeometry(globals_, tilts, image_size=(W, H))
    assert given.matrices().shape == (3, 4, 4)  # no image file is opened


def test_io_series_reads_the_size_and_projects_as_the_geometry(tmp_path):
    stack = tmp_path / "TS_01.mrcs"
    images = np.random.default_rng(0).normal(size=(3, H, W)).astype(np.float32)
    write_mrc(stack, images, 2.5, stack=True)
    globals_, tilts = _parts(str(stack))
    ts = TiltSeries(globals_, tilts)
    assert ts.image_size_px == (W, H)
    geometry = TiltSeriesGeometry(globals_, tilts, image_size=(W, H))
    points = torch.tensor([[10.0, 12.0, 5.0], [30.0, 3.0, 15.0]], dtype=torch.float64)
    assert torch.equal(ts.project(points), geometry.project(points))
    assert np.array_equal(ts.read_images([2, 0]).numpy(), images[[2, 0]])
    # copies stay tilt series with images
    moved = ts.with_dof(*ts.dof())
    kept = ts.subset_tilts(np.array([True, False, True]))
    assert type(moved) is TiltSeries and type(kept) is TiltSeries
    assert np.array_equal(kept.read_images().numpy(), images[[0, 2]])
