"""Particle picking by template matching (``subtomo pick``): from a tilt series and a template
to picks with orientations, scores and an estimate of the false alarms among them.

1. The tomogram at the picking voxel size: ``rlnTomoReconstructedTomogram`` when the set has
   one, else weighted back-projection (:func:`subtomo.tomo.reconstruct_tomogram`), negated so
   that protein is white.
2. The template is resampled to that voxel size (Fourier crop or pad after padding its box so
   that the new box is a whole number of voxels), its mask with it.
3. What a voxel sees (:func:`template_weights`): per z-slab, the CTF of every tilt at the
   slab's depth with its exposure filter, gridded on the tilt planes exactly as the package's
   extraction grids a subtomogram's CTF (:class:`subtomo.ctf.volume.CtfGridder`, the missing
   wedge of the real tilts included), times the back-projection's fall-off to Nyquist.
4. The global search (:func:`subtomo.tomo.template_matching.match_template`): every voxel,
   every rotation of a RELION HEALPix grid (:func:`subtomo.geometry.healpix.rotation_grid`)
   at ``coarse_factor`` (2) times the requested step, for the template's symmetry.
5. Peaks at ``min_distance`` and a threshold on the global scores: the top ``number``, a given
   score, or ``auto``, where the expected false picks from the empirical null
   (:mod:`subtomo.tomo.peaks`) equal ``false_positives``, raised past a lower mode of other
   objects (:func:`without_other_objects`).
6. Each pick refined locally at the requested step (:func:`refine_picks`): rotations within
   one global step, ±1 voxel, the template weighted at the pick's own depth. With ``auto``,
   picks whose refined scores form a separate lower mode are left out
   (:func:`without_other_objects`: another kind of object, not noise).

Why a coarse global search: the whole-tomogram search costs one inverse FFT of the tomogram
per rotation, and a HEALPix grid at half the step has 8× the rotations; a detection needs
the score, not the last degrees, which the local search then finds for the picks alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from subtomo.ctf.volume import CtfGridder, tilt_pairs
from subtomo.errors import InputError
from subtomo.fourier.grid import resample_map, rfft_freqs
from subtomo.geometry.euler import euler_to_matrix, matrix_to_euler
from subtomo.geometry.healpix import angular_step_deg, local_rotations, rotation_grid
from subtomo.geometry.tilt import tilt_rotations
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc
from subtomo.io.tilt_series import TiltSeries
from subtomo.tomo.peaks import FalseAlarms, false_alarms, find_peaks, split_modes
from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram
from subtomo.tomo.template_matching import (
    MatchResult,
    match_template,
    prepared,
    refine_peaks,
    slab_thickness_px,
)

__all__ = ["PickOptions", "Picks", "healpix_order_for", "load_template", "picking_tomogram",
           "refine_picks", "search_tomogram", "template_weights", "threshold_picks",
           "without_other_objects"]


@dataclass
class PickOptions:
    """What ``subtomo pick`` searches for and how it thresholds (lengths in Å)."""

    particle_diameter_A: float
    angular_step_deg: float = 15.0
    sym: str = "C1"
    number: int | None = None
    threshold: float | None = None  # None: auto
    false_positives: float = 1.0
    min_distance_A: float | None = None  # default: the particle diameter
    whitening: bool = True
    coarse_factor: float = 2.0  # the global search's step / angular_step
    split_modes: bool = True  # auto threshold: drop a lower mode of other objects
    batch: int = 4
    device: str = "cpu"

    @property
    def search_order(self) -> int:
        """HEALPix order of the global search."""
        return healpix_order_for(self.angular_step_deg * self.coarse_factor)


@dataclass
class Picks:
    """One tomogram's picks: positions ``(K, 3)`` in tilt-series px (x, y, z, the tomogram
    frame), RELION angles ``(K, 3)``, scores, the threshold and the expected false picks, the
    search result, the null statistics and the heights of every peak above 0."""

    positions_px: np.ndarray
    angles_deg: np.ndarray
    scores: np.ndarray
    threshold: float
    expected_false: float
    match: MatchResult
    null: FalseAlarms
    voxel_A: float
    peaks: np.ndarray


def healpix_order_for(step_deg: float) -> int:
    """The coarsest HEALPix order whose angular step is at most ``step_deg``."""
    if not step_deg > 0:
        raise InputError(None, f"angular step {step_deg}° must be positive",
                         field="--angular_step")
    order = 0
    while angular_step_deg(order) > step_deg * (1 + 1e-6) and order < 6:
        order += 1
    return order


def _padded_box(box: int, from_A: float, to_A: float) -> tuple[int, int]:
    """A box ≥ ``box`` (at ``from_A``) whose width is a whole, even number of ``to_A``
    voxels to within 0.5 %, and that number."""
    for size in range(box, 2 * box + 2):
        target = size * from_A / to_A
        new = int(round(target / 2)) * 2
        if new >= 4 and abs(target - new) <= 0.005 * new:
            return size, new
    return box, max(4, int(round(box * from_A / to_A / 2)) * 2)


def load_template(path: str | Path, voxel_A: float, *, mask_path: str | Path | None = None,
                  template_A: float | None = None) -> tuple[Tensor, Tensor | None]:
    """The template (and mask) resampled to ``voxel_A``; refuses a template whose pixel size
    is unknown, a mask of another box."""
    data, header_A = read_mrc(path, role="reference", field="--template")
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(path, f"template must be a cube, got {data.shape}", field="--template")
    apix = template_A or header_A
    if not apix or apix <= 0:
        raise InputError(path, "the template's pixel size is unset (0 in its header): it "
                         "cannot be resampled to the tomogram's; give --template_angpix",
                         field="--template")
    mask = None
    if mask_path is not None:
        mask, _ = read_mrc(mask_path, role="mask", field="--mask")
        if mask.shape != data.shape:
            raise InputError(mask_path, f"mask box {mask.shape} differs from the template's "
                             f"{data.shape}", field="--mask")
    box = data.shape[0]
    size, new = _padded_box(box, apix, voxel_A)
    pad = (size - box) // 2, size - box - (size - box) // 2

    def resampled(volume: np.ndarray) -> Tensor:
        padded = np.pad(volume, [pad] * 3)
        return resample_map(torch.from_numpy(padded).double(), new).float()

    template = resampled(data)
    if new < 8:
        raise InputError(path, f"the template resampled to {voxel_A:g} Å is {new} voxels "
                         "wide: too small to match; pick at a finer voxel size",
                         field="--template")
    return template, (resampled(mask).clamp(0, 1) if mask is not None else None)


def picking_tomogram(ts: TiltSeries, binning: float | None, device: str = "cpu"
                     ) -> tuple[Tensor, float, float]:
    """The tomogram (protein white, ``(Z, Y, X)``), its voxel size (Å) and binning."""
    name = ts.globals.get("rlnTomoReconstructedTomogram")
    if name is not None and binning is None:
        base = Path(ts.source).parent if ts.source else None
        path = resolve(str(name), base)
        data, voxel = read_mrc(path, what="tomogram", field="rlnTomoReconstructedTomogram")
        binning = float(ts.globals.get("rlnTomoTomogramBinning", voxel / ts.pixel_size_A))
        return -torch.from_numpy(data), ts.pixel_size_A * binning, binning
    binning = binning or 8.0
    volume, voxel = reconstruct_tomogram(ts, binning=binning, device=device)
    validate.finite(volume.cpu().numpy(), ts.source or ts.name, what=f"tomogram {ts.name}",
                    field="rlnMicrographName")
    return -volume, voxel, binning


def template_weights(ts: TiltSeries, box: int, voxel_A: float, binning: float,
                     shape: tuple[int, int, int], device: str = "cpu"):
    """``z (binned voxel) → (D, D, D // 2 + 1)`` weights: CTF × exposure per tilt at the slab
    centre's depth, gridded on the tilt planes, times a cosine fall-off to 0 at Nyquist."""
    frames = tilt_rotations(*ts.dof()[:3]).to(device)
    gridder = CtfGridder(tilt_pairs(box, voxel_A, frames),
                         torch.as_tensor(ts.pre_exposure, device=device),
                         voltage_kv=ts.voltage_kv, cs_mm=ts.cs_mm,
                         amplitude_contrast=ts.amplitude_contrast)
    radius = rfft_freqs(box, device=device).norm(dim=-1) / 0.5
    taper = torch.where(radius < 1, 0.5 * (1 + torch.cos(math.pi * radius)), 0.0)
    nz, ny, nx = shape

    def weights(z: float) -> Tensor:
        centre = torch.tensor([[nx / 2, ny / 2, z]], dtype=torch.float64) * binning
        u, v, angle = (x.to(device) for x in ts.defocus_at(centre))
        w = gridder((u + v) / 2, astigmatism_A=u - v, astigmatism_angle_deg=angle)
        return (w.reshape(box, box, box // 2 + 1) * taper).float()

    return weights


def search_tomogram(ts: TiltSeries, template: Tensor, mask: Tensor | None, opts: PickOptions,
                    binning: float | None = None, progress: bool = True
                    ) -> tuple[MatchResult, Tensor, float, float]:
    """Score maps of one tilt series' tomogram (module docstring), the tomogram (protein
    white), its voxel size (Å) and binning."""
    volume, voxel_A, binning = picking_tomogram(ts, binning, opts.device)
    box = template.shape[-1]
    if box > min(volume.shape):
        raise InputError(None, f"template box {box} voxels at {voxel_A:g} Å is larger than "
                         f"tomogram {ts.name} ({tuple(volume.shape[::-1])} voxels)",
                         field="--template")
    mats, _ = rotation_grid(opts.search_order, opts.sym)
    result = match_template(
        volume, template, mats, template_weights(ts, box, voxel_A, binning,
                                                 tuple(volume.shape), opts.device),
        mask=mask, sphere_diameter_px=min(opts.particle_diameter_A / voxel_A, box - 2),
        slab_px=slab_thickness_px(voxel_A, ts.voltage_kv), whitening=opts.whitening,
        batch=opts.batch, device=opts.device, progress=progress, desc=f"matching {ts.name}")
    return result, volume, voxel_A, binning


def threshold_picks(result: MatchResult, opts: PickOptions, voxel_A: float,
                    binning: float) -> Picks:
    """Peaks of the score map above the threshold ``opts`` asks for (module docstring)."""
    distance = (opts.min_distance_A or opts.particle_diameter_A) / voxel_A
    cand, scores = find_peaks(result.scores, distance, floor=0.0, valid=result.valid)
    null = false_alarms(result.null, distance, result.valid, cand, scores)
    if opts.number is not None:
        keep = min(opts.number, len(scores))
        threshold = float(scores[keep - 1]) if keep else 1.0
    elif opts.threshold is not None:
        threshold = opts.threshold
    else:
        threshold = null.threshold_for(opts.false_positives)
    chosen = scores >= threshold
    if opts.number is not None:
        chosen &= torch.arange(len(scores), device=scores.device) < opts.number
    picks, picked = cand[chosen], scores[chosen]
    expected = null.null_count(threshold)
    mats, _ = rotation_grid(opts.search_order, opts.sym)
    index = result.angles[tuple(picks.T)].long().cpu()
    angles = matrix_to_euler(mats[index].double()).numpy() if len(index) else np.zeros((0, 3))
    positions = picks.flip(-1).double().cpu().numpy() * binning  # (x, y, z) tilt-series px
    return Picks(positions, angles, picked.cpu().numpy(), threshold, expected, result, null,
                 voxel_A, scores.cpu().numpy())


def refine_picks(picks: Picks, ts: TiltSeries, volume: Tensor, template: Tensor,
                 mask: Tensor | None, opts: PickOptions) -> Picks:
    """Each pick searched again locally (:func:`subtomo.tomo.template_matching.refine_peaks`):
    rotations on a cubic grid of ``angular_step`` within one global step of the global best,
    shifts of ±1 voxel (then to a fraction of a voxel), the template weighted at the pick's own
    depth. The position, angles
    and score (``rlnAutopickFigureOfMerit``) become the refined ones, in decreasing score; the
    threshold stays on the global search's scores."""
    if not len(picks.scores):
        return picks
    box = template.shape[-1]
    binning = picks.voxel_A / ts.pixel_size_A
    searched, white = prepared(volume, box, opts.whitening, opts.device)
    voxels = torch.as_tensor(np.round(picks.positions_px / binning)[:, ::-1].copy()).long()
    coarse = euler_to_matrix(torch.as_tensor(picks.angles_deg)).float()
    local = local_rotations(opts.angular_step_deg,
                            angular_step_deg(opts.search_order) * (1 + 1e-6))
    refined = refine_peaks(
        searched, white, template, voxels, coarse, local,
        template_weights(ts, box, picks.voxel_A, binning, tuple(volume.shape), opts.device),
        mask=mask, sphere_diameter_px=min(opts.particle_diameter_A / picks.voxel_A, box - 2))
    order = torch.argsort(refined.scores.cpu(), descending=True)
    positions = refined.positions.cpu()[order].flip(-1).double().numpy() * binning
    angles = matrix_to_euler(refined.rotations.double().cpu()[order]).numpy()
    return replace(picks, positions_px=positions, angles_deg=angles,
                   scores=refined.scores.cpu()[order].numpy())


def without_other_objects(picks: Picks, opts: PickOptions) -> Picks:
    """With the automatic threshold, the refined picks less a lower mode of their scores
    (:func:`subtomo.tomo.peaks.split_modes`): objects the template resembles but does not
    match score apart from those it does once each pick is refined."""
    if opts.number is not None or opts.threshold is not None or not opts.split_modes:
        return picks
    split = split_modes(picks.scores)
    if split is None:
        return picks
    keep = picks.scores >= split[0]
    print(f"{int((~keep).sum())} of {len(keep)} picks left out: their refined scores form a "
          f"lower mode (Ashman's D {split[1]:.1f}, split at {split[0]:.3f}), taken for another "
          "kind of object (--no_split_modes keeps them)")
    return replace(picks, positions_px=picks.positions_px[keep],
                   angles_deg=picks.angles_deg[keep], scores=picks.scores[keep])
