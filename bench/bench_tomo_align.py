"""tomo-align against the truth on simulated tilt series of 150 particles × 41 tilts.

Issue bars (issue 12): per-tilt shifts of σ 1.5 px and angle errors of σ 0.4° brought to
≤ 0.3 px rms projected-position error (gauge-free: image positions against the truth);
motion of up to 1.5 px brought to ≤ 0.5 px by ``--motion`` and to at most 0.8 of the error
without it (issue 25), on each of the simulator's motion generators (``gp``, ``gradient``,
``short``: :mod:`subtomo.simulate.motion`); each deformation model recovering a smooth 2D
deformation to ≤ 0.5 px on held-out points; ``reconstruct-particle`` after alignment within
5 % of the FSC-0.5 resolution (against the true map) of the true geometry; 150 × 41 with
``--b 96`` in ≤ 2 min without motion and ≤ 5 min with it, time linear in the particles, with
peak memory.

Every project is simulated once into ``bench/.data``; references come from
``reconstruct-particle`` with the given (wrong) geometry, as a user would make them. Each
``tomo-align`` runs as ``subtomo tomo-align`` in its own process, so that its wall time, CPU
time and peak RSS are its own. The machine may be shared: CPU time is the steadier figure.

Run: ``.venv/bin/python bench/bench_tomo_align.py [--device cpu] [--skip deformation,...]``;
the motion part alone: ``--skip alignment,rounds,scaling,deformation``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from results import OWN_PEAK, commit, machine_load, update_section  # noqa: E402

DATA = Path(__file__).parent / ".data" / "tomo_align"
BASE = dict(n_particles=150, image_size_px=(512, 512), thickness_px=100, box_px=32,
            n_atoms=1500, tilt_range_deg=60.0, tilt_step_deg=3.0, noise_sigma=20.0,
            shift_error_px=1.5, angle_error_deg=0.4, position_error_px=1.0)
PROJECTS = {
    "alignment": dict(seed=11),
    "motion": dict(motion_px=1.5, motion_scale_px=150.0, seed=12),
    "motion_gradient": dict(motion_px=1.5, motion_kind="gradient", seed=16),
    "motion_short": dict(motion_px=1.5, motion_kind="short", motion_scale_px=64.0, seed=17),
    "cosine": dict(deformation_px=4.0, seed=13),
    "linear": dict(deformation_px=4.0, deformation_model="linear", seed=14),
    "large": dict(shift_error_px=3.0, angle_error_deg=0.8, seed=15),
}

PROJECTS_MOTION = {"gp": "motion", "gradient": "motion_gradient", "short": "motion_short"}


def project(name: str) -> Path:
    from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

    folder = DATA / name
    if not (folder / "simulation.json").exists():
        simulate_tiltseries(folder, TiltSeriesConfig(**{**BASE, **PROJECTS[name]}),
                            progress=False)
    return folder


CHILD = OWN_PEAK + """
import json, resource, sys, time
start, cpu = time.perf_counter(), time.process_time()
from subtomo.cli import main
code = main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "wall_s": time.perf_counter() - start,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "peak_MiB": own_peak_mib()}))
"""


def subtomo(args: list[str], cwd: Path, device: str) -> dict:
    """Run ``subtomo ARGS`` in a fresh process: its wall and CPU seconds (imports included)
    and its own peak RSS (MiB)."""
    done = subprocess.run([sys.executable, "-c", CHILD, *args, "--device", device],
                          cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    out = done.stdout.strip().splitlines()
    figures = json.loads(out[-1])
    figures["line"] = out[-2] if len(out) > 1 else ""
    return figures


def reference(folder: Path, device: str, source: str = "optimisation_set.star",
              name: str = "ref0") -> Path:
    """Half maps and FSC of ``reconstruct-particle`` with the geometry of ``source``."""
    out = folder / name
    if not (out / "optimisation_set.star").exists():
        shutil.rmtree(out, ignore_errors=True)
        subtomo(["reconstruct-particle", "--i", source, "--b", "32", "--o", name],
                folder, device)
    return out / "optimisation_set.star"


def align(folder: Path, name: str, opt: Path, device: str, *extra: str) -> tuple[Path, dict]:
    out = folder / name
    shutil.rmtree(out, ignore_errors=True)
    figures = subtomo(["tomo-align", "--i", str(opt.relative_to(folder)), "--b", "96", "--r",
                       "8", "--rounds", "1", "--j", "2", "--no_reconstruct", "--o", name,
                       *extra], folder, device)
    return out, figures


def image_positions(ps, tset, motion=None, deformations=None) -> torch.Tensor:
    """Image positions (N, T, 2) of all particles (one tilt series)."""
    from subtomo.simulate.tiltseries import image_deformation
    from subtomo.tomo.deformation import deformation_of
    from subtomo.tomo.particles import particle_positions_px

    ts = tset["TS_01"]
    xy = ts.project(particle_positions_px(ps, ts, np.arange(len(ps)), motion))
    d = deformation_of(ts)
    if d is not None:
        xy = d.apply(xy)
    if deformations is not None:
        xy = xy + image_deformation(deformations, xy, ts.image_size_px)
    return xy


def load(star_dir: Path, folder: Path):
    from subtomo.io.star import read_particles
    from subtomo.io.tomograms import read_motion, read_tomogram_set
    from subtomo.tomo.particles import with_tomograms

    tset = read_tomogram_set(star_dir / "tomograms.star")
    ps = with_tomograms(read_particles(star_dir / "particles.star"), tset)
    motion = read_motion(star_dir / "motion.star") if (star_dir / "motion.star").exists() \
        else None
    return ps, tset, motion


def truth_positions(folder: Path) -> torch.Tensor:
    ps, tset, motion = load(folder / "truth", folder)
    coeffs = torch.from_numpy(np.load(folder / "truth" / "deformations.npz")["TS_01"])
    return image_positions(ps, tset, motion, coeffs)


def seen(folder: Path, box: int = 96) -> torch.Tensor:
    """(N, T): the tilts where a particle's ``box``-px crop lies inside the image under the
    given geometry, i.e. where tomo-align has data on it."""
    ps, tset, _ = load(folder, folder)
    xy = image_positions(ps, tset)
    w, h = tset["TS_01"].image_size_px
    corner = torch.round(xy) - box // 2
    return ((corner[..., 0] >= 0) & (corner[..., 0] + box <= w) & (corner[..., 1] >= 0)
            & (corner[..., 1] + box <= h))


def rms_error(folder: Path, star_dir: Path, motion: bool = True) -> tuple[float, float]:
    """Rms distance (px) of the image positions from the truth: over the (particle, tilt)
    pairs with data at ``--b 96`` (the bar's figure) and over all pairs (``motion=False``: the
    trajectories of ``star_dir`` left out)."""
    ps, tset, trajectories = load(star_dir, folder)
    xy = image_positions(ps, tset, trajectories if motion else None)
    error = (xy - truth_positions(folder)).norm(dim=-1)
    return float(error[seen(folder)].pow(2).mean().sqrt()), float(error.pow(2).mean().sqrt())


def _origin_free_residuals(folder: Path, star_dir: Path, motion: bool = True
                           ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Image-position errors (N, T, 2) once the references' origin is taken out, with one
    origin for both half sets and with one per half set, and the seen pairs (N, T). Shifting a
    reference by ``c`` (its own frame) and each of its particles by ``A_i c`` moves the image
    positions by ``R_t A_i c`` and changes nothing in the data: the origin is a gauge that
    image positions do not remove (a rigid motion of the whole tomogram frame they do).
    References reconstructed with the given geometry are centred where its position errors put
    them, each half set on its own (σ / √75 per axis here), and the gold-standard halves never
    see each other; the true map is centred on the truth. Least-squares ``c`` over the seen
    pairs. ``motion=False``: the trajectories of ``star_dir`` left out."""
    ps, tset, trajectories = load(star_dir, folder)
    error = image_positions(ps, tset, trajectories if motion else None) - truth_positions(folder)
    mask = seen(folder)
    rotation = tset["TS_01"].matrices()[:, :2, :3].to(torch.float64)
    jac = torch.einsum("tab,nbc->ntac", rotation, ps.rotation_matrices().to(torch.float64))
    halves = ps.particles["rlnRandomSubset"].to_numpy()
    out = []
    for groups in ((halves > 0), (halves == 1, halves == 2)):
        residual = error.clone()
        for group in (groups,) if isinstance(groups, np.ndarray) else groups:
            rows = torch.from_numpy(np.asarray(group))
            pick = mask & rows[:, None]
            c = torch.linalg.lstsq(jac[pick].reshape(-1, 3), error[pick].reshape(-1, 1)).solution
            residual[rows] = error[rows] - (jac[rows] @ c)[..., 0]
        out.append(residual)
    return out, mask


