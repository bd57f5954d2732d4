"""Subtomogram average straight from the tilt series (``relion_tomo_reconstruct_particle``).

Every visible tilt of every particle is one CTF-weighted central slice: the crop's spectrum
(:func:`subtomo.tomo.crops.particle_crops`, centred on the projected position, contrast
flipped) with ``c = CTF(particle depth) × exposure filter`` is inserted into the particle's
half-set Fourier volume at ``(D R_t A_i R_g)ᵀ (kx, ky, 0)``: ``R_t`` the tilt's rotation, ``A_i``
the particle's RELION matrix (subtomogram frame composed in), ``R_g`` each symmetry operator and
``D = diag(p/p_x, p/p_y, 1)`` the (tiny) anisotropy of a non-integer image binning. Data
accumulate ``Σ c X``, weights ``Σ c²``; the half maps, their FSC and the Wiener-filtered merged
map come from :func:`subtomo.refine.reconstruct.gold_standard` (τ² from the FSC), exactly as for
subtomograms. Particles and tilts are batched; memory grows with the batch, not the data set.

Two real-space masks that RELION 5 applies by default, and which account for the whole of its
lead over us against the truth at 30–20 Å on small boxes (issue 25; untapered and without the
crop, our map is the better one), are options here (off by default, so that every figure in
bench/RESULTS.md still describes the code): each 2D crop cut to a soft circle, corners' mean
subtracted (:func:`subtomo.tomo.crops.crop_circle`, ``--circle_crop``), and the written maps
tapered to the sphere (:func:`write_outputs`, ``--taper 10`` as RELION).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.fourier.projector import Backprojector
from subtomo.fourier.reconstruction import taper_to_sphere
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io.fsc_star import write_fsc_star
from subtomo.io.mrc import write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.tomograms import TomogramSet
from subtomo.refine.reconstruct import Reconstruction, gold_standard, half_sets
from subtomo.report.plots import plot_fsc
from subtomo.tomo.particles import for_each_batch, output_pixel_size_A

__all__ = ["reconstruct_particle"]


def reconstruct_particle(
    particles: ParticleSet,
    tomograms: TomogramSet,
    *,
    box: int,
    crop: int | None = None,
    pixel_size_A: float | None = None,
    sym: str = "C1",
    motion: dict[str, np.ndarray] | None = None,
    pad: int = 2,
    circle_crop: bool = False,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> Reconstruction:
    """Gold-standard half maps and merged map of ``particles`` from their tilt series.

    ``box``: 2D crop and reconstruction box (px at the output pixel size); ``crop``: smaller
    output box (maps cropped about the centre); ``pixel_size_A``: output pixel size (default:
    the tilt series'; any ratio); ``motion``: trajectories by particle name (Å per tilt);
    ``circle_crop``: crops through :func:`subtomo.tomo.crops.crop_circle`, as RELION 5's.
    """
    try:
        ops = symmetry_operators(sym, dtype=torch.float64)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from None
    if box < 8 or (crop is not None and not 8 <= crop <= box):
        raise InputError(None, "need --b ≥ 8 and 8 ≤ --crop ≤ --b", field="--b")
    if crop is not None and crop % 2:
        raise InputError(None, f"--crop {crop} px must be even", field="--crop")
    out_pixel_size_A, _ = output_pixel_size_A(particles, tomograms, pixel_size_A)
    halves = half_sets(particles, seed)
    bps = [Backprojector(box, pad=pad, device=device, dtype=torch.float32) for _ in (1, 2)]
    counts = {"particles": 0, "skipped": 0, "tilts": 0}
    ops = ops.to(device=device, dtype=torch.float32)

    def insert(batch) -> None:
        crops, rows, A = batch.crops, batch.rows, batch.matrices
        vis = crops.visible
        keep = vis.any(1)
        counts["skipped"] += int((~keep).sum())
        counts["particles"] += int(keep.sum())
        counts["tilts"] += int(vis.sum())
        if not bool(vis.any()):
            return
        px, py = batch.prepared.pixel_size_A
        aniso = torch.diag(torch.tensor([out_pixel_size_A / px, out_pixel_size_A / py, 1.0],
                                        dtype=torch.float64,
                                        device=A.device))
        frames = aniso @ batch.rotations[None] @ A[:, None]  # (N, T, 3, 3)
        for h in (1, 2):
            sel = vis & torch.as_tensor(halves[rows] == h, device=vis.device)[:, None]
            if not bool(sel.any()):
                continue
            spectra, ctf = crops.spectra[sel], crops.ctf[sel]
            frame = frames[sel].to(torch.float32)
            for op in ops:
                bps[h - 1].insert_slices(spectra, frame @ op, ctf)

    for_each_batch(particles, tomograms, box, out_pixel_size_A, insert, motion=motion,
                   circle_crop=circle_crop, batch_size=batch_size, device=device, progress=progress,
                   desc="reconstructing")
    if counts["particles"] == 0:
        raise InputError(particles.source, "no particle is visible in any tilt image")
    for h, bp in enumerate(bps, 1):
        if float(bp.weight.sum()) == 0:
            raise InputError(particles.source, f"half set {h} is empty",
                             field="rlnRandomSubset")
    result = gold_standard(bps[0], bps[1], out_pixel_size_A, pad)
    result.n_particles = counts["particles"]
    if crop is not None and crop < box:
        start = box // 2 - crop // 2
        cut = (slice(start, start + crop),) * 3
        result.map, result.half1, result.half2 = (v[cut].contiguous() for v in (
            result.map, result.half1, result.half2))
        result.fsc = fsc(result.half1, result.half2)
        result.resolution_A = resolution_at(result.fsc, crop, out_pixel_size_A)
    result.skipped = counts["skipped"]  # type: ignore[attr-defined]
    result.tilt_images = counts["tilts"]  # type: ignore[attr-defined]
    return result


def write_outputs(result: Reconstruction, out: Path, taper_px: float = 0.0) -> None:
    """``half1.mrc``, ``half2.mrc``, ``merged.mrc``, ``fsc.star`` and ``fsc.png`` in ``out``.

    ``taper_px`` > 0: the three maps are written through :func:`taper_to_sphere`, as
    ``relion_tomo_reconstruct_particle --taper`` writes them (its default is 10 px); the FSC
    stays that of the untapered half maps.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name, volume in (("half1", result.half1), ("half2", result.half2),
                         ("merged", result.map)):
        if taper_px > 0:
            volume = taper_to_sphere(volume, taper_px)
        write_mrc(out / f"{name}.mrc", volume, result.pixel_size_A)
    box = result.map.shape[-1]
    write_fsc_star(out / "fsc.star", {"corrected": result.fsc, "unmasked": result.fsc}, box,
                   result.pixel_size_A, {"final_resolution_A": result.resolution_A,
                                         "half1": "half1.mrc", "half2": "half2.mrc"})
    plot_fsc({"half maps": result.fsc.cpu()}, box, result.pixel_size_A, out / "fsc.png",
             title=f"reconstruct-particle: {result.resolution_A:.2f} Å at FSC 0.143")
