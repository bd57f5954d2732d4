"""``subtomo tomo-align``: tilt-series refinement as a job (``relion_tomo_align``).

The job runs ``rounds`` rounds (``--rounds``, default 2; see "Rounds" below). In each, every
tilt series is refined on its own (:func:`subtomo.tomo.alignment.align_series`), so the
tilt series are sharded over ``torchrun`` processes (``rows[rank::world]`` of the tilt-series
names). Each finished tilt series leaves its result in ``temp/round<k>/`` (as RELION's
``temp/<name>_*`` files): ``<name>_tomogram.star`` (the refined tilt table),
``<name>_particles.npz`` (rows, positions, trajectories) and, last, ``<name>.json`` (its
figures; the mark of a finished tilt series); a round after the first also leaves there the
references it aligned against (``half1.mrc``, ``half2.mrc``, ``fsc.star``; ``references.json``
last). ``--continue`` keeps finished rounds, references and tilt series and reruns the rest
(it may ask for more rounds than the run it continues). Every rank merges each round's
results into the geometry of the next; rank 0 then writes the last into the job folder:

- ``tomograms.star`` (+ ``tilt_series/<name>.star``): RELION 5 angles and shifts (and 2D
  deformations); with ``write_matrices`` also RELION 4's ``rlnTomoProjX/Y/Z/W``;
- ``particles.star``: the new positions (the position in the first exposed tilt, origins
  folded in and set to zero, as RELION's ``AlignProgram::readTempData``);
- ``motion.star``: the trajectory of every particle (Å, tilts in table order);
- ``optimisation_set.star`` naming them and the input references, mask and FSC;
- ``Trajectories/<name>_x1.ply`` and ``_x8.ply`` (:mod:`subtomo.io.ply`);
- ``tilt_changes_<name>.png`` (per-tilt shift and angle changes), ``fsc_before_after.png``
  (half-map FSC of ``reconstruct-particle`` with the input and with the refined geometry);
- ``note.txt`` (the command) and ``job.json`` (settings, figures per round, timing).

Nothing is written before every input has been checked.

Rounds. Round 1 aligns against the input references. Each later round reconstructs the half
maps with the previous round's geometry (:func:`~subtomo.tomo.reconstruct_particle.
reconstruct_particle` at the input references' box and pixel size, masked by the input mask,
``sym``; weighted by their own FSC), and aligns against them: references and geometry
iterated inside the job, as M does. Half set ``h`` is aligned against half map ``h`` only.

Why. References made with the given geometry carry its errors, and alignment against them
stops short of the truth; rebuilt from the aligned geometry they no longer do. Rms error of
the projected positions (px, pairs with data, the references' origin removed: see "Gauge")
on bench/bench_tomo_align.py's projects (150 particles × 41 tilts, positions σ 1 px, noise
σ 20, references from ``reconstruct-particle`` with the given geometry; "Rounds" in
bench/RESULTS.md; CPU seconds of the whole job on a shared 2-core machine)::

    per-tilt errors (given)    round 1  --rounds 2  --rounds 3  true-geometry refs  true map
    σ 1.5 px, 0.4° (2.74 px)   0.160    0.035       0.028       0.022               0.023 (0.023)
    σ 3 px, 0.8° (4.91 px)     0.278    0.059       0.048       0.048               0.029 (0.048)
    CPU (s)                    20, 26   41, 61      93, 103

"True-geometry refs" (one round against half maps reconstructed with the true geometry) is
the limit for references made from these data. The true map, noise-free, is beyond it where
the data's FSC falls before Nyquist: its halves agree at every shell, so every shell weighs 1.
Weighted by the FSC of the true-geometry half maps, as any reference from these data must be
(in brackets), the true map reaches exactly what those references reach. The second round
takes 91 % and 95 % of the way from round 1 to that limit, the third reaches it (0.006 px
short, and on it). A later round costs the alignment and one or two reconstructions: 0.7 to
2.6 times round 1 (CPU on a loaded machine). Hence the default of 2 rounds: 2 to 2.4 times
the cost of RELION's single pass for over 90 % of what iterating can gain; ``--rounds 3``
for the rest; ``--rounds 1`` with references made with an already refined geometry.

Gauge. Image positions do not see a rigid motion of the tomogram frame (particles moved by
``G``, projections by ``G⁻¹``), but they do see the references' origin, which the data cannot
place either: moving a reference's content by ``c`` and each of its particles by ``−A_i c``
(a particle is the reference rotated by ``A_i``) changes no image and moves the projected
positions by ``−R_t A_i c``. The errors above are therefore taken after removing the
least-squares ``c`` (bench: ``origin_free_error``). A reference reconstructed with the given
geometry sits where its particles' position errors put it (their mean in the map frame, σ/√75
per axis per half set here), and the gold-standard half sets, which never see each other,
keep apart origins: on the bench's project the half maps were 0.28 px apart, and the joined
map of two half sets in different frames is blurred. Before each reconstruction that becomes
a reference, the job measures the offset ``s`` between the half maps
(:func:`half_map_offset_px`: three numbers from the cross-correlation up to FSC 0.143), moves
the particles of half set 1 and 2 by ``±A_i s / 2`` (:func:`_coregistered`) and reconstructs
again (``references.json`` keeps ``s`` and the offset left, under 0.001 px). Without this,
three rounds stopped at 0.113 px with one origin for both halves (0.027 px with one per half).
With the origin left in, the first project's errors read 0.251, 0.191 and 0.186 px: what is
left past round 2 is the common origin, a gauge (the joined map merely sits 0.18 px off).
"""

