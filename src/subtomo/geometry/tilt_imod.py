"""IMOD tilt-series geometry (``.xf``, ``.tlt``, ``.xtilt``, ``tilt.com``, read by
:mod:`subtomo.io.imod` into :class:`ImodAlignment`) ⇄ RELION 5's five parameters per tilt,
exactly, with IMOD's own centres.

IMOD's model, read from its sources (``flib/tilt/tilt.f90`` and ``libcfshr/cubinterp.c`` as
``newstack`` calls it). All coordinates here are 0-based with pixel centres at integers, at
the tilt-series pixel size:

- ``.xf`` (one line per view, ``A11 A12 A21 A22 DX DY``) maps a raw tilt-image position ``r`` to
  the aligned image: ``a = A·(r − c_img) + D``, both about the image centres
  ``c_img = ((W − 1)/2, (H − 1)/2)`` (``cubinterp``: centre ``nx/2`` on edge coordinates).
- ``tilt`` projects a reconstruction point onto the aligned image (``tilt.f90``:
  ``xp = xx·cosβ + yy·sinα'·sinβ' + zz·cosα·sinβ'``, ``yp = yy·cosα − zz·sinα'`` with
  ``sinβ' = −sin θ``, ``sinα' = −sin α``), θ the ``.tlt`` angle plus ``OFFSET``, α the ``.xtilt``
  angle minus ``XAXISTILT`` (``alpha(iv) − globalpha``). Its centres are ``xcenOut =
  WIDTH/2 + 0.5 + SHIFT_x`` and ``ycenOut = THICKNESS/2 + 0.5 + SHIFT_z`` (integer halves,
  1-based) and ``centerSlice = ny/2. + 0.5``.
- ``trimvol -rx`` / ``clip rotx`` turns the reconstruction (slices ⟂ Y) into the x, y, z volume
  users pick on, reversing z (``clip_proc.c``: output section ``nz − 1 − y``).

We identify that rotated volume's voxel indices with RELION's tomogram positions (px, origin at
voxel 0) and the raw image's pixel indices with RELION's image positions. In that frame IMOD's
projection is exactly RELION's ``Ry(θ)·Rx(α)`` about IMOD's tomogram centre

    c_I = (X//2 − 0.5 + SHIFT_x,  (Y − 1)/2,  Z − 0.5 − Z//2 − SHIFT_z)

(``(N − 1)/2`` for even sizes), so ``rlnTomoYTilt = θ``, ``rlnTomoXTilt = α`` (as RELION 5's
IMOD importer and cryoet-alignment map them), ``rlnTomoZRot = −φ`` for ``A = Rot(φ)`` and

    shift = c_img − c_R,img − A⁻¹·D + A⁻¹·[R·(c_R − c_I)]_xy      (px)

with RELION's centres ``c_R = int(size/2)``, ``c_R,img = int(W/2), int(H/2)``. RELION 5's own
importer uses ``−A⁻¹·D`` alone, which places IMOD's tomogram up to about 1.5 px away from where
IMOD puts it (about 1 px even at zero tilt for a tilt axis near 85°: the two half-pixel centre
offsets no longer cancel once rotated); this module is exact. An ``.xf`` whose 2×2 matrix is
not a rotation (IMOD's magnification, stretch or skew) has no RELION equivalent: we take the
nearest rotation (polar decomposition), keep the image centre exact, and report the largest
resulting error at the image corners.
A mirror (negative determinant) is refused. Binned reconstructions: give sizes and SHIFT in
unbinned pixels (exact for even binned sizes; IMOD's odd-size half-pixel rule applies at the
reconstruction's binning, which we do not model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.geometry.tilt import (
    RelionParameters,
    image_centre_px,
    specimen_centre_px,
    tilt_rotations,
)

__all__ = ["ImodAlignment", "TiltCom", "imod_image_centre_px", "imod_to_relion",
           "imod_tomogram_centre_px", "relion_to_imod"]


@dataclass
class TiltCom:
    """What ``tilt.com`` says about the geometry (degrees, unbinned px)."""

    xaxis_tilt_deg: float = 0.0  # XAXISTILT
    angle_offset_deg: float = 0.0  # OFFSET (added to every tilt angle)
    shift_px: tuple[float, float] = (0.0, 0.0)  # SHIFT x, z (unbinned px)
    thickness_px: int | None = None  # THICKNESS × IMAGEBINNED
    full_image: tuple[int, int] | None = None  # FULLIMAGE nx ny
    binning: int = 1  # IMAGEBINNED
    exclude: list[int] = field(default_factory=list)  # EXCLUDELIST (1-based views)


@dataclass
class ImodAlignment:
    """One tilt series' IMOD alignment (views in stack order)."""

    xf: np.ndarray  # (T, 2, 3): rows [A11 A12 DX], [A21 A22 DY]; shifts in raw px
    tilt_deg: np.ndarray  # (T,) .tlt
    xtilt_deg: np.ndarray  # (T,) .xtilt (zeros when absent)
    tilt_com: TiltCom = field(default_factory=TiltCom)
    source: str | None = None

    @property
    def n_views(self) -> int:
        return len(self.tilt_deg)


