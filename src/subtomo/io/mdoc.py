"""SerialEM ``.mdoc`` tilt-series metadata, read with teamtomo's ``mdocfile``.

One ``[ZValue = i]`` section per image of the stack, in stack order: ``TiltAngle`` (nominal
stage tilt, deg), ``ExposureDose`` (e/Å² of that image; 0 when SerialEM had no dose
calibration), ``DateTime`` (acquisition time), ``PixelSpacing`` (Å); the global
``PixelSpacing``, ``Voltage`` and ``ImageSize``; the tilt-axis angle in a title line
``[T = ... Tilt axis angle = 85.3, binning = 4 ...]`` (degrees from the image Y axis, counter-
clockwise, RELION's ``rlnTomoNominalTiltAxisAngle``). The pre-exposure of each image is the
dose of the images acquired before it, in acquisition order: by ``DateTime`` where every
section has one, else by ``ZValue`` (the order SerialEM wrote them), as RELION 5's importer
does. (RELION 5's ``calculate_pre_exposure_dose`` adds the image's own ``ExposureDose`` too,
``cumsum``, but not with ``--dose_per_tilt_image``; we exclude it in both cases.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from mdocfile.data_models import Mdoc

from subtomo.errors import InputError

_AXIS = re.compile(r"tilt\s*axis\s*angle\s*=\s*([-+0-9.eE]+)", re.IGNORECASE)
_DATE_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S")


@dataclass
class MdocTiltSeries:
    """Per-image values in stack order (``ZValue``)."""

    tilt_deg: np.ndarray
    exposure_dose: np.ndarray  # e/Å² per image as SerialEM recorded it (may be all 0)
    acquisition_order: np.ndarray  # 0 = first image acquired
    pixel_size_A: float | None
    tilt_axis_deg: float | None
    voltage_kv: float | None
    image_size: tuple[int, int] | None
    sub_frame_paths: list[str]
    source: str

    @property
    def n_tilts(self) -> int:
        return len(self.tilt_deg)

    def pre_exposure(self, dose_per_tilt: float | None = None) -> np.ndarray:
        """Exposure before each image (e/Å²): the doses of the images acquired earlier.
        ``dose_per_tilt`` replaces SerialEM's ``ExposureDose``; without it that field must be
        recorded (non-zero)."""
        if dose_per_tilt is not None:
            dose = np.full(self.n_tilts, float(dose_per_tilt))
        else:
            dose = self.exposure_dose
            if not np.all(dose > 0):
                raise InputError(self.source, "ExposureDose is 0 or missing (SerialEM had no "
                                 "dose calibration); give the dose per tilt (--dose_per_tilt)",
                                 field="ExposureDose")
        order = np.argsort(self.acquisition_order, kind="stable")
        cumulative = np.concatenate([[0.0], np.cumsum(dose[order])[:-1]])
        out = np.empty(self.n_tilts)
        out[order] = cumulative
        return out


def _parse_time(text: str) -> datetime | None:
    text = " ".join(str(text).split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def read_mdoc(path: str | Path) -> MdocTiltSeries:
    """Read a tilt-series ``.mdoc`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mdoc file not found")
    try:
        mdoc = Mdoc.from_file(str(path))
    except Exception as exc:  # mdocfile raises pydantic and parsing errors of many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable SerialEM mdoc file ({first})") from None
    sections = sorted(mdoc.section_data, key=lambda s: -1 if s.ZValue is None else s.ZValue)
    if not sections or any(s.ZValue is None for s in sections):
        raise InputError(path, "no [ZValue = ...] sections: not a tilt-series mdoc",
                         field="ZValue")
    z = [s.ZValue for s in sections]
    if z != list(range(len(sections))):
        raise InputError(path, f"ZValue sections are not 0..{len(sections) - 1} (found {z})",
                         field="ZValue")
    tilt = np.array([np.nan if s.TiltAngle is None else s.TiltAngle for s in sections])
    for i, t in enumerate(tilt):
        if not np.isfinite(t):
            raise InputError(path, f"[ZValue = {i}]: TiltAngle is missing or not a number",
                             field="TiltAngle")
        if abs(t) > 90:
            raise InputError(path, f"[ZValue = {i}]: tilt angle {t:g}° outside ±90°",
                             field="TiltAngle")
    dose = np.array([s.ExposureDose if s.ExposureDose is not None and np.isfinite(
        s.ExposureDose) else 0.0 for s in sections])
    times = [_parse_time(s.DateTime) if s.DateTime else None for s in sections]
    if all(t is not None for t in times):
        seconds = np.array([(t - times[0]).total_seconds() for t in times])
        order = np.argsort(np.argsort(seconds, kind="stable"), kind="stable")
    else:
        order = np.arange(len(sections))
    glob = mdoc.global_data
    pixel = _pixel_size(path, [glob.PixelSpacing] + [s.PixelSpacing for s in sections])
    axis = None
    for title in mdoc.titles:
        match = _AXIS.search(str(title))
        if match:
            axis = float(match.group(1))
    voltages = [v for v in [glob.Voltage] + [s.Voltage for s in sections] if v]
    size = glob.ImageSize
    image_size = (int(size[0]), int(size[1])) if size is not None and len(size) == 2 else None
    frames = [str(s.SubFramePath) for s in sections if s.SubFramePath is not None]
    return MdocTiltSeries(tilt, dose, order, pixel, axis,
                          float(voltages[0]) if voltages else None, image_size, frames,
                          str(path))


def _pixel_size(path: Path, values: list[float | None]) -> float | None:
    """``PixelSpacing`` (Å): the header's and every section's must agree."""
    values = np.array([v for v in values if v is not None and np.isfinite(v)])
    if len(values) == 0:
        return None
    if np.ptp(values) > 1e-6 * values.max():
        raise InputError(path, f"PixelSpacing differs between sections ({values.min():g} to "
                         f"{values.max():g} Å)", field="PixelSpacing")
    if not values[0] > 0:
        raise InputError(path, "PixelSpacing must be positive", field="PixelSpacing")
    return float(values[0])
