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
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch

from subtomo.ctf.volume import CtfGridder, tilt_pairs
from subtomo.errors import InputError
from subtomo.fourier.grid import centred_irfft, centred_rfft
from subtomo.fourier.shift import phase_shift
from subtomo.io import validate
from subtomo.io.files import resolve, undone_on_input_error
from subtomo.io.imod import exposure_from_order, read_angles, read_defocus
from subtomo.io.mrc import read_mrc_header, write_ctf_volume, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import write_particles
from subtomo.io.star_text import read_star
from subtomo.io.tomograms import project_path
from subtomo.tomo.extract import ExtractResult, _normalise
from subtomo.tomo.geometry import tilt_rotations
from subtomo.tomo.tiltseries import TiltSeries

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


@undone_on_input_error("out_dir")
def extract_from_tomograms(
    tomograms_star: str | Path,
    out_dir: str | Path,
    *,
    box: int,
    coord_suffix: str = ".coords",
    tomo_pixel_size_A: float | None = None,
    defocus_name: str = "ctfplotter.defocus",
    hand: float = -1.0,
    normalise: bool = False,
    bg_radius_px: float | None = None,
    invert: bool = False,
    flavour: str = "relion5",
    ctf_layout: str = "relion",
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
) -> ExtractResult:
    """Subtomograms + per-particle CTF volumes of every tomogram listed in ``tomograms_star``
    (``rlnMicrographName``); writes ``Subtomograms/<stem>/<n>_data.mrc``, ``_ctf.mrc`` and
    ``particles.star`` into ``out_dir``."""
    if box < 8 or box % 2:
        raise InputError(None, f"box {box} px must be even and at least 8", field="--b")
    star = Path(tomograms_star)
    tables = [b for b in read_star(star).values() if isinstance(b, pd.DataFrame)]
    if not tables or "rlnMicrographName" not in tables[0]:
        raise InputError(star, "expected a table of tomograms", field="rlnMicrographName")
    optics = {"rlnVoltage": voltage_kv, "rlnSphericalAberration": cs_mm,
              "rlnAmplitudeContrast": amplitude_contrast}
    out = Path(out_dir)
    jobs = []
    for name in tables[0]["rlnMicrographName"].astype(str):  # check everything first
        path = resolve(name, star.parent)
        if not path.is_file():
            raise InputError(star, f"tomogram {name!r} not found", field="rlnMicrographName")
        shape, voxel = read_mrc_header(path)  # a truncated file is refused here
        apix = tomo_pixel_size_A or voxel
        if not apix > 0:
            raise InputError(path, "no pixel size in the header: give --tomo_angpix",
                             field="--tomo_angpix")
        ts = imod_tilt_series(path, shape, apix, defocus_name, hand, optics)
        coords = _coordinates(path.parent / f"{path.stem}{coord_suffix}")
        jobs.append((path, ts, coords))
    rows, tomos, skipped = [], [], 0
    for path, ts, coords in jobs:
        apix = ts.pixel_size_A
        frames = tilt_rotations(*ts.dof()[:3])
        gridder = CtfGridder(tilt_pairs(box, apix, frames), torch.as_tensor(ts.pre_exposure),
                             voltage_kv=voltage_kv, cs_mm=cs_mm,
                             amplitude_contrast=amplitude_contrast)
        nz, ny, nx = ts.tomo_size_px[::-1]
        tomos.append(ts.globals)
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            for i, c in enumerate(coords):
                corner = np.round(c).astype(int) - box // 2
                if np.any(corner < 0) or np.any(corner + box > np.array([nx, ny, nz])):
                    skipped += 1
                    continue
                x0, y0, z0 = corner
                volume = torch.from_numpy(np.array(mrc.data[z0:z0 + box, y0:y0 + box,
                                                             x0:x0 + box], dtype=np.float32))
                validate.volume(volume, path, what=f"the box around particle {i + 1} "
                                f"(x, y, z = {x0 + box // 2}, {y0 + box // 2}, {z0 + box // 2} px)",
                                field="tomogram voxels")
                d = torch.as_tensor(c - np.round(c), dtype=torch.float64)
                volume = centred_irfft(centred_rfft(volume.double()) * phase_shift(box, -d),
                                       box).float() * (-1.0 if invert else 1.0)
                if normalise:
                    volume = _normalise(volume[None], bg_radius_px or 0.75 * box / 2)[0]
                position = torch.as_tensor(c, dtype=torch.float64)[None]
                u, v, angle = ts.defocus_at(position)
                weights = gridder((u + v) / 2, astigmatism_A=u - v, astigmatism_angle_deg=angle)
                stem = out / "Subtomograms" / ts.name / f"{i + 1}"
                write_mrc(f"{stem}_data.mrc", volume, apix)
                write_ctf_volume(f"{stem}_ctf.mrc", weights.reshape(box, box, box // 2 + 1)
                                 .float(), apix, layout=ctf_layout)
                rows.append({"rlnTomoName": ts.name, "rlnTomoParticleName": f"{ts.name}/{i + 1}",
                             "rlnMicrographName": project_path(path),
                             "rlnCoordinateX": c[0], "rlnCoordinateY": c[1],
                             "rlnCoordinateZ": c[2],
                             "rlnImageName": project_path(Path(f"{stem}_data.mrc")),
                             "rlnCtfImage": project_path(Path(f"{stem}_ctf.mrc")),
                             "rlnOpticsGroup": 1})
    if not rows:
        raise InputError(star, "no particle box lies inside its tomogram")
    first = jobs[0][1]
    particle_optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], **{
            k: [v] for k, v in optics.items()}, "rlnImagePixelSize": [first.pixel_size_A],
        "rlnImageSize": [box], "rlnImageDimensionality": [3],
        "rlnTomoTiltSeriesPixelSize": [first.pixel_size_A],
        "rlnCtfDataAreCtfPremultiplied": [0]})
    ps = ParticleSet(pd.DataFrame(rows), particle_optics, pd.DataFrame(tomos),
                     flavour=flavour, source=str(star))
    star_out = out / "particles.star"
    write_particles(ps, star_out, flavour)
    return ExtractResult(ps, star_out, len(rows), skipped, first.pixel_size_A)
