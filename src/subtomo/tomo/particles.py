"""Particles in their tilt series: positions per tilt, and batches of crops for every consumer.

:func:`particle_positions_px` is RELION's ``ParticleSet::getPosition`` (centred Å → tomogram
px about ``size / 2``, minus the origin shift in the tomogram frame ``A_subtomogram · origin``)
plus, with a trajectory set, the particle's displacement in each tilt
(``Trajectory::getShiftsInPix``). :func:`for_each_batch` reads each tilt series' images once,
brings them to the working pixel size and hands batches of
:class:`subtomo.tomo.crops.TiltCrops` to a callback: extraction, reconstruct-particle and
tilt-series refinement share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from subtomo.errors import InputError
from subtomo.io.particles import COORD_PX, ParticleSet
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import TomogramSet
from subtomo.tomo.crops import PreparedImages, TiltCrops, particle_crops, prepare_images

__all__ = ["CropBatch", "for_each_batch", "particle_positions_px", "with_tomograms"]


@dataclass
class CropBatch:
    """One batch of particles of one tilt series: ``rows`` into the particle set, positions
    ``(N, T, 3)`` (px), crops, particle matrices ``(N, 3, 3)``, tilt rotations ``(T, 3, 3)``,
    the prepared images and the tilt series (with the tilts in use)."""

    ts: TiltSeries
    rows: np.ndarray
    positions_px: Tensor
    crops: TiltCrops
    matrices: Tensor
    rotations: Tensor
    prepared: PreparedImages


def with_tomograms(ps: ParticleSet, tomograms: TomogramSet) -> ParticleSet:
    """``ps`` with the tomogram table, after checking names and pixel sizes agree."""
    names = ps.tomo_names()
    if names is None:
        raise InputError(ps.source, "particles name no tomogram", field="rlnTomoName")
    for name in sorted(set(names)):
        if name not in tomograms.series:
            raise InputError(ps.source, f"particle names tomogram {name!r}, which is not in "
                             f"{tomograms.source}", field="rlnTomoName")
    if "rlnTomoTiltSeriesPixelSize" in ps.optics:
        pixel_size_A = ps.optics_column("rlnTomoTiltSeriesPixelSize")
        expected = np.array([tomograms[n].pixel_size_A for n in names])
        bad = np.flatnonzero(np.abs(pixel_size_A - expected) > 1e-3 * expected)
        if len(bad):
            i = int(bad[0])
            raise InputError(ps.source,
                             f"tilt-series pixel size {pixel_size_A[i]} Å disagrees with "
                             f"{expected[i]} Å of tomogram {names.iloc[i]} in "
                             f"{tomograms.source}", field="rlnTomoTiltSeriesPixelSize")
    ps.tomograms = tomograms.global_table()
    return ps


def particle_positions_px(ps: ParticleSet, ts: TiltSeries, rows: np.ndarray,
                          motion: dict[str, np.ndarray] | None = None,
                          apply_origins: bool = True) -> Tensor:
    """Tomogram positions ``(N, T, 3)`` (tilt-series px) of particles ``rows`` in each tilt."""
    sub = ps.subset(rows)
    pixel = sub.with_pixel_coordinates()
    coords = pixel.particles[list(COORD_PX)].to_numpy(np.float64)
    coord_pixel_size_A = pixel.coordinate_pixel_size_A()
    coord_pixel_size_A = np.where(np.isfinite(coord_pixel_size_A), coord_pixel_size_A,
                                  ts.pixel_size_A)
    pos = coords * (coord_pixel_size_A / ts.pixel_size_A)[:, None]
    if apply_origins:
        pos = pos - sub.tomogram_shifts_A() / ts.pixel_size_A
    out = torch.from_numpy(pos)[:, None].expand(-1, ts.n_tilts, -1).clone()
    if motion is not None:
        if "rlnTomoParticleName" not in sub.particles:
            raise InputError(ps.source, "a trajectory set needs particle names",
                             field="rlnTomoParticleName")
        for i, name in enumerate(sub.particles["rlnTomoParticleName"].astype(str)):
            if name not in motion:
                raise InputError(ps.source, f"no trajectory for particle {name!r} in the "
                                 "motion set", field="rlnTomoParticleName")
            shifts = np.asarray(motion[name])
            if shifts.shape != (ts.n_tilts, 3):
                raise InputError(ps.source, f"trajectory of {name!r} has {len(shifts)} tilts; "
                                 f"tilt series {ts.name} has {ts.n_tilts}",
                                 field="rlnTomoParticleName")
            out[i] += torch.from_numpy(shifts) / ts.pixel_size_A
    return out


def check_box(ts: TiltSeries, box: int, pixel_size_A: float, field: str = "--b") -> None:
    """Refuse an odd box, or one wider than the tilt images: ``box · pixel_size_A`` must not
    exceed ``min(W, H) · ts.pixel_size_A`` (Å)."""
    if box % 2:
        raise InputError(None, f"box {box} px must be even", field=field)
    w, h = ts.image_size_px
    if box * pixel_size_A > min(w, h) * ts.pixel_size_A:
        raise InputError(None, f"box of {box} px at {pixel_size_A:g} Å ({box * pixel_size_A:g} "
                         f"Å) is wider than the {w}×{h} px tilt images of {ts.name} at "
                         f"{ts.pixel_size_A:g} Å", field=field)


def for_each_batch(
    ps: ParticleSet,
    tomograms: TomogramSet,
    size: int,
    pixel_size_A: float,
    fn: Callable[[CropBatch], None],
    *,
    motion: dict[str, np.ndarray] | None = None,
    tilts: Callable[[TiltSeries], np.ndarray] | None = None,
    ctf: bool = True,
    apply_origins: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "particles",
) -> None:
    """Call ``fn`` on batches of ``size``-px crops at ``pixel_size_A`` of all particles, tilt
    series by tilt series (images read once each). ``tilts(ts)`` may select tilts (bool
    ``(T,)``); motion trajectories follow the selection."""
    ps = with_tomograms(ps, tomograms)
    names = ps.tomo_names().to_numpy()
    for name in dict.fromkeys(names):  # fail before any work
        tomograms[name].check_images()
        check_box(tomograms[name], size, pixel_size_A)
    matrices = ps.rotation_matrices().to(torch.float64)
    # no bar where stderr is not a terminal (logs, captured output): an error stays one line
    with tqdm(total=len(ps), desc=desc, disable=None if progress else True,
              unit="particle") as bar:
        for name in dict.fromkeys(names):
            ts = tomograms[name]
            keep = np.ones(ts.n_tilts, bool) if tilts is None else np.asarray(tilts(ts), bool)
            if not keep.any():
                raise InputError(ts.source, f"tilt series {name}: no tilt is selected",
                                 field="rlnMicrographPreExposure")
            ts_motion = None
            if motion is not None:
                ts_motion = {k: np.asarray(v)[keep] if len(v) == ts.n_tilts else np.asarray(v)
                             for k, v in motion.items()}
            ts = ts.subset_tilts(keep)
            prepared = prepare_images(ts.read_images().to(device), ts.pixel_size_A, pixel_size_A)
            mats = ts.matrices(device=device)
            rotations = mats[:, :3, :3]
            rows_all = np.flatnonzero(names == name)
            positions = particle_positions_px(ps, ts, rows_all, ts_motion, apply_origins)
            for start in range(0, len(rows_all), batch_size):
                rows = rows_all[start:start + batch_size]
                pos = positions[start:start + batch_size].to(device)
                crops = particle_crops(ts, prepared, pos, size, pixel_size_A, ctf=ctf,
                                       matrices=mats)
                fn(CropBatch(ts, rows, pos, crops, matrices[torch.as_tensor(rows)].to(device),
                             rotations, prepared))
                bar.update(len(rows))

