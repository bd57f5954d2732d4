"""cryoDRGN-ET's tilt-series inputs (``subtomo export cryodrgn``): the per-tilt images as a
Warp 1 sub-tilt STAR file, the pose pickle and the CTF pickle.

What ``cryodrgn backproject_voxel --tilt`` and ``cryodrgn train_vae --encode-mode tilt`` read
(cryoDRGN 4.3.1, read from its source, not copied):

- ``particles.star``: one ``data_`` table, one row per tilt image, grouped into particles by
  ``rlnGroupName`` (``dataset.TiltSeriesData``), the layout of
  :mod:`subtomo.io.warp1_series`. A particle's rows come in exposure order (``train_vae``
  encodes the first ``--ntilts``). cryoDRGN ranks each particle's tilts in exposure by
  ``rlnCtfScalefactor`` (highest first), gives rank ``r`` the dose ``r × --dose-per-tilt`` and
  multiplies the CTF by the scale factor and by ``cos(--angle-per-tilt × ⌈r/2⌉)`` (it assumes
  a dose-symmetric scheme). We write Warp's scale factor, cos(tilt), lowered by 10⁻⁶ per
  exposure rank so that the ± tilts of equal cosine rank in exposure order, and Warp's
  ``rlnCtfBfactor = −4 ×`` pre-exposure (e/Å²), from which our reader (and tomoDRGN) take the
  exposure. ``rlnImagePixelSize`` / ``rlnImageSize`` in the table let ``cryodrgn
  parse_pose_star`` / ``parse_ctf_star`` run without ``-D`` / ``--Apix``.
- the images: NOT CTF-premultiplied, protein white (the RELION particle convention: cryoDRGN
  inverts the data by default and its CTF is ours × −1), each centred on its particle (the
  sub-pixel remainder applied as a phase), so that every origin is 0. cryoDRGN cannot take
  premultiplied images: ``backproject_voxel`` multiplies each image by its CTF and weights by
  the CTF² (or phase-flips), ``train_vae`` multiplies its projections by the CTF; without
  ``--ctf`` it applies none. A RELION 5 2D-stack set (premultiplied, ``rlnCtfDataAreCtf
  Premultiplied 1``) is therefore re-cut from its tilt series.
- ``poses.pkl``: ``(rot (N, 3, 3), trans (N, 2))`` per image (:func:`subtomo.io.poses.
  poses_cryodrgn`): the RELION matrix of the image, ``R_t A_i`` (tilt rotation × particle
  matrix, the frame in which ``subtomo reconstruct-particle`` inserts the slice), origins as
  a fraction of the box.
- ``ctf.pkl``: float32 ``(N, 9)``: box (px), pixel size (Å), defocus U, V (Å, at the
  particle's depth in that tilt), astigmatism angle (deg), voltage (kV), Cs (mm), amplitude
  contrast, phase shift (deg) (``cryodrgn parse_ctf_star``).

The images are cut at the tilt series' pixel size Fourier-cropped to about the output one
(:func:`subtomo.tomo.crops.prepare_images`); where the ratio is not a whole number, their pixels
differ from the written size by less than one part in the tilt-image width, which a single
``rlnImagePixelSize`` cannot carry (``reconstruct-particle`` corrects for it).

From a Warp 1 sub-tilt STAR file the images stay where they are: the table is copied with its
image names made relative to the output folder (and ``--angpix`` written into it) and the
pickles are computed from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.errors import InputError
from subtomo.geometry.euler import matrix_to_euler
from subtomo.io.files import BackgroundWriter, resolve, undone_on_input_error
from subtomo.io.mrc import write_mrc
from subtomo.io.particles import ANGLES, ParticleSet
from subtomo.io.poses import poses_cryodrgn, write_poses_pickle
from subtomo.io.star_text import read_star, write_star
from subtomo.io.tomograms import TomogramSet
from subtomo.io.warp1_series import check_warp1_images, read_warp1_series
from subtomo.tomo.extract import select_tilts
from subtomo.tomo.particles import CropBatch, for_each_batch, output_pixel_size_A

__all__ = ["CryodrgnExport", "OUTPUTS", "ctf_table", "export_tilt_series", "export_warp1",
           "cryodrgn_command"]

OUTPUTS = ("particles.star", "poses.pkl", "ctf.pkl", "Subtilts/*")
EXPOSURE_TIEBREAK = 1e-6  # subtracted from rlnCtfScalefactor per exposure rank


@dataclass
class CryodrgnExport:
    """What was written: files, counts, and what cryoDRGN's options should be."""

    star: Path
    poses: Path
    ctf: Path
    n_particles: int
    n_images: int
    box: int
    pixel_size_A: float
    min_tilts: int
    dose_per_tilt: float | None = None
    angle_per_tilt: float | None = None
    skipped: int = 0


