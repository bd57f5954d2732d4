"""De novo initial model from subtomograms alone (``relion_refine --denovo_3dref``).

We use stochastic (online) expectation-maximisation rather than RELION's gradient descent: each
iteration searches a random mini-batch globally (the same :func:`subtomo.refine.classify.
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

import numpy as np
import torch

from subtomo import memory
from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.grid import lowpass_map, soft_sphere
from subtomo.fourier.projector import Backprojector
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.healpix import angular_step_deg
from subtomo.geometry.so3 import random_rotations
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io.files import atomic_path, undone_on_input_error
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine import outputs
from subtomo.refine.autorefine import (
    check_inputs,
    initial_sigma2,
    search_radii,
)
from subtomo.refine.classify import (
    ClassifyResult,
    ClassIteration,
    ClassState,
    finish,
    read_iteration,
    reconstruct_classes,
    write_iteration,
)
from subtomo.refine.expectation import expectation, insertion_radius_px
from subtomo.refine.images import background_weights, iterate_batches
from subtomo.refine.reconstruct import half_sets, image_box, insert_symmetric


@dataclass
class InitialModelOptions:
    """Options of ``subtomo initial-model`` (RELION's names; Å, px and degrees as named)."""

    K: int = 1
    sym: str = "C1"
    particle_diameter_A: float | None = None
    iter_ini: int = 25
    iter_inbetween: int = 100
    iter_final: int = 25
    ini_high_A: float = 35.0
    final_high_A: float = 15.0
    batch_ini: int = 100
    batch_final: int = 500
    healpix_order: int = 1
    max_healpix_order: int = 2
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    ctf: bool = False
    tau2_fudge: float = 1.0
    min_step: float = 0.1  # η_min
    checkpoint_every: int = 10
    pad: int = 2
    batch_size: int = 32
    top_k: int = 2
    min_posterior: float = 1e-3
    seed: int = 0
    max_memory_gib: float | None = None  # memory budget (None: automatic)

    @property
    def n_iter(self) -> int:
        return self.iter_ini + self.iter_inbetween + self.iter_final


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
    origins = torch.as_tensor(ps.shifts_A() / pixel_size_A, dtype=torch.float32, device=device)
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


@undone_on_input_error("out_dir")
def initial_model(
    ps: ParticleSet, out_dir: str | Path, *, options: InitialModelOptions | None = None,
    device: str | torch.device = "cpu", ctx: Context | None = None,
    continue_from: bool = False, relion30: bool = False, progress: bool = True,
    command: list[str] | None = None,
) -> ClassifyResult:
    """Build ``options.K`` maps de novo from ``ps`` into the job folder ``out_dir``; with
    ``continue_from``, resume from the last checkpoint there."""
    options = options or InitialModelOptions()
    ctx = ctx or Context()
    if options.K < 1 or options.n_iter < 1 or options.batch_ini < 1:
        raise InputError(None, "--K, the iteration counts and --batch_ini must be positive",
                         field="--K")
    out = Path(out_dir)
    start = time.perf_counter()
    box, pixel_size = _check(ps, options)
    diameter = options.particle_diameter_A or 0.8 * box * pixel_size
    particle_mask = None
    if options.particle_diameter_A:
        particle_mask = soft_sphere(box, options.particle_diameter_A / pixel_size,
                                    device=device)
    halves = half_sets(ps, options.seed)
    ps = outputs.with_halves(ps, halves)
    n = len(ps)

    if continue_from:
        state = ClassState.load(outputs.last_state(out))
        iteration, history, elapsed = state.iteration, state.history, state.elapsed_s
        sigma2, distribution = np.asarray(state.sigma2), np.asarray(state.distribution)
        ps, maps = read_iteration(out, iteration, ps, options.K)
        maps = [m.to(device) for m in maps]
        saved = torch.load(_state_tensors(out, iteration), map_location=device)
        running = [[Backprojector(box, pad=options.pad, device=device) for _ in (1, 2)]
                   for _ in range(options.K)]
        for k in range(options.K):
            for h in (0, 1):
                running[k][h].data = saved["data"][k][h]
                running[k][h].weight = saved["weight"][k][h]
        if ctx.main:
            print(f"Continuing {out} after iteration {iteration}.")
    else:
        outputs.prepare_job_dir(out, ctx)
        iteration, history, elapsed, running = 0, [], 0.0, None
        distribution = np.full(options.K, 1.0 / options.K)
        sigma2 = initial_sigma2(ps, np.arange(n), box, options.ctf,
                                torch.as_tensor(ps.shifts_A() / pixel_size, dtype=torch.float32,
                                                device=device),
                                particle_mask, device, ctx, options.batch_size,
                                options.max_memory_gib)
        first = random_start(ps, options, box, pixel_size, device, ctx)
        maps = [first] * options.K
    matrices, origins = outputs.full_poses(ps, pixel_size)
    last_written = iteration

    while iteration < options.n_iter:
        iteration += 1
        tick = time.perf_counter()
        resolution, batch, order = schedule(options, iteration, n, diameter)
        # each iteration's mini-batch depends only on the seed and the iteration (resumable)
        rows = np.sort(np.random.default_rng([options.seed, iteration]).choice(
            n, size=batch, replace=False))
        coarse, fine = search_radii(resolution, order, box, pixel_size, diameter, True)
        settings = SearchSettings(
            order=order, offset_range_px=options.offset_range_px,
            offset_step_px=options.offset_step_px, coarse_radius_px=coarse,
            fine_radius_px=fine, sym=options.sym, top_k=options.top_k,
            perturb_deg=0.5 * angular_step_deg(order), seed=options.seed + iteration)
        e = expectation(ps, rows, (maps, maps), distribution, halves, matrices, origins,
                        sigma2, settings, options, box=box, mask=particle_mask, device=device,
                        ctx=ctx, min_posterior=options.min_posterior,
                        progress=progress and batch >= n, desc=f"iteration {iteration:03d}",
                        insert_radius_px=insertion_radius_px(resolution, box, pixel_size))
        eta = step_size(options, iteration)
        running = _blend(running, e.backprojectors, eta, n / len(rows))
        recons = reconstruct_classes(_copy(running), pixel_size, options.pad,
                                     options.tau2_fudge)
        maps = [r.map for r in recons]
        shares = (e.posterior_sums / len(rows)).cpu().numpy()
        distribution = (1 - eta) * distribution + eta * shares
        sigma2 = (1 - eta) * sigma2 + eta * e.sigma2(sigma2)
        seen = np.zeros(n, dtype=bool)
        seen[rows] = True
        matrices[seen], origins[seen] = e.matrices[seen], e.origins_px[seen]
        classes = np.where(seen, e.classes, 0)
        history.append({
            "iteration": iteration, "distribution": distribution.tolist(),
            "resolution_A": [r.resolution_A for r in recons], "search_resolution_A": resolution,
            "healpix_order": order, "batch": int(len(rows)), "step": eta,
            "seconds": time.perf_counter() - tick})
        if iteration % options.checkpoint_every == 0 or iteration == options.n_iter:
            result = ClassIteration(matrices, origins, classes, e.max_probability,
                                    e.log_likelihood, distribution, recons, sigma2)
            ps = outputs.with_poses(ps, matrices, origins, pixel_size, e.max_probability,
                                    e.log_likelihood, classes + 1)
            if ctx.main:
                write_iteration(out, iteration, ps, result, settings, options.tau2_fudge,
                                relion30)
                _save_state(out, iteration, running)
                ClassState(iteration, resolution, distribution.tolist(), sigma2.tolist(),
                           asdict(options), history,
                           elapsed + time.perf_counter() - start).save(
                    outputs.state_path(out, iteration))
                old = _state_tensors(out, last_written)
                if last_written != iteration and old.exists():
                    old.unlink()  # only the newest statistics are kept
                best = min(r.resolution_A for r in recons)
                print(f"iteration {iteration:03d}: search {resolution:.1f} Å, order {order}, "
                      f"batch {len(rows)}, map {best:.1f} Å at FSC 0.143")
            last_written = iteration
            ctx.barrier()

    return finish(out, ctx, command, options, elapsed + time.perf_counter() - start, ps,
                  maps, distribution, history, pixel_size)


def _save_state(out: Path, iteration: int, running: list[list[Backprojector]]) -> None:
    """The running statistics of ``iteration`` (written before the JSON state)."""
    tensors = {"data": [[bp.data.cpu() for bp in pair] for pair in running],
               "weight": [[bp.weight.cpu() for bp in pair] for pair in running]}
    with atomic_path(_state_tensors(out, iteration)) as tmp:
        torch.save(tensors, tmp)


def _check(ps: ParticleSet, options: InitialModelOptions) -> tuple[int, float]:
    """Box and pixel size of the particles after the checks a reference-free job needs."""
    box = image_box(ps)
    zero = torch.zeros(box, box, box)
    return check_inputs(ps, zero, 0.0, "", None, None, options)
