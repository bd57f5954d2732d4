"""Particle poses as the pickle files that OPUS-TOMO and cryoDRGN read.

Replaces ``dsd parse_pose_star STAR -D BOX --Apix APIX -o poses.pkl`` (OPUS-TOMO, also run by
``dsdsh prepare``) and ``cryodrgn parse_pose_star``. The functions here are pure: the caller
reads the STAR file and passes arrays.

What the peers write (read from their source, not copied):

* rotation: RELION's Euler matrix ``A`` for (rot, tilt, psi), the matrix RELION's
  ``Euler_angles2matrix`` builds, i.e. ``A = (Rz(rot) Ry(tilt) Rz(psi)).T`` with active
  right-handed rotations; scipy's ``Rotation.from_euler('ZYZ', [rot, tilt, psi],
  degrees=True).as_matrix()`` is ``A.T``. Neither peer transposes it when reading it back.
* translation: RELION's ``rlnOrigin{X,Y,Z}`` in pixels (``rlnOrigin*Angst / Apix``), sign kept,
  divided by the box size ``D`` in pixels: a fraction of the box. The readers multiply by ``D``
  again (OPUS-TOMO's ``train_tomo`` passes ``data.D - 1``, the box, as ``D``) and assert every
  value is ``<= 1``.
* OPUS-TOMO (``cryodrgn/commands/parse_pose_star.py`` in alncat/opusTomo) pickles the 3-tuple
  ``(rot float32 (N,3,3), trans float64 (N,3), euler float64 (N,3) in degrees)``; its
  ``PoseTracker.load`` requires 3D translations when the tuple has 3 items.
* cryoDRGN (``cryodrgn/commands/parse_pose_star.py`` in ml-struct-bio/cryodrgn) pickles the
  2-tuple ``(rot float64 (N,3,3), trans float64 (N,2))``: X and Y only.

Both peers pin numpy 1.x (OPUS-TOMO ``numpy==1.24.3``, cryoDRGN ``numpy<1.27``); numpy older than
1.26.1 cannot unpickle arrays pickled by numpy 2 (``No module named 'numpy._core'``).
:func:`write_poses_pickle` therefore pickles each array as ``numpy.ndarray(shape, dtype,
bytearray)``, which loads the same in numpy 1 and 2.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subtomo.geometry.euler import euler_to_matrix
from subtomo.io.files import atomic_path, check_not_input

__all__ = [
    "relion_matrices",
    "shifts_to_box_fraction",
    "poses_opus",
    "poses_cryodrgn",
    "write_poses_pickle",
    "dumps_portable",
    "read_poses_pickle",
]

# Pickle protocol 4: the default of the peers' Python 3.9/3.10, readable from Python 3.4 on.
_PROTOCOL = 4


def _angles(angles_deg: np.ndarray) -> np.ndarray:
    angles = np.asarray(angles_deg, dtype=np.float64)
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ValueError(f"angles must have shape (N, 3) (rot, tilt, psi); got {angles.shape}")
    if not np.all(np.isfinite(angles)):
        raise ValueError("angles must be finite")
    return angles


def relion_matrices(angles_deg: np.ndarray) -> np.ndarray:
    """RELION's rotation matrices ``A`` (N, 3, 3) float64 for (rot, tilt, psi) in degrees.

    RELION's ``Euler_angles2matrix`` (``src/euler.cpp``), computed in float64 by
    :func:`subtomo.geometry.euler.euler_to_matrix`: ``A = (Rz(rot) Ry(tilt) Rz(psi)).T`` with
    active rotations, the matrix both peers' ``R_from_relion`` build.
    """
    # a private C-contiguous copy: torch.from_numpy rejects negative strides and read-only input
    angles = torch.from_numpy(np.array(_angles(angles_deg), dtype=np.float64, order="C"))
    return euler_to_matrix(angles).numpy()


def shifts_to_box_fraction(
    shifts_A: np.ndarray, box_px: int, pixel_size_A: float, *, n: int | None = None
) -> np.ndarray:
    """RELION origins in Å (N, K) -> float64 fraction of the box: ``shift / pixel_size / box``.

    The sign is kept (both peers store ``rlnOrigin`` as is). Raises ``ValueError`` where a value
    falls outside [-1, 1]: the peers' readers reject values above 1 (a shift beyond the box).
    """
    if isinstance(box_px, bool) or not isinstance(box_px, (int, np.integer)) or box_px <= 0:
        raise ValueError(f"box_px must be a positive integer; got {box_px!r}")
    pixel_size = float(pixel_size_A)
    if not math.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel_size_A must be positive; got {pixel_size_A!r}")
    shifts = np.asarray(shifts_A, dtype=np.float64)
    if shifts.ndim != 2:
        raise ValueError(f"shifts must have shape (N, 2) or (N, 3); got {shifts.shape}")
    if n is not None and shifts.shape[0] != n:
        raise ValueError(f"shifts have {shifts.shape[0]} rows but there are {n} angles")
    if not np.all(np.isfinite(shifts)):
        raise ValueError("shifts must be finite")
    frac = shifts / pixel_size / int(box_px)
    bad = np.abs(frac) > 1
    if np.any(bad):
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(
            f"particle {row}: shift {shifts[row].tolist()} Å is larger than the box "
            f"({box_px} px at {pixel_size} Å/px); check the pixel size"
        )
    return frac


def poses_opus(
    angles_deg: np.ndarray,
    shifts_A: np.ndarray | None,
    box_px: int,
    pixel_size_A: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The object OPUS-TOMO's ``dsd parse_pose_star`` pickles: ``(rot, trans, euler)``.

    ``angles_deg``: (N, 3) rlnAngleRot/Tilt/Psi; ``shifts_A``: (N, 3) rlnOriginX/Y/ZAngst, or
    ``None`` for no shifts (OPUS-TOMO writes zeros then). Returns ``rot`` float32 (N, 3, 3)
    RELION matrices, ``trans`` float64 (N, 3) fraction of ``box_px``, ``euler`` float64 (N, 3)
    the angles in degrees as given.
    """
    euler = _angles(angles_deg).copy()
    n = euler.shape[0]
    if shifts_A is None:
        trans = np.zeros((n, 3), dtype=np.float64)
        shifts_to_box_fraction(trans, box_px, pixel_size_A, n=n)  # validates box and pixel
    else:
        if np.ndim(shifts_A) != 2 or np.shape(shifts_A)[1] != 3:
            raise ValueError(
                f"OPUS-TOMO needs 3D shifts (N, 3) rlnOriginX/Y/ZAngst; "
                f"got shape {np.shape(shifts_A)}"
            )
        trans = shifts_to_box_fraction(shifts_A, box_px, pixel_size_A, n=n)
    rot = relion_matrices(euler).astype(np.float32)
    return rot, trans, euler