def imod_image_centre_px(image_size_px) -> np.ndarray:
    """IMOD's centre of a ``(W, H)`` image: ``((W − 1)/2, (H − 1)/2)``."""
    w, h = image_size_px
    return np.array([(w - 1) / 2.0, (h - 1) / 2.0])


def imod_tomogram_centre_px(tomo_size_px, shift_px=(0.0, 0.0)) -> np.ndarray:
    """IMOD's rotation centre in the ``trimvol -rx`` volume (see the module docstring)."""
    x, y, z = (int(v) for v in tomo_size_px)
    sx, sz = shift_px
    return np.array([x // 2 - 0.5 + sx, (y - 1) / 2.0, z - 0.5 - z // 2 - sz])


def _rotations(xtilt: np.ndarray, ytilt: np.ndarray) -> np.ndarray:
    zero = torch.zeros(len(xtilt), dtype=torch.float64)
    return tilt_rotations(torch.as_tensor(xtilt, dtype=torch.float64),
                          torch.as_tensor(ytilt, dtype=torch.float64), zero).numpy()


def _nearest_rotations(path: str | None, a: np.ndarray) -> np.ndarray:
    """Polar decomposition: the rotation nearest each 2×2 matrix (refusing mirrors)."""
    det = np.linalg.det(a)
    if np.any(det <= 0):
        view = int(np.flatnonzero(det <= 0)[0]) + 1
        raise InputError(path, f"view {view}: the transform mirrors the image (determinant "
                         f"{det[view - 1]:.3g}); RELION's geometry cannot hold a mirror",
                         line=view, field="A11")
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def imod_to_relion(al: ImodAlignment, pixel_size_A: float, tomo_size_px, image_size_px
                   ) -> RelionParameters:
    """IMOD alignment → RELION 5 parameters (exact for rotation-only transforms)."""
    a = al.xf[:, :, :2]
    d = al.xf[:, :, 2]
    rot = _nearest_rotations(al.source, a)
    zrot = -np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    ytilt = al.tilt_deg + al.tilt_com.angle_offset_deg
    xtilt = al.xtilt_deg - al.tilt_com.xaxis_tilt_deg
    r3 = _rotations(xtilt, ytilt)
    c_relion = specimen_centre_px(tomo_size_px).numpy()
    c_imod = imod_tomogram_centre_px(tomo_size_px, al.tilt_com.shift_px)
    a_inv = np.linalg.inv(a)
    lever = (r3 @ (c_relion - c_imod))[:, :2]
    image_offset = imod_image_centre_px(image_size_px) - image_centre_px(image_size_px).numpy()
    shift = image_offset - np.einsum("tij,tj->ti", a_inv, d) \
        + np.einsum("tij,tj->ti", a_inv, lever)
    w, h = image_size_px
    corners = np.array([[sx * w / 2, sy * h / 2] for sx in (-1, 1) for sy in (-1, 1)])
    error = np.einsum("tij,cj->tci", a_inv - np.transpose(rot, (0, 2, 1)), corners)
    distortion = float(np.linalg.norm(error, axis=-1).max()) if len(a) else 0.0
    return RelionParameters(xtilt, ytilt, zrot, shift[:, 0] * pixel_size_A,
                            shift[:, 1] * pixel_size_A, distortion)


def relion_to_imod(params: RelionParameters | tuple, pixel_size_A: float, tomo_size_px,
                   image_size_px) -> ImodAlignment:
    """RELION 5 parameters → IMOD ``.xf``/``.tlt``/``.xtilt`` (no OFFSET, XAXISTILT or SHIFT;
    reconstruct with ``THICKNESS`` = tomogram Z and the full image width)."""
    xt, yt, zr, sx, sy = (np.asarray(v, dtype=np.float64)
                          for v in (params.as_tuple() if isinstance(params, RelionParameters)
                                    else params))
    phi = np.radians(-zr)
    a = np.stack([np.stack([np.cos(phi), -np.sin(phi)], -1),
                  np.stack([np.sin(phi), np.cos(phi)], -1)], axis=1)
    r3 = _rotations(xt, yt)
    lever = (r3 @ (specimen_centre_px(tomo_size_px).numpy()
                   - imod_tomogram_centre_px(tomo_size_px)))[:, :2]
    image_offset = imod_image_centre_px(image_size_px) - image_centre_px(image_size_px).numpy()
    shift_px = np.stack([sx, sy], -1) / pixel_size_A
    d = np.einsum("tij,tj->ti", a, image_offset - shift_px) + lever
    return ImodAlignment(np.concatenate([a, d[:, :, None]], axis=2), yt.copy(), xt.copy())
