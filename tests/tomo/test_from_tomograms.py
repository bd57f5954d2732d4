"""Seed 002's route: boxes from a tomogram at coordinates, CTF volumes from IMOD files."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.cli import build_parser, main
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import ctf_volume
from subtomo.fourier.grid import centred_irfft, centred_rfft, crop_spectrum
from subtomo.io.mrc import read_ctf_volume, read_mrc, write_mrc
from subtomo.io.star import read_particles
from subtomo.io.star_text import write_star
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import pseudo_atomic

ANGLES = np.arange(-60.0, 61.0, 3.0)


def _imod_files(folder, stem, angles, defocus_nm=3000, name="ctfplotter.defocus"):
    """``.tlt``, ``.order`` (3 e/Å² per tilt from 0°: pre-exposure = |angle|) and a ctfplotter
    file (U − V = 100 nm at 20°) beside a tomogram."""
    np.savetxt(folder / f"{stem}.tlt", angles)
    np.savetxt(folder / f"{stem}.order", np.stack([angles, np.abs(angles)], 1))
    lines = ["1 0 0.0 0.0 0.0 3"] + [
        f"{i + 1} {i + 1} {a} {a} {defocus_nm + 5 * i} {defocus_nm - 100 + 5 * i} 20"
        for i, a in enumerate(angles)]
    (folder / name).write_text("\n".join(lines) + "\n")


def _expected_ctf(box, pixel_size_A, c, size, keep):
    """The CTF volume of a particle at ``c`` (tomogram px) over the tilts ``keep`` (hand −1)."""
    theta = np.radians(ANGLES)
    d = (c - np.array([size, size, size]) / 2) * 10.0  # Å from the tomogram centre
    depth = -np.sin(theta) * d[0] + np.cos(theta) * d[2]
    mean = 29500 + 50 * np.arange(len(ANGLES)) - depth
    scheme = TiltScheme(tuple(ANGLES[keep]), tuple(np.abs(ANGLES[keep])))
    weights, _ = ctf_volume(box, pixel_size_A, scheme, torch.tensor(mean[keep][None]),
                            astigmatism_A=1000.0, astigmatism_angle_deg=20.0,
                            dtype=torch.float64)
    return weights[0]


@pytest.fixture
def one_tomogram(tmp_path):
    """A 64³ tomogram at 10 Å/px with one particle near its centre (and one whose boxes leave
    it); returns (tomograms.star, structure, coordinates)."""
    pixel_size_A, size = 10.0, 64
    structure = pseudo_atomic(300, box_px=14, pixel_size_A=pixel_size_A, seed=3)
    coords = np.array([[31.3, 32.6, 30.2], [3.0, 30.0, 30.0]])
    atoms = structure.positions_A + torch.tensor((coords[0] - size // 2) * pixel_size_A)
    tomogram = render_atoms(atoms[None], structure.amplitudes, size, pixel_size_A, 12.0)[0]
    folder = tmp_path / "TS_001"
    folder.mkdir()
    write_mrc(folder / "TS_001.mrc", tomogram, pixel_size_A)
    np.savetxt(folder / "TS_001.coords", coords)
    _imod_files(folder, "TS_001", ANGLES)
    write_star({"": pd.DataFrame({"rlnMicrographName": [str(folder / "TS_001.mrc")]})},
               tmp_path / "tomograms.star")
    return tmp_path / "tomograms.star", structure, coords


def test_crop_and_pixel_size_give_the_fourier_cropped_box(one_tomogram, tmp_path):
    """``--b 20 --crop 16 --angpix 20`` on a 10 Å/px tomogram: a 40-voxel box Fourier-cropped to
    20 px of 20 Å and its central 16³, the CTF volume 16³ at 20 Å; ``--bin 2`` the same."""
    star, structure, coords = one_tomogram
    out, binned = tmp_path / "out", tmp_path / "binned"
    assert main(["extract", "--tomograms_star", str(star), "--b", "20", "--crop", "16",
                 "--angpix", "20", "--o", str(out)]) == 0
    assert main(["extract", "--tomograms_star", str(star), "--b", "20", "--crop", "16",
                 "--bin", "2", "--o", str(binned)]) == 0
    ps = read_particles(out / "particles.star")
    assert len(ps) == 1
    assert float(ps.optics["rlnImagePixelSize"].iloc[0]) == 20.0
    assert int(ps.optics["rlnImageSize"].iloc[0]) == 16
    data, pixel_size_A = read_mrc(ps.particles["rlnImageName"].iloc[0])
    assert data.shape == (16, 16, 16) and pixel_size_A == 20.0
    reference = render_atoms(structure.positions_A[None], structure.amplitudes, 40, 10.0,
                             12.0)[0].double()
    expected = centred_irfft(crop_spectrum(centred_rfft(reference), 20), 20) / 8
    expected = expected[2:18, 2:18, 2:18]
    assert np.abs(data - expected.numpy()).max() < 0.02 * float(expected.abs().max())
    ctf = read_ctf_volume(ps.particles["rlnCtfImage"].iloc[0], 16)
    keep = np.ones(len(ANGLES), bool)
    assert (ctf.double() - _expected_ctf(16, 20.0, coords[0], 64, keep)).abs().max() < 1e-4
    other = read_particles(binned / "particles.star")
    np.testing.assert_array_equal(read_mrc(other.particles["rlnImageName"].iloc[0])[0], data)


def test_max_tilts_and_max_dose_restrict_the_ctf_volume(one_tomogram, tmp_path):
    """The 11 least exposed tilts (0°, ±3° … ±15°) are those of at most 15 e/Å²."""
    star, _, coords = one_tomogram
    keep = np.abs(ANGLES) <= 15.0
    for option, value in (("--max_tilts", "11"), ("--max_dose", "15")):
        out = tmp_path / option[2:]
        assert main(["extract", "--tomograms_star", str(star), "--b", "16", option, value,
                     "--o", str(out)]) == 0
        ps = read_particles(out / "particles.star")
        ctf = read_ctf_volume(ps.particles["rlnCtfImage"].iloc[0], 16).double()
        assert (ctf - _expected_ctf(16, 10.0, coords[0], 64, keep)).abs().max() < 1e-4
        every = _expected_ctf(16, 10.0, coords[0], 64, np.ones(len(ANGLES), bool))
        assert (ctf - every).abs().max() > 0.1


@pytest.mark.parametrize("args, option", [
    (["--2d_stacks"], "--2d_stacks"), (["--pad2d", "2"], "--pad2d"),
    (["--recenter"], "--recenter"), (["--i", "optimisation_set.star"], "--i"),
    (["--angpix", "5"], "--angpix"), (["--b", "22", "--angpix", "13.3"], "--angpix")])
def test_options_without_meaning_for_tomograms_are_refused(one_tomogram, tmp_path, capsys,
                                                           args, option):
    star, _, _ = one_tomogram
    out = tmp_path / "refused"
    assert main(["extract", "--tomograms_star", str(star), "--b", "16", *args, "--o",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err, err
    assert not out.exists()


def test_batches_give_the_same_files(tmp_path, capsys):
    """Two tomograms, several particles: one batch or one particle at a time, same boxes."""
    pixel_size_A, size = 10.0, 48
    structure = pseudo_atomic(100, box_px=10, pixel_size_A=pixel_size_A, seed=4)
    names = []
    for t in range(2):
        coords = np.array([[16.2, 20.0, 24.4], [30.0, 28.7, 22.1], [24.5, 16.3, 30.0]]) + t
        atoms = torch.cat([structure.positions_A + torch.tensor((c - size // 2) * pixel_size_A)
                           for c in coords])
        tomogram = render_atoms(atoms[None], structure.amplitudes.repeat(3), size, pixel_size_A,
                                12.0)[0]
        folder = tmp_path / f"TS_{t}"
        folder.mkdir()
        write_mrc(folder / f"TS_{t}.mrc", tomogram, pixel_size_A)
        np.savetxt(folder / f"TS_{t}.coords", coords)
        _imod_files(folder, f"TS_{t}", ANGLES)
        names.append(str(folder / f"TS_{t}.mrc"))
    write_star({"": pd.DataFrame({"rlnMicrographName": names})}, tmp_path / "tomograms.star")
    files = []
    for batch in ("1", "32"):
        out = tmp_path / f"batch{batch}"
        assert main(["extract", "--tomograms_star", str(tmp_path / "tomograms.star"), "--b",
                     "12", "--batch", batch, "--o", str(out)]) == 0
        files.append({p.relative_to(out): read_mrc(p)[0]
                      for p in sorted((out / "Subtomograms").rglob("*.mrc"))})
    assert len(files[0]) == 12 and files[0].keys() == files[1].keys()
    for name, data in files[0].items():  # the FFTs of a batch round differently
        np.testing.assert_allclose(files[1][name], data, rtol=0,
                                   atol=1e-5 * np.abs(data).max())


def _extract_options() -> dict[str, argparse.Action]:
    parser = next(a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction)).choices["extract"]
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings
            and not isinstance(a, argparse._HelpAction)}


def test_every_extract_option_changes_the_tomogram_route_or_is_refused(one_tomogram, tmp_path,
                                                                        capsys):
    """Each option of ``extract`` on the tomogram route either changes what is written or is
    refused with its name: none is accepted and dropped. A new option fails here until it is
    given a case."""
    star, _, _ = one_tomogram
    folder = star.parent / "TS_001"
    np.savetxt(folder / "TS_001.xyz", [[32.0, 31.0, 32.0]])
    _imod_files(folder, "TS_001", ANGLES, defocus_nm=5000, name="other.defocus")
    changes = {  # option → (its arguments, the baseline's)
        "--crop": (["--crop", "12"], []), "--bin": (["--b", "8", "--bin", "2"], ["--b", "8"]),
        "--angpix": (["--b", "8", "--angpix", "20"], ["--b", "8"]),
        "--max_dose": (["--max_dose", "15"], []), "--max_tilts": (["--max_tilts", "5"], []),
        "--norm": (["--norm"], []), "--bg_radius": (["--norm", "--bg_radius", "3"], ["--norm"]),
        "--ctf_layout": (["--ctf_layout", "warp"], []), "--hand": (["--hand", "1"], []),
        "--invert_contrast": (["--invert_contrast"], []),
        "--coord_suffix": (["--coord_suffix", ".xyz"], []),
        "--tomo_angpix": (["--tomo_angpix", "5"], []),
        "--defocus": (["--defocus", "other.defocus"], []),
        **{f"--{f}": ([f"--{f}"], []) for f in ("relion4", "relion31", "relion30", "warp")},
    }
    refused = {"--i": "x.star", "--p": "x.star", "--t": "x.star", "--mot": "x.star",
               "--recenter": None, "--2d_stacks": None, "--pad2d": "2", "--premultiplied": None}
    # the route's own inputs, the default flavour, and how (not what) it computes
    inputs = {"--tomograms_star", "--o", "--b", "--relion5", "--batch", "--j", "--device"}
    options = _extract_options()
    assert set(options) == set(changes) | set(refused) | inputs

    def written(args, name):
        out = tmp_path / name
        code = main(["extract", "--tomograms_star", str(star), "--b", "16", *args, "--o",
                     str(out)])
        if code:
            return code
        return {p.relative_to(out): p.read_bytes().replace(name.encode(), b"OUT")
                for p in sorted(out.rglob("*")) if p.is_file()}

    for k, (option, (args, baseline)) in enumerate(changes.items()):
        assert written(args, f"a{k}") != written(baseline, f"b{k}"), option
    for option, value in refused.items():
        capsys.readouterr()
        assert written([option] + ([value] if value else []), "refused") == 2, option
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{option} needs" in err, err


def test_tomogram_route(tmp_path, capsys):
    pixel_size_A, size, box = 10.0, 64, 24
    structure = pseudo_atomic(300, box_px=16, pixel_size_A=pixel_size_A, seed=2)
    coords = np.array([[20.3, 30.6, 25.2], [44.7, 33.1, 38.9], [2.0, 30.0, 30.0]])
    atoms = torch.cat([structure.positions_A + torch.tensor((c - size // 2) * pixel_size_A)
                       for c in coords[:2]])
    tomogram = render_atoms(atoms[None], structure.amplitudes.repeat(2), size, pixel_size_A,
                            12.0)[0]
    folder = tmp_path / "TS_026"
    folder.mkdir()
    write_mrc(folder / "TS_026.mrc", tomogram, pixel_size_A)
    np.savetxt(folder / "TS_026.coords", coords)
    angles = np.arange(-60.0, 61.0, 3.0)
    np.savetxt(folder / "TS_026.tlt", angles)
    dose = np.abs(angles) / 3 * 3.0
    np.savetxt(folder / "TS_026.order", np.stack([angles, dose], 1))
    lines = ["1 0 0.0 0.0 0.0 3"] + [f"{i + 1} {i + 1} {a} {a} {3000 + 5 * i} {2900 + 5 * i} 20"
                                     for i, a in enumerate(angles)]
    (folder / "ctfplotter.defocus").write_text("\n".join(lines) + "\n")
    write_star({"": pd.DataFrame({"rlnMicrographName": [str(folder / "TS_026.mrc")]})},
               tmp_path / "tomograms.star")
    out = tmp_path / "out"
    assert main(["extract", "--tomograms_star", str(tmp_path / "tomograms.star"), "--b",
                 str(box), "--o", str(out), "--relion30"]) == 0
    assert "1 skipped" in capsys.readouterr().out
    ps = read_particles(out / "particles.star")
    assert len(ps) == 2 and ps.flavour == "relion30"
    for i, c in enumerate(coords[:2]):
        data, _ = read_mrc(ps.particles["rlnImageName"].iloc[i])
        expected = render_atoms(structure.positions_A[None], structure.amplitudes, box,
                                pixel_size_A,
                                12.0)[0]
        assert np.abs(data - expected.numpy()).max() < 0.02 * expected.abs().max()
        ctf = read_ctf_volume(ps.particles["rlnCtfImage"].iloc[i], box)
        theta = np.radians(angles)
        d = (c - np.array([size, size, size]) / 2) * pixel_size_A  # Å from the tomogram centre
        depth = -np.sin(theta) * d[0] + np.cos(theta) * d[2]
        mean = 29500 + 50 * np.arange(len(angles)) - depth  # hand −1
        scheme = TiltScheme(tuple(angles), tuple(dose))
        weights, _ = ctf_volume(box, pixel_size_A, scheme, torch.tensor(mean[None]),
                                astigmatism_A=1000.0,
                                astigmatism_angle_deg=20.0, dtype=torch.float64)
        assert (ctf.double() - weights[0]).abs().max() < 1e-4
    # a NaN in the tomogram inside the second particle's box (after the first was written):
    # one line naming the file and the particle, exit 2, nothing left of the job
    tomogram[38, 33, 44] = float("nan")
    write_mrc(folder / "TS_026.mrc", tomogram, pixel_size_A)
    capsys.readouterr()
    bad = tmp_path / "bad" / "job"
    assert main(["extract", "--tomograms_star", str(tmp_path / "tomograms.star"), "--b",
                 str(box), "--o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TS_026.mrc" in err and "particle 2" in err, err
    assert not (tmp_path / "bad").exists()
