"""Seed 002's route: boxes from a tomogram at coordinates, CTF volumes from IMOD files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from subtomo.cli import main
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import ctf_volume
from subtomo.io.mrc import read_ctf_volume, read_mrc, write_mrc
from subtomo.io.star import read_particles
from subtomo.io.star_text import write_star
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import pseudo_atomic


def test_tomogram_route(tmp_path, capsys):
    apix, size, box = 10.0, 64, 24
    structure = pseudo_atomic(300, box_px=16, pixel_size_A=apix, seed=2)
    coords = np.array([[20.3, 30.6, 25.2], [44.7, 33.1, 38.9], [2.0, 30.0, 30.0]])
    atoms = torch.cat([structure.positions_A + torch.tensor((c - size // 2) * apix)
                       for c in coords[:2]])
    tomogram = render_atoms(atoms[None], structure.amplitudes.repeat(2), size, apix, 12.0)[0]
    folder = tmp_path / "TS_026"
    folder.mkdir()
    write_mrc(folder / "TS_026.mrc", tomogram, apix)
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
        expected = render_atoms(structure.positions_A[None], structure.amplitudes, box, apix,
                                12.0)[0]
        assert np.abs(data - expected.numpy()).max() < 0.02 * expected.abs().max()
        ctf = read_ctf_volume(ps.particles["rlnCtfImage"].iloc[i], box)
        theta = np.radians(angles)
        d = (c - np.array([size, size, size]) / 2) * apix  # Å from the tomogram centre
        depth = -np.sin(theta) * d[0] + np.cos(theta) * d[2]
        mean = 29500 + 50 * np.arange(len(angles)) - depth  # hand −1
        scheme = TiltScheme(tuple(angles), tuple(dose))
        weights, _ = ctf_volume(box, apix, scheme, torch.tensor(mean[None]), astigmatism_A=1000.0,
                                astigmatism_angle_deg=20.0, dtype=torch.float64)
        assert (ctf.double() - weights[0]).abs().max() < 1e-4
    # a NaN in the tomogram inside the second particle's box (after the first was written):
    # one line naming the file and the particle, exit 2, nothing left of the job
    tomogram[38, 33, 44] = float("nan")
    write_mrc(folder / "TS_026.mrc", tomogram, apix)
    capsys.readouterr()
    bad = tmp_path / "bad" / "job"
    assert main(["extract", "--tomograms_star", str(tmp_path / "tomograms.star"), "--b",
                 str(box), "--o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TS_026.mrc" in err and "particle 2" in err, err
    assert not (tmp_path / "bad").exists()
