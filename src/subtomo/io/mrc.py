"""MRC volumes, stacks and 3D CTF volumes via ``mrcfile``.

Arrays are ``(z, y, x)`` (volumes) or ``(n, y, x)`` (stacks). Pixel sizes are Å.
3D CTF volumes in memory are half-spectrum weights matching ``torch.fft.rfftn`` of a ``(D, D, D)``
box: shape ``(D, D, D // 2 + 1)``, zero frequency at index 0. On disk RELION accepts either
- ``relion`` (full, centred): ``(D, D, D)``, frequency k at voxel ``D // 2 − k`` (wrapped), or
- ``warp`` (half, FFTW order): ``(D, D, D // 2 + 1)`` with zero frequency at index 0, as Warp
  writes them (float16, MRC mode 12) and RELION reads them without change.
Both hold a real, centrosymmetric weight, so the two layouts carry the same information.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mrcfile
import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.io import validate
from subtomo.io.files import atomic_path

CTF_LAYOUTS = ("relion", "warp")


@contextmanager
def _opened(path: Path, opener=mrcfile.open, *, field: str | None = None, what: str = "file",
            **kwargs) -> Iterator:
    """An MRC file opened permissively, after :func:`check_file_size` (``field``, ``what``
    name it in an error); ``mrcfile``'s warnings are kept off the terminal (the error, if any,
    is one line)."""
    check_file_size(path, field, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with opener(path, permissive=True, **kwargs) as mrc:
                yield mrc
    except InputError:
        raise
    except (ValueError, OSError) as exc:
        raise InputError(path, f"not a readable MRC file ({exc})") from exc


def check_file_size(path: str | Path, field: str | None = None, what: str = "file") -> None:
    """Refuse a missing file, or one whose length differs from what its header describes:
    ``1024 + nsymbt + nx·ny·nz·(bytes per voxel of the mode)`` (truncated, or a header whose
    size is not the data's)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                h = mrc.header
                shape = (int(h.nx), int(h.ny), int(h.nz))
                start = int(h.nbytes) + int(h.nsymbt)
                itemsize = mrcfile.utils.dtype_from_mode(h.mode).itemsize
    except (ValueError, OSError) as exc:
        raise InputError(path, f"not a readable MRC file ({exc})") from exc
    if min(shape) <= 0:
        raise InputError(path, f"{what} is empty (header size {shape} (x, y, z), no voxels)",
                         field=field or "nx, ny, nz (MRC header)")
    need = start + int(np.prod(shape)) * itemsize
    have = path.stat().st_size
    if have != need:
        what = "truncated" if have < need else "longer than its header says"
        raise InputError(path, f"{what}: the header's {shape[0]}×{shape[1]}×{shape[2]} voxels "
                         f"of {itemsize} bytes need {need} bytes, the file has {have}",
                         field="nx, ny, nz (MRC header)")


def read_mrc(path: str | Path, *, finite: bool = True, what: str = "map",
             role: str | None = None, field: str | None = None) -> tuple[np.ndarray, float]:
    """Read an MRC file: ``(data as float32, voxel size in Å)``.

    Refuses (:class:`InputError`) a file whose length is not its header's (truncated), a
    header voxel size that is negative or not finite (0 means unset), data with no voxels and,
    with ``finite``, data holding NaN or infinity (``what`` names the data in the message).
    ``role`` ``"reference"`` or ``"mask"`` also refuses a constant reference or a mask with no
    voxel above 0 (:func:`validate.map_content`); ``field`` names the option that gave the
    file."""
    path = Path(path)
    what = "mask" if role == "mask" and what == "map" else what
    with _opened(path, field=field, what=what) as mrc:
        if mrc.data is None:
            raise InputError(path, "not a readable MRC file (no data)")
        data = np.asarray(mrc.data, dtype=np.float32).copy()
        voxel = float(mrc.voxel_size.x)
    validate.voxel_size(voxel, path)
    if data.size == 0:
        raise InputError(path, f"{what} is empty (shape {data.shape}, no voxels)", field=field)
    if finite:
        validate.volume(data, path, what=what, field=field)
    if role is not None:
        validate.map_content(data, path, role, field=field, what=what)
    return data, voxel


def read_mrc_header(path: str | Path) -> tuple[tuple[int, ...], float]:
    """Shape ``(nz, ny, nx)`` and voxel size (Å) without reading the data (the file's length
    checked against the header)."""
    path = Path(path)
    with _opened(path, header_only=True) as mrc:
        h = mrc.header
        shape, voxel = (int(h.nz), int(h.ny), int(h.nx)), float(mrc.voxel_size.x)
    validate.voxel_size(voxel, path)
    return shape, voxel


def read_section(path: str | Path, index: int) -> np.ndarray:
    """Image ``index`` (0-based) of a stack, or the single image of a 2D file, as float32
    ``(ny, nx)``, through a memory map (the file's length checked first)."""
    path = Path(path)
    with _opened(path, mrcfile.mmap, mode="r") as mrc:
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
        if not 0 <= index < len(data):
            raise InputError(path, f"has {len(data)} images, image {index + 1} asked for",
                             field="nz (MRC header)")
        return np.asarray(data[index], dtype=np.float32)


def write_mrc(path: str | Path, data: np.ndarray | torch.Tensor, voxel_size_A: float,
              *, stack: bool = False) -> None:
    """Write float32 data with its voxel size (Å), atomically; ``stack`` marks an image stack."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    array = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = voxel_size_A  # set_data wrote the header statistics


def write_mrcs(items: Sequence[tuple[str | Path, np.ndarray]], voxel_size_A: float) -> None:
    """Write many volumes of one shape, one file each, atomically, as :func:`write_mrc` would
    (byte for byte): the first through ``mrcfile``, the rest with its header, in which only the
    statistics change (min, max, and mean and rms in float32, as ``mrcfile`` computes them).
    Saves the per-file MRC object when writing thousands of subtomograms."""
    if not items:
        return
    first_path, first = items[0]
    write_mrc(first_path, first, voxel_size_A)
    with mrcfile.open(first_path, header_only=True) as mrc:
        template = np.array(mrc.header)  # a plain structured copy
        offset = mrc.header.nbytes + int(mrc.header.nsymbt)
    with open(first_path, "rb") as handle:
        head = handle.read(offset)[mrc.header.nbytes:]  # the extended header (empty)
    for path, volume in items[1:]:
        data = np.ascontiguousarray(volume, dtype=np.float32)
        if data.shape != first.shape:
            raise ValueError(f"{path}: shape {data.shape} differs from {first.shape}")
        header = template.copy()
        header["dmin"], header["dmax"] = data.min(), data.max()
        header["dmean"], header["rms"] = data.mean(dtype=np.float32), data.std(dtype=np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(header.tobytes())
            handle.write(head)
            data.tofile(handle)


def ctf_from_disk(volume: np.ndarray, box: int, path: str | Path | None = None) -> torch.Tensor:
    """Convert an on-disk CTF volume (either layout) to ``(box, box, box // 2 + 1)`` weights."""
    half = (box, box, box // 2 + 1)
    full = (box, box, box)
    if volume.shape == half:
        return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if volume.shape == full:
        # RELION reads frequency k from voxel centre − k (centre c = box // 2), wrapping:
        # index i ↦ (c − i) mod box, i.e. c..0 for i ≤ c and box − 1..c + 1 after; copied as
        # (at most) four reversed slices instead of a fancy-index gather.
        c = box // 2
        runs = ((slice(0, c + 1), slice(c, None, -1)), (slice(c + 1, box), slice(box - 1, c, -1)))
        weights = np.empty(half, dtype=np.float32)
        for dz, sz in runs:
            for dy, sy in runs:
                weights[dz, dy] = volume[sz, sy, c::-1]
        return torch.from_numpy(weights)
    raise InputError(path, f"CTF volume has shape {volume.shape} (z, y, x); for a {box}-pixel "
                     f"box expected {full} (RELION, centred) or {half} (Warp, half)")


def ctf_to_disk(weights: torch.Tensor | np.ndarray, layout: str = "relion") -> np.ndarray:
    """Half-spectrum weights ``(D, D, D // 2 + 1)`` → the on-disk array of ``layout``."""
    if layout not in CTF_LAYOUTS:
        raise ValueError(f"unknown CTF layout {layout!r}; choose from {CTF_LAYOUTS}")
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    half = np.asarray(weights).astype(np.float32, copy=False)
    box = half.shape[0]
    if layout == "warp":
        return half
    # voxel i of each axis holds frequency (c − i) mod D (c = D // 2), as RELION reads it (the
    # same as c + i for w even); x ≤ c from the half spectrum reversed, x > c from w(−k) = w(k)
    c = box // 2
    out = np.empty((box, box, box), dtype=np.float32)
    out[..., : c + 1] = np.roll(half[::-1, ::-1, c::-1], c + 1, axis=(0, 1))
    out[..., c + 1:] = np.roll(half[..., 1: box - c], c, axis=(0, 1))
    return out


def read_ctf_volume(path: str | Path, box: int) -> torch.Tensor:
    """Read a 3D CTF volume of either layout as ``(box, box, box // 2 + 1)`` weights."""
    data, _ = read_mrc(path, what="CTF volume")
    return ctf_from_disk(data, box, path)


def write_ctf_volume(path: str | Path, weights: torch.Tensor | np.ndarray, voxel_size_A: float,
                     layout: str = "relion") -> None:
    """Write half-spectrum CTF weights in ``layout`` (``relion`` centred full, or ``warp``)."""
    write_mrc(path, ctf_to_disk(weights, layout), voxel_size_A)