def ctf_table(box: int, pixel_size_A: float, defocus: np.ndarray, voltage_kv: np.ndarray,
              cs_mm: np.ndarray, amplitude_contrast: np.ndarray, phase_shift_deg: np.ndarray
              ) -> np.ndarray:
    """``cryodrgn parse_ctf_star``'s float32 ``(N, 9)``: D, Å/px, U, V, angle, kV, Cs, w, φ."""
    n = len(defocus)
    table = np.zeros((n, 9))
    table[:, 0], table[:, 1] = box, pixel_size_A
    table[:, 2:5] = defocus
    for j, values in enumerate((voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg), 5):
        table[:, j] = values
    return table.astype(np.float32)


def _write_pickles(df: pd.DataFrame, out: Path, box: int, pixel_size_A: float,
                   source: str | Path | None) -> tuple[Path, Path]:
    """``poses.pkl`` and ``ctf.pkl`` of the per-image table ``df`` (origins in px)."""
    shifts_A = df[["rlnOriginX", "rlnOriginY"]].to_numpy(float) * pixel_size_A
    try:
        poses = poses_cryodrgn(df[list(ANGLES)].to_numpy(float), shifts_A, box, pixel_size_A)
    except ValueError as exc:
        raise InputError(source, str(exc), field="rlnOriginX") from None
    write_poses_pickle(poses, out / "poses.pkl")

    def column(label: str, default: float | None = None) -> np.ndarray:
        if label in df:
            return df[label].to_numpy(float)
        if default is None:
            raise InputError(source, "required column missing (the images' CTF)", field=label)
        return np.full(len(df), default)

    u = column("rlnDefocusU")
    defocus = np.stack([u, df["rlnDefocusV"].to_numpy(float) if "rlnDefocusV" in df else u,
                        column("rlnDefocusAngle", 0.0)], axis=1)
    table = ctf_table(box, pixel_size_A, defocus, column("rlnVoltage"),
                      column("rlnSphericalAberration"), column("rlnAmplitudeContrast"),
                      column("rlnPhaseShift", 0.0))
    write_poses_pickle(table, out / "ctf.pkl")  # a portable pickle of one array
    return out / "poses.pkl", out / "ctf.pkl"


def _finish(rows: pd.DataFrame, out: Path, box: int, pixel_size_A: float,
            source: str | Path | None, **extra) -> CryodrgnExport:
    """Write ``particles.star`` and the two pickles; the summary."""
    rows = rows.copy()
    rows["rlnImagePixelSize"] = pixel_size_A
    rows["rlnImageSize"] = box
    poses, ctf = _write_pickles(rows, out, box, pixel_size_A, source)
    write_star({"": rows}, out / "particles.star")
    counts = rows.groupby(rows["rlnGroupName"].astype(str), sort=False).size()
    return CryodrgnExport(out / "particles.star", poses, ctf, len(counts), len(rows), box,
                          pixel_size_A, int(counts.min()), **extra)


