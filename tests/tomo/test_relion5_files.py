"""RELION 5.0.1's own files, read by us, checked against the simulated truth (issue 25, item 5).

``tests/data/relion5_tiny`` is a project simulated by ``subtomo simulate tiltseries`` (20
particles, 21 tilts, 10 Å/px, per-tilt errors, beam-induced motion up to 3 px) with what
RELION 5's ``relion_tomo_*`` programs wrote on it (``PROVENANCE.md``; ``make.sh`` rebuilds
it). No RELION is needed here: every test reads RELION's files with our readers and checks a
convention against ground truth or against RELION's own map of the same files (hand, tilt
direction, origin, motion sign, deformation sign, 2D-stack layout), so a convention that only
our code shared would fail here.

Figures on these files (mean FSC over shells 1–12 against the truth; image-position error in px
over all particle × tilt pairs, against the true positions with the true motion):

- the given geometry is 3.1 px off; RELION's ``tomo_align --motion`` as we read it 1.66 px;
- its per-frame spline deformation applied as we read it 2.9 px, not applied 15 px, negated 30;
- our reconstruction of the true geometry with RELION's masks against RELION's map of the same
  files: FSC 0.98 with the true motion.star, 0.81 without it, 0.65 with it negated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from subtomo.fourier.fsc import fsc
from subtomo.fourier.reconstruction import taper_to_sphere
from subtomo.io.mrc import read_mrc
from subtomo.io.particle_series import is_particle_series, read_particle_input, visible_frames
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_inputs, read_motion, read_tomogram_set
from subtomo.refine.reconstruct import reconstruct
from subtomo.tomo.deformation import deformation_of, n_coefficients
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms
from subtomo.tomo.particles import particle_positions_px, with_tomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle

DATA = Path(__file__).parents[1] / "data" / "relion5_tiny"
BOX, N_PARTICLES, N_TILTS, SHELLS = 24, 20, 21, slice(1, 13)


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


def _ours_masked_like_relion(folder: str, motion: bool = True) -> torch.Tensor:
    """Our reconstruct-particle of an optimisation set with RELION 5's default masks."""
    inputs = read_inputs(f"{folder}/optimisation_set.star")
    rec = reconstruct_particle(inputs.particles, inputs.tomograms, box=BOX, circle_crop=True,
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
    inputs = read_inputs("Align/motion/optimisation_set.star")
    result = extract_subtomograms(inputs.particles, inputs.tomograms, tmp_path,
                                  ExtractOptions(box=BOX, stacks_2d=True), motion=inputs.motion,
                                  progress=False)
    ours, theirs = read_particles(result.star), read_particles("Subtomo/stack2d/particles.star")
    assert list(ours.particles["rlnTomoVisibleFrames"]) == list(
        theirs.particles["rlnTomoVisibleFrames"])
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    disc = xx ** 2 + yy ** 2 < (BOX // 2 - 3) ** 2
    for a, b in zip(ours.particles["rlnImageName"], theirs.particles["rlnImageName"],
                    strict=True):
        x, y = (torch.from_numpy(read_mrc(name)[0][:, disc]).double() for name in (a, b))
        x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        correlation = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
        assert correlation.min() > 0.99, (a, correlation.tolist())


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
