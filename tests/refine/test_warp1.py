"""Warp 1 sub-tilt series (cryoDRGN's ``sta_testing_bin8.star``) reconstructed with their
per-image poses, against cryoDRGN 4.3.1's own ``backproject_voxel`` of the same files
(``tests/data/cryodrgn_subtilts/PROVENANCE.md``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.fourier.fsc import fsc
from subtomo.fourier.grid import frequencies_2d
from subtomo.io.mrc import read_mrc, read_mrc_header
from subtomo.io.star_text import read_star, write_star
from subtomo.io.warp1_series import is_warp1_series, read_warp1_series
from subtomo.refine.warp1 import image_ctfs, image_spectra

DATA = Path(__file__).resolve().parents[1] / "data" / "cryodrgn_subtilts"
STAR = DATA / "sta_testing_bin8.star"
STACK = DATA / "ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs"
CRYODRGN = DATA / "cryodrgn_backproject_voxel_tilt.mrc"  # cryoDRGN 4.3.1, PROVENANCE.md
PIXEL_A = 14.56  # 1.82 Å × bin 8: cryoDRGN's own CTF file for this set (PROVENANCE.md)


def _map(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(read_mrc(path)[0], dtype=np.float32))


def test_reconstruction_matches_cryodrgn_in_its_hand(tmp_path, capsys):
    out = tmp_path / "warp1.mrc"
    assert main(["reconstruct", "--i", str(STAR), "--angpix", str(PIXEL_A), "--o", str(out),
                 "--halves"]) == 0
    assert "Reconstructed 6 particles" in capsys.readouterr().out
    assert read_mrc_header(out) == ((64, 64, 64), pytest.approx(PIXEL_A))
    for name in ("warp1_half1.mrc", "warp1_half2.mrc", "warp1_fsc.star"):
        assert (tmp_path / name).is_file()
    # the plain map (no half-set Wiener filter), as cryoDRGN's
    plain = tmp_path / "plain.mrc"
    assert main(["reconstruct", "--i", str(STAR), "--angpix", str(PIXEL_A), "--o",
                 str(plain)]) == 0
    ours, theirs = _map(plain), _map(CRYODRGN)
    curve = fsc(ours, theirs).numpy()
    # measured (pad 2; cryoDRGN --reg-weight 1): 0.83 / 0.71 / 0.73 / 0.67 at shells 3 / 8 /
    # 16 / 31 (311 / 116 / 58 / 30 Å), min 0.67 and mean 0.73 over shells 1-31 (0.53 at
    # Nyquist); the rest is the two interpolation kernels' different share of the noise of
    # 6 particles (with --pad 1, as cryoDRGN's grid: 0.84-0.91 at every shell)
    assert np.all(curve[1:32] >= 0.6)
    assert curve[1:32].mean() >= 0.7
    mirror = fsc(ours, theirs.flip(0)).numpy()  # the other hand: z → −z
    assert mirror[5:32].mean() < 0.1  # measured 0.03 (0.3-0.44 at shells 1-4: a blob)
    assert np.all(mirror[5:32] < curve[5:32] - 0.4)
    wrong_pixel = tmp_path / "pixel_196.mrc"  # the STAR's own, unbinned, pixel size: wrong CTF
    assert main(["reconstruct", "--i", str(STAR), "--o", str(wrong_pixel)]) == 0
    assert "pixel size 1.96 Å from its rows" in capsys.readouterr().err
    assert fsc(_map(wrong_pixel), theirs).numpy()[8:32].mean() < 0.2  # measured 0.004


def test_warp1_files_are_told_from_single_particle_ones(tmp_path):
    assert is_warp1_series(STAR)
    table = read_star(STAR)[""]
    table["rlnMicrographName"] = "one_micrograph.mrc"  # RELION 3.0 groups: many per micrograph
    write_star({"": table}, tmp_path / "spa.star")
    assert not is_warp1_series(tmp_path / "spa.star")


def test_image_origin_is_undone():
    """Content at −o (RELION's origin o) comes back to the centre: the spectrum of the
    centred image."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(1, 16, 16)))
    moved = torch.roll(image, shifts=(-2, 3), dims=(-2, -1))  # content at (x, y) = (3, −2)
    origin = torch.tensor([[-3.0, 2.0]])
    expected = image_spectra(image, torch.zeros(1, 2))
    assert torch.allclose(image_spectra(moved, origin), expected, atol=1e-10)


def test_image_ctf_is_scaled_ctf_times_exposure_filter():
    """c = rlnCtfScalefactor · CTF · Grant–Grigorieff filter at N = −rlnCtfBfactor / 4."""
    ps, series = read_warp1_series(STAR, pixel_size_A=PIXEL_A)
    s = next(iter(series.values()))
    optics = ps.optics.iloc[0].to_dict()
    c = image_ctfs(s, optics, 64, PIXEL_A, torch.device("cpu"))
    j = 10  # 11th exposure: B = −143 Å², N = 35.75 e/Å²
    freqs = frequencies_2d(64, PIXEL_A).float()
    u, v, a = s.defocus[j]
    expected = (ctf_2d(freqs, u, v, a, 300.0, 2.7, 0.07)
                * dose_filter(freqs.norm(dim=-1), 35.75) * s.columns["rlnCtfScalefactor"][j])
    assert s.columns["rlnCtfBfactor"][j] == -143.0
    assert torch.allclose(c[j], expected.float(), atol=1e-6)


def _copy(tmp_path: Path) -> Path:
    shutil.copy(STACK, tmp_path / STACK.name)
    return tmp_path / STAR.name


@pytest.mark.parametrize("change", ["beyond", "missing"])
def test_bad_image_is_refused_in_one_line_and_nothing_written(tmp_path, capsys, change):
    star = _copy(tmp_path)
    table = read_star(STAR)[""]
    if change == "beyond":  # the stack has 220 images
        table.loc[5, "rlnImageName"] = f"000221@{STACK.name}"
    else:
        table.loc[5, "rlnImageName"] = "000006@absent.mrcs"
    write_star({"": table}, star)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.mrc"
    assert main(["reconstruct", "--i", str(star), "--angpix", str(PIXEL_A), "--o", str(out),
                 "--halves"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rlnImageName" in err[0] and str(star) in err[0]
    assert ("beyond its stack of 220 images" if change == "beyond" else "not found") in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
