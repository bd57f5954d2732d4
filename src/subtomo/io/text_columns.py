"""Whitespace-separated numeric text files (IMOD, AreTomo, ctfplotter): rows checked one by one.

Every bad row fails with one line naming the file, the line number and the field: a wrong
number of columns, a word that is not a number, NaN or infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subtomo.errors import InputError


@dataclass
class Rows:
    """Numeric rows of a text file and the 1-based line number of each."""

    values: np.ndarray  # (N, C) float64
    lines: list[int]
    path: Path

    def __len__(self) -> int:
        return len(self.lines)

    def column(self, index: int) -> np.ndarray:
        return self.values[:, index].copy()


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a text file (a clear error when it is missing or not text)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return path.read_text().splitlines()
    except UnicodeDecodeError:
        raise InputError(path, f"not a text {what}") from None


def parse_row(path: Path, number: int, words: list[str], names: tuple[str, ...]) -> list[float]:
    """Numbers of one row; ``names`` labels the columns for error messages."""
    out = []
    for i, word in enumerate(words):
        name = names[i] if i < len(names) else f"column {i + 1}"
        try:
            value = float(word)
        except ValueError:
            raise InputError(path, f"{word!r} is not a number", line=number, field=name) from None
        if not math.isfinite(value):
            raise InputError(path, f"{word!r} is not a finite number", line=number, field=name)
        out.append(value)
    return out


def numeric_rows(path: str | Path, names: tuple[str, ...], *, what: str,
                 columns: tuple[int, ...] | None = None, comment: str = "#",
                 lines: list[tuple[int, str]] | None = None) -> Rows:
    """Read rows of ``len(names)`` numbers (or any count in ``columns``); blank lines and lines
    starting with ``comment`` are skipped. ``lines`` gives ``(number, text)`` pairs to read
    instead of the whole file."""
    path = Path(path)
    allowed = columns if columns is not None else (len(names),)
    if lines is None:
        lines = list(enumerate(read_lines(path, what), start=1))
    values, numbers = [], []
    for number, text in lines:
        stripped = text.strip()
        if not stripped or (comment and stripped.startswith(comment)):
            continue
        words = stripped.split()
        if len(words) not in allowed:
            expected = " or ".join(str(c) for c in allowed)
            raise InputError(path, f"{len(words)} columns, expected {expected} "
                             f"({' '.join(names)})", line=number)
        row = parse_row(path, number, words, names)
        values.append(row + [math.nan] * (max(allowed) - len(row)))
        numbers.append(number)
    array = np.array(values, dtype=np.float64).reshape(len(values), max(allowed))
    return Rows(array, numbers, path)


def check_angles(rows: Rows, index: int, field: str, limit: float = 90.0) -> None:
    """Tilt angles must lie within ±``limit`` degrees."""
    for value, number in zip(rows.values[:, index], rows.lines, strict=True):
        if abs(value) > limit:
            raise InputError(rows.path, f"tilt angle {value:g}° outside ±{limit:g}°",
                             line=number, field=field)
