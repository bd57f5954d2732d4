"""De novo initial model from subtomograms alone (``relion_refine --denovo_3dref``).

We use stochastic (online) expectation-maximisation rather than RELION's gradient descent: each
iteration searches a random mini-batch globally (the same :func:`subtomo.refine.expectation.
expectation` as classification, so K > 1 works) against the current maps, and the sufficient
statistics of the reconstruction (Σ C X and Σ C² per class and half set, scaled to the whole
data set) are blended into running ones with a step ``η_t = max(2 / (t + 1), η_min)``. The maps
are the Wiener reconstructions of the running statistics, with τ² from the FSC of their half
sets. Online EM needs no learning rate or momentum to tune, stays on the scale of the data, and
is what gradient steps on the likelihood approximate (Cappé & Moulines 2009).

Schedule (RELION's options): ``iter_ini`` iterations at ``ini_high`` with mini-batches of
``batch_ini``, ``iter_inbetween`` iterations over which the resolution goes to ``final_high``
and the batch to ``batch_final``, then ``iter_final`` at ``final_high``; the HEALPix order goes
up from ``healpix_order`` when the step gets too coarse for the resolution. The last iteration
is one full EM iteration over all particles, so every particle leaves with a pose and class.

The start is the reconstruction of a random mini-batch at random orientations (a blob with the
particles' mass distribution) low-passed to ``ini_high``. The hand of the result is arbitrary
(subtomograms alone cannot tell it): check it against known features and flip if needed.

Files (RELION's ``InitialModel/jobNNN`` layout), every ``checkpoint_every`` iterations and at the
last: ``run_itNNN_classKKK.mrc``, ``run_itNNN_data.star``, ``run_itNNN_model.star`` and our resume
state ``run_itNNN_optimiser.{json,pt}`` (only the newest statistics are kept); at the end
``run_classes.png``, ``run_class_occupancy.png`` and ``job.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Unpack

import numpy as np
import torch

from subtomo import memory
from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.grid import lowpass_map
from subtomo.fourier.projector import Backprojector
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.healpix import angular_step_deg
from subtomo.geometry.so3 import random_rotations
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io.files import atomic_path, undone_on_input_error
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine import outputs
from subtomo.refine.expectation import Model, Poses, expectation, insertion_radius_px
from subtomo.refine.images import background_weights, iterate_batches
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
    run_job,
    search_radii,
)
from subtomo.refine.reconstruct import image_box, insert_symmetric, reconstruct_classes


@dataclass
class InitialModelOptions(JobOptions):
    """Options of ``subtomo initial-model`` (:class:`JobOptions` and these)."""

    ini_high_A: float = 35.0
    healpix_order: int = 1
    K: int = 1
    iter_ini: int = 25
    iter_inbetween: int = 100
    iter_final: int = 25
    final_high_A: float = 15.0
    batch_ini: int = 100
    batch_final: int = 500
    max_healpix_order: int = 2
    tau2_fudge: float = 1.0
    min_step: float = 0.1  # η_min
    checkpoint_every: int = 10
    min_posterior: float = 1e-3

    @property
    def n_iter(self) -> int:
        return self.iter_ini + self.iter_inbetween + self.iter_final


ModelJob = Job[InitialModelOptions]


@dataclass(kw_only=True)
class ModelLoop(JobState):
    """The state between iterations: the running reconstruction statistics per class and half
    set (``None`` before the first) and the last iteration written."""

    running: list[list[Backprojector]] | None
    last_written: int


def schedule(options: InitialModelOptions, iteration: int, n_particles: int,
             diameter_A: float) -> tuple[float, int, int]:
    """Resolution (Å), mini-batch size and HEALPix order of ``iteration`` (1-based); the
    last iteration takes every particle."""
    o = options
    if iteration >= o.n_iter:
        resolution, batch = o.final_high_A, n_particles
    elif iteration <= o.iter_ini:
        resolution, batch = o.ini_high_A, o.batch_ini
    elif iteration <= o.iter_ini + o.iter_inbetween:
        f = (iteration - o.iter_ini) / max(o.iter_inbetween, 1)
        # linear in frequency, as the resolution gains are
        resolution = 1 / ((1 - f) / o.ini_high_A + f / o.final_high_A)
        batch = round(o.batch_ini + f * (o.batch_final - o.batch_ini))
    else:
        resolution, batch = o.final_high_A, o.batch_final
    # finer sampling once the fine step would move the particle's rim by over half the
    # resolution
    order = o.healpix_order
    while (order < o.max_healpix_order
           and angular_step_deg(order) / 2 > math.degrees(resolution / diameter_A)):
        order += 1
    return resolution, min(batch, n_particles), order


def step_size(options: InitialModelOptions, iteration: int) -> float:
    """η_t of the running statistics (1 at the first and the last, full, iteration)."""
    if iteration >= options.n_iter:
        return 1.0
    return max(2.0 / (iteration + 1), options.min_step)


def _blend(running: list[list[Backprojector]] | None, new: list[list[Backprojector]],
           eta: float, scale: float) -> list[list[Backprojector]]:
    """running ← (1 − η) running + η · scale · new (in place in ``new`` when starting)."""
    for k, pair in enumerate(new):
        for h, bp in enumerate(pair):
            bp.data *= eta * scale
            bp.weight *= eta * scale
            if running is not None and eta < 1:
                bp.data += (1 - eta) * running[k][h].data
                bp.weight += (1 - eta) * running[k][h].weight
    return new


def _copy(bps: list[list[Backprojector]]) -> list[list[Backprojector]]:
    """Copies (reconstruction merges half 2 into half 1)."""
    out = []
    for pair in bps:
        row = []
        for bp in pair:
            c = Backprojector(bp.box, pad=bp.pad, device=bp.device)
            c.data, c.weight = bp.data.clone(), bp.weight.clone()
            row.append(c)
        out.append(row)
    return out


def random_start(ps: ParticleSet, options: InitialModelOptions, box: int, pixel_size_A: float,
                 device: torch.device | str, ctx: Context) -> torch.Tensor:
    """A mini-batch reconstructed at random orientations (and origins as given), with the
    symmetry imposed, low-passed to ``ini_high``."""
    gen = torch.Generator().manual_seed(options.seed)
    rows = np.sort(torch.randperm(len(ps), generator=gen)[:options.batch_ini].numpy())
    A = euler_to_matrix(random_rotations(len(rows), gen)).to(device=device,
                                                              dtype=torch.float32)
    origins = torch.as_tensor(ps.volume_poses()[1] / pixel_size_A, dtype=torch.float32,
                              device=device)
    ops = symmetry_operators(options.sym, dtype=torch.float32, device=device)
    bp = Backprojector(box, pad=options.pad, device=device)
    position = {int(r): i for i, r in enumerate(rows)}
    batch_size = memory.streaming_batch(options.batch_size, box, options.ctf,
                                        options.max_memory_gib, device)
    for batch in iterate_batches(ps, ctx.shard(rows), box=box, ctf=options.ctf,
                                 batch_size=batch_size, device=device, shifts_px=origins,
                                 background=background_weights(box, None, device)):
        at = torch.as_tensor([position[int(r)] for r in batch.rows], device=device)
        insert_symmetric(bp, batch.spectra, A[at], batch.ctf, ops)
    ctx.sum_(bp.data)
    ctx.sum_(bp.weight)
    volume = bp.reconstruct(wiener_constant=0.1 * float(bp.weight.mean()) * options.pad**3)
    return lowpass_map(volume, pixel_size_A, options.ini_high_A)


def _state_tensors(out: Path, iteration: int) -> Path:
    return out / f"run_it{iteration:03d}_optimiser.pt"


def _state_tensors(out: Path, iteration: int) -> Path:
    return out / f"run_it{iteration:03d}_optimiser.pt"


def _save_state(out: Path, iteration: int, running: list[list[Backprojector]]) -> None:
    """The running statistics of ``iteration`` (written before the JSON state)."""
    tensors = {"data": [[bp.data.cpu() for bp in pair] for pair in running],
               "weight": [[bp.weight.cpu() for bp in pair] for pair in running]}
    with atomic_path(_state_tensors(out, iteration)) as tmp:
        torch.save(tensors, tmp)


def _load_running(job: ModelJob, iteration: int) -> list[list[Backprojector]]:
    """The running statistics saved with ``iteration``."""
    o = job.options
    saved = torch.load(_state_tensors(job.out, iteration), map_location=job.device)
    running = [[Backprojector(job.box, pad=o.pad, device=job.device) for _ in (1, 2)]
               for _ in range(o.K)]
    for k in range(o.K):
        for h in (0, 1):
            running[k][h].data = saved["data"][k][h]
            running[k][h].weight = saved["weight"][k][h]
    return running


def search_settings(options: InitialModelOptions, iteration: int, resolution_A: float,
                    order: int, box: int, pixel_size_A: float,
                    diameter_A: float) -> SearchSettings:
    """A global search at ``order`` up to ``resolution_A`` (with RELION's perturbation)."""
    coarse, fine = search_radii(resolution_A, order, box, pixel_size_A, diameter_A, True)
    return SearchSettings(
        order=order, offset_range_px=options.offset_range_px,
        offset_step_px=options.offset_step_px, coarse_radius_px=coarse, fine_radius_px=fine,
        sym=options.sym, top_k=options.top_k, perturb_deg=0.5 * angular_step_deg(order),
        seed=options.seed + iteration)


class InitialModelSteps(JobSteps[InitialModelOptions, ModelLoop]):
    """The initial model's steps of the job skeleton (:func:`subtomo.refine.job.run_job`)."""

    def start(self, job: ModelJob, ps: ParticleSet) -> ModelLoop:
        """Iteration 0: K copies of a random start, the particles' own noise power."""
        o = job.options
        poses = Poses(*outputs.volume_poses(ps, job.pixel_size_A))
        sigma2 = job.initial_sigma2(ps, poses.origins_px, job.particle_mask)
        first = random_start(ps, o, job.box, job.pixel_size_A, job.device, job.ctx)
        return ModelLoop(iteration=0, particles=ps, poses=poses, sigma2=sigma2,
                         maps=[first] * o.K, distribution=np.full(o.K, 1.0 / o.K),
                         history=[], running=None, last_written=0)

    def resume(self, job: ModelJob, ps: ParticleSet, saved: Path) -> ModelLoop:
        state = ClassState.load(saved)
        done, maps, poses = job.read_finished(state.iteration, ps, class_names(job.options.K))
        return ModelLoop(iteration=state.iteration, particles=done, poses=poses,
                         sigma2=np.asarray(state.sigma2), maps=maps,
                         distribution=np.asarray(state.distribution), history=state.history,
                         elapsed_s=state.elapsed_s,
                         running=_load_running(job, state.iteration),
                         last_written=state.iteration)

    def done(self, job: ModelJob, state: ModelLoop) -> bool:
        return state.iteration >= job.options.n_iter

    def iterate(self, job: ModelJob, state: ModelLoop) -> None:
        """Search a mini-batch, blend its statistics into the running ones, reconstruct;
        write a checkpoint when due (rank 0)."""
        o, it, n, px = job.options, state.iteration, len(state.particles), job.pixel_size_A
        tick = time.perf_counter()
        resolution, batch, order = schedule(o, it, n, job.diameter_A)
        # each iteration's mini-batch depends only on the seed and the iteration (resumable)
        rows = np.sort(np.random.default_rng([o.seed, it]).choice(n, size=batch,
                                                                  replace=False))
        settings = search_settings(o, it, resolution, order, job.box, px, job.diameter_A)
        step = job.e_step(settings, insertion_radius_px(resolution, job.box, px),
                          min_posterior=o.min_posterior)
        model = Model((state.maps, state.maps), state.distribution, state.sigma2)
        e = expectation(job.data(state.particles), rows, model, state.poses, step, job.ctx,
                        progress=job.progress and batch >= n, desc=f"iteration {it:03d}")
        eta = step_size(o, it)
        state.running = _blend(state.running, e.backprojectors, eta, n / len(rows))
        recons = reconstruct_classes(_copy(state.running), px, o.pad, o.tau2_fudge)
        state.maps = [r.map for r in recons]
        shares = (e.posterior_sums / len(rows)).cpu().numpy()
        state.distribution = (1 - eta) * state.distribution + eta * shares
        state.sigma2 = (1 - eta) * state.sigma2 + eta * e.sigma2(state.sigma2)
        seen = np.zeros(n, dtype=bool)
        seen[rows] = True
        matrices, origins = state.poses.matrices, state.poses.origins_px
        matrices[seen], origins[seen] = e.matrices[seen], e.origins_px[seen]
        state.history.append({
            "iteration": it, "distribution": state.distribution.tolist(),
            "resolution_A": [r.resolution_A for r in recons], "search_resolution_A": resolution,
            "healpix_order": order, "batch": int(len(rows)), "step": eta,
            "seconds": time.perf_counter() - tick})
        if it % o.checkpoint_every == 0 or it == o.n_iter:
            classes = np.where(seen, e.classes, 0)
            state.particles = outputs.with_poses(state.particles, matrices, origins, px,
                                                 e.max_probability, e.log_likelihood,
                                                 classes + 1)
            if job.ctx.main:
                self._checkpoint(job, state, recons, settings, resolution)
                print(f"iteration {it:03d}: search {resolution:.1f} Å, order {order}, "
                      f"batch {len(rows)}, map "
                      f"{min(r.resolution_A for r in recons):.1f} Å at FSC 0.143")
            state.last_written = it
            job.ctx.barrier()

    @staticmethod
    def _checkpoint(job: ModelJob, state: ModelLoop, recons: list, settings: SearchSettings,
                    resolution_A: float) -> None:
        """The iteration's files, then the running statistics and the JSON state; only the
        newest statistics are kept."""
        o, it = job.options, state.iteration
        outputs.write_class_iteration(job.out, it, state.particles, recons, state.distribution,
                                      state.sigma2, settings, o.tau2_fudge, job.relion30)
        _save_state(job.out, it, state.running)
        ClassState(it, resolution_A, state.distribution.tolist(), state.sigma2.tolist(),
                   asdict(o), state.history, job.seconds(state.elapsed_s)).save(
            outputs.state_path(job.out, it))
        old = _state_tensors(job.out, state.last_written)
        if state.last_written != it and old.exists():
            old.unlink()

    def write_final(self, job: ModelJob, state: ModelLoop) -> None:
        outputs.write_class_plots(job.out, state.maps, state.history, state.distribution)


@undone_on_input_error("out_dir")
def initial_model(
    ps: ParticleSet, out_dir: str | Path, *, options: InitialModelOptions | None = None,
    **run: Unpack[JobRun],
) -> ClassifyResult:
    """Build ``options.K`` maps de novo from ``ps`` into the job folder ``out_dir``; ``run``:
    device, ranks, ``continue_from`` (resume from the last checkpoint there) and the rest of
    :class:`subtomo.refine.job.JobRun`."""
    options = options or InitialModelOptions()
    if options.K < 1 or options.n_iter < 1 or options.batch_ini < 1:
        raise InputError(None, "--K, the iteration counts and --batch_ini must be positive",
                         field="--K")
    started = time.perf_counter()
    box = image_box(ps)
    box, pixel_size_A = check_inputs(ps, torch.zeros(box, box, box), 0.0, "", None, None,
                                     options)
    job, ps = Job.set_up(ps, out_dir, options, box, pixel_size_A, started, **run)
    return class_result(job, run_job(job, InitialModelSteps(), ps))
