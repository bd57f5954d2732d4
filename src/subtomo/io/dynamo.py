"""Dynamo tables (``.tbl``) and table maps (``.doc``) ⇄ ParticleSet.

Column names and numbers follow Dynamo's table convention as packaged by ``dynamotable``
(1-based: 4–6 dx dy dz, 7–9 tdrot tilt narot, 20 tomo, 24–26 x y z, 36 pixel_size_A). A particle's
centre in the tomogram is (x + dx, y + dy, z + dz) in tomogram pixels. Angles are Dynamo's ZXZ
(tdrot, tilt, narot), converted with :func:`subtomo.geometry.euler.dynamo_to_relion`.
We parse ourselves (rather than ``dynamotable.read``) to reject short rows and unlisted
tomogram indices with file and line, instead of dropping particles silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dynamotable.constants import COLUMN_NAME_TO_COLUMN_NUMBER

from subtomo.errors import InputError
from subtomo.geometry.euler import dynamo_to_relion, relion_to_dynamo
from subtomo.io import validate
from subtomo.io.files import atomic_path
from subtomo.io.particles import ANGLES, COORD_PX, ParticleSet

COLUMNS: tuple[str, ...] = tuple(sorted(COLUMN_NAME_TO_COLUMN_NUMBER,
                                        key=COLUMN_NAME_TO_COLUMN_NUMBER.get))
MIN_COLUMNS = COLUMN_NAME_TO_COLUMN_NUMBER["z"]  # 26: x, y, z must be there
WRITE_COLUMNS = 35  # the standard width Dynamo writes


def _number(token: str) -> float:
    if token.endswith("i"):  # MATLAB writes tiny complex parts, e.g. 0+1.2e-06i
        return complex(token[:-1] + "j").real
    return float(token)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Dynamo table into a DataFrame with Dynamo's column names."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    rows: list[list[float]] = []
    lines: list[int] = []
    width: int | None = None
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        lines.append(number)
        if width is None:
            width = len(tokens)
            if width < MIN_COLUMNS:
                raise InputError(path, f"row has {width} columns; a Dynamo table needs at least "
                                 f"{MIN_COLUMNS} (x, y, z are columns 24-26)", line=number)
        elif len(tokens) != width:
            raise InputError(path, f"row has {len(tokens)} columns, the table has {width}",
                             line=number)
        try:
            rows.append([_number(t) for t in tokens])
        except ValueError:
            col = next(i for i, t in enumerate(tokens) if not _is_number(t))
            name = COLUMNS[col] if col < len(COLUMNS) else f"column {col + 1}"
            raise InputError(path, f"{tokens[col]!r} is not a number", line=number,
                             field=f"{name} (column {col + 1})") from None
    if not rows:
        raise InputError(path, "empty Dynamo table")
    names = list(COLUMNS[:width]) + [f"column{i + 1}" for i in range(len(COLUMNS), width)]
    table = pd.DataFrame(np.asarray(rows), columns=names)
    _check_values(path, table, lines)
    for name in ("tag", "tomo", "class", "reg", "ref", "otag"):
        if name in table:
            table[name] = table[name].round().astype(np.int64)
    return table


def _check_values(path: Path, table: pd.DataFrame, lines: list[int]) -> None:
    """Finite positions, shifts, angles and tomogram indices; missing-wedge tilt limits
    (columns 14-17) within ±90°; a pixel size (column 36) of 0 (unset) or more."""
    rows = np.arange(1, len(table) + 1)

    def where(name: str) -> str:
        return f"{name} (column {COLUMN_NAME_TO_COLUMN_NUMBER[name]})"

    for name in ("dx", "dy", "dz", "tdrot", "tilt", "narot", "tomo", "x", "y", "z"):
        validate.finite(table[name].to_numpy(), path, field=where(name), rows=rows,
                        lines=lines)
    for name in ("ymintilt", "ymaxtilt", "xmintilt", "xmaxtilt"):
        validate.tilt_angles(table[name].to_numpy(), path, field=where(name), rows=rows,
                             lines=lines, noun="particle")
    if "apix" in table:
        validate.in_range(table["apix"].to_numpy(), 0.0, np.inf, path, field=where("apix"),
                          what="pixel size", unit="Å", rows=rows, lines=lines)


def _is_number(token: str) -> bool:
    try:
        _number(token)
    except ValueError:
        return False
    return True


def read_table_map(path: str | Path) -> dict[int, str]:
    """Read a table map: lines ``<tomogram index> <tomogram file>``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    mapping: dict[int, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise InputError(path, "expected '<tomogram index> <tomogram file>'", line=number)
        mapping[int(parts[0])] = parts[1].strip()
    return mapping


def table_to_particles(
    table: pd.DataFrame,
    table_map: dict[int, str] | None = None,
    *,
    pixel_size_A: float | None = None,
    source: str | Path | None = None,
    map_source: str | Path | None = None,
) -> ParticleSet:
    """Particles at (x+dx, y+dy, z+dz) tomogram pixels with RELION angles.

    ``pixel_size_A``: tomogram pixel size in Å (else Dynamo's apix column 36 when set).
    """
    tomo = table["tomo"].to_numpy()
    if table_map is not None:
        unknown = sorted(set(tomo.tolist()) - set(table_map))
        if unknown:
            row = int(np.flatnonzero(tomo == unknown[0])[0])
            raise InputError(map_source, f"tomogram index {unknown[0]} (table {source} row "
                             f"{row + 1}, column 20) is not listed in the table map",
                             field="tomo")
        names = [table_map[int(i)] for i in tomo]
    else:
        names = [f"tomo{int(i)}" for i in tomo]
    df = pd.DataFrame({"rlnMicrographName": names})
    for axis, label in zip("xyz", COORD_PX, strict=True):
        df[label] = table[axis].to_numpy(float) + table[f"d{axis}"].to_numpy(float)
    dynamo = torch.tensor(table[["tdrot", "tilt", "narot"]].to_numpy(float))
    relion = dynamo_to_relion(dynamo).numpy()
    for i, label in enumerate(ANGLES):
        df[label] = relion[:, i]
    if pixel_size_A is None and "apix" in table and (table["apix"] > 0).all():
        pixel_size_A = float(table["apix"].iloc[0])
    df["rlnOpticsGroup"] = 1
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImageDimensionality": [3]})
    if pixel_size_A is not None:
        optics["rlnImagePixelSize"] = float(pixel_size_A)
        optics["rlnMicrographPixelSize"] = float(pixel_size_A)
    return ParticleSet(particles=df, optics=optics, flavour="dynamo",
                       source=None if source is None else str(source))


def particles_to_table(ps: ParticleSet) -> tuple[pd.DataFrame, dict[int, str]]:
    """A Dynamo table (centre in x, y, z; dx = dy = dz = 0) and its table map."""
    ps = ps.with_pixel_coordinates()
    if not ps.has_pixel_coordinates():
        raise InputError(ps.source, "Dynamo tables need particle coordinates",
                         field="rlnCoordinateX")
    df = ps.particles
    n = len(df)
    names = df.get("rlnMicrographName", df.get("rlnTomoName"))
    if names is None:
        names = pd.Series(["tomo1"] * n)
    unique = list(dict.fromkeys(names.astype(str)))
    index = {name: i + 1 for i, name in enumerate(unique)}
    coord_pixel_size_A = ps.coordinate_pixel_size_A()
    shift_px = (ps.tomogram_shifts_A() / coord_pixel_size_A[:, None] if "rlnOriginXAngst" in df
                else np.zeros((n, 3)))
    table = pd.DataFrame(0.0, index=range(n), columns=list(COLUMNS[:WRITE_COLUMNS]))
    table["tag"] = np.arange(1, n + 1)
    table["aligned_value"] = 1
    for i, (axis, label) in enumerate(zip("xyz", COORD_PX, strict=True)):
        values = df[label].to_numpy(float) if label in df else np.zeros(n)
        table[axis] = values - np.nan_to_num(shift_px[:, i])
    angles = relion_to_dynamo(torch.as_tensor(ps.angles_deg())).numpy()
    table[["tdrot", "tilt", "narot"]] = angles
    table["tomo"] = [index[str(name)] for name in names]
    if "rlnClassNumber" in df:
        table["class"] = df["rlnClassNumber"].to_numpy()
    if np.all(np.isfinite(coord_pixel_size_A)):
        table["apix"] = coord_pixel_size_A
    return table, {i: name for name, i in index.items()}


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write a Dynamo table (space separated, shortest exact numbers), atomically."""
    lines = [" ".join(_fmt(v) for v in row) for row in table.to_numpy(dtype=float)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def write_table_map(mapping: dict[int, str], path: str | Path) -> None:
    """Write a table map ``<index>\\t<tomogram>`` per line, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\t{name}\n" for i, name in sorted(mapping.items())))


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(float(value))