def origin_free_error(folder: Path, star_dir: Path, motion: bool = True) -> tuple[float, float]:
    """Rms error (px, seen pairs) once the references' origin is taken out, with one origin
    for both half sets and with one per half set (:func:`_origin_free_residuals`)."""
    residuals, mask = _origin_free_residuals(folder, star_dir, motion)
    return tuple(float(r[mask].norm(dim=-1).pow(2).mean().sqrt()) for r in residuals)


def error_by_tilt_sign(folder: Path, star_dir: Path, motion: bool = True
                       ) -> tuple[float, float]:
    """Rms origin-free error (px, one origin, seen pairs) on the negative and on the positive
    tilts (nominal tilt angle)."""
    residuals, mask = _origin_free_residuals(folder, star_dir, motion)
    _, tset, _ = load(folder / "truth", folder)
    angle = torch.from_numpy(np.asarray(tset["TS_01"].nominal_tilt_deg))
    norm = residuals[0].norm(dim=-1)
    return tuple(float(norm[mask & side[None]].pow(2).mean().sqrt())
                 for side in (angle < 0, angle > 0))


def _pair(errors: tuple[float, float]) -> str:
    return f"{errors[0]:.3f} / {errors[1]:.3f}"


def held_out_error(folder: Path, star_dir: Path) -> float:
    """Held-out 3D grid points (between and around the particles) projected by the refined
    model, in the frame of its particle positions (rigid + scale fit to the truth)."""
    from subtomo.simulate.tiltseries import image_deformation
    from subtomo.tomo.alignment import frame_transform
    from subtomo.tomo.deformation import deformation_of
    from subtomo.tomo.particles import particle_positions_px

    tps, ttset, _ = load(folder / "truth", folder)
    ps, tset, _ = load(star_dir, folder)
    truth, ts = ttset["TS_01"], tset["TS_01"]
    p = particle_positions_px(tps, truth, np.arange(len(tps)))[:, 0].numpy()
    q = particle_positions_px(ps, ts, np.arange(len(ps)))[:, 0].numpy()
    to_refined = frame_transform(p, q, scaling=True)
    w, h = truth.image_size_px
    z = truth.tomo_size_px[2]
    grid = np.stack(np.meshgrid(np.linspace(0.15 * w, 0.85 * w, 9),
                                np.linspace(0.15 * h, 0.85 * h, 9),
                                [0.3 * z, 0.5 * z, 0.7 * z], indexing="ij"), -1).reshape(-1, 3)
    coeffs = torch.from_numpy(np.load(folder / "truth" / "deformations.npz")["TS_01"])
    xt = truth.project(torch.from_numpy(grid))
    # the fields are defined on the images: every held-out point lands inside every tilt
    assert bool(((xt >= 0) & (xt <= torch.tensor([w, h], dtype=xt.dtype))).all())
    xt = xt + image_deformation(coeffs, xt, truth.image_size_px)
    xr = ts.project(torch.from_numpy(to_refined(grid)))
    d = deformation_of(ts)
    xr = d.apply(xr) if d is not None else xr
    return float((xr - xt).norm(dim=-1).pow(2).mean().sqrt())


