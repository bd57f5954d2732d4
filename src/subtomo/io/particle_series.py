"""Particle series: per particle, the 2D crops of its visible tilt images (RELION 5
pseudo-subtomograms as 2D stacks, WarpTools particle series).

A set is a particle series when ``rlnTomoSubTomosAre2DStacks`` is 1 in its general block or its
optics say ``rlnImageDimensionality 2`` while naming tomograms. Per particle:

- ``rlnImageName``: one ``.mrcs`` stack holding one image per visible tilt, in tilt-series
  order (WarpTools before 2026: one per tilt, the excluded ones ≈ 0);
- ``rlnTomoVisibleFrames``: ``[1,1,0,...]``, one flag per tilt of its tilt series (absent: all
  tilts visible, as WarpTools writes);
- the images are CTF- and dose-premultiplied (``rlnCtfDataAreCtfPremultiplied 1``, RELION 5
  and ``subtomo extract --2d_stacks``), or not (``0``: ``subtomo export tomodrgn`` by default;
  the reader multiplies them by CTF × exposure) and show protein white; each crop is centred
  on the projection of the particle's coordinate (the origin ``rlnOrigin*Angst`` stays a
  translation to refine);
- the per-tilt projection, defocus (at the particle's depth), dose and optics come from the
  tomogram set (:class:`subtomo.io.tomograms.TomogramSet`): RELION 5 tilt-series STAR files or
  RELION 4 / WarpTools projection matrices. A set without one cannot be used: the tilts' geometry
  and CTFs are not in the particle file.

:func:`attach_tomograms` checks a set against its tomograms once (names, visible-frame counts)
and composes any subtomogram frame into the angles, so that poses live in the tomogram frame in
which the slices are laid out; WarpTools' coordinates (in the particles' pixels) become
tilt-series pixels there. :func:`read_stack_spectra` reads a batch of stacks as centred 2D
spectra ``(N, T, S, S // 2 + 1)`` with zeros at invisible tilts. :func:`particle_positions_px` is
RELION's ``ParticleSet::getPosition`` (centred Å → tomogram px, minus the origin in the tomogram
frame) plus the trajectory of each particle when a motion set is given.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from subtomo.errors import InputError
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc
from subtomo.io.particles import COORD_PX, ParticleSet
from subtomo.io.star import read_particles
from subtomo.io.star_text import read_star
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import (
    TomogramSet,
    read_inputs,
    read_motion,
    read_tomogram_set,
    tomogram_files,
)

__all__ = ["SeriesSource", "attach_tomograms", "is_particle_series", "particle_positions_px",
           "read_particle_input", "read_stack_spectra", "visible_frames"]


@dataclass
class SeriesSource:
    """What a particle series needs beyond its STAR file: the tomograms and any trajectories."""

    tomograms: TomogramSet
    motion: dict[str, np.ndarray] | None = None
    motion_source: str | None = None  # the motion.star the trajectories came from
    cut_with: SeriesSource | None = None  # the geometry the crops were cut with, if other
    operators: OrderedDict = field(default_factory=OrderedDict, repr=False)  # per tilt series

    def files(self) -> list[Path]:
        """The tomogram set's files (STAR files and tilt stacks) a job on the series reads."""
        return tomogram_files(self.tomograms)


def is_particle_series(ps: ParticleSet) -> bool:
    """True for 2D-stack particle sets (module docstring; :meth:`ParticleSet.are_2d_stacks`)."""
    return ps.are_2d_stacks()


def visible_frames(ps: ParticleSet, row: int, n_tilts: int) -> np.ndarray:
    """Bool ``(T,)`` visible tilts of particle ``row`` (0-based) in a tilt series of
    ``n_tilts``; all tilts where the set has no ``rlnTomoVisibleFrames``."""
    if "rlnTomoVisibleFrames" not in ps.particles:
        return np.ones(n_tilts, bool)
    text = str(ps.particles["rlnTomoVisibleFrames"].iloc[row]).strip().strip("[]")
    try:
        flags = np.array([int(float(x)) for x in text.split(",") if x.strip()], dtype=int)
    except ValueError:
        raise InputError(ps.source, f"particle {row + 1}: visible frames {text!r} are not 0/1 "
                         "flags", field="rlnTomoVisibleFrames") from None
    if len(flags) != n_tilts or not np.isin(flags, (0, 1)).all():
        raise InputError(ps.source, f"particle {row + 1}: {len(flags)} visible-frame flags for a "
                         f"tilt series of {n_tilts} tilts", field="rlnTomoVisibleFrames")
    return flags.astype(bool)


