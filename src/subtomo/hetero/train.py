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
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from subtomo.errors import InputError
from subtomo.fourier.grid import resample_map
from subtomo.hetero.forward import (
    Boxes,
    corrected_poses,
    ctf_filter,
    enc_box_for,
    encoder_input,
    predict,
    real_at,
)
from subtomo.hetero.model import (
    HeteroVAE,
    beta_value,
    disentanglement_prior,
    kl_divergence,
    kl_penalty,
)
from subtomo.io.files import atomic_path, undone_on_input_error
from subtomo.io.mrc import write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine.images import check_files, iterate_batches

CONFIG = "config.json"
LOG = "log.tsv"
LOG_COLUMNS = ("epoch", "train_loss", "train_rec", "train_kl", "train_prior", "val_rec",
               "val_kl", "beta", "wall_s", "cpu_s")


@dataclass
class TrainOptions:
    """Options of ``subtomo hetero train`` (OPUS-TOMO's names; lengths in Å, angles in °)."""

    zdim: int = 12
    zaffinedim: int = 0
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    beta_control: float = 1.0
    beta: str = "cos"
    beta_cycle: int = 4
    lamb: float = 0.05
    downfrac: float = 0.75
    templateres: int | None = None
    valfrac: float = 0.1
    bfactor: float = 0.0
    ctf: bool = True
    ctfalpha: float = 1.0
    ctfbeta: float = 1.0
    estpose: bool = False
    pose_lr_deg: float = 0.2
    pose_lr_A: float = 0.5
    ema: float = 2.0
    seed: int = 0

    def check(self) -> None:
        """One-line errors for impossible values (before anything is read or written)."""
        def bad(field_name: str, message: str) -> InputError:
            return InputError(None, message, field=field_name)

        if self.templateres is not None and (self.templateres % 16 or self.templateres < 16):
            raise bad("--templateres", f"{self.templateres} is not a positive multiple of 16")
        if self.zdim < 1:
            raise bad("--zdim", "the latent needs at least one dimension")
        if not 0 < self.downfrac <= 1:
            raise bad("--downfrac", f"must be in (0, 1], not {self.downfrac}")
        if not 0 <= self.valfrac < 1:
            raise bad("--valfrac", f"must be in [0, 1), not {self.valfrac}")
        if not 0 <= self.ema <= 1000:
            raise bad("--ema", f"must be in [0, 1000] epochs, not {self.ema}")
        if self.epochs < 1 or self.batch_size < 1:
            raise bad("-n/-b", "need at least one epoch and one particle per batch")
        if not self.lr > 0:
            raise bad("--lr", f"the learning rate must be positive, not {self.lr}")
        for name in ("beta_control", "lamb"):
            if getattr(self, name) < 0:
                raise bad("--" + name, f"a weight must not be negative, not "
                          f"{getattr(self, name)}")
        if self.beta_cycle < 1:
            raise bad("--beta-cycle", f"need at least one epoch per cycle, not {self.beta_cycle}")
        if self.beta != "cos":
            try:
                float(self.beta)
            except ValueError:
                raise bad("--beta", f"'cos' or a number, not {self.beta!r}") from None


@dataclass
class TrainInputs:
    """What training reads: particles, their poses (RELION A and origins in Å, in particle
    order), maps on the particle box (or None: computed) and where they came from."""

    particles: ParticleSet
    matrices: np.ndarray
    shifts_A: np.ndarray
    reference: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    body_masks: list[torch.Tensor] = field(default_factory=list)
    sources: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    latents: np.ndarray
    history: list[dict]


# ---- set-up -----------------------------------------------------------------------------
def default_templateres(box: int, downfrac: float) -> int:
    """OPUS-TOMO's advice, ``D · downfrac / 0.75`` rounded up to a multiple of 16."""
    return max(16, int(math.ceil(box * downfrac / 0.75 / 16)) * 16)