def resolution(folder: Path, star_dir: Path, device: str) -> tuple[float, float]:
    """FSC-0.5 against the true map and half-map FSC-0.143 of reconstruct-particle (Å)."""
    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.io.mrc import read_mrc
    from subtomo.tomo.reconstruct_particle import reconstruct_particle

    ps, tset, motion = load(star_dir, folder)
    truth_map = torch.from_numpy(read_mrc(folder / "truth" / "class001.mrc")[0])
    box = truth_map.shape[0]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        rec = reconstruct_particle(ps, tset, box=box, motion=motion, device=device,
                                   progress=False)
    finally:
        os.chdir(cwd)
    return resolution_at(fsc(rec.map, truth_map), box, 10.0, 0.5), rec.resolution_A


def bench_alignment(device: str, lines: list[str], summary: dict) -> None:
    folder = project("alignment")
    opt = reference(folder, device)
    rows = ["| run | rms error, seen / all (px) | FSC-0.5 vs truth (Å) | half-map FSC-0.143 (Å) "
            "| wall (s) | CPU (s) | peak RSS (MiB) |", "|---|---|---|---|---|---|---|"]
    res_true = resolution(folder, folder / "truth", device)
    res_given = resolution(folder, folder, device)
    rows.append(f"| true geometry | 0 | {res_true[0]:.2f} | {res_true[1]:.2f} | | | |")
    rows.append(f"| given geometry | {_pair(rms_error(folder, folder))} | {res_given[0]:.2f} | "
                f"{res_given[1]:.2f} | | | |")
    for round_ in (1, 2):
        name = f"align{round_}"
        out, fig = align(folder, name, opt, device)
        err = rms_error(folder, out)
        res = resolution(folder, out, device)
        rows.append(f"| round {round_} | {_pair(err)} | {res[0]:.2f} | {res[1]:.2f} | "
                    f"{fig['wall_s']:.1f} | {fig['cpu_s']:.1f} | {fig['peak_MiB']:.0f} |")
        summary[name] = {"error_px": err, "fsc05_A": res[0], "fsc0143_A": res[1], **fig}
        opt = reference(folder, device, f"{name}/optimisation_set.star", f"ref{round_}")
    summary["true_fsc05_A"], summary["given_fsc05_A"] = res_true[0], res_given[0]
    lines += ["### Alignment (150 particles × 41 tilts, shifts σ 1.5 px, angles σ 0.4°, "
              "positions σ 1 px; `--b 96 --r 8`, references from `reconstruct-particle` of "
              "the previous geometry)", "", *rows, ""]


