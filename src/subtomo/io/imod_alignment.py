"""IMOD tilt-series alignments (``.xf``, ``.tlt``, ``.xtilt``, ``tilt.com``) ⇄ RELION 5's five
parameters per tilt, exactly, with IMOD's own centres.

IMOD's model, read from its sources (``flib/tilt/tilt.f90`` and ``libcfshr/cubinterp.c`` as
``newstack`` calls it). All coordinates here are 0-based with pixel centres at integers, at
the tilt-series pixel size:

- ``.xf`` (one line per view, ``A11 A12 A21 A22 DX DY``) maps a raw tilt-image position ``r`` to
  the aligned image: ``a = A·(r − c_img) + D``, both about the image centres
  ``c_img = ((W − 1)/2, (H − 1)/2)`` (``cubinterp``: centre ``nx/2`` on edge coordinates).
- ``tilt`` projects a reconstruction point onto the aligned image (``tilt.f90``:
  ``xp = xx·cosβ + yy·sinα'·sinβ' + zz·cosα·sinβ'``, ``yp = yy·cosα − zz·sinα'`` with
  ``sinβ' = −sin θ``, ``sinα' = −sin α``), θ the ``.tlt`` angle plus ``OFFSET``, α the ``.xtilt``
  angle minus ``XAXISTILT`` (``alpha(iv) − globalpha``). Its centres are ``xcenOut =
  WIDTH/2 + 0.5 + SHIFT_x`` and ``ycenOut = THICKNESS/2 + 0.5 + SHIFT_z`` (integer halves,
  1-based) and ``centerSlice = ny/2. + 0.5``.
- ``trimvol -rx`` / ``clip rotx`` turns the reconstruction (slices ⟂ Y) into the x, y, z volume
  users pick on, reversing z (``clip_proc.c``: output section ``nz − 1 − y``).

We identify that rotated volume's voxel indices with RELION's tomogram positions (px, origin at
voxel 0) and the raw image's pixel indices with RELION's image positions. In that frame IMOD's
projection is exactly RELION's ``Ry(θ)·Rx(α)`` about IMOD's tomogram centre

    c_I = (X//2 − 0.5 + SHIFT_x,  (Y − 1)/2,  Z − 0.5 − Z//2 − SHIFT_z)

(``(N − 1)/2`` for even sizes), so ``rlnTomoYTilt = θ``, ``rlnTomoXTilt = α`` (as RELION 5's
IMOD importer and cryoet-alignment map them), ``rlnTomoZRot = −φ`` for ``A = Rot(φ)`` and

    shift = c_img − c_R,img − A⁻¹·D + A⁻¹·[R·(c_R − c_I)]_xy      (px)

with RELION's centres ``c_R = int(size/2)``, ``c_R,img = int(W/2), int(H/2)``. RELION 5's own
importer uses ``−A⁻¹·D`` alone, which places IMOD's tomogram up to about 1.5 px away from where
IMOD puts it (about 1 px even at zero tilt for a tilt axis near 85°: the two half-pixel centre
offsets no longer cancel once rotated); this module is exact. An ``.xf`` whose 2×2 matrix is
not a rotation (IMOD's magnification, stretch or skew) has no RELION equivalent: we take the
nearest rotation (polar decomposition), keep the image centre exact, and report the largest
resulting error at the image corners.
A mirror (negative determinant) is refused. Binned reconstructions: give sizes and SHIFT in
unbinned pixels (exact for even binned sizes; IMOD's odd-size half-pixel rule applies at the
reconstruction's binning, which we do not model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.io.files import atomic_path
from subtomo.io.text_columns import Rows, check_angles, numeric_rows, parse_row, read_lines
from subtomo.tomo.geometry import image_centre_px, specimen_centre_px, tilt_rotations

XF_NAMES = ("A11", "A12", "A21", "A22", "DX", "DY")


@dataclass
class TiltCom:
    """What ``tilt.com`` says about the geometry (degrees, unbinned px)."""

    xaxis_tilt_deg: float = 0.0  # XAXISTILT
    angle_offset_deg: float = 0.0  # OFFSET (added to every tilt angle)
    shift_px: tuple[float, float] = (0.0, 0.0)  # SHIFT x, z (unbinned px)
    thickness_px: int | None = None  # THICKNESS × IMAGEBINNED
    full_image: tuple[int, int] | None = None  # FULLIMAGE nx ny
    binning: int = 1  # IMAGEBINNED
    exclude: list[int] = field(default_factory=list)  # EXCLUDELIST (1-based views)


@dataclass
class ImodAlignment:
    """One tilt series' IMOD alignment (views in stack order)."""

    xf: np.ndarray  # (T, 2, 3): rows [A11 A12 DX], [A21 A22 DY]; shifts in raw px
    tilt_deg: np.ndarray  # (T,) .tlt
    xtilt_deg: np.ndarray  # (T,) .xtilt (zeros when absent)
    tilt_com: TiltCom = field(default_factory=TiltCom)
    source: str | None = None

    @property
    def n_views(self) -> int:
        return len(self.tilt_deg)