def particle_geometry(ps: ParticleSet, angpix: float | None) -> tuple[int, float]:
    """Box (px) and pixel size (Å) of the particle images."""
    from subtomo.refine.reconstruct import image_box

    apix = float(angpix) if angpix else float(np.nanmean(ps.pixel_size_A()))
    if not math.isfinite(apix) or apix <= 0:
        raise InputError(ps.source, "particles have no pixel size; give --angpix",
                         field="rlnImagePixelSize")
    return image_box(ps), apix


def to_template(volume: torch.Tensor, template_box: int) -> torch.Tensor:
    """A map on the particle box resampled (Fourier) to the template box, same field of view."""
    return resample_map(volume.float(), template_box)


def split_rows(n: int, valfrac: float, seed: int, path: Path | None) -> np.ndarray:
    """Validation rows: read from ``path`` if it exists (checked), else a seeded random draw."""
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text())
            val = np.asarray(data["val"], dtype=np.int64)
            count = int(data["n"])
        except (ValueError, KeyError, TypeError):
            raise InputError(path, "not a split file (JSON with 'n' and 'val')",
                             field="--split") from None
        if count != n or (len(val) and (val.min() < 0 or val.max() >= n)):
            raise InputError(path, f"split of {count} particles; the input has {n}",
                             field="--split")
        return np.sort(val)
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.permutation(n)[: int(round(valfrac * n))])


def write_json(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def auto_mask(consensus: torch.Tensor, pixel_A: float) -> torch.Tensor:
    """A soft mask from the consensus map: 20 Å low-pass, threshold at 20 % of its maximum,
    extended 2 px with a 3 px soft edge."""
    from subtomo.maps.mask import create_mask

    smooth_A = max(20.0, 3 * pixel_A)
    from subtomo.fourier.grid import lowpass_map

    low = lowpass_map(consensus.float(), pixel_A, smooth_A)
    return create_mask(low, pixel_A, 0.2 * float(low.max()), extend_inimask_px=2,
                       width_soft_edge_px=3)


# ---- pose corrections (--estpose): one small Adam per particle row ---------------------
class PoseTable:
    """Per-particle corrections (N, 6) = (rotation vector rad, shift Å) and their Adam state.

    Rows are updated only when their particle is in a batch; after each epoch the processes
    exchange the rows each of them owned (every row has exactly one owner per epoch).
    """

    B1, B2, EPS = 0.9, 0.999, 1e-8

    def __init__(self, n: int, lr_rad: float, lr_A: float) -> None:
        self.delta = torch.zeros(n, 6)
        self.m = torch.zeros(n, 6)
        self.v = torch.zeros(n, 6)
        self.t = torch.zeros(n)
        self.lr = torch.tensor([lr_rad] * 3 + [lr_A] * 3)

    def rows(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        return self.delta[torch.as_tensor(rows)].to(device).requires_grad_(True)

    def update(self, rows: np.ndarray, grad: torch.Tensor) -> None:
        idx = torch.as_tensor(rows)
        g = grad.detach().cpu()
        self.t[idx] += 1
        self.m[idx] = self.B1 * self.m[idx] + (1 - self.B1) * g
        self.v[idx] = self.B2 * self.v[idx] + (1 - self.B2) * g * g
        t = self.t[idx][:, None]
        m_hat = self.m[idx] / (1 - self.B1 ** t)
        v_hat = self.v[idx] / (1 - self.B2 ** t)
        self.delta[idx] -= self.lr * m_hat / (v_hat.sqrt() + self.EPS)

    def exchange(self, owned: np.ndarray, ctx: Context) -> None:
        if ctx.world == 1:
            return
        keep = torch.zeros(len(self.t), dtype=torch.bool)
        keep[torch.as_tensor(owned)] = True
        for tensor in (self.delta, self.m, self.v, self.t):
            mine = torch.where(keep.view(-1, *([1] * (tensor.ndim - 1))), tensor,
                               torch.zeros_like(tensor))
            tensor.copy_(ctx.sum_(mine))

    def state(self) -> dict:
        return {"delta": self.delta, "m": self.m, "v": self.v, "t": self.t}

    def load(self, state: dict) -> None:
        for name in ("delta", "m", "v", "t"):
            getattr(self, name).copy_(state[name])


# ---- the run -----------------------------------------------------------------------------
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

    @property
    def net(self) -> HeteroVAE:
        """The network of the encoding pass and the saved ``model``: the average if kept."""
        return self.averaged if self.averaged is not None else self.model


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, salt])
                                             .generate_state(1)[0]))


