"""``subtomo poses export --format opus`` of subtomograms cut from tilt series: OPUS's per-tilt
CSVs come from the tilt series (each particle's tilts, defocus at its depth, dose, visibility).

OPUS's reading of a CSV row (TiltAngle φ ↔ our tilt about y by −φ, the astigmatism angle from
its image x axis) is measured against OPUS itself in tests/io/test_opus_export.py. Here the 3D
CTF those rows describe, gridded by our gridder in OPUS's geometry, must be the CTF volume
``extract`` wrote beside each subtomogram: on a project whose tilt axis is at 85° (every image
turned in plane) with astigmatic CTFs, so that only a correct re-measuring of the astigmatism
angle and the right tilt sense agree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo.cli import main
from subtomo.commands.poses import opus_hint
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import ctf_volume
from subtomo.fourier.grid import shell_index
from subtomo.io.mrc import read_ctf_volume
from subtomo.io.opus import dose_bfactor_A2
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_tomogram_set, write_tomogram_set
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
from test_opus_export import SCRIPT, opus_python  # noqa: E402

BOX = 16
PIXEL_A = 10.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny astigmatic project with its tilt axis at 85°, extracted, then exported for OPUS."""
    root = tmp_path_factory.mktemp("opus_series")
    config = TiltSeriesConfig(n_particles=6, image_size_px=(160, 160), thickness_px=40,
                              box_px=BOX, n_atoms=300, tilt_step_deg=10.0, tilt_axis_deg=85.0,
                              astigmatism_A=3000.0, seed=4)
    sim = simulate_tiltseries(root / "sim", config, progress=False)
    assert main(["extract", "--i", str(sim.optimisation_set), "--b", str(BOX), "--o",
                 str(root / "ex")]) == 0
    assert main(["poses", "export", "--i", str(root / "ex" / "optimisation_set.star"), "-D",
                 str(BOX), "--format", "opus", "-o", str(root / "opus" / "poses.pkl")]) == 0
    return root, sim


def csv_ctf(table: pd.DataFrame, mirrored: bool = False, astigmatism_offset_deg: float = 0.0,
            one_tilt_at_a_time: bool = False) -> torch.Tensor:
    """The 3D CTF of one particle's CSV rows as OPUS reads them (its visible tilts, tilts about
    y by −φ, defocus and astigmatism from its columns), gridded by our gridder
    (``one_tilt_at_a_time``: (1/T) Σ_t of one-tilt volumes, as OPUS grids it)."""
    rows = table[table.Scale > 0]
    phi = rows.TiltAngle.to_numpy() * (-1.0 if mirrored else 1.0)
    defocus, delta = -rows.Defocus.to_numpy() * 1e10, -rows.DefocusDelta.to_numpy() * 1e10
    b_A2 = -rows.Bfactor.to_numpy() * 1e20 / 4
    exposure = np.interp(b_A2, dose_bfactor_A2(np.arange(0, 200.0), PIXEL_A), np.arange(0, 200.0))
    angle = np.rad2deg(rows.AstigmatismAngle.to_numpy()) + astigmatism_offset_deg
    groups = [[t] for t in range(len(rows))] if one_tilt_at_a_time else [list(range(len(rows)))]
    total = 0.0
    for g in groups:
        weights, _ = ctf_volume(BOX, PIXEL_A, TiltScheme(tuple(-phi[g]), tuple(exposure[g])),
                                torch.tensor(defocus[g])[None],
                                astigmatism_A=torch.tensor(2 * delta[g])[None],
                                astigmatism_angle_deg=torch.tensor(angle[g])[None],
                                voltage_kv=300.0, dtype=torch.float64)
        total = total + weights[0]
    return total / len(table) if one_tilt_at_a_time else total


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over the frequencies inside Nyquist (extracted volumes are 0 beyond)."""
    inside = shell_index(BOX) < BOX // 2
    a, b = a[inside].double(), b[inside].double()
    return float((a - b).norm() / b.norm())


def test_csv_ctf_is_the_extracted_ctf_volume(exported):
    """Exact in OPUS's geometry (here < 10⁻³); the other tilt sense or the astigmatism angle
    left in the tomogram's image axes (85° off) are not (here 0.06 and 0.17)."""
    root, _ = exported
    ps = read_particles(root / "ex" / "particles.star")
    tables = sorted((root / "opus" / "poses_ctf").glob("*.csv"))
    assert len(tables) == len(ps) > 3
    for i, path in enumerate(tables):
        table = pd.read_csv(path)
        extracted = read_ctf_volume(root / "ex" / ps.particles.rlnCtfImage[i], BOX)
        assert error(csv_ctf(table), extracted) < 0.005
        assert error(csv_ctf(table, mirrored=True), extracted) > 0.03
        assert error(csv_ctf(table, astigmatism_offset_deg=85.0), extracted) > 0.1


