"""Simulated particle sets with known poses, for demos and round-trip tests."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from subtomo.geometry.euler import euler_to_matrix, matrix_to_euler
from subtomo.geometry.so3 import random_rotations
from subtomo.io.particles import (
    ANGLES,
    COORD_CENTRED_A,
    COORD_PX,
    ORIGIN_A,
    SUBTOMO_ANGLES,
    ParticleSet,
    present,
)

__all__ = ["random_particle_set", "with_subtomogram_frames"]


def random_particle_set(
    n: int = 200,
    *,
    n_tomograms: int = 3,
    tomo_size_px: tuple[int, int, int] = (928, 928, 464),
    tilt_series_pixel_size_A: float = 10.0,
    pixel_size_A: float = 5.0,
    box_px: int = 48,
    subtomogram_angles: bool = False,
    seed: int = 0,
) -> ParticleSet:
    """``n`` particles with random poses (deg), shifts (Å) and positions (tomogram px).

    Coordinates count tilt-series pixels (``tilt_series_pixel_size_A``); images have
    ``pixel_size_A``. An extra column ``rlnSubtomoDemoScore`` stands for unknown labels.
    """
    rng = np.random.default_rng(seed)
    names = [f"TS_{i + 1:02d}" for i in range(n_tomograms)]
    tomo = rng.integers(0, n_tomograms, n)
    size = np.asarray(tomo_size_px, float)
    df = pd.DataFrame({
        "rlnTomoName": [names[t] for t in tomo],
        "rlnMicrographName": [f"tomograms/{names[t]}.mrc" for t in tomo],
        "rlnCoordinateX": rng.uniform(0, size[0], n),
        "rlnCoordinateY": rng.uniform(0, size[1], n),
        "rlnCoordinateZ": rng.uniform(0, size[2], n),
        "rlnImageName": [f"Subtomograms/{names[t]}/{i:06d}_{box_px}.mrc"
                         for i, t in enumerate(tomo)],
        "rlnCtfImage": [f"Subtomograms/{names[t]}/{i:06d}_ctf.mrc" for i, t in enumerate(tomo)],
        "rlnAngleRot": rng.uniform(-180, 180, n),
        "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": rng.normal(0, 6, n),
        "rlnOriginYAngst": rng.normal(0, 6, n),
        "rlnOriginZAngst": rng.normal(0, 6, n),
        "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        "rlnRandomSubset": rng.integers(1, 3, n),
        "rlnSubtomoDemoScore": rng.normal(size=n),
    })
    if subtomogram_angles:
        df["rlnTomoSubtomogramRot"] = rng.uniform(-180, 180, n)
        df["rlnTomoSubtomogramTilt"] = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
        df["rlnTomoSubtomogramPsi"] = rng.uniform(-180, 180, n)
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7],
        "rlnAmplitudeContrast": [0.07],
        "rlnImagePixelSize": [pixel_size_A],
        "rlnImageSize": [box_px],
        "rlnImageDimensionality": [3],
        "rlnTomoTiltSeriesPixelSize": [tilt_series_pixel_size_A],
    })
    tomograms = pd.DataFrame({
        "rlnTomoName": names,
        "rlnTomoSizeX": [int(size[0])] * n_tomograms,
        "rlnTomoSizeY": [int(size[1])] * n_tomograms,
        "rlnTomoSizeZ": [int(size[2])] * n_tomograms,
        "rlnTomoTiltSeriesPixelSize": [tilt_series_pixel_size_A] * n_tomograms,
    })
    return ParticleSet(particles=df, optics=optics, tomograms=tomograms, flavour="relion4",
                       source="simulated")


def with_subtomogram_frames(ps: ParticleSet, seed: int = 0, origin_sigma_A: float = 0.0
                            ) -> tuple[ParticleSet, ParticleSet]:
    """The same physical poses of ``ps`` (a set without subtomogram frames) told with random
    subtomogram frames ``A_sub`` (RELION 4/5 ``rlnTomoSubtomogramRot/Tilt/Psi``): angles
    ``A_subᵀ A`` and origins ``A_subᵀ o`` (``ParticleSet::getMatrix3x3`` is ``A_sub A_rel``,
    ``getPosition`` subtracts ``A_sub o``). With ``origin_sigma_A`` the particles first get
    random tomogram-frame origins ``o`` (σ, Å) and coordinates ``c + o``, so their centres
    ``c`` stay. Returns ``(unframed, framed)``: the set with those origins and without frames,
    and the framed set."""
    if present(ps.particles, SUBTOMO_ANGLES):
        raise ValueError("the set already has subtomogram frames")
    rng = np.random.default_rng(seed)
    n = len(ps)
    origins_A = rng.normal(0.0, origin_sigma_A, (n, 3)) if origin_sigma_A else np.zeros((n, 3))
    df = ps.particles.copy()
    if ps.has_centred_coordinates():
        for i, label in enumerate(COORD_CENTRED_A):
            df[label] = df[label].to_numpy(float) + origins_A[:, i]
    else:
        pixel_size_A = ps.coordinate_pixel_size_A()
        for i, label in enumerate(COORD_PX):
            df[label] = df[label].to_numpy(float) + origins_A[:, i] / pixel_size_A
    origins_A = origins_A + ps.shifts_A()
    for i, label in enumerate(ORIGIN_A):
        df[label] = origins_A[:, i]
    unframed = replace(ps, particles=df)
    frames = euler_to_matrix(random_rotations(n, torch.Generator().manual_seed(seed)))
    relative = matrix_to_euler(frames.transpose(1, 2) @ ps.rotation_matrices()).numpy()
    origins_A = (frames.transpose(1, 2) @ torch.as_tensor(origins_A)[..., None])[..., 0]
    framed = df.copy()
    for labels, values in ((SUBTOMO_ANGLES, matrix_to_euler(frames).numpy()),
                           (ANGLES, relative), (ORIGIN_A, origins_A.numpy())):
        for i, label in enumerate(labels):
            framed[label] = values[:, i]
    return unframed, replace(ps, particles=framed)
