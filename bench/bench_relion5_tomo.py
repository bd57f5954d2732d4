"""The tilt-series half beside RELION 5 on the same simulated projects (issue 25).

RELION 5's tomography programs are found through ``RELION5_BIN`` (``bench/relion5/build.sh``
builds them; never PATH, where RELION 3.1 may be). Each program runs as its own process under
``/usr/bin/time`` (CPU time and peak memory of that process alone), on the same cores, with its
documented defaults. Rows so far:

- ``reconstruct-particle`` vs ``relion_tomo_reconstruct_particle`` (true geometry), with RELION
  5's default masks on both sides and with none: FSC 0.5 of the merged map against the truth.
  This row is also RELION refereeing the simulator: a convention only our code shared would
  show as a worse RELION map.
- ``tomo-align`` vs ``relion_tomo_align`` (alignment only, same rounds) on the standard
  project with per-tilt errors (shifts σ 1.5 px, angles σ 0.4°, positions σ 1 px): one round
  each against the same references (ours, ``reconstruct-particle`` with the given geometry),
  then two: ``--rounds 2`` against RELION's own second round (``relion_tomo_reconstruct_
  particle`` of its first round's geometry, then ``relion_tomo_align`` again). Scored by the
  rms error of the projected positions against the truth with the references' origin removed
  (``bench_tomo_align.origin_free_error``).
- the same, one round each, with motion estimation (``--motion``; each program's defaults,
  and RELION also with our ``--s_vel 0.3``) on projects with motion of up to 1.5 px
  (``gradient`` and ``gp``, :mod:`subtomo.simulate.motion`) besides the per-tilt errors, and
  with per-tilt deformation models (``--deformation --per_frame_deformation``: ``--def_model
  linear`` on a project with RELION's linear deformations of up to 4 px, ``spline`` with
  RELION's 3 × 3 grid on one with the simulator's smooth cosine fields): the same
  score, each particle's trajectory (RELION's ``motion.star``) and the deformations (its
  tilt-series STAR files) included, beside the runs without the model (``--skip
  motion,deformation``).
- ``extract`` (3D subtomograms with CTF volumes; and ``--premultiplied``, RELION 5's 3D
  pseudo-subtomograms) then ``reconstruct --ctf`` vs
  ``relion_tomo_subtomo`` (3D pseudo-subtomograms: CTF-premultiplied data, weights Σ CTF² above
  the multiplicity) then our ``reconstruct --ctf`` of them, true geometry of the
  standard project: FSC 0.5 against the truth; CPU time of the extraction and the
  reconstruction together. Where ``relion_refine`` is built too (``build.sh`` makes it), each
  side's subtomograms are also read by RELION 5's own reader of them: ``relion_refine
  --skip_align`` for one iteration at the true poses (:data:`REFINE_ONCE`), its map scored
  the same way.
- ``reconstruct-tomogram`` vs ``relion_tomo_reconstruct_tomogram`` (true geometry of the
  standard project, bin 4 and bin 8, each program's defaults and its best options found):
  Pearson correlation with the true density (the true map placed at each true pose,
  :mod:`subtomo.simulate.truth_tomogram`) within the particle regions, and the FSC of the same
  masked volumes.

Projects: ``bench/.data/relion5/<name>`` simulated by ``subtomo simulate tiltseries``
(150 particles × 41 tilts, box 32 at 10 Å, noise σ 20; a thick one of 150 nm; an SNR 4× lower).

Run: ``RELION5_BIN=/opt/relion5/bin .venv/bin/python bench/bench_relion5_tomo.py [--n 150]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results import machine_load, run_measured, update_section  # noqa: E402

DATA = Path(__file__).parent / ".data" / "relion5"
PROJECTS = {  # name: (noise σ, thickness px, description)
    "standard": (20.0, 64, "σ 20, 64 px (64 nm) thick"),
    "thick": (20.0, 150, "σ 20, 150 px (150 nm) thick"),
    "low SNR": (40.0, 64, "σ 40 (SNR ÷ 4), 64 px thick"),
}
BOX, APIX = 32, 10.0


def _relion5() -> Path:
    folder = os.environ.get("RELION5_BIN")
    if not folder or not (Path(folder) / "relion_tomo_reconstruct_particle").is_file():
        sys.exit("set RELION5_BIN to the folder of RELION 5's relion_tomo_* programs "
                 "(bench/relion5/build.sh)")
    return Path(folder)


def simulate(name: str, n: int) -> Path:
    """The project folder (simulated once per configuration)."""
    sigma, thickness, _ = PROJECTS[name]
    out = DATA / f"{name.replace(' ', '_')}_{n}"
    if (out / "truth" / "class001.mrc").is_file():
        return out
    done, *_ = run_measured(
        [sys.executable, "-m", "subtomo", "simulate", "tiltseries", "--o", str(out), "--n",
         str(n), "--size", "640", "640", "--thickness", str(thickness), "--angpix", str(APIX),
         "--box", str(BOX), "--noise", str(sigma), "--tilt_step", "3", "--seed", "5"],
        capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    return out


def fsc05(path: Path, truth: Path) -> tuple[float, float]:
    """FSC 0.5 resolution (Å) against the truth, and the mean FSC over the shells from the
    first to Nyquist (a figure that still tells maps apart when both reach Nyquist)."""
    import torch

    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.io.mrc import read_mrc

    a, b = (torch.from_numpy(read_mrc(p)[0]).float() for p in (path, truth))
    curve = fsc(a, b)
    return resolution_at(curve, BOX, APIX, 0.5), float(curve[1:BOX // 2 + 1].mean())


def reconstruct_particle_row(project: Path, relion5: Path) -> dict:
    """Both programs on the true geometry, 2 threads each, with RELION 5's defaults (2D circle
    crop, maps tapered by 10 px) and without its masks (ours plain; RELION's untapered map is
    the ``merged_full.mrc`` it writes when ``--crop`` < ``--b``, the circle crop off)."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    opt = str(project / "truth" / "optimisation_set.star")  # names files as simulated: from here
    truth = project / "truth" / "class001.mrc"
    out = {}
    for label, ours_extra, theirs_extra, theirs_map in (
            ("RELION 5's masks (2D circle crop, 3D taper 10 px)", ["--circle_crop", "--taper",
                                                                  "10"], [], "merged.mrc"),
            ("no masks", [], ["--no_circle_crop", "--crop", str(BOX - 2)], "merged_full.mrc")):
        for folder in ("bench_ours", "bench_relion5"):
            shutil.rmtree(project / folder, ignore_errors=True)
        ours, wall, cpu, peak = run_measured(
            [sys.executable, "-m", "subtomo", "reconstruct-particle", "--i", opt, "--b",
             str(BOX), "--j", "2", *ours_extra, "--o", str(project / "bench_ours")],
            capture_output=True, text=True)
        if ours.returncode:
            sys.exit(ours.stderr)
        theirs, r_wall, r_cpu, r_peak = run_measured(
            [str(relion5 / "relion_tomo_reconstruct_particle"), "--i", opt, "--b", str(BOX),
             "--j", "2", *theirs_extra, "--o", str(project / "bench_relion5") + "/"], env=env,
            capture_output=True, text=True)
        if theirs.returncode:
            sys.exit(theirs.stdout[-2000:] + theirs.stderr[-2000:])
        out[label] = {"ours": (fsc05(project / "bench_ours" / "merged.mrc", truth), wall, cpu,
                               peak),
                      "relion5": (fsc05(project / "bench_relion5" / theirs_map, truth), r_wall,
                                  r_cpu, r_peak)}
    return out


