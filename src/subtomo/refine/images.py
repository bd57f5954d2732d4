"""Streaming particle images (subtomograms) and their 3D CTF volumes from disk, in batches.

CTF-premultiplied subtomograms (``rlnCtfDataAreCtfPremultiplied 1``: RELION 4/5's 3D
pseudo-subtomograms, ``relion_tomo_subtomo`` without ``--stack2d``) hold the numerator
``B = Σ_t m_t c_t Y_t`` (real space, centred like any subtomogram) and, in ``rlnCtfImage``
(``<n>_weights.mrc``), the weight ``W = Σ_t m_t c_t²`` as an FFTW half spectrum
``(D, D, D // 2 + 1)`` (z, y, x; our half layout) with, stacked above it along z, the
multiplicity ``M = Σ_t m_t`` (``m_t``: the trilinear weights of tilt ``t``'s slice), so
``(2 D, D, D // 2 + 1)`` in all. As ``relion_refine`` (``get3DCTFAndMulti``, ``--ctf3d_squared``
by default): ``W`` is taken as is (its absolute value, no squaring) and the multiplicity only
zeroes the coefficients with ``M < 0.01`` (``--subtomo_multi_thr``); the data are not divided by
it. They enter the engine as the whitened pair of :func:`subtomo.refine.batch.whitened`
(``C X = B``, ``C² = W``), always with their weights and never background-levelled, so that
``reconstruct``, ``refine`` and ``classify`` read them as they read 2D stacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.fourier.grid import centred_rfft, hermitian_weights, soft_sphere
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import ctf_from_disk, read_mrc
from subtomo.io.particles import ParticleSet
from subtomo.refine.batch import ParticleBatch, translated_rfft, whitened
from subtomo.refine.series import series_batch

__all__ = ["MULTIPLICITY_MIN", "background_weights", "check_files", "iterate_batches",
           "premultiplied", "pseudo_weights", "subtract_background_"]

MULTIPLICITY_MIN = 0.01  # relion_refine --subtomo_multi_thr: coefficients seen less are dropped


def _read_volume(ps: ParticleSet, row: int, column: str, star_dir: Path | None) -> np.ndarray:
    """The volume of particle ``row`` (0-based) named in ``column``; NaN or infinity in it is
    refused, naming the file, the particle and the column."""
    name = str(ps.particles[column].iloc[row])
    path = resolve(name, star_dir)
    if not path.is_file():
        raise InputError(ps.source, f"particle {row + 1}: file {name!r} not found", field=column)
    data, _ = read_mrc(path, finite=False)
    what = "CTF volume" if column == "rlnCtfImage" else "subtomogram"
    star = f" of {Path(ps.source).name}" if ps.source else ""
    validate.volume(data, path, field=column, what=what, particle=row + 1,
                    noun="particle {}" + star)
    return data


def check_files(ps: ParticleSet, rows: np.ndarray, ctf: bool) -> None:
    """Fail before any work if an image (or CTF volume) of ``rows`` is missing."""
    star_dir = Path(ps.source).parent if ps.source else None
    if ps.series is not None:
        ctf = False  # a particle series carries its CTFs in its tomograms
    ctf = ctf or bool(premultiplied(ps)[rows].any())
    for column in ("rlnImageName", "rlnCtfImage") if ctf else ("rlnImageName",):
        if column not in ps.particles:
            raise InputError(ps.source, "column needed and missing", field=column)
        for row in rows:
            name = str(ps.particles[column].iloc[int(row)])
            if not resolve(name, star_dir).is_file():
                raise InputError(ps.source, f"particle {int(row) + 1}: file {name!r} not found",
                                 field=column)


def premultiplied(ps: ParticleSet) -> np.ndarray:
    """Whether each particle's subtomogram is CTF-premultiplied (``rlnCtfDataAreCtfPremultiplied``
    of its optics group; never for particle series, whose reader handles it)."""
    if ps.series is not None:
        return np.zeros(len(ps), dtype=bool)
    return np.nan_to_num(ps.optics_column("rlnCtfDataAreCtfPremultiplied")) == 1


def pseudo_weights(volume: np.ndarray, box: int, path: str | Path | None = None) -> torch.Tensor:
    """The weight ``W`` ``(box, box, box // 2 + 1)`` of a premultiplied subtomogram from its
    weights file (module docstring): ``|W|``, 0 where a stacked multiplicity is below
    :data:`MULTIPLICITY_MIN`; a volume without the multiplicity is ``W`` in either CTF layout."""
    half, stacked = (box, box, box // 2 + 1), (2 * box, box, box // 2 + 1)
    if volume.shape != stacked:
        if volume.shape not in (half, (box, box, box)):
            raise InputError(path, f"weights have shape {volume.shape} (z, y, x); for a "
                             f"{box}-pixel box expected {stacked} (Σ CTF² above the "
                             f"multiplicity, RELION 5), {half} or {(box, box, box)}",
                             field="rlnCtfImage")
        return ctf_from_disk(volume, box, path).abs()
    weight = torch.from_numpy(np.ascontiguousarray(volume[:box], dtype=np.float32)).abs()
    multiplicity = torch.from_numpy(np.ascontiguousarray(volume[box:], dtype=np.float32))
    return torch.where(multiplicity >= MULTIPLICITY_MIN, weight, 0.0)


def background_weights(box: int, mask: torch.Tensor | None = None,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """Weights ``w`` ``(D, D, D // 2 + 1)`` that give a particle's background mean from its
    centred half spectrum ``X``: ``b = Re sum_k w(k) X(k)``.

    The background ``o = 1 - m`` lies outside the particle mask ``m`` or, without one, outside
    RELION's default normalisation radius (75 % of the half box, ``relion_preprocess
    --bg_radius``). By Parseval over the half spectrum, ``sum_r o x = (1 / D^3) Re sum_k h
    conj(O) X`` (``O``: the centred spectrum of ``o``, ``h``: Hermitian multiplicity), so
    ``w = h conj(O) / (D^3 sum_r o)``."""
    if mask is None:
        mask = soft_sphere(box, 0.75 * box, width_px=0.0, device=device)
    outside = 1.0 - mask.to(device=device, dtype=torch.float64)
    spectrum = centred_rfft(outside)
    h = hermitian_weights(box, device).to(torch.float64)
    return (h * spectrum.conj() / (box**3 * outside.sum().clamp(min=1e-12))).to(torch.complex64)


def subtract_background_(spectra: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Set each particle's background mean to 0 (RELION's normalisation, which its extraction
    does and its likelihood assumes): ``X(0) -= b D^3`` with ``b = Re sum w X``
    (:func:`background_weights`). An offset in data that are not normalised would otherwise
    enter the maps at the origin, and masks would turn it into a sphere of false signal."""
    box = spectra.shape[-2]
    b = (spectra * weights.to(spectra.device)).real.sum((-3, -2, -1))
    spectra[..., 0, 0, 0] -= (b * box**3).to(spectra.dtype)
    return spectra


def iterate_batches(
    ps: ParticleSet,
    rows: np.ndarray,
    *,
    box: int,
    ctf: bool,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    shifts_px: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
) -> Iterator[ParticleBatch]:
    """Yield batches of particle spectra (and CTF volumes) read from disk; memory ∝ batch.

    ``shifts_px``: optional ``(len(ps), 3)`` translations ``(x, y, z)`` (px) indexed by row;
    each spectrum is then that of its volume translated by its row's shift (the same as
    multiplying by :func:`subtomo.fourier.shift.phase_shift`). ``background``: weights of
    :func:`background_weights`; each particle's background mean is then set to 0
    (:func:`subtract_background_`).
    """
    if ps.series is not None:  # 2D stacks: always with their CTFs, never background-levelled
        def load(chunk: np.ndarray) -> ParticleBatch:
            return series_batch(ps, chunk, box=box, device=device, shifts_px=shifts_px)
        return _read_ahead(load, rows, batch_size)
    star_dir = Path(ps.source).parent if ps.source else None
    premult = premultiplied(ps)
    ctf = ctf or bool(premult[rows].any())  # premultiplied data always come with their weights
    if ctf and "rlnCtfImage" not in ps.particles:
        raise InputError(ps.source, "--ctf needs a 3D CTF volume per particle",
                         field="rlnCtfImage")
    if "rlnImageName" not in ps.particles:
        raise InputError(ps.source, "particles have no images", field="rlnImageName")

    def load(chunk: np.ndarray) -> ParticleBatch:
        volumes = torch.empty((len(chunk), box, box, box), dtype=torch.float32)
        for i, row in enumerate(chunk):
            volume = _read_volume(ps, int(row), "rlnImageName", star_dir)
            if volume.shape != (box, box, box):
                raise InputError(ps.source, f"particle {row + 1}: image has shape {volume.shape},"
                                 f" expected a {box}³ box", field="rlnImageName")
            volumes[i] = torch.from_numpy(volume)
        shifts = None
        if shifts_px is not None:
            shifts = torch.as_tensor(shifts_px)[torch.as_tensor(chunk, dtype=torch.long)]
        spectra = translated_rfft(volumes.to(device), shifts)
        pre = torch.as_tensor(premult[chunk], device=device)
        if background is not None and bool(pre.any()):  # premultiplied: never levelled
            spectra[~pre] = subtract_background_(spectra[~pre], background)
        elif background is not None:
            subtract_background_(spectra, background)
        if not ctf:
            return ParticleBatch(chunk, spectra, None)
        weights = torch.empty((len(chunk), box, box, box // 2 + 1), dtype=torch.float32)
        for i, row in enumerate(chunk):
            path = resolve(str(ps.particles["rlnCtfImage"].iloc[int(row)]), star_dir)
            data = _read_volume(ps, int(row), "rlnCtfImage", star_dir)
            weights[i] = (pseudo_weights if premult[row] else ctf_from_disk)(data, box, path)
        weights = weights.to(device)
        if bool(pre.any()):  # numerator B and weight W → X = B / √W, C = √W
            spectra[pre], weights[pre] = whitened(spectra[pre], weights[pre])
        return ParticleBatch(chunk, spectra, weights)

    return _read_ahead(load, rows, batch_size)


def _read_ahead(load, rows: np.ndarray, batch_size: int) -> Iterator[ParticleBatch]:
    """``load`` of each chunk of ``rows``; one batch is read ahead in a worker thread (file
    reads and FFTs release the GIL), so reading overlaps the caller's work on the current
    batch; at most two batches live."""
    chunks = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield batch
