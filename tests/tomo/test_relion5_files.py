"""Files both ways with RELION 5.0.1's tomography programs (issue 25, item 5).

``tests/data/relion5_tiny`` is a project simulated by ``subtomo simulate tiltseries`` (20
particles, 21 tilts, 10 Å/px, per-tilt errors, beam-induced motion up to 3 px) with what
RELION 5's ``relion_tomo_*`` programs wrote on it (``PROVENANCE.md``; ``make.sh`` rebuilds
it). The first tests need no RELION: they read RELION's files with our readers and check each
convention against ground truth or against RELION's own map of the same files (tilt shifts and
angles, origin, motion sign, deformation sign, 2D-stack layout and contrast), so a convention
that only our code shared would fail here. The last ones run where ``RELION5_BIN`` names the
folder of ``relion_tomo_*`` (never PATH): RELION 5 on what our extract, reconstruct-particle
and tomo-align write, each scored against the truth.

Figures on these files (mean FSC over shells 1–12 against the truth; image-position error in px
over all particle × tilt pairs, against the true positions with the true motion):

- the given geometry is 3.1 px off; RELION's ``tomo_align --motion`` as we read it 1.66 px;
- its per-frame spline deformation applied as we read it 2.9 px, not applied 15 px, negated 30;
- our reconstruction of the true geometry with RELION's masks against RELION's map of the same
  files: FSC 0.98 with the true motion.star, 0.81 without it, 0.65 with it negated;
- RELION's 2D stacks against ours cut from the same geometry: correlation 0.9986 per image.
- RELION's 3D pseudo-subtomograms (crop 16) as our reconstruct reads them: low-pass (40 Å)
  correlation with RELION's map of the same geometry 0.939 (our map from the tilt series: 0.935),
  with the truth 0.757 (0.774); wrong weight layouts 0.73–0.91 with RELION's map.
- our ``extract --premultiplied`` against RELION's 3D pseudo-subtomograms of the same geometry:
  weights and multiplicity correlation 0.986 and 0.981 (scale within 2.5 %), data 0.93 per shell.
- RELION on ours: relion_tomo_align against our references 1.19 px (our tomo-align 0.42 px);
  its map of our tomo-align output 0.76 (0.26 for the given geometry), our map of it 0.98;
  relion_refine (one iteration at the true poses) on our 3D subtomograms 0.70, premultiplied
  0.76 (poses mirrored: 0.52, 0.53).

Not checked by these files: the hand (``rlnTomoHand`` only moves the defocus with depth, here
by at most ±700 Å, 0.2 rad of CTF phase at the 20 Å Nyquist).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from subtomo.cli import main
from subtomo.fourier.fsc import fsc
from subtomo.fourier.grid import lowpass_map, shell_index
from subtomo.fourier.reconstruction import taper_to_sphere
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particle_series import is_particle_series, read_particle_input, visible_frames
from subtomo.io.star import read_particles, write_particles
from subtomo.io.tomograms import TomogramSet, read_inputs, read_motion, read_tomogram_set
from subtomo.refine.images import iterate_batches
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.truth_tomogram import particle_mask, tomogram_score, truth_tomogram
from subtomo.tomo.deformation import deformation_of, n_coefficients, with_deformation
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms
from subtomo.tomo.particles import particle_positions_px, with_tomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle
from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram

DATA = Path(__file__).parents[1] / "data" / "relion5_tiny"
BOX, N_PARTICLES, N_TILTS, SHELLS = 24, 20, 21, slice(1, 13)
PSEUDO_BOX, PIXEL_A = 16, 10.0  # relion_tomo_subtomo --crop 16
TOMOGRAM_BIN4 = "Tomograms/bin4/tomograms/rec_TS_01.mrc"  # relion_tomo_reconstruct_tomogram


@pytest.fixture(autouse=True)
def in_project(monkeypatch):
    """RELION names files relative to the project folder, where it ran."""
    monkeypatch.chdir(DATA)


def _map(path: str | Path) -> torch.Tensor:
    return torch.from_numpy(read_mrc(path)[0]).double()


def mean_fsc(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(fsc(a.double(), b.double())[SHELLS].mean())


def image_positions(folder: str | Path, motion: dict | None = None,
                    deformed: bool = True) -> tuple[list[str], torch.Tensor]:
    """Particle names and (N, T, 2) image positions (px) of an optimisation set's geometry:
    its motion.star unless ``motion`` is given, its 2D deformations when ``deformed``."""
    inputs = read_inputs(Path(folder) / "optimisation_set.star")
    ps = with_tomograms(inputs.particles, inputs.tomograms)
    ts = inputs.tomograms["TS_01"]
    xy = ts.project(particle_positions_px(ps, ts, np.arange(len(ps)),
                                          inputs.motion if motion is None else motion))
    deformation = deformation_of(ts)
    if deformed and deformation is not None:
        xy = deformation.apply(xy)
    return list(ps.particles["rlnTomoParticleName"]), xy


def position_error_px(folder: str | Path, **kw) -> float:
    """Rms distance (px) of a geometry's image positions from the true ones."""
    names, xy = image_positions(folder, **kw)
    truth_names, truth = image_positions("truth")  # simulated without 2D deformations
    assert names == truth_names
    return float((xy - truth).norm(dim=-1).pow(2).mean().sqrt())