def bench_rounds(device: str, lines: list[str], summary: dict) -> None:
    """``--rounds 1, 2, 3`` from the references of the given geometry, against the ceiling:
    one round against the true map (and against references reconstructed with the true
    geometry), on the alignment project and on one with twice its per-tilt errors."""
    rows = ["| project | run | rms error, seen / all (px) | reference origin removed, common / "
            "per half (px) | wall (s) | CPU (s) |", "|---|---|---|---|---|---|"]
    for kind, radius in (("alignment", "8"), ("large", "16")):
        folder = project(kind)
        opt = reference(folder, device)
        maps = {"true_map": ("truth/class001.mrc",) * 2,
                "true_map_data_fsc": ("truth/class001.mrc",) * 2 + ("ref_true/fsc.star",),
                "true_geometry": tuple(f"ref_true/{f}" for f in ("half1.mrc", "half2.mrc",
                                                                 "fsc.star"))}
        reference(folder, device, "truth/optimisation_set.star", "ref_true")
        for name, files in maps.items():  # the given geometry with other references
            labels = ("Map1File", "Map2File", "FscFile")[:len(files)]
            (folder / f"{name}.star").write_text(
                "data_\n\n_rlnTomoParticlesFile particles.star\n_rlnTomoTomogramsFile "
                "tomograms.star\n" + "".join(f"_rlnTomoReference{label} {file}\n"
                                             for label, file in zip(labels, files, strict=True)))
        given = rms_error(folder, folder)
        rows.append(f"| {kind} | given geometry | {_pair(given)} | "
                    f"{_pair(origin_free_error(folder, folder))} | | |")
        runs = [(f"`--rounds {n}`", f"rounds{n}", opt, ("--rounds", str(n))) for n in (1, 2, 3)]
        runs += [("true map (the ceiling)", "true_map", folder / "true_map.star", ()),
                 ("true map, weighted by the FSC of the true-geometry half maps",
                  "true_map_data_fsc", folder / "true_map_data_fsc.star", ()),
                 ("references from the true geometry", "true_geometry",
                  folder / "true_geometry.star", ())]
        for label, name, source, extra in runs:
            out, fig = align(folder, name, source, device, "--r", radius, *extra)
            err, free = rms_error(folder, out), origin_free_error(folder, out)
            rows.append(f"| {kind} | {label} | {_pair(err)} | {_pair(free)} | "
                        f"{fig['wall_s']:.1f} | {fig['cpu_s']:.1f} |")
            summary[f"{kind}_{name}"] = {"error_px": err, "origin_free_px": free, **fig}
    lines += ["### Rounds (`--rounds N`: each round after the first against half maps "
              "reconstructed with the previous round's geometry; `--b 96`, `--r 8`, `--r 16` "
              "on the project with per-tilt shifts σ 3 px and angles σ 0.8°)", "", *rows, "",
              "Ceiling runs are one round. Each run includes its reconstructions. The "
              "true map weighs every shell by 1 (its halves agree to Nyquist); weighted as "
              "references from these data must be (SNR = 2 FSC / (1 + FSC) of the true-geometry "
              "half maps, zero past FSC 0.143), it reaches what those references reach: "
              "the data's limit.", ""]


