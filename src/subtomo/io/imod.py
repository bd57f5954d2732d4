"""IMOD's text files: ``.xf`` transforms, ``.tlt``/``.xtilt`` angles, ``tilt.com``, ctfplotter
``.defocus`` and the ``.order`` exposure list of seed 002.

Every reader checks its rows one by one (:mod:`subtomo.io.text_columns`): a bad row fails with
one line naming the file, the line and the field. Units: degrees, px at the tilt-series pixel
size, Å for defocus (the files hold nm), e/Å² for exposure. What the geometry means, and its
conversion to RELION 5's five parameters per tilt, is :mod:`subtomo.geometry.tilt_imod`.

- ``.xf``: one line per view, ``A11 A12 A21 A22 DX DY`` (raw px).
- ``.tlt``, ``.rawtlt``, ``.xtilt``: one angle per line, in stack order, each within ±90°.
- ``tilt.com``: PIP ``KEY value`` lines (``XAXISTILT``, ``OFFSET``, ``SHIFT``, ``THICKNESS``,
  ``IMAGEBINNED``, ``FULLIMAGE``, ``EXCLUDELIST``).
- ctfplotter ``.defocus`` (IMOD ``ctfplotter`` man page, "defocus file"): versions 2 and 3, and
  older files with IMOD's repair of their view numbers (see :func:`read_defocus`).
- ``.order`` (seed 002's list for ``relion_ctf_prepare.py``): ``tilt_angle exposure`` per line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subtomo.errors import InputError
from subtomo.geometry.tilt_imod import ImodAlignment, TiltCom
from subtomo.io.files import atomic_path
from subtomo.io.text_columns import check_angles, numeric_rows, parse_row, read_lines

__all__ = [
    "DEFOCUS_FLAGS",
    "ImodAlignment",
    "TiltCom",
    "ViewDefocus",
    "exposure_from_order",
    "read_angles",
    "read_defocus",
    "read_imod_alignment",
    "read_order",
    "read_tilt_com",
    "read_xf",
    "write_angles",
    "write_defocus",
    "write_imod_alignment",
    "write_xf",
]

XF_NAMES = ("A11", "A12", "A21", "A22", "DX", "DY")
MAX_DEFOCUS_NM = 20000.0  # 20 µm: larger values are a unit error (the file is in nm)


def _write_text(path: str | Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# ---- .xf, .tlt, .xtilt ----------------------------------------------------------------------
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


def read_angles(path: str | Path, what: str = "IMOD .tlt file",
                field_name: str = "tilt angle") -> np.ndarray:
    """Angles (deg) of a ``.tlt``, ``.rawtlt`` or ``.xtilt`` file: one per line, in stack
    order, each within ±90° (``#`` lines and blank lines skipped)."""
    rows = numeric_rows(path, (field_name,), what=what)
    if len(rows) == 0:
        raise InputError(path, f"no angles in the {what}", field=field_name)
    check_angles(rows, 0, field_name)
    return rows.column(0)


def write_angles(path: str | Path, angles_deg: np.ndarray) -> None:
    """``.tlt`` / ``.xtilt``: one angle per line (degrees; 6 decimals where IMOD writes 2)."""
    _write_text(path, [f"{a:11.6f}" for a in np.asarray(angles_deg, dtype=np.float64)])


# ---- tilt.com -------------------------------------------------------------------------------
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


# ---- one alignment --------------------------------------------------------------------------
def read_imod_alignment(xf: str | Path, tlt: str | Path, xtilt: str | Path | None = None,
                        tilt_com: str | Path | None = None) -> ImodAlignment:
    """Read one tilt series' ``.xf`` and ``.tlt`` (and ``.xtilt``, ``tilt.com`` if given); the
    files must list the same number of views."""
    transforms = read_xf(xf)
    tilt = read_angles(tlt, "IMOD .tlt file", "tilt angle")
    if len(tilt) != len(transforms):
        raise InputError(tlt, f"{len(tilt)} tilt angles but {xf} has {len(transforms)} "
                         "transforms", field="tilt angle")
    if xtilt is not None:
        x = read_angles(xtilt, "IMOD .xtilt file", "x-axis tilt")
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


# ---- ctfplotter .defocus --------------------------------------------------------------------
DEFOCUS_FLAGS = {1: "astigmatism", 2: "astigmatism angle in radians", 4: "phase shift",
                 8: "phase shift in radians", 16: "inverted tilt angles",
                 32: "cut-on frequency"}


@dataclass
class ViewDefocus:
    """Per-view CTF from a ctfplotter file: Å, Å, degrees, degrees (NaN where no row covers
    the view), and each row's mean tilt angle (deg) and values, for :meth:`filled`."""

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    version: int
    flags: int
    row_angle_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # u, v, angle, ps

    def filled(self, tilt_deg: np.ndarray) -> ViewDefocus:
        """A copy where each view no row covers takes the row whose mean tilt angle is nearest
        to the view's (ctfplotter fits selected views, as in seed 002's example)."""
        out = ViewDefocus(self.defocus_u_A.copy(), self.defocus_v_A.copy(),
                          self.angle_deg.copy(), self.phase_shift_deg.copy(), self.version,
                          self.flags, self.row_angle_deg, self.row_values)
        missing = np.flatnonzero(~np.isfinite(out.defocus_u_A))
        if len(missing) and len(self.row_angle_deg):
            tilt = np.asarray(tilt_deg, dtype=np.float64)[missing]
            row = np.argmin(np.abs(self.row_angle_deg[None] - tilt[:, None]), axis=1)
            for target, k in zip((out.defocus_u_A, out.defocus_v_A, out.angle_deg,
                                  out.phase_shift_deg), range(4), strict=True):
                target[missing] = self.row_values[row, k]
        return out


def _defocus_header(path: Path, raw: list[tuple[int, str]]) -> tuple[int, int, bool]:
    """``(version, flags, first line is a header)``: version 3 opens with ``flags 0 0. 0. 0
    version`` (six words); version 2 puts its number after the first row's five values."""
    number, text = raw[0]
    words = text.split()
    names = ("view start", "view end", "angle start", "angle end", "defocus", "version")
    head = parse_row(path, number, words[:6], names)
    if len(words) == 6 and head[5] >= 3:
        if head[5] != int(head[5]) or head[0] != int(head[0]):
            raise InputError(path, "the header's flags and version must be integers",
                             line=number, field="version")
        return int(head[5]), int(head[0]), True
    return (int(head[5]) if len(words) == 6 else 0), 0, False


def read_defocus(path: str | Path, n_views: int, tilt_deg: np.ndarray | None = None
                 ) -> ViewDefocus:
    """ctfplotter's ``.defocus`` (versions 2 and 3; 0/1 with IMOD's off-by-one repair).

    Version ≤ 2: ``view_start view_end angle_start angle_end defocus_nm`` per line, the version
    number after the first line's values. Version 3: a first line ``flags 0 0. 0. 0 3``, then
    ``start end a1 a2 defocus1 [defocus2 astig_angle] [phase] [cut_on]`` (columns by flags: 1
    astigmatism, 2 angle in radians, 4 phase shift, 8 phase in radians, 32 cut-on). Defocus in
    nm, underfocus positive and below 20 µm; views 1-based; a range applies to every view in
    it. ``tilt_deg`` (stack order) lets files before version 2 be repaired.
    """
    path = Path(path)
    raw = [(i, t) for i, t in enumerate(read_lines(path, "ctfplotter defocus file"), start=1)
           if t.strip()]
    if not raw:
        raise InputError(path, "empty defocus file", field="defocus")
    version, flags, has_header = _defocus_header(path, raw)
    if has_header:
        data_lines = raw[1:]
    else:
        first_number, first_text = raw[0]
        data_lines = [(first_number, " ".join(first_text.split()[:5]))] + raw[1:]
    unknown = flags & ~sum(DEFOCUS_FLAGS)
    if unknown:
        raise InputError(path, f"unknown defocus-file flags {flags}", line=raw[0][0],
                         field="flags")
    columns = ["view start", "view end", "angle start", "angle end", "defocus"]
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
    per_row = np.zeros((len(rows), 4))  # u, v (Å), astigmatism angle, phase shift (deg)
    per_row[:, 0] = values[:, 4] * 10.0
    per_row[:, 1] = (values[:, 5] if flags & 1 else values[:, 4]) * 10.0
    if flags & 1:
        per_row[:, 2] = np.degrees(values[:, 6]) if flags & 2 else values[:, 6]
    if flags & 4:
        ps = values[:, columns.index("phase shift")]
        per_row[:, 3] = np.degrees(ps) if flags & 8 else ps
    u = np.full(n_views, np.nan)
    v, angle, phase = u.copy(), np.zeros(n_views), np.zeros(n_views)
    for k, number in enumerate(rows.lines):
        lo, hi = start[k], end[k]
        if not 1 <= lo <= hi <= n_views:
            raise InputError(path, f"views {lo}–{hi} outside 1..{n_views} (the stack has "
                             f"{n_views} images)", line=number, field="view start")
        for name, value in (("defocus", values[k, 4]),
                            ("defocus2", values[k, 5] if flags & 1 else values[k, 4])):
            if not 0 < value <= MAX_DEFOCUS_NM:
                raise InputError(path, f"defocus {value:g} nm outside 0–20 µm (underfocus "
                                 "positive; the file is in nm)", line=number, field=name)
        view = slice(lo - 1, hi)
        u[view], v[view], angle[view], phase[view] = per_row[k]
    return ViewDefocus(u, v, angle, phase, version, flags,
                       0.5 * (values[:, 2] + values[:, 3]), per_row)


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


# ---- .order exposure lists ------------------------------------------------------------------
def read_order(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Seed 002's ``.order`` list: ``tilt_angle exposure`` per line → (angles deg, exposures)."""
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
    angles, exposure = read_order(path)
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
