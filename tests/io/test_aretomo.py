"""AreTomo ``.aln`` files: real AreTomo3 files (cryoet-alignment 0.2.0 sdist:
``tests/data/test.aln`` and ``test_thickness.aln``, trimmed by that package to 4 of 86 rows),
AreTomo2/3 numbering, round trips, and AreTomo's own IMOD export read back through IMOD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.errors import InputError
from subtomo.geometry import tilt_imod
from subtomo.geometry.tilt import RelionParameters, project_points, projection_matrices
from subtomo.io import aretomo, imod


def project(params, pixel_size_A, size, image, points):
    m = projection_matrices(*(torch.as_tensor(v) for v in params.as_tuple()), pixel_size_A, size,
                            image)
    return project_points(m, torch.as_tensor(points))[..., :2].numpy()


def test_real_aretomo3_files(cryoet_alignment_data, tmp_path):
    data = cryoet_alignment_data
    # as shipped, the file keeps 4 of its 86 aligned rows: the stack count no longer adds up
    with pytest.raises(InputError, match=r"test.aln: RawSize: 4 aligned and 4 dark frames, "
                                         r"but RawSize says the stack has 90 images"):
        aretomo.read_aln(data / "test.aln")
    text = (data / "test.aln").read_text().replace("RawSize = 2032 2032 90",
                                                   "RawSize = 2032 2032 8")
    (tmp_path / "test.aln").write_text(text)
    aln = aretomo.read_aln(tmp_path / "test.aln")
    assert aln.flavour == "aretomo3" and aln.num_patches == 16 and len(aln.dark_frames) == 4
    assert list(aln.sections) == [0, 1, 2, 3]  # AreTomo3's SEC is 1-based
    assert list(aln.tilt_deg) == [-61.5, -60.0, -58.5, -57.0]
    params = aretomo.aln_to_relion(aln, 1.5)  # RELION 5's readAreTomoResults mapping
    assert np.allclose(params.zrot, -12.6611) and np.allclose(params.ytilt, aln.tilt_deg)
    assert params.shift_x_A[0] == pytest.approx(24.786 * 1.5) and np.all(params.xtilt == 0)
    thick = (data / "test_thickness.aln").read_text().replace("2032 2032 90", "2032 2032 8")
    (tmp_path / "thick.aln").write_text(thick)
    assert aretomo.read_aln(tmp_path / "thick.aln").thickness_px == 1240


def test_aretomo2_numbering_and_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    n = 12
    params = RelionParameters(np.zeros(n), np.linspace(-54, 54, n), rng.uniform(80, 90, n),
                              rng.uniform(-50, 50, n), rng.uniform(-50, 50, n))
    sections = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12])  # section 7 is dark
    aretomo.write_aln(tmp_path / "a.aln", params, 2.0, (300, 280, 13), sections)
    aln = aretomo.read_aln(tmp_path / "a.aln")
    assert aln.flavour == "aretomo2" and list(aln.sections) == list(sections)
    assert len(aln.dark_frames) == 1 and aln.dark_frames[0][1] == 7
    back = aretomo.aln_to_relion(aln, 2.0)
    points = rng.uniform(0, 1, (100, 3)) * np.array([300, 280, 90])
    assert np.abs(project(back, 2.0, (300, 280, 90), (300, 280), points)
                  - project(params, 2.0, (300, 280, 90), (300, 280), points)).max() < 1e-3
    with pytest.raises(InputError, match="rlnTomoXTilt"):
        aretomo.write_aln(tmp_path / "b.aln", RelionParameters(
            np.ones(n), *params.as_tuple()[1:]), 2.0, (300, 280, 12))


def test_aretomo_imod_export_reads_back_the_same_geometry(tmp_path):
    """AreTomo2's ``-OutImod`` (``CSaveXF::mSaveForRelion``: A = Rot(−ROT), D = A·(−TX, −TY))
    read back through our exact IMOD path gives the .aln's angles, and shifts that differ only
    by IMOD's half-pixel centre conventions (RELION 5 reads .aln ignoring them, as we do)."""
    rng = np.random.default_rng(4)
    n = 9
    rot, tilt, t = rng.uniform(-95, -80, n), np.linspace(-48, 48, n), rng.uniform(-30, 30, (n, 2))
    tau = np.radians(rot)
    a = np.stack([np.stack([np.cos(-tau), -np.sin(-tau)], -1),
                  np.stack([np.sin(-tau), np.cos(-tau)], -1)], axis=1)
    d = np.einsum("tij,tj->ti", a, -t)
    al = imod.ImodAlignment(np.concatenate([a, d[:, :, None]], 2), tilt, np.zeros(n))
    via_imod = tilt_imod.imod_to_relion(al, 1.0, (512, 512, 128), (512, 512))
    assert np.allclose(via_imod.zrot, rot) and np.allclose(via_imod.ytilt, tilt)
    gap = np.hypot(via_imod.shift_x_A - t[:, 0], via_imod.shift_y_A - t[:, 1])
    assert gap.max() < 1.6


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.replace("# SEC", "# XYZ"), "no '# SEC ROT"),
    (lambda s: s.replace("-57.00\n", "nan\n", 1), r":14: TILT"),
    (lambda s: s.replace("    4   -12.6611", "    9   -12.6611"), r":14: SEC: section 9"),
    (lambda s: s.replace("-61.50", "-95.00"), r":11: TILT: tilt angle -95°"),
])
def test_bad_aln(cryoet_alignment_data, tmp_path, edit, match):
    text = (cryoet_alignment_data / "test.aln").read_text()
    text = text.replace("RawSize = 2032 2032 90", "RawSize = 2032 2032 8")
    (tmp_path / "bad.aln").write_text(edit(text))
    with pytest.raises(InputError, match=match):
        aretomo.read_aln(tmp_path / "bad.aln")
