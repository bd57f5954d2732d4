"""Maximum-likelihood 3D classification of subtomograms (``relion_refine --K``).

Each iteration (E step) scores every particle against each of the K class references with the
search engine of auto-refine (:class:`subtomo.align.search.Searcher`: global, local around the
current pose with RELION's Gaussian ``sigma_ang`` prior, or none with ``skip_align``). The
class posterior is ``p_k ∝ π_k exp(L_k)`` with ``L_k`` the particle's log-likelihood summed
over its pose hypotheses in class k and ``π_k`` the class distribution. Each particle goes
into every class it belongs to with probability ≥ ``min_posterior``, weighted by ``p_k`` times
its pose posterior (RELION's marginalisation); the noise power is re-estimated from its best
class. (M step) ``π_k`` is the mean posterior; each class is reconstructed in two random
halves with a Wiener filter whose τ² comes from the half-map FSC times ``tau2_fudge`` (RELION's
T; it estimates τ² from the reference power instead, we take the FSC estimate that auto-refine
uses, which needs no prior map). The FSC also gives each class's resolution; the best sets the
frequencies of the next search, growing from ``ini_high`` by at most ``incr_shells`` shells per
iteration (:func:`next_resolution`).

Classes are introduced by bisection (:func:`seed_classes`): iteration 1 assigns the particles
at random to two classes made from the one reference (low-passed to ``ini_high``); every
``split_every`` iterations the largest class is split at random until there are K. After each
split the E step restarts at ``ini_high`` and its resolution grows by ``incr_shells`` per
iteration, without alignment until the resolution resolves the angular step.

Leave-one-out scores: every particle is part of the class maps it entered, and that share
raises its score against them by about the number of scored frequencies over the class size
(log-likelihood units), whatever the classes are like: enough to freeze a random split when
the real differences are weak at the current resolution. From iteration 2 the E step
subtracts it (``leave_one_out``; :func:`subtomo.refine.expectation._own_share`, exact to first
order: within 10 % of true leave-one-out maps), and the slow growth of the resolution keeps
the number of frequencies small while classes are forming.

Files (RELION's ``Class3D/jobNNN`` layout): per iteration ``run_itNNN_data.star``
(``rlnClassNumber``, ``rlnMaxValueProbDistribution``, ``rlnLogLikeliContribution``),
``run_itNNN_classKKK.mrc``, ``run_itNNN_model.star``, ``run_itNNN_sampling.star`` and our resume
state ``run_itNNN_optimiser.json`` (written last); at the end ``run_classes.png`` (orthoslices of
the final classes), ``run_class_occupancy.png`` and ``job.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Unpack

import numpy as np
import torch

from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.grid import lowpass_map
from subtomo.io.files import undone_on_input_error
from subtomo.io.particles import ParticleSet
from subtomo.refine import outputs
from subtomo.refine.expectation import (
    Model,
    Poses,
    Seeding,
    SelfTerms,
    expectation,
    insertion_radius_px,
)
from subtomo.refine.job import (
    ClassifyResult,
    ClassState,
    Job,
    JobOptions,
    JobRun,
    JobState,
    JobSteps,
    check_inputs,
    class_names,
    class_result,
    pose_change_deg,
    run_job,
    search_radii,
)
from subtomo.refine.reconstruct import Reconstruction, reconstruct_classes


@dataclass
class ClassifyOptions(JobOptions):
    """Options of ``subtomo classify`` (:class:`JobOptions` and these)."""

    ini_high_A: float = 50.0
    offset_range_px: float = 5.0
    offset_step_px: float = 1.0
    K: int = 4
    tau2_fudge: float = 4.0
    n_iter: int = 25
    skip_align: bool = False
    local: bool = False
    sigma_ang_deg: float | None = None
    min_posterior: float = 1e-3
    incr_shells: float = 2.0
    split_every: int = 4
    leave_one_out: bool = True


ClassifyJob = Job[ClassifyOptions]


@dataclass(kw_only=True)
class ClassLoop(JobState):
    """The state between iterations: the resolution of the next search, each particle's last
    best class (0-based; ``None``: not yet classified) and each class's reconstruction
    denominator per shell (``None``: unknown, no leave-one-out scores)."""

    resolution_A: float
    classes: np.ndarray | None
    denominators: list[list[float]] | None


@dataclass
class ClassIteration:
    """What one iteration produced (on every rank)."""

    matrices: np.ndarray  # (N, 3, 3)
    origins_px: np.ndarray  # (N, 3)
    classes: np.ndarray  # (N,) 0-based best class
    max_probability: np.ndarray
    log_likelihood: np.ndarray
    distribution: np.ndarray  # (K,)
    reconstructions: list[Reconstruction]
    sigma2: np.ndarray


def search_settings(options: ClassifyOptions, resolution_A: float, box: int,
                    pixel_size_A: float, diameter_A: float, iteration: int) -> SearchSettings:
    """One iteration's sampling: fixed order (and local prior), frequencies up to the current
    resolution (no margin beyond it: every extra frequency adds self-correlation, see
    :func:`next_resolution`). Local searches wait (no alignment) until the resolution
    resolves the angular step: while the rim moves by less than half the resolution over a
    step, a search only adds jitter to the given poses."""
    coarse, fine = search_radii(resolution_A, options.healpix_order, box, pixel_size_A,
                                diameter_A, True)
    local = options.local or options.sigma_ang_deg is not None
    sigma = options.sigma_ang_deg if options.sigma_ang_deg is not None else (
        5.0 if local else None)
    step = SearchSettings(order=options.healpix_order).step_deg
    skip = options.skip_align or (local and math.degrees(resolution_A / diameter_A) > step)
    return SearchSettings(
        order=options.healpix_order, local=local, offset_range_px=options.offset_range_px,
        offset_step_px=options.offset_step_px, coarse_radius_px=coarse, fine_radius_px=fine,
        sym=options.sym, top_k=options.top_k, skip_align=skip,
        sigma_ang_deg=sigma, perturb_deg=0.0 if local else 0.5 * step,
        seed=options.seed + iteration)


def seed_classes(iteration: int, n: int, classes: np.ndarray | None, distribution: np.ndarray,
                 options: ClassifyOptions) -> tuple[np.ndarray | None, list[int] | None]:
    """Hard class assignment and parent maps of a seeding iteration, else ``(None, None)``.

    Classes are introduced by bisection (as bisecting k-means): iteration 1 splits the
    particles at random into two classes of the one reference; every ``split_every``
    iterations, while fewer than K classes exist, the largest class is split at random into
    itself and a new class. EM then pulls each split apart along the strongest remaining
    difference, where K classes split at random at once tend to divide the most distinct
    class and leave the subtler ones merged. ``split_every = 0``: K random classes at once."""
    rng = np.random.default_rng([options.seed, iteration])
    k = options.K
    if k == 1:
        return None, None
    if iteration == 1:
        first = k if options.split_every == 0 else 2
        return rng.integers(first, size=n), [0] * first
    active = len(distribution)
    if active >= k or options.split_every == 0 or (iteration - 1) % options.split_every:
        return None, None
    largest = int(np.argmax(distribution))
    assign = classes.copy()
    members = np.flatnonzero(classes == largest)
    assign[rng.choice(members, size=len(members) // 2, replace=False)] = active
    return assign, [*range(active), largest]


def next_resolution(current_A: float, estimated_A: float, box_A: float,
                    incr_shells: float) -> float:
    """The resolution (Å) of the next E step: the best class's, but at most ``incr_shells``
    Fourier shells beyond the current one.

    Starting at ``ini_high`` and growing slowly keeps the number of scored frequencies small
    while the classes are still mixed: the scores see the real class differences at low
    resolution first, and each particle's own share of its class map (about the number of
    frequencies over the class size, removed by the leave-one-out scores to first order)
    stays small."""
    limit = box_A / (box_A / current_A + incr_shells)
    return max(estimated_A, limit)


def classify_iteration(job: ClassifyJob, state: ClassLoop, references: list[torch.Tensor],
                       settings: SearchSettings, seeding: Seeding | None,
                       self_terms: SelfTerms | None, desc: str = "") -> ClassIteration:
    """One E step over all particles (:func:`subtomo.refine.expectation.expectation`) and
    the M step of every class; frequencies beyond the state's resolution plus RELION's margin
    are not inserted (:func:`subtomo.refine.expectation.insertion_radius_px`)."""
    o, ps, n = job.options, state.particles, len(state.particles)
    step = job.e_step(settings, insertion_radius_px(state.resolution_A, job.box,
                                                    job.pixel_size_A),
                      min_posterior=o.min_posterior)
    model = Model((references, references), state.distribution, state.sigma2)
    e = expectation(job.data(ps), np.arange(n), model, state.poses, step, job.ctx,
                    seeding=seeding, self_terms=self_terms, progress=job.progress, desc=desc)
    recons = reconstruct_classes(e.backprojectors, job.pixel_size_A, o.pad, o.tau2_fudge)
    distribution = (e.posterior_sums / max(n, 1)).cpu().numpy()
    for recon, share in zip(recons, distribution, strict=True):
        recon.n_particles = int(round(share * n))
    return ClassIteration(e.matrices, e.origins_px, e.classes, e.max_probability,
                          e.log_likelihood, distribution, recons, e.sigma2(state.sigma2))


def check_options(options: ClassifyOptions) -> None:
    if options.K < 1:
        raise InputError(None, f"--K must be at least 1, got {options.K}", field="--K")
    if options.tau2_fudge <= 0:
        raise InputError(None, f"--tau2_fudge must be positive, got {options.tau2_fudge}",
                         field="--tau2_fudge")
    if options.sigma_ang_deg is not None and options.sigma_ang_deg <= 0:
        raise InputError(None, "--sigma_ang must be positive", field="--sigma_ang")


class ClassifySteps(JobSteps[ClassifyOptions, ClassLoop]):
    """Classification's steps of the job skeleton (:func:`subtomo.refine.job.run_job`)."""

    def __init__(self, reference: torch.Tensor, mask: torch.Tensor | None) -> None:
        self.reference, self.mask = reference, mask

    def start(self, job: ClassifyJob, ps: ParticleSet) -> ClassLoop:
        """Iteration 0: one class, the reference low-passed to ``ini_high``."""
        o = job.options
        poses = Poses(*outputs.volume_poses(ps, job.pixel_size_A))
        maps = [lowpass_map(self.reference.to(device=job.device, dtype=torch.float32),
                            job.pixel_size_A, o.ini_high_A)]
        sigma2 = job.initial_sigma2(ps, poses.origins_px, job.particle_mask)
        return ClassLoop(iteration=0, particles=ps, poses=poses, sigma2=sigma2, maps=maps,
                         distribution=np.ones(1), history=[], resolution_A=o.ini_high_A,
                         classes=_classes(ps), denominators=None)

    def resume(self, job: ClassifyJob, ps: ParticleSet, saved: Path) -> ClassLoop:
        state = ClassState.load(saved)
        if state.options.get("K") != job.options.K:
            raise InputError(job.out, f"the run has K = {state.options.get('K')}, not "
                             f"{job.options.K}", field="--K")
        distribution = np.asarray(state.distribution)
        done, maps, poses = job.read_finished(state.iteration, ps,
                                              class_names(len(distribution)))
        return ClassLoop(iteration=state.iteration, particles=done, poses=poses,
                         sigma2=np.asarray(state.sigma2), maps=maps,
                         distribution=distribution, history=state.history,
                         elapsed_s=state.elapsed_s, resolution_A=state.resolution_A,
                         classes=_classes(done), denominators=state.denominators)

    def done(self, job: ClassifyJob, state: ClassLoop) -> bool:
        return state.iteration >= job.options.n_iter

    def iterate(self, job: ClassifyJob, state: ClassLoop) -> None:
        """Seed or split classes when due, search and reconstruct every class, set the next
        resolution; write the iteration's files (rank 0)."""
        o, it, box, px = job.options, state.iteration, job.box, job.pixel_size_A
        assign, parents = seed_classes(it, len(state.particles), state.classes,
                                       state.distribution, o)
        if assign is not None:
            state.resolution_A = o.ini_high_A  # new classes separate at low resolution first
        settings = search_settings(o, state.resolution_A, box, px, job.diameter_A, it)
        if assign is not None and settings.local:
            settings.skip_align = True  # seeding keeps the poses (no jitter at ini_high)
        references = [m * self.mask if self.mask is not None else m for m in state.maps]
        self_terms = None
        if assign is None and state.denominators is not None and o.leave_one_out:
            # the last best class stands for the posterior (nearly 0 or 1 per class)
            self_terms = (np.eye(len(state.maps))[state.classes], torch.as_tensor(
                state.denominators, dtype=torch.float64, device=job.device))
        tick = time.perf_counter()
        result = classify_iteration(job, state, references, settings,
                                    None if assign is None else Seeding(assign, parents),
                                    self_terms, f"iteration {it:03d}")
        change = pose_change_deg(state.poses.matrices, result.matrices, o.sym)
        moved = 1.0 if state.classes is None or assign is not None else float(
            np.mean(state.classes != result.classes))
        state.poses, state.sigma2 = Poses(result.matrices, result.origins_px), result.sigma2
        state.classes, state.distribution = result.classes, result.distribution
        state.maps = [r.map for r in result.reconstructions]
        state.denominators = [[math.inf] * (box // 2 + 1) if r.denominator is None
                              else r.denominator.tolist() for r in result.reconstructions]
        occupied = [r.resolution_A for r, share in zip(result.reconstructions,
                                                       state.distribution, strict=True)
                    if share > 0.5 / len(state.particles)]
        state.resolution_A = next_resolution(state.resolution_A,
                                             min(occupied, default=o.ini_high_A),
                                             box * px, o.incr_shells)
        state.history.append({
            "iteration": it, "distribution": state.distribution.tolist(),
            "resolution_A": [r.resolution_A for r in result.reconstructions],
            "class_changes": moved, "mean_angle_change_deg": change,
            "fine_radius_px": settings.fine_radius_px,
            "seconds": time.perf_counter() - tick})
        state.particles = outputs.with_poses(
            state.particles, result.matrices, result.origins_px, px, result.max_probability,
            result.log_likelihood, state.classes + 1)
        if job.ctx.main:
            outputs.write_class_iteration(job.out, it, state.particles, result.reconstructions,
                                          result.distribution, result.sigma2, settings,
                                          o.tau2_fudge, job.relion30)
            ClassState(it, state.resolution_A, state.distribution.tolist(),
                       state.sigma2.tolist(), asdict(o), state.history,
                       job.seconds(state.elapsed_s), state.denominators).save(
                outputs.state_path(job.out, it))
            shares = " ".join(f"{100 * s:.0f}%" for s in state.distribution)
            print(f"iteration {it:03d}: classes {shares}, {100 * moved:.1f} % changed "
                  f"class, best {state.resolution_A:.1f} Å, mean pose change {change:.2f}° "
                  f"({time.perf_counter() - tick:.0f} s)")
        job.ctx.barrier()

    def write_final(self, job: ClassifyJob, state: ClassLoop) -> None:
        outputs.write_class_plots(job.out, state.maps, state.history, state.distribution)


def _classes(ps: ParticleSet) -> np.ndarray | None:
    """The particles' classes (0-based) from ``rlnClassNumber``, ``None`` without it."""
    classes = ps.particles.get("rlnClassNumber")
    return None if classes is None else classes.to_numpy() - 1


@undone_on_input_error("out_dir")
def classify(
    ps: ParticleSet, reference: torch.Tensor, out_dir: str | Path, *,
    options: ClassifyOptions | None = None, mask: torch.Tensor | None = None,
    reference_path: str | Path = "reference", mask_path: str | Path | None = None,
    reference_pixel_size_A: float = 0.0, **run: Unpack[JobRun],
) -> ClassifyResult:
    """Classify ``ps`` into ``options.K`` classes starting from ``reference`` (job folder
    ``out_dir``); ``run``: device, ranks, ``continue_from`` (resume after the last finished
    iteration there) and the rest of :class:`subtomo.refine.job.JobRun`."""
    options = options or ClassifyOptions()
    check_options(options)
    started = time.perf_counter()
    box, pixel_size_A = check_inputs(ps, reference, reference_pixel_size_A, reference_path, mask,
                                     mask_path, options)
    job, ps = Job.set_up(ps, out_dir, options, box, pixel_size_A, started, **run)
    if mask is not None:
        mask = mask.to(device=job.device, dtype=torch.float32)
    return class_result(job, run_job(job, ClassifySteps(reference, mask), ps))