from __future__ import annotations

import json
import math
import platform
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

import subtomo
from subtomo.errors import InputError
from subtomo.fourier.grid import rfft_freqs, shell_index
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io.files import atomic_path, undone_on_input_error
from subtomo.io.particle_series import is_particle_series, particle_positions_px
from subtomo.io.particles import COORD_PX, ParticleSet
from subtomo.io.ply import write_trajectory_mesh
from subtomo.io.star import write_particles
from subtomo.io.star_text import write_star
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import (
    TomogramSet,
    TomoInputs,
    project_path,
    read_tomogram_set,
    write_motion,
    write_optimisation_set,
    write_tomogram_set,
)
from subtomo.parallel.distributed import Context
from subtomo.refine.reconstruct import half_sets
from subtomo.report.plots import plot_fsc, plot_tilt_changes
from subtomo.tomo import deformation as deform
from subtomo.tomo.alignment import AlignSettings, align_series
from subtomo.tomo.correlation import BORDER, References, read_references, snr_weight
from subtomo.tomo.particles import check_box, with_tomograms
from subtomo.tomo.reconstruct_particle import reconstruct_particle, write_outputs

__all__ = ["AlignJob", "check_inputs", "half_map_offset_px", "tomo_align"]

MIN_OFFSET_PX = 0.01  # half maps closer than this are left as they are

CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
           "rlnCenteredCoordinateZAngst")
ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst", "rlnOriginX", "rlnOriginY",
           "rlnOriginZ")


@dataclass
class AlignJob:
    """What a finished job holds (rank 0): the new sets, the trajectories by particle name,
    the figures of each tilt series and the half-map resolutions before and after."""

    out: Path
    tomograms: TomogramSet
    particles: ParticleSet
    trajectories: dict[str, np.ndarray]
    stats: dict[str, dict]
    resolution_before_A: float | None = None
    resolution_after_A: float | None = None
    rounds: list[dict] = field(default_factory=list)


# ---- checks -------------------------------------------------------------------------------
def _names(ps: ParticleSet) -> ParticleSet:
    """Particles named ``<tomogram>/<k>`` where they have no ``rlnTomoParticleName``."""
    if "rlnTomoParticleName" in ps.particles:
        return ps
    df = ps.particles.copy()
    tomo = ps.tomo_names()
    df["rlnTomoParticleName"] = [f"{t}/{k + 1}" for t, k in
                                 zip(tomo, tomo.groupby(tomo).cumcount(), strict=True)]
    return replace(ps, particles=df)