def _env() -> dict:
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def _checked(argv: list[str], **kw) -> tuple[float, float, float]:
    done, wall, cpu, peak = run_measured(argv, capture_output=True, text=True, **kw)
    if done.returncode:
        sys.exit(done.stdout[-2000:] + done.stderr[-2000:])
    return wall, cpu, peak


def tomo_align_rows(relion5: Path, n: int) -> list[str]:
    """Both programs' alignment, one and two rounds, on a project with per-tilt errors."""
    from bench_tomo_align import origin_free_error, rms_error

    project = DATA / f"errors_{n}"
    if not (project / "truth" / "class001.mrc").is_file():
        _checked([sys.executable, "-m", "subtomo", "simulate", "tiltseries", "--o", str(project),
                  "--n", str(n), "--size", "640", "640", "--thickness", "64", "--angpix",
                  str(APIX), "--box", str(BOX), "--noise", "20", "--tilt_step", "3",
                  "--shift-error", "1.5", "--angle-error", "0.4", "--position-error", "1",
                  "--seed", "6"])
    ref = project / "ref_given"
    if not (ref / "fsc.star").is_file():
        _checked([sys.executable, "-m", "subtomo", "reconstruct-particle", "--i",
                  str(project / "optimisation_set.star"), "--b", str(BOX), "--j", "2", "--o",
                  str(ref)])
    given = ["--p", str(project / "particles.star"), "--t", str(project / "tomograms.star")]
    refs = ["--ref1", str(ref / "half1.mrc"), "--ref2", str(ref / "half2.mrc"), "--fsc",
            str(ref / "fsc.star")]
    common = ["--b", "96", "--r", "8", "--j", "2"]
    runs = {}
    for rounds in (1, 2):  # ours
        out = project / f"ours_rounds{rounds}"
        shutil.rmtree(out, ignore_errors=True)
        runs[f"ours{rounds}"] = (out, _checked(
            [sys.executable, "-m", "subtomo", "tomo-align", *given, *refs, *common, "--rounds",
             str(rounds), "--no_reconstruct", "--o", str(out)]))
    for name in ("relion_r1", "relion_ref1", "relion_r2"):
        shutil.rmtree(project / name, ignore_errors=True)
    first = _checked([str(relion5 / "relion_tomo_align"), *given, *refs, *common, "--o",
                      f"{project / 'relion_r1'}/"], env=_env())
    rebuild = _checked([str(relion5 / "relion_tomo_reconstruct_particle"), "--i",
                        str(project / "relion_r1" / "optimisation_set.star"), "--b", str(BOX),
                        "--j", "2", "--o", f"{project / 'relion_ref1'}/"], env=_env())
    second = _checked([str(relion5 / "relion_tomo_align"), "--p",
                       str(project / "relion_r1" / "particles.star"), "--t",
                       str(project / "relion_r1" / "tomograms.star"), "--ref1",
                       str(project / "relion_ref1" / "half1.mrc"), "--ref2",
                       str(project / "relion_ref1" / "half2.mrc"), *common, "--o",
                       f"{project / 'relion_r2'}/"], env=_env())
    runs["relion1"] = (project / "relion_r1", first)
    runs["relion2"] = (project / "relion_r2", (first[0] + rebuild[0] + second[0],
                                                first[1] + rebuild[1] + second[1],
                                                max(first[2], rebuild[2], second[2])))
    rows = []
    given_error = origin_free_error(project, project)[0]
    for rounds in (1, 2):
        (ours, (wa, ca, pa)), (theirs, (wb, cb, pb)) = runs[f"ours{rounds}"], \
            runs[f"relion{rounds}"]
        (a, a_half), (b, b_half) = (origin_free_error(project, d) for d in (ours, theirs))
        ra, rb = (rms_error(project, d)[0] for d in (ours, theirs))
        rows.append(f"| σ 20, 64 px thick, per-tilt errors ({given_error:.2f} px) | tomo-align, "
                    f"{rounds} round{'s' if rounds > 1 else ''}: projected-position error, "
                    "origin removed / one origin per half set (raw) | "
                    f"{a:.3f} / {a_half:.3f} px ({ra:.3f}) | "
                    f"{b:.3f} / {b_half:.3f} px ({rb:.3f}) | "
                    f"{100 * (a / b - 1):+.1f} % | {ca:.1f} / {cb:.1f} | {wa:.1f} / {wb:.1f} | "
                    f"{pa:.0f} / {pb:.0f} |")
    return rows


