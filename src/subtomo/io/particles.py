"""ParticleSet: the one in-memory model of a particle set, whatever file it came from.

Conventions (RELION 3.1+ labels, Å units):
- ``particles``: one row per particle. Positions are either ``rlnCoordinateX/Y/Z`` (pixels of the
  tomogram, pixel size ``rlnMicrographPixelSize`` / ``rlnTomoTiltSeriesPixelSize`` /
  ``rlnImagePixelSize`` of the optics group, first found) or RELION 5's
  ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram centre). Shifts are
  ``rlnOriginX/Y/ZAngst`` (Å; the particle centre is coordinate − origin). Orientations are
  ``rlnAngleRot/Tilt/Psi`` (degrees, RELION ZYZ), optionally relative to a subtomogram frame
  ``rlnTomoSubtomogramRot/Tilt/Psi`` (RELION 4/5).
- ``optics``: one row per optics group (``rlnOpticsGroup``, ``rlnImagePixelSize`` ...).
- ``tomograms``: optional RELION 5 tomogram table (``rlnTomoName``, ``rlnTomoSizeX/Y/Z``,
  ``rlnTomoTiltSeriesPixelSize``), needed to move between pixel and centred coordinates.
Unknown columns are carried through untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.errors import InputError
from subtomo.geometry.euler import euler_to_matrix, matrix_to_euler
from subtomo.geometry.tilt import tomogram_centre_px
from subtomo.io.files import resolve

XYZ = ("X", "Y", "Z")
COORD_PX = tuple(f"rlnCoordinate{a}" for a in XYZ)
COORD_CENTRED_A = tuple(f"rlnCenteredCoordinate{a}Angst" for a in XYZ)
ORIGIN_A = tuple(f"rlnOrigin{a}Angst" for a in XYZ)
ORIGIN_PX = tuple(f"rlnOrigin{a}" for a in XYZ)
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMO_ANGLES = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
COORD_PIXEL_SIZE_LABELS = (
    "rlnMicrographPixelSize", "rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize")
TOMO_SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")


def present(df: pd.DataFrame, labels: tuple[str, ...]) -> int:
    """How many of ``labels`` are columns of ``df``."""
    return sum(label in df.columns for label in labels)


@dataclass
class ParticleSet:
    """Particles, optics groups and (optionally) tomograms; see the module docstring."""

    particles: pd.DataFrame
    optics: pd.DataFrame
    tomograms: pd.DataFrame | None = None
    general: dict = field(default_factory=dict)
    flavour: str = "relion5"
    source: str | None = None
    series: object | None = None  # particle series: io.particle_series.SeriesSource

    def __len__(self) -> int:
        return len(self.particles)

    # ---- per-particle views -------------------------------------------------------------
    def optics_column(self, label: str) -> np.ndarray:
        """``label`` of each particle's optics group (float array, NaN where absent)."""
        if label not in self.optics.columns:
            return np.full(len(self), np.nan)
        lookup = self.optics.set_index("rlnOpticsGroup")[label]
        return self.particles["rlnOpticsGroup"].map(lookup).to_numpy(dtype=float)

    def pixel_size_A(self) -> np.ndarray:
        """Pixel size of each particle's image, Å."""
        return self.optics_column("rlnImagePixelSize")

    def coordinate_pixel_size_A(self) -> np.ndarray:
        """Pixel size of the tomogram pixels ``rlnCoordinateX/Y/Z`` count, Å."""
        out = np.full(len(self), np.nan)
        for label in COORD_PIXEL_SIZE_LABELS:
            out = np.where(np.isnan(out), self.optics_column(label), out)
        return out

    def shifts_A(self) -> np.ndarray:
        """``(N, 3)`` origins (x, y, z) in Å; zeros where absent."""
        return np.stack(
            [self.particles[c].to_numpy(float) if c in self.particles else np.zeros(len(self))
             for c in ORIGIN_A], axis=1)

    def subtomogram_matrices(self) -> torch.Tensor | None:
        """``(N, 3, 3)`` RELION matrices of the subtomogram frames, or None without them."""
        if present(self.particles, SUBTOMO_ANGLES) < 3:
            return None
        angles = self.particles[list(SUBTOMO_ANGLES)].to_numpy(float)
        return euler_to_matrix(torch.tensor(angles))

    def tomogram_shifts_A(self) -> np.ndarray:
        """``(N, 3)`` origins in the tomogram frame, Å.

        RELION 4/5 keep origins in the subtomogram frame: tomogram shift = A_subtomogram · origin
        (``ParticleSet::getPosition``); without subtomogram angles this is :meth:`shifts_A`.
        """
        shifts = self.shifts_A()
        frames = self.subtomogram_matrices()
        if frames is None:
            return shifts
        return (frames @ torch.tensor(shifts).unsqueeze(-1)).squeeze(-1).numpy()

    def angles_deg(self) -> np.ndarray:
        """``(N, 3)`` rot, tilt, psi of the full particle orientation in the tomogram (deg).

        Subtomogram angles (RELION 4/5), when present, are composed in.
        """
        return matrix_to_euler(self.rotation_matrices()).numpy()

    def particle_matrices(self) -> torch.Tensor:
        """``(N, 3, 3)`` float64 RELION matrices of ``rlnAngleRot/Tilt/Psi`` as given (relative
        to the subtomogram frame where there is one); identity without angles."""
        df = self.particles
        if present(df, ANGLES) == 0:
            return torch.eye(3, dtype=torch.float64).expand(len(self), 3, 3).clone()
        return euler_to_matrix(torch.tensor(df[list(ANGLES)].to_numpy(float)))

    def rotation_matrices(self) -> torch.Tensor:
        """``(N, 3, 3)`` float64 RELION matrices A of the full orientation in the tomogram."""
        particle = self.particle_matrices()
        frames = self.subtomogram_matrices()
        return particle if frames is None else compose_subtomogram(particle, frames)

    def are_2d_stacks(self) -> bool:
        """True for 2D-stack particle sets (particle series, :mod:`subtomo.io.particle_series`):
        ``rlnTomoSubTomosAre2DStacks 1``, or tomogram particles of image dimensionality 2."""
        if self.series is not None:
            return True
        if int(float(self.general.get("rlnTomoSubTomosAre2DStacks", 0) or 0)) == 1:
            return True
        if "rlnImageDimensionality" in self.optics and self.tomo_names() is not None:
            return bool((self.optics["rlnImageDimensionality"].astype(int) == 2).all())
        return False

    def _volume_frames(self) -> torch.Tensor | None:
        """Rotations from the frame a particle's volume is read in to its pose's frame: the
        subtomogram frames for a particle series (gathered in the tomogram frame by
        :mod:`subtomo.refine.series`), None for 3D subtomograms (cut in that frame)."""
        return self.subtomogram_matrices() if self.are_2d_stacks() else None

    def volume_poses(self) -> tuple[torch.Tensor, np.ndarray]:
        """Pose of each particle in the volume it is read as: ``(N, 3, 3)`` float64 rotations
        and ``(N, 3)`` origins (Å).

        3D subtomograms live in their subtomogram frame (RELION 5 ``relion_tomo_subtomo``
        cuts them with ``projPart = projCut · A_subtomogram``, ``programs/subtomo.cpp``; its
        ``relion_refine`` refines ``rlnAngle*`` and ``rlnOrigin*`` in that frame): the angles
        and origins as given. A particle series is gathered in the tomogram frame: the full
        ``A_subtomogram · A`` and ``A_subtomogram · origin``. Inverse:
        :meth:`with_volume_poses`."""
        frames = self._volume_frames()
        if frames is None:
            return self.particle_matrices(), self.shifts_A()
        return self.rotation_matrices(), self.tomogram_shifts_A()

    def with_volume_poses(self, matrices: np.ndarray | torch.Tensor,
                          origins_A: np.ndarray) -> ParticleSet:
        """Same set with the poses in the particles' volumes (as :meth:`volume_poses` gives
        them) written as ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/Y/ZAngst``, subtomogram
        frames kept."""
        A = torch.as_tensor(np.asarray(matrices), dtype=torch.float64)
        origins = torch.as_tensor(np.asarray(origins_A, dtype=np.float64))
        frames = self._volume_frames()
        if frames is not None:
            A = frames.transpose(1, 2) @ A
            origins = (frames.transpose(1, 2) @ origins.unsqueeze(-1)).squeeze(-1)
        angles, origins = matrix_to_euler(A).numpy(), origins.numpy()
        df = self.particles.copy()
        for i, label in enumerate(ANGLES):
            df[label] = angles[:, i]
        for i, label in enumerate(ORIGIN_A):
            df[label] = origins[:, i]
        return replace(self, particles=df)

    def files(self, columns: tuple[str, ...] = ("rlnImageName", "rlnCtfImage")) -> list[Path]:
        """The STAR file and every file it names in ``columns``, found as the readers find
        them (:func:`subtomo.io.files.resolve`): what a job on these particles reads."""
        star_dir = Path(self.source).parent if self.source else None
        names = {str(n) for c in columns if c in self.particles for n in self.particles[c]}
        found = [resolve(name, star_dir) for name in sorted(names)]
        if self.series is not None:
            found += self.series.files()
        return [Path(self.source), *found] if self.source else found

    def tomo_names(self) -> pd.Series | None:
        """Each particle's tomogram name (``rlnTomoName``, else from ``rlnMicrographName``)."""
        if "rlnTomoName" in self.particles:
            return self.particles["rlnTomoName"].astype(str)
        if "rlnMicrographName" in self.particles:
            return self.particles["rlnMicrographName"].map(tomo_name_from_path)
        return None

    # ---- coordinate systems -------------------------------------------------------------
    def has_pixel_coordinates(self) -> bool:
        return present(self.particles, COORD_PX) >= 2

    def has_centred_coordinates(self) -> bool:
        return present(self.particles, COORD_CENTRED_A) == 3

    def _tomogram_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Per particle: tomogram size (N, 3) in px and its pixel size (N,) in Å."""
        names = self.tomo_names()
        if self.tomograms is None or names is None:
            raise InputError(
                self.source,
                "tomogram sizes unknown: give the tomograms.star of these particles "
                "(--tomograms) to convert between pixel and centred coordinates",
                field="rlnTomoName" if names is None else "rlnTomoSizeX",
            )
        table = self.tomograms.set_index("rlnTomoName")
        missing = sorted(set(names) - set(table.index))
        if missing:
            raise InputError(self.source, f"tomogram {missing[0]!r} is not in the tomogram table",
                             field="rlnTomoName")
        size = np.stack([names.map(table[c]).to_numpy(float) for c in TOMO_SIZE], axis=1)
        if "rlnTomoTiltSeriesPixelSize" in table:
            pixel_size_A = names.map(table["rlnTomoTiltSeriesPixelSize"]).to_numpy(float)
        else:
            pixel_size_A = self.coordinate_pixel_size_A()
        return size, pixel_size_A

    def with_pixel_coordinates(self) -> ParticleSet:
        """Same set with ``rlnCoordinateX/Y/Z`` (px) computed from centred Å if needed.

        RELION 5: centred = (coordinate − size/2) × tilt-series pixel size, the centre of
        :func:`subtomo.geometry.tilt.tomogram_centre_px` (RELION's C++ programs).
        """
        if self.has_pixel_coordinates() or not self.has_centred_coordinates():
            return self
        size, pixel_size_A = self._tomogram_geometry()
        df = self.particles.copy()
        centred = df[list(COORD_CENTRED_A)].to_numpy(float)
        pixels = centred / pixel_size_A[:, None] + tomogram_centre_px(size).numpy()
        at = df.columns.get_loc(COORD_CENTRED_A[0])
        df = df.drop(columns=list(COORD_CENTRED_A))
        for i, label in enumerate(COORD_PX):
            df.insert(at + i, label, pixels[:, i])
        optics = self.optics.copy()
        if "rlnTomoTiltSeriesPixelSize" not in optics and "rlnMicrographPixelSize" not in optics:
            group_pixel_size_A = pd.Series(pixel_size_A).groupby(
                df["rlnOpticsGroup"].to_numpy()).first()
            optics["rlnMicrographPixelSize"] = optics["rlnOpticsGroup"].map(group_pixel_size_A)
        return replace(self, particles=df, optics=optics)

    def with_centred_coordinates(self) -> ParticleSet:
        """Same set with RELION 5 ``rlnCenteredCoordinateX/Y/ZAngst`` computed if needed."""
        if self.has_centred_coordinates() or not self.has_pixel_coordinates():
            return self
        size, pixel_size_A = self._tomogram_geometry()
        df = self.particles.copy()
        pixels = df[list(COORD_PX)].to_numpy(float)
        centred = (pixels - tomogram_centre_px(size).numpy()) * pixel_size_A[:, None]
        at = df.columns.get_loc(COORD_PX[0])
        df = df.drop(columns=list(COORD_PX))
        for i, label in enumerate(COORD_CENTRED_A):
            df.insert(at + i, label, centred[:, i])
        return replace(self, particles=df)

    def without_subtomogram_angles(self) -> ParticleSet:
        """Same set with the subtomogram frame composed into angles and origins (tomogram frame)."""
        if present(self.particles, SUBTOMO_ANGLES) == 0:
            return self
        df = self.particles.copy()
        angles, shifts = self.angles_deg(), self.tomogram_shifts_A()
        df = df.drop(columns=[c for c in SUBTOMO_ANGLES if c in df])
        for i, label in enumerate(ANGLES):
            df[label] = angles[:, i]
        if present(df, ORIGIN_A):
            for i, label in enumerate(ORIGIN_A):
                df[label] = shifts[:, i]
        return replace(self, particles=df)

    def subset(self, index: np.ndarray | list[int]) -> ParticleSet:
        """The particles at positional ``index`` (optics groups unchanged)."""
        rows = self.particles.iloc[np.asarray(index)].reset_index(drop=True)
        return replace(self, particles=rows)


def compose_subtomogram(particle: torch.Tensor, subtomogram: torch.Tensor) -> torch.Tensor:
    """Full RELION matrix from a particle matrix relative to its subtomogram frame.

    RELION 4/5 (``ParticleSet::getMatrix3x3``): A = A_subtomogram · A_particle.
    """
    return subtomogram @ particle


def warp_tomostar_name(name: str) -> str:
    """Warp's tilt-series name: ``a/TS_01.mrc_15.00Apx.mrc`` → ``TS_01.mrc.tomostar``.

    Warp names reconstructions ``<tilt series>_<pixel size>Apx.mrc``; dynamo2warp maps them back.
    """
    base = Path(str(name)).name
    if base.endswith(".tomostar"):
        return base
    root = re.sub(r"_\d+(\.\d+)?Apx\.mrc$", "", base)
    if root == base:
        root = tomo_name_from_path(base)
    return root + ".tomostar"


def tomo_name_from_path(name: str) -> str:
    """``/a/TS_01.tomostar`` or ``tomo_ts01.mrc_15.00Apx.mrc`` → ``TS_01`` / ``tomo_ts01``."""
    stem = Path(str(name)).name.removesuffix(".tomostar")
    stem = re.sub(r"\.mrc_\d+(\.\d+)?Apx\.mrc$", ".mrc", stem)
    for suffix in (".mrc", ".rec", ".st", ".mrcs"):
        stem = stem.removesuffix(suffix)
    return stem