def check_inputs(inputs: TomoInputs, refs: References, settings: AlignSettings
                 ) -> ParticleSet:
    """Every check that can fail, before anything is written; returns the particles with
    their tomogram table (and names)."""
    if not settings.max_shift_px > 0:
        raise InputError(None, f"--r must be positive (got {settings.max_shift_px})",
                         field="--r")
    if settings.shift_only and settings.motion:
        raise InputError(None, "--shift_only and --motion exclude each other", field="--motion")
    if settings.deformation:
        model = deform.canonical_model(settings.def_model)
        least = 2 if model == "spline" else 1
        if min(settings.def_w, settings.def_h) < least:
            raise InputError(None, f"a {model} deformation grid needs at least {least} points "
                             "per side", field="--def_w")
    if inputs.particles is None or len(inputs.particles) == 0:
        raise InputError(inputs.files.get("particles"), "no particles", field="rlnTomoName")
    ps = _names(with_tomograms(inputs.particles, inputs.tomograms))
    names = ps.tomo_names()
    for name in dict.fromkeys(names):
        ts = inputs.tomograms[name]
        ts.check_images()
        check_box(ts, settings.box, refs.pixel_size_A)
        factor = max(refs.pixel_size_A / ts.pixel_size_A, 1.0)
        radius = settings.max_shift_px / factor
        need = 2 * int(np.ceil(radius * settings.pad)) + 2 * BORDER + 1
        if need > settings.box * settings.pad:
            raise InputError(None, f"--r {settings.max_shift_px:g} px needs --b of at least "
                             f"{int(np.ceil(need / settings.pad))} (px at "
                             f"{refs.pixel_size_A:g} Å)", field="--r")
    if inputs.motion is not None:
        where = inputs.files.get("trajectories")
        for particle, tomo in zip(ps.particles["rlnTomoParticleName"].astype(str), names,
                                  strict=True):
            if particle not in inputs.motion:
                raise InputError(where, f"the motion set has no trajectory for particle "
                                 f"{particle!r} (it describes other particles)",
                                 field="rlnTomoParticleName")
            count = len(inputs.motion[particle])
            if count != inputs.tomograms[tomo].n_tilts:
                raise InputError(where, f"trajectory of {particle!r} has {count} tilts; "
                                 f"tilt series {tomo} has {inputs.tomograms[tomo].n_tilts}",
                                 field="rlnOriginXAngst")
    return ps


def _settings_record(settings: AlignSettings, refs: References) -> dict:
    return {"settings": asdict(settings), "references": list(refs.sources)}


def _prepare_folder(out: Path, record: dict, resume: bool, ctx: Context) -> bool:
    """Check (``resume``) or start the job folder; returns whether a run is resumed. A run
    killed before it wrote anything (no folder, or only empty folders) starts afresh."""
    temp = out / "temp"
    if resume and not (out.is_dir() and any(p.is_file() for p in out.rglob("*"))):
        resume = False
    if resume:
        saved = temp / "settings.json"
        if not saved.is_file():
            raise InputError(out, "nothing to continue: no temp/settings.json of a tomo-align "
                             "run", field="--continue")
        if json.loads(saved.read_text()) != json.loads(json.dumps(record)):
            raise InputError(saved, "the job was started with other settings or references; "
                             "continue it with the same options", field="--continue")
    elif (temp / "settings.json").exists() or (out / "tomograms.star").exists():
        raise InputError(out, "the job folder holds a previous run; use --continue to resume "
                         "it or choose another --o", field="--o")
    ctx.barrier()
    if ctx.main and not resume:
        temp.mkdir(parents=True, exist_ok=True)
        with atomic_path(temp / "settings.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
    ctx.barrier()
    return resume


# ---- per tilt series results -----------------------------------------------------------
def _portable(ts: TiltSeries) -> TiltSeries:
    """Image names that resolve from any folder (relative to the project, else absolute)."""
    tilts = ts.tilts.copy()
    names = []
    for (path, index), old in zip(ts.image_sources(), tilts.get(
            "rlnMicrographName", pd.Series([None] * ts.n_tilts)), strict=True):
        name = project_path(path)
        names.append(f"{index + 1}@{name}" if old is None or "@" in str(old) else name)
    tilts["rlnMicrographName"] = names
    globals_ = dict(ts.globals)
    globals_.pop("rlnTomoTiltSeriesName", None)
    return replace(ts, globals=globals_, tilts=tilts)


def _write_series(temp: Path, name: str, result) -> None:
    ts = _portable(result.ts)
    globals_ = {k: v for k, v in ts.globals.items() if k != "rlnTomoTiltSeriesStarFile"}
    write_star({"global": pd.DataFrame([globals_]), name: ts.tilts},
               temp / f"{name}_tomogram.star")
    with atomic_path(temp / f"{name}_particles.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, rows=result.rows, positions_px=result.positions_px,
                 trajectories_A=result.trajectories_A)
    with atomic_path(temp / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result.stats, indent=1))