def bench_scaling(device: str, lines: list[str], summary: dict) -> None:
    from subtomo.io.star import read_particles, write_particles

    folder = project("alignment")
    opt = reference(folder, device)
    ps = read_particles(folder / "particles.star")
    rows = ["| particles | wall (s) | CPU (s) | CPU per particle (s) | peak RSS (MiB) |",
            "|---|---|---|---|---|"]
    for n in (50, 100, 150):
        star = folder / f"particles_{n}.star"
        write_particles(ps.subset(np.arange(n)), star, "relion5")
        out = f"scale{n}"
        shutil.rmtree(folder / out, ignore_errors=True)
        fig = subtomo(["tomo-align", "--i", str(opt.relative_to(folder)), "--p", star.name,
                       "--b", "96", "--r", "8", "--rounds", "1", "--j", "2", "--no_reconstruct",
                       "--o", out],
                      folder, device)
        rows.append(f"| {n} | {fig['wall_s']:.1f} | {fig['cpu_s']:.1f} | "
                    f"{fig['cpu_s'] / n:.3f} | {fig['peak_MiB']:.0f} |")
        summary[f"scale{n}"] = fig
    lines += ["### Time against the number of particles (no motion, `--b 96`)", "", *rows, ""]


MOTION_RUNS = (("static", (), "without `--motion`"),
               ("motion", ("--motion",), "`--motion`"),
               ("motion_relion", ("--motion", "--s_vel", "0.5"),
                "`--motion --s_vel 0.5` (RELION's default)"),
               ("true_motion", ("--mot", "truth/motion.star"),
                "without `--motion`, the true motion given (the floor)"))