def attach_tomograms(ps: ParticleSet, tomograms: TomogramSet | None,
                     motion: dict[str, np.ndarray] | None = None,
                     motion_source: str | Path | None = None) -> ParticleSet:
    """The series ``ps`` with its tomograms attached (``ps.series``), after checking that every
    particle's tomogram is in the set and its visible-frame flags fit that tilt series.
    Subtomogram frames are composed into the angles (poses in the tomogram frame)."""
    if tomograms is None:
        raise InputError(ps.source, "a 2D-stack particle set needs its tomograms: give --i "
                         "optimisation_set.star or --tomograms tomograms.star",
                         field="rlnTomoTiltSeriesStarFile")
    names = ps.tomo_names()
    if names is None:
        raise InputError(ps.source, "2D-stack particles name no tomogram", field="rlnTomoName")
    for name in dict.fromkeys(names):
        if name not in tomograms.series:
            raise InputError(ps.source, f"particles name tomogram {name!r}, which is not in "
                             f"{tomograms.source}", field="rlnTomoName")
    if "rlnImageName" not in ps.particles:
        raise InputError(ps.source, "particles have no images", field="rlnImageName")
    for row, name in enumerate(names):
        visible_frames(ps, row, tomograms[name].n_tilts)
    out = _warptools_coordinates(ps.without_subtomogram_angles(), tomograms)
    source = SeriesSource(tomograms, motion,
                          None if motion_source is None else str(motion_source))
    source.cut_with = _cut_with(ps, source)
    return replace(out, series=source, tomograms=tomograms.global_table())