@dataclass
class RelionParameters:
    """The five RELION 5 parameters per tilt (deg, deg, deg, Å, Å) and, for IMOD input, the
    largest position error (px at the image corners) from dropping magnification or skew."""

    xtilt: np.ndarray
    ytilt: np.ndarray
    zrot: np.ndarray
    shift_x_A: np.ndarray
    shift_y_A: np.ndarray
    distortion_px: float = 0.0

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return self.xtilt, self.ytilt, self.zrot, self.shift_x_A, self.shift_y_A


# ---- files --------------------------------------------------------------------------------
def read_xf(path: str | Path) -> np.ndarray:
    """``.xf`` → ``(T, 2, 3)`` affine transforms (raw px)."""
    rows = numeric_rows(path, XF_NAMES, what="IMOD .xf file")
    if len(rows) == 0:
        raise InputError(path, "no transforms in the .xf file", field="A11")
    v = rows.values
    return np.stack([v[:, [0, 1, 4]], v[:, [2, 3, 5]]], axis=1)


def write_xf(path: str | Path, xf: np.ndarray) -> None:
    """Write ``(T, 2, 3)`` transforms in IMOD's column order, with more decimals than IMOD's
    own ``%12.7f``/``%12.3f`` (its readers are free-format) so that round trips stay exact."""
    lines = [f"{m[0, 0]:14.9f} {m[0, 1]:14.9f} {m[1, 0]:14.9f} {m[1, 1]:14.9f} "
             f"{m[0, 2]:14.6f} {m[1, 2]:14.6f}" for m in np.asarray(xf, dtype=np.float64)]
    _write_text(path, lines)


def _read_angle_file(path: str | Path, what: str, field_name: str) -> tuple[np.ndarray, Rows]:
    """One angle per line (``.tlt``, ``.xtilt``, ``.rawtlt``), each within ±90°."""
    rows = numeric_rows(path, (field_name,), what=what)
    if len(rows) == 0:
        raise InputError(path, f"no angles in the {what}", field=field_name)
    check_angles(rows, 0, field_name)
    return rows.column(0), rows


def write_angles(path: str | Path, angles_deg: np.ndarray) -> None:
    """``.tlt`` / ``.xtilt``: one angle per line (degrees; 6 decimals where IMOD writes 2)."""
    _write_text(path, [f"{a:11.6f}" for a in np.asarray(angles_deg, dtype=np.float64)])


