"""Particle selection by class, by duplicate removal and by neighbour count.

Each function reads a particle STAR file, writes the selection in the input's flavour
(atomically, never over the input) and returns the selected :class:`ParticleSet`; file order is
kept. Distances are between particle centres in Å in the tomogram frame, shifts applied
(centre = coordinate × pixel size − origin, origins rotated out of the subtomogram frame where
RELION 4/5 keep them there), and only between particles of the same tomogram.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from subtomo.errors import InputError
from subtomo.interop import same_flavour
from subtomo.io.files import check_not_input
from subtomo.io.particles import COORD_CENTRED_A, COORD_PX, ORIGIN_A, ParticleSet, present
from subtomo.io.star import read_particles, write_particles

CLASS_LABEL = "rlnClassNumber"
SCORE_LABELS = ("rlnMaxValueProbDistribution", "rlnLogLikeliContribution")


# ---- geometry --------------------------------------------------------------------------
def centres_A(ps: ParticleSet) -> np.ndarray:
    """``(N, 3)`` particle centres in Å, shifts applied: coordinate × pixel size − origin.

    RELION 5 centred coordinates give centres relative to the tomogram centre, pixel
    coordinates relative to its corner; either way distances within a tomogram are the same.
    Missing z (2D coordinates) counts as 0.
    """
    df = ps.particles
    if ps.has_centred_coordinates():
        xyz = df[list(COORD_CENTRED_A)].to_numpy(float)
    elif ps.has_pixel_coordinates():
        px = np.stack([df[c].to_numpy(float) if c in df else np.zeros(len(ps))
                       for c in COORD_PX], axis=1)
        xyz = px * ps.coordinate_pixel_size_A()[:, None]
    else:
        raise InputError(ps.source, "particles need coordinates to measure distances",
                         field="rlnCoordinateX")
    centres = xyz - ps.tomogram_shifts_A()
    if not np.all(np.isfinite(centres)):
        field = "rlnDetectorPixelSize" if ps.flavour in ("relion30", "warp") else (
            "rlnImagePixelSize")
        raise InputError(ps.source, "cannot place every particle in Å: the pixel size of the "
                         "coordinates is unknown or a coordinate is not a number", field=field)
    return centres


def _tomogram_groups(ps: ParticleSet) -> Iterator[np.ndarray]:
    """Positional indices of the particles of each tomogram (all of them if none named)."""
    names = ps.tomo_names()
    if names is None:
        yield np.arange(len(ps))
        return
    codes = names.factorize()[0]
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    yield from np.split(order, bounds)


def _pairs_within(points: np.ndarray, radius_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` (i < j) of ``points`` at most ``radius_A`` apart and their distances."""
    pairs = cKDTree(points).query_pairs(radius_A, output_type="ndarray")
    if len(pairs) == 0:
        return np.empty((0, 2), dtype=np.intp), np.empty(0)
    return pairs, np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)


# ---- output ----------------------------------------------------------------------------
def _write(ps: ParticleSet, kept: np.ndarray, output: str | Path) -> ParticleSet:
    """Write the particles at positional ``kept`` (sorted: file order) in ``ps``'s flavour."""
    subset = ps.subset(np.sort(kept))
    write_particles(subset, output, same_flavour(ps))
    return subset


# ---- class selection -------------------------------------------------------------------
def select_class(
    star: str | Path, output: str | Path, classes: list[int], recenter: bool = False
) -> ParticleSet:
    """Particles whose ``rlnClassNumber`` is one of ``classes`` (RELION's Select job).

    ``recenter``: apply the shifts to the coordinates and set the origins to 0 Å, so that
    re-extraction centres each particle on its refined centre.
    """
    check_not_input(output, star)
    ps = read_particles(star)
    if CLASS_LABEL not in ps.particles:
        raise InputError(star, "no class numbers to select by (run a 3D classification "
                         "first)", field=CLASS_LABEL)
    if not classes:
        raise InputError(star, "give at least one class number", field="--class")
    kept = np.flatnonzero(ps.particles[CLASS_LABEL].isin([int(c) for c in classes]))
    if len(kept) == 0:
        found = sorted(int(c) for c in ps.particles[CLASS_LABEL].unique())
        raise InputError(star, f"no particle in class {_listing(classes)}; the file has "
                         f"classes {_listing(found)}", field=CLASS_LABEL)
    if recenter:
        ps = apply_origins(ps)
    return _write(ps, kept, output)


