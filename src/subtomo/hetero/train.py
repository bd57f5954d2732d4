"""``subtomo hetero train``: train the VAE of :mod:`subtomo.hetero.model` on subtomograms.

Data stream from disk in batches (:func:`subtomo.refine.images.iterate_batches`): memory holds
the network, one or two batches and a few numbers per particle (poses, latents), whatever the
number of particles. Every epoch ends with one encoding pass over all particles at the
epoch's final weights: ``z.N.npy`` (latent means, one row per particle in input STAR order),
the validation loss, and the checkpoint ``weights.N.pt`` (``state_dict`` of the network and
the optimiser, the pose corrections, the latents and the random state; loaded with
``weights_only=True``). Epochs are numbered from 0, as OPUS-TOMO and cryoDRGN do.

Weight averaging (``--ema``, epochs): the encoding pass, ``z.N.npy`` and the network saved as
``model`` (what ``analyze`` and ``eval-vol`` use) are an exponential moving average of the
training weights over about that many epochs (Polyak averaging); the training weights
themselves are saved as ``training`` for resuming. The latents of single SGD iterates swing
from epoch to epoch; the average's do much less (figures in bench/RESULTS.md, "hinge").

Reproducibility and resuming: the data order of epoch ``e`` is a permutation drawn from
``(seed, e)``, the reparameterisation noise of particle ``i`` in epoch ``e`` is row ``i`` of a
table drawn from ``(seed, e)``, and β depends only on the epoch and step; so
``--continue DIR`` after a kill gives the latents of an uninterrupted run. With ``torchrun``
the global batch of each step is ``world × -b`` particles split over the processes, and the
gradients are summed over them (``all_reduce``) before one identical optimiser step on every
process: two processes with ``-b 4`` compute what one process computes with ``-b 8``.

Poses (``--estpose``): before every ``--pose-every``-th epoch from that one on, each particle's
pose is searched locally against the decoded map of its latent group
(:func:`subtomo.hetero.poses.search_poses`); the epoch then trains and encodes at the new
poses, and its checkpoint saves them. The search reads the previous epoch's latents and
weights only, so a continued run repeats it exactly.

The inputs and options are in :mod:`subtomo.hetero.inputs`, the set-up of a run and the terms
of its loss in :mod:`subtomo.hetero.run`, the files of the training folder in
:mod:`subtomo.hetero.checkpoints`; this module holds the loop.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from subtomo.errors import InputError
from subtomo.hetero.checkpoints import (
    CONFIG,
    LOG,
    checkpoint_path,
    epochs_done,
    load_checkpoint,
    options_from_config,
    read_config,
    save_epoch,
    write_json,
)
from subtomo.hetero.forward import corrected_poses
from subtomo.hetero.inputs import TrainInputs, TrainOptions
from subtomo.hetero.model import (
    beta_value,
    disentanglement_prior,
    kl_divergence,
    kl_penalty,
)
from subtomo.hetero.poses import search_due, search_poses
from subtomo.hetero.run import (
    Run,
    checkpoint_state,
    encode,
    particle_contrast,
    prepare,
    residual_terms,
    restore,
    stream_batches,
)
from subtomo.hetero.series import select_rows
from subtomo.io.files import undone_on_input_error
from subtomo.parallel.distributed import Context

__all__ = ["ENCODE_BATCHES", "TrainResult", "average_weights", "encode_all", "resume", "train",
           "train_epoch"]


@dataclass
class TrainResult:
    """What :func:`train` and :func:`resume` return: the folder, the epochs in all, the latent
    means of the last epoch and the log rows of the epochs run."""

    out_dir: Path
    epochs: int
    latents: np.ndarray
    history: list[dict]


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, salt])
                                             .generate_state(1)[0]))


def _sum_grads(model: torch.nn.Module, ctx: Context) -> None:
    if ctx.world == 1:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        ctx.sum_(p.grad)


def _epoch_plan(run: Run, epoch: int, ctx: Context) -> tuple[np.ndarray, list[int]]:
    """This rank's rows for the epoch (in step order) and the global batch size per step."""
    order = np.random.default_rng([run.options.seed, epoch, 1]).permutation(run.train_rows)
    b = run.options.batch_size
    G = b * ctx.world
    mine, sizes = [], []
    for start in range(0, len(order), G):
        chunk = order[start:start + G]
        sizes.append(len(chunk))
        mine.append(chunk[ctx.rank * b:(ctx.rank + 1) * b])
    return np.concatenate(mine) if mine else order[:0], sizes


