"""Files of a refinement job, in RELION's layout and names (``Refine3D/jobNNN/``,
``Class3D/jobNNN/``, ``InitialModel/jobNNN/``).

Per iteration: ``run_itNNN_data.star``, the maps (``run_itNNN_half{1,2}_class001.mrc`` of
auto-refine, ``run_itNNN_classKKK.mrc`` of K classes), ``run_itNNN_model.star``,
``run_itNNN_sampling.star`` and ``run_itNNN_optimiser.json`` (our resume state, written last).
At the end of auto-refine: ``run_data.star``, ``run_class001.mrc``,
``run_half{1,2}_class001_unfil.mrc``, ``run_model.star``, ``run_class001_fsc.{star,png}`` and
``run_resolution.png``; of K classes: ``run_classes.png`` and ``run_class_occupancy.png``; of
every job ``job.json``.

Poses are those of the particles in their volumes (:func:`volume_poses`,
:meth:`subtomo.io.particles.ParticleSet.volume_poses`), as RELION 5's ``relion_refine`` refines
them: a 3D subtomogram lives in its subtomogram frame (``relion_tomo_subtomo``,
``src/jaz/tomography/programs/subtomo.cpp`` ~l. 770, ``projPart = projCut · A_sub``), so
``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/Y/ZAngst`` are read and written as they are, relative
to ``rlnTomoSubtomogramRot/Tilt/Psi`` (``particle_set.cpp``: full orientation
``A_sub · A_particle``, position ``coordinate − A_sub · origin``). Particle series (2D stacks) are
gathered in the tomogram frame (:mod:`subtomo.refine.series`): their poses there are
``A_sub · A`` and ``A_sub · origin``, and :func:`with_poses` turns them back.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import subtomo
from subtomo.align.search import SearchSettings
from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc, resolution_at, shell_resolution_A
from subtomo.io.files import atomic_path
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import read_particles, write_particles
from subtomo.io.star_text import write_star
from subtomo.io.tomograms import write_optimisation_set
from subtomo.parallel.distributed import Context
from subtomo.refine.images import resolve
from subtomo.refine.reconstruct import Reconstruction, write_fsc_outputs
from subtomo.report.plots import (
    plot_class_occupancy,
    plot_class_slices,
    plot_resolution_history,
)

STATE = re.compile(r"run_it(\d{3})_optimiser\.json$")


def state_path(out: Path, iteration: int) -> Path:
    return out / f"run_it{iteration:03d}_optimiser.json"


def last_state(out: Path) -> Path:
    """The resume state of the last finished iteration in ``out``."""
    found = sorted(p for p in Path(out).glob("run_it*_optimiser.json") if STATE.search(p.name))
    if not found:
        raise InputError(out, "no finished iteration to continue from "
                         "(no run_itNNN_optimiser.json)", field="--continue")
    return found[-1]


def save_json(data: dict, path: Path) -> None:
    """Write ``data`` as JSON atomically (resume states are read back only when complete)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def prepare_job_dir(out: Path, ctx: Context) -> None:
    """Create the job folder (rank 0) once every rank has checked that it holds no other run
    (nothing is overwritten, and no rank is left waiting for one that refused)."""
    if any(out.glob("run_it*_optimiser.json")) or (out / "run_data.star").exists():
        raise InputError(out, "the job folder holds a previous run; use --continue to resume "
                         "it or choose another --o", field="--o")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()


def with_halves(ps: ParticleSet, halves: np.ndarray) -> ParticleSet:
    df = ps.particles.copy()
    df["rlnRandomSubset"] = halves.astype(int)
    return replace(ps, particles=df)


