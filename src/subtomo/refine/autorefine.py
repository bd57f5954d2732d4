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

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from subtomo import memory
from subtomo.align.score import Frequencies, noise_power
from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.grid import lowpass_map, soft_sphere
from subtomo.geometry.healpix import angular_step_deg
from subtomo.geometry.symmetry import symmetric_distance_deg, symmetry_operators
from subtomo.io import validate
from subtomo.io.files import undone_on_input_error
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine.expectation import expectation, insertion_radius_px, masked
from subtomo.refine.greyscale import reference_scale
from subtomo.refine.images import background_weights, check_files, iterate_batches
from subtomo.refine.reconstruct import (
    Reconstruction,
    gold_standard,
    half_sets,
    image_box,
)

MAX_ORDER = 6


@dataclass
class RefineOptions:
    """Options of ``subtomo refine`` (RELION's names; Å, px and degrees as named)."""

    ini_high_A: float = 30.0
    sym: str = "C1"
    particle_diameter_A: float | None = None
    healpix_order: int = 2
    auto_local_healpix_order: int = 4
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    ctf: bool = False
    firstiter_cc: bool = False
    zero_mask: bool = False  # RELION's default: noise outside the particle mask
    greyscale: bool = True  # measure the reference's scale before iteration 1
    flatten_solvent: bool = False
    pad: int = 2
    max_iter: int = 25
    batch_size: int = 32
    top_k: int = 2
    seed: int = 0
    max_memory_gib: float | None = None  # memory budget (None: automatic)


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
class IterationResult:
    """What one iteration produced (on every rank)."""

    matrices: np.ndarray  # (N, 3, 3) full RELION rotations
    origins_px: np.ndarray  # (N, 3)
    max_probability: np.ndarray
    log_likelihood: np.ndarray
    reconstruction: Reconstruction
    sigma2: np.ndarray  # noise power per shell


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


def search_radii(resolution_A: float, order: int, box: int, pixel_size_A: float,
                 diameter_A: float, first: bool, final: bool = False) -> tuple[float, float]:
    """Coarse and fine frequency radii (px) of a search at ``resolution_A`` and ``order``.

    Fine pass: up to 3 shells beyond the resolution (just the resolution in the first
    iteration; Nyquist in the final one, RELION's ``do_use_all_data``). Coarse pass: up to the
    radius where the coarse step moves the particle's rim by half a period, and at most 0.6
    of the resolution's fine radius (it only has to find the neighbourhood), at least 5 px;
    the final iteration keeps that coarse pass (widened with the fine pass to 0.6 Nyquist, the
    coarse pass meets the half-period limit and its grid misses the peaks)."""
    shell = box * pixel_size_A / resolution_A
    searched = min(box / 2, shell if first else shell + 3)
    fine = box / 2 if final else searched
    step = math.radians(angular_step_deg(order))
    rim_px = diameter_A / 2 / pixel_size_A
    coarse = min(0.6 * searched, box / (2 * step * rim_px))
    return min(fine, max(5.0, coarse)), fine


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


