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

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.grid import lowpass_map, soft_sphere
from subtomo.fourier.projector import Backprojector
from subtomo.io.files import undone_on_input_error
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import read_particles, write_particles
from subtomo.parallel.distributed import Context
from subtomo.refine import outputs
from subtomo.refine.autorefine import (
    check_inputs,
    initial_sigma2,
    pose_change_deg,
    search_radii,
)
from subtomo.refine.expectation import expectation, insertion_radius_px
from subtomo.refine.reconstruct import Reconstruction, gold_standard, half_sets


@dataclass
class ClassifyOptions:
    """Options of ``subtomo classify`` (RELION's names; Å, px and degrees as named)."""

    K: int = 4
    tau2_fudge: float = 4.0
    n_iter: int = 25
    ini_high_A: float = 50.0
    sym: str = "C1"
    particle_diameter_A: float | None = None
    skip_align: bool = False
    healpix_order: int = 2
    local: bool = False
    sigma_ang_deg: float | None = None
    offset_range_px: float = 5.0
    offset_step_px: float = 1.0
    ctf: bool = False
    pad: int = 2
    batch_size: int = 32
    top_k: int = 2
    min_posterior: float = 1e-3
    incr_shells: float = 2.0
    split_every: int = 4
    leave_one_out: bool = True
    seed: int = 0
    max_memory_gib: float | None = None  # memory budget (None: automatic)


