"""AreTomo ``.aln`` alignment files (AreTomo2 and AreTomo3) ⇄ RELION 5's five parameters.

Layout (``CSaveAlnFile`` in AreTomo2, ``CSaveAlignFile`` in AreTomo3)::

    # AreTomo Alignment / Priims bprmMn
    # RawSize = W H N                  (the input stack, dark frames included)
    # NumPatches = P
    # DarkFrame =  i_sorted  section  tilt      (one line per frame AreTomo dropped)
    # AlphaOffset = a   # BetaOffset = b   # Thickness = t     (AreTomo3 only)
    # SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
    <one row per kept frame>
    # Local Alignment
    <P rows per kept frame: patch positions and shifts>

``SEC`` is the frame's section in the input stack: 0-based in AreTomo2 (``m_piSecIndices[i] =
i``), 1-based in AreTomo3 (``= i + 1``); AreTomo3 files are the ones with an ``AlphaOffset``
line. ``ROT`` is the tilt-axis angle, ``TILT`` the tilt angle (AlphaOffset already added),
``TX TY`` the shift in pixels. RELION 5 reads them as ``rlnTomoXTilt = 0``, ``rlnTomoYTilt =
TILT``, ``rlnTomoZRot = ROT``, ``rlnTomoX/YShiftAngst = pixel × TX/TY``
(``AlignTiltseriesRunner::readAreTomoResults``), and so do we. The local alignment block
(patch shifts) is read past and not used: RELION's five parameters per tilt cannot hold it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subtomo.errors import InputError
from subtomo.geometry.tilt import RelionParameters
from subtomo.io.files import atomic_path
from subtomo.io.text_columns import check_angles, numeric_rows, parse_row, read_lines

GLOBAL_NAMES = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")


@dataclass
class AlnFile:
    """An AreTomo alignment: one row per kept frame (``GLOBAL_NAMES`` columns)."""

    raw_size: tuple[int, int, int]
    rows: np.ndarray  # (K, 10)
    sections: np.ndarray  # (K,) 0-based sections of the input stack
    dark_frames: list[tuple[int, int, float]] = field(default_factory=list)
    alpha_offset_deg: float = 0.0
    beta_offset_deg: float = 0.0
    thickness_px: int | None = None
    num_patches: int = 0
    flavour: str = "aretomo2"
    source: str | None = None

    @property
    def tilt_deg(self) -> np.ndarray:
        return self.rows[:, 9].copy()

    @property
    def n_frames(self) -> int:
        return len(self.rows)


def _header_value(path: Path, number: int, text: str, key: str, count: int) -> list[float]:
    words = text.split("=", 1)[1].split() if "=" in text else []
    if len(words) < count:
        raise InputError(path, f"{key} needs {count} value(s)", line=number, field=key)
    return parse_row(path, number, words[:count], (key,) * count)


def read_aln(path: str | Path) -> AlnFile:
    """Read an AreTomo2 or AreTomo3 ``.aln`` file (see the module docstring)."""
    path = Path(path)
    lines = read_lines(path, "AreTomo .aln file")
    raw_size = None
    dark: list[tuple[int, int, float]] = []
    values: dict[str, float] = {}
    num_patches = 0
    global_lines: list[tuple[int, str]] = []
    in_global = False
    seen_header = False
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            key = stripped[1:].split("=")[0].strip()
            if key == "RawSize":
                raw_size = tuple(int(v) for v in _header_value(path, number, stripped, key, 3))
            elif key == "NumPatches":
                num_patches = int(_header_value(path, number, stripped, key, 1)[0])
            elif key == "DarkFrame":
                a, b, t = _header_value(path, number, stripped, key, 3)
                dark.append((int(a), int(b), t))
            elif key in ("AlphaOffset", "BetaOffset", "Thickness"):
                values[key] = _header_value(path, number, stripped, key, 1)[0]
            elif key.startswith("SEC"):
                in_global, seen_header = True, True
            elif key.startswith("Local Alignment"):
                in_global = False
            continue
        if in_global:
            global_lines.append((number, stripped))
    if not seen_header:
        raise InputError(path, "not an AreTomo alignment: no '# SEC ROT ... TILT' header",
                         field="SEC")
    if raw_size is None:
        raise InputError(path, "no '# RawSize = W H N' line", field="RawSize")
    rows = numeric_rows(path, GLOBAL_NAMES, what="AreTomo .aln file", lines=global_lines)
    if len(rows) == 0:
        raise InputError(path, "no rows in the global alignment table", field="SEC")
    check_angles(rows, 9, "TILT")
    flavour = "aretomo3" if "AlphaOffset" in values else "aretomo2"
    sec = rows.values[:, 0]
    if np.any(sec != np.round(sec)):
        k = int(np.flatnonzero(sec != np.round(sec))[0])
        raise InputError(path, f"section {sec[k]:g} is not an integer", line=rows.lines[k],
                         field="SEC")
    sections = sec.astype(int) - (1 if flavour == "aretomo3" else 0)
    n = raw_size[2]
    for k, s in enumerate(sections):
        if not 0 <= s < n:
            raise InputError(path, f"section {int(sec[k])} is outside the stack of {n} images "
                             f"({flavour} numbering)", line=rows.lines[k], field="SEC")
    if len(set(sections.tolist())) != len(sections):
        raise InputError(path, "a section appears twice in the global table", field="SEC")
    if len(rows) + len(dark) != n:
        raise InputError(path, f"{len(rows)} aligned and {len(dark)} dark frames, but RawSize "
                         f"says the stack has {n} images", field="RawSize")
    return AlnFile(raw_size, rows.values, sections, dark, values.get("AlphaOffset", 0.0),
                   values.get("BetaOffset", 0.0),
                   int(values["Thickness"]) if "Thickness" in values else None, num_patches,
                   flavour, str(path))


def aln_to_relion(aln: AlnFile, pixel_size_A: float) -> RelionParameters:
    """RELION 5's reading of the global table (``readAreTomoResults``)."""
    r = aln.rows
    return RelionParameters(np.zeros(len(r)), r[:, 9].copy(), r[:, 1].copy(),
                            r[:, 3] * pixel_size_A, r[:, 4] * pixel_size_A)


