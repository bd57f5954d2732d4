"""Extraction against reconstruct-particle and the truth, CTF volumes against the signal,
rescaling, the command's options and bad input."""

from __future__ import annotations

import math
import shutil

import mrcfile
import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.ctf.slice_gather import SliceGather
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.fourier.grid import (
    centred_rfft,
    frequencies_2d,
    lowpass_mask,
    resample_map,
    shell_index,
)
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.tilt import tilt_rotations
from subtomo.io.mrc import read_ctf_volume, read_mrc
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_tomogram_set, write_tomogram_set
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import pseudo_atomic
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle


def _half_res(project, tomograms, tmp_path, name):
    ps = read_particles(project.truth_particles_star)
    ts = read_tomogram_set(tomograms)
    result = extract_subtomograms(ps, ts, tmp_path / name, ExtractOptions(box=24),
                                  progress=False)
    return reconstruct(read_particles(result.star), ctf=True, halves=True, progress=False)


def test_extraction_matches_reconstruct_particle_and_wrong_geometry_is_worse(project,
                                                                              tmp_path):
    good = _half_res(project, project.truth_tomograms_star, tmp_path, "good")
    direct = reconstruct_particle(read_particles(project.truth_particles_star),
                                  read_tomogram_set(project.truth_tomograms_star), box=24,
                                  progress=False)
    bad = _half_res(project, project.tomograms_star, tmp_path, "bad")
    res = [resolution_at(r.fsc, 24, 10.0, 0.5) for r in (good, direct, bad)]
    assert abs(res[0] - res[1]) < 0.05 * res[1]
    assert res[2] > 1.15 * res[0]
    truth = torch.from_numpy(read_mrc(project.truth_maps[0])[0])
    assert resolution_at(fsc(good.map, truth), 24, 10.0, 0.5) < 30.0


