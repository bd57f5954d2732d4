"""Tomograms: particles appear at their coordinates; the command and its files."""

from __future__ import annotations

import numpy as np
import torch

from subtomo.cli import main
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_tomogram_set
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.simulate.truth_tomogram import masked, masked_fsc, particle_mask, truth_tomogram
from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram


def _centres(sim) -> np.ndarray:
    ps = read_particles(sim.truth_particles_star)
    ts = sim.truth_tomograms["TS_01"]
    centred = torch.tensor(ps.particles[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]]
                           .to_numpy(float))
    return ts.centred_to_px(centred).numpy()


def test_particles_appear_at_their_coordinates(tmp_path):
    config = TiltSeriesConfig(n_particles=8, image_size_px=(192, 192), thickness_px=64,
                              box_px=20, n_atoms=500, tilt_step_deg=3.0, seed=7)
    sim = simulate_tiltseries(tmp_path / "sim", config, progress=False)
    ts = read_tomogram_set(sim.truth_tomograms_star)["TS_01"]
    for weighting, ctf in (("ramp", "none"), ("sirt", "wiener")):
        volume, pixel_size_A = reconstruct_tomogram(ts, binning=2.0, weighting=weighting, ctf=ctf,
                                                    progress=False)
        assert volume.shape == (32, 96, 96) and pixel_size_A == 20.0
        dark = -torch.nn.functional.avg_pool3d(volume[None, None], 3, 1, 1)[0, 0]
        for centre in _centres(sim) / 2.0:  # binned voxels
            z, y, x = np.round(centre[::-1]).astype(int)
            window = dark[max(z - 3, 0):z + 4, y - 3:y + 4, x - 3:x + 4]
            peak = np.unravel_index(int(window.argmax()), window.shape)
            offset = np.array(peak) - np.array([min(z, 3), 3, 3])
            assert np.abs(offset).max() <= 1, (weighting, centre, offset)
        background = dark.flatten()
        assert float(dark[tuple(np.round(_centres(sim)[0][::-1] / 2).astype(int))]) > float(
            background.quantile(0.99))


def test_command_writes_tomograms(project, tmp_path):
    out = tmp_path / "rec"
    assert main(["reconstruct-tomogram", "--t", str(project.truth_tomograms_star), "--bin", "4",
                 "--d", "40", "--filter", "sirt", "--o", str(out)]) == 0
    volume, pixel_size_A = read_mrc(out / "tomograms" / "rec_TS_01.mrc")
    assert volume.shape == (10, 56, 56) and pixel_size_A == 40.0
    ts = read_tomogram_set(out / "tomograms.star")["TS_01"]
    assert ts.globals["rlnTomoTomogramBinning"] == 4.0


def test_tomogram_matches_the_true_density_from_the_lowest_shells_to_nyquist(tmp_path):
    """Noise-free project 32 px thick at bin 4 (8 voxels): the tomogram against the true density
    (the map at each true pose, :mod:`subtomo.simulate.truth_tomogram`) within the particle
    regions. Every shell up to Nyquist keeps its signal (images apodised to 0 at Nyquist lose the
    top shells: FSC < 0), and the lowest shells, where every tilt's slice of so thin a tomogram
    overlaps the others, are not under-weighted by a bare ramp (bottom quarter 0.95; 0.86)."""
    config = TiltSeriesConfig(n_particles=12, image_size_px=(256, 256), thickness_px=32,
                              box_px=20, n_atoms=500, tilt_step_deg=3.0, seed=3)
    sim = simulate_tiltseries(tmp_path / "sim", config, progress=False)
    ts = read_tomogram_set(sim.truth_tomograms_star)["TS_01"]
    volume, pixel_size_A = reconstruct_tomogram(ts, binning=4.0, progress=False)
    truth = truth_tomogram(sim.directory / "truth", 4)
    mask = particle_mask(sim.directory / "truth", 4, tuple(truth.shape), config.box_px / 2)
    curve, _ = masked_fsc(masked(-volume, mask), masked(truth, mask), pixel_size_A)
    n = len(curve) - 1  # Nyquist shell
    assert float(curve[n // 2:].min()) > 0.6, curve  # the top half
    assert float(curve[1:n // 4].mean()) > 0.92, curve  # the bottom quarter
