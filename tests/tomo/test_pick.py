"""``subtomo pick``: scores equal the direct normalised correlation, simulated particles are
found where and how they are, the false-alarm estimate matches a pure-noise count, bad input
is refused with nothing written."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from subtomo.fourier.grid import soft_sphere
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.healpix import rotation_grid
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_optimisation_set, read_tomogram_set, write_tomogram_set
from subtomo.maps.rotate import rotate_volume
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.tomo.peaks import false_alarms, find_peaks
from subtomo.tomo.template_matching import match_template

DIAMETER_A = 200.0


def _subtomo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subtomo", *args], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """14 particles, no geometry errors, noise σ 20 (10 Å px, 24 px box)."""
    out = tmp_path_factory.mktemp("pick_scene")
    config = TiltSeriesConfig(n_particles=14, image_size_px=(224, 224), thickness_px=56,
                              box_px=24, n_atoms=800, tilt_step_deg=4.0, seed=1,
                              noise_sigma=20.0)
    simulate_tiltseries(out, config, progress=False)
    return out


def _blobs(box: int) -> torch.Tensor:
    ax = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    out = torch.zeros(box, box, box)
    for (cx, cy, cz), s, a in (((0, 0, 0), 2.5, 1.0), ((4, 0, 0), 1.5, 0.8),
                               ((0, 4, 2), 1.2, 0.6), ((-3, -3, 2), 1.2, 0.5)):
        out += a * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return out


def test_scores_equal_the_direct_normalised_correlation():
    gen = torch.Generator().manual_seed(0)
    box = 12
    template = _blobs(box)
    volume = torch.randn(24, 40, 40, generator=gen)
    mats, _ = rotation_grid(0)
    result = match_template(volume, template, mats, lambda z: torch.ones(box, box, box // 2 + 1),
                            sphere_diameter_px=10, whitening=False, batch=5, progress=False)
    mask = soft_sphere(box, 10, 2.0)
    vol = volume - volume.mean()
    for z, y, x in ((6, 10, 12), (12, 20, 30), (18, 25, 7)):
        patch = vol[z - 6:z + 6, y - 6:y + 6, x - 6:x + 6]
        mean = (patch * mask).sum() / mask.sum()
        sigma = math.sqrt(float((patch.square() * mask).sum() / mask.sum() - mean**2))
        rotated = rotate_volume(template, mats)
        t = mask * (rotated - (rotated * mask).sum((1, 2, 3), keepdim=True) / mask.sum())
        t = t / t.square().sum((1, 2, 3), keepdim=True).sqrt()
        direct = (t * patch).sum((1, 2, 3)) / (sigma * math.sqrt(float(mask.sum())))
        assert float(result.scores[z, y, x]) == pytest.approx(float(direct.max()), abs=2e-4)
        assert int(result.angles[z, y, x]) == int(direct.argmax())
        assert float(result.null[z, y, x]) == pytest.approx(float(-direct.min()), abs=2e-4)


def test_false_alarm_estimate_matches_a_noise_count():
    """On noise every peak is false: the null's estimate at a threshold where ~30 are expected
    agrees with the count within a factor of 2 (the bar), here within 1.5."""
    gen = torch.Generator().manual_seed(3)
    box = 12
    volume = torch.randn(48, 96, 96, generator=gen)
    mats, _ = rotation_grid(0)
    result = match_template(volume, _blobs(box), mats,
                            lambda z: torch.ones(box, box, box // 2 + 1),
                            sphere_diameter_px=10, batch=12, progress=False)
    cand, scores = find_peaks(result.scores, 6.0, valid=result.valid)
    null = false_alarms(result.null, 6.0, result.valid, cand, scores)
    threshold = null.threshold_for(30.0)
    measured = int((scores >= threshold).sum())
    expected = null.null_count(threshold)
    assert 20 <= measured and expected / 1.5 <= measured <= expected * 1.5


def _truth(scene: Path):
    tset = read_tomogram_set(scene / "truth" / "tomograms.star")
    ts = tset[tset.names[0]]
    ps = read_particles(scene / "truth" / "particles.star")
    df = ps.particles
    centred = df[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    return (ts.centred_to_px(torch.as_tensor(centred)).numpy(),
            df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), ts)


def test_pick_finds_the_simulated_particles_and_resumes(scene, tmp_path):
    out = tmp_path / "pick"
    done = _subtomo("pick", "--i", str(scene / "optimisation_set.star"), "--template",
                    str(scene / "truth" / "class001.mrc"), "--particle_diameter",
                    str(DIAMETER_A), "--bin", "2", "--angular_step", "30", "--o", str(out),
                    "--false_positives", "0.1", "--j", "2")
    assert done.returncode == 0, done.stderr
    assert "expected false positives" in done.stdout
    positions, angles, ts = _truth(scene)
    picked = read_particles(out / "particles.star").particles
    got = ts.centred_to_px(torch.as_tensor(picked[[
        f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy())).numpy()
    dist = np.linalg.norm(got[:, None] - positions[None], axis=-1) * ts.pixel_size_A
    within = DIAMETER_A / 4  # half a particle radius
    assert (dist.min(1) < within).mean() >= 0.95  # precision
    assert (dist.min(0) < within).mean() >= 0.9  # recall
    true_pick = dist.min(1) < within
    mine = euler_to_matrix(torch.as_tensor(picked[["rlnAngleRot", "rlnAngleTilt",
                                                   "rlnAnglePsi"]].to_numpy()))
    theirs = euler_to_matrix(torch.as_tensor(angles[dist.argmin(1)]))
    cos = ((torch.einsum("nij,nij->n", mine, theirs) - 1) / 2).clamp(-1, 1)
    error = torch.rad2deg(torch.arccos(cos)).numpy()[true_pick]
    assert np.median(error) <= 30.0  # one angular step
    assert (picked["rlnAutopickFigureOfMerit"].diff().dropna() <= 0).all()
    opt = read_optimisation_set(out / "optimisation_set.star")
    assert opt.particles.resolve() == (out / "particles.star").resolve()
    assert opt.tomograms.resolve() == (scene / "tomograms.star").resolve()
    with mrcfile.open(out / f"scores_{ts.name}.mrc") as mrc:
        assert mrc.data.shape == (28, 112, 112)
        assert mrc.voxel_size.x == pytest.approx(20.0)
    for name in ("angles.star", "scores.png", f"picks_{ts.name}.png",
                 f"angles_{ts.name}.mrc", f"null_{ts.name}.mrc"):
        assert (out / name).is_file(), name
    # the picks' optimisation set feeds reconstruct-particle directly: the map from the picked
    # positions and orientations (15° apart at most) resembles the truth to 50 Å or finer
    rec = _subtomo("reconstruct-particle", "--i", str(out / "optimisation_set.star"), "--b", "24",
                   "--o", str(tmp_path / "rec"))
    assert rec.returncode == 0, rec.stderr
    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.io.mrc import read_mrc

    merged, truth_map = (torch.from_numpy(read_mrc(p)[0]) for p in (
        tmp_path / "rec" / "merged.mrc", scene / "truth" / "class001.mrc"))
    assert resolution_at(fsc(merged, truth_map), 24, 10.0, 0.5) <= 50.0
    stamp = (out / f"scores_{ts.name}.mrc").stat().st_mtime_ns
    (out / "particles.star").unlink()
    again = _subtomo("pick", "--continue", str(out), "--i", str(scene / "optimisation_set.star"),
                     "--template", str(scene / "truth" / "class001.mrc"), "--particle_diameter",
                     str(DIAMETER_A), "--bin", "2", "--angular_step", "30", "--number", "5")
    assert again.returncode == 0, again.stderr
    assert "not searched again" in again.stdout
    assert (out / f"scores_{ts.name}.mrc").stat().st_mtime_ns == stamp
    assert len(read_particles(out / "particles.star")) == 5


def _write(path: Path, data: np.ndarray, voxel: float) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = voxel
    return path


def _with_tomogram(scene: Path, tmp_path: Path, data: np.ndarray) -> Path:
    tset = read_tomogram_set(scene / "tomograms.star")
    ts = tset[tset.names[0]]
    tomo = _write(tmp_path / "tomo.mrc", data, ts.pixel_size_A * 2)
    ts.globals.update({"rlnTomoReconstructedTomogram": str(tomo),
                       "rlnTomoTomogramBinning": 2.0})
    write_tomogram_set(tset, tmp_path / "tomograms.star")
    return tmp_path / "tomograms.star"


@pytest.mark.parametrize("case", ["pixel size unset", "template larger", "mask box",
                                  "tomogram NaN"])
def test_bad_input_is_refused_with_nothing_written(scene, tmp_path, case):
    template = str(scene / "truth" / "class001.mrc")
    tomograms = str(scene / "tomograms.star")
    extra: list[str] = ["--bin", "2"]
    rng = np.random.default_rng(0)
    if case == "pixel size unset":
        template = str(_write(tmp_path / "t.mrc", rng.random((24, 24, 24)), 0.0))
        field = "--template"
    elif case == "template larger":
        tomograms = str(_with_tomogram(scene, tmp_path, rng.random((8, 112, 112))))
        extra, field = [], "--template"
    elif case == "mask box":
        extra += ["--mask", str(_write(tmp_path / "m.mrc", np.ones((20, 20, 20)), 10.0))]
        field = "--mask"
    else:
        data = rng.random((28, 112, 112))
        data[3, 4, 5] = np.nan
        tomograms = str(_with_tomogram(scene, tmp_path, data))
        extra, field = [], "rlnTomoReconstructedTomogram"
    out = tmp_path / "out"
    done = _subtomo("pick", "--t", tomograms, "--template", template, "--particle_diameter",
                    str(DIAMETER_A), "--o", str(out), *extra)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and field in done.stderr, done.stderr
    assert not out.exists()


def test_subvoxel_peak_of_a_parabola_is_exact():
    from subtomo.tomo.template_matching import _subvoxel

    g = torch.arange(3.0) - 1
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    scores = -((z - 0.3) ** 2 + 2 * (y + 0.2) ** 2 + 0.5 * (x - 0.1) ** 2)
    best = scores.flatten().argmax()
    offset = _subvoxel(scores.flatten()[None], best[None], 3)
    assert torch.allclose(offset, torch.tensor([[0.3, -0.2, 0.1]]), atol=1e-6)


def test_split_modes_finds_the_valley_and_leaves_one_mode_alone():
    from subtomo.tomo.peaks import split_modes

    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.25, 0.02, 60), rng.normal(0.45, 0.05, 70)])
    cut, separation = split_modes(two)
    assert 0.29 < cut < 0.36 and separation > 2.5
    assert ((two >= cut)[60:]).mean() >= 0.95 and ((two < cut)[:60]).mean() >= 0.95
    assert split_modes(rng.normal(0.4, 0.08, 150)) is None
    assert split_modes(rng.gamma(4.0, 0.05, 150)) is None  # skewed, one mode


def test_split_modes_rarely_splits_one_mode():
    """Unimodal scores (normal, skewed gamma and log-normal, 60–200 peaks): no split in 240."""
    from subtomo.tomo.peaks import split_modes

    splits = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        for x in (rng.normal(0.4, 0.08, 150), rng.gamma(4.0, 0.05, 150),
                  rng.gamma(2.0, 0.05, 60), rng.lognormal(-1.5, 0.4, 200)):
            splits += split_modes(x) is not None
    assert splits == 0


def test_two_processes_pick_what_one_does(tmp_path):
    """``torchrun`` shares the tomograms out; rank 0 writes the same picks as one process."""
    import os

    config = TiltSeriesConfig(n_particles=5, image_size_px=(160, 160), thickness_px=40,
                              box_px=24, n_atoms=600, tilt_step_deg=6.0, seed=4, noise_sigma=10.0,
                              n_tomograms=2)
    simulate_tiltseries(tmp_path / "p", config, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["pick", "--t", str(tmp_path / "p" / "tomograms.star"), "--template",
            str(tmp_path / "p" / "truth" / "class001.mrc"), "--particle_diameter", "200",
            "--bin", "2", "--angular_step", "60", "--number", "4"]
    one = subprocess.run([sys.executable, "-m", "subtomo", *args, "--o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29553", "-m", "subtomo", "--", *args, "--o",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (read_particles(tmp_path / d / "particles.star").particles for d in ("one", "two"))
    assert len(a) == 8 and set(a["rlnTomoName"]) == {"TS_01", "TS_02"}
    assert np.allclose(a.select_dtypes("number").to_numpy(), b.select_dtypes("number").to_numpy())


def test_relion5_reconstructs_from_the_picks(scene, tmp_path):
    """RELION 5 reads the picks as they are: relion_tomo_reconstruct_particle of the picks'
    optimisation set resembles the truth (RELION's ZYZ angles and centred coordinates)."""
    import os

    folder = os.environ.get("RELION5_BIN")
    if not folder or not (Path(folder) / "relion_tomo_reconstruct_particle").is_file():
        pytest.skip("RELION 5 not found: set RELION5_BIN (bench/relion5/build.sh)")
    out = tmp_path / "pick"
    done = _subtomo("pick", "--i", str(scene / "optimisation_set.star"), "--template",
                    str(scene / "truth" / "class001.mrc"), "--particle_diameter",
                    str(DIAMETER_A), "--bin", "2", "--angular_step", "30", "--o", str(out),
                    "--false_positives", "0.1")
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    rec = subprocess.run([str(Path(folder) / "relion_tomo_reconstruct_particle"), "--i",
                          str(out / "optimisation_set.star"), "--b", "24", "--j", "2", "--o",
                          str(tmp_path / "r5") + "/"], capture_output=True, text=True, env=env)
    assert rec.returncode == 0, rec.stdout[-2000:] + rec.stderr[-2000:]
    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.io.mrc import read_mrc

    merged, truth_map = (torch.from_numpy(read_mrc(p)[0]) for p in (
        tmp_path / "r5" / "merged.mrc", scene / "truth" / "class001.mrc"))
    assert resolution_at(fsc(merged, truth_map), 24, 10.0, 0.5) <= 50.0
