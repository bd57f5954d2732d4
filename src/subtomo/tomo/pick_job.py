"""The ``subtomo pick`` job: every tomogram searched once (resumable), picks written as a
RELION 5 particle set with an optimisation set, score maps and plots.

Outputs in the job folder:

* ``scores_<tomo>.mrc`` (best normalised score per voxel, −1 where undefined),
  ``angles_<tomo>.mrc`` (0-based row of ``angles.star`` of that score), ``null_<tomo>.mrc``
  (the inverted template's best score: the false-alarm null), ``tomogram_<tomo>.mrc`` (the
  tomogram searched, RELION's contrast);
* ``angles.star``: the rotations searched (RELION ZYZ, degrees);
* ``particles.star``: centred Å coordinates, angles, ``rlnAutopickFigureOfMerit``;
  ``optimisation_set.star`` naming it and the tomogram set;
* ``scores.png`` (peak scores and the null's, with the threshold) and ``picks_<tomo>.png``.

``--continue`` reuses each tomogram whose three maps exist (each is written atomically), so a
killed job restarts at the first tomogram it had not finished. With ``torchrun``, tomograms are
shared out by rank; rank 0 thresholds and writes the picks once all maps exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.geometry.healpix import rotation_grid
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import write_particles
from subtomo.io.star_text import write_star
from subtomo.io.tomograms import TomogramSet, write_optimisation_set
from subtomo.parallel.distributed import Context
from subtomo.report.pick_plots import plot_pick_slice, plot_scores
from subtomo.tomo.picking import (
    PickOptions,
    Picks,
    refine_picks,
    search_tomogram,
    threshold_picks,
    without_other_objects,
)
from subtomo.tomo.template_matching import MatchResult

__all__ = ["map_names", "picks_to_particles", "run_pick"]

MAPS = ("scores", "angles", "null", "tomogram")


def map_names(names: list[str]) -> list[str]:
    """The per-tomogram files of the job folder."""
    return [f"{kind}_{name}.mrc" for name in names for kind in MAPS] + [
        f"picks_{name}.png" for name in names]


def _saved(out: Path, name: str) -> MatchResult | None:
    paths = [out / f"{kind}_{name}.mrc" for kind in MAPS]
    if not all(p.is_file() for p in paths):
        return None
    scores, angles, null = (torch.from_numpy(read_mrc(p, what="score map")[0])
                            for p in paths[:3])
    return MatchResult(scores=scores, angles=angles.round().to(torch.int32), null=null,
                       valid=scores > -1)


def picks_to_particles(tset: TomogramSet, picks: dict[str, Picks]) -> ParticleSet:
    """A RELION 5 particle set of the picks (centred Å, angles, figure of merit)."""
    rows = []
    for name, p in picks.items():
        ts = tset[name]
        centred = ts.px_to_centred(torch.as_tensor(p.positions_px)).numpy()
        for i in range(len(p.scores)):
            rows.append({
                "rlnTomoName": name, "rlnTomoParticleName": f"{name}/{i + 1}",
                "rlnCenteredCoordinateXAngst": centred[i, 0],
                "rlnCenteredCoordinateYAngst": centred[i, 1],
                "rlnCenteredCoordinateZAngst": centred[i, 2],
                "rlnAngleRot": p.angles_deg[i, 0], "rlnAngleTilt": p.angles_deg[i, 1],
                "rlnAnglePsi": p.angles_deg[i, 2],
                "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnOriginZAngst": 0.0,
                "rlnAutopickFigureOfMerit": float(p.scores[i]), "rlnOpticsGroup": 1,
                "rlnRandomSubset": i % 2 + 1})
    first = tset[next(iter(picks))] if picks else tset[tset.names[0]]
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnSphericalAberration": [first.cs_mm], "rlnVoltage": [first.voltage_kv],
        "rlnAmplitudeContrast": [first.amplitude_contrast],
        "rlnTomoTiltSeriesPixelSize": [first.pixel_size_A],
        "rlnImagePixelSize": [first.pixel_size_A]})
    columns = ["rlnTomoName", "rlnTomoParticleName", "rlnCenteredCoordinateXAngst",
               "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst", "rlnAngleRot",
               "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
               "rlnOriginZAngst", "rlnAutopickFigureOfMerit", "rlnOpticsGroup",
               "rlnRandomSubset"]
    return ParticleSet(pd.DataFrame(rows, columns=columns), optics, tset.global_table(),
                       flavour="relion5")


def run_pick(tset: TomogramSet, tomograms_path: Path, names: list[str], template: torch.Tensor,
             mask: torch.Tensor | None, opts: PickOptions, out: Path, *,
             binning: float | None, ctx: Context | None = None) -> dict[str, Picks]:
    """Search, threshold and write (module docstring); returns the picks per tomogram."""
    ctx = ctx or Context(device=torch.device(opts.device))
    out.mkdir(parents=True, exist_ok=True)
    _, angles = rotation_grid(opts.search_order, opts.sym)
    if ctx.main:
        write_star({"angles": pd.DataFrame(angles.double().numpy(), columns=[
            "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])}, out / "angles.star")
    for name in ctx.shard(np.array(names, dtype=object)):
        if _saved(out, name) is not None:
            print(f"{name}: score maps found in {out}; not searched again")
            continue
        result, volume, voxel_A, _ = search_tomogram(tset[name], template, mask, opts,
                                                     binning)
        write_mrc(out / f"tomogram_{name}.mrc", -volume.cpu(), voxel_A)
        for kind, volume in zip(MAPS[:3], (result.scores, result.angles.float(), result.null),
                                strict=True):
            write_mrc(out / f"{kind}_{name}.mrc", volume.cpu(), voxel_A)
    ctx.barrier()
    picks: dict[str, Picks] = {}
    if not ctx.main:
        return picks
    for name in names:
        ts = tset[name]
        result = _saved(out, name)
        tomogram, voxel_A = read_mrc(out / f"tomogram_{name}.mrc", what="tomogram")
        p = threshold_picks(result, opts, voxel_A, voxel_A / ts.pixel_size_A)
        p = refine_picks(p, ts, -torch.from_numpy(tomogram), template, mask, opts)
        picks[name] = p = without_other_objects(p, opts)
        print(f"{name}: {len(p.scores)} picks above score {p.threshold:.3f}; expected false "
              f"positives among them {p.expected_false:.2f}")
        plot_pick_slice(tomogram, p, out / f"picks_{name}.png", binning=voxel_A / ts.pixel_size_A,
                        radius_px=opts.particle_diameter_A / 2 / voxel_A)
    write_particles(picks_to_particles(tset, picks), out / "particles.star", "relion5")
    write_optimisation_set(out / "optimisation_set.star", particles=out / "particles.star",
                           tomograms=tomograms_path)
    plot_scores(picks, out / "scores.png")
    return picks
