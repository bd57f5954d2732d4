"""3D classification against simulated ground truth (three classes: full complex, one subunit
missing, one domain rotated 25°): classes, class maps, RELION's files, resume, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from subtomo.align.search import Searcher, SearchSettings
from subtomo.cli import main
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.fourier.projector import Backprojector, Projector
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.star import read_particles
from subtomo.io.star_text import read_star
from subtomo.parallel.distributed import Context
from subtomo.refine import outputs
from subtomo.refine.classify import ClassifyOptions, classify
from subtomo.refine.expectation import own_share
from subtomo.refine.images import iterate_batches
from subtomo.refine.job import initial_sigma2
from subtomo.refine.reconstruct import gold_standard, half_sets, reconstruct
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

BOX, APIX = 32, 6.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """300 particles of three classes; given poses 3° rms and 0.5 px rms off; the consensus
    reconstruction at the given poses is the reference."""
    root = tmp_path_factory.mktemp("classify")
    config = SimulationConfig(n=300, box_px=BOX, pixel_size_A=APIX, classes=3,
                              noise_sigma=5.0, angle_error_deg=3.0, shift_error_px=0.5,
                              seed=1)
    sim = simulate_subtomograms(root / "sim", config, progress=False)
    given = read_particles(sim.particles_star)
    reference = reconstruct(given, ctf=True, progress=False).map
    write_mrc(root / "ref.mrc", reference, APIX)
    labels = read_particles(sim.truth_star).particles["rlnClassNumber"].to_numpy()
    truths = [torch.from_numpy(read_mrc(p)[0]) for p in sim.truth_maps]
    return root, sim, given, reference, labels, truths


def _match(labels: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Found class (1-based) of each true class (Hungarian on the confusion matrix)."""
    confusion = np.array([[np.sum((labels == t) & (found == f)) for f in (1, 2, 3)]
                          for t in (1, 2, 3)])
    return linear_sum_assignment(-confusion)[1] + 1


@pytest.mark.parametrize("resolution_A", [30.0, 15.0])
def test_own_share_matches_true_leave_one_out(data, resolution_A):
    """The E step's correction for a particle's own share of its class map (residual power
    over the reconstruction denominator) equals what leaving it out of the map changes."""
    root, sim, given, reference, labels, truths = data
    rows = np.flatnonzero(labels == 1)
    halves = half_sets(given, 0)[rows]
    matrices, origins = outputs.volume_poses(given, APIX)
    A = torch.as_tensor(matrices[rows], dtype=torch.float32)
    shifts = torch.as_tensor(origins, dtype=torch.float32)
    batch = next(iterate_batches(given, rows, box=BOX, ctf=True, batch_size=len(rows),
                                 shifts_px=shifts))
    inv_sigma2 = torch.as_tensor(1 / initial_sigma2(given, rows, BOX, True, shifts, None,
                                                    "cpu", Context(), 32), dtype=torch.float32)

    def class_map(leave_out: int | None):
        bps = [Backprojector(BOX, pad=2) for _ in (1, 2)]
        for h in (1, 2):
            keep = torch.as_tensor((halves == h) & (np.arange(len(rows)) != leave_out))
            bps[h - 1].insert(batch.spectra[keep], A[keep], batch.ctf[keep])
        return gold_standard(*bps, APIX, 2, tau2_fudge=4.0)

    full = class_map(None)
    radius = BOX * APIX / resolution_A
    settings = SearchSettings(skip_align=True, coarse_radius_px=radius, fine_radius_px=radius)
    searcher = Searcher(Projector(full.map, pad=2), settings)
    for i in range(0, 25, 6):
        x, c = batch.spectra[i:i + 1], batch.ctf[i:i + 1]
        with_i = searcher.search(x, c, inv_sigma2, A[i:i + 1])
        without_i = Searcher(Projector(class_map(i).map, pad=2), settings).search(
            x, c, inv_sigma2, A[i:i + 1])
        measured = float(with_i.log_evidence - without_i.log_evidence)
        predicted = float(own_share(x, c, searcher.fine, with_i.shifts_px,
                                    with_i.projection, inv_sigma2, full.denominator)[0])
        assert measured > 1.0  # worth correcting: a full log-likelihood unit or more
        assert predicted == pytest.approx(measured, rel=0.15), i


def test_classification_without_alignment_recovers_classes_and_maps(data, tmp_path):
    root, sim, given, reference, labels, truths = data
    options = ClassifyOptions(K=3, n_iter=10, ctf=True, skip_align=True)
    result = classify(given, reference, tmp_path / "job", options=options, progress=False)
    found = result.particles.particles["rlnClassNumber"].to_numpy()
    assert adjusted_rand_score(labels, found) >= 0.9
    assert result.distribution.sum() == pytest.approx(1.0)
    for t, k in enumerate(_match(labels, found)):
        # each class map is as good against its truth as the true-label reconstruction
        rows = np.flatnonzero(labels == t + 1)
        own = reconstruct(given.subset(rows), ctf=True, halves=True, progress=False).map
        best = resolution_at(fsc(own, truths[t]), BOX, APIX, 0.5)
        got = resolution_at(fsc(result.reconstructions[k - 1].map, truths[t]), BOX, APIX, 0.5)
        assert got <= 1.10 * best, (t, got, best)
        assert result.distribution[k - 1] == pytest.approx(len(rows) / len(labels), abs=0.05)
    poses = result.particles.rotation_matrices()
    assert torch.allclose(poses, given.rotation_matrices().to(poses.dtype), atol=1e-5)
    stats = result.particles.particles
    assert stats["rlnMaxValueProbDistribution"].between(0, 1).all()