def _motion_rows(kind: str, device: str, summary: dict) -> list[str]:
    """The rows of one motion generator: the truth without its motion, the given geometry,
    then ``--rounds 2`` from references of the given geometry without and with ``--motion``."""
    from subtomo.io.tomograms import read_motion

    folder = project(PROJECTS_MOTION[kind])
    truth_motion = np.stack(list(read_motion(folder / "truth" / "motion.star").values())) / 10.0
    length = np.sqrt((truth_motion ** 2).sum(-1))
    rms, truth = np.sqrt((length ** 2).mean()), folder / "truth"
    rows = [f"| {kind} | true geometry, motion left out (motion: rms {rms:.2f} px, largest "
            f"{length.max():.2f} px) | {_pair(rms_error(folder, truth, motion=False))} | "
            f"{_pair(origin_free_error(folder, truth, motion=False))} | "
            f"{_pair(error_by_tilt_sign(folder, truth, motion=False))} | | |",
            f"| {kind} | given geometry | {_pair(rms_error(folder, folder))} | "
            f"{_pair(origin_free_error(folder, folder))} | | | |"]
    opt = reference(folder, device)
    for name, extra, label in MOTION_RUNS:
        out, fig = align(folder, f"rounds2_{name}", opt, device, "--rounds", "2", *extra)
        err, free = rms_error(folder, out), origin_free_error(folder, out)
        sign = error_by_tilt_sign(folder, out)
        rows.append(f"| {kind} | `--rounds 2`, {label} | {_pair(err)} | {_pair(free)} | "
                    f"{_pair(sign)} | {fig['wall_s']:.1f} | {fig['cpu_s']:.1f} |")
        summary[f"{kind}_{name}"] = {"error_px": err, "origin_free_px": free,
                                     "negative_positive_px": sign, **fig}
    static = summary[f"{kind}_static"]["origin_free_px"][0]
    summary[f"{kind}_ratio"] = [summary[f"{kind}_{name}"]["origin_free_px"][0] / static
                                for name in ("motion", "motion_relion")]
    return rows


def bench_motion(device: str, lines: list[str], summary: dict) -> None:
    """Each motion generator of the simulator (:mod:`subtomo.simulate.motion`): ``--rounds 2``
    from references of the given geometry, without and with ``--motion``."""
    rows = ["| motion | run | rms error, seen / all (px) | reference origin removed, common / "
            "per half (px) | negative / positive tilts (px) | wall (s) | CPU (s) |",
            "|---|---|---|---|---|---|---|"]
    for kind in PROJECTS_MOTION:
        rows += _motion_rows(kind, device, summary)
    ratios = ", ".join(f"{kind} {summary[f'{kind}_ratio'][0]:.2f} "
                       f"({summary[f'{kind}_ratio'][1]:.2f})" for kind in PROJECTS_MOTION)
    lines += ["### Motion (up to 1.5 px, accumulated in dose order, per exposure step: `gp` a "
              "smooth random field with covariance ≈ exp(−d²/ℓ²), ℓ = 150 px, the prior's "
              "shape; `gradient` a random rigid translation plus a random 3D linear gradient, "
              "half the translation at the field's edge; `short` a smooth random field of "
              "Gaussian bumps, ℓ = 64 px, two particle boxes; plus the per-tilt errors above)",
              "", *rows, "",
              "Error with `--motion` / without (reference origin removed, common; in brackets "
              f"with RELION's `--s_vel 0.5`): {ratios}; the bar is 0.8. "
              "\"all\" adds the pairs whose `--b 96` crop leaves the image: no data there, only "
              "the prior. Tilt signs: the tilt order is 0°, +3°, +6°, −3°, −6°, +9°, …", ""]


