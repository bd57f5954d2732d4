"""TiltSeries: one aligned tilt series — images, optics, per-tilt geometry, CTF and exposure.

A tilt series is RELION's tomogram: one row of the ``data_global`` table of a tomogram set
(``globals``: name, pixel size, tomogram size, handedness, optics, unknown columns carried) and a
per-tilt table (``tilts``: one row per tilt image in table order, RELION 5 labels). The five
degrees of freedom of each tilt are ``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot`` (degrees)
and ``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` (Å); the nominal angle is
``rlnTomoNominalStageTiltAngle``; per-tilt CTF ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (deg);
exposure before the tilt ``rlnMicrographPreExposure`` (e/Å²). Geometry follows
:mod:`subtomo.tomo.geometry` (RELION 5's ``Tomogram::setProjectionMatrix``).

Images are read lazily: ``rlnMicrographName`` of each tilt (``N@stack.mrcs`` or a single image)
or, for RELION 4 sets, ``rlnTomoTiltSeriesName`` (a stack, one image per tilt in table order).
Raw tilt images show protein dark; everything that extracts from them multiplies by −1 (as
RELION's tomography programs do by default) so that subtomograms show it white.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from subtomo.errors import InputError
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc_header, read_section
from subtomo.tomo.geometry import project_points, projection_matrices, tomogram_centre_px

DOF = ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
       "rlnTomoYShiftAngst")
SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")


@dataclass
class TiltSeries:
    """One tilt series (see the module docstring). Lengths in Å unless named ``_px``."""

    globals: dict
    tilts: pd.DataFrame
    source: str | None = None
    image_size: tuple[int, int] | None = None  # (W, H) px; from the image headers when None

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
        """``(W, H)`` of the tilt images: given, else from the first image's header."""
        if self.image_size is None:
            path, _ = self.image_sources()[0]
            self._image_file(path)
            (_, ny, nx), _ = read_mrc_header(path)
            self.image_size = (nx, ny)
        return self.image_size

    def _image_file(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(self.source, f"tilt series {self.name}: image file "
                             f"{str(path)!r} not found", field="rlnMicrographName")

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

    # ---- images -----------------------------------------------------------------------
    def image_sources(self) -> list[tuple[Path, int]]:
        """``(file, 0-based index)`` of each tilt image, in table order."""
        base = Path(self.source).parent if self.source else None
        if "rlnMicrographName" in self.tilts:
            out = []
            for name in self.tilts["rlnMicrographName"].astype(str):
                index = int(name.split("@")[0]) - 1 if "@" in name else 0
                out.append((resolve(name, base), index))
            return out
        stack = self.globals.get("rlnTomoTiltSeriesName")
        if stack is None:
            raise InputError(self.source, f"tilt series {self.name}: no images (neither "
                             "rlnMicrographName per tilt nor rlnTomoTiltSeriesName)",
                             field="rlnMicrographName")
        path = resolve(str(stack), base)
        return [(path, i) for i in range(self.n_tilts)]

    def check_images(self) -> None:
        """Fail with one clear line if an image file is missing, truncated or of another image
        size than the first, or if a stack named only by ``rlnTomoTiltSeriesName`` (images taken
        in table order) does not hold exactly as many images as the table has rows."""
        counts: dict[Path, int] = {}
        rows: dict[Path, int] = {}
        w, h = self.image_size_px
        for path, index in self.image_sources():
            if path not in counts:
                self._image_file(path)
                (counts[path], ny, nx), _ = read_mrc_header(path)
                if (nx, ny) != (w, h):
                    raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} "
                                     f"has images of {nx}×{ny} px, the first file {w}×{h}",
                                     field="rlnMicrographName")
            rows[path] = rows.get(path, 0) + 1
            if index >= counts[path]:
                raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} has "
                                 f"{counts[path]} images but the tilt table needs image "
                                 f"{index + 1}", field="rlnMicrographName")
        if "rlnMicrographName" in self.tilts:
            return  # ``n@stack`` names each image: a table may list a subset (excluded tilts)
        for path, n in rows.items():
            if n != counts[path]:
                raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} has "
                                 f"{counts[path]} images but the tilt table lists {n}",
                                 field="rlnMicrographName")

    def read_images(self, tilts: list[int] | np.ndarray | None = None) -> Tensor:
        """Tilt images ``(T', H, W)`` float32 (all tilts, or ``tilts`` in the order given).
        Call :meth:`check_images` on the whole series first."""
        sources = self.image_sources()
        chosen = range(self.n_tilts) if tilts is None else [int(t) for t in tilts]
        w, h = self.image_size_px
        out = np.empty((len(chosen), h, w), dtype=np.float32)
        for j, t in enumerate(chosen):
            path, index = sources[t]
            self._image_file(path)
            image = read_section(path, index)
            if image.shape != (h, w):
                raise InputError(self.source, f"tilt series {self.name}: {str(path)!r} "
                                 f"has images of {image.shape[1]}×{image.shape[0]} px, "
                                 f"expected {w}×{h}", field="rlnMicrographName")
            out[j] = image
            validate.finite(out[j], path, what=f"tilt series {self.name}: image {index + 1}",
                            field="rlnMicrographName")
        return torch.from_numpy(out)

    # ---- updates ----------------------------------------------------------------------
    def with_dof(self, xtilt, ytilt, zrot, shift_x_A, shift_y_A) -> TiltSeries:
        """A copy with new per-tilt parameters (``(T,)`` arrays or tensors)."""
        tilts = self.tilts.copy()
        for label, values in zip(DOF, (xtilt, ytilt, zrot, shift_x_A, shift_y_A), strict=True):
            if isinstance(values, Tensor):
                values = values.detach().cpu().double().numpy()
            tilts[label] = np.asarray(values, dtype=np.float64)
        return replace(self, tilts=tilts)

    def subset_tilts(self, keep: np.ndarray) -> TiltSeries:
        """Only the tilts where ``keep`` (bool ``(T,)``) holds (images stay where they are)."""
        tilts = self.tilts.loc[np.asarray(keep, bool)].reset_index(drop=True)
        if "rlnMicrographName" not in tilts and "rlnTomoTiltSeriesName" in self.globals:
            stack = str(self.globals["rlnTomoTiltSeriesName"])
            index = np.flatnonzero(np.asarray(keep, bool)) + 1
            tilts.insert(0, "rlnMicrographName", [f"{i}@{stack}" for i in index])
        return replace(self, tilts=tilts)