def test_cli_local_classification_files_resume_and_errors(data, tmp_path, capsys):
    root, sim, given, reference, labels, truths = data
    job = tmp_path / "Class3D" / "job001"
    args = ["classify", "--i", str(sim.particles_star), "--ref", str(root / "ref.mrc"),
            "--o", str(job), "--K", "3", "--iter", "8", "--ctf", "--healpix_order", "3",
            "--local", "--sigma_ang", "5", "--offset_range", "2", "--offset_step", "1"]
    assert main(args) == 0
    data_star = read_particles(job / "run_it008_data.star")
    found = data_star.particles["rlnClassNumber"].to_numpy()
    assert adjusted_rand_score(labels, found) >= 0.9
    for column in ("rlnMaxValueProbDistribution", "rlnLogLikeliContribution",
                   "rlnRandomSubset"):
        assert column in data_star.particles
    # bisection: two classes from iteration 1, the third from iteration 5
    assert len(read_star(job / "run_it001_model.star")["model_classes"]) == 2
    for k in (1, 2, 3):
        assert (job / f"run_it008_class{k:03d}.mrc").exists()
    model = read_star(job / "run_it008_model.star")
    classes = model["model_classes"]
    assert list(classes["rlnReferenceImage"]) == [f"run_it008_class{k:03d}.mrc"
                                                  for k in (1, 2, 3)]
    shares = np.bincount(found, minlength=4)[1:] / len(found)
    assert np.allclose(classes["rlnClassDistribution"], shares, atol=0.02)
    assert (classes["rlnEstimatedResolution"] < 30).all()
    assert model["model_general"]["rlnNrClasses"] == 3
    assert model["model_general"]["rlnTau2FudgeFactor"] == 4.0
    sampling = read_star(job / "run_it008_sampling.star")["sampling_general"]
    assert sampling["rlnSigmaPriorRotAngle"] == 5.0
    for name in ("run_classes.png", "run_class_occupancy.png"):
        assert (job / name).stat().st_size > 1000
    job_json = json.loads((job / "job.json").read_text())
    assert len(job_json["history"]) == 8

    # killed during iteration 8: --continue redoes it from iteration 7's files
    (job / "run_it008_optimiser.json").unlink()
    before = read_mrc(job / "run_it008_class001.mrc")[0]
    assert main(["classify", "--i", str(sim.particles_star), "--ref", str(root / "ref.mrc"),
                 "--continue", str(job), "--K", "3", "--iter", "8", "--ctf",
                 "--healpix_order", "3", "--local", "--sigma_ang", "5", "--offset_range",
                 "2", "--offset_step", "1"]) == 0
    again = read_particles(job / "run_it008_data.star").particles["rlnClassNumber"]
    assert (again.to_numpy() == found).mean() > 0.99
    assert np.corrcoef(before.ravel(), read_mrc(job / "run_it008_class001.mrc")[0].ravel())[
        0, 1] > 0.999
    capsys.readouterr()

    for bad in (["--K", "0"], ["--skip_align", "--local"], ["--tau2_fudge", "-1"]):
        out = tmp_path / "bad"
        code = main(["classify", "--i", str(sim.particles_star), "--ref",
                     str(root / "ref.mrc"), "--o", str(out), *bad])
        assert code == 2, bad
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _with_offset(given, folder, offset: float):
    """A copy of the particles whose subtomograms carry an additive ``offset`` (data that were
    never normalised to a background mean of 0), CTF volumes unchanged."""
    folder.mkdir()
    star_dir = Path(given.source).parent
    names = []
    for i, name in enumerate(given.particles["rlnImageName"]):
        data, pixel_size_A = read_mrc(resolve(str(name), star_dir))
        path = folder / f"particle_{i:05d}.mrc"
        write_mrc(path, data + offset, pixel_size_A)
        names.append(str(path))
    df = given.particles.copy()
    df["rlnImageName"] = names
    df["rlnCtfImage"] = [str(resolve(str(n), star_dir)) for n in given.particles["rlnCtfImage"]]
    return replace(given, particles=df, source=str(folder / "particles.star"))


@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_three_equal_classes_stay_three_with_unnormalised_data(data, tmp_path, offset):
    """Three simulated classes end as three populated classes (ARI >= 0.9), also when the
    subtomograms carry an additive offset: the background is set to 0 as RELION's
    normalisation does, so the offset cannot enter the class maps at the origin."""
    root, sim, given, reference, labels, truths = data
    ps = _with_offset(given, tmp_path / "offset", offset)
    options = ClassifyOptions(K=3, n_iter=8, ctf=True, local=True, healpix_order=3,
                              sigma_ang_deg=5.0, tau2_fudge=4.0)
    result = classify(ps, reference, tmp_path / "job", options=options, progress=False)
    found = result.particles.particles["rlnClassNumber"].to_numpy()
    assert adjusted_rand_score(labels, found) >= 0.9
    assert min(np.bincount(found, minlength=4)[1:]) >= 0.2 * len(found)
