"""Tests for subtomo.io.fsc_star: a written postprocess.star reads back its FSC curve, in
shell order, preferring the corrected curve; files without one are refused naming the field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subtomo.errors import InputError
from subtomo.io.fsc_star import read_fsc_curve, write_fsc_star
from subtomo.io.star_text import write_star

BOX, APIX = 16, 1.5


def test_written_curve_reads_back_exactly(tmp_path):
    shells = BOX // 2 + 1
    corrected = np.linspace(1.0, -0.1, shells)
    unmasked = np.linspace(1.0, 0.2, shells)
    path = tmp_path / "postprocess.star"
    write_fsc_star(path, {"corrected": corrected, "unmasked": unmasked}, BOX, APIX,
                   {"final_resolution_A": 4.0})
    assert np.array_equal(read_fsc_curve(path), corrected)


def test_shells_are_placed_by_spectral_index(tmp_path):
    path = tmp_path / "fsc.star"
    table = pd.DataFrame({"rlnSpectralIndex": [2, 0, 1],
                          "rlnFourierShellCorrelation": [0.5, 1.0, 0.8]})
    write_star({"fsc": table}, path)
    assert np.array_equal(read_fsc_curve(path), [1.0, 0.8, 0.5])


def test_files_without_a_curve_are_refused(tmp_path):
    with pytest.raises(InputError, match="missing.star: --fsc: file not found"):
        read_fsc_curve(tmp_path / "missing.star")
    path = tmp_path / "general.star"
    write_star({"general": {"rlnFinalResolution": 4.0}}, path)
    with pytest.raises(InputError, match="rlnFourierShellCorrelationCorrected: no data_fsc"):
        read_fsc_curve(path)
    write_star({"fsc": pd.DataFrame({"rlnResolution": [0.0, 0.1]})}, path)
    with pytest.raises(InputError, match="no FSC column in data_fsc"):
        read_fsc_curve(path)