MODEL_PROJECTS = {  # name: simulator options beyond the per-tilt errors, description
    "motion_gradient": (dict(motion_px=1.5, motion_kind="gradient", seed=16),
                        "gradient motion ≤ 1.5 px"),
    "motion_gp": (dict(motion_px=1.5, motion_kind="gp", motion_scale_px=150.0, seed=12),
                  "gp motion ≤ 1.5 px (ℓ 150 px)"),
    "deformation_linear": (dict(deformation_px=4.0, deformation_model="linear", seed=14),
                           "linear deformations ≤ 4 px per tilt"),
    "deformation_cosine": (dict(deformation_px=4.0, seed=13),
                           "smooth (cosine) deformations ≤ 4 px per tilt"),
}
DEFORMATION_RUNS = (  # project, the model's options (both programs)
    ("deformation_linear", ["--def_model", "linear"]),
    ("deformation_cosine", ["--def_model", "spline"]),  # RELION's 3 × 3 grid
)


def model_project(name: str, n: int) -> tuple[Path, Path]:
    """A project of ``MODEL_PROJECTS`` (the per-tilt errors of the alignment rows plus motion
    or deformations; :func:`subtomo.simulate.tiltseries.simulate_tiltseries`, as ``subtomo
    simulate tiltseries`` with its defaults) and the references of its given geometry."""
    from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

    project = DATA / f"{name}_{n}"
    if not (project / "simulation.json").is_file():
        shutil.rmtree(project, ignore_errors=True)
        simulate_tiltseries(project, TiltSeriesConfig(
            n_particles=n, image_size_px=(640, 640), thickness_px=64, pixel_size_A=APIX,
            box_px=BOX, tilt_step_deg=3.0, defocus_um=(3.0, 4.0), noise_sigma=20.0,
            shift_error_px=1.5, angle_error_deg=0.4, position_error_px=1.0,
            **MODEL_PROJECTS[name][0]), progress=False)
    ref = project / "ref_given"
    if not (ref / "fsc.star").is_file():
        _checked([sys.executable, "-m", "subtomo", "reconstruct-particle", "--i",
                  str(project / "optimisation_set.star"), "--b", str(BOX), "--j", "2", "--o",
                  str(ref)])
    return project, ref