def train_epoch(run: Run, epoch: int, ctx: Context, progress: bool) -> dict:
    """One pass over the training rows; returns the epoch's mean losses per particle."""
    opts, model = run.options, run.model
    rows, sizes = _epoch_plan(run, epoch, ctx)
    zlat = model.zdim + model.zaffinedim
    eps = torch.randn(len(run.inputs.particles), zlat, generator=_epoch_generator(
        opts.seed, epoch, 4))
    steps = len(sizes)
    totals = torch.zeros(4, dtype=torch.float64)  # loss, rec, kl, prior (sums over particles)
    batches = stream_batches(run, rows, opts.batch_size)
    bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="batch", disable=None if progress else True,
               leave=False)
    model.train()
    for step in range(steps):
        batch = next(batches, None)
        beta = beta_value(opts.beta, opts.beta_control, epoch, step, steps, opts.beta_cycle,
                          opts.epochs)
        run.optimizer.zero_grad(set_to_none=False)
        if batch is not None and len(batch.rows):
            correction = run.poses.rows(batch.rows, run.device) if run.poses else None
            mu, logvar = encode(run, batch, correction)
            z = mu + torch.exp(0.5 * logvar) * eps[torch.as_tensor(batch.rows)].to(run.device)
            res, delta = residual_terms(run, batch, z, correction)
            rec = res / (2 * run.sigma2 * run.mask_voxels)
            kl = kl_divergence(mu, logvar) / run.mask_voxels
            prior = (disentanglement_prior(mu, delta, model.mask) if opts.lamb else
                     mu.sum() * 0)
            share = len(batch.rows) / sizes[step]
            penalty = kl_penalty(mu, logvar) / run.mask_voxels
            loss = (rec.sum() + beta * penalty) / sizes[step] + opts.lamb * prior * share
            loss.backward()
            totals += torch.tensor([float(loss.detach()) * sizes[step],
                                    float(rec.detach().sum()), float(kl.detach().sum()),
                                    float(prior.detach()) * len(batch.rows)],
                                   dtype=torch.float64)
        _sum_grads(model, ctx)
        run.optimizer.step()
        average_weights(run, epoch * steps + step + 1, steps)
        bar.update(1)
    bar.close()
    totals = torch.as_tensor(ctx.sum_array(totals.numpy()))
    count = max(len(run.train_rows), 1)
    return {"train_loss": float(totals[0]) / count, "train_rec": float(totals[1]) / count,
            "train_kl": float(totals[2]) / count, "train_prior": float(totals[3]) / count,
            "beta": beta_value(opts.beta, opts.beta_control, epoch, steps, steps,
                               opts.beta_cycle, opts.epochs)}


def average_weights(run: Run, step: int, steps_per_epoch: int) -> None:
    """Move the averaged weights towards the training weights after global step ``step``
    (from 1): decay ``1 - 1/(ema · steps_per_epoch)`` (an average over about ``ema`` epochs),
    but ``1 - 2/(step + 1)`` while that is smaller (over about the last half of the steps so
    far), so that the start does not hold the average at the initial weights."""
    if run.averaged is None:
        return
    decay = min(1.0 - 1.0 / max(run.options.ema * steps_per_epoch, 1.0),
                1.0 - 2.0 / (step + 1.0))
    with torch.no_grad():
        for mine, theirs in zip(run.averaged.parameters(), run.model.parameters(),
                                strict=True):
            mine.lerp_(theirs, 1.0 - decay)


ENCODE_BATCHES = 4  # training batches per batch of the encoding pass


def encode_all(run: Run, ctx: Context, progress: bool) -> dict:
    """Latent means and log-variances of every particle at the current weights, their contrast
    scales (:func:`~subtomo.hetero.run.particle_contrast`) and the validation losses
    (reconstruction at z = mu, KL) per particle."""
    n = len(run.inputs.particles)
    zlat = run.model.zdim + run.model.zaffinedim
    mu_all = np.zeros((n, zlat))
    logvar_all = np.zeros((n, zlat))
    contrast_all = np.zeros(n)
    val = np.zeros(n, dtype=bool)
    val[run.val_rows] = True
    sums = np.zeros(2)
    rows = ctx.shard(np.arange(n))
    size = ENCODE_BATCHES * run.options.batch_size  # no gradients: larger batches, fewer calls
    net = run.net
    net.eval()
    with torch.no_grad():
        for batch in tqdm(stream_batches(run, rows, size), desc="encoding",
                          total=math.ceil(len(rows) / size),
                          disable=None if progress else True, leave=False, unit="batch"):
            correction = run.poses.rows(batch.rows, run.device) if run.poses else None
            mu, logvar = encode(run, batch, correction, net)
            A, shift = corrected_poses(run.A[torch.as_tensor(batch.rows)].to(run.device),
                                       torch.zeros(len(batch.rows), 3, device=run.device),
                                       correction)
            contrast_all[batch.rows] = particle_contrast(run, batch, A, shift, net).cpu().numpy()
            mu_all[batch.rows] = mu.cpu().double().numpy()
            logvar_all[batch.rows] = logvar.cpu().double().numpy()
            is_val = val[batch.rows]
            if is_val.any():
                sel = torch.as_tensor(np.flatnonzero(is_val))
                sub = select_rows(batch, sel)
                corr = None if correction is None else correction[sel]
                res, _ = residual_terms(run, sub, mu[sel], corr, net)
                sums[0] += float(res.sum()) / (run.sigma2 * run.mask_voxels)
                sums[1] += float(kl_divergence(mu[sel], logvar[sel]).sum()) / run.mask_voxels
    mu_all = ctx.sum_array(mu_all)
    logvar_all = ctx.sum_array(logvar_all)
    contrast_all = ctx.sum_array(contrast_all)
    sums = ctx.sum_array(sums)
    count = max(len(run.val_rows), 1)
    return {"mu": mu_all, "logvar": logvar_all, "contrast": contrast_all,
            "val_rec": float(sums[0]) / count, "val_kl": float(sums[1]) / count}


