"""OPUS-ET's per-tilt CTF tables for subtomograms cut from tilt series (``subtomo poses export
--format opus`` of a RELION 5 set: an optimisation set, or particles with ``--t``).

A subtomogram cut by ``subtomo extract`` (or ``relion_tomo_subtomo``) from tilt series carries,
per tilt that sees it, the CTF of that tilt at the particle's depth and the tilt's dose. OPUS's
CSV (:mod:`subtomo.io.opus`) gets, per particle and tilt: the tilt's beam direction in the
subtomogram's frame (``R_t`` of the tilt, times ``A_subtomogram`` where the set has one), the
defocus at the particle (:meth:`TiltSeriesGeometry.defocus_at`, RELION ``Tomogram::getCtf``),
the astigmatism angle, the pre-exposure and ``Scale`` 1 where the particle's crop lies inside the
image, 0 where it does not (the same visibility test as the extraction:
:func:`subtomo.tomo.crops.particle_crops`). All tilts of each tilt series are listed; a set
extracted with ``--max_dose``/``--max_tilts`` has fewer tilts in its subtomograms than here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from subtomo.errors import InputError
from subtomo.io.opus import tilt_table
from subtomo.io.particles import ParticleSet
from subtomo.io.tomograms import TomogramSet
from subtomo.tomo.particles import CropBatch, for_each_batch, output_pixel_size_A

__all__ = ["opus_tilt_tables"]


def opus_tilt_tables(ps: ParticleSet, tomograms: TomogramSet, *, box_px: int,
                     pixel_size_A: float | None = None,
                     motion: dict[str, np.ndarray] | None = None,
                     device: str | torch.device = "cpu", progress: bool = True
                     ) -> list[pd.DataFrame]:
    """Each particle's OPUS CSV rows (one per tilt of its tilt series; module docstring).
    ``pixel_size_A``: the subtomograms' (default: ``rlnImagePixelSize``, else the tilt
    series')."""
    if ps.are_2d_stacks():
        raise InputError(ps.source, "OPUS-ET reads 3D subtomograms: run subtomo extract "
                         "without --2d_stacks first", field="rlnTomoSubTomosAre2DStacks")
    if pixel_size_A is None:
        image = np.asarray(ps.pixel_size_A(), float)
        pixel_size_A = float(image[0]) if len(image) and np.isfinite(image[0]) else None
    pixel_size_A, _ = output_pixel_size_A(ps, tomograms, pixel_size_A)
    frames = ps.subtomogram_matrices()
    tables: list[pd.DataFrame | None] = [None] * len(ps)

    def add(batch: CropBatch) -> None:
        ts = batch.ts
        u, v, angle = (x.cpu().double().numpy() for x in ts.defocus_at(batch.positions_px))
        visible = batch.crops.visible.cpu().numpy()
        tilt_rows = batch.rotations.cpu().double()  # (T, 3, 3) rows u, v, n (tomogram frame)
        for j, row in enumerate(batch.rows):
            # the subtomogram's frame: a tomogram-frame direction d is A_subᵀ d there
            rows = tilt_rows if frames is None else tilt_rows @ frames[row].to(tilt_rows)
            tables[row] = tilt_table(
                rows.numpy(), exposure_e_per_A2=np.asarray(ts.pre_exposure, float),
                defocus_u_A=u[j], defocus_v_A=v[j], astigmatism_angle_deg=angle[j],
                voltage_kv=ts.voltage_kv, cs_mm=ts.cs_mm,
                amplitude_contrast=ts.amplitude_contrast, pixel_size_A=pixel_size_A,
                scale=visible[j].astype(float), source=ts.source)

    for_each_batch(ps, tomograms, box_px, pixel_size_A, add, motion=motion, ctf=False,
                   device=device, progress=progress, desc="OPUS CTF tables")
    return tables  # type: ignore[return-value]
