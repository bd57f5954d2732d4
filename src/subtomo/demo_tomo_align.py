"""The tilt-series refinement part of the demo: simulated misalignment and motion →
``reconstruct-particle`` → ``tomo-align`` → ``reconstruct-particle`` → ``tomo-align --motion``
→ ``reconstruct-particle`` → postprocess, scored against the truth. Self-contained
(``run_tomo_align_demo``), about half a minute of CPU on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from subtomo.demo_checks import demo_table, row
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particle_series import particle_positions_px
from subtomo.io.star import read_particles
from subtomo.io.tomograms import (
    read_inputs,
    read_motion,
    read_tomogram_set,
    write_optimisation_set,
)
from subtomo.maps.mask import create_mask
from subtomo.maps.postprocess import postprocess
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.tomo.alignment import AlignSettings
from subtomo.tomo.correlation import read_references
from subtomo.tomo.particles import with_tomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle, write_outputs
from subtomo.tomo.tomo_align import tomo_align

__all__ = ["run_tomo_align_demo"]


def _image_positions(ps, tset, motion) -> torch.Tensor:
    ps = with_tomograms(ps, tset)
    out = []
    for name in tset.names:
        rows = np.flatnonzero(ps.tomo_names().to_numpy() == name)
        out.append(tset[name].project(particle_positions_px(ps, tset[name], rows, motion)))
    return torch.cat(out)


def run_tomo_align_demo(out_dir: str | Path = "demo_out/tomo_align", n_particles: int = 40,
                        seed: int = 0, console: Console | None = None) -> dict[str, float]:
    """Run the demo into ``out_dir`` (replaced); print a table and return its figures."""
    console = console or Console(width=120)
    start = time.perf_counter()
    out = Path(out_dir).resolve()  # the demo works inside the project (os.chdir below)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = TiltSeriesConfig(n_particles=n_particles, image_size_px=(256, 256),
                              thickness_px=60, box_px=24, n_atoms=800, tilt_step_deg=4.0,
                              noise_sigma=20.0, shift_error_px=1.5, angle_error_deg=0.5,
                              position_error_px=1.0, motion_px=1.0, motion_scale_px=100.0,
                              seed=seed)
    console.print(f"tomo-align demo: simulating {n_particles} particles in a tilt series of "
                  "31 tilts with per-tilt errors (σ 1.5 px, 0.5°) and beam-induced motion ...")
    sim = simulate_tiltseries(out / "project", config, progress=False)
    cwd = os.getcwd()
    os.chdir(sim.directory)  # STAR files name files relative to the project, as RELION's
    try:
        truth_map = torch.from_numpy(read_mrc(sim.truth_maps[0])[0])
        box, pixel_size_A = config.box_px, config.pixel_size_A
        given = read_inputs("optimisation_set.star")
        truth = read_inputs("truth/optimisation_set.star")
        console.print("reconstruct-particle with the given geometry → references ...")
        before = reconstruct_particle(given.particles, given.tomograms, box=box, progress=False)
        after, job = _align_twice(before, box, console)
        write_outputs(after, Path("ReconstructParticle/job005"))
        true_rec = reconstruct_particle(truth.particles, truth.tomograms, box=box,
                                        motion=truth.motion, progress=False)
        mask = create_mask(after.map, pixel_size_A, 0.15 * float(after.map.max()),
                           extend_inimask_px=2,
                           width_soft_edge_px=3)
        post = postprocess(after.half1, after.half2, mask, pixel_size_A)
        write_mrc("postprocess.mrc", post.sharpened, pixel_size_A)
        errors = _position_errors(truth, job)
        fsc05 = {label: resolution_at(fsc(rec.map, truth_map), box, pixel_size_A, 0.5)
                 for label, rec in (("given", before), ("aligned", after), ("truth", true_rec))}
    finally:
        os.chdir(cwd)
    figures = {
        "error_given_px": errors["given"], "error_aligned_px": errors["aligned"],
        "fsc05_given_A": fsc05["given"], "fsc05_aligned_A": fsc05["aligned"],
        "fsc05_true_geometry_A": fsc05["truth"], "postprocess_resolution_A": post.resolution_A,
        "seconds": time.perf_counter() - start,
    }
    _print_table(figures, n_particles, config.noise_sigma, before.resolution_A,
                 after.resolution_A, console)
    console.print(f"tomo-align demo finished in {figures['seconds']:.1f} s; outputs in "
                  f"{sim.directory}/TomoAlign/job004/")
    return figures


def _align_twice(before, box: int, console: Console):
    """tomo-align against the references of ``before``, reconstruct-particle, tomo-align
    ``--motion`` against those, reconstruct-particle (in the project folder, RELION's job
    layout); returns the last reconstruction and the last tomo-align job."""
    rec, sets = before, ("particles.star", "tomograms.star", None)
    for job_no, motion in ((1, False), (3, True)):  # tomo-align, then again with motion
        folder = f"ReconstructParticle/job{job_no:03d}"
        write_outputs(rec, Path(folder))
        write_optimisation_set(f"{folder}/optimisation_set.star", particles=sets[0],
                               tomograms=sets[1], trajectories=sets[2],
                               ref1=f"{folder}/half1.mrc", ref2=f"{folder}/half2.mrc",
                               fsc=f"{folder}/fsc.star")
        inputs = read_inputs(f"{folder}/optimisation_set.star")
        refs = read_references(inputs.files["ref1"], inputs.files["ref2"],
                               fsc=inputs.files["fsc"])
        console.print(f"tomo-align{' --motion' if motion else ''} against the "
                      f"{rec.resolution_A:.0f} Å references ...")
        out = Path(f"TomoAlign/job{job_no + 1:03d}")
        job = tomo_align(inputs, refs, AlignSettings(box=48, max_shift_px=6.0,
                                                     motion=motion, s_div=300.0), out,
                         reconstruct=False, rounds=1,
                         command=["subtomo", "tomo-align", "(demo)"], progress=False)
        sets = tuple(str(out / f) for f in ("particles.star", "tomograms.star",
                                            "motion.star"))
        rec = reconstruct_particle(job.particles, job.tomograms, box=box,
                                   motion=job.trajectories, progress=False)
    return rec, job


def _position_errors(truth, job) -> dict[str, float]:
    """rms distance (px) of the particles' projected positions in every tilt from the true
    ones, with the given geometry and with the aligned one (``job``)."""
    true_xy = _image_positions(truth.particles, truth.tomograms,
                               read_motion("truth/motion.star"))
    errors = {}
    for label, (ps, tset, motion) in {
            "given": (read_particles("particles.star"), read_tomogram_set("tomograms.star"),
                      None),
            "aligned": (job.particles, job.tomograms, job.trajectories)}.items():
        xy = _image_positions(ps, tset, motion)
        errors[label] = float((xy - true_xy).norm(dim=-1).pow(2).mean().sqrt())
    return errors


def _print_table(figures: dict[str, float], n_particles: int, noise_sigma: float,
                 before_A: float, after_A: float, console: Console) -> None:
    """The demo's table of figures with their checks."""
    table = demo_table(f"tomo-align demo: {n_particles} particles × 31 tilts (10 Å/px, noise σ "
                       f"{noise_sigma:g}), per-tilt errors and motion; tomo-align, then "
                       "tomo-align --motion")
    part = ("tomo_align", figures)
    row(table, "rms error of the projected positions vs truth (px)",
        f"{figures['error_given_px']:.2f} → {figures['error_aligned_px']:.2f}", *part,
        "error_aligned_px")
    row(table, "reconstruct-particle vs true map, FSC 0.5 (Å)",
        f"{figures['fsc05_given_A']:.1f} → {figures['fsc05_aligned_A']:.1f} (true geometry "
        f"{figures['fsc05_true_geometry_A']:.1f})", *part, "fsc05_aligned_A")
    row(table, "half-map FSC 0.143 before → after (Å)", f"{before_A:.1f} → {after_A:.1f}")
    row(table, "postprocess (soft mask), corrected FSC 0.143 (Å)",
        f"{figures['postprocess_resolution_A']:.1f}", *part, "postprocess_resolution_A")
    console.print(table)