def _batches(run: Run, rows: np.ndarray, batch_size: int):
    return iterate_batches(run.inputs.particles, rows, box=run.boxes.box, ctf=run.options.ctf,
                           batch_size=batch_size, device=run.device, shifts_px=run.origins_px)


def _residual_terms(run: Run, batch, z: torch.Tensor, correction: torch.Tensor | None,
                    net: HeteroVAE | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked squared residuals summed per particle (B,) and the corrections ``s Δ`` (B, T³)
    of ``net`` (default: the training network)."""
    net = net if net is not None else run.model
    idx = torch.as_tensor(batch.rows)
    A, shift = corrected_poses(run.A[idx].to(run.device),
                               torch.zeros(len(idx), 3, device=run.device), correction)
    maps, delta = net.maps(z)
    filt = ctf_filter(batch.ctf, run.boxes, run.options.ctfbeta, run.options.bfactor,
                      len(idx), run.device)
    pred, mask_at = predict(net, maps, z, A, shift, run.boxes, filt)
    data = real_at(batch.spectra, run.boxes.box, run.boxes.loss_box)
    return ((pred - data) ** 2 * mask_at).sum((1, 2, 3)), delta


def _encode(run: Run, batch, correction: torch.Tensor | None, net: HeteroVAE | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    net = net if net is not None else run.model
    idx = torch.as_tensor(batch.rows)
    A, shift = corrected_poses(run.A[idx].to(run.device),
                               torch.zeros(len(idx), 3, device=run.device), correction)
    with torch.no_grad():
        x = encoder_input(batch.spectra, batch.ctf, A.detach(), shift.detach(), run.boxes,
                          run.enc_mask, run.options.ctfalpha, run.data_scale,
                          net.mask * net.consensus)
    return net.encoder(x)


def estimate_noise(run: Run, rows: np.ndarray) -> tuple[float, float, torch.Tensor]:
    """σ² per voxel of the residual against the consensus inside the mask, the std of the
    encoder's (unscaled) input inside its mask, and the pooled encoder inputs, from ``rows``."""
    res_sum = mask_sum = enc_sq = enc_n = 0.0
    pooled = []
    z = torch.zeros(1, run.model.zdim + run.model.zaffinedim, device=run.device)
    with torch.no_grad():
        for batch in _batches(run, rows, run.options.batch_size):
            zb = z.expand(len(batch.rows), -1)
            res, _ = _residual_terms(run, batch, zb, None)
            res_sum += float(res.sum())
            mask_sum += run.mask_voxels * len(batch.rows)
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
    box, apix = particle_geometry(ps, inputs.sources.get("angpix"))
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
    boxes = Boxes(box, apix, enc_box_for(box, options.downfrac), templateres)
    val_rows = split_rows(n, options.valfrac, options.seed, split_path)
    device = torch.device(device)

    reference = inputs.reference
    if reference is None:
        reference = consensus_map(inputs, apix, options.ctf, progress and ctx.main, device)
    mask = inputs.mask if inputs.mask is not None else auto_mask(reference, apix)
    T = templateres
    body_masks = (torch.stack([to_template(m, T).clamp(0, 1) for m in inputs.body_masks])
                  if inputs.body_masks else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = HeteroVAE(enc_box=boxes.enc_box, template_box=T, zdim=options.zdim,
                          zaffinedim=options.zaffinedim,
                          consensus=to_template(reference, T),
                          mask=to_template(mask, T).clamp(0, 1), body_masks=body_masks,
                          template_pixel_A=boxes.pixel(T)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    d = boxes.enc_box
    enc_mask = resample_map(mask.float(), d).clamp(0, 1).to(device)
    mask_voxels = float(resample_map(mask.float(), boxes.loss_box).clamp(0, 1).sum())
    poses = (PoseTable(n, math.radians(options.pose_lr_deg), options.pose_lr_A)
             if options.estpose else None)
    train_rows = np.setdiff1d(np.arange(n), val_rows)
    run = Run(inputs, options, boxes, model, optimizer, val_rows, train_rows, 1.0, 1.0,
              mask_voxels, enc_mask, poses, device,
              torch.as_tensor(inputs.matrices, dtype=torch.float32),
              torch.as_tensor(inputs.shifts_A, dtype=torch.float64) / apix)
    if options.ema > 0:
        run.averaged = copy.deepcopy(model)
        run.averaged.requires_grad_(False)
    if resume is not None:
        run.sigma2, run.data_scale = resume["sigma2"], resume["data_scale"]
        return run
    sample = np.random.default_rng([options.seed, 3]).permutation(train_rows)[:256]
    run.sigma2, run.data_scale, pooled = estimate_noise(run, np.sort(sample))
    model.encoder.init_linear(pooled.to(device), split=options.zdim)
    if run.averaged is not None:
        run.averaged.load_state_dict(model.state_dict())
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_mrc(out_dir / "consensus.mrc", reference, apix)
        write_mrc(out_dir / "mask.mrc", mask, apix)
        for j, body in enumerate(inputs.body_masks):
            write_mrc(out_dir / f"body{j + 1}.mrc", body, apix)
        split_file = split_path or out_dir / "split.json"
        if not split_file.exists():
            write_json({"n": n, "val": val_rows.tolist()}, split_file)
        write_json(config_dict(run, split_file), out_dir / CONFIG)
    ctx.barrier()
    return run


def consensus_map(inputs: TrainInputs, apix: float, ctf: bool, progress: bool,
                  device: torch.device) -> torch.Tensor:
    """CTF-weighted reconstruction of all particles at the given poses (the decoder's base)."""
    from subtomo.io.particles import SUBTOMO_ANGLES
    from subtomo.refine.outputs import with_poses
    from subtomo.refine.reconstruct import reconstruct

    ps = inputs.particles
    n = len(ps)
    frame_free = replace(ps, particles=ps.particles.drop(
        columns=[c for c in SUBTOMO_ANGLES if c in ps.particles]))
    posed = with_poses(frame_free, inputs.matrices, inputs.shifts_A / apix, apix, np.ones(n),
                       np.zeros(n))
    return reconstruct(posed, ctf=ctf, progress=progress, device=device).map.cpu()


def config_dict(run: Run, split_file: Path) -> dict:
    import subtomo

    src = run.inputs.sources
    return {
        "version": getattr(subtomo, "__version__", "unknown"),
        "command": src.get("command"),
        "particles": str(Path(run.inputs.particles.source).resolve())
        if run.inputs.particles.source else None,
        "poses": src.get("poses"), "ref": src.get("--ref"), "mask": src.get("--mask"),
        "masks": src.get("body_masks", []), "angpix": run.boxes.pixel_A,
        "n_particles": len(run.inputs.particles), "split": str(split_file),
        "options": asdict(run.options), "boxes": run.boxes.as_dict(),
        "sigma2": run.sigma2, "data_scale": run.data_scale, "mask_voxels": run.mask_voxels,
    }


# ---- training ---------------------------------------------------------------------------
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
    batches = _batches(run, rows, opts.batch_size)
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
            mu, logvar = _encode(run, batch, correction)
            z = mu + torch.exp(0.5 * logvar) * eps[torch.as_tensor(batch.rows)].to(run.device)
            res, delta = _residual_terms(run, batch, z, correction)
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
        else:
            correction = None
        _sum_grads(model, ctx)
        run.optimizer.step()
        average_weights(run, epoch * steps + step + 1, steps)
        if correction is not None and correction.grad is not None:
            run.poses.update(batch.rows, correction.grad)
        bar.update(1)
    bar.close()
    if run.poses is not None:
        run.poses.exchange(rows, ctx)
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
    """Latent means and log-variances of every particle at the current weights, and the
    validation losses (reconstruction at z = mu, KL) per particle."""
    n = len(run.inputs.particles)
    zlat = run.model.zdim + run.model.zaffinedim
    mu_all = np.zeros((n, zlat))
    logvar_all = np.zeros((n, zlat))
    val = np.zeros(n, dtype=bool)
    val[run.val_rows] = True
    sums = np.zeros(2)
    rows = ctx.shard(np.arange(n))
    size = ENCODE_BATCHES * run.options.batch_size  # no gradients: larger batches, fewer calls
    net = run.net
    net.eval()
    with torch.no_grad():
        for batch in tqdm(_batches(run, rows, size), desc="encoding",
                          total=math.ceil(len(rows) / size),
                          disable=None if progress else True, leave=False, unit="batch"):
            correction = run.poses.rows(batch.rows, run.device).detach() if run.poses else None
            mu, logvar = _encode(run, batch, correction, net)
            mu_all[batch.rows] = mu.cpu().double().numpy()
            logvar_all[batch.rows] = logvar.cpu().double().numpy()
            is_val = val[batch.rows]
            if is_val.any():
                sel = torch.as_tensor(np.flatnonzero(is_val))
                sub = type(batch)(batch.rows[is_val], batch.spectra[sel],
                                  None if batch.ctf is None else batch.ctf[sel])
                corr = None if correction is None else correction[sel]
                res, _ = _residual_terms(run, sub, mu[sel], corr, net)
                sums[0] += float(res.sum()) / (run.sigma2 * run.mask_voxels)
                sums[1] += float(kl_divergence(mu[sel], logvar[sel]).sum()) / run.mask_voxels
    mu_all = ctx.sum_array(mu_all)
    logvar_all = ctx.sum_array(logvar_all)
    sums = ctx.sum_array(sums)
    count = max(len(run.val_rows), 1)
    return {"mu": mu_all, "logvar": logvar_all, "val_rec": float(sums[0]) / count,
            "val_kl": float(sums[1]) / count}


def checkpoint_path(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"weights.{epoch}.pt"


def latents_path(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"z.{epoch}.npy"


def save_epoch(run: Run, out_dir: Path, epoch: int, encoded: dict, row: dict) -> None:
    """``z.N.npy``, the log line and ``weights.N.pt`` (written last: its presence means the
    epoch is complete)."""
    with atomic_path(latents_path(out_dir, epoch)) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, encoded["mu"].astype(np.float32))
    log = out_dir / LOG
    lines = log.read_text().splitlines() if log.exists() else ["\t".join(LOG_COLUMNS)]
    lines = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[0]) < epoch]
    lines.append("\t".join(f"{row[c]:.6g}" if c != "epoch" else str(epoch)
                           for c in LOG_COLUMNS))
    with atomic_path(log) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    state = {
        "epoch": epoch,
        "model": run.net.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "poses": run.poses.state() if run.poses else None,
        "mu": torch.from_numpy(encoded["mu"]),
        "logvar": torch.from_numpy(encoded["logvar"]),
        "sigma2": run.sigma2,
        "data_scale": run.data_scale,
        "rng_state": torch.get_rng_state(),
        "history": row,
    }
    if run.averaged is not None:
        state["training"] = run.model.state_dict()
    with atomic_path(checkpoint_path(out_dir, epoch)) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, field: str = "--load") -> dict:
    """A checkpoint written by :func:`save_epoch` (tensors and numbers only)."""
    if not path.is_file():
        raise InputError(path, "no such checkpoint", field=field)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file (torch's own message runs to many lines)
        raise InputError(path, "not a readable subtomo hetero checkpoint (truncated, or "
                         "written by another program)", field=field) from None


def epochs_done(out_dir: Path) -> list[int]:
    """Complete epochs (those with ``weights.N.pt``) in ``out_dir``, ascending."""
    found = []
    for p in Path(out_dir).glob("weights.*.pt"):
        middle = p.name[len("weights."):-len(".pt")]
        if middle.isdigit():
            found.append(int(middle))
    return sorted(found)


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InputError(run_dir, f"not a training folder (no {CONFIG})", field="DIR")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError(path, "not a JSON file") from None


def options_from_config(config: dict) -> TrainOptions:
    names = {f.name for f in fields(TrainOptions)}
    return TrainOptions(**{k: v for k, v in config["options"].items() if k in names})


def saved_inputs(run_dir: Path, particles: ParticleSet, matrices: np.ndarray,
                 shifts_A: np.ndarray, sources: dict) -> TrainInputs:
    """Inputs of a run to continue: its particles and poses, and the maps it saved."""
    from subtomo.io.mrc import read_mrc

    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(read_mrc(Path(run_dir) / name)[0].copy())

    config = read_config(run_dir)
    bodies = [load(f"body{j + 1}.mrc") for j in range(len(config.get("masks", [])))]
    return TrainInputs(particles, matrices, shifts_A, load("consensus.mrc"), load("mask.mrc"),
                       bodies, sources)


def restore(run: Run, state: dict) -> None:
    try:
        run.model.load_state_dict(state.get("training", state["model"]))
        if run.averaged is not None:
            run.averaged.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise InputError(None, f"checkpoint does not fit these options ({str(exc)[:120]})",
                         field="--load") from None
    if run.poses is not None and state.get("poses") is not None:
        run.poses.load(state["poses"])
    torch.set_rng_state(state["rng_state"])


def _loop(run: Run, out: Path, first: int, ctx: Context, progress: bool,
          echo, encoded: dict | None) -> TrainResult:
    history = []
    for epoch in range(first, run.options.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        row = train_epoch(run, epoch, ctx, progress and ctx.main)
        encoded = encode_all(run, ctx, progress and ctx.main)
        row.update(epoch=epoch, val_rec=encoded["val_rec"], val_kl=encoded["val_kl"],
                   wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
        if ctx.main:
            save_epoch(run, out, epoch, encoded, row)
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
    import shutil

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


def read_inputs(star: str | Path, *, poses: str | Path | None = None,
                ref: str | Path | None = None, mask: str | Path | None = None,
                masks: list[str] | None = None, angpix: float | None = None,
                datadir: str | Path | None = None, ctf: bool = True) -> TrainInputs:
    """Read what training needs: the STAR file (image names under ``datadir`` if given),
    poses from it or from a pose pickle (``subtomo poses export``), and the maps."""
    from subtomo.io.mrc import read_mrc
    from subtomo.io.poses import read_poses_pickle
    from subtomo.io.star import read_particles
    from subtomo.refine.outputs import full_poses

    ps = read_particles(star, angpix=angpix)
    if datadir is not None:
        root = Path(datadir)
        if not root.is_dir():
            raise InputError(root, "not a folder", field="--datadir")
        df = ps.particles.copy()
        for column in ("rlnImageName", "rlnCtfImage"):
            if column in df:
                df[column] = [name if Path(name.split("@")[-1]).is_absolute() else
                              str(root / name.split("@")[-1]) for name in df[column].astype(str)]
        ps = replace(ps, particles=df)
    box, apix = particle_geometry(ps, angpix)
    if poses is not None:
        if not Path(poses).is_file():
            raise InputError(poses, "file not found", field="--poses")
        try:
            matrices, shifts = read_poses_pickle(poses, box, apix)
        except (ValueError, OSError) as exc:
            raise InputError(poses, str(exc), field="--poses") from None
    else:
        matrices, origins_px = full_poses(ps, apix)
        shifts = origins_px * apix

    def volume(path: str | Path | None, name: str) -> torch.Tensor | None:
        if path is None:
            return None
        role = "reference" if name == "--ref" else "mask"
        return torch.from_numpy(read_mrc(path, role=role, field=name)[0].astype(np.float32))

    sources = {"poses": str(poses) if poses else None, "--ref": str(ref) if ref else None,
               "--mask": str(mask) if mask else None, "angpix": angpix,
               "body_masks": [str(m) for m in masks or []]}
    for name in ("--masks",):
        sources[name] = ", ".join(masks or [])
    return TrainInputs(ps, np.asarray(matrices, dtype=np.float64),
                       np.asarray(shifts, dtype=np.float64), volume(ref, "--ref"),
                       volume(mask, "--mask"), [volume(m, "--masks") for m in masks or []],
                       sources)
