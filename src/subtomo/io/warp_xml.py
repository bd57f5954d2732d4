"""Warp tilt-series metadata (``<name>.xml`` beside ``<name>.tomostar``) → RELION 5 parameters.

Read with the standard library's XML parser, as Warp writes it (``TiltSeries.SaveMeta``):
root attributes ``AreAnglesInverted``, ``PlaneNormal``, ``LevelAngleX/Y``; newline-separated
per-tilt elements ``Angles``, ``Dose`` (exposure before the tilt, e/Å²), ``UseTilt``,
``AxisAngle``, ``AxisOffsetX/Y`` (Å), ``MoviePath``; ``<CTF>`` parameters (``PixelSize`` Å,
``Voltage`` kV, ``Cs`` mm, ``Amplitude``, ``Defocus`` µm ...; ``PixelSize`` is the pixel size
the CTF was fitted at, ``BinnedPixelSizeMean`` of that step, not the exported stack's:
``ts_stack --angpix`` writes stacks binned to another); and cubic grids
(``<GridCTF Width Height Depth><Node X Y Z Value/>``) whose depth runs over the tilts:
``GridCTF`` (defocus, µm), ``GridCTFDefocusDelta`` (µm), ``GridCTFDefocusAngle`` (deg),
``GridCTFPhase`` (π rad), ``GridMovementX/Y`` (Å).

Geometry (``TiltSeries.GetPositionsInOneTilt``, Warp's ``Matrix3``): a tomogram position ``p``
(Å) lands in tilt ``t`` at ``R_t·(p − V/2) + AxisOffset_t + I/2 − Movement_t`` (Å) with
``R_t = Euler(0, Angle_t + LevelAngleY, −AxisAngle_t)·RotateX(LevelAngleX)`` and ``V``, ``I``
the tomogram and image sizes. Warp's ``Euler`` is RELION's ZYZ matrix, so ``Euler(0, θ, −τ) =
Rz(τ)·Ry(−θ)`` (active), and ``R_t`` equals RELION's ``Rz(ZRot)·Ry(YTilt)·Rx(XTilt)`` with

    rlnTomoZRot = AxisAngle,  rlnTomoYTilt = −(Angle + LevelAngleY),  rlnTomoXTilt = LevelAngleX

(WarpTools writes ``R_t`` itself as RELION 4's ``rlnTomoProjX/Y/Z``). The shift is
``AxisOffset − Movement`` plus the half-pixel difference between Warp's centres (``size/2``)
and RELION's (``int(size/2)``), which vanishes for even sizes. Warp's tomogram frame is its
own: ``rlnTomoYTilt`` has the opposite sign to the stage angle, unlike IMOD's. Positions
ignore Warp's per-tilt angle corrections (``GridAngleX/Y/Z``; Warp applies them to particle
orientations only), and spatially varying grids (movement over the image, volume warps) have
no RELION equivalent: their value at the image centre is used and a note says so.
``rlnTomoHand`` follows WarpTools' export: +1 when ``AreAnglesInverted``, else −1.

All lengths above are Å, so they convert to pixels of any stack with the stack's own pixel
size. (Where Warp rounded a binned image to an even size, it scales positions by that rounding,
``SizeRoundingFactors``, at most 1/width: the stack's nominal pixel size is used.)
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.geometry.tilt import (
    RelionParameters,
    image_centre_px,
    specimen_centre_px,
    tilt_rotations,
)


@dataclass
class WarpTiltSeries:
    """Per-tilt values from a Warp XML, all tilts (``use`` marks the ones Warp keeps)."""

    angles_deg: np.ndarray
    dose: np.ndarray
    use: np.ndarray
    axis_angle_deg: np.ndarray
    axis_offset_A: np.ndarray  # (T, 2)
    movement_A: np.ndarray  # (T, 2) GridMovementX/Y at the image centre
    defocus_um: np.ndarray
    defocus_delta_um: np.ndarray
    defocus_angle_deg: np.ndarray
    phase_shift_pi: np.ndarray
    movie_paths: list[str]
    ctf: dict[str, str]
    level_angle_x: float = 0.0
    level_angle_y: float = 0.0
    angles_inverted: bool = False
    notes: list[str] = field(default_factory=list)
    source: str | None = None

    @property
    def n_tilts(self) -> int:
        return len(self.angles_deg)

    @property
    def pixel_size_A(self) -> float | None:
        value = self.ctf.get("PixelSize")
        return float(value) if value else None

    @property
    def hand(self) -> float:
        return 1.0 if self.angles_inverted else -1.0


def _per_tilt(path: Path, root: ET.Element, name: str, n: int | None, kind=float,
              default=None) -> np.ndarray | list:
    node = root.find(name)
    if node is None or not (node.text or "").strip():
        if default is None:
            raise InputError(path, f"no <{name}> element: not a Warp tilt-series XML",
                             field=name)
        return default
    words = [w for w in node.text.replace("\r", "").split("\n") if w.strip()]
    if n is not None and len(words) != n:
        raise InputError(path, f"<{name}> has {len(words)} values, <Angles> has {n}",
                         field=name)
    if kind is str:
        return [w.strip() for w in words]
    out = []
    for i, word in enumerate(words, start=1):
        try:
            value = kind(word.strip()) if kind is not bool else _bool(word)
        except ValueError:
            raise InputError(path, f"value {i} ({word.strip()!r}) is not a "
                             f"{'boolean' if kind is bool else 'number'}", field=name) from None
        if kind is float and not math.isfinite(value):
            raise InputError(path, f"value {i} is not finite", field=name)
        out.append(value)
    return np.array(out)


def _bool(word: str) -> bool:
    text = word.strip().lower()
    if text not in ("true", "false"):
        raise ValueError(word)
    return text == "true"


def _grid(path: Path, root: ET.Element, name: str, n_tilts: int, notes: list[str]
          ) -> np.ndarray | None:
    """A cubic grid's value per tilt at the image centre (None when absent)."""
    node = root.find(name)
    if node is None:
        return None
    try:
        w, h, d = (int(node.get(k, "1")) for k in ("Width", "Height", "Depth"))
        grid = np.zeros((d, h, w))
        for item in node.findall("Node"):
            grid[int(item.get("Z")), int(item.get("Y")), int(item.get("X"))] = float(
                item.get("Value"))
    except (TypeError, ValueError, IndexError):
        raise InputError(path, "malformed grid (Width/Height/Depth and Node X/Y/Z/Value)",
                         field=name) from None
    if not np.all(np.isfinite(grid)):
        raise InputError(path, "grid value is not finite", field=name)
    if w * h > 1 and np.ptp(grid) > 0:
        notes.append(f"{name} varies over the image ({w}×{h} nodes): taking its value at the "
                     "image centre")
    centre = _interp(_interp(grid, (w - 1) / 2.0, axis=2), (h - 1) / 2.0, axis=1)  # (d,)
    if d == 1:
        return np.full(n_tilts, centre[0])
    z = np.linspace(0.0, d - 1.0, n_tilts)
    return np.interp(z, np.arange(d), centre)


