"""``subtomo pick`` against the truth and against time (issue 27).

Parts:

- ``accuracy``: two scenes, each picked by ``subtomo pick`` in its own process (2 threads,
  ``--bin 2``, ``--angular_step 15``: a global search at 30°, picks refined at 15°):
  the package's simulator (``subtomo simulate tiltseries``) and a scene it did not make
  (:mod:`pick_scene`: two species, crowded at one particle per two diameters, 150 nm thick,
  per-tilt particle SNR 0.05, its own projector, CTF and dose filter). Against the true
  positions of the template's species: precision and recall within half a particle radius,
  median orientation error of the true picks; the false picks counted (the other species
  included) beside the count the job estimates, at the automatic threshold and at one where
  20 are expected with every peak above it kept (``--no_split_modes``: the estimate is of
  noise peaks).
- ``speed``: one 512 × 512 × 128 tomogram at 15° (the global search at 30°, 576 rotations,
  then the picks refined at 15°) with peak memory, beside the same search done with a plain
  FFT per orientation at 15° (4608 rotations: the template padded to the tomogram and
  transformed, the product transformed back, the local σ under the rotated mask by two more
  transforms, as in Roseman's FLCF), timed on a few rotations and scaled.

Run: ``.venv/bin/python bench/bench_pick.py [--parts accuracy,speed]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import starfile
import torch

sys.path.insert(0, str(Path(__file__).parent))

from pick_scene import make_scene  # noqa: E402
from results import machine_load, run_measured, update_section  # noqa: E402

DATA = Path(__file__).parent / ".data" / "pick"
DIAMETER_A = 250.0


def _pick(tomograms: Path, template: Path, out: Path, *extra: str) -> tuple:
    done, wall, cpu, peak = run_measured(
        [sys.executable, "-m", "subtomo", "pick", "--t", str(tomograms), "--template",
         str(template), "--particle_diameter", str(DIAMETER_A), "--bin", "2",
         "--angular_step", "15", "--j", "2", *extra], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return done.stdout, wall, cpu, peak


def _expected(stdout: str) -> float:
    return sum(float(line.rsplit(" ", 1)[-1]) for line in stdout.splitlines()
               if "expected false positives" in line)


def score(truth, picks, diameter_A: float) -> dict:
    """Precision, recall, orientation error and false picks against ``truth`` (rows with a
    ``species`` column: ``A`` is the template's)."""
    from subtomo.geometry.euler import euler_to_matrix

    xyz = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    t, p = truth[xyz].to_numpy(), picks[xyz].to_numpy()
    is_a = (truth["species"] == "A").to_numpy()
    dist = np.linalg.norm(p[:, None] - t[None], axis=-1)
    within = diameter_A / 4
    nearest = dist.argmin(1)
    hit = (dist.min(1) < within) & is_a[nearest]
    mine = euler_to_matrix(torch.as_tensor(picks[angles].to_numpy()))
    theirs = euler_to_matrix(torch.as_tensor(truth[angles].to_numpy()[nearest]))
    cos = ((torch.einsum("nij,nij->n", mine, theirs) - 1) / 2).clamp(-1, 1)
    error = torch.rad2deg(torch.arccos(cos)).numpy()
    fom = picks["rlnAutopickFigureOfMerit"].to_numpy()
    best = 0.0  # the best precision any score threshold reaches at recall ≥ 0.9
    for cut in np.unique(fom):
        keep = fom >= cut
        if (dist[keep][:, is_a].min(0) < within).mean() >= 0.9 if keep.any() else False:
            best = max(best, float(hit[keep].mean()))
    return {"picks": len(p), "precision": float(hit.mean()) if len(p) else 0.0, "best": best,
            "recall": float((dist[:, is_a].min(0) < within).mean()) if len(p) else 0.0,
            "orientation": float(np.median(error[hit])) if hit.any() else math.nan,
            "false": int((~hit).sum()), "on_other": int(((dist.min(1) < within)
                                                         & ~is_a[nearest]).sum()),
            "true": int(is_a.sum())}


def own_scene() -> tuple[Path, Path, object]:
    out = DATA / "own"
    if not (out / "truth" / "class001.mrc").is_file():
        done, *_ = run_measured(
            [sys.executable, "-m", "subtomo", "simulate", "tiltseries", "--o", str(out), "--n",
             "60", "--size", "400", "400", "--thickness", "150", "--angpix", "10", "--box",
             "32", "--noise", "40", "--shift-error", "0", "--angle-error", "0", "--seed", "2"],
            capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
    truth = starfile.read(out / "truth" / "particles.star")["particles"]
    truth["species"] = "A"
    return out / "tomograms.star", out / "truth" / "class001.mrc", truth


def independent_scene() -> tuple[Path, Path, object]:
    out = DATA / "independent"
    if not (out / "template.mrc").is_file():
        make_scene(out)
    return out / "tomograms.star", out / "template.mrc", starfile.read(out / "truth.star")


def accuracy() -> str:
    lines = ["| scene | picks | precision | recall | orientation error, median | false picks "
             "(other species) | expected by the job | best precision at recall ≥ 0.9, any "
             "threshold on the score | wall s | CPU s | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, scene in (("package simulator: 60 particles, 150 nm, noise σ 40", own_scene),
                         ("independent: 2 species, crowded, 150 nm, SNR 0.05",
                          independent_scene)):
        tomograms, template, truth = scene()
        out = tomograms.parent / "pick"
        for item in out.glob("*") if out.exists() else []:
            item.unlink()
        stdout, wall, cpu, peak = _pick(tomograms, template, out, "--o", str(out))
        rows = [("auto (1 expected)", starfile.read(out / "particles.star")["particles"],
                 stdout, wall, cpu, peak)]
        (out / "particles.star").unlink()
        loose = _pick(tomograms, template, out, "--continue", str(out), "--false_positives",
                      "20", "--no_split_modes")
        rows.append(("20 expected, no mode split",
                     starfile.read(out / "particles.star")["particles"], *loose))
        for threshold, picks, text, w, c, m in rows:
            s = score(truth, picks, DIAMETER_A)
            lines.append(
                f"| {label}, threshold {threshold} | {s['picks']} | {s['precision']:.3f} | "
                f"{s['recall']:.3f} ({s['true']} true) | {s['orientation']:.1f}° | {s['false']} "
                f"({s['on_other']}) | {_expected(text):.1f} | {s['best']:.3f} | {w:.0f} | "
                f"{c:.0f} | {m:.0f} |")
    return "\n".join(lines)


def _plain_per_rotation(volume: torch.Tensor, template: torch.Tensor, mats: torch.Tensor
                        ) -> float:
    """Seconds per rotation of the plain search (module docstring), on ``len(mats)``."""
    from subtomo.fourier.grid import soft_sphere
    from subtomo.maps.rotate import rotate_volume

    box = template.shape[-1]
    shape = volume.shape
    spec = torch.fft.rfftn(volume)
    spec2 = torch.fft.rfftn(volume.square())
    sphere = soft_sphere(box, box - 2, 2.0)
    best = torch.full(shape, -math.inf)
    start = time.perf_counter()
    for a in mats:
        t = rotate_volume(template, a)
        m = rotate_volume(sphere, a)
        padded = torch.zeros(shape)
        padded[:box, :box, :box] = t * m
        mpad = torch.zeros(shape)
        mpad[:box, :box, :box] = m
        t_hat, m_hat = torch.fft.rfftn(padded).conj(), torch.fft.rfftn(mpad).conj()
        cc = torch.fft.irfftn(spec * t_hat, s=shape)
        mean = torch.fft.irfftn(spec * m_hat, s=shape)
        mean2 = torch.fft.irfftn(spec2 * m_hat, s=shape)
        score = cc / (mean2 - mean.square()).clamp_min(1e-6).sqrt()
        best = torch.maximum(best, score)
    return (time.perf_counter() - start) / len(mats)


def speed() -> str:
    from subtomo.geometry.healpix import rotation_grid

    tomograms, template, _ = independent_scene()
    folder = DATA / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    volume = torch.randn(128, 512, 512)
    import mrcfile

    with mrcfile.new(folder / "tomo512.mrc", overwrite=True) as mrc:
        mrc.set_data(volume.numpy())
        mrc.voxel_size = 20.0
    tables = starfile.read(tomograms)
    table = tables["global"] if isinstance(tables, dict) else tables
    table["rlnTomoSizeX"], table["rlnTomoSizeY"], table["rlnTomoSizeZ"] = 1024, 1024, 256
    table["rlnTomoReconstructedTomogram"] = str(folder / "tomo512.mrc")
    table["rlnTomoTomogramBinning"] = 2.0
    starfile.write({"global": table}, folder / "tomograms.star", overwrite=True)
    out = folder / "pick"
    for item in out.glob("*") if out.exists() else []:
        item.unlink()
    done, wall, cpu, peak = run_measured(
        [sys.executable, "-m", "subtomo", "pick", "--t", str(folder / "tomograms.star"),
         "--template", str(template), "--particle_diameter", str(DIAMETER_A), "--angular_step",
         "15", "--j", "2", "--number", "200", "--o", str(out)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    from subtomo.tomo.picking import load_template

    torch.set_num_threads(2)
    small, _ = load_template(template, 20.0)
    fine, _ = rotation_grid(2)
    per = _plain_per_rotation(volume, small, fine[:6])
    plain = per * len(fine)
    return (f"- one 512 × 512 × 128 tomogram (20 Å voxels, template {small.shape[-1]}³), "
            f"`--angular_step 15` (global search at 30°: 576 rotations; the 200 best peaks "
            f"refined at 15°): {wall:.0f} s wall, {cpu:.0f} s CPU, peak RSS {peak:.0f} MiB "
            f"(bar ≤ 1200 s)\n- the same search with a plain FFT per orientation at 15° "
            f"({len(fine)} rotations, {per:.2f} s each on 6): {plain:.0f} s; ratio "
            f"{plain / wall:.1f}× (bar ≥ 3×)\n- {machine_load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="accuracy,speed")
    args = parser.parse_args()
    parts = args.parts.split(",")
    DATA.mkdir(parents=True, exist_ok=True)
    if "accuracy" in parts:
        (DATA / "accuracy.md").write_text(
            "### Accuracy (`--bin 2`, 20 Å voxels; `--angular_step 15`)\n\n" + accuracy()
            + "\n\nBars: precision ≥ 0.95, recall ≥ 0.9 within half a particle radius; "
            "orientation error ≤ one angular step (15°); the expected false picks within a "
            "factor of 2 of the counted ones (false picks less those on the other species: the "
            "estimate models noise, and another species is signal, kept out by the score and the "
            f"split of a lower mode of refined scores).\n\n_{machine_load()}_")
    if "speed" in parts:
        (DATA / "speed.md").write_text("### Speed (cpu, 2 threads)\n\n" + speed())
    text = "\n\n".join((DATA / f"{part}.md").read_text() for part in ("accuracy", "speed")
                         if (DATA / f"{part}.md").exists())
    print(text)
    update_section("Picking by template matching (bench/bench_pick.py)", text)

if __name__ == "__main__":
    main()