@undone_on_input_error("out_dir")
def export_warp1(star: str | Path, out_dir: str | Path, *, pixel_size_A: float | None = None
                 ) -> CryodrgnExport:
    """A Warp 1 sub-tilt STAR file → ``out_dir/particles.star`` (image names relative to
    ``out_dir``, ``pixel_size_A`` written in) and its pickles; the images are not copied."""
    star, out = Path(star), Path(out_dir)
    ps, series = read_warp1_series(star, pixel_size_A=pixel_size_A)
    box = check_warp1_images(star, series)
    pixel = float(ps.pixel_size_A()[0])
    df = next(b for b in read_star(star).values() if isinstance(b, pd.DataFrame)).copy()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name in df["rlnImageName"].astype(str):
        index, file = name.split("@", 1) if "@" in name else ("1", name)
        path = resolve(file, star.parent).resolve()
        names.append(f"{index}@{os.path.relpath(path, out.resolve())}")
    df["rlnImageName"] = names
    df["rlnMagnification"], df["rlnDetectorPixelSize"] = 10000.0, pixel
    for label in ("rlnOriginX", "rlnOriginY"):
        if label not in df:
            angst = f"{label}Angst"
            df[label] = df[angst].to_numpy(float) / pixel if angst in df else 0.0
    df = df.drop(columns=[c for c in ("rlnOriginXAngst", "rlnOriginYAngst") if c in df])
    dose = _step(-df["rlnCtfBfactor"].to_numpy(float) / 4) if "rlnCtfBfactor" in df else None
    return _finish(df, out, box, pixel, star, dose_per_tilt=dose)


def cryodrgn_command(result: CryodrgnExport, outdir: str = "backproject") -> str:
    """The ``cryodrgn backproject_voxel`` line for the export (every tilt kept)."""
    line = (f"cryodrgn backproject_voxel {result.star} --poses {result.poses} --ctf "
            f"{result.ctf} --tilt --ntilts {result.min_tilts}")
    if result.dose_per_tilt is not None:
        line += f" --dose-per-tilt {result.dose_per_tilt:g}"
    if result.angle_per_tilt is not None:
        line += f" --angle-per-tilt {result.angle_per_tilt:g}"
    return line + f" -o {outdir}"


def _step(values: np.ndarray) -> float | None:
    """The median step between sorted distinct values (dose or tilt increment)."""
    steps = np.diff(np.unique(np.round(np.asarray(values, float), 6)))
    return float(np.median(steps)) if len(steps) else None


def _write_stack(path: Path, images: np.ndarray, pixel_size_A: float) -> None:
    write_mrc(path, images, pixel_size_A, stack=True)