def _same_file(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()


def _cut_with(ps: ParticleSet, current: SeriesSource) -> SeriesSource | None:
    """The tomograms and trajectories the crops were cut with (``rlnTomoTomogramsFile`` and
    ``rlnTomoTrajectoriesFile`` of the general block, as ``subtomo extract --2d_stacks`` writes
    them), when they differ from ``current``: the reader then re-centres each crop on the
    particle's position under the current geometry. None: same geometry, or not recorded."""
    name = ps.general.get("rlnTomoTomogramsFile")
    if not name:
        return None
    star_dir = Path(ps.source).parent if ps.source else None
    path = resolve(str(name), star_dir)
    if not path.is_file():
        raise InputError(ps.source, f"tomograms the stacks were cut with, {str(name)!r}, not "
                         "found", field="rlnTomoTomogramsFile")
    motion_name = ps.general.get("rlnTomoTrajectoriesFile")
    motion_path = resolve(str(motion_name), star_dir) if motion_name else None
    if _same_file(path, current.tomograms.source) and _same_file(motion_path,
                                                                  current.motion_source):
        return None
    tset = read_tomogram_set(path)
    for name in dict.fromkeys(ps.tomo_names()):
        if name not in tset.series or tset[name].n_tilts != current.tomograms[name].n_tilts:
            raise InputError(ps.source, f"tomogram {name!r} of the stacks' geometry "
                             f"{str(path)!r} is missing or has other tilts",
                             field="rlnTomoTomogramsFile")
    motion = read_motion(motion_path) if motion_path is not None else None
    return SeriesSource(tset, motion, None if motion_path is None else str(motion_path))


def _warptools_coordinates(ps: ParticleSet, tomograms: TomogramSet) -> ParticleSet:
    """``ps`` with the coordinates of its WarpTools particles in tilt-series pixels.

    WarpTools counts ``rlnCoordinateX/Y/Z`` of a particle series in the exported particles'
    pixels, ``rlnImagePixelSize`` (``TiltSeries.ReconstructParticleSeries``: position /
    ``BinnedPixelSizeMean``), where RELION reads tilt-series pixels; until warpem/warp 7ad2dcc
    (2026) it wrote the tilt series' own pixel as ``rlnTomoTiltSeriesPixelSize`` (since then the
    particles' pixel, so that the two agree). Only the depth, hence the defocus, depends on it:
    the crops are centred on their particle."""
    names = ps.tomo_names()
    if not ps.has_pixel_coordinates() or "rlnImagePixelSize" not in ps.optics:
        return ps
    warptools = names.map(lambda name: tomograms[name].warptools).to_numpy(bool)
    if not warptools.any():
        return ps
    scale = ps.optics_column("rlnImagePixelSize") / ps.coordinate_pixel_size_A()
    scale = np.where(warptools & np.isfinite(scale), scale, 1.0)
    df = ps.particles.copy()
    for label in COORD_PX:
        if label in df:
            df[label] = df[label].to_numpy(float) * scale
    return replace(ps, particles=df)


def read_particle_input(path: str | Path, *, tomograms: str | Path | None = None,
                        motion: str | Path | None = None,
                        pixel_size_A: float | None = None) -> ParticleSet:
    """The particle set a command names with ``--i`` (particles STAR file or optimisation set,
    RELION 5's ``--ios``), with ``--tomograms`` / ``--mot`` overriding the optimisation set's;
    a particle series gets its tomograms attached (:func:`attach_tomograms`)."""
    blocks = read_star(path)
    optimisation = any("rlnTomoParticlesFile" in (b if isinstance(b, dict) else b.columns)
                       for b in blocks.values())
    tset = None
    trajectories = None
    if optimisation:
        inputs = read_inputs(path, tomograms=tomograms, motion=motion)
        ps, tset, trajectories = inputs.particles, inputs.tomograms, inputs.motion
        motion = inputs.files["trajectories"]
        if pixel_size_A is not None:
            ps = read_particles(inputs.files["particles"], pixel_size_A=pixel_size_A)
    else:
        ps = read_particles(path, pixel_size_A=pixel_size_A)
        if tomograms is not None:
            tset = read_tomogram_set(tomograms)
        if motion is not None:
            trajectories = read_motion(motion)
    if not is_particle_series(ps):
        return ps
    return attach_tomograms(ps, tset, trajectories, motion)


def read_stack_spectra(ps: ParticleSet, rows: np.ndarray, n_tilts: int, size: int
                       ) -> tuple[Tensor, Tensor]:
    """Centred 2D half spectra ``(N, T, S, S // 2 + 1)`` of the stacks of ``rows`` (all in one
    tilt series of ``n_tilts``), zero at invisible tilts, and the visible flags ``(N, T)``.

    A stack holds one ``S × S`` image per visible tilt (RELION 5; Warp since 2026), or one per
    tilt (WarpTools before, excluded tilts ≈ 0), indexed by tilt; anything else and NaN are
    refused."""
    star_dir = Path(ps.source).parent if ps.source else None
    images = torch.zeros((len(rows), n_tilts, size, size), dtype=torch.float32)
    visible = torch.zeros((len(rows), n_tilts), dtype=torch.bool)
    for i, row in enumerate(rows):
        row = int(row)
        flags = visible_frames(ps, row, n_tilts)
        name = str(ps.particles["rlnImageName"].iloc[row])
        path = resolve(name.split("@")[-1], star_dir)
        if not path.is_file():
            raise InputError(ps.source, f"particle {row + 1}: stack {name!r} not found",
                             field="rlnImageName")
        data, _ = read_mrc(path, finite=False, what="2D stack")
        data = np.asarray(data, dtype=np.float32)
        data = data.reshape((1, *data.shape) if data.ndim == 2 else data.shape)
        n_images, ny, nx = data.shape
        n_visible = int(flags.sum())
        if n_images not in (n_visible, n_tilts) or (ny, nx) != (size, size):
            raise InputError(ps.source, f"particle {row + 1}: stack {name!r} holds {n_images} "
                             f"images of {nx}×{ny} px for {n_visible} visible tilts (of "
                             f"{n_tilts}) of {size}×{size} px", field="rlnImageName")
        if n_images == n_tilts:  # one image per tilt (WarpTools before 2026): keep the visible
            data = data[flags]
        validate.finite(data, path, what=f"particle {row + 1}: 2D stack", field="rlnImageName")
        images[i, torch.from_numpy(flags)] = torch.from_numpy(data)
        visible[i] = torch.from_numpy(flags)
    if size % 2:
        return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1))), visible
    # an even crop's centring is the sign (−1)^(kx + ky) on its spectrum: no shifted copy
    k = torch.arange(size)
    sign = 1 - 2 * ((k[:, None] + k[None, : size // 2 + 1]) % 2)
    return torch.fft.rfft2(images) * sign.to(torch.complex64), visible


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
            out[i] += torch.as_tensor(shifts.copy()) / ts.pixel_size_A
    return out