def test_csv_rows_follow_the_tilt_series(exported):
    """Defocus at the particle's depth (it changes along the tilts), the tilt's dose, and the
    tilt angles of the tilt series (φ = −rlnTomoYTilt for tilts about y)."""
    root, _ = exported
    ts = read_tomogram_set(root / "ex" / "tomograms.star" if (
        root / "ex" / "tomograms.star").exists() else root / "sim" / "tomograms.star")
    series = next(iter(ts.series.values()))
    table = pd.read_csv(sorted((root / "opus" / "poses_ctf").glob("*.csv"))[0])
    np.testing.assert_allclose(table.TiltAngle, -series.tilts.rlnTomoYTilt, atol=1e-6)
    np.testing.assert_allclose(-table.Bfactor * 1e20 / 4,
                               dose_bfactor_A2(series.pre_exposure, PIXEL_A), rtol=1e-6)
    assert np.ptp(table.Defocus) > 0  # depth: a particle off the tilt axis changes defocus
    # the OPUS line the command prints: its nominal tilts must cover these angles
    tables = [pd.read_csv(f) for f in sorted((root / "opus" / "poses_ctf").glob("*.csv"))]
    assert "--tilt-range 60 --tilt-step 10" in opus_hint(tables, str(root / "opus" / "p.pkl"))


def test_two_d_stacks_and_tilts_off_y_are_refused(exported, tmp_path, refused):
    root, sim = exported
    assert main(["extract", "--i", str(sim.optimisation_set), "--b", str(BOX),
                 "--2d_stacks", "--o", str(tmp_path / "stacks")]) == 0
    refused(["poses", "export", "--i", str(tmp_path / "stacks" / "optimisation_set.star"),
             "-D", str(BOX), "--format", "opus", "-o", str(tmp_path / "o" / "poses.pkl")],
            "rlnTomoSubTomosAre2DStacks", tmp_path / "o")
    tset = read_tomogram_set(sim.truth_tomograms_star)
    for ts in tset.series.values():
        ts.tilts["rlnTomoXTilt"] = 5.0  # beams out of the xz plane: OPUS cannot say so
    write_tomogram_set(tset, tmp_path / "xtilt" / "tomograms.star")
    refused(["poses", "export", "--i", str(root / "ex" / "particles.star"), "--t",
             str(tmp_path / "xtilt" / "tomograms.star"), "-D", str(BOX), "--format", "opus",
             "-o", str(tmp_path / "o" / "poses.pkl")], "rlnTomoXTilt", tmp_path / "o")


@pytest.mark.skipif(opus_python() is None, reason="OPUS-ET not installed (bench/opus/setup.sh)")
def test_opus_reads_the_astigmatism_as_written(exported):
    """OPUS's own reader and 3D CTF on the export: our reading of its rows matches it best with
    the angles as written (correlation 0.987 here); the astigmatism angle turned by ±30° or
    90°, or the other tilt sense, match it less."""
    root, _ = exported
    out = root / "opus"
    subprocess.run([opus_python(), str(SCRIPT), "poses.star", str(out), str(BOX), str(PIXEL_A),
                    "60", "10", str(out / "o.npz")], cwd=out, check=True, capture_output=True)
    theirs = np.load(out / "o.npz")["ctf"]
    for i, path in enumerate(sorted((out / "poses_ctf").glob("*.csv"))[:2]):
        table, opus = pd.read_csv(path), torch.tensor(theirs[i]).double().flatten()
        scores = {}
        for name, other in (("right", {}), ("mirrored", dict(mirrored=True)),
                            ("+30", dict(astigmatism_offset_deg=30.0)),
                            ("-30", dict(astigmatism_offset_deg=-30.0)),
                            ("90", dict(astigmatism_offset_deg=90.0))):
            ours = torch.fft.fftshift(csv_ctf(table, one_tilt_at_a_time=True, **other),
                                      dim=(0, 1)).flatten()
            scores[name] = float((ours @ opus) / (ours.norm() * opus.norm()))
        assert scores["right"] > 0.98
        assert max(scores, key=scores.get) == "right", scores
