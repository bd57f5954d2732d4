"""One training run of ``subtomo hetero train`` in memory: the :class:`Run` (network,
optimiser, poses, noise scale), its set-up (:func:`prepare`), the per-batch terms of the loss
(:func:`encode`, :func:`residual_terms`), the per-particle pose corrections (``--estpose``,
:mod:`subtomo.hetero.poses`) and the state a checkpoint holds (:func:`checkpoint_state`,
:func:`restore`)."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import subtomo
from subtomo.errors import InputError
from subtomo.fourier.grid import centred_rfft, resample_map
from subtomo.hetero.checkpoints import CONFIG, write_json
from subtomo.hetero.forward import (
    Boxes,
    contrast_scale,
    corrected_poses,
    ctf_filter,
    enc_box_for,
    encoder_input,
    predict,
    real_at,
    seen_reference,
    translation_search,
)
from subtomo.hetero.inputs import (
    TrainInputs,
    TrainOptions,
    auto_mask,
    consensus_map,
    default_templateres,
    particle_geometry,
    split_rows,
    to_template,
)
from subtomo.hetero.model import HeteroVAE
from subtomo.hetero.poses import PoseTable
from subtomo.hetero.series import TiltBatch, slice_residuals, terms_count, tilt_batches
from subtomo.io.mrc import write_mrc
from subtomo.parallel.distributed import Context
from subtomo.refine.images import check_files, iterate_batches

__all__ = ["Run", "centre_particles", "checkpoint_state", "config_dict", "encode",
           "estimate_noise", "particle_contrast", "prepare", "residual_terms", "restore",
           "stream_batches"]


@dataclass
class Run:
    """Everything one training run holds in memory (built by :func:`prepare`)."""

    inputs: TrainInputs
    options: TrainOptions
    boxes: Boxes
    model: HeteroVAE
    optimizer: torch.optim.Optimizer
    val_rows: np.ndarray
    train_rows: np.ndarray
    sigma2: float
    data_scale: float
    mask_voxels: float
    enc_mask: torch.Tensor
    poses: PoseTable | None
    device: torch.device
    A: torch.Tensor  # (N, 3, 3) float32
    origins_px: torch.Tensor  # (N, 3) float64, the centring shift of each particle
    averaged: HeteroVAE | None = None  # moving average of the weights (``--ema``)
    centring_px: torch.Tensor | None = None  # (N, 3) moved by -this (:func:`centre_particles`)

    @property
    def net(self) -> HeteroVAE:
        """The network of the encoding pass and the saved ``model``: the average if kept."""
        return self.averaged if self.averaged is not None else self.model


def stream_batches(run: Run, rows: np.ndarray, batch_size: int):
    """The particles of ``rows`` streamed from disk in batches, centred by their origins, with
    the Fourier origin (the box mean) of the data and of the CTF set to 0: an additive offset
    per particle (ice, normalisation) is no signal, and the encoder would otherwise learn it.
    A 2D-stack set with ``--tilt-loss slices`` streams :class:`~subtomo.hetero.series.TiltBatch`
    es (the tilts beside the pseudo-subtomograms)."""
    ps = run.inputs.particles
    if ps.series is not None and run.options.tilt_loss == "slices":
        batches = tilt_batches(ps, rows, box=run.boxes.box, loss_box=run.boxes.loss_box,
                               batch_size=batch_size, device=run.device,
                               shifts_px=run.origins_px)
    else:
        batches = iterate_batches(ps, rows, box=run.boxes.box, ctf=run.options.ctf,
                                  batch_size=batch_size, device=run.device,
                                  shifts_px=run.origins_px)
    for batch in batches:
        batch.spectra[..., 0, 0, 0] = 0
        if batch.ctf is not None:
            batch.ctf[..., 0, 0, 0] = 0
        yield batch


def residual_terms(run: Run, batch, z: torch.Tensor, correction: torch.Tensor | None,
                    net: HeteroVAE | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked squared residuals summed per particle (B,) and the corrections ``s Δ`` (B, T³)
    of ``net`` (default: the training network).

    The prediction is multiplied by the particle's contrast scale ``ŝ_i`` against the masked
    consensus seen at its pose through its CTF (:func:`contrast_scale`, no gradient): the data
    fix it, not the network, so a contrast that varies between particles (ice thickness,
    normalisation) is explained without a latent dimension. Without it the decoder learns the
    scale late in training and a principal component of the latents follows it (measured on
    the independent hinge set: PC1's |ρ| with the hinge fell from 0.89 to 0.75 in the last
    epoch, the lost part went to a component with |ρ| 0.37 with the scale). For junk, which
    matches the consensus poorly, ``ŝ`` sits at its lower clamp and the decoded map still goes
    to 0, which ``select --min-occupancy`` reads."""
    net = net if net is not None else run.model
    idx = torch.as_tensor(batch.rows)
    A, shift = corrected_poses(run.A[idx].to(run.device),
                               torch.zeros(len(idx), 3, device=run.device), correction)
    maps, delta = net.maps(z)
    if isinstance(batch, TiltBatch):  # 2D stacks: the tilts' slices (subtomo.hetero.series)
        pred, _ = predict(net, maps, z, A, shift, run.boxes, None)
        spectra = centred_rfft(pred) * ctf_filter(None, run.boxes, 1.0, run.options.bfactor,
                                                  1, run.device)
        scale = particle_contrast(run, batch, A, shift, net)
        return slice_residuals(spectra, scale, batch), delta
    filt = ctf_filter(batch.ctf, run.boxes, run.options.ctfbeta, run.options.bfactor,
                      len(idx), run.device)
    pred, mask_at = predict(net, maps, z, A, shift, run.boxes, filt)
    pred = pred * particle_contrast(run, batch, A, shift, net)[:, None, None, None]
    data = real_at(batch.spectra, run.boxes.box, run.boxes.loss_box)
    return ((pred - data) ** 2 * mask_at).sum((1, 2, 3)), delta