def _align_both(relion5: Path, project: Path, ref: Path, name: str, ours_extra: list[str],
                theirs_extra: list[str] | None) -> dict:
    """One round of ``tomo-align`` and of ``relion_tomo_align`` (``theirs_extra`` None: not
    run) against the same references: output folder and (wall s, CPU s, peak MiB) of each."""
    given = ["--p", str(project / "particles.star"), "--t", str(project / "tomograms.star")]
    refs = ["--ref1", str(ref / "half1.mrc"), "--ref2", str(ref / "half2.mrc"), "--fsc",
            str(ref / "fsc.star")]
    common = ["--b", "96", "--r", "8", "--j", "2"]
    runs = {}
    if ours_extra is not None:
        out = project / f"ours_{name}"
        shutil.rmtree(out, ignore_errors=True)
        runs["ours"] = (out, _checked([sys.executable, "-m", "subtomo", "tomo-align", *given,
                                       *refs, *common, "--rounds", "1", "--no_reconstruct",
                                       *ours_extra, "--o", str(out)]))
    if theirs_extra is not None:
        out = project / f"relion_{name}"
        shutil.rmtree(out, ignore_errors=True)
        runs["relion"] = (out, _checked([str(relion5 / "relion_tomo_align"), *given, *refs,
                                         *common, *theirs_extra, "--o", f"{out}/"], env=_env()))
    return runs


def _model_row(project_label: str, label: str, ours: tuple, theirs: tuple) -> str:
    """A table row from ``((figure, cell text), (wall s, CPU s, peak MiB))`` of each side."""
    ((a, cell_a), (wa, ca, pa)), ((b, cell_b), (wb, cb, pb)) = ours, theirs
    return (f"| {project_label} | {label} | {cell_a} | {cell_b} | {100 * (a / b - 1):+.1f} % | "
            f"{ca:.1f} / {cb:.1f} | {wa:.1f} / {wb:.1f} | {pa:.0f} / {pb:.0f} |")


