"""SerialEM ``.mdoc`` tilt-series metadata, read with teamtomo's ``mdocfile``.

One ``[ZValue = i]`` section per image of the stack, in stack order: ``TiltAngle`` (nominal
stage tilt, deg), ``ExposureDose`` (e/Å² of that image; 0 when SerialEM had no dose
calibration), ``DateTime`` (acquisition time), ``PixelSpacing`` (Å); the global
``PixelSpacing``, ``Voltage`` and ``ImageSize``; the tilt-axis angle in a title line
``[T = ... Tilt axis angle = 85.3, binning = 4 ...]`` (degrees from the image Y axis, counter-
clockwise, RELION's ``rlnTomoNominalTiltAxisAngle``). The pre-exposure of each image is the
dose of the images acquired before it, in acquisition order: by ``DateTime`` where every
section has one, else by ``ZValue`` (the order SerialEM wrote them), as RELION 5's importer
does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

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
    import mdocfile

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mdoc file not found")
    try:
        df = mdocfile.read(path)
    except Exception as exc:  # mdocfile raises pydantic and parsing errors of many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable SerialEM mdoc file ({first})") from None
    if "ZValue" not in df or "TiltAngle" not in df or len(df) == 0:
        raise InputError(path, "no [ZValue = ...] sections with TiltAngle: not a tilt-series "
                         "mdoc", field="ZValue")
    df = df.sort_values("ZValue", kind="stable").reset_index(drop=True)
    z = df["ZValue"].to_numpy()
    if not np.array_equal(z, np.arange(len(df))):
        raise InputError(path, f"ZValue sections are not 0..{len(df) - 1} (found {z.tolist()})",
                         field="ZValue")
    tilt = df["TiltAngle"].to_numpy(np.float64)
    for i, t in enumerate(tilt):
        if not np.isfinite(t):
            raise InputError(path, f"[ZValue = {i}]: TiltAngle is missing or not a number",
                             field="TiltAngle")
        if abs(t) > 90:
            raise InputError(path, f"[ZValue = {i}]: tilt angle {t:g}° outside ±90°",
                             field="TiltAngle")
    dose = (df["ExposureDose"].to_numpy(np.float64) if "ExposureDose" in df
            else np.zeros(len(df)))
    dose = np.where(np.isfinite(dose), dose, 0.0)
    times = [_parse_time(t) for t in df["DateTime"]] if "DateTime" in df else [None]
    if all(t is not None for t in times) and len(times) == len(df):
        seconds = np.array([(t - times[0]).total_seconds() for t in times])
        order = np.argsort(np.argsort(seconds, kind="stable"), kind="stable")
    else:
        order = np.arange(len(df))
    pixel = _pixel_size(path, df)
    axis = None
    for title in (df["titles"].iloc[0] if "titles" in df else None) or []:
        match = _AXIS.search(str(title))
        if match:
            axis = float(match.group(1))
    voltage = _first_number(df, "Voltage")
    size = df["ImageSize"].iloc[0] if "ImageSize" in df else None
    image_size = (int(size[0]), int(size[1])) if size is not None and len(size) == 2 else None
    frames = [str(p) for p in df["SubFramePath"]] if "SubFramePath" in df else []
    return MdocTiltSeries(tilt, dose, order, pixel, axis, voltage, image_size, frames, str(path))


def _first_number(df, column: str) -> float | None:
    if column not in df:
        return None
    values = np.asarray(df[column], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values[0]) if len(values) else None


def _pixel_size(path: Path, df) -> float | None:
    """``PixelSpacing`` (Å): sections and header must agree."""
    if "PixelSpacing" not in df:
        return None
    values = np.asarray(df["PixelSpacing"], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    if np.ptp(values) > 1e-6 * values.max():
        raise InputError(path, f"PixelSpacing differs between sections ({values.min():g} to "
                         f"{values.max():g} Å)", field="PixelSpacing")
    if not values[0] > 0:
        raise InputError(path, "PixelSpacing must be positive", field="PixelSpacing")
    return float(values[0])
