"""Warp 1 sub-tilt series: one STAR row per tilt image, grouped into particles.

Warp 1 (before WarpTools) exports each particle as a stack of 2D crops, one per tilt, and
describes every crop as a RELION 3.0 single-particle image (one ``data_`` table, no optics
block); cryoDRGN-ET reads these files (``cryodrgn.dataset.TiltSeriesData``). Labels, as in
``tests/data/cryodrgn_subtilts/sta_testing_bin8.star``:

- ``rlnGroupName`` names the particle (``rlnGroupNumber`` when there is no name, as cryoDRGN
  accepts); a particle's rows are its tilt images, in exposure order (dose-symmetric: the
  first row is the first exposure). Particles come in order of first appearance.
- ``rlnImageName`` ``n@stack.mrcs``: the crop (1-based ``n``), centred on the particle.
- ``rlnAngleRot/Tilt/Psi``: the pose of THIS image (the particle's orientation composed with
  the tilt), RELION's ZYZ convention, as for a single-particle image; ``rlnOriginX/Y`` (px) or
  ``rlnOriginX/YAngst`` when present, else zero shifts.
- ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (deg), ``rlnPhaseShift`` (deg): the CTF of this
  image at the particle (its depth included).
- ``rlnCtfBfactor`` (Å²): Warp's exposure weighting, ``−4 ×`` the tilt's accumulated dose
  (e/Å²) (Warp ``TiltSeries.GetCTFParamsForOneTilt``); ``rlnCtfScalefactor``: Warp's weight,
  cos(tilt angle) (×0.0001 for excluded tilts). cryoDRGN ignores the B-factor and derives
  each tilt's rank in exposure from ``rlnCtfScalefactor`` instead.
- ``rlnMicrographName``: the tilt's movie (``<tilt series>_<n>.mrc``); ``rlnCoordinateX/Y``:
  the particle in that tilt image (px); ``rlnRandomSubset``: the particle's half set.
- ``rlnDetectorPixelSize`` (µm) / ``rlnMagnification`` (10000): pixel size
  ``detector × 10⁴ / magnification`` Å, ``rlnVoltage``, ``rlnSphericalAberration``,
  ``rlnAmplitudeContrast``: per row.

No tilt-series table, no particle position in the tomogram and no particle orientation
outside the per-image poses: a particle is its list of images with their poses and CTFs.
:func:`is_warp1_series` tells such a file from the other particle files (``subtomo reconstruct``
takes either) and :func:`check_warp1_images` checks every image before a job reads any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo.errors import InputError
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc_header
from subtomo.io.particles import ANGLES, ParticleSet
from subtomo.io.star_text import read_star

GROUP_LABELS = ("rlnGroupName", "rlnGroupNumber")
DEFOCUS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
PER_IMAGE = ("rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift", "rlnMicrographPreExposure",
             "rlnCoordinateX", "rlnCoordinateY")
OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


@dataclass
class TiltImages:
    """One particle's tilt images, in file order: ``images`` ``(file, 0-based index)``,
    ``angles_deg`` ``(n, 3)`` rot/tilt/psi, ``shifts_A`` ``(n, 2)``, ``defocus`` ``(n, 3)``
    (U Å, V Å, angle deg), ``columns``: the other per-image labels present (``PER_IMAGE``)
    and ``micrographs``."""

    images: list[tuple[Path, int]]
    angles_deg: np.ndarray
    shifts_A: np.ndarray
    defocus: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    micrographs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _table(path: Path) -> pd.DataFrame:
    tables = [b for b in read_star(path).values() if isinstance(b, pd.DataFrame)]
    if len(tables) != 1:
        raise InputError(path, "not a Warp 1 sub-tilt STAR file: expected one table with a "
                         "row per tilt image", field="rlnGroupName")
    df = tables[0]
    if len(df) == 0:
        raise InputError(path, "no tilt images: the table is empty", field="rlnImageName")
    for label in ("rlnImageName", *ANGLES, "rlnDefocusU"):
        if label not in df:
            raise InputError(path, "required column missing", field=label)
    return df


def _group_label(path: Path, df: pd.DataFrame) -> str:
    for label in GROUP_LABELS:
        if label in df:
            return label
    raise InputError(path, "no particle label: Warp 1 sub-tilt files name each image's "
                     "particle in rlnGroupName (or rlnGroupNumber)", field="rlnGroupName")


def _pixel_size_A(path: Path, df: pd.DataFrame, given: float | None) -> np.ndarray:
    if given is not None:
        validate.positive(given, None, field="--angpix", unit="Å")
        return np.full(len(df), float(given))
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
        pixel = df["rlnDetectorPixelSize"].to_numpy(float) * 1e4 / df[
            "rlnMagnification"].to_numpy(float)
    elif "rlnImagePixelSize" in df:
        pixel = df["rlnImagePixelSize"].to_numpy(float)
    else:
        raise InputError(path, "no pixel size: needs rlnDetectorPixelSize and "
                         "rlnMagnification (or give --angpix)", field="rlnDetectorPixelSize")
    if not np.all(np.isfinite(pixel) & (pixel > 0)):
        raise InputError(path, "pixel size must be positive", field="rlnDetectorPixelSize")
    return pixel


def _shifts_A(df: pd.DataFrame, pixel_size_A: np.ndarray) -> np.ndarray:
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(df.columns):
        return df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float)
    if {"rlnOriginX", "rlnOriginY"} <= set(df.columns):
        return df[["rlnOriginX", "rlnOriginY"]].to_numpy(float) * pixel_size_A[:, None]
    return np.zeros((len(df), 2))


def _image_sources(path: Path, names: pd.Series) -> list[tuple[Path, int]]:
    out = []
    for line, name in enumerate(names.astype(str)):
        try:
            index = int(name.split("@")[0]) - 1 if "@" in name else 0
        except ValueError:
            index = -1
        if index < 0:
            raise InputError(path, f"tilt image {line + 1}: {name!r} is not n@stack",
                             field="rlnImageName")
        out.append((resolve(name, path.parent), index))
    return out


def _constant(path: Path, d: pd.DataFrame, label: str, name: str):
    values = d[label].unique()
    if len(values) != 1:
        raise InputError(path, f"particle {name}: {label} differs between its tilt images",
                         field=label)
    return values[0]


def read_warp1_series(path: str | Path, *, pixel_size_A: float | None = None
                      ) -> tuple[ParticleSet, dict[str, TiltImages]]:
    """Group a Warp 1 per-tilt-image STAR file into particles (module docstring).

    Returns a particle-series :class:`ParticleSet` (``rlnTomoSubTomosAre2DStacks`` 1,
    dimensionality 2), one row per particle: ``rlnTomoParticleName`` (the group), the number
    of images ``rlnTomoVisibleFrames`` (all 1: Warp 1 lists only images it kept),
    ``rlnImageName`` (the particle's stack where all its images share one file, else empty),
    ``rlnRandomSubset`` where present; and the :class:`TiltImages` of each particle by name.
    ``pixel_size_A`` overrides the pixel size of the rows.
    """
    path = Path(path)
    df = _table(path)
    group = _group_label(path, df)
    pixel = _pixel_size_A(path, df, pixel_size_A)
    sources = _image_sources(path, df["rlnImageName"])
    angles = df[list(ANGLES)].to_numpy(float)
    shifts = _shifts_A(df, pixel)
    u = df["rlnDefocusU"].to_numpy(float)
    v = df["rlnDefocusV"].to_numpy(float) if "rlnDefocusV" in df else u
    angle = df["rlnDefocusAngle"].to_numpy(float) if "rlnDefocusAngle" in df else 0.0 * u
    defocus = np.stack([u, v, angle], axis=1)
    for what, values in (("angles", angles), ("shifts", shifts), ("defocus", defocus)):
        validate.finite(values, path, what=f"tilt-image {what}", field=group)
    series: dict[str, TiltImages] = {}
    rows = []
    names = df[group].astype(str)
    for name, index in names.groupby(names, sort=False).indices.items():
        d = df.iloc[index]
        images = [sources[i] for i in index]
        files = {str(n).split("@")[-1] for n in d["rlnImageName"]}
        row = {"rlnTomoParticleName": name,
               "rlnImageName": files.pop() if len(files) == 1 else "",
               "rlnTomoVisibleFrames": "[" + ",".join("1" * len(index)) + "]",
               "rlnOpticsGroup": 1}
        if "rlnRandomSubset" in d:
            row["rlnRandomSubset"] = int(_constant(path, d, "rlnRandomSubset", name))
        rows.append(row)
        series[name] = TiltImages(
            images=images, angles_deg=angles[index], shifts_A=shifts[index],
            defocus=defocus[index],
            columns={c: d[c].to_numpy(float) for c in PER_IMAGE if c in d},
            micrographs=d["rlnMicrographName"].astype(str).tolist()
            if "rlnMicrographName" in d else [])
    optics = {"rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1",
              "rlnImagePixelSize": _single(path, pixel, "rlnDetectorPixelSize"),
              "rlnImageDimensionality": 2}
    for label in OPTICS:
        if label in df:
            optics[label] = _single(path, df[label].to_numpy(float), label)
    ps = ParticleSet(particles=pd.DataFrame(rows), optics=pd.DataFrame([optics]),
                     general={"rlnTomoSubTomosAre2DStacks": 1}, flavour="relion5",
                     source=str(path))
    return ps, series


def _single(path: Path, values: np.ndarray, label: str) -> float:
    if not np.allclose(values, values[0]):
        raise InputError(path, "differs between rows (one optics group is supported)",
                         field=label)
    return float(values[0])


def is_warp1_series(path: str | Path) -> bool:
    """True for a Warp 1 sub-tilt file: one table, no optics block, no tomogram labels, images
    with per-image poses and defocus, grouped by a particle label into groups of several images
    from distinct micrographs (one per tilt; a RELION 3.0 single-particle group holds many
    particles of one micrograph)."""
    tables = [b for b in read_star(path).values() if isinstance(b, pd.DataFrame)]
    if len(tables) != 1:
        return False
    df = tables[0]
    group = next((g for g in GROUP_LABELS if g in df), None)
    needed = {"rlnImageName", *ANGLES, "rlnDefocusU"}
    if group is None or not needed <= set(df.columns) or "rlnTomoName" in df or len(df) == 0:
        return False
    sizes = df.groupby(df[group].astype(str), sort=False).size()
    if sizes.max() < 2:
        return False
    if "rlnMicrographName" in df:
        return not df.duplicated([group, "rlnMicrographName"]).any()
    return True


def warp1_files(path: str | Path, series: dict[str, TiltImages]) -> list[Path]:
    """The STAR file and the stacks its images are in: what a job on the set reads."""
    return [Path(path), *dict.fromkeys(f for s in series.values() for f, _ in s.images)]


def check_warp1_images(path: str | Path, series: dict[str, TiltImages]) -> int:
    """The images' box size (px), after checking that every stack exists, holds square images
    of one size and every image a row names (``n@stack``) is in its stack."""
    box = None
    last: dict[Path, tuple[int, str]] = {}
    for name, s in series.items():
        for file, index in s.images:
            if index >= last.get(file, (-1, ""))[0]:
                last[file] = (index, name)
    for file, (index, name) in last.items():
        if not file.is_file():
            raise InputError(path, f"particle {name}: stack {file} not found",
                             field="rlnImageName")
        (n, ny, nx), _ = read_mrc_header(file)
        if index >= n:
            raise InputError(path, f"particle {name}: image {index + 1}@{file.name} is beyond "
                             f"its stack of {n} images", field="rlnImageName")
        if ny != nx or (box is not None and nx != box):
            raise InputError(path, f"{file.name}: images of {nx}×{ny} px; expected square "
                             "images of one size", field="rlnImageName")
        box = nx
    return int(box)