def bench_deformation(device: str, lines: list[str], summary: dict) -> None:
    """Round 1 without a deformation model (references from the given geometry), then round 2
    against the round-1 references with each model (deformations, like motion, belong in the
    last rounds)."""
    rows = ["| truth | run | rms error, seen / all (px) | held-out error (px) | wall (s) | "
            "CPU (s) |", "|---|---|---|---|---|---|"]
    models = {
        "cosine": (("Fourier 5×6 per tilt", ("--def_model", "Fourier", "--def_w", "5",
                                             "--def_h", "6")),
                   ("spline 5×5 per tilt", ("--def_model", "spline", "--def_w", "5",
                                            "--def_h", "5")),
                   ("spline 3×3 per tilt (RELION's grid)", ("--def_model", "spline")),
                   ("spline 5×5 per tilt, `--def_reg 0` (RELION's default)",
                    ("--def_model", "spline", "--def_w", "5", "--def_h", "5", "--def_reg",
                     "0"))),
        "linear": (("linear per tilt", ("--def_model", "linear")),),
    }
    for kind, runs in models.items():
        folder = project(kind)
        out, fig = align(folder, "def_round1", reference(folder, device), device)
        rows.append(f"| {kind} | round 1, no deformation model | {_pair(rms_error(folder, out))}"
                    f" | {held_out_error(folder, out):.3f} | {fig['wall_s']:.1f} | "
                    f"{fig['cpu_s']:.1f} |")
        opt = reference(folder, device, "def_round1/optimisation_set.star", "ref_def1")
        for index, (label, extra) in enumerate((("no deformation model", ()), *runs)):
            options = ("--deformation", "--per_frame_deformation", *extra) if extra else ()
            name = f"def2_{index}"
            out, fig = align(folder, name, opt, device, *options)
            err, held = rms_error(folder, out), held_out_error(folder, out)
            rows.append(f"| {kind} | round 2, {label} | {_pair(err)} | {held:.3f} | "
                        f"{fig['wall_s']:.1f} | {fig['cpu_s']:.1f} |")
            summary[f"{kind}_{name}"] = {"error_px": err, "held_out_px": held, **fig}
    lines += ["### Deformations (per-tilt fields of up to 4 px: the simulator's cosine fields "
              "and RELION's linear model; held-out: a 9 × 9 × 3 grid of points over 70 % of "
              "the image and the middle 40 % of the thickness)", "", *rows, "",
              "Each model runs with its default `--def_reg` unless the row says otherwise. With "
              "per-tilt fields and free particle positions, a smooth warp of the positions "
              "that the fields undo is nearly invisible in the data; without a prior (RELION's "
              "default `--def_reg 0`) the positions drift along it (see "
              "`subtomo.tomo.deformation`).", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated: alignment,rounds,"
                        "scaling,motion,deformation")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    summary: dict = {}
    parts = (("alignment", bench_alignment), ("rounds", bench_rounds), ("scaling", bench_scaling),
             ("motion", bench_motion), ("deformation", bench_deformation))
    for name, fn in parts:
        if name not in skip:  # each part's table is kept, so parts can be rerun alone
            lines: list[str] = []
            load = os.getloadavg()[1]
            fn(args.device, lines, summary)
            lines += [f"_Part run at commit {commit()}; 5-minute load average {load:.1f} at "
                      f"the start of this part; {machine_load()}._", ""]
            print("\n".join(lines), flush=True)
            (DATA / f"{args.device}_{name}.md").write_text("\n".join(lines))
            (DATA / f"summary_{args.device}_{name}.json").write_text(
                json.dumps(summary, indent=1))
    lines = [(DATA / f"{args.device}_{name}.md").read_text() for name, _ in parts
             if (DATA / f"{args.device}_{name}.md").exists()]
    lines.append("Each run is `subtomo tomo-align` in its own process (imports, reading "
                 "the tilt series and the CC maps included; peak RSS of that process).")
    update_section(f"Tilt-series refinement, tomo-align ({args.device})", "\n".join(lines))


if __name__ == "__main__":
    main()