MOTION_RUNS = (  # label, ours' options, RELION's options (ours None: the run above reused)
    ("no motion estimation", [], []),
    ("`--motion`, each program's defaults (ours `--s_vel 0.3`, RELION 0.5)", ["--motion"],
     ["--motion"]),
    ("`--motion --s_vel 0.3` both (ours: the run above)", None, ["--motion", "--s_vel", "0.3"]),
)


def motion_rows(relion5: Path, n: int) -> list[str]:
    """One round of both programs without and with motion estimation on projects with motion
    and per-tilt errors: projected-position error against the truth, each particle's true and
    estimated trajectory included, the references' origin removed (``origin_free_error``), and
    in brackets the ratio to the same program's run without motion estimation."""
    from bench_tomo_align import origin_free_error

    rows = []
    for name in ("motion_gradient", "motion_gp"):
        project, ref = model_project(name, n)
        label = (f"{MODEL_PROJECTS[name][1]} + per-tilt errors "
                 f"({origin_free_error(project, project)[0]:.2f} px)")
        static: dict = {}
        ours = None
        for index, (run_label, ours_extra, theirs_extra) in enumerate(MOTION_RUNS):
            runs = _align_both(relion5, project, ref, f"motion{index}", ours_extra, theirs_extra)
            ours = runs.get("ours", ours)
            cells = []
            for side, (folder, figures) in (("ours", ours), ("relion", runs["relion"])):
                err, half = origin_free_error(project, folder)
                static.setdefault(side, err)
                cells.append(((err, f"{err:.3f} / {half:.3f} px (× {err / static[side]:.2f})"),
                              figures))
            rows.append(_model_row(
                label, f"tomo-align 1 round, {run_label}: projected-position error with the "
                "trajectories, origin removed / one per half set (× the run without motion)",
                *cells))
    return rows


def deformation_rows(relion5: Path, n: int) -> list[str]:
    """One round of both programs without and with a per-tilt deformation model
    (``--deformation --per_frame_deformation`` and :data:`DEFORMATION_RUNS`' options, each
    program's default ``--def_reg``) on projects with per-tilt deformations and per-tilt
    errors: projected-position error at the particles, the true and estimated deformations
    included, origin removed; in brackets the held-out error (``bench_tomo_align.
    held_out_error``: a grid of points between the particles, in the frame of the refined
    positions)."""
    from bench_tomo_align import held_out_error, origin_free_error

    rows = []
    for name, options in DEFORMATION_RUNS:
        project, ref = model_project(name, n)
        label = (f"{MODEL_PROJECTS[name][1]} + per-tilt errors "
                 f"({origin_free_error(project, project)[0]:.2f} px)")
        model = ["--deformation", *options, "--per_frame_deformation"]
        for index, (run_label, extra) in enumerate((("no deformation model", []),
                                                    ("`" + " ".join(model) + "`", model))):
            runs = _align_both(relion5, project, ref, f"deformation{index}", extra, extra)
            cells = []
            for folder, figures in (runs["ours"], runs["relion"]):
                err, half = origin_free_error(project, folder)
                cells.append(((err, f"{err:.3f} / {half:.3f} px "
                                    f"({held_out_error(project, folder):.3f})"), figures))
            rows.append(_model_row(label, f"tomo-align 1 round, {run_label}: projected-position "
                                   "error with the deformations, origin removed / one per half "
                                   "set (held-out points)", *cells))
    return rows