def _read_series(temp: Path, name: str, image_size) -> tuple[TiltSeries, dict, dict]:
    ts = read_tomogram_set(temp / f"{name}_tomogram.star", image_size=image_size)[name]
    with np.load(temp / f"{name}_particles.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return ts, arrays, json.loads((temp / f"{name}.json").read_text())


# ---- merging ----------------------------------------------------------------------------
def _with_positions(ps: ParticleSet, tset: TomogramSet, positions_px: np.ndarray
                    ) -> ParticleSet:
    """``ps`` at new tomogram positions (tilt-series px, one row per particle), origins zero;
    a particle series keeps the coordinates its crops were cut at and takes the change as its
    origins (position = coordinate − origin), so its stacks are used without re-extraction."""
    if is_particle_series(ps):
        return _with_origins(ps, tset, positions_px)
    df = ps.particles.copy()
    names = ps.tomo_names()
    pixel_size_A = names.map({n: tset[n].pixel_size_A for n in set(names)}).to_numpy(float)
    if ps.has_centred_coordinates():
        size = np.stack([names.map({n: tset[n].tomo_size_px[i] for n in set(names)})
                         .to_numpy(float) for i in range(3)], 1)
        centred = (positions_px - size / 2.0) * pixel_size_A[:, None]
        for i, label in enumerate(CENTRED):
            df[label] = centred[:, i]
    else:
        coord_pixel_size_A = ps.coordinate_pixel_size_A()
        coord_pixel_size_A = np.where(np.isfinite(coord_pixel_size_A), coord_pixel_size_A,
                                      pixel_size_A)
        for i, label in enumerate(COORD_PX):
            df[label] = positions_px[:, i] * pixel_size_A / coord_pixel_size_A
    for label in ORIGINS:
        if label in df:
            df[label] = 0.0
    return replace(ps, particles=df)


def _with_origins(ps: ParticleSet, tset: TomogramSet, positions_px: np.ndarray
                  ) -> ParticleSet:
    """Origins (Å; in the subtomogram frame where the set has one) that put each particle at
    ``positions_px`` from its unchanged coordinate."""
    names = ps.tomo_names().to_numpy()
    coords = np.zeros_like(positions_px)
    pixel_size_A = np.zeros(len(ps))
    for name in dict.fromkeys(names):
        rows = np.flatnonzero(names == name)
        coords[rows] = particle_positions_px(ps, tset[name], rows, apply_origins=False)[:, 0]
        pixel_size_A[rows] = tset[name].pixel_size_A
    origins = (coords - positions_px) * pixel_size_A[:, None]  # tomogram frame
    frames = ps.subtomogram_matrices()
    if frames is not None:  # RELION keeps origins in the subtomogram frame: A_subᵀ · shift
        origins = (frames.transpose(1, 2) @ torch.from_numpy(origins)[..., None])[..., 0]
        origins = origins.numpy()
    df = ps.particles.drop(columns=[label for label in ORIGINS[3:] if label in ps.particles])
    for i, label in enumerate(ORIGINS[:3]):
        df[label] = origins[:, i]
    return replace(ps, particles=df)


def _reconstruct(ps, tset, motion, refs, device, sym="C1"):
    return reconstruct_particle(ps, tset, box=refs.box, pixel_size_A=refs.pixel_size_A,
                                sym=sym, motion=motion, device=device, progress=False)


# ---- rounds -------------------------------------------------------------------------------
@dataclass
class _Geometry:
    """The geometry a round starts from: particles, tilt series and trajectories (Å by
    particle name; ``None``: none) and, after a round, the positions (tilt-series px)."""

    particles: ParticleSet
    tomograms: TomogramSet
    motion: dict[str, np.ndarray] | None
    positions_px: np.ndarray | None = None


def _align_round(folder: Path, state: _Geometry, refs: References, settings: AlignSettings,
                 names: np.ndarray, series: list[str], resume: bool, ctx: Context, device,
                 progress: bool, desc: str) -> None:
    """Align this rank's tilt series of one round (those not finished in ``folder``)."""
    mine = [n for n in ctx.shard(np.array(series, dtype=object))
            if not (resume and (folder / f"{n}.json").is_file())]
    if ctx.main:
        folder.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    projectors = refs.projectors(settings.box, device) if mine else None
    total = int(sum((names == n).sum() for n in mine))
    bar = tqdm(total=total, desc=desc, unit="particle", disable=None if progress else True)
    for name in mine:
        rows = np.flatnonzero(names == name)
        result = align_series(state.tomograms[name], state.particles, rows, refs, projectors,
                              settings, motion=state.motion, device=device,
                              progress=bar.update)
        _write_series(folder, name, result)
    bar.close()
    ctx.barrier()


def _merge(folder: Path, state: _Geometry, series: list[str], names: np.ndarray
           ) -> tuple[_Geometry, dict]:
    """The geometry after a round (every rank reads all tilt series' results) and the
    figures of each tilt series."""
    ps = state.particles
    new_series = {n: _portable(ts) for n, ts in state.tomograms.series.items()}
    positions = np.zeros((len(ps), 3))
    particle_names = ps.particles["rlnTomoParticleName"].astype(str).to_numpy()
    trajectories: dict[str, np.ndarray] = {}
    stats = {}
    for name in series:
        ts, arrays, stats[name] = _read_series(folder, name,
                                               state.tomograms[name].image_size_px)
        new_series[name] = ts
        rows = arrays["rows"]
        positions[rows] = arrays["positions_px"]
        for row, traj in zip(rows, arrays["trajectories_A"], strict=True):
            trajectories[particle_names[row]] = traj
    tset = TomogramSet(new_series, str(folder / "tomograms.star"))
    return _Geometry(_with_positions(ps, tset, positions), tset, trajectories, positions), stats


def _round_references(folder: Path, state: _Geometry, refs: References, mask, sym: str,
                      resume: bool, ctx: Context, device) -> tuple[References, _Geometry, dict]:
    """Half maps of ``reconstruct-particle`` with the geometry of the previous round, at the
    input references' box and pixel size, masked by the input mask and weighted by their own
    FSC (of the masked maps where there is a mask); the two half sets first brought into one
    frame (:func:`half_map_offset_px`, :func:`_coregistered`). Rank 0 writes them into
    ``folder`` (``half1.mrc``, ``half2.mrc``, ``fsc.star``; ``references.json`` last, with the
    offset), all ranks read them back. Returns the references, the (co-registered) geometry
    and the figures of the round's references."""
    done = folder / "references.json"
    if ctx.main and not (resume and done.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        result = _reconstruct(state.particles, state.tomograms, state.motion, refs, device, sym)
        offset = half_map_offset_px(result.half1, result.half2,
                                    snr_weight(result.fsc.cpu().numpy()))
        figures = {"half_map_offset_px": offset.tolist(),
                   "resolution_before_coregistration_A": result.resolution_A}
        if float(offset.norm()) > MIN_OFFSET_PX:
            result = _reconstruct(_coregistered(state, offset, refs.pixel_size_A).particles,
                                  state.tomograms, state.motion, refs, device, sym)
            residual = half_map_offset_px(result.half1, result.half2,
                                          snr_weight(result.fsc.cpu().numpy()))
            figures["residual_offset_px"] = residual.tolist()
        figures["resolution_A"] = result.resolution_A
        write_outputs(result, folder)
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps(figures))
    ctx.barrier()
    figures = json.loads(done.read_text())
    offset = torch.tensor(figures["half_map_offset_px"], dtype=torch.float64)
    if float(offset.norm()) > MIN_OFFSET_PX:
        state = _coregistered(state, offset, refs.pixel_size_A)
    fsc = folder / "fsc.star" if mask is None else None
    new = read_references(folder / "half1.mrc", folder / "half2.mrc", mask, fsc)
    return new, state, figures


def half_map_offset_px(half1: Tensor, half2: Tensor, snr: np.ndarray,
                       iterations: int = 8) -> Tensor:
    """The translation ``s`` (px, ``(x, y, z)``) that lays half map 2 best onto half map 1:
    the maximum of ``C(s) = Σ_k w(|k|) Re[F₁(k) F₂*(k) e^{2πi k·s}]`` (``F₂ e^{−2πi k·s}``:
    map 2 moved by ``s``; ``w``: the SNR weight per shell, zero from FSC 0.143 on), from the
    best whole-pixel shift by Newton steps on the analytic gradient and Hessian."""
    box = half1.shape[-1]
    f1 = torch.fft.rfftn(half1.double().cpu())
    f2 = torch.fft.rfftn(half2.double().cpu())
    weight = torch.as_tensor(snr, dtype=torch.float64)
    shell = shell_index(box)
    w = torch.where(shell < len(weight), weight[shell.clamp(max=len(weight) - 1)], 0.0)
    cross = w * f1 * f2.conj()
    cross[0, 0, 0] = 0
    cc = torch.fft.irfftn(cross, s=half1.shape)
    z, y, x = np.unravel_index(int(cc.argmax()), cc.shape)
    shift = torch.tensor([x, y, z], dtype=torch.float64)
    shift = torch.where(shift >= box / 2, shift - box, shift)
    k = rfft_freqs(box, dtype=torch.float64)
    count = torch.full(cross.shape, 2.0, dtype=torch.float64)  # the half spectrum's twins
    count[..., 0] = 1.0
    if box % 2 == 0:
        count[..., -1] = 1.0
    cross = cross * count
    for _ in range(iterations):
        term = cross * torch.exp(2j * math.pi * (k @ shift))
        gradient = -2 * math.pi * torch.einsum("zyx,zyxc->c", term.imag, k)
        hessian = -(2 * math.pi) ** 2 * torch.einsum("zyx,zyxc,zyxd->cd", term.real, k, k)
        step = torch.linalg.solve(hessian, gradient)
        shift = shift - step.clamp(-0.5, 0.5)
    return shift


def _coregistered(state: _Geometry, offset_px: Tensor, ref_pixel_size_A: float) -> _Geometry:
    """``state`` with the particles of half set 1 and 2 moved by ``+A_i s / 2`` and
    ``−A_i s / 2`` (``s``: :func:`half_map_offset_px`, px of the references): half map 2 moved
    by ``s`` matches half map 1, and moving a reference's content by ``c`` while its particles
    move by ``−A_i c`` leaves every image unchanged (a particle is the reference rotated by
    ``A_i``), so both half maps come out moved half-way, into one frame. The data cannot place
    that frame (the gauge), but a joined map of two half sets in different frames is
    blurred."""
    ps, tset = state.particles, state.tomograms
    halves = half_sets(ps)
    A = ps.rotation_matrices().to(torch.float64)
    sign = torch.from_numpy(np.where(halves == 1, 0.5, -0.5))
    names = ps.tomo_names()
    scale = ref_pixel_size_A / names.map({n: tset[n].pixel_size_A for n in set(names)}
                                         ).to_numpy(float)
    delta = sign[:, None] * (A @ offset_px)  # (N, 3), px of the references
    positions = state.positions_px + delta.numpy() * scale[:, None]
    return replace(state, particles=_with_positions(ps, tset, positions),
                   positions_px=positions)


def _report_round(entry: dict, rounds: int) -> None:
    moved = max(entry["rms_image_shift_px"].values())
    line = (f"round {entry['round']}/{rounds}: projected positions moved by up to {moved:.3f} px "
            "rms per tilt series")
    if "references" in entry:
        figures = entry["references"]
        offset = np.linalg.norm(figures["half_map_offset_px"])
        line += (f" against references from the previous round ({figures['resolution_A']:.2f} "
                 f"Å; half maps {offset:.2f} px apart before co-registration)")
    print(line, file=sys.stderr, flush=True)


@undone_on_input_error("out")
def tomo_align(
    inputs: TomoInputs,
    refs: References,
    settings: AlignSettings,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    ctx: Context | None = None,
    resume: bool = False,
    reconstruct: bool = True,
    write_matrices: bool = False,
    rounds: int = 2,
    sym: str = "C1",
    command: list[str] | None = None,
    progress: bool = True,
) -> AlignJob | None:
    """Run the job into ``out`` (see the module docstring); returns the result on rank 0."""
    start, start_cpu = time.perf_counter(), time.process_time()
    ctx = ctx or Context()
    out = Path(out)
    ps = check_inputs(inputs, refs, settings)
    if rounds < 1:
        raise InputError(None, f"--rounds must be at least 1 (got {rounds})", field="--rounds")
    try:
        symmetry_operators(sym)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from None
    record = {**_settings_record(settings, refs), "sym": sym}
    resume = _prepare_folder(out, record, resume, ctx)
    if ctx.main and command is not None:
        (out / "note.txt").write_text(" ".join(command) + "\n")

    names = ps.tomo_names().to_numpy()
    series = list(dict.fromkeys(names))
    state = _Geometry(ps, inputs.tomograms, inputs.motion)
    history: list[dict] = []
    round_refs = refs
    for index in range(1, rounds + 1):
        folder = out / "temp" / f"round{index}"
        entry: dict = {"round": index}
        if index > 1:
            round_refs, state, entry["references"] = _round_references(
                folder, state, refs, inputs.files.get("mask"), sym, resume, ctx, device)
        _align_round(folder, state, round_refs, settings, names, series, resume, ctx, device,
                     progress, desc=f"tomo-align round {index}/{rounds}")
        state, stats = _merge(folder, state, series, names)
        entry["rms_image_shift_px"] = {n: s["rms_image_shift_px"] for n, s in stats.items()}
        history.append(entry)
        if progress and ctx.main:
            _report_round(entry, rounds)
    if not ctx.main:
        return None

    tset, new_ps, trajectories = state.tomograms, state.particles, state.motion
    tset = TomogramSet(tset.series, str(out / "tomograms.star"))
    positions = state.positions_px
    particle_names = ps.particles["rlnTomoParticleName"].astype(str).to_numpy()
    write_tomogram_set(tset, out / "tomograms.star", matrices=write_matrices)
    write_particles(new_ps, out / "particles.star", new_ps.flavour)
    write_motion(out / "motion.star", trajectories)
    files = inputs.files
    write_optimisation_set(out / "optimisation_set.star", particles=out / "particles.star",
                           tomograms=out / "tomograms.star", trajectories=out / "motion.star",
                           ref1=files.get("ref1"), ref2=files.get("ref2"),
                           mask=files.get("mask"), fsc=files.get("fsc"))
    _write_pictures(out, series, inputs.tomograms, tset, positions, names, particle_names,
                    trajectories)
    job = AlignJob(out, tset, new_ps, trajectories, stats, rounds=history)
    if reconstruct:
        before = _reconstruct(ps, inputs.tomograms, inputs.motion, refs, device, sym)
        after = _reconstruct(new_ps, tset, trajectories, refs, device, sym)
        job.resolution_before_A, job.resolution_after_A = before.resolution_A, after.resolution_A
        plot_fsc({f"before ({before.resolution_A:.2f} Å)": before.fsc.cpu(),
                  f"after ({after.resolution_A:.2f} Å)": after.fsc.cpu()}, refs.box,
                 refs.pixel_size_A, out / "fsc_before_after.png",
                 title="reconstruct-particle half-map FSC before and after tomo-align")
    _write_job_json(out, command, record, job, time.perf_counter() - start,
                    time.process_time() - start_cpu)
    return job


def _write_pictures(out, series, old: TomogramSet, new: TomogramSet, positions, names,
                    particle_names, trajectories) -> None:
    for name in series:
        before, after = old[name], new[name]
        d = [a - b for a, b in zip(after.dof(), before.dof(), strict=True)]
        angles = torch.stack(d[:3], 1).numpy()
        shifts = torch.stack(d[3:], 1).numpy() / before.pixel_size_A
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        plot_tilt_changes(before.nominal_tilt_deg, shifts, angles,
                          out / f"tilt_changes_{safe}.png",
                          title=f"{name}: per-tilt changes")
        rows = np.flatnonzero(names == name)
        traj = np.stack([trajectories[particle_names[r]] for r in rows]) / after.pixel_size_A
        order = np.argsort(after.pre_exposure, kind="stable")
        for scale in (1, 8):
            write_trajectory_mesh(out / "Trajectories" / f"{safe}_x{scale}.ply",
                                  positions[rows], traj, order, scale)


def _write_job_json(out: Path, command, record: dict, job: AlignJob, wall: float,
                    cpu: float) -> None:
    data = {
        "command": command, **record,
        "versions": {"subtomo": getattr(subtomo, "__version__", "unknown"),
                     "torch": torch.__version__, "python": platform.python_version()},
        "wall_time_s": wall, "cpu_time_s": cpu,
        "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "resolution_before_A": job.resolution_before_A,
        "resolution_after_A": job.resolution_after_A, "tilt_series": job.stats,
        "rounds": job.rounds,
    }
    with atomic_path(out / "job.json") as tmp:
        tmp.write_text(json.dumps(data, indent=1))
