"""Particles in their tilt series: positions per tilt, and batches of crops for every consumer.

Positions per tilt are :func:`subtomo.io.particle_series.particle_positions_px` (RELION's
``ParticleSet::getPosition`` plus each particle's trajectory). :func:`for_each_batch` reads each
tilt series' images once, brings them to the working pixel size and hands batches of
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
from subtomo.io.particle_series import particle_positions_px
from subtomo.io.particles import ParticleSet
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import TomogramSet
from subtomo.tomo.crops import PreparedImages, TiltCrops, particle_crops, prepare_images

__all__ = ["CropBatch", "for_each_batch", "output_pixel_size_A", "with_tomograms"]


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


def output_pixel_size_A(particles: ParticleSet, tomograms: TomogramSet,
                        pixel_size_A: float | None) -> tuple[float, float]:
    """The output pixel size (``--angpix``, default the first particle's tilt series') and that
    tilt series' pixel size, Å; one clear error for a set without tomogram names or a
    non-positive pixel size."""
    names = particles.tomo_names()
    if names is None or len(particles) == 0:
        raise InputError(particles.source, "no particles with tomogram names",
                         field="rlnTomoName")
    first = tomograms[str(names.iloc[0])]
    out = float(pixel_size_A or first.pixel_size_A)
    if out <= 0:
        raise InputError(None, "pixel size must be positive", field="--angpix")
    return out, float(first.pixel_size_A)


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
    circle_crop: bool = False,
    apply_origins: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "particles",
) -> None:
    """Call ``fn`` on batches of ``size``-px crops at ``pixel_size_A`` of all particles, tilt
    series by tilt series (images read once each). ``tilts(ts)`` may select tilts (bool
    ``(T,)``); motion trajectories follow the selection. ``circle_crop``: see
    :func:`subtomo.tomo.crops.crop_circle`."""
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
                                       matrices=mats, circle_crop=circle_crop)
                fn(CropBatch(ts, rows, pos, crops, matrices[torch.as_tensor(rows)].to(device),
                             rotations, prepared))
                bar.update(len(rows))

