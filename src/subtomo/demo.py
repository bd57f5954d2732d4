"""The end-to-end demo on simulated data; it grows with every capability."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from subtomo import interop
from subtomo.geometry.euler import angular_distance_deg
from subtomo.io.particles import ParticleSet
from subtomo.io.star import read_particles, write_particles
from subtomo.io.star_text import write_star
from subtomo.simulate.particles import random_particle_set

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


def run_demo(out_dir: str | Path = "demo_out", n: int = 300, seed: int = 0,
             n_subtomograms: int = 300, console: Console | None = None) -> dict:
    """The whole demo: STAR interop, then simulate → subset → reconstruct → mask → symmetrise →
    postprocess. Returns the figures it prints."""
    console = console or Console(width=120)
    results = {"interop": run_interop_demo(Path(out_dir) / "interop", n, seed, console)}
    if n_subtomograms:
        results["averaging"] = run_averaging_demo(Path(out_dir) / "averaging", n_subtomograms,
                                                  seed, console)
    return results


def run_averaging_demo(out_dir: Path, n: int, seed: int, console: Console) -> dict[str, float]:
    """Simulated C6 complex (seed 000's route): first template from a random subset at the
    starting poses, gold-standard auto-refine with CTF and C6, a soft mask, post-processing of
    the refined half maps; pose errors and resolutions against the truth."""
    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.geometry.symmetry import symmetric_distance_deg
    from subtomo.io.mrc import read_mrc, write_mrc
    from subtomo.maps.mask import create_mask
    from subtomo.maps.postprocess import postprocess
    from subtomo.maps.symmetrize import symmetrize
    from subtomo.refine.autorefine import RefineOptions, auto_refine
    from subtomo.refine.reconstruct import reconstruct
    from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

    start = time.perf_counter()
    config = SimulationConfig(n=n, box_px=32, pixel_size_A=4.0, n_atoms=1800, symmetry="C6",
                              noise_sigma=12.0, seed=seed)
    sim = simulate_subtomograms(out_dir / "simulated", config)
    # STAR files name images relative to the project folder (as in RELION): keep them together
    subset_star = sim.directory / "random_subset.star"
    subset = interop.select_random(sim.particles_star, subset_star, n // 4, seed=seed + 1)
    template = reconstruct(read_particles(subset_star), ctf=True)
    write_mrc(out_dir / "random_subset.mrc", template.map, template.pixel_size_A)
    starting = read_particles(sim.particles_star)
    job = out_dir / "Refine3D" / "job001"
    if job.exists():
        import shutil

        shutil.rmtree(job)
    console.print(f"auto-refine of {n} particles (C6, CTF) into {job}/ ...")
    refined = auto_refine(starting, template.map, job, options=RefineOptions(
        ctf=True, sym="C6", auto_local_healpix_order=3, max_iter=12), progress=False)
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
    table = Table(title=f"subtomo demo: {n} simulated C6 subtomograms (32³, 4 Å/px, CTF, "
                  "missing wedge, noise)")
    table.add_column("step")
    table.add_column("result", justify="right")
    table.add_row(f"template from random subset of {len(subset)}", "random_subset.mrc")
    table.add_row(f"auto-refine, C6: {refined.iterations} iterations, median pose error",
                  f"{errors['start']:.1f}° → {errors['refined']:.1f}°")
    table.add_row("auto-refine gold-standard halves, FSC 0.143",
                  f"{figures['half_map_resolution_A']:.1f} Å")
    table.add_row("postprocess (C6 soft mask), corrected FSC 0.143",
                  f"{figures['postprocess_resolution_A']:.1f} Å")
    table.add_row("truth: map vs ground truth, FSC 0.5",
                  f"{figures['true_fsc05_resolution_A']:.1f} Å")
    table.add_row("B-factor", f"{figures['bfactor_A2']:.0f} Å²")
    console.print(table)
    console.print(f"averaging demo finished in {time.perf_counter() - start:.1f} s; outputs in "
                  f"{out_dir}/")
    return figures


def run_interop_demo(out_dir: str | Path, n: int, seed: int,
                     console: Console) -> dict[str, dict[str, float]]:
    """Simulate particles, write every STAR flavour and a Dynamo table, read them all back.

    Returns the worst pose/shift/position error per route; prints a summary table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    truth = random_particle_set(n, seed=seed, subtomogram_angles=True)
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
    console.print(f"random subset: {len(subset)} particles → {out / 'subset.star'}; "
                  f"OPUS-TOMO poses → {poses_path}")
    console.print(f"interop demo finished in {time.perf_counter() - start:.1f} s; outputs in "
                  f"{out}/")
    return results