def subtomo_rows(relion5: Path, n: int) -> list[str]:
    """``extract`` (normalised subtomograms with CTF volumes, and ``--premultiplied``: RELION 5's
    pseudo-subtomograms) then ``reconstruct`` against ``relion_tomo_subtomo`` then our
    ``reconstruct`` of its pseudo-subtomograms (3D, box 32, no crop), on the true geometry."""
    project = simulate("standard", n)
    opt = str(project / "truth" / "optimisation_set.star")
    truth = project / "truth" / "class001.mrc"
    theirs = project / "bench_subtomo"
    shutil.rmtree(theirs, ignore_errors=True)
    b = _checked([str(relion5 / "relion_tomo_subtomo"), "--i", opt, "--b", str(BOX), "--j", "2",
                  "--o", f"{theirs}/"], env=_env())
    b2 = _checked([sys.executable, "-m", "subtomo", "reconstruct", "--i",
                   str(theirs / "particles.star"), "--ctf", "--o", str(theirs / "map.mrc")])
    rb, mb = fsc05(theirs / "map.mrc", truth)
    rows = []
    for label, extra in (("extract", []), ("extract --premultiplied", ["--premultiplied"])):
        ours = project / f"bench_{label.replace(' --', '_')}"
        shutil.rmtree(ours, ignore_errors=True)
        a = _checked([sys.executable, "-m", "subtomo", "extract", "--i", opt, "--b", str(BOX),
                      *extra, "--o", str(ours)])
        a2 = _checked([sys.executable, "-m", "subtomo", "reconstruct", "--i",
                       str(ours / "particles.star"), "--ctf", "--o", str(ours / "map.mrc")])
        ra, ma = fsc05(ours / "map.mrc", truth)
        if (relion5 / "relion_refine").is_file():
            rows.append(_refine_once_row(relion5, label, ours, theirs, truth, a, b))
        rows.append(
            f"| {PROJECTS['standard'][2]} | {label} then reconstruct vs relion_tomo_subtomo (3D) "
            "then our reconstruct of its pseudo-subtomograms, true geometry: FSC 0.5 vs truth "
            f"(mean FSC to Nyquist) | {ra:.2f} Å ({ma:.3f}) | {rb:.2f} Å ({mb:.3f}) | "
            f"{100 * (ra / rb - 1):+.1f} % ({ma - mb:+.3f}) | {a[1]:.1f} + {a2[1]:.1f} / "
            f"{b[1]:.1f} + {b2[1]:.1f} | {a[0] + a2[0]:.1f} / {b[0] + b2[0]:.1f} | "
            f"{max(a[2], a2[2]):.0f} / {max(b[2], b2[2]):.0f} |")
    return rows


REFINE_ONCE = ["--ini_high", "30", "--iter", "1", "--K", "1", "--skip_align", "--ctf",
               "--particle_diameter", "280", "--pad", "2", "--j", "2", "--tau2_fudge", "1",
               "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc", "--pool",
               "10"]  # one iteration at the given (true) poses: RELION's reading of the files


def _refine_once_row(relion5: Path, label: str, ours: Path, theirs: Path, truth: Path,
                     a: tuple, b: tuple) -> str:
    """``relion_refine`` (:data:`REFINE_ONCE`) on our extraction and on relion_tomo_subtomo's:
    FSC 0.5 and mean FSC of its map against the truth (CPU: extraction + relion_refine)."""
    maps = []
    for side in (ours, theirs):
        out = side / "relion_refine"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        figures = _checked([str(relion5 / "relion_refine"), "--i", str(side / "particles.star"),
                            "--o", str(out / "run"), "--ref", str(truth), *REFINE_ONCE],
                           env=_env())
        maps.append((fsc05(out / "run_it001_class001.mrc", truth), figures))
    ((ra, ma), c), ((rb, mb), d) = maps
    return (f"| {PROJECTS['standard'][2]} | {label} vs relion_tomo_subtomo (3D), each read by "
            "RELION 5's relion_refine (`--skip_align`, 1 iteration at the true poses): FSC 0.5 "
            f"vs truth (mean FSC to Nyquist) | {ra:.2f} Å ({ma:.3f}) | {rb:.2f} Å ({mb:.3f}) | "
            f"{100 * (ra / rb - 1):+.1f} % ({ma - mb:+.3f}) | {a[1]:.1f} + {c[1]:.1f} / "
            f"{b[1]:.1f} + {d[1]:.1f} | {a[0] + c[0]:.1f} / {b[0] + d[0]:.1f} | "
            f"{max(a[2], c[2]):.0f} / {max(b[2], d[2]):.0f} |")


