"""STAR files as named blocks, read through ``starfile`` with checks that point at the line.

``starfile`` parses leniently (a short row becomes empty strings, a bad number turns a column
into text). We scan the text once to record where each loop row sits, check the field counts,
then check every registered numeric column and the values of the labels that have rules
(:mod:`subtomo.io.validate`: positive pixel sizes, defocus in 0–20 µm, finite angles ...), so
that bad input fails with ``file:line: field``. Labels the registry calls text (names and
files: :data:`subtomo.io.labels.TEXT_LABELS`) are read as text, so ``00123`` stays ``00123``.
Writing is lossless (shortest round-trip float repr) and atomic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from subtomo.errors import InputError
from subtomo.io import validate
from subtomo.io.files import atomic_path
from subtomo.io.labels import NUMERIC_KINDS, TEXT_LABELS, label_kind

Block = pd.DataFrame | dict
_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")


@dataclass
class _LoopLayout:
    labels: list[str] = field(default_factory=list)
    row_lines: list[int] = field(default_factory=list)  # 1-based line numbers of the rows


def _scan(path: Path, text: str) -> dict[str, _LoopLayout]:
    """Check loop rows have as many fields as labels; return where each row lives."""
    layouts: dict[str, _LoopLayout] = {}
    block: str | None = None
    loop: _LoopLayout | None = None
    in_header = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # starfile reads a loop on to the next data_, blank lines and all
        if line.startswith("data_"):
            block, loop, in_header = line[5:], None, False
            continue
        if line.startswith("loop_"):
            if block is None:
                raise InputError(path, "loop_ before any data_ block", line=number)
            loop, in_header = _LoopLayout(), True
            layouts[block] = loop
            continue
        if line.startswith("_"):
            if loop is not None and in_header:
                loop.labels.append(line.split()[0][1:])
            continue
        if loop is None:
            continue
        in_header = False
        count = len(_TOKEN.findall(line)) if ('"' in line or "'" in line) else len(line.split())
        if count != len(loop.labels):
            label = loop.labels[count] if count < len(loop.labels) else None
            raise InputError(
                path,
                f"row has {count} values but block data_{block} declares "
                f"{len(loop.labels)} labels (truncated or corrupt row)",
                line=number,
                field=label,
            )
        loop.row_lines.append(number)
    return layouts


def _check_numeric(path: Path, name: str, df: pd.DataFrame, layout: _LoopLayout | None) -> None:
    for column in df.columns:
        if label_kind(column) not in NUMERIC_KINDS or pd.api.types.is_numeric_dtype(df[column]):
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad) == 0:
            df[column] = values
            continue
        row = int(bad[0])
        line = layout.row_lines[row] if layout is not None and row < len(layout.row_lines) else None
        raise InputError(
            path,
            f"{df[column].iloc[row]!r} is not a number (block data_{name}, particle row {row + 1})",
            line=line,
            field=column,
        )


def read_star(path: str | Path) -> dict[str, Block]:
    """Read every block of a STAR file: loops as DataFrames, simple blocks as dicts."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    text = path.read_text(errors="replace")
    layouts = _scan(path, text)
    if "data_" not in text:
        raise InputError(path, "not a STAR file: no data_ block")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=list(TEXT_LABELS))
    except Exception as exc:  # starfile raises many kinds; report them as input errors
        raise InputError(path, f"cannot parse STAR file ({exc})") from exc
    for name, block in blocks.items():
        layout = layouts.get(name)
        if isinstance(block, pd.DataFrame):
            _check_numeric(path, name, block, layout)
        else:
            for key, value in block.items():
                if label_kind(key) in NUMERIC_KINDS and isinstance(value, str):
                    raise InputError(path, f"{value!r} is not a number", field=key)
        validate.star_table(path, name, block, None if layout is None else layout.row_lines)
    return blocks


_BLOCK = re.compile(r"^data_(\S*)[ \t]*$", re.M)


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("+-").isdigit() else float(text)


def read_numeric_loops(path: str | Path) -> dict[str, Block] | None:
    """:func:`read_star` in one pass of numpy for files of many small all-number loops
    (trajectory sets: a loop per particle, where ``starfile`` spends milliseconds per block):
    loops as float DataFrames, simple blocks as dicts of numbers. ``None`` when the file is not
    of that kind (a text value, a bad number, a row of the wrong length, no loop), so that
    :func:`read_star` reads it and names what is wrong."""
    text = Path(path).read_text(errors="replace")
    heads = list(_BLOCK.finditer(text))
    if not heads or "'" in text or '"' in text:
        return None
    blocks: dict[str, Block] = {}
    for head, end in zip(heads, [*heads[1:], None], strict=True):
        body = text[head.end():end.start() if end is not None else len(text)]
        lines = [line.split("#")[0].strip() for line in body.splitlines()]
        lines = [line for line in lines if line]
        try:
            if lines and lines[0] == "loop_":
                labels = [line.split()[0][1:] for line in lines[1:] if line.startswith("_")]
                rows = [line.split() for line in lines[1 + len(labels):]]
                if any(len(row) != len(labels) for row in rows):
                    return None
                values = np.array(rows, np.float64).reshape(len(rows), len(labels))
                block = pd.DataFrame(values, columns=labels)
            else:
                block = {key[1:]: _number(value) for key, value in map(str.split, lines)}
        except ValueError:  # text, a short row or not a pair: read_star says which
            return None
        if not all(label_kind(label) in NUMERIC_KINDS for label in
                   (block.columns if isinstance(block, pd.DataFrame) else block)):
            return None
        if isinstance(block, pd.DataFrame) and not np.isfinite(block.to_numpy()).all():
            return None
        blocks[head.group(1)] = block
    return blocks


def write_star(blocks: dict[str, Block], path: str | Path) -> None:
    """Write blocks (in order) losslessly; the file appears only when complete."""
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format=None, sep="\t")