def _write_text(path: str | Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_tilt_com(path: str | Path) -> TiltCom:
    """The geometry entries of a ``tilt.com`` (PIP ``KEY value`` lines; ``$`` and ``#`` lines
    skipped)."""
    path = Path(path)
    entries: dict[str, tuple[int, list[str]]] = {}
    for number, text in enumerate(read_lines(path, "IMOD tilt.com file"), start=1):
        words = text.split()
        if not words or words[0].startswith(("$", "#")):
            continue
        entries[words[0].upper()] = (number, words[1:])

    def numbers(key: str, count: int) -> list[float] | None:
        """All values of ``key`` (at least ``count``), or None when absent."""
        if key not in entries:
            return None
        number, words = entries[key]
        words = [w for part in words for w in part.split(",") if w]
        if len(words) < count:
            raise InputError(path, f"{key} needs {count} value(s)", line=number, field=key)
        try:
            values = [float(w) for w in words]
        except ValueError:
            raise InputError(path, f"{key} {' '.join(words)!r} is not numeric", line=number,
                             field=key) from None
        if not all(math.isfinite(v) for v in values):
            raise InputError(path, f"{key} is not finite", line=number, field=key)
        return values

    out = TiltCom()
    binning = numbers("IMAGEBINNED", 1)
    out.binning = int(binning[0]) if binning else 1
    if out.binning < 1:
        raise InputError(path, "IMAGEBINNED must be ≥ 1", line=entries["IMAGEBINNED"][0],
                         field="IMAGEBINNED")
    if (v := numbers("XAXISTILT", 1)) is not None:
        out.xaxis_tilt_deg = v[0]
    if (v := numbers("OFFSET", 1)) is not None:
        out.angle_offset_deg = v[0]
    if (v := numbers("SHIFT", 1)) is not None:
        out.shift_px = (v[0] * out.binning, (v[1] if len(v) > 1 else 0.0) * out.binning)
    if (v := numbers("THICKNESS", 1)) is not None:
        out.thickness_px = int(round(v[0])) * out.binning
    if (v := numbers("FULLIMAGE", 2)) is not None:
        out.full_image = (int(v[0]), int(v[1]))
    if "EXCLUDELIST" in entries:
        out.exclude = _parse_ranges(path, *entries["EXCLUDELIST"], "EXCLUDELIST")
    return out


def _parse_ranges(path: Path, number: int, words: list[str], key: str) -> list[int]:
    views: list[int] = []
    for part in ",".join(words).split(","):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            start, stop = int(lo), int(hi or lo)
        except ValueError:
            raise InputError(path, f"{part!r} is not a view number or range", line=number,
                             field=key) from None
        views.extend(range(start, stop + 1))
    return views


def read_imod_alignment(xf: str | Path, tlt: str | Path, xtilt: str | Path | None = None,
                        tilt_com: str | Path | None = None) -> ImodAlignment:
    """Read one tilt series' ``.xf`` and ``.tlt`` (and ``.xtilt``, ``tilt.com`` if given); the
    files must list the same number of views."""
    transforms = read_xf(xf)
    tilt, _ = _read_angle_file(tlt, "IMOD .tlt file", "tilt angle")
    if len(tilt) != len(transforms):
        raise InputError(tlt, f"{len(tilt)} tilt angles but {xf} has {len(transforms)} "
                         "transforms", field="tilt angle")
    if xtilt is not None:
        x, _ = _read_angle_file(xtilt, "IMOD .xtilt file", "x-axis tilt")
        if len(x) != len(tilt):
            raise InputError(xtilt, f"{len(x)} x-axis tilts but {tlt} has {len(tilt)} views",
                             field="x-axis tilt")
    else:
        x = np.zeros_like(tilt)
    com = read_tilt_com(tilt_com) if tilt_com is not None else TiltCom()
    for view in com.exclude:
        if not 1 <= view <= len(tilt):
            raise InputError(tilt_com, f"view {view} outside 1..{len(tilt)}",
                             field="EXCLUDELIST")
    return ImodAlignment(transforms, tilt, x, com, str(xf))


def write_imod_alignment(basename: str | Path, al: ImodAlignment) -> list[Path]:
    """Write ``basename.xf``, ``.tlt`` and ``.xtilt``; returns the paths."""
    base = Path(basename)
    paths = [base.with_name(base.name + ext) for ext in (".xf", ".tlt", ".xtilt")]
    write_xf(paths[0], al.xf)
    write_angles(paths[1], al.tilt_deg)
    write_angles(paths[2], al.xtilt_deg)
    return paths


# ---- geometry -----------------------------------------------------------------------------
def imod_image_centre_px(image_size_px) -> np.ndarray:
    """IMOD's centre of a ``(W, H)`` image: ``((W − 1)/2, (H − 1)/2)``."""
    w, h = image_size_px
    return np.array([(w - 1) / 2.0, (h - 1) / 2.0])


def imod_tomogram_centre_px(tomo_size_px, shift_px=(0.0, 0.0)) -> np.ndarray:
    """IMOD's rotation centre in the ``trimvol -rx`` volume (see the module docstring)."""
    x, y, z = (int(v) for v in tomo_size_px)
    sx, sz = shift_px
    return np.array([x // 2 - 0.5 + sx, (y - 1) / 2.0, z - 0.5 - z // 2 - sz])


def _rotations(xtilt: np.ndarray, ytilt: np.ndarray) -> np.ndarray:
    zero = torch.zeros(len(xtilt), dtype=torch.float64)
    return tilt_rotations(torch.as_tensor(xtilt, dtype=torch.float64),
                          torch.as_tensor(ytilt, dtype=torch.float64), zero).numpy()


def _nearest_rotations(path: str | None, a: np.ndarray) -> np.ndarray:
    """Polar decomposition: the rotation nearest each 2×2 matrix (refusing mirrors)."""
    det = np.linalg.det(a)
    if np.any(det <= 0):
        view = int(np.flatnonzero(det <= 0)[0]) + 1
        raise InputError(path, f"view {view}: the transform mirrors the image (determinant "
                         f"{det[view - 1]:.3g}); RELION's geometry cannot hold a mirror",
                         line=view, field="A11")
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def imod_to_relion(al: ImodAlignment, pixel_size_A: float, tomo_size_px, image_size_px
                   ) -> RelionParameters:
    """IMOD alignment → RELION 5 parameters (exact for rotation-only transforms)."""
    a = al.xf[:, :, :2]
    d = al.xf[:, :, 2]
    rot = _nearest_rotations(al.source, a)
    zrot = -np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    ytilt = al.tilt_deg + al.tilt_com.angle_offset_deg
    xtilt = al.xtilt_deg - al.tilt_com.xaxis_tilt_deg
    r3 = _rotations(xtilt, ytilt)
    c_relion = specimen_centre_px(tomo_size_px).numpy()
    c_imod = imod_tomogram_centre_px(tomo_size_px, al.tilt_com.shift_px)
    a_inv = np.linalg.inv(a)
    lever = (r3 @ (c_relion - c_imod))[:, :2]
    image_offset = imod_image_centre_px(image_size_px) - image_centre_px(image_size_px).numpy()
    shift = image_offset - np.einsum("tij,tj->ti", a_inv, d) \
        + np.einsum("tij,tj->ti", a_inv, lever)
    w, h = image_size_px
    corners = np.array([[sx * w / 2, sy * h / 2] for sx in (-1, 1) for sy in (-1, 1)])
    error = np.einsum("tij,cj->tci", a_inv - np.transpose(rot, (0, 2, 1)), corners)
    distortion = float(np.linalg.norm(error, axis=-1).max()) if len(a) else 0.0
    return RelionParameters(xtilt, ytilt, zrot, shift[:, 0] * pixel_size_A,
                            shift[:, 1] * pixel_size_A, distortion)


def relion_to_imod(params: RelionParameters | tuple, pixel_size_A: float, tomo_size_px,
                   image_size_px) -> ImodAlignment:
    """RELION 5 parameters → IMOD ``.xf``/``.tlt``/``.xtilt`` (no OFFSET, XAXISTILT or SHIFT;
    reconstruct with ``THICKNESS`` = tomogram Z and the full image width)."""
    xt, yt, zr, sx, sy = (np.asarray(v, dtype=np.float64)
                          for v in (params.as_tuple() if isinstance(params, RelionParameters)
                                    else params))
    phi = np.radians(-zr)
    a = np.stack([np.stack([np.cos(phi), -np.sin(phi)], -1),
                  np.stack([np.sin(phi), np.cos(phi)], -1)], axis=1)
    r3 = _rotations(xt, yt)
    lever = (r3 @ (specimen_centre_px(tomo_size_px).numpy()
                   - imod_tomogram_centre_px(tomo_size_px)))[:, :2]
    image_offset = imod_image_centre_px(image_size_px) - image_centre_px(image_size_px).numpy()
    shift_px = np.stack([sx, sy], -1) / pixel_size_A
    d = np.einsum("tij,tj->ti", a, image_offset - shift_px) + lever
    return ImodAlignment(np.concatenate([a, d[:, :, None]], axis=2), yt.copy(), xt.copy())


# ---- ctfplotter and exposure lists (minimal private readers) ------------------------------
DEFOCUS_FLAGS = {1: "astigmatism", 2: "astigmatism angle in radians", 4: "phase shift",
                 8: "phase shift in radians", 16: "inverted tilt angles",
                 32: "cut-on frequency"}


@dataclass
class ViewDefocus:
    """Per-view CTF from a ctfplotter file: Å, Å, degrees, degrees (NaN where not covered)."""

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    version: int
    flags: int


def _read_defocus(path: str | Path, n_views: int, tilt_deg: np.ndarray | None = None
                  ) -> ViewDefocus:
    """ctfplotter's ``.defocus`` (versions 2 and 3; 0/1 with IMOD's off-by-one repair).

    Version ≤ 2: ``view_start view_end angle_start angle_end defocus_nm`` per line, the version
    number after the first line's values. Version 3: a first line ``flags 0 0. 0. 0 3``, then
    ``start end a1 a2 defocus1 [defocus2 astig_angle] [phase] [cut_on]`` (columns by flags: 1
    astigmatism, 2 angle in radians, 4 phase shift, 8 phase in radians, 32 cut-on). Defocus in
    nm, underfocus positive; views 1-based; a range applies to every view in it.
    """
    path = Path(path)
    raw = [(i, t) for i, t in enumerate(read_lines(path, "ctfplotter defocus file"), start=1)
           if t.strip()]
    if not raw:
        raise InputError(path, "empty defocus file", field="defocus")
    first_number, first_text = raw[0]
    first = first_text.split()
    names = ("view start", "view end", "angle start", "angle end", "defocus")
    head = parse_row(path, first_number, first[:6], names + ("version",))
    if len(head) == 6 and int(head[5]) >= 3:
        version, flags = int(head[5]), int(head[0])
        data_lines = raw[1:]
    else:
        version = int(head[5]) if len(head) >= 6 else 0
        flags = 0
        data_lines = [(first_number, " ".join(first[:5]))] + raw[1:]
    unknown = flags & ~sum(DEFOCUS_FLAGS)
    if unknown:
        raise InputError(path, f"unknown defocus-file flags {flags}", line=first_number,
                         field="flags")
    columns = list(names)
    if flags & 1:
        columns += ["defocus2", "astigmatism angle"]
    if flags & 4:
        columns += ["phase shift"]
    if flags & 32:
        columns += ["cut-on"]
    rows = numeric_rows(path, tuple(columns), what="ctfplotter defocus file", lines=data_lines)
    if len(rows) == 0:
        raise InputError(path, "no defocus values", field="defocus")
    values = rows.values
    start, end = values[:, 0].astype(int), values[:, 1].astype(int)
    if version < 2 and tilt_deg is not None:
        start, end = _repair_old_views(values, start, end, tilt_deg)
    u = np.full(n_views, np.nan)
    v, angle, phase = u.copy(), np.zeros(n_views), np.zeros(n_views)
    for k, number in enumerate(rows.lines):
        lo, hi = start[k], end[k]
        if not 1 <= lo <= hi <= n_views:
            raise InputError(path, f"views {lo}–{hi} outside 1..{n_views} (the stack has "
                             f"{n_views} images)", line=number, field="view start")
        if values[k, 4] <= 0:
            raise InputError(path, f"defocus {values[k, 4]:g} nm is not positive (underfocus)",
                             line=number, field="defocus")
        view = slice(lo - 1, hi)
        u[view] = values[k, 4] * 10.0
        v[view] = (values[k, 5] if flags & 1 else values[k, 4]) * 10.0
        if flags & 1:
            angle[view] = math.degrees(values[k, 6]) if flags & 2 else values[k, 6]
        if flags & 4:
            ps = values[k, columns.index("phase shift")]
            phase[view] = math.degrees(ps) if flags & 8 else ps
    return ViewDefocus(u, v, angle, phase, version, flags)


def _repair_old_views(values: np.ndarray, start: np.ndarray, end: np.ndarray,
                      tilt_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Files before version 2 may number views one low (ctfplotter's old bug): when every range
    matches the tilt angles only after adding one, add one (as ``checkAndFixDefocusList``)."""
    tol = 0.02

    def matches(offset: int) -> bool:
        for (lo_a, hi_a), s, e in zip(values[:, 2:4], start, end, strict=True):
            lo, hi = min(lo_a, hi_a), max(lo_a, hi_a)
            inside = np.flatnonzero((tilt_deg > lo - tol) & (tilt_deg < hi + tol))
            if len(inside) and (inside[0] != s + offset - 1 or inside[-1] != e + offset - 1):
                return False
        return True

    if not matches(0) and matches(1):
        return start + 1, end + 1
    return start, end


def write_defocus(path: str | Path, tilt_deg: np.ndarray, defocus_u_A: np.ndarray,
                  defocus_v_A: np.ndarray, angle_deg: np.ndarray) -> None:
    """ctfplotter version 3 with astigmatism (flags 1): one line per view (nm, degrees)."""
    lines = ["1\t0\t0.0\t0.0\t0.0\t3"]
    for i, (t, u, v, a) in enumerate(zip(tilt_deg, defocus_u_A, defocus_v_A, angle_deg,
                                         strict=True), start=1):
        lines.append(f"{i}\t{i}\t{t:.2f}\t{t:.2f}\t{u / 10:.1f}\t{v / 10:.1f}\t{a:.2f}")
    _write_text(path, lines)


def _read_order(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Seed 002's ``.order`` list: ``tilt_angle exposure`` per line → (angles, exposures)."""
    rows = numeric_rows(path, ("tilt angle", "exposure"), what="exposure (.order) file")
    if len(rows) == 0:
        raise InputError(path, "no rows in the exposure list", field="tilt angle")
    check_angles(rows, 0, "tilt angle")
    if np.any(rows.values[:, 1] < 0):
        k = int(np.flatnonzero(rows.values[:, 1] < 0)[0])
        raise InputError(path, "negative exposure", line=rows.lines[k], field="exposure")
    return rows.column(0), rows.column(1)


def exposure_from_order(path: str | Path, tilt_deg: np.ndarray, scale: float = 1.0,
                        tolerance_deg: float = 1.0) -> np.ndarray:
    """Pre-exposure per view (e/Å²) from an ``.order`` list, times ``scale`` (the dose per tilt
    when the column counts tilts, as in seed 002). Rows are matched to views by angle: the
    nearest, or, when the list has one row per view, by rank after removing a common offset
    (refined ``.tlt`` angles carry tiltalign's offset; the list has nominal ones)."""
    angles, exposure = _read_order(path)
    tilt_deg = np.asarray(tilt_deg, dtype=np.float64)
    nearest = np.argmin(np.abs(angles[None, :] - tilt_deg[:, None]), axis=1)
    if np.all(np.abs(angles[nearest] - tilt_deg) <= tolerance_deg):
        return exposure[nearest] * scale
    if len(angles) == len(tilt_deg):
        rank = np.empty(len(tilt_deg), dtype=int)
        rank[np.argsort(tilt_deg, kind="stable")] = np.argsort(angles, kind="stable")
        offset = tilt_deg - angles[rank]
        if np.all(np.abs(offset - np.median(offset)) <= tolerance_deg):
            return exposure[rank] * scale
    bad = int(np.argmax(np.abs(angles[nearest] - tilt_deg)))
    raise InputError(path, f"no row within {tolerance_deg:g}° of view {bad + 1}'s tilt angle "
                     f"{tilt_deg[bad]:g}° (nearest {angles[nearest[bad]]:g}°)",
                     field="tilt angle")