@dataclass
class ClassState:
    """Everything needed to continue after ``iteration`` (JSON)."""

    iteration: int
    resolution_A: float
    distribution: list[float]
    sigma2: list[float]
    options: dict
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    denominators: list[list[float]] | None = None

    def save(self, path: Path) -> None:
        outputs.save_json(asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> ClassState:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(path, f"not a classification state file ({exc})") from None


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


@dataclass
class ClassifyResult:
    """The finished run: class maps, distribution, particles with classes, history."""

    reconstructions: list[Reconstruction]
    distribution: np.ndarray
    particles: ParticleSet
    iterations: int
    history: list[dict]


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


def _empty(box: int, pixel_size_A: float, device: torch.device | str) -> Reconstruction:
    """A class that no particle joined: a zero map with no resolution."""
    zero = torch.zeros(box, box, box, device=device)
    return Reconstruction(zero, pixel_size_A, 0, zero, zero, torch.zeros(box // 2 + 1),
                          box * pixel_size_A)


def reconstruct_classes(bps: list[list[Backprojector]], pixel_size_A: float, pad: int,
                        tau2_fudge: float) -> list[Reconstruction]:
    """Each class's map from its two half back-projectors (τ² from their FSC times
    ``tau2_fudge``); a class without particles in both halves gives a zero map."""
    recons = []
    for pair in bps:
        if min(float(bp.weight.sum()) for bp in pair) <= 0:
            recons.append(_empty(pair[0].box, pixel_size_A, pair[0].device))
        else:
            recons.append(gold_standard(pair[0], pair[1], pixel_size_A, pad, tau2_fudge))
    return recons


def classify_iteration(
    ps: ParticleSet, references: list[torch.Tensor], distribution: np.ndarray,
    halves: np.ndarray, matrices: np.ndarray, origins_px: np.ndarray, sigma2: np.ndarray,
    settings: SearchSettings, options: ClassifyOptions, *, box: int, pixel_size_A: float,
    mask: torch.Tensor | None, device: torch.device | str, ctx: Context,
    assign: np.ndarray | None = None, parents: list[int] | None = None,
    progress: bool = True, desc: str = "",
    self_terms: tuple[np.ndarray, torch.Tensor] | None = None, resolution_A: float | None = None,
) -> ClassIteration:
    """One E step over all particles (:func:`expectation`) and the M step of every class;
    frequencies beyond ``resolution_A`` plus RELION's margin are not inserted
    (:func:`subtomo.refine.expectation.insert_radius_px`; ``None``: all)."""
    n = len(ps)
    e = expectation(ps, np.arange(n), (references, references), distribution, halves,
                    matrices, origins_px, sigma2, settings, options, box=box, mask=mask,
                    device=device, ctx=ctx, assign=assign, parents=parents,
                    min_posterior=options.min_posterior, progress=progress, desc=desc,
                    self_terms=self_terms, insert_radius_px=None if resolution_A is None else
                    insertion_radius_px(resolution_A, box, pixel_size_A))
    recons = reconstruct_classes(e.backprojectors, pixel_size_A, options.pad,
                                 options.tau2_fudge)
    distribution = (e.posterior_sums / max(n, 1)).cpu().numpy()
    for recon, share in zip(recons, distribution, strict=True):
        recon.n_particles = int(round(share * n))
    return ClassIteration(e.matrices, e.origins_px, e.classes, e.max_probability,
                          e.log_likelihood, distribution, recons, e.sigma2(sigma2))


def _stem(out: Path, iteration: int) -> Path:
    return out / f"run_it{iteration:03d}"


def write_iteration(out: Path, iteration: int, ps: ParticleSet, result: ClassIteration,
                    settings: SearchSettings, tau2_fudge: float, relion30: bool) -> None:
    """The files of one finished iteration (the resume state is written after them)."""
    stem = _stem(out, iteration)
    write_particles(ps, f"{stem}_data.star", "relion30" if relion30 else "auto")
    names = []
    for k, recon in enumerate(result.reconstructions, 1):
        name = f"{stem.name}_class{k:03d}.mrc"
        write_mrc(out / name, recon.map, recon.pixel_size_A)
        names.append(name)
    apix = result.reconstructions[0].pixel_size_A
    outputs.write_model(Path(f"{stem}_model.star"), result.reconstructions, names,
                        result.distribution.tolist(), result.sigma2, ps,
                        settings.step_deg / 2, settings.offset_step_px / 2 * apix, tau2_fudge)
    outputs.write_sampling(Path(f"{stem}_sampling.star"), settings)


def read_iteration(out: Path, iteration: int, ps: ParticleSet, k_classes: int,
                   ) -> tuple[ParticleSet, list[torch.Tensor]]:
    """Particles and class maps of a finished iteration (to continue from it)."""
    stem = _stem(out, iteration)
    done = read_particles(f"{stem}_data.star")
    if len(done) != len(ps):
        raise InputError(f"{stem}_data.star", f"has {len(done)} particles, the input "
                         f"{len(ps)}: not the same run", field="--continue")
    return done, [torch.from_numpy(read_mrc(f"{stem}_class{k:03d}.mrc")[0])
                  for k in range(1, k_classes + 1)]


def write_final(out: Path, iteration: int, maps: list[torch.Tensor], history: list[dict],
                distribution: np.ndarray) -> None:
    """``run_classes.png`` (orthoslices of the final classes) and the occupancy plot."""
    from subtomo.report.plots import plot_class_occupancy, plot_class_slices

    titles = [f"class {k} · {100 * share:.1f} %" for k, share in enumerate(distribution, 1)]
    if history:
        last = history[-1]["resolution_A"]
        titles = [f"{t}\n{res:.1f} Å" for t, res in zip(titles, last, strict=True)]
    plot_class_slices([m.cpu() for m in maps], out / "run_classes.png", titles)
    if history:
        plot_class_occupancy(history, out / "run_class_occupancy.png")


def check_options(options: ClassifyOptions) -> None:
    if options.K < 1:
        raise InputError(None, f"--K must be at least 1, got {options.K}", field="--K")
    if options.tau2_fudge <= 0:
        raise InputError(None, f"--tau2_fudge must be positive, got {options.tau2_fudge}",
                         field="--tau2_fudge")
    if options.sigma_ang_deg is not None and options.sigma_ang_deg <= 0:
        raise InputError(None, "--sigma_ang must be positive", field="--sigma_ang")


@undone_on_input_error("out_dir")
def classify(
    ps: ParticleSet, reference: torch.Tensor, out_dir: str | Path, *,
    options: ClassifyOptions | None = None, mask: torch.Tensor | None = None,
    reference_path: str | Path = "reference", mask_path: str | Path | None = None,
    reference_apix: float = 0.0, device: str | torch.device = "cpu",
    ctx: Context | None = None, continue_from: bool = False, relion30: bool = False,
    progress: bool = True, command: list[str] | None = None,
) -> ClassifyResult:
    """Classify ``ps`` into ``options.K`` classes starting from ``reference`` (job folder
    ``out_dir``); with ``continue_from``, resume after the last finished iteration there."""
    options = options or ClassifyOptions()
    ctx = ctx or Context()
    check_options(options)
    out = Path(out_dir)
    start = time.perf_counter()
    box, pixel_size = check_inputs(ps, reference, reference_apix, reference_path, mask,
                                   mask_path, options)
    diameter = options.particle_diameter_A or 0.8 * box * pixel_size
    particle_mask = None
    if options.particle_diameter_A:
        particle_mask = soft_sphere(box, options.particle_diameter_A / pixel_size,
                                    device=device)
    if mask is not None:
        mask = mask.to(device=device, dtype=torch.float32)
    halves = half_sets(ps, options.seed)
    ps = outputs.with_halves(ps, halves)

    if continue_from:
        state = ClassState.load(outputs.last_state(out))
        if state.options.get("K") != options.K:
            raise InputError(out, f"the run has K = {state.options.get('K')}, not "
                             f"{options.K}", field="--K")
        iteration, history, elapsed = state.iteration, state.history, state.elapsed_s
        resolution, sigma2 = state.resolution_A, np.asarray(state.sigma2)
        distribution = np.asarray(state.distribution)
        denominators = state.denominators
        ps, maps = read_iteration(out, iteration, ps, len(distribution))
        maps = [m.to(device) for m in maps]
        matrices, origins = outputs.full_poses(ps, pixel_size)
        if ctx.main:
            print(f"Continuing {out} after iteration {iteration}.")
    else:
        outputs.prepare_job_dir(out, ctx)
        iteration, history, elapsed = 0, [], 0.0
        resolution = options.ini_high_A
        distribution = np.ones(1)
        denominators = None  # the reference's particles are unknown
        matrices, origins = outputs.full_poses(ps, pixel_size)
        maps = [lowpass_map(reference.to(device=device, dtype=torch.float32), pixel_size,
                            options.ini_high_A)]
        sigma2 = initial_sigma2(ps, np.arange(len(ps)), box, options.ctf,
                                torch.as_tensor(origins, dtype=torch.float32, device=device),
                                particle_mask, device, ctx, options.batch_size,
                                options.max_memory_gib)
    classes = ps.particles.get("rlnClassNumber")
    classes = None if classes is None else classes.to_numpy() - 1

    while iteration < options.n_iter:
        iteration += 1
        assign, parents = seed_classes(iteration, len(ps), classes, distribution, options)
        if assign is not None:
            resolution = options.ini_high_A  # new classes separate at low resolution first
        settings = search_settings(options, resolution, box, pixel_size, diameter, iteration)
        if assign is not None and settings.local:
            settings.skip_align = True  # seeding keeps the poses (no jitter at ini_high)
        references = [m * mask if mask is not None else m for m in maps]
        self_terms = None
        if assign is None and denominators is not None and options.leave_one_out:
            # the last best class stands for the posterior (nearly 0 or 1 per class)
            self_terms = (np.eye(len(maps))[classes], torch.as_tensor(
                denominators, dtype=torch.float64, device=device))
        tick = time.perf_counter()
        result = classify_iteration(
            ps, references, distribution, halves, matrices, origins, sigma2, settings, options,
            box=box, pixel_size_A=pixel_size, mask=particle_mask, device=device, ctx=ctx,
            assign=assign, parents=parents, progress=progress,
            desc=f"iteration {iteration:03d}", self_terms=self_terms, resolution_A=resolution)
        change = pose_change_deg(matrices, result.matrices, options.sym)
        moved = 1.0 if classes is None or assign is not None else float(
            np.mean(classes != result.classes))
        matrices, origins, sigma2 = result.matrices, result.origins_px, result.sigma2
        classes, distribution = result.classes, result.distribution
        maps = [r.map for r in result.reconstructions]
        denominators = [[math.inf] * (box // 2 + 1) if r.denominator is None
                        else r.denominator.tolist() for r in result.reconstructions]
        occupied = [r.resolution_A for r, share in zip(result.reconstructions, distribution,
                                                       strict=True) if share > 0.5 / len(ps)]
        resolution = next_resolution(resolution, min(occupied, default=options.ini_high_A),
                                     box * pixel_size, options.incr_shells)
        history.append({
            "iteration": iteration, "distribution": distribution.tolist(),
            "resolution_A": [r.resolution_A for r in result.reconstructions],
            "class_changes": moved, "mean_angle_change_deg": change,
            "fine_radius_px": settings.fine_radius_px,
            "seconds": time.perf_counter() - tick})
        ps = outputs.with_poses(ps, matrices, origins, pixel_size, result.max_probability,
                                result.log_likelihood, classes + 1)
        if ctx.main:
            write_iteration(out, iteration, ps, result, settings, options.tau2_fudge, relion30)
            ClassState(iteration, resolution, distribution.tolist(), sigma2.tolist(),
                       asdict(options), history, elapsed + time.perf_counter() - start,
                       denominators).save(
                outputs.state_path(out, iteration))
            shares = " ".join(f"{100 * s:.0f}%" for s in distribution)
            print(f"iteration {iteration:03d}: classes {shares}, {100 * moved:.1f} % changed "
                  f"class, best {resolution:.1f} Å, mean pose change {change:.2f}° "
                  f"({time.perf_counter() - tick:.0f} s)")
        ctx.barrier()

    return finish(out, ctx, command, options, elapsed + time.perf_counter() - start, ps,
                  maps, distribution, history, pixel_size)


def finish(out: Path, ctx: Context, command: list[str] | None, options, seconds: float,
           ps: ParticleSet, maps: list[torch.Tensor], distribution: np.ndarray,
           history: list[dict], pixel_size_A: float) -> ClassifyResult:
    """The end of a classification or initial-model job: pictures and ``job.json`` (rank 0)
    and the result."""
    if ctx.main:
        write_final(out, len(history), maps, history, distribution)
        outputs.write_job_json(out, command, options, seconds, len(history), history)
    ctx.barrier()
    last = history[-1]["resolution_A"] if history else [math.nan] * len(maps)
    recons = [Reconstruction(m, pixel_size_A, int(round(s * len(ps))), resolution_A=r)
              for m, s, r in zip(maps, distribution, last, strict=True)]
    return ClassifyResult(recons, distribution, ps, len(history), history)