def _loop(run: Run, out: Path, first: int, ctx: Context, progress: bool,
          echo, encoded: dict | None) -> TrainResult:
    history = []
    for epoch in range(first, run.options.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        searched = {}
        if run.poses is not None and search_due(epoch, run.options.pose_every):
            searched = search_poses(run, encoded["mu"], ctx)
        row = train_epoch(run, epoch, ctx, progress and ctx.main)
        row.update(searched)
        encoded = encode_all(run, ctx, progress and ctx.main)
        row.update(epoch=epoch, val_rec=encoded["val_rec"], val_kl=encoded["val_kl"],
                   wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
        if ctx.main:
            save_epoch(out, epoch, encoded["mu"], row, checkpoint_state(run, epoch, encoded, row))
            if echo:
                echo(row)
        ctx.barrier()
        history.append(row)
    latents = encoded["mu"] if encoded is not None else np.zeros((0, 0))
    return TrainResult(out, run.options.epochs, latents, history)


@undone_on_input_error("out_dir")
def train(inputs: TrainInputs, out_dir: str | Path, options: TrainOptions, *,
          ctx: Context | None = None, device: str | torch.device = "cpu",
          progress: bool = True, split_path: str | Path | None = None,
          echo=None) -> TrainResult:
    """Train a new model into ``out_dir`` for ``options.epochs`` epochs."""
    ctx = ctx or Context()
    out = Path(out_dir)
    if epochs_done(out):  # a configuration alone: a run killed before its first epoch
        raise InputError(out, "the folder holds a previous run; use --continue to resume it "
                         "or choose another --o", field="--o")
    run = prepare(inputs, options, out, ctx=ctx, device=device, progress=progress,
                  split_path=Path(split_path) if split_path else None)
    return _loop(run, out, 0, ctx, progress, echo, None)


def resume(inputs: TrainInputs, run_dir: str | Path, *, epochs: int | None = None,
           checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
           ctx: Context | None = None, device: str | torch.device = "cpu",
           progress: bool = True, echo=None) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint (or ``checkpoint``, one of its
    ``weights.N.pt``) to ``epochs`` epochs in all, writing into ``out_dir`` (default the same
    folder; another folder gets a copy of the run's configuration and maps)."""
    ctx = ctx or Context()
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if checkpoint is None:
        done = epochs_done(run_dir)
        if not done:
            raise InputError(run_dir, "no finished epoch to continue from (no weights.N.pt)",
                             field="--continue")
        checkpoint = checkpoint_path(run_dir, done[-1])
    state = load_checkpoint(Path(checkpoint))
    options = options_from_config(config)
    if epochs is not None:
        options = replace(options, epochs=epochs)
    if config.get("n_particles") != len(inputs.particles):
        raise InputError(inputs.particles.source, f"has {len(inputs.particles)} particles; "
                         f"the run in {run_dir} was trained on {config.get('n_particles')}",
                         field="--i")
    out = Path(out_dir) if out_dir is not None else run_dir
    split = Path(config["split"])
    if not split.exists():
        raise InputError(split, "the run's split file is missing", field="--split")
    run = prepare(inputs, options, out, ctx=ctx, device=device, progress=progress,
                  split_path=split, resume=state)
    restore(run, state)
    if ctx.main and out.resolve() != run_dir.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in ["consensus.mrc", "mask.mrc", LOG,
                     *(f"body{j + 1}.mrc" for j in range(len(config.get("masks", []))))]:
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, out / name)
        write_json({**config, "options": asdict(options)}, out / CONFIG)
    elif ctx.main:
        write_json({**config, "options": asdict(options)}, out / CONFIG)
    ctx.barrier()
    encoded = {"mu": state["mu"].numpy()}
    return _loop(run, out, int(state["epoch"]) + 1, ctx, progress, echo, encoded)