class _Images:
    """Per-batch stacks and the STAR rows of their images."""

    def __init__(self, ps: ParticleSet, out: Path, box: int, pixel_size_A: float,
                 selected: dict[str, np.ndarray], writer: BackgroundWriter) -> None:
        self.ps, self.out, self.box, self.pixel_size_A = ps, out, box, pixel_size_A
        self.selected, self.writer = selected, writer
        df = ps.particles
        self.names = (df["rlnTomoParticleName"].astype(str).tolist()
                      if "rlnTomoParticleName" in df else
                      [f"{t}/{i + 1}" for i, t in enumerate(ps.tomo_names())])
        self.subsets = df["rlnRandomSubset"].to_numpy() if "rlnRandomSubset" in df else None
        self.rows: list[dict] = []
        self.stacks: dict[str, int] = {}
        self.skipped = 0

    def add(self, batch: CropBatch) -> None:
        ts, crops = batch.ts, batch.crops
        k = self.stacks[ts.name] = self.stacks.get(ts.name, 0) + 1
        stack = f"Subtilts/{ts.name}_{k:03d}.mrcs"
        images = torch.fft.fftshift(torch.fft.irfft2(crops.spectra, s=(self.box, self.box)),
                                    dim=(-2, -1))
        frames = batch.rotations[None] @ batch.matrices[:, None]  # (N, T, 3, 3): R_t A_i
        angles = matrix_to_euler(frames.cpu().to(torch.float64)).numpy()
        u, v, angle = (x.cpu().numpy() for x in ts.defocus_at(batch.positions_px))
        xy = ts.project(batch.positions_px).cpu().numpy()
        order = np.argsort(ts.pre_exposure, kind="stable")  # exposure order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        scale = np.cos(np.radians(ts.nominal_tilt_deg)) - EXPOSURE_TIEBREAK * rank
        original = np.flatnonzero(self.selected[ts.name]) + 1
        visible = crops.visible.cpu().numpy()
        kept = []
        for j, row in enumerate(batch.rows):
            tilts = [t for t in order if visible[j, t]]
            self.skipped += not tilts
            for t in tilts:
                kept.append(images[j, t])
                self.rows.append(self._row(row, len(kept), stack, angles[j, t], (
                    u[j, t], v[j, t], angle[j, t]), xy[j, t], ts, t, scale[t],
                    f"{ts.name}_{original[t]:03d}"))
        if kept:
            self.writer.submit(_write_stack, self.out / stack, torch.stack(kept).cpu().numpy(),
                               self.pixel_size_A)

    def _row(self, row: int, index: int, stack: str, angles: np.ndarray, defocus: tuple,
             xy: np.ndarray, ts, t: int, scale: float, micrograph: str) -> dict:
        out = {"rlnGroupName": self.names[row], "rlnImageName": f"{index:06d}@{stack}",
               "rlnMicrographName": micrograph,
               "rlnCoordinateX": float(xy[0]), "rlnCoordinateY": float(xy[1]),
               "rlnAngleRot": float(angles[0]), "rlnAngleTilt": float(angles[1]),
               "rlnAnglePsi": float(angles[2]), "rlnOriginX": 0.0, "rlnOriginY": 0.0,
               "rlnDefocusU": float(defocus[0]), "rlnDefocusV": float(defocus[1]),
               "rlnDefocusAngle": float(defocus[2]), "rlnPhaseShift": 0.0,
               "rlnVoltage": ts.voltage_kv, "rlnSphericalAberration": ts.cs_mm,
               "rlnAmplitudeContrast": ts.amplitude_contrast,
               "rlnMagnification": 10000.0, "rlnDetectorPixelSize": self.pixel_size_A,
               "rlnCtfBfactor": 0.0 - 4.0 * float(ts.pre_exposure[t]),
               "rlnCtfScalefactor": float(scale)}
        if self.subsets is not None:
            out["rlnRandomSubset"] = int(self.subsets[row])
        return out


@undone_on_input_error("out_dir")
def export_tilt_series(particles: ParticleSet, tomograms: TomogramSet, out_dir: str | Path, *,
                       box: int, pixel_size_A: float | None = None,
                       max_dose: float | None = None, max_tilts: int | None = None,
                       motion: dict[str, np.ndarray] | None = None, batch_size: int = 32,
                       device: str | torch.device = "cpu", progress: bool = True
                       ) -> CryodrgnExport:
    """Every visible tilt of every particle, cut from the tilt series (``box`` px at
    ``pixel_size_A``, default the tilt series'), into ``out_dir`` (module docstring)."""
    pixel, _ = output_pixel_size_A(particles, tomograms, pixel_size_A)
    out = Path(out_dir)
    (out / "Subtilts").mkdir(parents=True, exist_ok=True)
    selected: dict[str, np.ndarray] = {}
    doses, tilts = [], []

    def select(ts) -> np.ndarray:
        selected[ts.name] = select_tilts(ts, max_dose, max_tilts)
        doses.append(_step(ts.pre_exposure[selected[ts.name]]))
        tilts.append(_step(np.abs(ts.nominal_tilt_deg[selected[ts.name]])))
        return selected[ts.name]

    with BackgroundWriter() as writer:
        images = _Images(particles, out, box, pixel, selected, writer)
        for_each_batch(particles, tomograms, box, pixel, images.add, motion=motion,
                       tilts=select, ctf=False, apply_origins=True, batch_size=batch_size,
                       device=device, progress=progress, desc="exporting")
    if not images.rows:
        raise InputError(particles.source, "no particle is visible in any tilt image")
    return _finish(pd.DataFrame(images.rows), out, box, pixel, particles.source,
                   skipped=images.skipped,
                   dose_per_tilt=_median(doses), angle_per_tilt=_median(tilts))


def _median(values: list[float | None]) -> float | None:
    known = [x for x in values if x is not None]
    return float(np.median(known)) if known else None
