"""Gold-standard 3D auto-refinement of subtomograms (``relion_refine --auto_refine``).

Each iteration: (E) every particle of half set h is searched against half map h with
:class:`subtomo.align.search.Searcher` (coarse pass, then oversampled fine pass) and inserted at
its best pose into half h's back-projector (and at its symmetry mates); the noise power per
shell is re-estimated from the residuals. (M) the half maps are reconstructed with τ² from
their FSC (:func:`subtomo.refine.reconstruct.gold_standard`); the resolution at FSC 0.143 sets
the frequencies of the next search. The halves never meet until the final joined map.

Sampling follows RELION's auto-refine logic: when an iteration brings no resolution gain and
the pose changes stopped shrinking, the HEALPix order goes up by one (and the offset step is
halved); at ``auto_local_healpix_order`` the searches become local around the current poses.
Once the angular step is fine enough for the resolution (the fine step below the angle that
moves the particle's rim by half the resolution) and neither gains nor large changes come for
two iterations, the run has converged.

RELION's last steps: after convergence one final iteration searches with all frequencies to
Nyquist (the halves still apart) and joins the halves into ``run_class001.mrc`` (τ² from the
FSC expected of the whole set), with the unregularised half maps as ``run_half?_class001_unfil``
for post-processing. With ``--particle_diameter`` the particles are searched inside a soft
sphere and, as ``relion_refine`` does unless ``--zero_mask``, filled outside it with noise of
the current noise spectrum, so that the noise model stays that of the data (zeros would lower
the measured noise power by the masked fraction); the maps are always reconstructed from the
unmasked particles. A reference from elsewhere (another program, another pixel size rescaled)
is brought to the particles' greyscale before iteration 1 (:mod:`subtomo.refine.greyscale`),
so it needs no ``--firstiter_cc``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Unpack

import numpy as np
import torch

from subtomo.align.search import SearchSettings
from subtomo.fourier.grid import lowpass_map
from subtomo.geometry.healpix import angular_step_deg
from subtomo.io.files import undone_on_input_error
from subtomo.io.particles import ParticleSet
from subtomo.refine import outputs
from subtomo.refine.expectation import Model, Poses, expectation, insertion_radius_px
from subtomo.refine.greyscale import reference_scale
from subtomo.refine.job import (
    Job,
    JobOptions,
    JobRun,
    JobState,
    JobSteps,
    SavedState,
    check_inputs,
    pose_change_deg,
    run_job,
    search_radii,
)
from subtomo.refine.reconstruct import Reconstruction, gold_standard

MAX_ORDER = 6


@dataclass
class RefineOptions(JobOptions):
    """Options of ``subtomo refine`` (:class:`JobOptions` and these)."""

    auto_local_healpix_order: int = 4
    firstiter_cc: bool = False
    zero_mask: bool = False  # RELION's default: noise outside the particle mask
    greyscale: bool = True  # measure the reference's scale before iteration 1
    flatten_solvent: bool = False
    max_iter: int = 25


RefineJob = Job[RefineOptions]


@dataclass
class Schedule:
    """Sampling state carried from iteration to iteration (saved for ``--continue``)."""

    order: int
    offset_range_px: float
    offset_step_px: float
    resolution_A: float
    local: bool = False
    best_shell: int = 0
    no_gain: int = 0
    no_large_changes: int = 0
    smallest_change_deg: float = 1e9
    converged: bool = False
    final_done: bool = False  # the final full-resolution iteration on the joined halves
    reference_scale: float = 1.0  # greyscale factor applied to the initial reference
    history: list[dict] = field(default_factory=list)


@dataclass
class RefineState(SavedState):
    """Everything needed to continue after iteration ``iteration`` (JSON-serialisable)."""

    KIND = "refine"

    iteration: int
    schedule: Schedule
    sigma2: list[float]
    options: dict
    elapsed_s: float = 0.0

    @classmethod
    def decode(cls, data: dict) -> RefineState:
        data["schedule"] = Schedule(**data["schedule"])
        return cls(**data)


@dataclass(kw_only=True)
class RefineLoop(JobState):
    """The state between iterations: the half maps are ``maps``; the last reconstruction of
    this session (``None`` before the first)."""

    schedule: Schedule
    recon: Reconstruction | None = None


@dataclass
class IterationResult:
    """What one iteration produced (on every rank)."""

    matrices: np.ndarray  # (N, 3, 3) full RELION rotations
    origins_px: np.ndarray  # (N, 3)
    max_probability: np.ndarray
    log_likelihood: np.ndarray
    reconstruction: Reconstruction
    sigma2: np.ndarray  # noise power per shell


@dataclass
class RefineResult:
    """The converged run: final map, half maps, FSC, resolution, poses, iterations done."""

    reconstruction: Reconstruction
    particles: ParticleSet
    iterations: int
    converged: bool
    history: list[dict]


def fine_enough(order: int, resolution_A: float, diameter_A: float) -> bool:
    """Is the oversampled step (half the order's) below the angle that moves the particle's
    rim (radius ``diameter_A / 2``) by ``resolution / (2 pi)``, the arc over which a Fourier
    component at that resolution turns by one radian?"""
    needed = math.degrees(resolution_A / (math.pi * diameter_A))
    return angular_step_deg(order) / 2 <= needed


def update_schedule(schedule: Schedule, resolution_A: float, shell: int, change_deg: float,
                    options: RefineOptions, diameter_A: float) -> None:
    """RELION's auto-refine decisions after an iteration: resolution gain, sampling increase,
    the switch to local searches, convergence."""
    s = schedule
    s.resolution_A = resolution_A
    if shell > s.best_shell:
        s.best_shell, s.no_gain = shell, 0
    else:
        s.no_gain += 1
    # a change counts as large while it keeps shrinking by 10 % and exceeds the fine step
    # (smaller changes are the sampling's own jitter)
    small = change_deg < angular_step_deg(s.order) / 2
    if change_deg < 0.9 * s.smallest_change_deg and not small:
        s.smallest_change_deg, s.no_large_changes = change_deg, 0
    else:
        s.smallest_change_deg = min(s.smallest_change_deg, change_deg)
        s.no_large_changes += 1
    if s.no_gain >= 1 and s.no_large_changes >= 1:
        if fine_enough(s.order, resolution_A, diameter_A) or s.order >= MAX_ORDER:
            if s.no_gain >= 2 or s.order >= MAX_ORDER:
                s.converged = True
        else:
            s.order += 1
            s.offset_step_px /= 2
            s.offset_range_px = min(s.offset_range_px, s.offset_step_px)
            s.local = s.order >= options.auto_local_healpix_order
            s.no_gain = s.no_large_changes = 0
            s.smallest_change_deg = 1e9


def search_settings(schedule: Schedule, options: RefineOptions, box: int, pixel_size_A: float,
                    diameter_A: float, first: bool, iteration: int,
                    final: bool = False) -> SearchSettings:
    """Frequencies (:func:`search_radii`) and sampling of one iteration's search."""
    coarse, fine = search_radii(schedule.resolution_A, schedule.order, box, pixel_size_A,
                                diameter_A, first, final)
    return SearchSettings(
        order=schedule.order, local=schedule.local, offset_range_px=schedule.offset_range_px,
        offset_step_px=schedule.offset_step_px, coarse_radius_px=coarse, fine_radius_px=fine,
        sym=options.sym, top_k=options.top_k, cc=first and options.firstiter_cc,
        perturb_deg=0.5 * angular_step_deg(schedule.order) if not schedule.local else 0.0,
        seed=options.seed + iteration)


def run_iteration(job: RefineJob, ps: ParticleSet, references: list[torch.Tensor], poses: Poses,
                  sigma2: np.ndarray, settings: SearchSettings,
                  resolution_A: float | None = None, desc: str = "") -> IterationResult:
    """One E step (:func:`subtomo.refine.expectation.expectation`, one class, each half set
    against its own half map) and the gold-standard M step. ``resolution_A``: the current
    resolution, which limits the inserted frequencies (:func:`subtomo.refine.expectation.
    insertion_radius_px`; ``None``: all, up to Nyquist)."""
    if resolution_A is None:
        resolution_A = 2 * job.pixel_size_A
    step = job.e_step(settings, insertion_radius_px(resolution_A, job.box, job.pixel_size_A),
                      zero_mask=job.options.zero_mask)
    model = Model(([references[0]], [references[1]]), np.ones(1), sigma2)
    e = expectation(job.data(ps), np.arange(len(ps)), model, poses, step, job.ctx,
                    progress=job.progress, desc=desc)
    recon = gold_standard(*e.backprojectors[0], job.pixel_size_A, job.options.pad)
    recon.n_particles = len(ps)
    return IterationResult(e.matrices, e.origins_px, e.max_probability, e.log_likelihood,
                           recon, e.sigma2(sigma2))


def reference_for_search(volume: torch.Tensor, solvent_mask: torch.Tensor | None,
                         options: RefineOptions) -> torch.Tensor:
    """The map a half is searched against: solvent-flattened by the mask when asked."""
    if solvent_mask is not None and options.flatten_solvent:
        return volume * solvent_mask
    return volume


def initial_reference(reference: torch.Tensor, pixel_size_A: float,
                      options: RefineOptions) -> torch.Tensor:
    """The user's reference low-passed to ``ini_high_A`` (both halves start from it)."""
    return lowpass_map(reference.float(), pixel_size_A, options.ini_high_A)


class RefineSteps(JobSteps[RefineOptions, RefineLoop]):
    """Auto-refine's steps of the job skeleton (:func:`subtomo.refine.job.run_job`)."""

    def __init__(self, reference: torch.Tensor, solvent_mask: torch.Tensor | None) -> None:
        self.reference, self.solvent_mask = reference, solvent_mask
        self.fresh = True

    def start(self, job: RefineJob, ps: ParticleSet) -> RefineLoop:
        """Iteration 0: the reference low-passed to ``ini_high`` (on the particles' greyscale
        unless ``--firstiter_cc``) in both halves, the particles' own noise power."""
        o, box, px = job.options, job.box, job.pixel_size_A
        schedule = Schedule(o.healpix_order, o.offset_range_px, o.offset_step_px, o.ini_high_A,
                            local=o.healpix_order >= o.auto_local_healpix_order)
        poses = Poses(*outputs.volume_poses(ps, px))
        first = initial_reference(self.reference, px, o)
        # noise-filled particles (RELION's default) start from the unmasked particles' power
        sigma2 = job.initial_sigma2(ps, poses.origins_px,
                                    job.particle_mask if o.zero_mask else None)
        if o.greyscale and not o.firstiter_cc:
            scale = reference_scale(
                ps, np.arange(len(ps)), first,
                search_settings(schedule, o, box, px, job.diameter_A, True, 1),
                sigma2, poses.matrices, poses.origins_px, box=box, ctf=o.ctf,
                mask=job.particle_mask, pad=o.pad, batch_size=o.batch_size,
                device=job.device, ctx=job.ctx)
            first = first * scale
            schedule.reference_scale = scale
            if job.ctx.main:
                print(f"reference greyscale: scaled by {scale:.4g} to the particles' "
                      "intensities")
        return RefineLoop(iteration=0, particles=ps, poses=poses, sigma2=sigma2,
                          maps=[first, first], distribution=np.ones(1),
                          history=schedule.history, schedule=schedule)

    def resume(self, job: RefineJob, ps: ParticleSet, saved: Path) -> RefineLoop:
        state = RefineState.load(saved)
        done, maps, poses = job.read_finished(state.iteration, ps,
                                              ["half1_class001", "half2_class001"])
        return RefineLoop(iteration=state.iteration, particles=done, poses=poses,
                          sigma2=np.asarray(state.sigma2), maps=maps,
                          distribution=np.ones(1), history=state.schedule.history,
                          elapsed_s=state.elapsed_s, schedule=state.schedule)

    def resumed_note(self, state: RefineLoop) -> str:
        return f" ({state.schedule.resolution_A:.2f} Å)"

    def done(self, job: RefineJob, state: RefineLoop) -> bool:
        s = state.schedule
        return s.final_done or not (s.converged or state.iteration < job.options.max_iter)

    def iterate(self, job: RefineJob, state: RefineLoop) -> None:
        """Search, reconstruct, update the schedule; write the iteration's files (rank 0)."""
        o, s, it = job.options, state.schedule, state.iteration
        box, px, final = job.box, job.pixel_size_A, state.schedule.converged
        settings = search_settings(s, o, box, px, job.diameter_A, it == 1, it, final)
        searched = [reference_for_search(r, self.solvent_mask, o) for r in state.maps]
        tick = time.perf_counter()
        result = run_iteration(job, state.particles, searched, state.poses, state.sigma2,
                               settings, s.resolution_A, f"iteration {it:03d}")
        recon = state.recon = result.reconstruction
        before = state.poses
        change = pose_change_deg(before.matrices, result.matrices, o.sym)
        shift_change = float(np.sqrt(((result.origins_px - before.origins_px) ** 2).sum(1))
                             .mean())
        state.poses, state.sigma2 = Poses(result.matrices, result.origins_px), result.sigma2
        state.maps = [recon.half1, recon.half2]
        shell = int(round(box * px / recon.resolution_A))
        s.history.append({
            "iteration": it, "resolution_A": recon.resolution_A,
            "healpix_order": settings.order, "local": settings.local,
            "angular_step_deg": settings.step_deg, "offset_step_px": settings.offset_step_px,
            "offset_range_px": settings.offset_range_px,
            "search_radius_px": [settings.coarse_radius_px, settings.fine_radius_px],
            "mean_angle_change_deg": change, "mean_offset_change_px": shift_change,
            "final": final, "seconds": time.perf_counter() - tick})
        if final:
            s.final_done = True
        else:
            update_schedule(s, recon.resolution_A, shell, change, o, job.diameter_A)
        state.particles = outputs.with_poses(state.particles, result.matrices,
                                             result.origins_px, px, result.max_probability,
                                             result.log_likelihood)
        if job.ctx.main:
            outputs.write_iteration(job.out, it, state.particles, recon, state.sigma2,
                                    settings, job.relion30)
            RefineState(it, s, state.sigma2.tolist(), asdict(o),
                        job.seconds(state.elapsed_s)).save(outputs.state_path(job.out, it))
            print(f"iteration {it:03d}{' (final, to Nyquist)' if final else ''}: "
                  f"{recon.resolution_A:.2f} Å, order "
                  f"{settings.order}{' local' if settings.local else ''}, mean pose change "
                  f"{change:.2f}°, {shift_change:.2f} px ({time.perf_counter() - tick:.0f} s)")
        job.ctx.barrier()

    def complete(self, job: RefineJob, state: RefineLoop) -> None:
        """A continued run that had already finished: its last half maps stand."""
        self.fresh = state.recon is not None
        if not self.fresh:
            ps = state.particles
            state.recon = outputs.joined(state.maps[0].cpu(), state.maps[1].cpu(),
                                         float(ps.pixel_size_A()[0]), len(ps))

    def write_final(self, job: RefineJob, state: RefineLoop) -> None:
        if self.fresh or not (job.out / "run_class001.mrc").exists():
            outputs.write_final(job.out, state.particles, state.recon, state.history,
                                state.sigma2, job.relion30)

    def summary(self, state: RefineLoop) -> dict:
        return {"converged": state.schedule.converged}


@undone_on_input_error("out_dir")
def auto_refine(
    ps: ParticleSet, reference: torch.Tensor, out_dir: str | Path, *,
    options: RefineOptions | None = None, solvent_mask: torch.Tensor | None = None,
    reference_path: str | Path = "reference", mask_path: str | Path | None = None,
    reference_pixel_size_A: float = 0.0, **run: Unpack[JobRun],
) -> RefineResult:
    """Refine ``ps`` against ``reference`` into the job folder ``out_dir`` (RELION's layout);
    ``run``: device, ranks, ``continue_from`` (resume after the last finished iteration
    there) and the rest of :class:`subtomo.refine.job.JobRun`."""
    options = options or RefineOptions()
    started = time.perf_counter()
    box, pixel_size_A = check_inputs(ps, reference, reference_pixel_size_A, reference_path,
                                     solvent_mask, mask_path, options)
    job, ps = Job.set_up(ps, out_dir, options, box, pixel_size_A, started, **run)
    if solvent_mask is not None:
        solvent_mask = solvent_mask.to(device=job.device, dtype=torch.float32)
    elif options.flatten_solvent and job.particle_mask is not None:
        # relion_refine flattens with the particle-diameter sphere when no mask is given
        solvent_mask = job.particle_mask
    state = run_job(job, RefineSteps(reference, solvent_mask), ps)
    return RefineResult(state.recon, state.particles, state.iteration,
                        state.schedule.converged, state.history)