def initial_sigma2(ps: ParticleSet, rows: np.ndarray, box: int, ctf: bool,
                   origins_px: torch.Tensor, mask: torch.Tensor | None,
                   device: torch.device | str, ctx: Context, batch_size: int,
                   max_memory_gib: float | None = None) -> np.ndarray:
    """Noise power per shell from the particles' own power on measured coefficients (an upper
    bound, as RELION starts), from up to 256 particles."""
    freqs = Frequencies.within(box, box / 2, device)
    n_shells = box // 2 + 1
    sums = torch.zeros(n_shells, dtype=torch.float64, device=device)
    counts = torch.zeros_like(sums)
    sample = ctx.shard(rows[:: max(1, len(rows) // 256)])
    zero_shift = torch.zeros(1, 3, device=device)
    batch_size = memory.streaming_batch(batch_size, box, ctf, max_memory_gib, device)
    for batch in iterate_batches(ps, sample, box=box, ctf=ctf, batch_size=batch_size,
                                 device=device, shifts_px=origins_px,
                                 background=background_weights(box, mask, device)):
        spectra = masked(batch.spectra, mask, box)
        zeros = torch.zeros(len(batch.rows), len(freqs), dtype=spectra.dtype, device=device)
        s, c = noise_power(spectra, batch.ctf, freqs, zero_shift.expand(len(batch.rows), 3),
                           zeros, n_shells)
        sums += s
        counts += c
    ctx.sum_(sums)
    ctx.sum_(counts)
    return (sums / counts.clamp(min=1)).cpu().numpy()


def run_iteration(
    ps: ParticleSet, references: list[torch.Tensor], halves: np.ndarray, matrices: np.ndarray,
    origins_px: np.ndarray, sigma2: np.ndarray, settings: SearchSettings, options: RefineOptions,
    *, box: int, pixel_size_A: float, mask: torch.Tensor | None, device: torch.device | str,
    ctx: Context, progress: bool = True, desc: str = "", resolution_A: float | None = None,
) -> IterationResult:
    """One E step (:func:`subtomo.refine.expectation.expectation`, one class, each half set
    against its own half map) and the gold-standard M step. ``resolution_A``: the current
    resolution, which limits the inserted frequencies (:func:`subtomo.refine.expectation.
    insert_radius_px`; ``None``: all, up to Nyquist)."""
    if resolution_A is None:
        resolution_A = 2 * pixel_size_A
    e = expectation(ps, np.arange(len(ps)), ([references[0]], [references[1]]), np.ones(1),
                    halves, matrices, origins_px, sigma2, settings, options, box=box,
                    mask=mask, device=device, ctx=ctx, progress=progress, desc=desc,
                    insert_radius_px=insertion_radius_px(resolution_A, box, pixel_size_A))
    recon = gold_standard(*e.backprojectors[0], pixel_size_A, options.pad)
    recon.n_particles = len(ps)
    return IterationResult(e.matrices, e.origins_px, e.max_probability, e.log_likelihood,
                           recon, e.sigma2(sigma2))


@dataclass
class RefineState:
    """Everything needed to continue after iteration ``iteration`` (JSON-serialisable)."""

    iteration: int
    schedule: Schedule
    sigma2: list[float]
    options: dict
    elapsed_s: float = 0.0

    def save(self, path: Path) -> None:
        from subtomo.refine.outputs import save_json

        save_json(asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> RefineState:
        try:
            data = json.loads(Path(path).read_text())
            data["schedule"] = Schedule(**data["schedule"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InputError(path, f"not a refine state file ({exc})") from None


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


def pose_change_deg(before: np.ndarray, after: np.ndarray, sym: str = "C1") -> float:
    """Mean angular distance (degrees) between two sets of poses, symmetry mates equal."""
    return float(symmetric_distance_deg(torch.as_tensor(before), torch.as_tensor(after),
                                        sym).mean())


def check_inputs(ps: ParticleSet, reference: torch.Tensor, reference_apix: float,
                 reference_path: str | Path, mask: torch.Tensor | None,
                 mask_path: str | Path | None, options: RefineOptions) -> tuple[int, float]:
    """Box (px) and pixel size (Å) of the particles, after checking the reference and mask."""
    if len(ps) < 2:
        raise InputError(ps.source, "refinement needs at least two particles")
    apix = ps.pixel_size_A()
    if not np.all(np.isfinite(apix)):
        raise InputError(ps.source, "particles have no pixel size", field="rlnImagePixelSize")
    validate.positive(apix, ps.source, field="rlnImagePixelSize", what="pixel size", unit="Å",
                      rows=np.arange(1, len(ps) + 1))
    pixel_size, box = float(apix[0]), image_box(ps)
    validate.volume(reference, reference_path, what="reference")
    if mask is not None:
        validate.volume(mask, mask_path, what="mask")
    if tuple(reference.shape) != (box, box, box):
        raise InputError(reference_path, f"reference is {tuple(reference.shape)}, particles "
                         f"are {box}³", field="box size")
    if reference_apix > 0 and abs(reference_apix - pixel_size) > 0.01 * pixel_size:
        raise InputError(reference_path, f"reference pixel size {reference_apix:.3f} Å, "
                         f"particles {pixel_size:.3f} Å", field="pixel size")
    if mask is not None:
        if tuple(mask.shape) != (box, box, box):
            raise InputError(mask_path, f"mask is {tuple(mask.shape)}, particles are {box}³",
                             field="box size")
        low, high = float(mask.min()), float(mask.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise InputError(mask_path, f"mask values must lie in [0, 1], found "
                             f"[{low:.3g}, {high:.3g}]", field="values")
    if options.ctf and "rlnCtfImage" not in ps.particles:
        raise InputError(ps.source, "--ctf needs a 3D CTF volume per particle",
                         field="rlnCtfImage")
    try:
        symmetry_operators(options.sym)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from None
    check_files(ps, np.arange(len(ps)), options.ctf)
    return box, pixel_size


@dataclass
class RefineResult:
    """The converged run: final map, half maps, FSC, resolution, poses, iterations done."""

    reconstruction: Reconstruction
    particles: ParticleSet
    iterations: int
    converged: bool
    history: list[dict]


@undone_on_input_error("out_dir")
def auto_refine(
    ps: ParticleSet, reference: torch.Tensor, out_dir: str | Path, *,
    options: RefineOptions | None = None, solvent_mask: torch.Tensor | None = None,
    reference_path: str | Path = "reference", mask_path: str | Path | None = None,
    reference_apix: float = 0.0, device: str | torch.device = "cpu",
    ctx: Context | None = None, continue_from: bool = False, relion30: bool = False,
    progress: bool = True, command: list[str] | None = None,
) -> RefineResult:
    """Refine ``ps`` against ``reference`` into the job folder ``out_dir`` (RELION's layout).

    With ``continue_from``, resume after the last finished iteration found in ``out_dir``.
    """
    from subtomo.refine import outputs

    options = options or RefineOptions()
    ctx = ctx or Context()
    out = Path(out_dir)
    start = time.perf_counter()
    box, pixel_size = check_inputs(ps, reference, reference_apix, reference_path,
                                   solvent_mask, mask_path, options)
    diameter = options.particle_diameter_A or 0.8 * box * pixel_size
    particle_mask = None
    if options.particle_diameter_A:
        particle_mask = soft_sphere(box, options.particle_diameter_A / pixel_size,
                                    device=device)
    if solvent_mask is not None:
        solvent_mask = solvent_mask.to(device=device, dtype=torch.float32)
    elif options.flatten_solvent and particle_mask is not None:
        # relion_refine flattens with the particle-diameter sphere when no mask is given
        solvent_mask = particle_mask
    halves = half_sets(ps, options.seed)
    ps = outputs.with_halves(ps, halves)

    if continue_from:
        state_path = outputs.last_state(out)
        state = RefineState.load(state_path)
        iteration, schedule = state.iteration, state.schedule
        sigma2 = np.asarray(state.sigma2)
        elapsed = state.elapsed_s
        done = outputs.read_iteration(out, iteration, ps)
        ps, references = done.particles, done.half_maps
        matrices, origins = outputs.full_poses(ps, pixel_size)
        if ctx.main:
            print(f"Continuing {out} after iteration {iteration} "
                  f"({schedule.resolution_A:.2f} Å).")
    else:
        outputs.prepare_job_dir(out, ctx)
        iteration, elapsed = 0, 0.0
        schedule = Schedule(options.healpix_order, options.offset_range_px,
                            options.offset_step_px, options.ini_high_A,
                            local=options.healpix_order >= options.auto_local_healpix_order)
        matrices, origins = outputs.full_poses(ps, pixel_size)
        first = initial_reference(reference, pixel_size, options)
        # noise-filled particles (RELION's default) start from the unmasked particles' power
        sigma2 = initial_sigma2(ps, np.arange(len(ps)), box, options.ctf,
                                torch.as_tensor(origins, dtype=torch.float32, device=device),
                                particle_mask if options.zero_mask else None, device, ctx,
                                options.batch_size, options.max_memory_gib)
        if options.greyscale and not options.firstiter_cc:
            scale = reference_scale(
                ps, np.arange(len(ps)), first,
                search_settings(schedule, options, box, pixel_size, diameter, True, 1),
                sigma2, matrices, origins, box=box, ctf=options.ctf, mask=particle_mask,
                pad=options.pad, batch_size=options.batch_size, device=device, ctx=ctx)
            first = first * scale
            schedule.reference_scale = scale
            if ctx.main:
                print(f"reference greyscale: scaled by {scale:.4g} to the particles' "
                      "intensities")
        references = [first, first]

    recon = None
    while not schedule.final_done and (schedule.converged or iteration < options.max_iter):
        final = schedule.converged
        iteration += 1
        settings = search_settings(schedule, options, box, pixel_size, diameter,
                                   iteration == 1, iteration, final)
        searched = [reference_for_search(r, solvent_mask, options) for r in references]
        tick = time.perf_counter()
        result = run_iteration(ps, searched, halves, matrices, origins, sigma2, settings,
                               options, box=box, pixel_size_A=pixel_size, mask=particle_mask,
                               device=device, ctx=ctx, progress=progress,
                               desc=f"iteration {iteration:03d}",
                               resolution_A=schedule.resolution_A)
        recon = result.reconstruction
        change = pose_change_deg(matrices, result.matrices, options.sym)
        shift_change = float(np.sqrt(((result.origins_px - origins) ** 2).sum(1)).mean())
        matrices, origins, sigma2 = result.matrices, result.origins_px, result.sigma2
        references = [recon.half1, recon.half2]
        shell = int(round(box * pixel_size / recon.resolution_A))
        schedule.history.append({
            "iteration": iteration, "resolution_A": recon.resolution_A,
            "healpix_order": settings.order, "local": settings.local,
            "angular_step_deg": settings.step_deg, "offset_step_px": settings.offset_step_px,
            "offset_range_px": settings.offset_range_px,
            "search_radius_px": [settings.coarse_radius_px, settings.fine_radius_px],
            "mean_angle_change_deg": change, "mean_offset_change_px": shift_change,
            "final": final, "seconds": time.perf_counter() - tick})
        if final:
            schedule.final_done = True
        else:
            update_schedule(schedule, recon.resolution_A, shell, change, options, diameter)
        ps = outputs.with_poses(ps, matrices, origins, pixel_size, result.max_probability,
                                result.log_likelihood)
        if ctx.main:
            outputs.write_iteration(out, iteration, ps, recon, sigma2, settings, relion30)
            seconds = elapsed + time.perf_counter() - start
            RefineState(iteration, schedule, sigma2.tolist(), asdict(options),
                        seconds).save(outputs.state_path(out, iteration))
            print(f"iteration {iteration:03d}{' (final, to Nyquist)' if final else ''}: "
                  f"{recon.resolution_A:.2f} Å, order "
                  f"{settings.order}{' local' if settings.local else ''}, mean pose change "
                  f"{change:.2f}°, {shift_change:.2f} px ({time.perf_counter() - tick:.0f} s)")
        ctx.barrier()

    fresh = recon is not None
    if not fresh:  # continued a run that had already finished: its outputs stand
        recon = outputs.read_iteration(out, iteration, ps).reconstruction
    if ctx.main and (fresh or not (out / "run_class001.mrc").exists()):
        outputs.write_final(out, ps, recon, schedule, sigma2, relion30)
    if ctx.main:
        outputs.write_job_json(out, command, options, elapsed + time.perf_counter() - start,
                               iteration, schedule.history, converged=schedule.converged)
    ctx.barrier()
    return RefineResult(recon, ps, iteration, schedule.converged, schedule.history)