def test_premultiplied_extraction_is_nearer_the_truth(project, tmp_path, capsys):
    """``--premultiplied`` (RELION 5's pseudo-subtomograms ``B = Σ τ c Y``, ``W = Σ τ c²``,
    2D crops cut to RELION's soft circle) read by ``reconstruct --ctf`` with the true geometry:
    mean FSC against the truth over the shells to Nyquist at least that of the normalised
    subtomograms ``X = Σ τ Y / max(Σ τ, 1)`` with ``C = Σ τ c / max(Σ τ, 1)`` (here 0.871
    against 0.819; without the circle crop 0.826), and above 0.85. The weights
    file is ``W`` above the multiplicity ``M = Σ τ`` (``W ≤ M``: ``c² ≤ 1``), RELION's labels
    are written; ``--norm`` with it is refused in one line."""
    truth = torch.from_numpy(read_mrc(project.truth_maps[0])[0])
    ps = read_particles(project.truth_particles_star)
    tomograms = read_tomogram_set(project.truth_tomograms_star)
    score = {}
    for premultiplied in (False, True):
        result = extract_subtomograms(ps, tomograms, tmp_path / str(premultiplied),
                                      ExtractOptions(box=24, premultiplied=premultiplied),
                                      progress=False)
        written = read_particles(result.star)
        m = reconstruct(written, ctf=True, progress=False).map
        score[premultiplied] = float(fsc(m, truth)[1:13].mean())
    assert score[True] >= score[False] and score[True] > 0.85, score
    assert written.optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [1]
    assert written.optics["rlnImageDimensionality"].tolist() == [3]
    weights, voxel_A = read_mrc(written.particles["rlnCtfImage"].iloc[0])[:2]
    assert str(written.particles["rlnCtfImage"].iloc[0]).endswith("1_weights.mrc")
    assert weights.shape == (48, 24, 13) and voxel_A == pytest.approx(0.1)
    assert (weights[:24] <= weights[24:] + 1e-5).all() and weights[24:].max() > 1
    truth_opt = project.directory / "truth" / "optimisation_set.star"
    capsys.readouterr()
    assert main(["extract", "--i", str(truth_opt), "--b", "24", "--premultiplied", "--norm",
                 "--o", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--premultiplied" in error
    assert not (tmp_path / "bad").exists()


def test_ctf_volume_matches_the_extracted_signal(tmp_path):
    """Noise-free single particle: per shell, the extracted spectrum regressed on CTF volume ×
    the truth rendered at the particle's pose has slope 1 within 5 %."""
    config = TiltSeriesConfig(n_particles=1, image_size_px=(160, 160), thickness_px=60,
                              box_px=20, n_atoms=500, tilt_step_deg=3.0, seed=5)
    sim = simulate_tiltseries(tmp_path / "sim", config, progress=False)
    ps = read_particles(sim.truth_particles_star)
    box = 32
    result = extract_subtomograms(ps, read_tomogram_set(sim.truth_tomograms_star),
                                  tmp_path / "ex", ExtractOptions(box=box), progress=False)
    row = read_particles(result.star).particles.iloc[0]
    data = torch.from_numpy(read_mrc(tmp_path / "ex" / "Subtomograms" / "TS_01" / "1_data.mrc")[0])
    ctf = read_ctf_volume(tmp_path / "ex" / "Subtomograms" / "TS_01" / "1_ctf.mrc", box)
    structure = pseudo_atomic(500, box_px=20, pixel_size_A=10.0, seed=5)
    A = euler_to_matrix(torch.tensor([[row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi]],
                                     dtype=torch.float64))[0]
    truth = render_atoms((structure.positions_A @ A.T)[None], structure.amplitudes, box, 10.0,
                         config.sigma_A, dtype=torch.float64)[0]
    x = centred_rfft(data.double())
    model = centred_rfft(truth) * ctf.double()
    shells = shell_index(box).reshape(-1)
    cross = torch.zeros(box).index_add_(0, shells, (x * model.conj()).real.reshape(-1).float())
    power = torch.zeros(box).index_add_(0, shells, model.abs().square().reshape(-1).float())
    slope = cross / power
    strong = power > 1e-3 * power[1:box // 2].max()
    strong[0] = False
    strong[int(0.8 * box / 2):] = False
    assert strong.sum() > 8
    assert (slope[strong] - 1).abs().max() < 0.05


def test_rescaled_extractions_agree(tmp_path):
    """At 1.6 Å/px from 0.8 Å/px images, Fourier-cropped to 5 Å/px, equals extraction at 5."""
    config = TiltSeriesConfig(n_particles=1, image_size_px=(256, 256), thickness_px=80,
                              pixel_size_A=0.8, box_px=64, n_atoms=400, tilt_step_deg=30.0,
                              dose_per_tilt=0.0, defocus_um=(0.0, 0.0), defocus_tilt_sd_A=0.0,
                              cs_mm=0.0, amplitude_contrast=1.0, hand=0.0, seed=3)
    sim = simulate_tiltseries(tmp_path / "sim", config, progress=False)
    ps = read_particles(sim.truth_particles_star)
    ts = read_tomogram_set(sim.truth_tomograms_star)
    volumes = []
    for name, box, pixel_size_A in (("a", 50, 1.6), ("b", 16, 5.0)):
        options = ExtractOptions(box=box, pixel_size_A=pixel_size_A)
        extract_subtomograms(ps, ts, tmp_path / name, options, progress=False)
        path = tmp_path / name / "Subtomograms" / "TS_01" / "1_data.mrc"
        volume, written_pixel_size_A = read_mrc(path)
        assert written_pixel_size_A == pytest.approx(pixel_size_A)
        volumes.append(torch.from_numpy(volume))
    cropped, coarse = resample_map(volumes[0], 16), volumes[1]
    assert fsc(cropped, coarse)[1:8].min() > 0.99
    inside = lowpass_mask(16, 0.9 * 8, edge_px=0)
    a, b = centred_rfft(cropped) * inside, centred_rfft(coarse) * inside
    assert float((a - b).abs().norm() / b.abs().norm()) < 0.05


def test_command_options_and_bad_input(project, tmp_path, capsys):
    truth_opt = project.directory / "truth" / "optimisation_set.star"
    out = tmp_path / "ex"
    assert main(["extract", "--i", str(truth_opt), "--b", "24", "--crop", "20", "--max_tilts",
                 "11", "--norm", "--warp", "--o", str(out)]) == 0
    ps = read_particles(out / "particles.star")
    assert ps.flavour == "warp" and len(ps) == 30
    volume, _ = read_mrc(ps.particles["rlnImageName"].iloc[0])
    assert volume.shape == (20, 20, 20)
    r = np.sqrt(sum(a**2 for a in np.meshgrid(*[np.arange(20) - 10] * 3, indexing="ij")))
    background = volume[r > 7.5]  # --norm: zero mean, unit σ outside 75 % of the half box
    assert abs(background.mean()) < 1e-4 and abs(background.std() - 1) < 1e-3
    stacks = tmp_path / "st"
    assert main(["extract", "--i", str(truth_opt), "--b", "32", "--crop", "24", "--2d_stacks",
                 "--max_dose", "30", "--o", str(stacks)]) == 0
    ps = read_particles(stacks / "particles.star")
    stack, _ = read_mrc(ps.particles["rlnImageName"].iloc[0])
    assert stack.shape == (11, 24, 24)  # tilts with ≤ 30 e/Å² at 3 e/Å² per tilt
    assert ps.general["rlnTomoSubTomosAre2DStacks"] == 1
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["extract", "--p", str(project.particles_star), "--b", "24", "--o",
                 str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not bad.exists()
    # a NaN in one tilt image of a copy of the project: the stack and the image are named
    copy = tmp_path / "copy"
    shutil.copytree(project.directory, copy)
    for star in copy.rglob("*.star"):  # the project's STAR files name absolute paths
        star.write_text(star.read_text().replace(str(project.directory), str(copy)))
    with mrcfile.open(copy / "tilt_series" / "TS_01.mrcs", mode="r+") as mrc:
        mrc.data[4, 100, 100] = np.inf
    assert main(["extract", "--i", str(copy / "optimisation_set.star"), "--b", "24", "--o",
                 str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TS_01.mrcs" in err and "image 5" in err, err
    assert not bad.exists()


def test_boxes_leaving_the_images_are_skipped_with_a_count(project, tmp_path):
    ps = read_particles(project.truth_particles_star)
    df = ps.particles.copy()
    df.loc[0, "rlnCenteredCoordinateXAngst"] = 3000.0  # outside the 224-px images at ≤ 60°
    ps.particles = df
    result = extract_subtomograms(ps, read_tomogram_set(project.truth_tomograms_star),
                                  tmp_path / "x", ExtractOptions(box=24), progress=False)
    assert result.skipped == 1 and result.written == 29
    assert len(read_particles(result.star)) == 29
    assert np.all(read_particles(result.star).particles["rlnTomoParticleName"] != "TS_01/1")


@pytest.mark.parametrize("box", [20, 21])
def test_slice_gather_centres_odd_and_even_boxes(box):
    """A blob centred in every tilt's crop becomes a subtomogram centred on voxel ``D // 2``,
    point-symmetric about it (the even box's centring is folded into the operator, the odd
    box's is a shift after the transform)."""
    angles = torch.arange(-60.0, 61.0, 6.0, dtype=torch.float64)
    zero = torch.zeros_like(angles)
    frames = tilt_rotations(zero, angles, zero + 30.0)
    gather = SliceGather(box, 5.0, frames, (5.0, 5.0), box, angles.abs().float(),
                         voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)
    k = frequencies_2d(box, (1.0, 1.0))
    blob = torch.exp(-2 * math.pi**2 * 1.5**2 * k.square().sum(-1))  # σ 1.5 px, at the centre
    volume = gather.volumes(blob.expand(1, len(angles), -1, -1).to(torch.complex64))[0]
    c = box // 2
    assert torch.equal(torch.nonzero(volume == volume.max())[0], torch.tensor([c, c, c]))
    inner = volume[c - 3:c + 4, c - 3:c + 4, c - 3:c + 4]
    torch.testing.assert_close(inner, inner.flip(0, 1, 2), rtol=0, atol=1e-4 * float(inner.max()))


def test_hand_and_invert_contrast_on_tilt_series_tomogram_options_refused(project, tmp_path,
                                                                          capsys):
    """``--hand`` replaces each tilt series' rlnTomoHand (the CTF volumes are those of a
    tomograms.star with the other hand); ``--invert_contrast`` writes −1 × the subtomograms;
    the tomogram route's own options are refused by name."""
    truth = read_tomogram_set(project.truth_tomograms_star)
    hand = next(iter(truth.series.values())).hand
    for ts in truth.series.values():
        ts.globals["rlnTomoHand"] = -hand
    write_tomogram_set(truth, tmp_path / "flipped" / "tomograms.star")
    common = ["extract", "--p", str(project.truth_particles_star), "--b", "16"]
    runs = {"default": ["--t", str(project.truth_tomograms_star)],
            "hand": ["--t", str(project.truth_tomograms_star), "--hand", f"{-hand:g}"],
            "flipped": ["--t", str(tmp_path / "flipped" / "tomograms.star")],
            "invert": ["--t", str(project.truth_tomograms_star), "--invert_contrast"]}
    files = {}
    for name, args in runs.items():
        assert main([*common, *args, "--o", str(tmp_path / name)]) == 0
        ps = read_particles(tmp_path / name / "particles.star")
        files[name] = [(read_mrc(ps.particles["rlnImageName"].iloc[i])[0],
                        read_ctf_volume(ps.particles["rlnCtfImage"].iloc[i], 16).numpy())
                       for i in (0, 7)]
    for (data, ctf), (d_hand, c_hand), (d_flip, c_flip), (d_inv, c_inv) in zip(
            *files.values(), strict=True):
        np.testing.assert_array_equal(c_hand, c_flip)
        np.testing.assert_array_equal(d_hand, d_flip)
        assert np.abs(c_hand - ctf).max() > 0.01  # particles 30 px deep: a small change
        np.testing.assert_array_equal(d_inv, -data)
        np.testing.assert_array_equal(c_inv, ctf)
    for option, value in (("--tomo_angpix", "10"), ("--defocus", "x.defocus"),
                          ("--coord_suffix", ".coords")):
        capsys.readouterr()
        out = tmp_path / "refused"
        assert main([*common, "--t", str(project.truth_tomograms_star), option, value, "--o",
                     str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{option} needs --tomograms_star" in err, err
        assert not out.exists()
