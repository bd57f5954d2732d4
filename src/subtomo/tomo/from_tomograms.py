"""Seed 002's route: subtomograms cut from reconstructed tomograms at picked coordinates
(``relion_preprocess --extract``), each with its own 3D CTF volume from the IMOD files beside
the tomogram (``relion_ctf_prepare.py``): ``.tlt`` angles, ctfplotter ``.defocus``, ``.order``.

Coordinates (``<tomogram stem><suffix>``, ``x y z`` per line) are tomogram voxel positions,
0-based as ``relion_preprocess`` reads them; the box is centred on them exactly (integer part by
index, sub-voxel remainder as a Fourier phase). The CTF volume is
:class:`subtomo.ctf.volume.CtfGridder` for tilts about y by the ``.tlt`` angles with each
view's ctfplotter defocus (views ctfplotter did not fit take the fitted row nearest in angle),
shifted by the particle's depth in that view (``hand × pixel × depth``, RELION's
``Tomogram::getCtf``; IMOD and AreTomo differ in the sign of the tilt angle relative to RELION,
so ``--hand`` chooses it) and the exposure of the ``.order`` line matched by angle
(:func:`subtomo.io.imod.exposure_from_order`). A box that leaves the tomogram is skipped with a
count.

At another output pixel size the box is cut larger (``box × output / tomogram`` voxels, whole)
and Fourier-cropped (:func:`subtomo.fourier.grid.crop_spectrum`); ``crop`` keeps the central
voxels, and the CTF volume is built on the ``crop`` grid at the output pixel size over the tilts
:func:`subtomo.tomo.extract.select_tilts` keeps, as on the tilt-series route.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from subtomo.ctf.volume import CtfGridder, tilt_pairs
from subtomo.errors import InputError
from subtomo.fourier.grid import centred_irfft, centred_rfft, crop_spectrum
from subtomo.fourier.shift import phase_shift
from subtomo.geometry.tilt import tilt_rotations
from subtomo.io import validate
from subtomo.io.files import resolve, undone_on_input_error
from subtomo.io.imod import exposure_from_order, read_angles, read_defocus
from subtomo.io.mrc import read_mrc_header, write_ctf_volume, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import write_particles
from subtomo.io.star_text import read_star
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import project_path
from subtomo.tomo.extract import ExtractResult, _normalise, select_tilts

__all__ = ["extract_from_tomograms", "imod_tilt_series"]


def _one(folder: Path, stem: str, suffix: str, what: str) -> Path:
    exact = folder / f"{stem}{suffix}"
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"*{suffix}"))
    if len(found) != 1:
        raise InputError(folder, f"need one {what} ({stem}{suffix} or a single *{suffix}); "
                         f"found {len(found)}", field=suffix)
    return found[0]


def imod_tilt_series(tomogram: Path, shape_zyx: tuple[int, int, int], pixel_size_A: float,
                     defocus_name: str, hand: float, optics: dict) -> TiltSeries:
    """The tilt geometry of a tomogram from the IMOD files in its folder (tilts about y)."""
    folder, stem = tomogram.parent, tomogram.stem
    angles = read_angles(_one(folder, stem, ".tlt", "tilt-angle file"))
    defocus_file = folder / defocus_name
    if not defocus_file.is_file():
        defocus_file = _one(folder, stem, ".defocus", "ctfplotter defocus file")
    ctf = read_defocus(defocus_file, len(angles), angles).filled(angles)
    exposure = exposure_from_order(_one(folder, stem, ".order", "exposure list"), angles)
    nz, ny, nx = shape_zyx
    tilts = pd.DataFrame({"rlnTomoXTilt": 0.0, "rlnTomoYTilt": angles, "rlnTomoZRot": 0.0,
                          "rlnTomoXShiftAngst": 0.0, "rlnTomoYShiftAngst": 0.0,
                          "rlnDefocusU": ctf.defocus_u_A, "rlnDefocusV": ctf.defocus_v_A,
                          "rlnDefocusAngle": ctf.angle_deg,
                          "rlnMicrographPreExposure": exposure})
    globals_ = {"rlnTomoName": stem, "rlnTomoTiltSeriesPixelSize": pixel_size_A,
                "rlnTomoSizeX": nx, "rlnTomoSizeY": ny, "rlnTomoSizeZ": nz, "rlnTomoHand": hand,
                **optics}
    return TiltSeries(globals_, tilts, source=str(tomogram), image_size=(nx, ny))


def _coordinates(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "coordinate file not found", field="--coord_suffix")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            values = [float(v) for v in line.split()[:3]]
        except ValueError:
            values = []
        if len(values) != 3:
            raise InputError(path, "expected 'x y z' per line", line=number)
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _output_pixel_size(first_A: float, pixel_size_A: float | None,
                       binning: float | None) -> float:
    out_pixel_size_A = pixel_size_A or (binning or 1.0) * first_A
    if not out_pixel_size_A > 0:
        raise InputError(None, "the output pixel size must be positive", field="--angpix")
    return float(out_pixel_size_A)


def _cut_size(path: Path, box: int, out_A: float, tomo_A: float) -> int:
    """Voxels of the tomogram (``tomo_A``) that hold ``box`` px at ``out_A``: Fourier cropping
    keeps the frequencies exactly only when ``box × out_A / tomo_A`` is whole and ≥ ``box``."""
    cut = box * out_A / tomo_A
    if cut < box - 1e-6 or abs(cut - round(cut)) > 1e-6 * cut:
        raise InputError(path, f"--b {box} at {out_A:g} Å/px is {cut:g} voxels of this "
                         f"{tomo_A:g} Å/px tomogram: the output pixel size must be at least the "
                         "tomogram's and --b × ratio a whole number", field="--angpix")
    return int(round(cut))


def _resampled(volumes: Tensor, shifts_px: Tensor, box: int, crop: int) -> Tensor:
    """Boxes ``(N, C, C, C)`` cut around the rounded coordinates, moved by the sub-voxel
    remainders ``shifts_px`` ``(N, 3)`` (a Fourier phase), Fourier-cropped to ``box``
    (:func:`subtomo.fourier.grid.crop_spectrum`, × ``(box / C)³`` to keep the density scale)
    and windowed to the central ``crop`` voxels in real space, as the tilt-series route's
    ``--crop`` is."""
    cut = volumes.shape[-1]
    spectra = centred_rfft(volumes.double()) * phase_shift(cut, -shifts_px)
    out = centred_irfft(crop_spectrum(spectra, box), box) * (box / cut) ** 3
    start = box // 2 - crop // 2
    return out[..., start:start + crop, start:start + crop, start:start + crop].float()


@dataclass
class _Tomogram:
    path: Path
    ts: TiltSeries
    coords: np.ndarray
    cut: int


@undone_on_input_error("out_dir")
def extract_from_tomograms(
    tomograms_star: str | Path,
    out_dir: str | Path,
    *,
    box: int,
    crop: int | None = None,
    pixel_size_A: float | None = None,
    binning: float | None = None,
    max_dose: float | None = None,
    max_tilts: int | None = None,
    coord_suffix: str = ".coords",
    tomo_pixel_size_A: float | None = None,
    defocus_name: str = "ctfplotter.defocus",
    hand: float = -1.0,
    normalise: bool = False,
    bg_radius_px: float | None = None,
    invert: bool = False,
    flavour: str = "relion5",
    ctf_layout: str = "relion",
    batch_size: int = 32,
    device: str = "cpu",
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
) -> ExtractResult:
    """Subtomograms + per-particle CTF volumes of every tomogram listed in ``tomograms_star``
    (``rlnMicrographName``); writes ``Subtomograms/<stem>/<n>_data.mrc``, ``_ctf.mrc`` and
    ``particles.star`` into ``out_dir``.

    ``box`` px at the output pixel size (``pixel_size_A``, or ``binning`` × the first
    tomogram's): cut from each tomogram as ``box × output / tomogram pixel`` voxels and
    Fourier-cropped to ``box``; ``crop`` (≤ ``box``) the central window written. The CTF
    volumes (``crop``³ at the output pixel size) take the tilts :func:`select_tilts` keeps of
    ``max_dose`` / ``max_tilts``. ``batch_size`` boxes at a time on ``device``."""
    crop = crop or box
    if box < 8 or box % 2 or not 8 <= crop <= box:
        raise InputError(None, f"box {box} px must be even and at least 8, and 8 ≤ --crop "
                         "≤ --b", field="--b")
    star = Path(tomograms_star)
    tables = [b for b in read_star(star).values() if isinstance(b, pd.DataFrame)]
    if not tables or "rlnMicrographName" not in tables[0]:
        raise InputError(star, "expected a table of tomograms", field="rlnMicrographName")
    optics = {"rlnVoltage": voltage_kv, "rlnSphericalAberration": cs_mm,
              "rlnAmplitudeContrast": amplitude_contrast}
    out = Path(out_dir)
    jobs, out_A = _planned(star, tables[0], box, optics, pixel_size_A, binning, max_dose,
                           max_tilts, coord_suffix, tomo_pixel_size_A, defocus_name, hand)
    rows, tomos, skipped = [], [], 0
    for job in jobs:
        ctf = _CtfGridding(crop, out_A, select_tilts(job.ts, max_dose, max_tilts), device,
                          voltage_kv, cs_mm, amplitude_contrast, ctf_layout)
        tomos.append(job.ts.globals)
        job_rows, job_skipped = _extract_tomogram(job, out, ctf, box, batch_size, invert,
                                                  normalise, bg_radius_px)
        rows += job_rows
        skipped += job_skipped
    if not rows:
        raise InputError(star, "no particle box lies inside its tomogram")
    first = jobs[0].ts
    particle_optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], **{
            k: [v] for k, v in optics.items()}, "rlnImagePixelSize": [out_A],
        "rlnImageSize": [crop], "rlnImageDimensionality": [3],
        "rlnTomoTiltSeriesPixelSize": [first.pixel_size_A],
        "rlnTomoSubtomogramBinning": [out_A / first.pixel_size_A],
        "rlnCtfDataAreCtfPremultiplied": [0]})
    ps = ParticleSet(pd.DataFrame(rows), particle_optics, pd.DataFrame(tomos),
                     flavour=flavour, source=str(star))
    star_out = out / "particles.star"
    write_particles(ps, star_out, flavour)
    return ExtractResult(ps, star_out, len(rows), skipped, out_A)


def _planned(star: Path, table: pd.DataFrame, box: int, optics: dict,
             pixel_size_A: float | None, binning: float | None, max_dose: float | None,
             max_tilts: int | None, coord_suffix: str, tomo_pixel_size_A: float | None,
             defocus_name: str, hand: float) -> tuple[list[_Tomogram], float]:
    """Every tomogram of ``table`` with its tilt series (IMOD files), coordinates and cut
    size, checked before anything is written; and the output pixel size (Å)."""
    jobs: list[_Tomogram] = []
    out_A = None
    for name in table["rlnMicrographName"].astype(str):  # check everything first
        path = resolve(name, star.parent)
        if not path.is_file():
            raise InputError(star, f"tomogram {name!r} not found", field="rlnMicrographName")
        shape, voxel = read_mrc_header(path)  # a truncated file is refused here
        tomogram_pixel_size_A = tomo_pixel_size_A or voxel
        if not tomogram_pixel_size_A > 0:
            raise InputError(path, "no pixel size in the header: give --tomo_angpix",
                             field="--tomo_angpix")
        out_A = out_A or _output_pixel_size(tomogram_pixel_size_A, pixel_size_A, binning)
        ts = imod_tilt_series(path, shape, tomogram_pixel_size_A, defocus_name, hand, optics)
        if not select_tilts(ts, max_dose, max_tilts).any():
            raise InputError(path, "--max_dose / --max_tilts leave no tilt", field="--max_dose")
        coords = _coordinates(path.parent / f"{path.stem}{coord_suffix}")
        jobs.append(_Tomogram(path, ts, coords, _cut_size(path, box, out_A, tomogram_pixel_size_A)))
    return jobs, out_A


@dataclass
class _CtfGridding:
    """How the CTF volumes are made and written: ``crop``³ at ``out_A`` over the tilts ``keep``
    (boolean, per tilt), on ``device``, with the microscope's parameters."""

    crop: int
    out_A: float
    keep: np.ndarray
    device: str
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    ctf_layout: str


def _extract_tomogram(job: _Tomogram, out: Path, ctf: _CtfGridding, box: int, batch_size: int,
                      invert: bool, normalise: bool, bg_radius_px: float | None
                      ) -> tuple[list[dict], int]:
    """Write the subtomograms and CTF volumes of the boxes of ``job`` that lie inside its
    tomogram, ``batch_size`` at a time; their STAR rows and the number of boxes skipped."""
    ts, cut, crop, keep, device = job.ts, job.cut, ctf.crop, ctf.keep, ctf.device
    frames = tilt_rotations(*ts.dof()[:3])[torch.as_tensor(keep)].to(device)
    gridder = CtfGridder(tilt_pairs(crop, ctf.out_A, frames),
                         torch.as_tensor(ts.pre_exposure[keep], device=device),
                         voltage_kv=ctf.voltage_kv, cs_mm=ctf.cs_mm,
                         amplitude_contrast=ctf.amplitude_contrast)
    size = np.array(ts.tomo_size_px)
    corners = np.round(job.coords).astype(int) - cut // 2
    inside = np.all((corners >= 0) & (corners + cut <= size), axis=1)
    index = np.flatnonzero(inside)
    rows = []
    with mrcfile.mmap(job.path, mode="r", permissive=True) as mrc:
        for start in range(0, len(index), batch_size):
            batch = index[start:start + batch_size]
            volumes = _resampled(_boxes(mrc.data, job.path, corners[batch], batch, cut,
                                        device),
                                 torch.as_tensor(job.coords[batch] - np.round(
                                     job.coords[batch]), device=device), box, crop)
            volumes = volumes * (-1.0 if invert else 1.0)
            if normalise:
                volumes = _normalise(volumes, bg_radius_px or 0.75 * crop / 2)
            u, v, angle = (x[:, torch.as_tensor(keep)].to(device) for x in
                           ts.defocus_at(torch.as_tensor(job.coords[batch])))
            weights = gridder((u + v) / 2, astigmatism_A=u - v, astigmatism_angle_deg=angle)
            weights = weights.reshape(-1, crop, crop, crop // 2 + 1).float().cpu()
            for j, i in enumerate(batch):
                rows.append(_write(out, job, int(i), volumes[j].cpu(), weights[j], ctf.out_A,
                                   ctf.ctf_layout))
    return rows, int((~inside).sum())


def _boxes(data: np.ndarray, path: Path, corners: np.ndarray, numbers: np.ndarray, cut: int,
           device: str) -> Tensor:
    """The ``(N, C, C, C)`` boxes of the tomogram ``data`` (z, y, x) at ``corners`` (x, y, z),
    each checked for bad values (``numbers``: the particles' 0-based rows)."""
    boxes = []
    for (x0, y0, z0), i in zip(corners, numbers, strict=True):
        volume = torch.from_numpy(np.array(data[z0:z0 + cut, y0:y0 + cut, x0:x0 + cut],
                                           dtype=np.float32))
        x, y, z = (int(c) + cut // 2 for c in (x0, y0, z0))
        validate.volume(volume, path, what=f"the box around particle {i + 1} (x, y, z = {x}, "
                        f"{y}, {z} px)", field="tomogram voxels")
        boxes.append(volume)
    return torch.stack(boxes).to(device)


def _write(out: Path, job: _Tomogram, i: int, volume: Tensor, weights: Tensor, pixel_size_A: float,
           layout: str) -> dict:
    """Write particle ``i`` (0-based) of ``job``; its row of the particle table."""
    name, c = job.ts.name, job.coords[i]
    stem = out / "Subtomograms" / name / f"{i + 1}"
    write_mrc(f"{stem}_data.mrc", volume, pixel_size_A)
    write_ctf_volume(f"{stem}_ctf.mrc", weights, pixel_size_A, layout=layout)
    return {"rlnTomoName": name, "rlnTomoParticleName": f"{name}/{i + 1}",
            "rlnMicrographName": project_path(job.path),
            "rlnCoordinateX": c[0], "rlnCoordinateY": c[1], "rlnCoordinateZ": c[2],
            "rlnImageName": project_path(Path(f"{stem}_data.mrc")),
            "rlnCtfImage": project_path(Path(f"{stem}_ctf.mrc")), "rlnOpticsGroup": 1}