def _listing(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def apply_origins(ps: ParticleSet) -> ParticleSet:
    """Apply shifts to the coordinates (centre = coordinate − origin) and zero the origins.

    Unlike :func:`subtomo.interop.recentre` the origin columns stay (at 0 Å), as RELION's
    ``relion_star_handler --center`` leaves them; RELION 5 centred Å coordinates are moved
    directly, without needing the tomogram sizes.
    """
    if present(ps.particles, ORIGIN_A) == 0:
        return ps
    shifts = ps.tomogram_shifts_A()
    df = ps.particles.copy()
    if ps.has_centred_coordinates():
        for i, label in enumerate(COORD_CENTRED_A):
            df[label] = df[label].to_numpy(float) - shifts[:, i]
    elif ps.has_pixel_coordinates():
        pixel_size_A = ps.coordinate_pixel_size_A()
        if not np.all(np.isfinite(pixel_size_A)):
            raise InputError(ps.source, "recentring needs the pixel size of the coordinates",
                             field="rlnImagePixelSize")
        for i, label in enumerate(COORD_PX):
            if label in df:
                df[label] = df[label].to_numpy(float) - shifts[:, i] / pixel_size_A
    else:
        raise InputError(ps.source, "no coordinates to recentre", field="rlnCoordinateX")
    for label in ORIGIN_A:
        if label in df:
            df[label] = 0.0
    return replace(ps, particles=df)


# ---- duplicates ------------------------------------------------------------------------
def _scores(ps: ParticleSet, star: str | Path, score_label: str | None) -> np.ndarray:
    """Score of each particle (higher is better); all equal (file order decides) without one."""
    df = ps.particles
    if score_label is not None and score_label not in df:
        raise InputError(star, "score column not in the file", field=score_label)
    label = score_label or next((s for s in SCORE_LABELS if s in df), None)
    if label is None:
        return np.zeros(len(ps))
    try:
        values = df[label].to_numpy(float)
    except (TypeError, ValueError):
        raise InputError(star, "scores must be numbers", field=label) from None
    return np.where(np.isnan(values), -np.inf, values)


def _greedy_keep(points: np.ndarray, scores: np.ndarray, min_distance_A: float) -> np.ndarray:
    """Greedy non-maximum suppression: best score first, drop those closer than the distance.

    Returns a boolean mask over ``points``. Ties keep the earlier particle (file order).
    """
    pairs, dist = _pairs_within(points, min_distance_A)
    pairs = pairs[dist < min_distance_A]
    keep = np.ones(len(points), dtype=bool)
    if len(pairs) == 0:
        return keep
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.argsort(both[:, 0], kind="stable")]
    starts = np.searchsorted(both[:, 0], np.arange(len(points) + 1))
    crowded = np.unique(pairs)  # isolated particles are kept without looking
    for i in crowded[np.argsort(-scores[crowded], kind="stable")]:
        if keep[i]:
            keep[both[starts[i]:starts[i + 1], 1]] = False
    return keep


def remove_duplicates(
    star: str | Path, output: str | Path, min_distance_A: float,
    score_label: str | None = None,
) -> ParticleSet:
    """Drop duplicates: particles of one tomogram whose centres are closer than
    ``min_distance_A`` (Å; at exactly the distance they are not duplicates).

    Of each group the most probable particle stays: highest ``score_label``, by default
    ``rlnMaxValueProbDistribution``, else ``rlnLogLikeliContribution``, else the first in file
    order. Greedy, as non-maximum suppression: best first, a particle stays unless a particle
    already kept lies closer than the distance.
    """
    check_not_input(output, star)
    if not min_distance_A > 0:
        raise InputError(star, f"minimum distance must be positive, not {min_distance_A} Å",
                         field="--min_distance")
    ps = read_particles(star)
    centres, scores = centres_A(ps), _scores(ps, star, score_label)
    keep = np.zeros(len(ps), dtype=bool)
    for group in _tomogram_groups(ps):
        keep[group] = _greedy_keep(centres[group], scores[group], min_distance_A)
    return _write(ps, np.flatnonzero(keep), output)


# ---- neighbours ------------------------------------------------------------------------
def neighbour_counts(points: np.ndarray, distance_A: float, tolerance_A: float) -> np.ndarray:
    """For each point, how many others lie at ``distance_A`` ± ``tolerance_A`` (inclusive)."""
    pairs, dist = _pairs_within(points, distance_A + tolerance_A)
    pairs = pairs[dist >= distance_A - tolerance_A]
    return np.bincount(pairs.ravel(), minlength=len(points))


def select_neighbours(
    star: str | Path, output: str | Path, distance_A: float, tolerance_A: float,
    min_neighbours: int,
) -> ParticleSet:
    """Particles with at least ``min_neighbours`` others of their tomogram whose centres lie
    ``distance_A`` ± ``tolerance_A`` away (Å, bounds inclusive): lattices, filaments, rings."""
    check_not_input(output, star)
    if not distance_A > 0:
        raise InputError(star, f"distance must be positive, not {distance_A} Å",
                         field="--distance")
    if not tolerance_A >= 0:
        raise InputError(star, f"tolerance must be at least 0 Å, not {tolerance_A}",
                         field="--tolerance")
    if min_neighbours < 1:
        raise InputError(star, f"need at least 1 neighbour, not {min_neighbours}",
                         field="--min_neighbours")
    ps = read_particles(star)
    centres = centres_A(ps)
    counts = np.zeros(len(ps), dtype=np.int64)
    for group in _tomogram_groups(ps):
        counts[group] = neighbour_counts(centres[group], distance_A, tolerance_A)
    kept = np.flatnonzero(counts >= min_neighbours)
    if len(kept) == 0:
        raise InputError(star, f"no particle has {min_neighbours} neighbours at "
                         f"{distance_A} ± {tolerance_A} Å (most: {counts.max(initial=0)})",
                         field="--min_neighbours")
    return _write(ps, kept, output)
