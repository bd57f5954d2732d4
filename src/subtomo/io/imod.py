"""IMOD tilt-series files: ``.tlt`` angles, ctfplotter ``.defocus``, the ``.order`` exposure list.

Each reader is one small function returning plain arrays (Å, degrees, e/Å²):

- ``.tlt`` (``tilt``, AreTomo): one tilt angle (deg) per line, in stack order.
- ``.order`` (seed 002's exposure list for ``relion_ctf_prepare.py``): ``angle exposure``
  per line (deg, e/Å²), one line per tilt.
- ctfplotter ``.defocus`` (IMOD ``ctfplotter`` man page, "defocus file"): an optional first
  line ``flags 0 0. 0. 0. version`` (6 numbers) and then one line per fitted view range,
  ``start end angle1 angle2 defocus`` (nm, older format) or with astigmatism
  ``start end angle1 angle2 defocus1 defocus2 astig_angle`` (nm, nm, deg). Views are
  1-based and inclusive. Defocus is positive for underfocus, as RELION's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from subtomo.errors import InputError

__all__ = ["defocus_per_view", "read_ctfplotter", "read_order", "read_tlt"]


def _rows(path: str | Path) -> list[tuple[int, list[float]]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append((number, [float(v) for v in line.split()]))
        except ValueError:
            raise InputError(path, f"{line.strip()!r} is not a row of numbers",
                             line=number) from None
    if not out:
        raise InputError(path, "file is empty")
    return out


def read_tlt(path: str | Path) -> np.ndarray:
    """Tilt angles (deg) of a ``.tlt`` / ``.rawtlt`` file, in stack order."""
    rows = _rows(path)
    for number, values in rows:
        if len(values) != 1 or abs(values[0]) > 90:
            raise InputError(path, "expected one tilt angle within ±90° per line", line=number)
    return np.array([v[0] for _, v in rows])


def read_order(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(angles_deg, exposure_e_per_A2)`` of an ``.order`` file (one tilt per line)."""
    rows = _rows(path)
    for number, values in rows:
        if len(values) != 2 or values[1] < 0:
            raise InputError(path, "expected 'angle exposure' (exposure ≥ 0) per line",
                             line=number)
    data = np.array([v for _, v in rows])
    return data[:, 0], data[:, 1]


def read_ctfplotter(path: str | Path) -> np.ndarray:
    """Rows ``(start, end, angle1, angle2, defocus_u_A, defocus_v_A, astig_angle_deg)``."""
    rows = _rows(path)
    if len(rows[0][1]) == 6 and len(rows) > 1:  # header: flags 0 0 0 0 version
        rows = rows[1:]
    out = []
    for number, values in rows:
        if len(values) == 5:
            values = [*values, values[4], 0.0]
        if len(values) != 7 or values[0] < 1 or values[1] < values[0]:
            raise InputError(path, "expected 'start end angle1 angle2 defocus [defocus2 "
                             "astigmatism_angle]' (views ≥ 1, nm)", line=number)
        if not 0 <= values[4] <= 20000 or not 0 <= values[5] <= 20000:
            raise InputError(path, "defocus outside 0–20 µm (the file is in nm)", line=number)
        out.append([values[0], values[1], values[2], values[3], values[4] * 10.0,
                    values[5] * 10.0, values[6]])
    return np.array(out)


def defocus_per_view(table: np.ndarray, angles_deg: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Defocus U, V (Å) and angle (deg) of every view (1-based ranges of ``table``); views no
    range covers take the row whose mean angle is nearest to their tilt angle."""
    n = len(angles_deg)
    u, v, a = np.empty(n), np.empty(n), np.empty(n)
    centre = 0.5 * (table[:, 2] + table[:, 3])
    for view in range(n):
        hit = np.flatnonzero((table[:, 0] <= view + 1) & (view + 1 <= table[:, 1]))
        row = hit[0] if len(hit) else int(np.argmin(np.abs(centre - angles_deg[view])))
        u[view], v[view], a[view] = table[row, 4], table[row, 5], table[row, 6]
    return u, v, a