def particle_contrast(run: Run, batch, A: torch.Tensor, shift_A: torch.Tensor,
                      net: HeteroVAE) -> torch.Tensor:
    """``ŝ_i`` (B,): the least-squares contrast scale (:func:`contrast_scale`) of the masked
    consensus, seen at the particle's pose ``A`` (B, 3, 3) and residual shift ``shift_A``
    (B, 3) Å through its CTF, in the particle's data; no gradient."""
    with torch.no_grad():
        seen = seen_reference(net.mask * net.consensus, A.detach(), shift_A.detach(), run.boxes,
                              run.boxes.box)
        return contrast_scale(batch.spectra, seen if batch.ctf is None else seen * batch.ctf)


def encode(run: Run, batch, correction: torch.Tensor | None, net: HeteroVAE | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means and log-variances of ``batch`` at the (corrected) poses."""
    net = net if net is not None else run.model
    idx = torch.as_tensor(batch.rows)
    A, shift = corrected_poses(run.A[idx].to(run.device),
                               torch.zeros(len(idx), 3, device=run.device), correction)
    with torch.no_grad():
        x = encoder_input(batch.spectra, batch.ctf, A.detach(), shift.detach(), run.boxes,
                          run.enc_mask, run.options.ctfalpha, run.data_scale,
                          net.mask * net.consensus)
    return net.encoder(x)


def centre_particles(run: Run, ctx: Context) -> np.ndarray:
    """Centre every particle on the masked consensus: the translation of each one within
    ``--offset-range`` px (:func:`translation_search`) is added to its centring shift, so that
    the encoder and the loss see the particles where the consensus is (a consensus pose a
    fraction of a pixel off is otherwise the largest difference between particles, and the
    latent encodes it). Returns the translations (N, 3) px."""
    n = len(run.inputs.particles)
    found = np.zeros((n, 3))
    reference = run.model.mask * run.model.consensus
    with torch.no_grad():
        for batch in stream_batches(run, ctx.shard(np.arange(n)), run.options.batch_size):
            A = run.A[torch.as_tensor(batch.rows)].to(run.device)
            found[batch.rows] = translation_search(batch.spectra, batch.ctf, A, run.boxes,
                                                   reference, run.options.offset_range_px
                                                   ).cpu().numpy()
    found = ctx.sum_array(found)
    apply_centring(run, torch.as_tensor(found))
    return found


def apply_centring(run: Run, centring_px: torch.Tensor) -> None:
    """Move every particle by ``-centring_px`` (N, 3) from its given origin."""
    run.centring_px = centring_px.double()
    run.origins_px = run.origins_px - run.centring_px


def estimate_noise(run: Run, rows: np.ndarray) -> tuple[float, float, torch.Tensor]:
    """σ² per voxel of the residual against the consensus inside the mask, the std of the
    encoder's (unscaled) input inside its mask, and the pooled encoder inputs, from ``rows``."""
    res_sum = mask_sum = enc_sq = enc_n = 0.0
    pooled = []
    z = torch.zeros(1, run.model.zdim + run.model.zaffinedim, device=run.device)
    with torch.no_grad():
        for batch in stream_batches(run, rows, run.options.batch_size):
            zb = z.expand(len(batch.rows), -1)
            res, _ = residual_terms(run, batch, zb, None)
            res_sum += float(res.sum())
            mask_sum += terms_count(batch, run.mask_voxels)
            idx = torch.as_tensor(batch.rows)
            x = encoder_input(batch.spectra, batch.ctf, run.A[idx].to(run.device),
                              torch.zeros(len(idx), 3, device=run.device), run.boxes,
                              run.enc_mask, run.options.ctfalpha, 1.0,
                              run.model.mask * run.model.consensus)
            enc_sq += float((x ** 2).sum())
            enc_n += float(run.enc_mask.sum()) * len(batch.rows)
            pooled.append(run.model.encoder.pooled(x).cpu())
    scale = math.sqrt(enc_sq / max(enc_n, 1e-12))
    return res_sum / max(mask_sum, 1e-12), scale, torch.cat(pooled) / scale


def prepare(inputs: TrainInputs, options: TrainOptions, out_dir: Path, *, ctx: Context,
            device: str | torch.device = "cpu", progress: bool = True,
            split_path: Path | None = None, resume: dict | None = None) -> Run:
    """Check the inputs, build the model and (for a new run) write ``config.json``,
    ``consensus.mrc``, ``mask.mrc`` and the split; nothing is written if a check fails."""
    options.check()
    ps = inputs.particles
    n = len(ps)
    if n < 2:
        raise InputError(ps.source, "need at least two particles")
    box, pixel_size_A = particle_geometry(ps, inputs.sources.get("angpix"))
    if len(inputs.matrices) != n or len(inputs.shifts_A) != n:
        raise InputError(inputs.sources.get("poses"), f"has {len(inputs.matrices)} poses; "
                         f"{ps.source} has {n} particles", field="--poses")
    for name, volume in (("--mask", inputs.mask), ("--ref", inputs.reference),
                         *(("--masks", m) for m in inputs.body_masks)):
        if volume is not None and tuple(volume.shape) != (box, box, box):
            source = inputs.sources.get(name)
            raise InputError(source, f"map of shape {tuple(volume.shape)}; the particles have "
                             f"a {box}³ box", field=name)
    if options.zaffinedim and not inputs.body_masks:
        raise InputError(None, "a dynamics latent needs rigid bodies: give --masks",
                         field="--zaffinedim")
    check_files(ps, np.arange(n), options.ctf)
    templateres = options.templateres or default_templateres(box, options.downfrac)
    options = replace(options, templateres=templateres,
                      zaffinedim=(options.zaffinedim or 4) if inputs.body_masks else 0)
    boxes = Boxes(box, pixel_size_A, enc_box_for(box, options.downfrac), templateres)
    val_rows = split_rows(n, options.valfrac, options.seed, split_path)
    device = torch.device(device)

    reference = inputs.reference
    if reference is None:
        reference = consensus_map(inputs, pixel_size_A, options.ctf, progress and ctx.main, device)
    mask = inputs.mask if inputs.mask is not None else auto_mask(reference, pixel_size_A)
    T = templateres
    body_masks = (torch.stack([to_template(m, T).clamp(0, 1) for m in inputs.body_masks])
                  if inputs.body_masks else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = HeteroVAE(enc_box=boxes.enc_box, template_box=T, zdim=options.zdim,
                          zaffinedim=options.zaffinedim,
                          consensus=to_template(reference, T),
                          mask=to_template(mask, T).clamp(0, 1), body_masks=body_masks,
                          template_pixel_size_A=boxes.pixel(T)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    d = boxes.enc_box
    enc_mask = resample_map(mask.float(), d).clamp(0, 1).to(device)
    mask_voxels = float(resample_map(mask.float(), boxes.loss_box).clamp(0, 1).sum())
    poses = PoseTable(n) if options.estpose else None
    train_rows = np.setdiff1d(np.arange(n), val_rows)
    run = Run(inputs, options, boxes, model, optimizer, val_rows, train_rows, 1.0, 1.0,
              mask_voxels, enc_mask, poses, device,
              torch.as_tensor(inputs.matrices, dtype=torch.float32),
              torch.as_tensor(inputs.shifts_A, dtype=torch.float64) / pixel_size_A)
    if options.ema > 0:
        run.averaged = copy.deepcopy(model)
        run.averaged.requires_grad_(False)
    if resume is not None:
        if resume.get("centring_px") is not None:
            apply_centring(run, resume["centring_px"])
        run.sigma2, run.data_scale = resume["sigma2"], resume["data_scale"]
        return run
    if options.offset_range_px > 0:
        centre_particles(run, ctx)
    sample = np.random.default_rng([options.seed, 3]).permutation(train_rows)[:256]
    run.sigma2, run.data_scale, pooled = estimate_noise(run, np.sort(sample))
    model.encoder.init_linear(pooled.to(device), split=options.zdim)
    if run.averaged is not None:
        run.averaged.load_state_dict(model.state_dict())
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_mrc(out_dir / "consensus.mrc", reference, pixel_size_A)
        write_mrc(out_dir / "mask.mrc", mask, pixel_size_A)
        for j, body in enumerate(inputs.body_masks):
            write_mrc(out_dir / f"body{j + 1}.mrc", body, pixel_size_A)
        split_file = split_path or out_dir / "split.json"
        if not split_file.exists():
            write_json({"n": n, "val": val_rows.tolist()}, split_file)
        write_json(config_dict(run, split_file), out_dir / CONFIG)
    ctx.barrier()
    return run


def config_dict(run: Run, split_file: Path) -> dict:
    """What ``config.json`` holds: the command, the inputs, the options and the scales."""
    src = run.inputs.sources
    return {
        "version": getattr(subtomo, "__version__", "unknown"),
        "command": src.get("command"),
        "particles": str(Path(run.inputs.particles.source).resolve())
        if run.inputs.particles.source else None,
        "poses": src.get("poses"), "ref": src.get("--ref"), "mask": src.get("--mask"),
        "masks": src.get("body_masks", []), "angpix": run.boxes.pixel_size_A,
        "tomograms": src.get("tomograms"),
        "n_particles": len(run.inputs.particles), "split": str(split_file),
        "options": asdict(run.options), "boxes": run.boxes.as_dict(),
        "sigma2": run.sigma2, "data_scale": run.data_scale, "mask_voxels": run.mask_voxels,
    }


def checkpoint_state(run: Run, epoch: int, encoded: dict, row: dict) -> dict:
    """What ``weights.N.pt`` holds after ``epoch``: the saved network (the average if kept, the
    training weights as ``training``), the optimiser, the pose corrections, the latents, the
    scales, the particles' contrast scales, the centring shifts, the random state and the epoch's
    log ``row``."""
    state = {
        "epoch": epoch,
        "model": run.net.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "poses": run.poses.state() if run.poses else None,
        "mu": torch.from_numpy(encoded["mu"]),
        "logvar": torch.from_numpy(encoded["logvar"]),
        "contrast": torch.from_numpy(encoded["contrast"]),
        "sigma2": run.sigma2,
        "data_scale": run.data_scale,
        "centring_px": run.centring_px,
        "rng_state": torch.get_rng_state(),
        "history": row,
    }
    if run.averaged is not None:
        state["training"] = run.model.state_dict()
    return state


def restore(run: Run, state: dict) -> None:
    """Load a checkpoint's weights, optimiser, pose corrections and random state into ``run``."""
    try:
        run.model.load_state_dict(state.get("training", state["model"]))
        if run.averaged is not None:
            run.averaged.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise InputError(None, f"checkpoint does not fit these options ({str(exc)[:120]})",
                         field="--load") from None
    if run.poses is not None and state.get("poses") is not None:
        run.poses.load(state["poses"])  # only ``delta``: older runs also saved Adam moments
    torch.set_rng_state(state["rng_state"])
