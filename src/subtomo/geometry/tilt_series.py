"""TiltSeriesGeometry: one aligned tilt series' metadata — optics, per-tilt geometry, CTF and
exposure — without its images (:class:`subtomo.io.tilt_series.TiltSeries` adds those).

A tilt series is RELION's tomogram: one row of the ``data_global`` table of a tomogram set
(``globals``: name, pixel size, tomogram size, handedness, optics, unknown columns carried) and a
per-tilt table (``tilts``: one row per tilt image in table order, RELION 5 labels). The five
degrees of freedom of each tilt are ``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot`` (degrees)
and ``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` (Å); the nominal angle is
``rlnTomoNominalStageTiltAngle``; per-tilt CTF ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (deg);
exposure before the tilt ``rlnMicrographPreExposure`` (e/Å²). Geometry follows
:mod:`subtomo.geometry.tilt` (RELION 5's ``Tomogram::setProjectionMatrix``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Self

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from subtomo.errors import InputError
from subtomo.geometry.tilt import project_points, projection_matrices, tomogram_centre_px

__all__ = ["DOF", "SIZE", "TiltSeriesGeometry"]

DOF = ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
       "rlnTomoYShiftAngst")
SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")


@dataclass
class TiltSeriesGeometry:
    """One tilt series without images (see the module docstring). Lengths in Å unless named
    ``_px``."""

    globals: dict
    tilts: pd.DataFrame
    source: str | None = None
    image_size: tuple[int, int] | None = None  # (W, H) px; io.TiltSeries reads it when None
    # a WarpTools particle-series export (rotation-only rlnTomoProjX/Y/Z/W): its particles'
    # rlnCoordinateX/Y/Z count the exported particles' pixels (rlnImagePixelSize)
    warptools: bool = False

    # ---- scalar properties ------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.globals["rlnTomoName"])

    @property
    def n_tilts(self) -> int:
        return len(self.tilts)

    @property
    def pixel_size_A(self) -> float:
        return float(self.globals["rlnTomoTiltSeriesPixelSize"])

    @property
    def tomo_size_px(self) -> tuple[int, int, int]:
        return tuple(int(self.globals[c]) for c in SIZE)

    @property
    def hand(self) -> float:
        return float(self.globals.get("rlnTomoHand", -1.0))

    @property
    def defocus_slope(self) -> float:
        return float(self.globals.get("rlnTomoDefocusSlope", 1.0))

    @property
    def voltage_kv(self) -> float:
        return float(self.globals.get("rlnVoltage", 300.0))

    @property
    def cs_mm(self) -> float:
        return float(self.globals.get("rlnSphericalAberration", 2.7))

    @property
    def amplitude_contrast(self) -> float:
        return float(self.globals.get("rlnAmplitudeContrast", 0.07))

    @property
    def image_size_px(self) -> tuple[int, int]:
        """``(W, H)`` of the tilt images (px), as given: the geometry has no images to read
        (:class:`subtomo.io.tilt_series.TiltSeries` reads it from the first image's header)."""
        if self.image_size is None:
            raise InputError(self.source, f"tilt series {self.name}: tilt-image size unknown",
                             field="rlnMicrographName")
        return self.image_size

    # ---- per-tilt columns -------------------------------------------------------------
    def column(self, label: str, default: float | None = None) -> np.ndarray:
        """A per-tilt column as float64 ``(T,)`` (``default`` where absent)."""
        if label in self.tilts:
            return self.tilts[label].to_numpy(np.float64, copy=True)
        if default is None:
            raise InputError(self.source, f"tilt series {self.name}: per-tilt column missing",
                             field=label)
        return np.full(self.n_tilts, float(default))

    def dof(self, device: torch.device | str | None = None,
            dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
        """The five parameters per tilt: ``(xtilt, ytilt, zrot, shift_x_A, shift_y_A)``."""
        defaults = (0.0, None, None, 0.0, 0.0)
        return tuple(torch.as_tensor(self.column(label, d), device=device, dtype=dtype)
                     for label, d in zip(DOF, defaults, strict=True))

    @property
    def nominal_tilt_deg(self) -> np.ndarray:
        if "rlnTomoNominalStageTiltAngle" in self.tilts:
            return self.column("rlnTomoNominalStageTiltAngle")
        return self.column("rlnTomoYTilt")

    @property
    def pre_exposure(self) -> np.ndarray:
        """Exposure before each tilt (e/Å²)."""
        return self.column("rlnMicrographPreExposure", 0.0)

    def defocus(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-tilt ``(defocus U, defocus V, angle)`` at the tomogram centre (Å, Å, deg)."""
        u = self.column("rlnDefocusU")
        v = self.column("rlnDefocusV") if "rlnDefocusV" in self.tilts else u
        return u, v, self.column("rlnDefocusAngle", 0.0)

    # ---- geometry ---------------------------------------------------------------------
    def matrices(self, params: tuple[Tensor, ...] | None = None, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64) -> Tensor:
        """Projection matrices ``(T, 4, 4)`` (tomogram px → image px); ``params`` overrides the
        five per-tilt parameters (e.g. tensors that require grad)."""
        xt, yt, zr, sx, sy = params if params is not None else self.dof(device, dtype)
        return projection_matrices(xt, yt, zr, sx, sy, self.pixel_size_A, self.tomo_size_px,
                                   self.image_size_px)

    def centred_to_px(self, centred_A: Tensor) -> Tensor:
        """``rlnCenteredCoordinate*Angst`` (…, 3) → tomogram position in tilt-series px."""
        centre = tomogram_centre_px(self.tomo_size_px).to(centred_A)
        return centred_A / self.pixel_size_A + centre

    def px_to_centred(self, position_px: Tensor) -> Tensor:
        """Tomogram position (px) → ``rlnCenteredCoordinate*Angst``."""
        centre = tomogram_centre_px(self.tomo_size_px).to(position_px)
        return (position_px - centre) * self.pixel_size_A

    def project(self, position_px: Tensor, matrices: Tensor | None = None) -> Tensor:
        """Image positions ``(N, T, 2)`` (px) of tomogram positions ``(N, 3)`` or ``(N, T, 3)``."""
        m = self.matrices(device=position_px.device) if matrices is None else matrices
        return project_points(m, position_px)[..., :2]

    def depth_px(self, position_px: Tensor, matrices: Tensor | None = None) -> Tensor:
        """Depth ``(N, T)`` (px) along each tilt's beam relative to the tomogram centre
        (RELION ``Tomogram::getDepthOffset``)."""
        m = self.matrices(device=position_px.device) if matrices is None else matrices
        centre = tomogram_centre_px(self.tomo_size_px).to(position_px)
        return (project_points(m, position_px) - project_points(m, centre[None]))[..., 2]

    def defocus_at(self, position_px: Tensor, matrices: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """Per particle and tilt ``(U, V, angle)`` (Å, Å, deg), each ``(N, T)``: the tilt's
        defocus plus ``hand × pixel × slope × depth`` (RELION ``Tomogram::getCtf``)."""
        dz = self.hand * self.pixel_size_A * self.defocus_slope * self.depth_px(
            position_px, matrices)
        u, v, angle = (torch.as_tensor(x, dtype=dz.dtype, device=dz.device)
                       for x in self.defocus())
        return u + dz, v + dz, angle.expand_as(dz)

    # ---- updates ----------------------------------------------------------------------
    def with_dof(self, xtilt, ytilt, zrot, shift_x_A, shift_y_A) -> Self:
        """A copy with new per-tilt parameters (``(T,)`` arrays or tensors)."""
        tilts = self.tilts.copy()
        for label, values in zip(DOF, (xtilt, ytilt, zrot, shift_x_A, shift_y_A), strict=True):
            if isinstance(values, Tensor):
                values = values.detach().cpu().double().numpy()
            tilts[label] = np.asarray(values, dtype=np.float64)
        return replace(self, tilts=tilts)

    def subset_tilts(self, keep: np.ndarray) -> Self:
        """Only the tilts where ``keep`` (bool ``(T,)``) holds (images stay where they are)."""
        tilts = self.tilts.loc[np.asarray(keep, bool)].reset_index(drop=True)
        if "rlnMicrographName" not in tilts and "rlnTomoTiltSeriesName" in self.globals:
            stack = str(self.globals["rlnTomoTiltSeriesName"])
            index = np.flatnonzero(np.asarray(keep, bool)) + 1
            tilts.insert(0, "rlnMicrographName", [f"{i}@{stack}" for i in index])
        return replace(self, tilts=tilts)
