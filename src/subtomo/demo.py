"""The end-to-end demo on simulated data; it grows with every capability."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from subtomo import interop
from subtomo.demo_checks import Check, checks, demo_table, row
from subtomo.demo_series import run_series_demo
from subtomo.demo_tomo_align import run_tomo_align_demo
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.geometry.euler import angular_distance_deg
from subtomo.geometry.symmetry import symmetric_distance_deg
from subtomo.hetero.analysis import analyze
from subtomo.hetero.inputs import TrainOptions
from subtomo.hetero.inputs import read_inputs as read_training_inputs
from subtomo.hetero.select import select_particles
from subtomo.hetero.train import train
from subtomo.hetero.volumes import eval_vol
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import read_particles, write_particles
from subtomo.io.star_text import write_star
from subtomo.io.tomograms import read_inputs
from subtomo.maps.align_maps import align_maps
from subtomo.maps.mask import create_mask
from subtomo.maps.postprocess import postprocess
from subtomo.maps.symmetrize import symmetrize
from subtomo.refine.autorefine import RefineOptions, auto_refine
from subtomo.refine.classify import ClassifyOptions, classify
from subtomo.refine.initial_model import InitialModelOptions, initial_model
from subtomo.refine.reconstruct import reconstruct
from subtomo.selection import select_class
from subtomo.simulate.particles import random_particle_set
from subtomo.simulate.subtomograms import (
    SimulationConfig,
    simulate_subtomograms,
)
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms
from subtomo.tomo.pick_job import picks_to_particles
from subtomo.tomo.picking import (
    PickOptions,
    load_template,
    refine_picks,
    search_tomogram,
    threshold_picks,
    without_other_objects,
)
from subtomo.tomo.reconstruct_particle import reconstruct_particle

DEMO_FLAVOURS = ("relion5", "relion4", "relion31", "relion30", "warp")


def _centres_A(ps: ParticleSet) -> np.ndarray:
    """Particle centres (x, y, z) in Å in the tomogram frame: coordinate × px − origin."""
    ps = ps.with_pixel_coordinates()
    coords = ps.particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
    return coords * ps.coordinate_pixel_size_A()[:, None] - ps.tomogram_shifts_A()


def compare(truth: ParticleSet, other: ParticleSet) -> dict[str, float]:
    """Largest pose (deg) and centre (Å) differences between two views of the same particles."""
    angle = angular_distance_deg(truth.rotation_matrices(), other.rotation_matrices())
    shift = np.abs(truth.tomogram_shifts_A() - other.tomogram_shifts_A()).max()
    centre = np.abs(_centres_A(truth) - _centres_A(other)).max()
    return {"angle_deg": float(torch.max(angle)), "shift_A": float(shift),
            "centre_A": float(centre)}


@dataclass(frozen=True)
class DemoSize:
    """How big the simulated parts are: particles and iterations of each."""

    subtomograms: int  # C6 averaging part
    refine_iterations: int
    averaging_noise: float
    classification: int  # 3-class initial model → classification part
    initial_model: tuple[int, int, int, int, int]  # iter_ini, _inbetween, _final, batches
    classify_iterations: int
    classification_noise: float


# fewer particles at a lower noise level (the same signal per map), fewer iterations
QUICK = DemoSize(subtomograms=120, refine_iterations=8, averaging_noise=7.5, classification=150,
                 initial_model=(3, 6, 2, 50, 100), classify_iterations=12,
                 classification_noise=3.5)
FULL = DemoSize(subtomograms=300, refine_iterations=12, averaging_noise=12.0,
                classification=300, initial_model=(4, 8, 3, 60, 120), classify_iterations=16,
                classification_noise=5.0)


def run_demo(out_dir: str | Path = "demo_out", n: int = 300, seed: int = 0,
             n_subtomograms: int | None = None, n_classification: int | None = None,
             console: Console | None = None, full: bool = False, n_tiltseries: int = 40,
             n_hetero: int = 200) -> dict:
    """The whole demo: STAR interop; simulate → subset → reconstruct → auto-refine → mask →
    postprocess; de novo initial model → 3D classification → class selection; a tilt series →
    tomogram → extraction → auto-refine, and tomo-align; 2D stacks → refine → tomo-align →
    refine without re-extraction; heterogeneity VAE → latent analysis →
    maps → cluster selection. Returns the figures it prints, per part, and under ``"checks"``
    the checked ones against their bounds (:mod:`subtomo.demo_checks`). Sizes: :data:`QUICK` (a few
    minutes on two CPU cores) or, with ``full``, :data:`FULL`; ``n_subtomograms`` /
    ``n_classification`` override the particle counts (0 skips the part)."""
    console = console or Console(width=120)
    size = FULL if full else QUICK
    n_subtomograms = size.subtomograms if n_subtomograms is None else n_subtomograms
    n_classification = size.classification if n_classification is None else n_classification
    start, cpu = time.perf_counter(), time.process_time()
    results = {"interop": run_interop_demo(Path(out_dir) / "interop", n, seed, console)}
    if n_subtomograms:
        results["averaging"] = run_averaging_demo(Path(out_dir) / "averaging", n_subtomograms,
                                                  seed, console, size.refine_iterations,
                                                  size.averaging_noise)
    if n_classification:
        results["classification"] = run_classification_demo(
            Path(out_dir) / "classification", n_classification, seed, console, size)
    if n_tiltseries:
        results["tiltseries"] = run_tiltseries_demo(Path(out_dir) / "tiltseries", n_tiltseries,
                                                    seed, console)
        results["tomo_align"] = run_tomo_align_demo(Path(out_dir) / "tomo_align", n_tiltseries,
                                                    seed, console)
        results["series"] = run_series_demo(Path(out_dir) / "series", n_tiltseries, seed,
                                            console)
    if n_hetero:
        results["hetero"] = run_hetero_demo(Path(out_dir) / "hetero", n_hetero, seed, console)
    results["checks"] = demo_checks(results)
    _print_checks(results["checks"], console)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s "
                  f"({time.process_time() - cpu:.0f} s of CPU time)")
    return results


def _print_checks(found: list[Check], console: Console) -> None:
    """Every checked figure with its bound and verdict, then how many passed."""
    summary = Table(title="subtomo demo: every checked figure against its bound")
    for column in ("part", "figure", "value", "expected", "check"):
        summary.add_column(column, justify="right" if column in ("value", "expected") else "left")
    for c in found:
        summary.add_row(c.part, c.figure, f"{c.value:.3g}", c.expected, c.verdict)
    console.print(summary)
    failed = [f"{c.part} {c.figure}" for c in found if not c.passed]
    console.print(f"{len(found) - len(failed)} of {len(found)} checks passed"
                  + (f"; FAILED: {', '.join(failed)}" if failed else ""))


def _fresh(job: Path) -> Path:
    """An empty job folder (a demo run replaces its own earlier outputs)."""
    if job.exists():
        shutil.rmtree(job)
    return job


def run_classification_demo(out_dir: Path, n: int, seed: int, console: Console,
                            size: DemoSize = FULL) -> dict[str, float]:
    """Seed 004's route on a simulated 3-class set (full complex, one subunit missing, one
    domain rotated 25°; 32³, 6 Å/px, CTF, missing wedge, noise): a de novo initial model from
    random orientations, 3D classification (K = 3, T = 4, local searches) from its poses,
    selection of the best-resolved class; scored against the true classes and maps."""
    start = time.perf_counter()
    box, pixel_size_A = 32, 6.0
    config = SimulationConfig(n=n, box_px=box, pixel_size_A=pixel_size_A, classes=3,
                              noise_sigma=size.classification_noise,
                              seed=seed)
    sim = simulate_subtomograms(out_dir / "simulated", config, progress=False)
    truths = [torch.from_numpy(read_mrc(p)[0]) for p in sim.truth_maps]
    labels = read_particles(sim.truth_star).particles["rlnClassNumber"].to_numpy()

    def fsc05_aligned(volume: torch.Tensor, truth: torch.Tensor) -> float:
        """FSC-0.5 resolution (Å) against ``truth`` after alignment (hand flip allowed)."""
        aligned = align_maps(volume, truth, pixel_size_A, allow_flip=True).aligned
        return resolution_at(fsc(aligned, truth), box, pixel_size_A, threshold=0.5)

    iter_ini, iter_inbetween, iter_final, batch_ini, batch_final = size.initial_model
    console.print(f"initial model from {n} particles at random orientations ...")
    model = initial_model(read_particles(sim.particles_star),
                          _fresh(out_dir / "InitialModel" / "job001"),
                          options=InitialModelOptions(
                              iter_ini=iter_ini, iter_inbetween=iter_inbetween,
                              iter_final=iter_final, batch_ini=batch_ini,
                              batch_final=batch_final, ini_high_A=40.0, final_high_A=20.0,
                              ctf=True),
                          progress=False)
    model_res = fsc05_aligned(model.reconstructions[0].map, truths[0])
    console.print("3D classification (K 3, T 4, local searches) from the initial model ...")
    classes = classify(model.particles, model.reconstructions[0].map,
                       _fresh(out_dir / "Class3D" / "job001"),
                       options=ClassifyOptions(K=3, n_iter=size.classify_iterations,
                                               ctf=True, healpix_order=3,
                                               local=True, sigma_ang_deg=5.0,
                                               offset_range_px=2.0, offset_step_px=1.0),
                       progress=False)
    found = classes.particles.particles["rlnClassNumber"].to_numpy()
    confusion = np.array([[np.sum((labels == t) & (found == k)) for k in (1, 2, 3)]
                          for t in (1, 2, 3)])
    match = linear_sum_assignment(-confusion)[1]  # found class (0-based) of each true class
    class_res = [fsc05_aligned(classes.reconstructions[k].map, truths[t])
                 for t, k in enumerate(match)]
    best = int(np.argmin([r.resolution_A for r in classes.reconstructions])) + 1
    selected = select_class(out_dir / "Class3D" / "job001" / f"run_it{classes.iterations:03d}"
                            "_data.star", out_dir / "Select" / "job001" / "particles.star",
                            [best])
    purity = np.bincount(labels[found == best]).max() / max(len(selected), 1)
    figures = {
        "particles": float(n),
        "initial_model_fsc05_A": float(model_res),
        "adjusted_rand_index": float(adjusted_rand_score(labels, found)),
        **{f"class_{t + 1}_fsc05_A": float(r) for t, r in enumerate(class_res)},
        "selected_class": float(best),
        "selected_particles": float(len(selected)),
        "selected_purity": float(purity),
    }
    names = ("full complex", "subunit missing", "domain rotated 25°")
    table = demo_table(f"subtomo demo: {n} simulated subtomograms of 3 classes (32³, 6 Å/px, "
                       f"CTF, missing wedge, noise σ {config.noise_sigma:g})")
    part = ("classification", figures)
    row(table, f"initial model from random orientations ({model.iterations} iterations), "
        "FSC 0.5 vs truth (Å)", f"{model_res:.1f}", *part, "initial_model_fsc05_A")
    row(table, f"3D classification, {classes.iterations} iterations: adjusted Rand index",
        f"{figures['adjusted_rand_index']:.3f}", *part, "adjusted_rand_index")
    for t, (name, k, res) in enumerate(zip(names, match, class_res, strict=True)):
        row(table, f"  true class {t + 1} ({name}, {np.sum(labels == t + 1)}) → class "
            f"{k + 1} ({np.sum(found == k + 1)}), FSC 0.5 vs truth (Å)", f"{res:.1f}", *part,
            f"class_{t + 1}_fsc05_A")
    row(table, f"selected class {best} (best resolved): particles, purity",
        f"{len(selected)}, {purity:.2f}", *part, "selected_purity")
    console.print(table)
    console.print(f"classification demo finished in {time.perf_counter() - start:.1f} s; "
                  f"outputs in {out_dir}/")
    return figures


def run_averaging_demo(out_dir: Path, n: int, seed: int, console: Console,
                       max_iter: int = FULL.refine_iterations,
                       noise: float = FULL.averaging_noise) -> dict[str, float]:
    """Simulated C6 complex (seed 000's route): first template from a random subset at the
    starting poses, gold-standard auto-refine with CTF and C6, a soft mask, post-processing of
    the refined half maps; pose errors and resolutions against the truth."""
    start = time.perf_counter()
    config = SimulationConfig(n=n, box_px=32, pixel_size_A=4.0, n_atoms=1800, symmetry="C6",
                              noise_sigma=noise, seed=seed)
    sim = simulate_subtomograms(out_dir / "simulated", config)
    # STAR files name images relative to the project folder (as in RELION): keep them together
    subset_star = sim.directory / "random_subset.star"
    subset = interop.select_random(sim.particles_star, subset_star, n // 4, seed=seed + 1)
    template = reconstruct(read_particles(subset_star), ctf=True)
    write_mrc(out_dir / "random_subset.mrc", template.map, template.pixel_size_A)
    starting = read_particles(sim.particles_star)
    job = _fresh(out_dir / "Refine3D" / "job001")
    console.print(f"auto-refine of {n} particles (C6, CTF) into {job}/ ...")
    refined = auto_refine(starting, template.map, job, options=RefineOptions(
        ctf=True, sym="C6", auto_local_healpix_order=3, max_iter=max_iter), progress=False)
    full = refined.reconstruction
    truth_ps = read_particles(sim.truth_star)
    errors = {name: float(symmetric_distance_deg(truth_ps.rotation_matrices(),
                                                 p.rotation_matrices(), "C6").median())
              for name, p in (("start", starting), ("refined", refined.particles))}
    threshold = 0.15 * float(full.map.max())
    mask = create_mask(full.map, full.pixel_size_A, threshold, extend_inimask_px=2,
                       width_soft_edge_px=3)
    mask = symmetrize(mask, "C6").clamp(0, 1)
    write_mrc(out_dir / "mask_c6.mrc", mask, full.pixel_size_A)
    post = postprocess(full.half1, full.half2, mask, full.pixel_size_A)
    write_mrc(out_dir / "postprocess.mrc", post.sharpened, full.pixel_size_A)
    truth = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
    true_curve = fsc(full.map, truth)
    figures = {
        "particles": float(n),
        "template_subset": float(len(subset)),
        "refine_iterations": float(refined.iterations),
        "median_pose_error_start_deg": errors["start"],
        "median_pose_error_refined_deg": errors["refined"],
        "half_map_resolution_A": float(full.resolution_A),
        "postprocess_resolution_A": float(post.resolution_A),
        "true_fsc05_resolution_A": float(resolution_at(true_curve, 32, 4.0, threshold=0.5)),
        "bfactor_A2": float(post.bfactor_A2),
    }
    table = demo_table(f"subtomo demo: {n} simulated C6 subtomograms (32³, 4 Å/px, CTF, "
                       f"missing wedge, noise σ {noise:g})")
    part = ("averaging", figures)
    row(table, f"template from random subset of {len(subset)}", "random_subset.mrc")
    row(table, f"auto-refine, C6: {refined.iterations} iterations, median pose error (°)",
        f"{errors['start']:.1f} → {errors['refined']:.1f}", *part,
        "median_pose_error_refined_deg")
    row(table, "auto-refine gold-standard halves, FSC 0.143 (Å)",
        f"{figures['half_map_resolution_A']:.1f}", *part, "half_map_resolution_A")
    row(table, "postprocess (C6 soft mask), corrected FSC 0.143 (Å)",
        f"{figures['postprocess_resolution_A']:.1f}", *part, "postprocess_resolution_A")
    row(table, "truth: map vs ground truth, FSC 0.5 (Å)",
        f"{figures['true_fsc05_resolution_A']:.1f}", *part, "true_fsc05_resolution_A")
    row(table, "B-factor (Å²)", f"{figures['bfactor_A2']:.0f}")
    console.print(table)
    console.print(f"averaging demo finished in {time.perf_counter() - start:.1f} s; outputs in "
                  f"{out_dir}/")
    return figures


def interop_figures(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The worst pose (°), shift (Å) and centre (Å) error over all interop routes."""
    return {name: max(err[key] for err in results.values())
            for name, key in (("max_pose_error_deg", "angle_deg"), ("max_shift_error_A", "shift_A"),
                              ("max_centre_error_A", "centre_A"))}


def demo_checks(results: dict) -> list[Check]:
    """Every part's figures against its bounds (:data:`subtomo.demo_checks.EXPECTED`)."""
    found: list[Check] = []
    for part, figures in results.items():
        if part == "interop":
            figures = interop_figures(figures)
        found += checks(part, figures)
    return found


def run_interop_demo(out_dir: str | Path, n: int, seed: int,
                     console: Console) -> dict[str, dict[str, float]]:
    """Simulate particles, write every STAR flavour and a Dynamo table, read them all back.

    Returns the worst pose/shift/position error per route; prints a summary table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    truth = random_particle_set(n, seed=seed, subtomogram_angles=True)
    # picked particles, no volumes yet: RELION 3.x has no form for 3D subtomograms in frames
    truth = replace(truth, particles=truth.particles.drop(columns=["rlnImageName",
                                                                   "rlnCtfImage"]))
    tomograms = out / "tomograms.star"
    write_star({"global": truth.tomograms}, tomograms)
    results: dict[str, dict[str, float]] = {}
    for flavour in DEMO_FLAVOURS:
        path = out / f"particles_{flavour}.star"
        write_particles(truth, path, flavour)
        back = read_particles(path, tomograms=tomograms)
        results[f"{flavour} → ParticleSet"] = compare(truth, back)
        again = out / f"particles_{flavour}_to_relion5.star"
        interop.star_convert(path, again, flavour="relion5", tomograms=tomograms)
        results[f"{flavour} → relion5 → ParticleSet"] = compare(
            truth, read_particles(again, tomograms=tomograms))
    table_path = out / "particles.tbl"
    interop.star2dynamo(out / "particles_relion5.star", table_path, tomograms=tomograms)
    star_from_table = out / "particles_from_dynamo.star"
    interop.dynamo2star(table_path, table_path.with_suffix(".doc"), star_from_table,
                        flavour="relion31")
    back = read_particles(star_from_table)
    results["relion5 → Dynamo → relion31"] = compare(interop.recentre(truth), back)
    subset = interop.select_random(out / "particles_relion5.star", out / "subset.star", n // 3,
                                   seed=1)
    poses_path = out / "poses.pkl"
    interop.export_poses(out / "subset.star", poses_path, box_px=48, pixel_size_A=5.0)

    report = Table(title=f"subtomo demo: {n} simulated particles, every STAR flavour")
    for column in ("route", "max pose error (°)", "max shift error (Å)", "max centre error (Å)"):
        report.add_column(column, justify="right" if column != "route" else "left")
    for route, err in results.items():
        report.add_row(route, f"{err['angle_deg']:.2e}", f"{err['shift_A']:.2e}",
                       f"{err['centre_A']:.2e}")
    console.print(report)
    worst = interop_figures(results)
    table = demo_table("STAR round trips: worst over all routes")
    for name, label in (("max_pose_error_deg", "pose error (°)"),
                        ("max_shift_error_A", "shift error (Å)"),
                        ("max_centre_error_A", "centre error (Å)")):
        row(table, label, f"{worst[name]:.2e}", "interop", worst, name)
    console.print(table)
    console.print(f"random subset: {len(subset)} particles → {out / 'subset.star'}; "
                  f"OPUS-TOMO poses → {poses_path}")
    console.print(f"interop demo finished in {time.perf_counter() - start:.1f} s; outputs in "
                  f"{out}/")
    return results


def run_tiltseries_demo(out_dir: Path, n: int, seed: int, console: Console) -> dict[str, float]:
    """The tilt-series route: simulate a tilt series (41 tilts, dose-symmetric, CTF at each
    particle's depth, noise) → reconstruct a tomogram (bin 2) and pick by template matching →
    extract subtomograms and 3D CTF volumes at the picks → auto-refine from the picks'
    orientations → postprocess; scored against the truth (picks matched within half a radius),
    with reconstruct-particle (the average straight from the tilt series) beside it."""
    start = time.perf_counter()
    box, pixel_size_A = 24, 8.0
    config = TiltSeriesConfig(n_particles=n, image_size_px=(320, 320), thickness_px=64,
                              pixel_size_A=pixel_size_A, box_px=box, n_atoms=1200, noise_sigma=15.0,
                              defocus_um=(2.5, 3.0), seed=seed)
    console.print(f"simulating a tilt series of {n} particles (41 tilts, {pixel_size_A} Å/px) ...")
    sim = simulate_tiltseries(_fresh(out_dir / "simulated"), config, progress=False)
    inputs = read_inputs(sim.optimisation_set)
    truth_ps = sim.truth_particles
    truth_map = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])

    picked, matched, pick_figures = _pick(inputs, sim.truth_maps[0], truth_ps, box * pixel_size_A
                                          * 0.8, out_dir)
    extracted = extract_subtomograms(picked, inputs.tomograms, out_dir / "Extract",
                                     ExtractOptions(box=box), progress=False)
    direct = reconstruct_particle(inputs.particles, inputs.tomograms, box=box, progress=False)
    hits = matched >= 0
    true_angles = truth_ps.particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]]
    at_truth = ParticleSet(extracted.particles.particles[hits].reset_index(drop=True),
                           extracted.particles.optics, extracted.particles.tomograms)
    at_truth.particles[list(true_angles)] = true_angles.to_numpy()[matched[hits]]
    console.print(f"auto-refine of {len(extracted.particles)} picked subtomograms from the "
                  "picks' orientations ...")
    refined = auto_refine(extracted.particles, reconstruct(extracted.particles, ctf=True,
                                                           progress=False).map,
                          _fresh(out_dir / "Refine3D" / "job001"),
                          options=RefineOptions(ctf=True, auto_local_healpix_order=3,
                                                max_iter=10), progress=False)
    truth_rot = truth_ps.rotation_matrices()[matched[hits]]
    errors = [float(angular_distance_deg(truth_rot, p.rotation_matrices()[hits]).median())
              for p in (extracted.particles, refined.particles)]
    full = refined.reconstruction
    mask = create_mask(full.map, full.pixel_size_A, 0.15 * float(full.map.max()),
                       extend_inimask_px=2, width_soft_edge_px=3)
    post = postprocess(full.half1, full.half2, mask, full.pixel_size_A)
    write_mrc(out_dir / "postprocess.mrc", post.sharpened, full.pixel_size_A)
    figures = {
        **pick_figures,
        "particles": float(extracted.written),
        "reconstruct_particle_fsc05_truth_A": resolution_at(fsc(direct.map, truth_map), box,
                                                            pixel_size_A, 0.5),
        "extract_reconstruct_fsc05_truth_A": resolution_at(
            fsc(reconstruct(at_truth, ctf=True, progress=False).map, truth_map), box,
            pixel_size_A, 0.5),
        "median_pose_error_start_deg": errors[0],
        "median_pose_error_refined_deg": errors[1],
        "refined_fsc05_truth_A": resolution_at(fsc(full.map, truth_map), box, pixel_size_A, 0.5),
        "postprocess_resolution_A": float(post.resolution_A),
    }
    _print_tiltseries_table(figures, n, pixel_size_A, config.noise_sigma, refined.iterations,
                            console)
    console.print(f"tilt-series demo finished in {time.perf_counter() - start:.1f} s; outputs in "
                  f"{out_dir}/")
    return figures


def _pick(inputs, template_path: Path, truth_ps: ParticleSet, diameter_A: float,
          out_dir: Path) -> tuple[ParticleSet, np.ndarray, dict[str, float]]:
    """``subtomo pick`` (bin 2, 15°, automatic threshold at 0.1 expected false picks) of the
    tomogram with the true map as the template: the picked set, each pick's row in the truth
    (−1: none within half a radius), precision and recall."""
    tset = inputs.tomograms
    ts = tset["TS_01"]
    opts = PickOptions(particle_diameter_A=diameter_A, false_positives=0.1)
    template, _ = load_template(template_path, ts.pixel_size_A * 2.0)
    result, volume, voxel_A, binning = search_tomogram(ts, template, None, opts, 2.0,
                                                       progress=False)
    write_mrc(out_dir / "rec_TS_01.mrc", -volume, voxel_A)
    picks = without_other_objects(refine_picks(threshold_picks(result, opts, voxel_A, binning),
                                               ts, volume, template, None, opts), opts)
    picked = picks_to_particles(tset, {"TS_01": picks})
    write_particles(picked, out_dir / "picks.star", "relion5")
    centred = truth_ps.particles[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    truth_px = ts.centred_to_px(torch.as_tensor(centred, dtype=torch.float64)).numpy()
    dist = np.linalg.norm(picks.positions_px[:, None] - truth_px[None], axis=-1) * ts.pixel_size_A
    near = dist.min(1) < diameter_A / 4 if len(dist) else np.zeros(0, bool)
    matched = np.where(near, dist.argmin(1) if len(dist) else 0, -1)
    recall = float((dist.min(0) < diameter_A / 4).mean()) if len(dist) else 0.0
    return picked, matched, {"pick_precision": float(near.mean()) if len(near) else 0.0,
                             "pick_recall": recall, "pick_expected_false": picks.expected_false}


def _print_tiltseries_table(figures: dict[str, float], n: int, pixel_size_A: float,
                            noise_sigma: float, iterations: int, console: Console) -> None:
    """The tilt-series demo's table of figures with their checks."""
    table = demo_table(f"subtomo demo: a simulated tilt series of {n} particles (41 tilts, "
                       f"{pixel_size_A:g} Å/px, depth-dependent CTF, exposure, noise σ "
                       f"{noise_sigma:g})")
    part = ("tiltseries", figures)
    row(table, f"pick (bin 2, 15°): precision (expected false picks "
        f"{figures['pick_expected_false']:.1f})", f"{figures['pick_precision']:.2f}", *part,
        "pick_precision")
    row(table, "pick: recall within half a radius", f"{figures['pick_recall']:.2f}", *part,
        "pick_recall")
    row(table, "reconstruct-particle (tilt series, true poses), FSC 0.5 vs truth (Å)",
        f"{figures['reconstruct_particle_fsc05_truth_A']:.1f}", *part,
        "reconstruct_particle_fsc05_truth_A")
    row(table, f"extract {int(figures['particles'])} subtomograms + CTF volumes → reconstruct, "
        "FSC 0.5 vs truth (Å)", f"{figures['extract_reconstruct_fsc05_truth_A']:.1f}", *part,
        "extract_reconstruct_fsc05_truth_A")
    row(table, f"auto-refine ({iterations} iterations) from the picks: median pose error (°)",
        f"{figures['median_pose_error_start_deg']:.1f} → "
        f"{figures['median_pose_error_refined_deg']:.1f}", *part,
        "median_pose_error_refined_deg")
    row(table, "refined map, FSC 0.5 vs truth (Å)", f"{figures['refined_fsc05_truth_A']:.1f}",
        *part, "refined_fsc05_truth_A")
    row(table, "postprocess, corrected FSC 0.143 (Å)",
        f"{figures['postprocess_resolution_A']:.1f}", *part, "postprocess_resolution_A")
    console.print(table)


def run_hetero_demo(out_dir: Path, n: int, seed: int, console: Console) -> dict[str, float]:
    """Seed 002's route on a simulated set with a hinged domain (0–30°) and 30 % junk (empty
    boxes or another molecule); 24³, 8 Å/px, CTF, missing wedge, noise σ 0.5: train the VAE,
    analyze the latents, maps along PC1, keep the clusters whose centre map holds the molecule;
    scored against the true junk labels. The hinge is not scored: the |Spearman ρ| of PC1 of the
    good particles' latents with the true hinge angle is 0.11 here (seed 0) and, with hinges to
    90°, 0.91, 0.17 and 0.66 on seeds 0, 1 and 2; seed 1 stayed at 0.13-0.17 with σ 0.1 or
    0.25 and 10 epochs, or with 400 particles."""
    start = time.perf_counter()
    config = SimulationConfig(n=n, box_px=24, pixel_size_A=8.0, n_atoms=1000, hinge_max_deg=30.0,
                              junk_fraction=0.3, noise_sigma=0.5, angle_error_deg=1.0,
                              shift_error_px=0.2, seed=seed)
    sim = simulate_subtomograms(out_dir / "simulated", config, progress=False)
    truth = read_particles(sim.truth_star).particles
    junk = truth["rlnSubtomoJunk"].to_numpy() > 0
    run = _fresh(out_dir / "Hetero" / "job001")
    epochs, k = 6, 6
    console.print(f"hetero train: VAE on {n} subtomograms, {epochs} epochs ...")
    train(read_training_inputs(sim.particles_star), run,
          TrainOptions(epochs=epochs, zdim=4, seed=seed), progress=False)
    last = epochs - 1
    result = analyze(run, last, pcs=2, ksample=k, skip_umap=True)
    eval_vol(run, last, "pc", 1)
    eval_vol(run, last, "kmeans", k)
    selected = run / "selected.star"
    select_particles(run, last, kmeans=k, min_occupancy=0.85, min_cc=0.9, output=selected)
    kept = np.isin(np.arange(n), _rows_of(read_particles(selected), read_particles(
        sim.particles_star)))
    figures = {"particles": float(n), "junk": float(junk.sum()),
               "junk_removed": float(np.mean(~kept[junk])),
               "good_kept": float(np.mean(kept[~junk])),
               "explained_pc1": float(result.explained[0])}
    table = demo_table(f"subtomo demo: {n} simulated subtomograms, hinge 0–"
                       f"{config.hinge_max_deg:g}° (not scored), 30 % junk (24³, 8 Å/px, CTF, "
                       f"missing wedge, noise σ {config.noise_sigma:g})")
    part = ("hetero", figures)
    row(table, f"hetero train ({epochs} epochs) + analyze: PC1 share of the latent variance",
        f"{figures['explained_pc1']:.2f}")
    row(table, f"select clusters (KMeans {k}, centre map occupancy ≥ 0.85, cc ≥ 0.9): "
        f"share of the {int(junk.sum())} junk removed", f"{figures['junk_removed']:.2f}", *part,
        "junk_removed")
    row(table, f"  share of the {int((~junk).sum())} good particles kept",
        f"{figures['good_kept']:.2f}", *part, "good_kept")
    row(table, "maps along PC1 and at the cluster centres",
        f"{run.name}/analyze.{last}/pc1, kmeans{k}")
    console.print(table)
    console.print(f"heterogeneity demo finished in {time.perf_counter() - start:.1f} s; "
                  f"outputs in {out_dir}/")
    return figures


def _rows_of(subset: ParticleSet, full: ParticleSet) -> np.ndarray:
    """Row numbers in ``full`` of the particles of ``subset`` (matched by image name)."""
    index = {name: i for i, name in enumerate(full.particles["rlnImageName"])}
    return np.array([index[name] for name in subset.particles["rlnImageName"]], dtype=int)