TOMOGRAM_RUNS = (  # binning, label, our options, RELION's options (each program's best found)
    (4, "defaults", [], []),
    (4, "best options found (ours --filter sirt --sirt_iterations 50; RELION --Fc)",
     ["--filter", "sirt", "--sirt_iterations", "50"], ["--Fc"]),
    (8, "defaults", [], []),
    (8, "best options found (ours the defaults; RELION --Fc)", [], ["--Fc"]),
)


def tomogram_rows(relion5: Path, n: int) -> list[str]:
    """``reconstruct-tomogram`` vs ``relion_tomo_reconstruct_tomogram`` of the true geometry of
    the standard project at the same binning: Pearson correlation with the true density
    (:mod:`subtomo.simulate.truth_tomogram`, protein dark as in both tomograms) within the
    particle regions, FSC 0.5 and mean FSC of the same masked volumes."""
    import torch

    from subtomo.io.mrc import read_mrc
    from subtomo.simulate.truth_tomogram import particle_mask, tomogram_score, truth_tomogram

    project = simulate("standard", n)
    tomograms = str(project / "truth" / "tomograms.star")
    size = [str(v) for v in (640, 640, PROJECTS["standard"][1])]
    rows = []
    for binning, label, ours_extra, theirs_extra in TOMOGRAM_RUNS:
        truth = truth_tomogram(project / "truth", binning)
        mask = particle_mask(project / "truth", binning, tuple(truth.shape), BOX / 2)
        ours, theirs = project / "bench_tomogram_ours", project / "bench_tomogram_relion5"
        for folder in (ours, theirs):
            shutil.rmtree(folder, ignore_errors=True)
        wa, ca, pa = _checked([sys.executable, "-m", "subtomo", "reconstruct-tomogram", "--t",
                               tomograms, "--bin", str(binning), "--j", "2", *ours_extra, "--o",
                               str(ours)])
        wb, cb, pb = _checked([str(relion5 / "relion_tomo_reconstruct_tomogram"), "--t",
                               tomograms, "--bin", str(binning), "--w", size[0], "--h", size[1],
                               "--d", size[2], "--j", "2", *theirs_extra, "--o", f"{theirs}/"],
                              env=_env())
        (a, ra, ma), (b, rb, mb) = (tomogram_score(
            -torch.from_numpy(read_mrc(d / "tomograms" / "rec_TS_01.mrc")[0]).float(), truth,
            mask, APIX * binning, BOX * APIX) for d in (ours, theirs))
        rows.append(f"| {PROJECTS['standard'][2]} | reconstruct-tomogram, true geometry, bin "
                    f"{binning}, {label}: Pearson r vs the true density in the particle regions "
                    f"(mean FSC to Nyquist; FSC 0.5) | {a:.3f} ({ma:.3f}; {ra:.0f} Å) | "
                    f"{b:.3f} ({mb:.3f}; {rb:.0f} Å) | {a - b:+.3f} ({ma - mb:+.3f}) | "
                    f"{ca:.1f} / {cb:.1f} | {wa:.1f} / {wb:.1f} | {pa:.0f} / {pb:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--skip", default="",
                        help="comma-separated: reconstruct,align,motion,deformation,subtomo,"
                        "tomogram")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    relion5 = _relion5()
    build = (relion5.parent / "BUILD_INFO")
    lines = [f"RELION 5 ({build.read_text().splitlines()[0] if build.is_file() else 'unknown'},"
             " CPU build, `bench/relion5/build.sh`) and subtomo on the same simulated RELION 5 "
             f"projects: {args.n} particles × 41 tilts (±60°, 3°), box {BOX} at {APIX:g} Å; each "
             f"program its own process, 2 threads; {machine_load()}.", "",
             "| project | row | subtomo | RELION 5 | subtomo / RELION 5 | "
             "CPU s (subtomo / RELION 5) | wall s | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in PROJECTS if "reconstruct" not in skip else ():
        project = simulate(name, args.n)
        for label, row in reconstruct_particle_row(project, relion5).items():
            ((a, ma), wa, ca, pa), ((b, mb), wb, cb, pb) = row["ours"], row["relion5"]
            lines.append(f"| {PROJECTS[name][2]} | reconstruct-particle, true geometry, {label}: "
                         "FSC 0.5 vs truth (mean FSC to Nyquist) "
                         f"| {a:.2f} Å ({ma:.3f}) | {b:.2f} Å ({mb:.3f}) | "
                         f"{100 * (a / b - 1):+.1f} % ({ma - mb:+.3f}) | {ca:.1f} / "
                         f"{cb:.1f} | {wa:.1f} / {wb:.1f} | {pa:.0f} / {pb:.0f} |")
    if "align" not in skip:
        lines += tomo_align_rows(relion5, args.n)
    if "motion" not in skip:
        lines += motion_rows(relion5, args.n)
    if "deformation" not in skip:
        lines += deformation_rows(relion5, args.n)
    if "subtomo" not in skip:
        lines += subtomo_rows(relion5, args.n)
    if "tomogram" not in skip:
        lines += tomogram_rows(relion5, args.n)
    lines += ["", "Bar: subtomo's FSC 0.5 within 1 % of RELION 5's or better, and RELION 5 as the "
              "simulator's referee within 2 % of ours (tests/tomo/test_relion5.py). RELION 5's "
              "default maps carry two real-space masks (each 2D crop cut to a soft circle, the "
              "map tapered to the sphere); the rows compare like with like. Both maps reach "
              "Nyquist (20 Å) at FSC 0.5 on these projects, so the mean FSC against the truth "
              "over the shells up to Nyquist is given beside it. Our CPU time "
              "includes Python's start-up and imports (about 3 s here). tomo-align rows: both "
              "programs align against the same references in round 1; RELION's second round is "
              "relion_tomo_reconstruct_particle of its first round's geometry, then "
              "relion_tomo_align again (no FSC file: RELION's default weighting); ours is "
              "`--rounds 2` (references rebuilt inside the job, half sets co-registered). "
              "Motion and deformation rows: one round each against references of the given "
              "geometry, the score taking in each program's trajectories (motion.star) and "
              "deformations (tilt-series STAR files); (× r): error over the same program's "
              "without the model; the `--s_vel 0.3` row reuses our `--motion` run (0.3 is our "
              "default); held-out points: a 9 × 9 × 3 grid over 70 % of the image and the "
              "middle 40 % of the thickness, in the frame of each program's positions. "
              "extract rows: the RELION side is relion_tomo_subtomo's 3D pseudo-subtomograms, "
              "reconstructed by our reconstruct or read by RELION 5's relion_refine as the row "
              "says (the same program on both sides); CPU s are extraction + reconstruction. "
              "reconstruct-tomogram rows: "
              "the truth is the true map placed at each true pose, Fourier-cropped to the "
              "binned grid (voxel j at tomogram position bin × j, RELION's zero origin); the "
              "particle regions are spheres of the box radius (soft edge); defaults are each "
              "program's own but the binning (RELION's is 1, ours 8); RELION's weighting divides "
              "the back-projection by its back-projected PSF (Wiener, SNR 10), ours is the ramp "
              "filter (floored where the slices of the thin tomogram overlap); best options are "
              "the highest Pearson r among ramp, SIRT-like (30, 50, 80 iterations), CTF flip and "
              "Wiener (SNR 10) for ours, --Fc, --ctf (with and without --Fc), --SNR 1 and 100 and "
              "--no_weight for RELION. Our CPU time there: imports about 3 s (and most of the peak "
              "memory: 340 MiB after importing torch), then the Fourier crop of each full-size "
              "tilt (two 640² FFTs per tilt) and the back-projection (grid_sample and the count "
              "of the tilts that see each voxel, about equal)."]
    text = "\n".join(lines)
    print(text)
    update_section("RELION 5 side by side: tilt-series programs", text,
                   reduced=None if args.n == 150 else f"{args.n} particles")


if __name__ == "__main__":
    main()