def poses_cryodrgn(
    angles_deg: np.ndarray,
    shifts_A: np.ndarray | None,
    box_px: int,
    pixel_size_A: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The object ``cryodrgn parse_pose_star`` pickles: ``(rot, trans)``.

    ``shifts_A``: (N, 2) or (N, 3) RELION origins in Å (Z, if given, is dropped: cryoDRGN reads
    rlnOriginX/Y only), or ``None`` for zeros. Returns ``rot`` float64 (N, 3, 3) RELION matrices
    and ``trans`` float64 (N, 2) fraction of ``box_px``.
    """
    euler = _angles(angles_deg)
    n = euler.shape[0]
    if shifts_A is None:
        shifts = np.zeros((n, 2), dtype=np.float64)
    else:
        shifts = np.asarray(shifts_A, dtype=np.float64)
        if shifts.ndim != 2 or shifts.shape[1] not in (2, 3):
            raise ValueError(f"shifts must have shape (N, 2) or (N, 3); got {shifts.shape}")
        shifts = shifts[:, :2]
    trans = shifts_to_box_fraction(shifts, box_px, pixel_size_A, n=n)
    return relion_matrices(euler), trans


def _rebuild_array(arr: np.ndarray) -> tuple[Any, tuple[Any, ...]]:
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise TypeError(f"cannot write a portable pickle of an array of dtype {arr.dtype}")
    data = np.ascontiguousarray(arr)
    # numpy.ndarray(shape, dtype, buffer): the names numpy.ndarray and builtins.bytearray
    # exist in numpy 1.x and 2.x alike; a bytearray buffer keeps the array writable.
    return np.ndarray, (data.shape, data.dtype.str, bytearray(data.tobytes()))


class _PortablePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return _rebuild_array(obj)
        if isinstance(obj, (np.number, np.bool_)):
            # numpy scalars pickle through numpy._core in numpy 2: store the Python number.
            value = obj.item()
            return type(value), (value,)
        if isinstance(obj, np.generic):
            raise TypeError(f"cannot write a portable pickle of a numpy {type(obj).__name__}")
        return NotImplemented


def dumps_portable(obj: Any) -> bytes:
    """Pickle ``obj`` (protocol 4) so that numpy 1.x and 2.x both load its arrays."""
    buffer = io.BytesIO()
    _PortablePickler(buffer, protocol=_PROTOCOL).dump(obj)
    return buffer.getvalue()


def write_poses_pickle(
    obj: Any, path: str | Path, *, inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Write ``obj`` to ``path`` as a pickle, atomically; refuse to overwrite any of ``inputs``.

    The file is written beside ``path`` under a temporary name and moved into place with
    ``os.replace``, so a reader never sees a partial file. Arrays are pickled portably (see
    :func:`dumps_portable`). Returns ``path``.
    """
    path = Path(path)
    check_not_input(path, *inputs)
    data = dumps_portable(obj)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
    return path


# numpy's array and dtype reconstructors (numpy 1.x and 2.x spellings) and bytearray: all a
# pose pickle of ours or of the peers holds; anything else is refused when reading.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("builtins", "float"), ("builtins", "int"),
}


class _PoseUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a pose file")
        return super().find_class(module, name)


def read_poses_pickle(path: str | Path, box_px: int, pixel_size_A: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Poses from a pickle written by :func:`write_poses_pickle` (OPUS-TOMO's or cryoDRGN's
    layout, ours or theirs): RELION matrices ``A`` (N, 3, 3) float64 and origins (N, 3) in Å
    (``trans * box_px * pixel_size_A``; z = 0 for cryoDRGN's 2D shifts).

    Only arrays are unpickled (a restricted unpickler); raises ``ValueError`` naming what is
    wrong with the file's layout.
    """
    with open(path, "rb") as handle:
        try:
            obj = _PoseUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ValueError(f"not a pose pickle ({exc})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3):
        raise ValueError("a pose pickle holds (rot, trans) or (rot, trans, euler)")
    rot = np.asarray(obj[0], dtype=np.float64)
    trans = np.asarray(obj[1], dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"rotations must have shape (N, 3, 3), not {rot.shape}")
    if trans.ndim != 2 or trans.shape[0] != rot.shape[0] or trans.shape[1] not in (2, 3):
        raise ValueError(f"translations must have shape ({rot.shape[0]}, 2 or 3), not "
                         f"{trans.shape}")
    shifts = np.zeros((len(rot), 3))
    shifts[:, : trans.shape[1]] = trans * int(box_px) * float(pixel_size_A)
    return rot, shifts
