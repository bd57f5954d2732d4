"""``subtomo poses export --format opus``: the files OPUS-ET's ``dsd train_tomo --warp`` reads.

OPUS grids each particle's 3D CTF from the per-tilt CSV as (1/T) Σ_t CTF_t on the plane of tilt
t (``compute_3dctfaniso`` with ``use_warp``: its grid weights are 1 everywhere). The same sum
from our gridder, one tilt at a time (:func:`ours_like_opus`), must match what OPUS computes
from our export; a mirrored tilt sign or swapped axes must not. ``test_opus_reads_export`` runs
OPUS itself (skipped without it: ``OPUS_PYTHON``, default /work/opus_venv/bin/python, with
``cryodrgn`` from opusTomo importable, see bench/opus/setup.sh); the other tests use OPUS's output
on a tiny set committed in tests/data/opus (PROVENANCE there).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subtomo import interop
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import ctf_volume
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms, tilt_scheme

REFERENCE = Path(__file__).parents[1] / "data" / "opus" / "opus_ctf3d.npz"
SCRIPT = Path(__file__).parents[2] / "bench" / "opus" / "opus_ctf3d.py"
# the tiny set of the reference: sequential tilts (exposure grows from −45° to +45°), so a
# mirrored tilt sign puts the high doses on the wrong side
CONFIG = dict(n=2, box_px=16, pixel_size_A=6.0, n_atoms=300, tilt_range_deg=45.0,
              tilt_step_deg=15.0, dose_per_tilt=20.0, order="sequential", seed=3,
              noise_sigma=0.0)


def simulate_set(folder: Path) -> Path:
    simulate_subtomograms(folder, SimulationConfig(**CONFIG), progress=False)
    return folder / "particles.star"


def export(star: Path, out: Path, tilt_sign: float = 1.0) -> Path:
    interop.export_poses(star, out / "poses.pkl", box_px=CONFIG["box_px"], fmt="opus",
                         tilt_sign=tilt_sign)
    return out


def ours_like_opus(star: Path) -> torch.Tensor:
    """(N, D, D, D//2+1), kz and ky centred: (1/T) Σ_t of our one-tilt CTF volumes."""
    ps = read_particles(star)
    scheme = tilt_scheme(SimulationConfig(**CONFIG))
    defocus = torch.tensor(ps.particles["rlnDefocusU"].to_numpy())
    total = 0.0
    for angle, exposure in zip(scheme.tilt_angles_deg, scheme.pre_exposure_e_per_A2,
                               strict=True):
        weights, _ = ctf_volume(CONFIG["box_px"], CONFIG["pixel_size_A"],
                                TiltScheme((angle,), (exposure,)), defocus)
        total = total + weights.double()
    return torch.fft.fftshift(total / len(scheme.tilt_angles_deg), dim=(1, 2))


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float((a @ b) / (a.norm() * b.norm()))


def csv_params(out: Path) -> np.ndarray:
    """The CSVs as OPUS parses them (get_warp3dctfs): (N, T, 9) tilt, ΔfU, ΔfV, angle (deg),
    kV, Cs (mm), w, B (Å²), scale, sorted by tilt."""
    rows = []
    for path in sorted((out / "poses_ctf").glob("*.csv")):
        df = pd.read_csv(path).sort_values("TiltAngle")
        defocus, delta = -df.Defocus * 1e10, -df.DefocusDelta * 1e10
        rows.append(np.stack([df.TiltAngle, defocus + delta, defocus - delta,
                              np.rad2deg(df.AstigmatismAngle), df.Voltage / 1e3, df.Cs * 1e3,
                              df.Amplitude, -df.Bfactor * 1e20 / 4, df.Scale], axis=1))
    return np.stack(rows)


def test_export_matches_opus_reference(tmp_path):
    reference = np.load(REFERENCE)
    star = simulate_set(tmp_path / "sim")
    out = export(star, tmp_path / "opus")
    np.testing.assert_allclose(csv_params(out), reference["params"], rtol=1e-5, atol=1e-3)
    opus = torch.tensor(reference["ctf"]).double()
    ours = ours_like_opus(star)
    for i in range(len(ours)):
        assert correlation(ours[i], opus[i]) > 0.9
        mirrored = torch.roll(ours[i].flip(0), 1, 0)  # kz → −kz: the other tilt sense
        assert correlation(mirrored, opus[i]) < correlation(ours[i], opus[i]) - 0.1
        assert correlation(ours[i].transpose(0, 1), opus[i]) < 0.5  # ky ↔ kz


def test_mirrored_export_differs_from_reference(tmp_path):
    """The reference was made with our tilt sign; the mirrored CSVs give other parameters."""
    reference = np.load(REFERENCE)
    star = simulate_set(tmp_path / "sim")
    mirrored = csv_params(export(star, tmp_path / "opus", tilt_sign=-1.0))
    assert np.abs(mirrored[..., 7] - reference["params"][..., 7]).max() > 100  # B on −45 vs +45


def test_poses_star_and_paths(tmp_path):
    star = simulate_set(tmp_path / "sim")
    out = export(star, tmp_path / "opus")
    rows = [line.split() for line in (out / "poses.star").read_text().splitlines()
            if line.startswith("../")]
    ps = read_particles(star)
    rot, trans, euler = pickle.loads((out / "poses.pkl").read_bytes())
    for i, row in enumerate(rows):
        assert (out / row[0]).resolve() == (star.parent / ps.particles.rlnImageName[i]).resolve()
        assert (out / row[1]).with_suffix(".csv").exists()
        np.testing.assert_allclose([float(x) for x in row[2:5]], euler[i], atol=1e-5)
        np.testing.assert_allclose([float(x) for x in row[5:8]], trans[i] * CONFIG["box_px"],
                                   atol=1e-5)


def opus_python() -> str | None:
    python = os.environ.get("OPUS_PYTHON", "/work/opus_venv/bin/python")
    if not Path(python).exists():
        return None
    ok = subprocess.run([python, "-c", "import cryodrgn.ctf"], capture_output=True)
    return python if ok.returncode == 0 else None


@pytest.mark.skipif(opus_python() is None, reason="OPUS-ET not installed (bench/opus/setup.sh)")
def test_opus_reads_export(tmp_path):
    """OPUS's own readers and CTF on our export; its pose parser agrees with our pickle."""
    python = opus_python()
    star = simulate_set(tmp_path / "sim")
    results = {}
    for sign in (1.0, -1.0):
        out = export(star, tmp_path / f"opus{sign:+g}", tilt_sign=sign)
        subprocess.run([python, str(SCRIPT), "poses.star", str(out), str(CONFIG["box_px"]),
                        str(CONFIG["pixel_size_A"]), str(CONFIG["tilt_range_deg"]),
                        str(CONFIG["tilt_step_deg"]), str(out / "o.npz")], cwd=out,
                       check=True, capture_output=True)
        results[sign] = np.load(out / "o.npz")
    ours = ours_like_opus(star)
    for i in range(len(ours)):
        right = correlation(ours[i], torch.tensor(results[1.0]["ctf"][i]).double())
        mirrored = correlation(ours[i], torch.tensor(results[-1.0]["ctf"][i]).double())
        assert right > 0.9 and mirrored < right - 0.1, (right, mirrored)
    # the subtomogram as OPUS reads it: our MRC, normalised by OPUS's std
    first = read_mrc(star.parent / read_particles(star).particles.rlnImageName[0])[0]
    data = results[1.0]
    np.testing.assert_allclose(data["first"] * data["norm"][1], np.asarray(first), atol=1e-5)
    # OPUS's parse_pose_star on our STAR gives our pickle
    out = tmp_path / "opus+1"
    subprocess.run([python, "-m", "cryodrgn.commands.parse_pose_star", "poses.star", "-D",
                    str(CONFIG["box_px"]), "-o", str(out / "theirs.pkl")], cwd=out, check=True,
                   capture_output=True)
    theirs = pickle.loads((out / "theirs.pkl").read_bytes())
    ours_pkl = pickle.loads((out / "poses.pkl").read_bytes())
    for a, b in zip(theirs, ours_pkl, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def write_reference(folder: Path) -> None:
    """Regenerate tests/data/opus/opus_ctf3d.npz (needs OPUS; see PROVENANCE)."""
    star = simulate_set(folder / "sim")
    out = export(star, folder / "opus")
    subprocess.run([opus_python(), str(SCRIPT), "poses.star", str(out), str(CONFIG["box_px"]),
                    str(CONFIG["pixel_size_A"]), str(CONFIG["tilt_range_deg"]),
                    str(CONFIG["tilt_step_deg"]), str(out / "o.npz")], cwd=out, check=True)
    data = np.load(out / "o.npz")
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, ctf=data["ctf"].astype(np.float32), params=data["params"])
    (REFERENCE.parent / "settings.json").write_text(json.dumps(CONFIG, indent=1) + "\n")


def test_missing_tilt_scheme_is_one_line_and_writes_nothing(tmp_path, capsys):
    from subtomo.cli import main

    star = simulate_set(tmp_path / "sim")
    out = tmp_path / "opus" / "poses.pkl"
    assert main(["poses", "export", "--i", str(star), "--o", str(out), "-D", "16",
                 "--tilts", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err and not out.parent.exists()


def test_missing_microscope_is_one_line_and_writes_nothing(tmp_path, capsys):
    """No guessed voltage: OPUS's CTF needs the optics of every particle."""
    from subtomo.cli import main
    from subtomo.io.star_text import read_star, write_star

    star = simulate_set(tmp_path / "sim")
    blocks = read_star(star)
    blocks["optics"] = blocks["optics"].drop(columns=["rlnVoltage"])
    write_star(blocks, tmp_path / "sim" / "no_voltage.star")
    out = tmp_path / "opus" / "poses.pkl"
    assert main(["poses", "export", "--i", str(tmp_path / "sim" / "no_voltage.star"), "--o",
                 str(out), "-D", "16", "--tilts", str(tmp_path / "sim" / "simulation.json")]) == 2
    assert "rlnVoltage" in capsys.readouterr().err and not out.parent.exists()
