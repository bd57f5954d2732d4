"""Format interop as library functions; each ``subtomo`` conversion command calls one of them."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.errors import InputError
from subtomo.geometry.euler import matrix_to_euler
from subtomo.io import dynamo, opus, poses
from subtomo.io.files import atomic_path, check_not_input, resolve
from subtomo.io.particles import ANGLES, COORD_PX, ORIGIN_A, ParticleSet, present
from subtomo.io.star import read_particles, read_tomograms, write_particles

POSE_FORMATS = ("opus", "cryodrgn")


def dynamo2star(
    table: str | Path,
    table_map: str | Path | None,
    output: str | Path,
    *,
    pixel_size_A: float | None = None,
    flavour: str = "auto",
    tomograms: str | Path | None = None,
) -> tuple[ParticleSet, str]:
    """Dynamo table (+ table map) → particle STAR (replaces dynamo2m's ``dynamo2warp``).

    Coordinates x+dx, y+dy, z+dz in tomogram pixels (``pixel_size_A`` Å each); angles to RELION.
    Returns the particles and the flavour written.
    """
    check_not_input(output, table, table_map, tomograms)
    mapping = None if table_map is None else dynamo.read_table_map(table_map)
    ps = dynamo.table_to_particles(dynamo.read_table(table), mapping, pixel_size_A=pixel_size_A,
                                   source=table, map_source=table_map)
    if tomograms is not None:
        ps.tomograms = read_tomograms(tomograms)
        ps.particles.insert(0, "rlnTomoName", ps.tomo_names())
    if flavour in ("relion31", "relion4", "relion5") and "rlnImagePixelSize" not in ps.optics:
        raise InputError(table, f"{flavour} needs the tomogram pixel size: pass --angpix",
                         field="apix (column 36)")
    written = write_particles(ps, output, flavour)
    return ps, written


def star2dynamo(
    star: str | Path, output: str | Path, *, tomograms: str | Path | None = None,
    pixel_size_A: float | None = None,
) -> tuple[Path, Path]:
    """Particle STAR → Dynamo table (centres in x, y, z) and table map beside it (``.doc``)."""
    output = Path(output)
    if output.suffix != ".tbl":
        output = output.with_suffix(".tbl")
    doc = output.with_suffix(".doc")
    check_not_input(output, star, tomograms)
    check_not_input(doc, star, tomograms)
    ps = read_particles(star, pixel_size_A=pixel_size_A, tomograms=tomograms)
    table, mapping = dynamo.particles_to_table(ps)
    dynamo.write_table(table, output)
    dynamo.write_table_map(mapping, doc)
    return output, doc


def star_downgrade(
    star: str | Path, output: str | Path | None = None, *, keep_origins: bool = False
) -> Path:
    """RELION 3.1+ → 3.0, as dynamo2m's ``relion_star_downgrade`` (default ``<stem>_rln3.0.star``).

    By default shifts are applied to the coordinates (centre = coordinate − origin, in tomogram
    pixels) and the origins dropped, ready for re-extraction in Warp; ``keep_origins`` keeps
    them as ``rlnOriginX/Y/Z`` in pixels instead.
    """
    star = Path(star)
    output = Path(output) if output else star.with_name(f"{star.stem}_rln3.0.star")
    check_not_input(output, star)
    ps = read_particles(star)
    if not keep_origins:
        ps = recentre(ps)
    write_particles(ps, output, "relion30")
    return output


def recentre(ps: ParticleSet) -> ParticleSet:
    """Apply shifts to pixel coordinates (centre = coordinate − origin) and drop the origins."""
    ps = ps.with_pixel_coordinates()
    if present(ps.particles, ORIGIN_A) == 0 or not ps.has_pixel_coordinates():
        return ps
    df = ps.particles.copy()
    shift_px = ps.tomogram_shifts_A() / ps.coordinate_pixel_size_A()[:, None]
    for i, label in enumerate(COORD_PX):
        if label in df:
            df[label] = df[label].to_numpy(float) - shift_px[:, i]
    return replace(ps, particles=df.drop(columns=[c for c in ORIGIN_A if c in df]))


def star_convert(
    star: str | Path, output: str | Path, *, flavour: str = "auto",
    pixel_size_A: float | None = None, tomograms: str | Path | None = None,
) -> str:
    """Any particle STAR flavour → ``flavour`` (``auto``: RELION 5 when possible, else 4)."""
    check_not_input(output, star, tomograms)
    ps = read_particles(star, pixel_size_A=pixel_size_A, tomograms=tomograms)
    return write_particles(ps, output, flavour)


def select_random(star: str | Path, output: str | Path, n: int, seed: int = 0) -> ParticleSet:
    """A random subset of ``n`` particles, in file order, same flavour as the input."""
    check_not_input(output, star)
    ps = read_particles(star)
    if n <= 0:
        raise InputError(star, f"asked for {n} particles; need at least 1", field="--n")
    if n > len(ps):
        raise InputError(star, f"asked for {n} particles but the file has {len(ps)}",
                         field="--n")
    chosen = np.sort(np.random.default_rng(seed).choice(len(ps), size=n, replace=False))
    subset = ps.subset(chosen)
    write_particles(subset, output, same_flavour(ps))
    return subset


def same_flavour(ps: ParticleSet) -> str:
    return ps.flavour if ps.flavour in ("relion5", "relion4", "relion31", "relion30",
                                        "warp") else "auto"


def export_poses(
    star: str | Path, output: str | Path, *, box_px: int, pixel_size_A: float | None = None,
    fmt: str = "opus", tilts: str | Path | None = None, tilt_sign: float = 1.0,
    tilt_tables: list[pd.DataFrame] | None = None,
) -> int:
    """Poses for the heterogeneity tools (OPUS-TOMO ``parse_pose_star`` or cryoDRGN) as pickle.

    OPUS with a tilt scheme (``tilts``: a JSON with ``tilt_range_deg``, ``tilt_step_deg``,
    ``dose_per_tilt``, ``order`` as ``subtomo simulate`` writes; default ``simulation.json``
    beside ``star``): also ``<output stem>.star`` and ``<output stem>_ctf/*.csv``, what
    ``dsd train_tomo --warp --datadir <output folder>`` reads (:mod:`subtomo.io.opus`).
    ``tilt_tables``: each particle's CSV rows already made (subtomograms cut from tilt series:
    :func:`subtomo.tomo.export_opus.opus_tilt_tables`), in place of a tilt scheme.
    """
    if fmt not in POSE_FORMATS:
        raise InputError(None, f"unknown pose format {fmt!r}; choose from {POSE_FORMATS}")
    check_not_input(output, star, tilts)
    ps = read_particles(star, pixel_size_A=pixel_size_A)
    scheme = (_opus_tilt_scheme(star, tilts) if fmt == "opus" and tilt_tables is None
              else None)
    resolved_pixel_size_A = (pixel_size_A if pixel_size_A is not None
                             else float(np.nanmean(ps.pixel_size_A())))
    if not np.isfinite(resolved_pixel_size_A):
        raise InputError(star, "no pixel size; pass --Apix", field="rlnImagePixelSize")
    # poses in the particles' volumes (ParticleSet.volume_poses): 3D subtomograms are cut in
    # their subtomogram frames (the relative angles and origins), 2D stacks are gathered in the
    # tomogram frame (the frames composed in)
    has_angles = present(ps.particles, ANGLES) == 3
    matrices, shifts = ps.volume_poses()
    angles = matrix_to_euler(matrices).numpy() if has_angles else np.zeros((len(ps), 3))
    if fmt == "opus":
        obj = poses.poses_opus(angles, shifts, box_px, resolved_pixel_size_A)
    else:
        obj = poses.poses_cryodrgn(angles, shifts, box_px, resolved_pixel_size_A)
    if scheme is not None:
        tilt_tables = _scheme_tables(ps, Path(star), scheme, resolved_pixel_size_A, tilt_sign)
    if fmt == "opus" and tilt_tables is not None:
        _write_opus_ctf(ps, Path(star), Path(output), tilt_tables, shifts / resolved_pixel_size_A)
    poses.write_poses_pickle(obj, output, inputs=(star,))
    return len(ps)


def _opus_tilt_scheme(star: str | Path, tilts: str | Path | None):
    """The tilt scheme for OPUS's per-tilt CSVs, or None (poses only) without one."""
    path = Path(tilts) if tilts is not None else Path(star).parent / "simulation.json"
    if not path.exists():
        if tilts is not None:
            raise InputError(path, "tilt scheme file not found", field="--tilts")
        return None
    try:
        data = json.loads(path.read_text())
        builders = {"dose-symmetric": TiltScheme.dose_symmetric,
                    "sequential": TiltScheme.sequential, "bidirectional": TiltScheme.bidirectional}
        return builders[data["order"]](tilt_range_deg=float(data["tilt_range_deg"]),
                                       tilt_step_deg=float(data["tilt_step_deg"]),
                                       dose_per_tilt=float(data["dose_per_tilt"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a tilt scheme ({exc})", field="--tilts") from None


def _scheme_tables(ps: ParticleSet, star: Path, scheme, pixel_size_A: float,
                   tilt_sign: float) -> list[pd.DataFrame]:
    """Each particle's OPUS CSV rows from one tilt scheme and its own defocus and optics."""
    df = ps.particles
    if "rlnDefocusU" not in df:
        raise InputError(star, "OPUS needs each particle's defocus", field="rlnDefocusU")
    voltage, cs, amp = _microscope(ps, star)
    offsets = np.asarray(scheme.defocus_offset_A, float)
    dfv = df["rlnDefocusV"] if "rlnDefocusV" in df else df["rlnDefocusU"]
    angle = df["rlnDefocusAngle"] if "rlnDefocusAngle" in df else pd.Series(0.0, index=df.index)
    frames = opus.scheme_frames(scheme, tilt_sign)
    exposure = np.asarray(scheme.pre_exposure_e_per_A2, float)
    return [opus.tilt_table(frames, exposure_e_per_A2=exposure,
                            defocus_u_A=float(df["rlnDefocusU"].iloc[i]) + offsets,
                            defocus_v_A=float(dfv.iloc[i]) + offsets,
                            astigmatism_angle_deg=np.full(len(offsets), float(angle.iloc[i])),
                            voltage_kv=float(voltage[i]), cs_mm=float(cs[i]),
                            amplitude_contrast=float(amp[i]), pixel_size_A=pixel_size_A)
            for i in range(len(df))]


def _microscope(ps: ParticleSet, star: Path) -> tuple[np.ndarray, ...]:
    """Voltage, Cs and amplitude contrast per particle; refused where any is missing."""
    values = tuple(np.asarray(ps.optics_column(c), float) for c in
                   ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    for label, v in zip(("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"),
                        values, strict=True):
        if not np.isfinite(v).all():  # no guessed microscope
            raise InputError(star, "OPUS's CTF needs it for every particle", field=label)
    return values


def _write_opus_ctf(ps: ParticleSet, star: Path, output: Path, tables: list[pd.DataFrame],
                    shifts_px: np.ndarray) -> None:
    """``<stem>.star`` + ``<stem>_ctf/<particle>.csv`` beside ``output`` (paths relative to
    its folder, OPUS's ``--datadir``)."""
    df = ps.particles
    if "rlnImageName" not in df:
        raise InputError(star, "OPUS needs each particle's subtomogram", field="rlnImageName")
    folder = output.parent
    ctf_dir = folder / f"{output.stem}_ctf"
    ctf_dir.mkdir(parents=True, exist_ok=True)
    images, ctfs = [], []
    for i, name in enumerate(df["rlnImageName"].astype(str)):
        image = resolve(name, star.parent)
        images.append(os.path.relpath(image.resolve(), folder.resolve()))
        ctfs.append(f"{ctf_dir.name}/{i + 1:06d}_{Path(name).stem}.mrc")
        with atomic_path(folder / Path(ctfs[-1]).with_suffix(".csv")) as tmp:
            tables[i].to_csv(tmp, index=False)
    angles = df[list(ANGLES)].to_numpy(float) if present(df, ANGLES) == 3 else np.zeros((len(df),
                                                                                         3))
    table = pd.DataFrame({"rlnImageName": images, "rlnCtfImage": ctfs,
                          "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1],
                          "rlnAnglePsi": angles[:, 2], "rlnOriginX": shifts_px[:, 0],
                          "rlnOriginY": shifts_px[:, 1], "rlnOriginZ": shifts_px[:, 2]})
    opus.write_star(folder / f"{output.stem}.star", table)


def star_info(star: str | Path) -> dict:
    """Summary of a particle STAR file: flavour, counts, pixel sizes, tomograms, columns."""
    ps = read_particles(star)
    df = ps.particles
    names = df.get("rlnTomoName", df.get("rlnMicrographName", pd.Series(dtype=str)))
    pixel_size_A = ps.pixel_size_A()
    return {
        "file": str(star),
        "flavour": ps.flavour,
        "particles": len(ps),
        "optics_groups": len(ps.optics),
        "pixel_size_A": sorted({round(float(a), 6) for a in pixel_size_A if np.isfinite(a)}),
        "tomograms": int(names.nunique()),
        "coordinates": "centred Å" if ps.has_centred_coordinates() else (
            "pixels" if ps.has_pixel_coordinates() else "none"),
        "columns": list(df.columns),
    }