def stack_correlations(folder: str, stacks_star: str, out: Path) -> float:
    """The lowest correlation, over every image, between the 2D stacks of ``stacks_star`` and
    those our extract --2d_stacks cuts from ``folder``'s optimisation set (inside a disc of
    radius ``BOX / 2 − 3``, RELION's circle crop)."""
    inputs = read_inputs(f"{folder}/optimisation_set.star")
    result = extract_subtomograms(inputs.particles, inputs.tomograms, out,
                                  ExtractOptions(box=BOX, stacks_2d=True), motion=inputs.motion,
                                  progress=False)
    ours, theirs = read_particles(result.star), read_particles(stacks_star)
    assert list(ours.particles["rlnTomoVisibleFrames"]) == list(
        theirs.particles["rlnTomoVisibleFrames"])
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    disc = xx ** 2 + yy ** 2 < (BOX // 2 - 3) ** 2
    lowest = 1.0
    for a, b in zip(ours.particles["rlnImageName"], theirs.particles["rlnImageName"],
                    strict=True):
        x, y = (torch.from_numpy(read_mrc(name)[0][:, disc]).double() for name in (a, b))
        x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        lowest = min(lowest, float(((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).min()))
    return lowest


def test_every_relion5_output_reads():
    """tomograms.star with its per-tilt files (and RELION's deformation tables), particles.star,
    motion.star, the 2D-stack set with its stacks and the 3D pseudo-subtomograms."""
    for job in ("Align/motion", "Align/deformation"):
        inputs = read_inputs(f"{job}/optimisation_set.star")
        ts = inputs.tomograms["TS_01"]
        assert len(inputs.particles) == N_PARTICLES and ts.n_tilts == N_TILTS
        assert ts.image_size_px == (144, 144) and ts.hand == -1
        assert sorted(inputs.motion) == sorted(inputs.particles.particles["rlnTomoParticleName"])
        assert {v.shape for v in inputs.motion.values()} == {(N_TILTS, 3)}
    first = read_motion("Align/motion/motion.star")["TS_01/1"]  # first row, Å
    assert np.allclose(first[0], [-0.19825, 1.927763, 0.451040], atol=1e-9)
    deformation = deformation_of(read_tomogram_set("Align/deformation/tomograms.star")["TS_01"])
    assert deformation.model == "spline" and deformation.grid == (3, 3)
    assert deformation.coefficients.shape == (N_TILTS, n_coefficients("spline", (3, 3)))
    assert deformation_of(read_tomogram_set("Align/motion/tomograms.star")["TS_01"]) is None

    series = read_particle_input("Subtomo/stack2d/optimisation_set.star")
    assert is_particle_series(series) and len(series) == N_PARTICLES
    for row, name in enumerate(series.particles["rlnImageName"]):
        stack, pixel_A = read_mrc(name)[:2]
        assert stack.shape == (int(visible_frames(series, row, N_TILTS).sum()), BOX, BOX)
        assert pixel_A == pytest.approx(10.0) and np.isfinite(stack).all()

    three_d = read_particles("Subtomo/3d/particles.star")
    assert len(three_d) == N_PARTICLES and not is_particle_series(three_d)
    for data, weights in three_d.particles[["rlnImageName", "rlnCtfImage"]].itertuples(
            index=False):
        # CTF-premultiplied data; weights = Σ CTF² (half spectrum) above the multiplicity
        assert read_mrc(data)[0].shape == (16, 16, 16)
        w = read_mrc(weights)[0]
        assert w.shape == (32, 16, 9) and (w >= 0).all() and w[16:].max() > w[:16].max() > 0


def _centre(volume: torch.Tensor, box: int = PSEUDO_BOX) -> torch.Tensor:
    start = (volume.shape[-1] - box) // 2
    return volume[start:start + box, start:start + box, start:start + box].double()


def low_pass_correlation(a: torch.Tensor, b: torch.Tensor, resolution_A: float = 40.0) -> float:
    """Real-space correlation of two maps low-passed to ``resolution_A`` (where these maps
    have signal). Unlike the FSC it sees a wrong radial weighting, which is what a wrong
    weight layout mostly amounts to once 20 orientations are averaged."""
    a, b = (lowpass_map(x.float(), PIXEL_A, resolution_A).double() for x in (a, b))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def pseudo_layout_correlation(ps) -> float:
    """Mean over the particles of the correlation, over shells 2 to Nyquist, between the
    power of the numerator ``|D|²`` and the weight ``W`` as read: the numerator's noise power is
    that weight's pattern (its missing wedge and CTF zeros), so a misplaced weight (transposed,
    another layout) decorrelates them."""
    shells = shell_index(PSEUDO_BOX)
    keep = (shells >= 2) & (shells <= PSEUDO_BOX // 2)
    batch = next(iterate_batches(ps, np.arange(len(ps)), box=PSEUDO_BOX, ctf=True,
                                 batch_size=len(ps)))
    power = (batch.spectra * batch.ctf).abs().pow(2)[:, keep].double()
    weight = batch.ctf.pow(2)[:, keep].double()
    power, weight = power - power.mean(1, keepdim=True), weight - weight.mean(1, keepdim=True)
    return float(((power * weight).sum(1) / (power.norm(dim=1) * weight.norm(dim=1))).mean())


def test_our_reconstruction_of_relion5_3d_pseudo_subtomograms(tmp_path):
    """RELION 5's 3D pseudo-subtomograms (``relion_tomo_subtomo --crop 16``: CTF-premultiplied
    data, weights Σ CTF² stacked above the multiplicity, of relion_tomo_align's geometry) as
    our ``reconstruct`` reads them: RELION's map of the same geometry (from the tilt series)
    is as near ours as it is to our map from the tilt series (low-pass correlation at 40 Å in
    the central 16³: 0.939 against 0.935), and ours is within 0.02 of that map's correlation
    with the truth (0.757 against 0.774; the 16-px field folds the 24-px crops into it). Read
    with the weights not applied the correlations with RELION's map and ours from the tilt
    series drop to 0.887 and 0.70, with the multiplicity as the weight to 0.776 and 0.52, with
    the weight squared to 0.731 and 0.84, transposed (y, z) to 0.914 and 0.912 (and its power
    correlation from 0.62 to 0.04)."""
    ps = read_particles("Subtomo/3d/particles.star")
    ours = reconstruct(ps, ctf=True, progress=False).map.double()
    assert ours.shape == (PSEUDO_BOX,) * 3
    theirs = _centre(_map("Reconstruct/aligned/merged.mrc"))
    direct = _centre(_ours_masked_like_relion("Align/motion"))
    truth = _centre(_map("truth/class001.mrc"))
    ours_relion, direct_relion = (low_pass_correlation(m, theirs) for m in (ours, direct))
    assert ours_relion > max(0.92, direct_relion - 0.01), (ours_relion, direct_relion)
    assert low_pass_correlation(ours, direct) > 0.915, low_pass_correlation(ours, direct)
    ours_truth, direct_truth = (low_pass_correlation(m, truth) for m in (ours, direct))
    assert ours_truth > direct_truth - 0.025, (ours_truth, direct_truth)
    assert pseudo_layout_correlation(ps) > 0.4, pseudo_layout_correlation(ps)
    out = tmp_path / "map.mrc"
    assert main(["reconstruct", "--i", "Subtomo/3d/particles.star", "--ctf", "--o",
                 str(out)]) == 0
    assert torch.allclose(_map(out), ours, atol=1e-5 * float(ours.abs().max()))


def test_our_premultiplied_extraction_is_relion5s_3d_pseudo_subtomograms(tmp_path):
    """Our ``extract --premultiplied --b 24 --crop 16`` of relion_tomo_align's geometry against
    relion_tomo_subtomo's files of the same geometry and options, particle by particle: the same
    STAR labels, shapes and voxel sizes; inside the Nyquist sphere the weights ``W = Σ τ c²``
    and the multiplicity ``M = Σ τ`` correlate ≥ 0.975 (0.986 and 0.981) with RELION's and agree
    in scale within 5 % (RELION splats each 2D pixel trilinearly, we interpolate each voxel's
    slice bilinearly); the data ``B`` correlate shell by shell ≥ 0.9 on average over shells 1–5
    (0.93; where the signal is), ≥ 0.8 for every particle (0.85), in RELION's sign. Their scale
    is not RELION's (theirs 3–4.5× ours, varying with the shell: FFT normalisations and the
    splatting kernel), which no figure of a map depends on."""
    inputs = read_inputs("Align/motion/optimisation_set.star")
    result = extract_subtomograms(inputs.particles, inputs.tomograms, tmp_path,
                                  ExtractOptions(box=BOX, crop=PSEUDO_BOX, premultiplied=True),
                                  motion=inputs.motion, progress=False)
    ours, theirs = read_particles(result.star), read_particles("Subtomo/3d/particles.star")
    assert set(theirs.optics.columns) <= set(ours.optics.columns)
    assert set(theirs.particles.columns) <= set(ours.particles.columns)
    for label in ("rlnCtfDataAreCtfPremultiplied", "rlnImageDimensionality", "rlnImageSize"):
        assert ours.optics[label].tolist() == theirs.optics[label].tolist(), label
    shells = shell_index(PSEUDO_BOX).numpy()
    inside = shells <= PSEUDO_BOX // 2 - 1
    weights, data = [], []
    for row in range(N_PARTICLES):
        (w, w_A), (v, v_A) = (read_mrc(ps.particles["rlnCtfImage"].iloc[row])[:2] for ps in
                               (ours, theirs))
        assert w.shape == v.shape == (2 * PSEUDO_BOX, PSEUDO_BOX, PSEUDO_BOX // 2 + 1)
        assert w_A == pytest.approx(v_A, rel=1e-6)
        for a, b in ((w[:PSEUDO_BOX], v[:PSEUDO_BOX]), (w[PSEUDO_BOX:], v[PSEUDO_BOX:])):
            a, b = a[inside].astype(float), b[inside].astype(float)
            weights.append((np.corrcoef(a, b)[0, 1], (a * b).sum() / (a * a).sum()))
        x, y = (np.fft.rfftn(read_mrc(ps.particles["rlnImageName"].iloc[row])[0].astype(float))
                for ps in (ours, theirs))
        data.append([float((x[shells == s] * y[shells == s].conj()).sum().real
                           / np.sqrt((np.abs(x[shells == s]) ** 2).sum()
                                     * (np.abs(y[shells == s]) ** 2).sum())) for s in range(1, 6)])
    weights = np.array(weights)
    assert weights[:, 0].min() > 0.975 and np.abs(weights[:, 1] - 1).max() < 0.05, weights
    assert np.mean(data) > 0.9 and np.min(np.mean(data, axis=1)) > 0.8, np.mean(data, axis=0)


def test_relion5_pseudo_subtomogram_weights_of_another_box_are_refused(tmp_path, capsys):
    """A weights file of another box (here the 24-px box's stacked half spectra) is refused in
    one line naming it and the field, and nothing is written."""
    ps = read_particles("Subtomo/3d/particles.star")
    weights = tmp_path / "1_weights.mrc"
    write_mrc(weights, np.ones((48, 24, 13), np.float32), 0.1)
    ps.particles.loc[0, "rlnCtfImage"] = str(weights)
    star, out = tmp_path / "particles.star", tmp_path / "map.mrc"
    write_particles(ps, star)
    assert main(["reconstruct", "--i", str(star), "--ctf", "--o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "1_weights.mrc" in error and "rlnCtfImage" in error
    assert "(32, 16, 9)" in error and not out.exists()


def test_relion5_alignment_as_we_read_it_approaches_the_true_image_positions():
    """relion_tomo_align --motion's tomograms.star, per-tilt files, particles.star and
    motion.star as we read them put the particles nearer their true image positions than the
    given geometry does (3.1 → 1.66 px); its trajectories, read with the wrong sign, would not
    help."""
    given = position_error_px(".")
    aligned = position_error_px("Align/motion")
    assert aligned < 0.6 * given, (given, aligned)
    motion = read_motion("Align/motion/motion.star")
    still = position_error_px("Align/motion", motion={k: 0 * v for k, v in motion.items()})
    flipped = position_error_px("Align/motion", motion={k: -v for k, v in motion.items()})
    assert aligned < still < flipped, (aligned, still, flipped)


def test_relion5_deformation_tables_as_we_read_them_fit_its_alignment():
    """RELION's per-frame spline deformations, which it fitted together with the shifts, are
    needed to place the particles: applied as we read them 2.9 px from the truth, ignored or
    negated several times further."""
    deformed = position_error_px("Align/deformation")
    ignored = position_error_px("Align/deformation", deformed=False)
    ts = read_tomogram_set("Align/deformation/tomograms.star")["TS_01"]
    d = deformation_of(ts)
    _, xy = image_positions("Align/deformation", deformed=False)
    _, truth = image_positions("truth")
    negated = xy - (d.apply(xy) - xy)
    negated_error = float((negated - truth).norm(dim=-1).pow(2).mean().sqrt())
    assert deformed < 1.2 * position_error_px(".") and 3 * deformed < ignored < negated_error, (
        deformed, ignored, negated_error)


def _ours_masked_like_relion(folder: str, motion: bool = True,
                             deformed: bool = True) -> torch.Tensor:
    """Our reconstruct-particle of an optimisation set with RELION 5's default masks (with its
    motion.star and 2D deformations unless told otherwise)."""
    inputs = read_inputs(f"{folder}/optimisation_set.star")
    tomograms = inputs.tomograms
    if not deformed:
        tomograms = TomogramSet({name: with_deformation(tomograms[name], None)
                                 for name in tomograms.names})
    rec = reconstruct_particle(inputs.particles, tomograms, box=BOX, circle_crop=True,
                               motion=inputs.motion if motion else None, progress=False)
    return taper_to_sphere(rec.map.double(), 10.0)


@pytest.mark.parametrize("folder, relion_map, bar", [
    ("truth", "Reconstruct/truth/merged.mrc", 0.95), (".", "Reconstruct/given/merged.mrc", 0.8),
    ("Align/motion", "Reconstruct/aligned/merged.mrc", 0.8)])
def test_our_reconstruction_of_relion5_geometry_is_relions_map(folder, relion_map, bar):
    """Same files, same masks: our map is RELION's (FSC averaged over the shells to Nyquist 0.98
    on the truth; 0.85 on the misaligned geometries, whose maps are mostly noise, weighted
    differently: τ²-Wiener against division by the CTF² sum). On the truth, whose motion
    reaches 3 px, leaving its motion.star out drops the agreement to 0.81."""
    theirs = _map(relion_map)
    agreement = mean_fsc(_ours_masked_like_relion(folder), theirs)
    assert agreement > bar, agreement
    if folder == "truth":
        assert mean_fsc(_ours_masked_like_relion(folder, motion=False), theirs) < 0.9


def test_our_reconstruction_on_relion5_alignment_is_nearer_the_truth():
    """Our reconstruct-particle on relion_tomo_align's geometry (with its motion.star) is nearer
    the truth than on the given geometry, as RELION's own maps are."""
    truth = _map("truth/class001.mrc")
    ours = {folder: mean_fsc(_ours_masked_like_relion(folder), truth)
            for folder in (".", "Align/motion")}
    theirs = {name: mean_fsc(_map(f"Reconstruct/{name}/merged.mrc"), truth)
              for name in ("given", "aligned")}
    assert ours["Align/motion"] > ours["."] + 0.03, ours
    assert theirs["aligned"] > theirs["given"] + 0.02, theirs
    assert ours["Align/motion"] > theirs["aligned"] - 0.02, (ours, theirs)


def test_relion5_2d_stacks_are_our_crops_of_its_geometry(tmp_path):
    """relion_tomo_subtomo --stack2d's stacks (float16, the visible tilts in table order,
    CTF-premultiplied, protein white) equal, image by image, the stacks our ``extract
    --2d_stacks`` cuts from the same tomograms.star, particles.star and motion.star
    (correlation inside RELION's circle crop ≥ 0.99; 0.9986 on average here)."""
    assert stack_correlations("Align/motion", "Subtomo/stack2d/particles.star", tmp_path) > 0.99


def test_our_reconstruction_of_relion5_2d_stacks_is_relions_map():
    """RELION's 2D-stack particle set reconstructed by our ``reconstruct`` agrees with
    relion_tomo_reconstruct_particle's map of the same geometry (RELION rebuilds a stack set
    from the tilt series: its map of Subtomo/stack2d is bit-identical to Reconstruct/aligned)
    and with our map from the tilt series directly, and is nearer the truth than the given
    geometry's."""
    series = read_particle_input("Subtomo/stack2d/optimisation_set.star")
    ours = taper_to_sphere(reconstruct(series, ctf=True, progress=False).map.double(), 10.0)
    theirs = _map("Reconstruct/aligned/merged.mrc")
    direct = _ours_masked_like_relion("Align/motion")
    assert mean_fsc(ours, theirs) > 0.85 and mean_fsc(ours, direct) > 0.75, (
        mean_fsc(ours, theirs), mean_fsc(ours, direct))
    truth = _map("truth/class001.mrc")
    assert mean_fsc(ours, truth) > mean_fsc(_ours_masked_like_relion("."), truth) + 0.02


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _our_tomogram() -> torch.Tensor:
    ts = read_tomogram_set("truth/tomograms.star")["TS_01"]
    return reconstruct_tomogram(ts, binning=4.0, progress=False)[0]


def test_our_tomogram_is_relion5s_in_its_frame():
    """relion_tomo_reconstruct_tomogram --bin 4 of the true geometry (36 × 36 × 12 voxels of
    40 Å) and ours of the same files: correlation 0.78 where they overlap as written, at most
    0.43 shifted by one voxel along any axis and 0.16 mirrored in z or x (the frame: axis order,
    zero origin, hand); both as near the true density in the particle regions (Pearson 0.70 ours,
    0.70 RELION's), though RELION weights by its back-projected PSF and we by the ramp."""
    ours, theirs = _our_tomogram(), _map(TOMOGRAM_BIN4)
    assert ours.shape == theirs.shape == (12, 36, 36)
    r = correlation(ours, theirs)
    assert r > 0.7
    for moved in (*(torch.roll(ours, s, d) for d in range(3) for s in (-1, 1)),
                  ours.flip(0), ours.flip(2)):
        assert correlation(moved, theirs) < r - 0.3
    truth = truth_tomogram("truth", 4)
    mask = particle_mask("truth", 4, tuple(truth.shape), BOX / 2)
    (r_ours, *_), (r_theirs, *_) = (tomogram_score(-v, truth, mask, 4 * PIXEL_A, BOX * PIXEL_A)
                                    for v in (ours, theirs))
    assert r_theirs > 0.65 and r_ours > r_theirs - 0.01


# ---- RELION 5 on what our commands write (runs where RELION5_BIN is set) ----------------
RELION5 = Path(os.environ["RELION5_BIN"]) if os.environ.get("RELION5_BIN") else None
needs_relion5 = pytest.mark.skipif(
    RELION5 is None or not (RELION5 / "relion_tomo_align").is_file(),
    reason="RELION 5 not found: set RELION5_BIN (bench/relion5/build.sh)")


def relion5(program: str, *args: str) -> None:
    """Runs ``relion_tomo_<program>`` in the working directory (the project), one thread."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run([str(RELION5 / f"relion_tomo_{program}"), *args, "--j", "1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def subtomo(*args: str) -> None:
    assert main(list(args)) == 0, args


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A copy of the project (its inputs only) with what our commands write on it: the truth
    extracted as 3D subtomograms and as 2D stacks, references from the given geometry
    (reconstruct-particle) and tomo-align --motion --deformation against them."""
    root = tmp_path_factory.mktemp("relion5_tiny")
    for name in ("tilt_series", "truth"):
        shutil.copytree(DATA / name, root / name)
    for name in ("optimisation_set.star", "particles.star", "tomograms.star"):
        shutil.copy(DATA / name, root / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        subtomo("extract", "--i", "truth/optimisation_set.star", "--b", "24", "--o", "Extract")
        subtomo("extract", "--i", "truth/optimisation_set.star", "--b", "24", "--2d_stacks",
                "--o", "Stacks")
        subtomo("reconstruct-particle", "--i", "optimisation_set.star", "--b", "24", "--j", "1",
                "--o", "Reference")
        subtomo("tomo-align", "--i", "optimisation_set.star", "--ref1", "Reference/half1.mrc",
                "--ref2", "Reference/half2.mrc", "--fsc", "Reference/fsc.star", "--b", "48",
                "--r", "6", "--motion", "--deformation", "--def_w", "3", "--def_h", "3",
                "--def_model", "spline", "--j", "1", "--o", "Align")
    return root


@needs_relion5
@pytest.mark.parametrize("job", ["Extract", "Stacks"])
def test_relion5_reconstructs_our_extract_sets_as_the_truth(ours, job, monkeypatch):
    """relion_tomo_reconstruct_particle reads the optimisation set and particles.star our
    extract writes (3D and 2D stacks; they name the truth's tomograms and motion.star) and
    rebuilds its own map of the truth (FSC ≥ 0.99 at every shell to Nyquist)."""
    monkeypatch.chdir(ours)
    relion5("reconstruct_particle", "--i", f"{job}/optimisation_set.star", "--b", "24",
            "--o", f"R5_{job}/")
    theirs = _map(f"R5_{job}/merged.mrc")
    assert float(fsc(theirs, _map(DATA / "Reconstruct/truth/merged.mrc"))[SHELLS].min()) > 0.99
    assert mean_fsc(theirs, _map("truth/class001.mrc")) > 0.8


@needs_relion5
def test_relion5_aligns_against_our_reference(ours, monkeypatch):
    """relion_tomo_align --motion with our reconstruct-particle's half maps and fsc.star as
    references brings the particles nearer their true image positions (3.1 → 1.2 px; 1.66
    against RELION's own references without an FSC)."""
    monkeypatch.chdir(ours)
    relion5("align", "--i", "optimisation_set.star", "--ref1", "Reference/half1.mrc", "--ref2",
            "Reference/half2.mrc", "--fsc", "Reference/fsc.star", "--b", "48", "--r", "6",
            "--motion", "--o", "R5_align/")
    assert position_error_px("R5_align") < 0.6 * position_error_px(".")


@needs_relion5
def test_relion5_reads_our_tomo_align(ours, monkeypatch, tmp_path):
    """Our tomo-align's tomograms.star, per-tilt STAR files (with spline deformations),
    particles.star and motion.star: relion_tomo_reconstruct_particle's map of them is near the
    truth (mean FSC 0.76 against 0.26 for the given geometry) and is our map of the same files
    with their deformations (0.98), not without them (0.87); relion_tomo_subtomo --stack2d
    cuts from them the stacks our extract cuts (correlation ≥ 0.99 on every image)."""
    monkeypatch.chdir(ours)
    assert position_error_px("Align") < 0.25 * position_error_px(".")
    relion5("reconstruct_particle", "--i", "Align/optimisation_set.star", "--b", "24",
            "--o", "R5_rec_align/")
    theirs = _map("R5_rec_align/merged.mrc")
    truth = _map("truth/class001.mrc")
    assert mean_fsc(theirs, truth) > mean_fsc(_map(DATA / "Reconstruct/given/merged.mrc"),
                                              truth) + 0.3
    agreement = mean_fsc(theirs, _ours_masked_like_relion("Align"))
    assert agreement > 0.95
    assert agreement > mean_fsc(theirs, _ours_masked_like_relion("Align", deformed=False)) + 0.05
    relion5("subtomo", "--i", "Align/optimisation_set.star", "--b", "24", "--stack2d",
            "--o", "R5_stacks/")
    assert stack_correlations("Align", "R5_stacks/particles.star", tmp_path) > 0.99


@needs_relion5
def test_relion5_tomogram_is_the_stored_one_and_ours_in_its_frame(ours, monkeypatch):
    """relion_tomo_reconstruct_tomogram run here writes the tomogram stored with these files
    (the same values) and ours correlates with it as stored (0.78)."""
    monkeypatch.chdir(ours)
    relion5("reconstruct_tomogram", "--t", "truth/tomograms.star", "--bin", "4", "--w", "144",
            "--h", "144", "--d", "48", "--o", "R5_tomogram/")
    theirs = _map("R5_tomogram/tomograms/rec_TS_01.mrc")
    assert torch.allclose(theirs, _map(DATA / TOMOGRAM_BIN4), atol=1e-5)
    assert correlation(_our_tomogram(), theirs) > 0.7


REFINE_ONCE = ("--iter", "1", "--K", "1", "--skip_align", "--ctf", "--ini_high", "30",
               "--particle_diameter", "200", "--pad", "2", "--tau2_fudge", "1",
               "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc",
               "--pool", "10", "--j", "1")


@pytest.mark.skipif(RELION5 is None or not (RELION5 / "relion_refine").is_file(),
                    reason="RELION 5's relion_refine not found: set RELION5_BIN "
                    "(bench/relion5/build.sh)")
@pytest.mark.parametrize("premultiplied", [False, True], ids=["normalised", "premultiplied"])
def test_relion5_refine_reads_our_3d_subtomograms(ours, monkeypatch, premultiplied):
    """RELION 5's relion_refine, the reader of 3D pseudo-subtomograms, on our extract of the
    truth (CTF volumes, or ``--premultiplied`` data with weights), one iteration at the true
    poses (``--skip_align``): its map is near the truth (mean FSC 0.70 normalised, 0.76
    premultiplied), and nearer than its map of the same files with the poses mirrored (tilt →
    180° − tilt: 0.52, 0.53)."""
    monkeypatch.chdir(ours)
    folder = "Extract_pre" if premultiplied else "Extract"
    if premultiplied and not Path(folder).exists():
        subtomo("extract", "--i", "truth/optimisation_set.star", "--b", "24", "--premultiplied",
                "--o", folder)
    ps = read_particles(f"{folder}/particles.star")
    mirrored = ps.particles.copy()
    mirrored["rlnAngleTilt"] = 180.0 - mirrored["rlnAngleTilt"]
    write_particles(replace(ps, particles=mirrored), f"{folder}/mirrored.star", "relion5")
    scores = []
    for star in ("particles.star", "mirrored.star"):
        out = Path(f"R5_refine_{folder}_{star[:-5]}")
        out.mkdir(exist_ok=True)
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        done = subprocess.run([str(RELION5 / "relion_refine"), "--i", f"{folder}/{star}", "--o",
                               str(out / "run"), "--ref", "truth/class001.mrc", *REFINE_ONCE],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        scores.append(mean_fsc(_map(out / "run_it001_class001.mrc"), _map("truth/class001.mrc")))
    assert scores[0] > 0.65 and scores[0] > scores[1] + 0.1, scores
