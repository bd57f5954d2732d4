"""The skeleton of a refinement job (auto-refine, classification, initial model).

A job checks its inputs, fixes what does not change between iterations (:class:`Job`: box,
pixel size, particle mask, half sets, folder, ranks), starts (:meth:`JobSteps.start`) or resumes
after the last finished iteration (:meth:`JobSteps.resume`, ``--continue``), iterates
(:meth:`JobSteps.iterate`) while :meth:`JobSteps.done` says not, and finishes: the final files
(:meth:`JobSteps.write_final`), ``job.json``. :func:`run_job` writes that order once; each
driver states only its own steps. What one iteration hands to the next is a :class:`JobState`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Generic, TypedDict, TypeVar, Unpack

import numpy as np
import torch

from subtomo import memory
from subtomo.align.score import Frequencies, noise_power
from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.grid import soft_sphere
from subtomo.geometry.healpix import angular_step_deg
from subtomo.geometry.symmetry import symmetric_distance_deg, symmetry_operators
from subtomo.io import validate
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine import outputs
from subtomo.refine.expectation import EStepSettings, Particles, Poses, masked
from subtomo.refine.images import background_weights, check_files, iterate_batches
from subtomo.refine.reconstruct import Reconstruction, half_sets, image_box


@dataclass
class JobOptions:
    """Options every refinement job has (RELION's names; Å, px and degrees as named)."""

    ini_high_A: float = 30.0
    sym: str = "C1"
    particle_diameter_A: float | None = None
    healpix_order: int = 2
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    ctf: bool = False
    pad: int = 2
    batch_size: int = 32
    top_k: int = 2
    seed: int = 0
    max_memory_gib: float | None = None  # memory budget (None: automatic)


Opts = TypeVar("Opts", bound=JobOptions)  # a driver's options


class JobRun(TypedDict, total=False):
    """How a job runs (the keywords every driver takes): device, ranks, ``--continue``, STAR
    flavour of the outputs, progress bars and the command line recorded in ``job.json``."""

    device: str | torch.device
    ctx: Context | None
    continue_from: bool
    relion30: bool
    progress: bool
    command: list[str] | None


@dataclass
class Job(Generic[Opts]):
    """What stays fixed through a job: folder, options, box (px), pixel size (Å), the
    diameter (Å) and soft sphere of the particle mask, half sets, device and ranks."""

    out: Path
    options: Opts
    box: int
    pixel_size_A: float
    diameter_A: float
    particle_mask: torch.Tensor | None
    halves: np.ndarray
    device: str | torch.device = "cpu"
    ctx: Context = field(default_factory=Context)
    continue_from: bool = False
    relion30: bool = False
    progress: bool = True
    command: list[str] | None = None
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def set_up(cls, ps: ParticleSet, out_dir: str | Path, options: Opts, box: int,
               pixel_size_A: float, started: float, **run: Unpack[JobRun]
               ) -> tuple[Job[Opts], ParticleSet]:
        """The job and ``ps`` with its half sets; the particle diameter defaults to 0.8 of
        the box, the mask is a soft sphere of ``particle_diameter_A`` when given."""
        run["ctx"] = run.get("ctx") or Context()
        mask = None
        if options.particle_diameter_A:
            mask = soft_sphere(box, options.particle_diameter_A / pixel_size_A,
                               device=run.get("device", "cpu"))
        halves = half_sets(ps, options.seed)
        job = cls(Path(out_dir), options, box, pixel_size_A,
                  options.particle_diameter_A or 0.8 * box * pixel_size_A, mask, halves,
                  started=started, **run)
        return job, outputs.with_halves(ps, halves)

    def seconds(self, elapsed_s: float) -> float:
        """Wall time of the run: ``elapsed_s`` before a resume plus this session's."""
        return elapsed_s + time.perf_counter() - self.started

    def data(self, ps: ParticleSet) -> Particles:
        """The particles as an E step reads them."""
        return Particles(ps, self.halves, self.box, self.particle_mask, self.device)

    def e_step(self, search: SearchSettings, insert_radius_px: float | None, *,
               zero_mask: bool = True, min_posterior: float = 1e-3) -> EStepSettings:
        """The settings of one E step from the options and the iteration's search."""
        o = self.options
        return EStepSettings(search, pad=o.pad, ctf=o.ctf, batch_size=o.batch_size,
                             max_memory_gib=o.max_memory_gib, zero_mask=zero_mask,
                             min_posterior=min_posterior, insert_radius_px=insert_radius_px)

    def initial_sigma2(self, ps: ParticleSet, origins_px: np.ndarray,
                       mask: torch.Tensor | None) -> np.ndarray:
        """:func:`initial_sigma2` of all particles at ``origins_px``."""
        return initial_sigma2(ps, np.arange(len(ps)), self.box, self.options.ctf,
                              torch.as_tensor(origins_px, dtype=torch.float32,
                                              device=self.device),
                              mask, self.device, self.ctx, self.options.batch_size,
                              self.options.max_memory_gib)

    def read_finished(self, iteration: int, ps: ParticleSet, names: list[str]
                      ) -> tuple[ParticleSet, list[torch.Tensor], Poses]:
        """Particles, maps ``run_itNNN_<name>.mrc`` (on the device) and poses of a finished
        iteration (to continue from it)."""
        done, maps = outputs.read_iteration(self.out, iteration, ps, names)
        return done, [m.to(self.device) for m in maps], Poses(
            *outputs.volume_poses(replace(done, series=ps.series), self.pixel_size_A))


@dataclass
class JobState:
    """What one iteration hands to the next: the iteration done, particles (with their last
    poses), poses, noise power per shell, maps, class distribution, history and the wall time
    of the sessions before this one."""

    iteration: int
    particles: ParticleSet
    poses: Poses
    sigma2: np.ndarray
    maps: list[torch.Tensor]
    distribution: np.ndarray
    history: list[dict]
    elapsed_s: float = 0.0


class SavedState:
    """A resume state saved as ``run_itNNN_optimiser.json`` (a dataclass's fields)."""

    KIND = "refinement"

    def save(self, path: Path) -> None:
        outputs.save_json(asdict(self), path)

    @classmethod
    def decode(cls, data: dict) -> SavedState:
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> SavedState:
        try:
            return cls.decode(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InputError(path, f"not a {cls.KIND} state file ({exc})") from None


S = TypeVar("S", bound=JobState)  # a driver's state between iterations


class JobSteps(Generic[Opts, S]):
    """What a driver states: its start, resume, iteration, end condition and final files."""

    def start(self, job: Job[Opts], ps: ParticleSet) -> S:
        """The state before iteration 1 (the job folder exists)."""
        raise NotImplementedError

    def resume(self, job: Job[Opts], ps: ParticleSet, saved: Path) -> S:
        """The state after the iteration saved in ``saved``."""
        raise NotImplementedError

    def resumed_note(self, state: S) -> str:
        return ""

    def done(self, job: Job[Opts], state: S) -> bool:
        raise NotImplementedError

    def iterate(self, job: Job[Opts], state: S) -> None:
        """Iteration ``state.iteration`` (already counted): update ``state``, write its files."""
        raise NotImplementedError

    def complete(self, job: Job[Opts], state: S) -> None:
        """After the last iteration, on every rank (nothing by default)."""

    def write_final(self, job: Job[Opts], state: S) -> None:
        """The final files (rank 0)."""

    def summary(self, state: S) -> dict:
        """Extra entries of ``job.json``."""
        return {}


def run_job(job: Job[Opts], steps: JobSteps[Opts, S], ps: ParticleSet) -> S:
    """Start (or resume with ``job.continue_from``), iterate until done, write the final
    files and ``job.json``; every rank returns the last state."""
    if job.continue_from:
        state = steps.resume(job, ps, outputs.last_state(job.out))
        if job.ctx.main:
            print(f"Continuing {job.out} after iteration {state.iteration}"
                  f"{steps.resumed_note(state)}.")
    else:
        outputs.prepare_job_dir(job.out, job.ctx)
        state = steps.start(job, ps)
    while not steps.done(job, state):
        state.iteration += 1
        steps.iterate(job, state)
    steps.complete(job, state)
    if job.ctx.main:
        steps.write_final(job, state)
        outputs.write_job_json(job.out, job.command, job.options, job.seconds(state.elapsed_s),
                               state.iteration, state.history, **steps.summary(state))
    job.ctx.barrier()
    return state


# ---- the checks and helpers of every driver


def check_inputs(ps: ParticleSet, reference: torch.Tensor, reference_pixel_size_A: float,
                 reference_path: str | Path, mask: torch.Tensor | None,
                 mask_path: str | Path | None, options: JobOptions) -> tuple[int, float]:
    """Box (px) and pixel size (Å) of the particles, after checking the reference and mask."""
    if len(ps) < 2:
        raise InputError(ps.source, "refinement needs at least two particles")
    pixel_sizes_A = ps.pixel_size_A()
    if not np.all(np.isfinite(pixel_sizes_A)):
        raise InputError(ps.source, "particles have no pixel size", field="rlnImagePixelSize")
    validate.positive(pixel_sizes_A, ps.source, field="rlnImagePixelSize", what="pixel size",
                      unit="Å", rows=np.arange(1, len(ps) + 1))
    pixel_size_A, box = float(pixel_sizes_A[0]), image_box(ps)
    validate.volume(reference, reference_path, what="reference")
    if mask is not None:
        validate.volume(mask, mask_path, what="mask")
    if tuple(reference.shape) != (box, box, box):
        raise InputError(reference_path, f"reference is {tuple(reference.shape)}, particles "
                         f"are {box}³", field="box size")
    if (reference_pixel_size_A > 0
            and abs(reference_pixel_size_A - pixel_size_A) > 0.01 * pixel_size_A):
        raise InputError(reference_path, f"reference pixel size {reference_pixel_size_A:.3f} Å, "
                         f"particles {pixel_size_A:.3f} Å", field="pixel size")
    if mask is not None:
        if tuple(mask.shape) != (box, box, box):
            raise InputError(mask_path, f"mask is {tuple(mask.shape)}, particles are {box}³",
                             field="box size")
        low, high = float(mask.min()), float(mask.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise InputError(mask_path, f"mask values must lie in [0, 1], found "
                             f"[{low:.3g}, {high:.3g}]", field="values")
    if options.ctf and ps.series is None and "rlnCtfImage" not in ps.particles:
        raise InputError(ps.source, "--ctf needs a 3D CTF volume per particle",
                         field="rlnCtfImage")
    try:
        symmetry_operators(options.sym)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from None
    check_files(ps, np.arange(len(ps)), options.ctf)
    return box, pixel_size_A


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


def pose_change_deg(before: np.ndarray, after: np.ndarray, sym: str = "C1") -> float:
    """Mean angular distance (degrees) between two sets of poses, symmetry mates equal."""
    return float(symmetric_distance_deg(torch.as_tensor(before), torch.as_tensor(after),
                                        sym).mean())


# ---- jobs of K classes (classification, initial model)


@dataclass
class ClassState(SavedState):
    """Everything a job of K classes needs to continue after ``iteration`` (JSON)."""

    KIND = "classification"

    iteration: int
    resolution_A: float
    distribution: list[float]
    sigma2: list[float]
    options: dict
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    denominators: list[list[float]] | None = None


@dataclass
class ClassifyResult:
    """The finished run: class maps, distribution, particles with classes, history."""

    reconstructions: list[Reconstruction]
    distribution: np.ndarray
    particles: ParticleSet
    iterations: int
    history: list[dict]


def class_names(k_classes: int) -> list[str]:
    """The map names of K classes in an iteration's files (``run_itNNN_<name>.mrc``)."""
    return [f"class{k:03d}" for k in range(1, k_classes + 1)]


def class_result(job: Job, state: JobState) -> ClassifyResult:
    """The result of a job of K classes from its last state."""
    maps, history, ps = state.maps, state.history, state.particles
    last = history[-1]["resolution_A"] if history else [math.nan] * len(maps)
    recons = [Reconstruction(m, job.pixel_size_A, int(round(s * len(ps))), resolution_A=r)
              for m, s, r in zip(maps, state.distribution, last, strict=True)]
    return ClassifyResult(recons, state.distribution, ps, len(history), history)
