"""Streaming particle images (subtomograms) and their 3D CTF volumes from disk, in batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.fourier.grid import centred_rfft
from subtomo.io.mrc import ctf_from_disk, read_mrc
from subtomo.io.particles import ParticleSet


@dataclass
class ParticleBatch:
    """One batch: row indices, centred spectra (B, D, D, D//2+1), CTF weights or None."""

    rows: np.ndarray
    spectra: torch.Tensor
    ctf: torch.Tensor | None


def resolve(name: str, star_dir: Path | None) -> Path:
    """A file named in a STAR file: as given (RELION: relative to the project directory),
    else relative to the STAR file's folder."""
    path = Path(name.split("@")[-1])
    if path.is_absolute() or path.exists() or star_dir is None:
        return path
    return star_dir / path


def _read_volume(ps: ParticleSet, row: int, column: str, star_dir: Path | None) -> np.ndarray:
    name = str(ps.particles[column].iloc[row])
    path = resolve(name, star_dir)
    if not path.is_file():
        raise InputError(ps.source, f"particle {row + 1}: file {name!r} not found", field=column)
    data, _ = read_mrc(path)
    return data


def check_files(ps: ParticleSet, rows: np.ndarray, ctf: bool) -> None:
    """Fail before any work if an image (or CTF volume) of ``rows`` is missing."""
    star_dir = Path(ps.source).parent if ps.source else None
    for column in ("rlnImageName", "rlnCtfImage") if ctf else ("rlnImageName",):
        if column not in ps.particles:
            raise InputError(ps.source, "column needed and missing", field=column)
        for row in rows:
            name = str(ps.particles[column].iloc[int(row)])
            if not resolve(name, star_dir).is_file():
                raise InputError(ps.source, f"particle {int(row) + 1}: file {name!r} not found",
                                 field=column)


def iterate_batches(
    ps: ParticleSet,
    rows: np.ndarray,
    *,
    box: int,
    ctf: bool,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> Iterator[ParticleBatch]:
    """Yield batches of particle spectra (and CTF volumes) read from disk; memory ∝ batch."""
    star_dir = Path(ps.source).parent if ps.source else None
    if ctf and "rlnCtfImage" not in ps.particles:
        raise InputError(ps.source, "--ctf needs a 3D CTF volume per particle",
                         field="rlnCtfImage")
    if "rlnImageName" not in ps.particles:
        raise InputError(ps.source, "particles have no images", field="rlnImageName")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        volumes = []
        for row in chunk:
            volume = _read_volume(ps, int(row), "rlnImageName", star_dir)
            if volume.shape != (box, box, box):
                raise InputError(ps.source, f"particle {row + 1}: image has shape {volume.shape},"
                                 f" expected a {box}³ box", field="rlnImageName")
            volumes.append(volume)
        spectra = centred_rfft(torch.from_numpy(np.stack(volumes)).to(device))
        weights = None
        if ctf:
            weights = torch.stack([
                ctf_from_disk(_read_volume(ps, int(row), "rlnCtfImage", star_dir), box,
                              resolve(str(ps.particles["rlnCtfImage"].iloc[int(row)]), star_dir))
                for row in chunk]).to(device)
        yield ParticleBatch(chunk, spectra, weights)
