"""Safe file writing: outputs appear whole or not at all, inputs are never overwritten."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from subtomo.errors import InputError


def check_not_input(output: str | Path, *inputs: str | Path | None) -> None:
    """Refuse to write ``output`` over any of ``inputs`` (same file, resolved)."""
    out = Path(output).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == out:
            raise InputError(output, "output would overwrite an input file; choose another name")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def resolve(name: str, star_dir: Path | None) -> Path:
    """A file named in a STAR file (``index@`` prefixes and ``:mrc`` suffixes dropped).

    RELION resolves names relative to the project directory (where it runs): the name as given
    if it exists, else relative to the STAR file's folder, else relative to the first of that
    folder's ancestors (a job folder sits inside its project) where it exists.
    """
    path = Path(name.split("@")[-1].removesuffix(":mrc").removesuffix(":mrcs"))
    if path.is_absolute() or path.exists() or star_dir is None:
        return path
    star_dir = Path(star_dir)
    for base in (star_dir, *star_dir.resolve().parents):
        if (base / path).exists():
            return base / path
    return star_dir / path