def _interp(values: np.ndarray, at: float, axis: int) -> np.ndarray:
    lo = int(math.floor(at))
    hi = min(lo + 1, values.shape[axis] - 1)
    frac = at - lo
    return (1 - frac) * np.take(values, lo, axis=axis) + frac * np.take(values, hi, axis=axis)


def read_warp_xml(path: str | Path) -> WarpTiltSeries:
    """Read a Warp tilt-series XML (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "Warp XML not found")
    try:
        root = ET.fromstring(path.read_bytes())
    except ET.ParseError as exc:
        raise InputError(path, f"not valid XML ({exc})", line=exc.position[0]) from None
    if root.tag != "TiltSeries":
        raise InputError(path, f"root element <{root.tag}>, expected <TiltSeries>",
                         field="TiltSeries")
    angles = _per_tilt(path, root, "Angles", None)
    n = len(angles)
    for i, a in enumerate(angles, start=1):
        if abs(a) > 90:
            raise InputError(path, f"tilt {i}: angle {a:g}° outside ±90°", field="Angles")
    notes: list[str] = []
    zeros = np.zeros(n)
    dose = _per_tilt(path, root, "Dose", n, default=zeros)
    use = _per_tilt(path, root, "UseTilt", n, kind=bool, default=np.ones(n, bool))
    axis = _per_tilt(path, root, "AxisAngle", n, default=zeros)
    ox = _per_tilt(path, root, "AxisOffsetX", n, default=zeros)
    oy = _per_tilt(path, root, "AxisOffsetY", n, default=zeros)
    movies = _per_tilt(path, root, "MoviePath", n, kind=str, default=[""] * n)
    ctf = {p.get("Name"): p.get("Value") for p in root.findall("./CTF/Param")}

    def attr(name: str, default: float) -> float:
        text = root.get(name)
        if text is None or not text.strip():
            return default
        try:
            return float(text)
        except ValueError:
            raise InputError(path, f"attribute {name}={text!r} is not a number",
                             field=name) from None

    def ctf_value(name: str, default: float) -> float:
        text = ctf.get(name)
        try:
            return float(text) if text not in (None, "") else default
        except ValueError:
            raise InputError(path, f"CTF parameter {name}={text!r} is not a number",
                             field=f"CTF/{name}") from None

    defocus = _grid(path, root, "GridCTF", n, notes)
    if defocus is None or (np.all(defocus == 0) and ctf_value("Defocus", 0.0) != 0):
        defocus = np.full(n, ctf_value("Defocus", 0.0))
        notes.append("no per-tilt defocus (GridCTF); using the global CTF Defocus")
    delta = _grid(path, root, "GridCTFDefocusDelta", n, notes)
    angle = _grid(path, root, "GridCTFDefocusAngle", n, notes)
    phase = _grid(path, root, "GridCTFPhase", n, notes)
    mx = _grid(path, root, "GridMovementX", n, notes)
    my = _grid(path, root, "GridMovementY", n, notes)
    for name in ("GridVolumeWarpX", "GridVolumeWarpY", "GridVolumeWarpZ"):
        node = root.find(name)
        if node is not None and any(float(v.get("Value", "0")) != 0
                                    for v in node.findall("Node")):
            notes.append(f"{name} (Warp/M volume deformation) is not representable; ignored")
    for name in ("GridAngleX", "GridAngleY", "GridAngleZ"):
        node = root.find(name)
        if node is not None and any(float(v.get("Value", "0")) != 0
                                    for v in node.findall("Node")):
            notes.append(f"{name} (per-tilt angle corrections for particle orientations) "
                         "is not used for positions; ignored")
    inverted = (root.get("AreAnglesInverted", "False").strip().lower() == "true")
    return WarpTiltSeries(
        angles, dose, use, axis, np.stack([ox, oy], -1),
        np.stack([mx if mx is not None else zeros, my if my is not None else zeros], -1),
        defocus, delta if delta is not None else np.full(n, ctf_value("DefocusDelta", 0.0)),
        angle if angle is not None else np.full(n, ctf_value("DefocusAngle", 0.0)),
        phase if phase is not None else np.full(n, ctf_value("PhaseShift", 0.0)),
        list(movies), ctf, attr("LevelAngleX", 0.0), attr("LevelAngleY", 0.0), inverted,
        notes, str(path))


def warp_to_relion(ws: WarpTiltSeries, pixel_size_A: float, tomo_size_px, image_size_px,
                   tilts: np.ndarray | None = None) -> RelionParameters:
    """Warp geometry → RELION 5 parameters for ``tilts`` (indices; default: the used ones),
    for a stack of ``pixel_size_A`` (Warp's Å lengths ÷ ``pixel_size_A`` = stack pixels)."""
    idx = np.flatnonzero(ws.use) if tilts is None else np.asarray(tilts, int)
    n = len(idx)
    xt = np.full(n, ws.level_angle_x)
    yt = -(ws.angles_deg[idx] + ws.level_angle_y)
    zr = ws.axis_angle_deg[idx].copy()
    rot = tilt_rotations(*(torch.as_tensor(v) for v in (xt, yt, zr))).numpy()
    c_relion = specimen_centre_px(tomo_size_px).numpy()
    c_warp = np.asarray(tomo_size_px, dtype=np.float64) / 2.0
    image_offset = np.asarray(image_size_px, dtype=np.float64) / 2.0 \
        - image_centre_px(image_size_px).numpy()
    shift_px = (ws.axis_offset_A[idx] - ws.movement_A[idx]) / pixel_size_A + image_offset \
        + (rot @ (c_relion - c_warp))[:, :2]
    return RelionParameters(xt, yt, zr, shift_px[:, 0] * pixel_size_A,
                            shift_px[:, 1] * pixel_size_A)