def volume_poses(ps: ParticleSet, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (N, 3, 3) and origins (N, 3, px) of the particles in their volumes
    (:meth:`ParticleSet.volume_poses`: for 3D subtomograms, in the subtomogram frame)."""
    matrices, origins_A = ps.volume_poses()
    return matrices.double().numpy(), origins_A / pixel_size_A


def _project_relative(ps: ParticleSet) -> ParticleSet:
    """Image names usable from a STAR file in another folder: names that exist only relative
    to the input STAR's folder are rewritten relative to the working (project) folder."""
    if not ps.source:
        return ps
    star_dir = Path(ps.source).parent
    df = ps.particles
    for column in ("rlnImageName", "rlnCtfImage"):
        if column not in df:
            continue
        names = df[column].astype(str)
        first = names.iloc[0]
        if Path(first).exists() or Path(first).is_absolute():
            continue
        df = df.copy() if df is ps.particles else df
        df[column] = [os.path.relpath(resolve(n, star_dir)) for n in names]
    return replace(ps, particles=df)


def with_poses(ps: ParticleSet, matrices: np.ndarray, origins_px: np.ndarray,
               pixel_size_A: float, max_probability: np.ndarray,
               log_likelihood: np.ndarray, classes: np.ndarray | None = None) -> ParticleSet:
    """``ps`` with refined poses in the particles' volumes (``matrices``, ``origins_px``, as
    :func:`volume_poses` gives them; written by :meth:`ParticleSet.with_volume_poses`), classes
    (1-based; default 1) and RELION's per-particle statistics."""
    ps = _project_relative(ps).with_volume_poses(matrices, origins_px * pixel_size_A)
    df = ps.particles.copy()
    df["rlnClassNumber"] = 1 if classes is None else np.asarray(classes, dtype=int)
    df["rlnMaxValueProbDistribution"] = max_probability
    df["rlnLogLikeliContribution"] = log_likelihood
    return replace(ps, particles=df, source=ps.source)


def _fsc_table(curve: torch.Tensor, box: int, pixel_size_A: float) -> pd.DataFrame:
    values = curve.cpu().double().numpy()
    res = shell_resolution_A(box, pixel_size_A).cpu().numpy()
    f = np.clip(values, 0, 0.999)
    return pd.DataFrame({
        "rlnSpectralIndex": np.arange(len(values)),
        "rlnResolution": np.where(np.isfinite(res) & (res > 0), 1 / res, 0.0),
        "rlnAngstromResolution": res,
        "rlnGoldStandardFsc": values,
        "rlnSsnrMap": 2 * f / (1 - f),  # SNR of the joined map from the half-map FSC
    })


def write_model(path: Path, recons: list[Reconstruction], references: list[str],
                distribution: list[float], sigma2: np.ndarray, ps: ParticleSet,
                step_deg: float, offset_step_A: float, tau2_fudge: float = 1.0) -> None:
    """RELION's ``model.star`` of K classes: general, per-class table, per-class FSC/SSNR
    blocks and the noise power of the (single) optics group."""
    box = recons[0].half1.shape[-1]
    resolutions = [r.resolution_A for r in recons]
    general = {
        "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 3,
        "rlnOriginalImageSize": box, "rlnCurrentResolution": min(resolutions),
        "rlnPixelSize": recons[0].pixel_size_A, "rlnNrClasses": len(recons),
        "rlnNrBodies": 1, "rlnNrGroups": 1, "rlnTau2FudgeFactor": tau2_fudge,
        "rlnLogLikelihood": float(ps.particles["rlnLogLikeliContribution"].sum()),
        "rlnAveragePmax": float(ps.particles["rlnMaxValueProbDistribution"].mean()),
    }
    k = len(recons)
    blocks = {"model_general": general, "model_classes": pd.DataFrame({
        "rlnReferenceImage": references, "rlnClassDistribution": distribution,
        "rlnAccuracyRotations": [step_deg] * k,
        "rlnAccuracyTranslationsAngst": [offset_step_A] * k,
        "rlnEstimatedResolution": resolutions,
        "rlnOverallFourierCompleteness": [1.0] * k})}
    for i, recon in enumerate(recons, 1):
        blocks[f"model_class_{i}"] = _fsc_table(recon.fsc, box, recon.pixel_size_A)
    noise = blocks["model_class_1"][["rlnSpectralIndex", "rlnResolution"]].copy()
    noise["rlnSigma2Noise"] = sigma2
    blocks["model_optics_group_1"] = noise
    write_star(blocks, path)


def _stem(out: Path, iteration: int) -> Path:
    return out / f"run_it{iteration:03d}"


def write_iteration(out: Path, iteration: int, ps: ParticleSet, recon: Reconstruction,
                    sigma2: np.ndarray, settings: SearchSettings, relion30: bool) -> None:
    """The files of one finished auto-refine iteration (the resume state is written after
    them): particles, half maps, model and sampling."""
    stem = _stem(out, iteration)
    write_particles(ps, f"{stem}_data.star", "relion30" if relion30 else "auto")
    write_mrc(f"{stem}_half1_class001.mrc", recon.half1, recon.pixel_size_A)
    write_mrc(f"{stem}_half2_class001.mrc", recon.half2, recon.pixel_size_A)
    write_series_set(f"{stem}_data.star", ps, ref1=f"{stem}_half1_class001.mrc",
                     ref2=f"{stem}_half2_class001.mrc")
    write_model(Path(f"{stem}_model.star"), [recon], [f"{stem.name}_half1_class001.mrc"],
                [1.0], sigma2, ps, settings.step_deg / 2,
                settings.offset_step_px / 2 * recon.pixel_size_A)
    write_sampling(Path(f"{stem}_sampling.star"), settings)


def write_class_iteration(out: Path, iteration: int, ps: ParticleSet,
                          recons: list[Reconstruction], distribution: np.ndarray,
                          sigma2: np.ndarray, settings: SearchSettings, tau2_fudge: float,
                          relion30: bool) -> None:
    """The files of one finished iteration of a job of K classes (the resume state is written
    after them): particles, class maps, model and sampling."""
    stem = _stem(out, iteration)
    write_particles(ps, f"{stem}_data.star", "relion30" if relion30 else "auto")
    write_series_set(f"{stem}_data.star", ps)
    names = []
    for k, recon in enumerate(recons, 1):
        name = f"{stem.name}_class{k:03d}.mrc"
        write_mrc(out / name, recon.map, recon.pixel_size_A)
        names.append(name)
    pixel_size_A = recons[0].pixel_size_A
    write_model(Path(f"{stem}_model.star"), recons, names, distribution.tolist(), sigma2, ps,
                settings.step_deg / 2, settings.offset_step_px / 2 * pixel_size_A, tau2_fudge)
    write_sampling(Path(f"{stem}_sampling.star"), settings)


def write_series_set(data_star: str | Path, ps: ParticleSet, **maps: str | Path) -> None:
    """Beside the ``_data.star`` of a particle series, its ``_optimisation_set.star`` (RELION
    5's ``--ios`` output): the particles, their tomograms and trajectories, and ``maps``
    (``ref1``, ``ref2``, ...); the next command (``tomo-align``, ``refine``) starts from it."""
    if ps.series is None:
        return
    source = ps.series
    data_star = Path(data_star)
    name = data_star.name.replace("_data.star", "_optimisation_set.star")
    write_optimisation_set(data_star.with_name(name), particles=data_star,
                           tomograms=source.tomograms.source,
                           trajectories=source.motion_source, **maps)


def write_sampling(path: Path, settings: SearchSettings) -> None:
    """RELION's ``sampling.star`` of one iteration's :class:`SearchSettings`."""
    sampling = {
        "rlnHealpixOrder": settings.order, "rlnPsiStep": settings.step_deg,
        "rlnOffsetRange": settings.offset_range_px, "rlnOffsetStep": settings.offset_step_px,
        "rlnSymmetryGroup": settings.sym, "rlnPerturbationFactor": settings.perturb_deg,
        "rlnSearchForLocalSearches": int(settings.local)}
    if settings.sigma_ang_deg and settings.local:
        sampling["rlnSigmaPriorRotAngle"] = settings.sigma_ang_deg
    write_star({"sampling_general": sampling}, path)


def read_iteration(out: Path, iteration: int, ps: ParticleSet, names: list[str]
                   ) -> tuple[ParticleSet, list[torch.Tensor]]:
    """Particles and maps ``run_itNNN_<name>.mrc`` of a finished iteration (to continue from
    it); the particles must be as many as ``ps``."""
    stem = _stem(out, iteration)
    done = read_particles(f"{stem}_data.star")
    if len(done) != len(ps):
        raise InputError(f"{stem}_data.star", f"has {len(done)} particles, the input "
                         f"{len(ps)}: not the same run", field="--continue")
    return done, [torch.from_numpy(read_mrc(f"{stem}_{name}.mrc")[0]) for name in names]


def joined(half1: torch.Tensor, half2: torch.Tensor, pixel_size_A: float,
           n_particles: int) -> Reconstruction:
    """The reconstruction of two saved half maps: their mean, FSC and resolution at 0.143."""
    curve = fsc(half1, half2)
    return Reconstruction((half1 + half2) / 2, pixel_size_A, n_particles, half1, half2, curve,
                          resolution_at(curve, half1.shape[-1], pixel_size_A))


def write_final(out: Path, ps: ParticleSet, recon: Reconstruction, history: list[dict],
                sigma2: np.ndarray, relion30: bool) -> None:
    """The end of auto-refine: ``run_data.star``, the joined map, the unregularised half maps
    (RELION's ``_unfil``, for post-processing), model, FSC and plots."""
    write_particles(ps, out / "run_data.star", "relion30" if relion30 else "auto")
    write_mrc(out / "run_class001.mrc", recon.map, recon.pixel_size_A)
    for h, half in enumerate(recon.unfiltered_halves(), 1):
        write_mrc(out / f"run_half{h}_class001_unfil.mrc", half, recon.pixel_size_A)
    write_series_set(out / "run_data.star", ps, ref1=out / "run_half1_class001_unfil.mrc",
                     ref2=out / "run_half2_class001_unfil.mrc",
                     fsc=out / "run_class001_fsc.star")
    write_fsc_outputs(recon, out / "run_class001.mrc", halves=False)
    last = history[-1] if history else {}
    write_model(out / "run_model.star", [recon], ["run_class001.mrc"], [1.0], sigma2, ps,
                last.get("angular_step_deg", 0.0) / 2,
                last.get("offset_step_px", 0.0) / 2 * recon.pixel_size_A)
    if history:
        plot_resolution_history(history, out / "run_resolution.png")


def write_class_plots(out: Path, maps: list[torch.Tensor], history: list[dict],
                      distribution: np.ndarray) -> None:
    """The end of a job of K classes: ``run_classes.png`` (orthoslices of the final classes)
    and the occupancy plot ``run_class_occupancy.png``."""
    titles = [f"class {k} · {100 * share:.1f} %" for k, share in enumerate(distribution, 1)]
    if history:
        last = history[-1]["resolution_A"]
        titles = [f"{t}\n{res:.1f} Å" for t, res in zip(titles, last, strict=True)]
    plot_class_slices([m.cpu() for m in maps], out / "run_classes.png", titles)
    if history:
        plot_class_occupancy(history, out / "run_class_occupancy.png")


def write_job_json(out: Path, command: list[str] | None, options, seconds: float,
                   iterations: int, history: list[dict], **extra) -> None:
    """``job.json``: command, parameters, versions, timing, the per-iteration history and
    ``extra`` entries (e.g. ``converged``)."""
    job = {
        "command": command, "parameters": asdict(options),
        "versions": {"subtomo": getattr(subtomo, "__version__", "unknown"),
                     "torch": torch.__version__, "python": platform.python_version()},
        "wall_time_s": seconds, "iterations": iterations, **extra, "history": history,
    }
    with atomic_path(out / "job.json") as tmp:
        tmp.write_text(json.dumps(job, indent=1))
