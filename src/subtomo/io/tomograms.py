"""RELION tomogram sets, optimisation sets and trajectory (motion) sets ⇄ subtomo objects.

Tomogram sets (``TomogramSet::read`` / ``write`` and ``TomogramSet::loadTomogram`` in RELION 5
``src/jaz/tomography/tomogram_set.cpp``):

- RELION 5: ``tomograms.star`` holds ``data_global`` (one row per tilt series, with
  ``rlnTomoTiltSeriesStarFile``); each per-tilt-series STAR file holds ``data_<rlnTomoName>``
  with one row per tilt: ``rlnTomoXTilt/YTilt/ZRot`` (deg), ``rlnTomoXShiftAngst/YShiftAngst``,
  ``rlnDefocusU/V/Angle``, ``rlnMicrographPreExposure``, ``rlnMicrographName`` ...
- RELION 4: one file, ``data_global`` then ``data_<rlnTomoName>`` blocks with the projection
  matrices ``rlnTomoProjX/Y/Z/W`` (rows, written ``[a,b,c,d]``), per-tilt defocus and exposure;
  images from ``rlnTomoTiltSeriesName``. As RELION 5 does, matrices take precedence when a table
  has both; we turn them into the five parameters exactly (:func:`angles_from_matrices`), which
  needs the tilt-image size (from the stack header, or ``image_size=``).

WarpTools particle series (``ts_export_particles --2d``, and Warp 2's GUI export; e.g.
``tests/data/warptools_70s``) write a RELION 4 file that describes no real tilt series:

- ``rlnTomoTiltSeriesName`` is a placeholder (``dummy.mrc`` or ``dummy_tiltseries.mrc``);
- ``rlnTomoProjX/Y/Z`` are rotation-only: the 3×3 part is Warp's tilt rotation about the
  tomogram centre (``Matrix3.Euler(GetAngleInAllTilts(centre))``), the translation column is 0
  and ``rlnTomoProjW`` is ``[0,0,0,1]``; the per-tilt image shifts and Warp's deformation grids
  stay in Warp's XML;
- ``rlnDefocusU/V/Angle`` are at the tomogram centre; ``rlnCtfScalefactor`` is Warp's weight
  (cos tilt, ~0 for excluded tilts); ``rlnMicrographPreExposure`` is Warp's per-tilt dose;
- one row per tilt kept for export, in Warp's tilt order (by angle, not by exposure);
- the rows of the 3×3 part are those of Warp's ``Matrix3`` (``M11 M12 M13`` first), which acts
  on column vectors: image ``(x, y)`` and depth = ``R_t (p − centre)``, as RELION reads
  ``rlnTomoProjX/Y/Z``; Warp projects a particle at ``R_t A`` with ``A`` its RELION matrix
  (``TiltSeries.GetAnglesInOneTilt``; ``Matrix3.Euler`` is RELION's), as we do;
- ``rlnTomoHand`` was always −1 until warpem/warp 7ad2dcc (2026; since then −1, or +1 for a
  series whose defocus handedness Warp flipped, ``AreAnglesInverted``). Warp's own defocus is
  the centre's plus the depth (``GetPositionInAllTilts``), RELION's plus hand × depth; we keep
  RELION's reading of the file;
- the particles' ``rlnCoordinateX/Y/Z`` count the particles' pixels, not the tilt series'
  (:func:`subtomo.io.particle_series.attach_tomograms` converts them).

Such a tilt series is marked ``warptools``.

We read such matrices as RELION does, literally (tomogram voxel 0 projects onto image pixel
0), so that they round-trip unchanged; when the named stack is missing, the tilt-image size
(which the five parameters need but the matrices do not depend on) is taken as the tomogram's
``(X, Y)``. The per-tilt rotations and each particle's depth, hence its defocus, are right
(``Tomogram::getDepthOffset`` does not see the translation), and that is all that 2D particle
stacks, already centred on their particle, need. What cannot be done with these sets:
anything that needs positions in the tilt images: extracting from the tilt series,
``tomo-align`` (there are no images to fit shifts against), re-projecting a tomogram.

Optimisation sets: one unnamed block listing ``rlnTomoParticlesFile``, ``rlnTomoTomogramsFile``,
``rlnTomoTrajectoriesFile``, ``rlnTomoManifoldsFile``, ``rlnTomoReferenceMap1File/2File``,
``rlnTomoReferenceMaskFile``, ``rlnTomoReferenceFscFile`` (``OptimisationSet`` in
``optimisation_set.cpp``).

Trajectory sets (``motion.star``, ``Trajectory::read/write`` in ``motion/trajectory.cpp``):
``data_general`` with ``rlnParticleNumber``, then one block per particle named by its
``rlnTomoParticleName`` with one row per tilt (table order) of ``rlnOriginX/Y/ZAngst``: the
particle's displacement in that tilt, added to its position (``Trajectory::getShiftsInPix``).

File names inside these files are relative to the project directory, as RELION writes them
(:func:`subtomo.io.files.resolve` also finds them relative to the STAR file's folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.errors import InputError
from subtomo.geometry.tilt import angles_from_matrices, projection_matrices
from subtomo.geometry.tilt_series import DOF, SIZE
from subtomo.io.files import resolve
from subtomo.io.star import read_particles
from subtomo.io.star_text import read_numeric_loops, read_star, write_star
from subtomo.io.tilt_series import TiltSeries

MATRIX = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
OPTIMISATION_LABELS = {
    "particles": "rlnTomoParticlesFile", "tomograms": "rlnTomoTomogramsFile",
    "trajectories": "rlnTomoTrajectoriesFile", "manifolds": "rlnTomoManifoldsFile",
    "ref1": "rlnTomoReferenceMap1File", "ref2": "rlnTomoReferenceMap2File",
    "mask": "rlnTomoReferenceMaskFile", "fsc": "rlnTomoReferenceFscFile",
}
ORIGIN_A = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")


@dataclass
class TomogramSet:
    """Tilt series by name, in file order."""

    series: dict[str, TiltSeries]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, name: str) -> TiltSeries:
        try:
            return self.series[name]
        except KeyError:
            raise InputError(self.source, f"tomogram {name!r} is not in the tomogram set",
                             field="rlnTomoName") from None

    @property
    def names(self) -> list[str]:
        return list(self.series)

    def global_table(self) -> pd.DataFrame:
        """``data_global`` as one table (the columns of every tilt series' globals)."""
        return pd.DataFrame([dict(ts.globals) for ts in self.series.values()])


# ---- reading ----------------------------------------------------------------------------
GLOBAL_REQUIRED = ("rlnTomoName", "rlnTomoTiltSeriesPixelSize", *SIZE, "rlnVoltage",
                   "rlnSphericalAberration", "rlnAmplitudeContrast")
TILT_REQUIRED = (*DOF, "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                 "rlnMicrographPreExposure")


def _check_global(path: Path, row: dict) -> None:
    name = row.get("rlnTomoName")
    for label in GLOBAL_REQUIRED:
        if label not in row or pd.isna(row[label]):
            raise InputError(path, f"tomogram {name}: required column missing in data_global",
                             field=label)
    if not float(row["rlnTomoTiltSeriesPixelSize"]) > 0:
        raise InputError(path, f"tomogram {name}: pixel size must be positive",
                         field="rlnTomoTiltSeriesPixelSize")
    for label in SIZE:
        if not int(row[label]) > 0:
            raise InputError(path, f"tomogram {name}: size must be positive", field=label)


def _matrix_rows(path: Path, tilts: pd.DataFrame, name: str) -> np.ndarray:
    """``(T, 4, 4)`` matrices from ``rlnTomoProjX/Y/Z/W`` strings (``[a,b,c,d]``)."""
    out = np.empty((len(tilts), 4, 4))
    for i, label in enumerate(MATRIX):
        for t, value in enumerate(tilts[label]):
            try:
                row = [float(v) for v in str(value).strip().strip("[]").split(",")]
            except ValueError:
                row = []
            if len(row) != 4:
                raise InputError(path, f"tomogram {name}, tilt {t + 1}: {value!r} is not a "
                                 "4-vector [a,b,c,d]", field=label)
            out[t, i] = row
    return out


def _placeholder_size(ts: TiltSeries) -> None:
    """WarpTools' sets name a tilt-series stack that does not exist (module docstring): take
    the tomogram's ``(X, Y)`` as the image size, which the matrices do not depend on."""
    stack = ts.globals.get("rlnTomoTiltSeriesName")
    base = Path(ts.source).parent if ts.source else None
    if (ts.image_size is None and "rlnMicrographName" not in ts.tilts and stack is not None
            and not resolve(str(stack), base).is_file()):
        ts.image_size = ts.tomo_size_px[:2]


def _from_matrices(path: Path, ts: TiltSeries) -> TiltSeries:
    """RELION 4 matrices → the five parameters (exact; checked by re-projection)."""
    mats = torch.from_numpy(_matrix_rows(path, ts.tilts, ts.name))
    if not bool(mats[:, :3, 3].any()):
        _placeholder_size(ts)
        ts.warptools = True
    params = angles_from_matrices(mats, ts.pixel_size_A, ts.tomo_size_px, ts.image_size_px)
    again = projection_matrices(*params, ts.pixel_size_A, ts.tomo_size_px, ts.image_size_px)
    corners = torch.tensor([[x, y, z, 1.0] for x in (0, 1) for y in (0, 1) for z in (0, 1)],
                           dtype=torch.float64) * torch.tensor([*ts.tomo_size_px, 1.0])
    error = ((mats - again)[:, :2] @ corners.T).abs().max()
    if float(error) > 1e-3:
        raise InputError(path, f"tomogram {ts.name}: projection matrices are not rigid "
                         f"rotations (they differ by {float(error):.3g} px from the nearest "
                         "RELION 5 angles and shifts)", field="rlnTomoProjX")
    ts = ts.with_dof(*params)
    ts.tilts = ts.tilts.drop(columns=list(MATRIX))
    return ts


def _check_tilts(path: Path, ts: TiltSeries) -> None:
    if ts.n_tilts == 0:
        raise InputError(path, f"tomogram {ts.name}: the tilt table is empty",
                         field="rlnTomoName")
    if "rlnTomoYTilt" not in ts.tilts:
        raise InputError(path, f"tomogram {ts.name}: per-tilt column missing (neither RELION 5 "
                         "angles nor RELION 4 matrices)", field="rlnTomoYTilt")
    for label in TILT_REQUIRED:
        if label not in ts.tilts:
            raise InputError(path, f"tomogram {ts.name}: per-tilt column missing",
                             field=label)
    tilt = ts.column("rlnTomoYTilt")
    if not np.all(np.abs(tilt) <= 90.0):
        raise InputError(path, f"tomogram {ts.name}: tilt angle {tilt[np.abs(tilt) > 90][0]} "
                         "outside ±90°", field="rlnTomoYTilt")


def read_tomogram_set(path: str | Path, *, image_size: tuple[int, int] | None = None
                      ) -> TomogramSet:
    """Read a RELION 5 or RELION 4 ``tomograms.star`` (see the module docstring)."""
    path = Path(path)
    blocks = read_star(path)
    table = blocks.get("global")
    if not isinstance(table, pd.DataFrame):
        if isinstance(table, dict):
            table = pd.DataFrame([table])
        else:
            raise InputError(path, "not a tomogram set: no data_global table",
                             field="rlnTomoName")
    series: dict[str, TiltSeries] = {}
    for row in table.to_dict("records"):
        _check_global(path, row)
        name = str(row["rlnTomoName"])
        row["rlnTomoName"] = name
        source = path
        if "rlnTomoTiltSeriesStarFile" in row:
            tilt_file = resolve(str(row["rlnTomoTiltSeriesStarFile"]), path.parent)
            if not tilt_file.is_file():
                raise InputError(path, f"tomogram {name}: tilt-series file "
                                 f"{row['rlnTomoTiltSeriesStarFile']!r} not found",
                                 field="rlnTomoTiltSeriesStarFile")
            tilt_blocks = read_star(tilt_file)
            tables = {k: v for k, v in tilt_blocks.items() if isinstance(v, pd.DataFrame)}
            tilts = tables.get(name, next(iter(tables.values()), None))
            source = tilt_file
        else:
            tilts = blocks.get(name)
        if isinstance(tilts, dict):
            tilts = pd.DataFrame([tilts])
        if not isinstance(tilts, pd.DataFrame):
            raise InputError(path, f"tomogram {name}: no per-tilt table data_{name}",
                             field="rlnTomoTiltSeriesStarFile")
        ts = TiltSeries(globals=row, tilts=tilts.reset_index(drop=True), source=str(source),
                        image_size=image_size)
        if all(label in tilts for label in MATRIX):
            ts = _from_matrices(Path(source), ts)
        _check_tilts(Path(source), ts)
        if name in series:
            raise InputError(path, f"tomogram {name!r} appears twice", field="rlnTomoName")
        series[name] = ts
    return TomogramSet(series, str(path))


# ---- writing ----------------------------------------------------------------------------
def project_path(path: Path) -> str:
    """How RELION names a file: relative to the project (working) directory when inside it."""
    rel = os.path.relpath(path.resolve(), Path.cwd())
    return str(path.resolve()) if rel.startswith("..") else rel


def _matrix_strings(ts: TiltSeries) -> dict[str, list[str]]:
    mats = ts.matrices().numpy()
    return {label: ["[" + ",".join(repr(float(v)) for v in mats[t, i]) + "]"
                    for t in range(ts.n_tilts)] for i, label in enumerate(MATRIX)}


def _stack_name(ts: TiltSeries) -> str | None:
    """A stack holding the tilts in table order (RELION 4's ``rlnTomoTiltSeriesName``)."""
    if "rlnTomoTiltSeriesName" in ts.globals:
        return str(ts.globals["rlnTomoTiltSeriesName"])
    if "rlnMicrographName" not in ts.tilts:
        return None
    names = ts.tilts["rlnMicrographName"].astype(str)
    files = {n.split("@")[-1] for n in names}
    indices = [int(n.split("@")[0]) if "@" in n else 1 for n in names]
    return files.pop() if len(files) == 1 and indices == list(range(1, ts.n_tilts + 1)) else None


def write_tomogram_set(tset: TomogramSet | list[TiltSeries], path: str | Path,
                       flavour: str = "relion5", tilt_series_dir: str = "tilt_series",
                       matrices: bool = False) -> None:
    """Write ``tomograms.star`` as ``relion5`` (plus ``<dir>/<name>.star`` per tilt series beside
    it) or ``relion4`` (one file, projection matrices). ``matrices``: RELION 5 per-tilt tables
    also get RELION 4's ``rlnTomoProjX/Y/Z/W`` (the same geometry; readers prefer them)."""
    if flavour not in ("relion5", "relion4"):
        raise InputError(None, f"unknown tomogram-set flavour {flavour!r}; choose relion5 or "
                         "relion4", field="--flavour")
    series = list(tset.series.values()) if isinstance(tset, TomogramSet) else list(tset)
    path = Path(path)
    rows, blocks = [], {}
    for ts in series:
        row = dict(ts.globals)
        tilts = ts.tilts.copy()
        if flavour == "relion5":
            tilts = tilts.drop(columns=[c for c in MATRIX if c in tilts])
            if matrices:
                for label, values in _matrix_strings(ts).items():
                    tilts[label] = values
            tilt_path = path.parent / tilt_series_dir / f"{ts.name}.star"
            write_star({ts.name: tilts}, tilt_path)
            row["rlnTomoTiltSeriesStarFile"] = project_path(tilt_path)
        else:
            row.pop("rlnTomoTiltSeriesStarFile", None)
            stack = _stack_name(ts)
            if stack is not None:
                row["rlnTomoTiltSeriesName"] = stack
            row["rlnTomoFrameCount"] = ts.n_tilts
            tilts = tilts.drop(columns=[c for c in DOF if c in tilts])
            for label, values in _matrix_strings(ts).items():
                tilts.insert(list(MATRIX).index(label), label, values)
            blocks[ts.name] = tilts
        rows.append(row)
    write_star({"global": pd.DataFrame(rows), **blocks}, path)


# ---- optimisation sets ------------------------------------------------------------------
@dataclass
class OptimisationSet:
    """Files of a RELION optimisation set (resolved paths; None where absent)."""

    files: dict[str, Path | None] = field(default_factory=dict)
    source: str | None = None

    def __getattr__(self, key: str) -> Path | None:
        if key in OPTIMISATION_LABELS:
            return self.files.get(key)
        raise AttributeError(key)

    def require(self, key: str) -> Path:
        value = self.files.get(key)
        if value is None:
            raise InputError(self.source, f"the optimisation set names no {key} file",
                             field=OPTIMISATION_LABELS[key])
        if not value.is_file():
            raise InputError(self.source, f"{key} file {str(value)!r} not found",
                             field=OPTIMISATION_LABELS[key])
        return value


def read_optimisation_set(path: str | Path) -> OptimisationSet:
    """Read an ``optimisation_set.star`` (any block; list or one-row loop)."""
    path = Path(path)
    blocks = read_star(path)
    entries: dict = {}
    for block in blocks.values():
        if isinstance(block, pd.DataFrame) and len(block):
            block = block.iloc[0].to_dict()
        if isinstance(block, dict):
            entries.update(block)
    files = {key: resolve(str(entries[label]), path.parent) if label in entries else None
             for key, label in OPTIMISATION_LABELS.items()}
    if files["particles"] is None and files["tomograms"] is None:
        raise InputError(path, "not an optimisation set: names neither particles nor "
                         "tomograms", field="rlnTomoParticlesFile")
    return OptimisationSet(files, str(path))


def write_optimisation_set(path: str | Path, **files: str | Path | None) -> None:
    """Write an optimisation set; keys as in ``OPTIMISATION_LABELS`` (``particles=`` ...)."""
    unknown = set(files) - set(OPTIMISATION_LABELS)
    if unknown:
        raise ValueError(f"unknown optimisation-set entries {sorted(unknown)}")
    entries = {OPTIMISATION_LABELS[k]: project_path(Path(v)) for k, v in files.items()
               if v is not None}
    write_star({"": entries}, path)


# ---- trajectory sets --------------------------------------------------------------------
def read_motion(path: str | Path) -> dict[str, np.ndarray]:
    """Trajectories by particle name: ``(T, 3)`` displacements (x, y, z) in Å per tilt."""
    path = Path(path)
    blocks = read_numeric_loops(path) or read_star(path)
    general = blocks.pop("general", None)
    if not isinstance(general, dict) or "rlnParticleNumber" not in general:
        raise InputError(path, "not a trajectory set: data_general without rlnParticleNumber",
                         field="rlnParticleNumber")
    out = {}
    for name, block in blocks.items():
        if isinstance(block, dict):
            block = pd.DataFrame([block])
        missing = [c for c in ORIGIN_A if c not in block]
        if missing:
            raise InputError(path, f"trajectory {name}: column missing", field=missing[0])
        out[str(name)] = block[list(ORIGIN_A)].to_numpy(np.float64)
    if len(out) < int(general["rlnParticleNumber"]):
        raise InputError(path, f"{len(out)} trajectories but rlnParticleNumber is "
                         f"{general['rlnParticleNumber']}", field="rlnParticleNumber")
    return out


def write_motion(path: str | Path, trajectories: dict[str, np.ndarray]) -> None:
    """Write a trajectory set (``(T, 3)`` Å per particle name, tilts in table order)."""
    blocks: dict = {"general": {"rlnParticleNumber": len(trajectories)}}
    for name, shifts in trajectories.items():
        shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 3)
        blocks[str(name)] = pd.DataFrame(shifts, columns=list(ORIGIN_A))
    write_star(blocks, path)


@dataclass
class TomoInputs:
    """What a tilt-series job reads: particles, tomograms, optional motion and references."""

    particles: object  # ParticleSet
    tomograms: TomogramSet
    motion: dict[str, np.ndarray] | None
    files: dict[str, Path | None]
    optimisation_set: Path | None = None

    def paths(self) -> list[Path]:
        """Every file the job reads: the optimisation set, the files it names (references,
        mask, FSC included), each tilt series' STAR file and image stacks, and the particles'
        images where they name any."""
        out = [self.optimisation_set, *self.files.values(), *tomogram_files(self.tomograms)]
        if self.particles is not None:
            out += self.particles.files()
        return [Path(p) for p in dict.fromkeys(out) if p is not None]


def tomogram_files(tset: TomogramSet) -> list[Path]:
    """The tomogram set's STAR file, each tilt series' STAR file and its image stacks."""
    out = [Path(tset.source)] if tset.source else []
    for ts in tset.series.values():
        if ts.source:
            out.append(Path(ts.source))
        try:
            out += [path for path, _ in ts.image_sources()]
        except InputError:
            continue  # no images named: nothing to protect (jobs that need them refuse later)
    return list(dict.fromkeys(out))


def read_inputs(optimisation_set: str | Path | None = None, *, particles: str | Path | None = None,
                tomograms: str | Path | None = None, motion: str | Path | None = None,
                need_particles: bool = True) -> TomoInputs:
    """RELION's ``--i`` and/or ``--p --t --mot``: explicit files override the optimisation set's."""
    files: dict[str, Path | None] = {key: None for key in OPTIMISATION_LABELS}
    opt = None
    if optimisation_set is not None:
        opt = read_optimisation_set(optimisation_set)
        files.update(opt.files)
    for key, value in (("particles", particles), ("tomograms", tomograms),
                       ("trajectories", motion)):
        if value is not None:
            files[key] = Path(value)
    for key in ("particles", "tomograms") if need_particles else ("tomograms",):
        path = files[key]
        if path is None:
            raise InputError(optimisation_set, f"no {key} file: give --i optimisation_set.star "
                             f"or --{key[0]} {key}.star", field=OPTIMISATION_LABELS[key])
        if not path.is_file():
            raise InputError(opt.source if opt else path, f"{key} file {str(path)!r} not found",
                             field=OPTIMISATION_LABELS[key])
    tset = read_tomogram_set(files["tomograms"])
    ps = read_particles(files["particles"]) if files["particles"] is not None else None
    trajectories = None
    if files["trajectories"] is not None:
        if not files["trajectories"].is_file():
            raise InputError(files["trajectories"], "file not found",
                             field=OPTIMISATION_LABELS["trajectories"])
        trajectories = read_motion(files["trajectories"])
    return TomoInputs(ps, tset, trajectories, files,
                      None if optimisation_set is None else Path(optimisation_set))