def write_aln(path: str | Path, params: RelionParameters | tuple, pixel_size_A: float,
              raw_size: tuple[int, int, int], sections: np.ndarray | None = None,
              flavour: str = "aretomo2") -> None:
    """Write a global-only ``.aln`` (no local alignment), rows sorted by tilt as AreTomo writes
    them, with more decimals than AreTomo's (its reader takes any). Refuses per-tilt x-axis
    tilts, which the format cannot hold; stack sections not in ``sections`` are listed as dark
    frames (their tilt angle unknown, written as 0)."""
    xt, yt, zr, sx, sy = (np.asarray(v, dtype=np.float64) for v in (
        params.as_tuple() if isinstance(params, RelionParameters) else params))
    if np.any(np.abs(xt) > 1e-6):
        raise InputError(path, "AreTomo's .aln has no per-tilt x-axis tilt; rlnTomoXTilt must "
                         "be 0", field="rlnTomoXTilt")
    n = raw_size[2]
    sections = np.arange(len(yt)) if sections is None else np.asarray(sections, int)
    base = 1 if flavour == "aretomo3" else 0
    kept = set(sections.tolist())
    order = np.argsort(yt)
    out = ["# AreTomo Alignment / Priims bprmMn", "# RawSize = {} {} {}".format(*raw_size),
           "# NumPatches = 0"]
    for s in range(n):
        if s not in kept:
            out.append(f"# DarkFrame =  {s:4d} {s + base:4d} {0.0:8.2f}")
    if flavour == "aretomo3":
        out += ["# AlphaOffset =     0.00", "# BetaOffset =     0.00"]
    out.append("# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE"
               "     BASE     TILT")
    for i in order:
        out.append(f"{sections[i] + base:5d}  {zr[i]:11.6f}  {1.0:9.5f}  "
                   f"{sx[i] / pixel_size_A:11.5f}  {sy[i] / pixel_size_A:11.5f}  {1.0:7.2f}  "
                   f"{1.0:7.2f}  {1.0:7.2f}  {0.0:7.2f}  {yt[i]:10.5f}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out) + "\n")
