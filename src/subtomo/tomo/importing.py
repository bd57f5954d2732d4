"""Tilt series from other programs' files → RELION 5 tilt series, and back (IMOD, AreTomo).

``import_tilt_series`` builds one :class:`TiltSeries` from a tilt-image stack and any of:
a SerialEM ``.mdoc`` (nominal angles, exposure order, pixel size, tilt axis), an alignment
(IMOD ``.xf/.tlt[/.xtilt]`` + ``tilt.com``, AreTomo ``.aln`` or a Warp tilt-series XML), CTF
(ctfplotter ``.defocus`` or the Warp XML) and exposure (``.order`` list, Warp ``Dose`` or the
mdoc). Every source is checked against the stack and the others first: a file with fewer (or
more) tilts than the stack, a pixel size that disagrees between files, NaN or tilt angles
beyond ±90° fail with one line naming the file and field, before anything is written. A Warp
XML's ``CTF/PixelSize`` is not the stack's (``ts_stack --angpix`` bins): it gives the binning
that a note reports.
Each alignment format has its adapter (:mod:`subtomo.tomo.import_formats`); the merge takes
each quantity from the first source that gives it: nominal angles from the mdoc, else the
alignment or ``--tlt``; exposure from Warp, the ``.order`` list, the mdoc or ``--dose_per_tilt``;
CTF from ctfplotter, Warp or ``--defocus_um``; voltage from ``--voltage``, the mdoc or Warp.
``export_tilt_series`` writes IMOD (``.xf .tlt .xtilt .defocus``) or AreTomo (``.aln``) files.

Each program's tomogram frame is its own: an alignment imported from IMOD places particles
picked on IMOD's (``trimvol -rx``) tomogram, one from Warp particles picked in Warp's
(:mod:`subtomo.geometry.tilt_imod`, :mod:`subtomo.io.warp_xml`, :mod:`subtomo.io.aretomo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo.errors import InputError
from subtomo.geometry import tilt_imod
from subtomo.geometry.tilt import RelionParameters
from subtomo.io import aretomo, imod, warp_xml
from subtomo.io.files import check_not_input, check_outputs
from subtomo.io.mdoc import MdocTiltSeries, read_mdoc
from subtomo.io.mrc import read_mrc_header
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import TomogramSet, project_path, write_tomogram_set
from subtomo.tomo import import_formats

PIXEL_TOLERANCE = 1e-3  # relative


@dataclass
class Sources:
    """The files of one tilt series (None where not given)."""

    name: str
    stack: Path
    mdoc: Path | None = None
    imod: Path | None = None  # basename: BASE.xf, BASE.tlt (BASE.xtilt, tilt.com beside)
    tilt_com: Path | None = None
    aln: Path | None = None
    warp_xml: Path | None = None
    tlt: Path | None = None  # nominal angles only (no alignment)
    defocus: Path | None = None  # ctfplotter
    order: Path | None = None  # seed 002's exposure list


@dataclass
class Optics:
    """What the files may not say. Lengths in Å, px; doses in e/Å²."""

    pixel_size_A: float | None = None
    voltage_kv: float | None = None
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    dose_per_tilt: float | None = None
    order_scale: float = 1.0
    tomo_size_px: tuple[int, int, int] | None = None
    thickness_px: int | None = None
    tilt_axis_deg: float | None = None
    defocus_um: float | None = None
    hand: float | None = None
    defocus_frame: str = "raw"  # ctfplotter astigmatism angles: raw or aligned stack


@dataclass
class Imported:
    tilt_series: TiltSeries
    notes: list[str] = field(default_factory=list)


def _stack_header(path: Path) -> tuple[int, int, int, float]:
    """``(n_images, W, H, voxel size Å)`` of a tilt-image stack."""
    if not path.is_file():
        raise InputError(path, "tilt-series stack not found", field="--stack")
    (nz, ny, nx), voxel = read_mrc_header(path)
    return nz, nx, ny, voxel


def _agree(values: list[tuple[str, str, float]]) -> float | None:
    """One pixel size from ``(source, field, value)`` candidates, which must agree."""
    if not values:
        return None
    _, _, ref = values[0]
    for source, name, value in values[1:]:
        if abs(value - ref) > PIXEL_TOLERANCE * ref:
            first = values[0]
            raise InputError(source, f"pixel size {value:g} Å disagrees with {first[2]:g} Å "
                             f"from {first[0]} ({first[1]})", field=name)
    return ref


def _warp_pixel_size(pixel_size_A: float | None, warp: warp_xml.WarpTiltSeries, src: Sources,
                     notes: list[str]) -> float | None:
    """The stack's pixel size against the Warp XML's ``CTF/PixelSize`` (the pixel size Warp
    fitted the CTF at, usually the movies'; ``ts_stack --angpix`` bins the stack): the stack's
    (or ``--angpix``) wins and the binning ``pixel_size_A / CTF/PixelSize`` is noted; the XML's only
    where neither the stack nor ``--angpix`` gives one. Warp's shifts are in Å either way."""
    xml_pixel_size_A = warp.pixel_size_A
    if xml_pixel_size_A is None or not xml_pixel_size_A > 0:
        return pixel_size_A
    if pixel_size_A is None:
        notes.append(f"{src.stack}: no pixel size in the header; using {xml_pixel_size_A:g} Å from "
                     f"{src.warp_xml} (CTF/PixelSize): give --angpix if the stack is binned")
        return xml_pixel_size_A
    binning = pixel_size_A / xml_pixel_size_A
    if abs(binning - 1.0) > PIXEL_TOLERANCE:
        shown = f"{round(binning)}" if abs(binning - round(binning)) < PIXEL_TOLERANCE \
            else f"{binning:.4g}"
        notes.append(f"stack {pixel_size_A:g} Å/px, Warp XML CTF/PixelSize {xml_pixel_size_A:g} Å: "
                     f"binning {shown} inferred (ts_stack --angpix); Warp's shifts and "
                     f"axis offsets (Å) converted at {pixel_size_A:g} Å/px")
    return pixel_size_A


def import_tilt_series(src: Sources, optics: Optics) -> Imported:
    """One tilt series from its files (see the module docstring): each alignment format's
    adapter (:mod:`subtomo.tomo.import_formats`), then the merge, one quantity at a time."""
    notes: list[str] = []
    n_stack, width, height, header_pixel_size_A = _stack_header(src.stack)
    mdoc: MdocTiltSeries | None = read_mdoc(src.mdoc) if src.mdoc else None
    warp, aln, imod_alignment = import_formats.read_alignment_files(
        src.imod, src.tilt_com, src.aln, src.warp_xml, notes)
    pixel_size_A = _pixel_size(src, optics, mdoc, header_pixel_size_A, warp, notes)
    if mdoc is not None:
        import_formats.check_count(src.mdoc, "ZValue sections", mdoc.n_tilts, n_stack, src.stack,
                            "ZValue")
    alignment = None
    if imod_alignment is not None:
        alignment = import_formats.from_imod(imod_alignment, n_stack, src.stack)
    elif aln is not None:
        alignment = import_formats.from_aretomo(aln, src.aln, n_stack, src.stack, notes)
    elif warp is not None:
        alignment = import_formats.from_warp(warp, src.warp_xml, n_stack, src.stack, notes)
    tlt = None
    if src.tlt is not None:
        tlt = imod.read_angles(src.tlt, "tilt-angle file", "tilt angle")
        import_formats.check_count(src.tlt, "tilt angles", len(tlt), n_stack, src.stack,
                            "tilt angle")
    if alignment is None:
        alignment = import_formats.from_angles(tlt, n_stack)
    images = alignment.images
    nominal, mdoc_of = _nominal_angles(src, mdoc, alignment, n_stack, notes)
    axis = optics.tilt_axis_deg
    if axis is None and mdoc is not None:
        axis = mdoc.tilt_axis_deg
    size = _tomogram_size(src, optics, alignment, width, height)
    params = _geometry(src, alignment, pixel_size_A, size, (width, height), nominal, axis, notes)
    if axis is None:
        axis = float(np.median(params.zrot))
    pre, dose_per_tilt = _exposure(src, optics, alignment, mdoc, mdoc_of, nominal, notes)
    ctfplotter_angles = (alignment.ctfplotter_angles_deg
                         if alignment.ctfplotter_angles_deg is not None else tlt)
    u, v, angle, phase = _ctf(src, optics, alignment, n_stack, ctfplotter_angles, params)
    voltage = optics.voltage_kv
    if voltage is None:
        voltage = (mdoc.voltage_kv if mdoc is not None and mdoc.voltage_kv
                   else alignment.voltage_kv() if alignment.voltage_kv is not None else None)
    if voltage is None:
        raise InputError(src.stack, "no voltage in the files; give --voltage (kV)",
                         field="--voltage")
    hand = optics.hand if optics.hand is not None else (
        alignment.hand if alignment.hand is not None else -1.0)
    stack_name = project_path(Path(src.stack))
    tilts = pd.DataFrame({
        "rlnMicrographName": [f"{int(k) + 1}@{stack_name}" for k in images],
        "rlnTomoNominalStageTiltAngle": nominal,
        "rlnTomoNominalTiltAxisAngle": float(axis),
        "rlnMicrographPreExposure": pre,
        "rlnDefocusU": u, "rlnDefocusV": v, "rlnDefocusAngle": angle,
        "rlnTomoXTilt": params.xtilt, "rlnTomoYTilt": params.ytilt, "rlnTomoZRot": params.zrot,
        "rlnTomoXShiftAngst": params.shift_x_A, "rlnTomoYShiftAngst": params.shift_y_A,
    })
    if phase is not None:
        tilts["rlnPhaseShift"] = phase
    globals_ = {
        "rlnTomoName": src.name,
        "rlnVoltage": float(voltage), "rlnSphericalAberration": float(optics.cs_mm),
        "rlnAmplitudeContrast": float(optics.amplitude_contrast),
        "rlnMicrographOriginalPixelSize": pixel_size_A, "rlnTomoHand": float(hand),
        "rlnTomoTiltSeriesPixelSize": pixel_size_A, "rlnTomoSizeX": size[0],
        "rlnTomoSizeY": size[1],
        "rlnTomoSizeZ": size[2], "rlnTomoImportFractionalDose": float(dose_per_tilt),
        "rlnOpticsGroupName": "opticsGroup1",
    }
    if np.array_equal(images, np.arange(n_stack)):  # RELION 4's stack: one image per tilt
        globals_["rlnTomoTiltSeriesName"] = stack_name
    _check_table(src, tilts, params, images)
    ts = TiltSeries(globals_, tilts, source=None, image_size=(width, height))
    return Imported(ts, notes)


def _pixel_size(src: Sources, optics: Optics, mdoc: MdocTiltSeries | None,
                header_pixel_size_A: float,
                warp: warp_xml.WarpTiltSeries | None, notes: list[str]) -> float:
    """``--angpix``, the mdoc's ``PixelSpacing`` and the stack header's (1 Å: unset), which
    must agree; then the Warp XML's (see :func:`_warp_pixel_size`)."""
    candidates = []
    if optics.pixel_size_A is not None:
        candidates.append(("--angpix", "--angpix", optics.pixel_size_A))
    if mdoc is not None and mdoc.pixel_size_A is not None:
        candidates.append((src.mdoc, "PixelSpacing", mdoc.pixel_size_A))
    if header_pixel_size_A > 0 and abs(header_pixel_size_A - 1.0) > 1e-6:
        candidates.append((src.stack, "voxel size (MRC header)", header_pixel_size_A))
    pixel_size_A = _agree(candidates)
    if warp is not None:
        pixel_size_A = _warp_pixel_size(pixel_size_A, warp, src, notes)
    if pixel_size_A is None or not pixel_size_A > 0:
        raise InputError(src.stack, "no pixel size in the files; give --angpix", field="--angpix")
    return pixel_size_A


def _nominal_angles(src: Sources, mdoc: MdocTiltSeries | None,
                    alignment: import_formats.StackAlignment, n_stack: int, notes: list[str]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Nominal angle of each kept image (the mdoc's, else the alignment's or ``--tlt``'s) and
    the mdoc section of each stack image (matched by tilt angle, see :func:`_match_mdoc`)."""
    mdoc_of = np.arange(n_stack)
    if mdoc is not None and alignment.stack_angles_deg is not None:
        mdoc_of = _match_mdoc(src.mdoc, mdoc.tilt_deg, alignment.stack_angles_deg)
        if not np.array_equal(mdoc_of, np.arange(n_stack)):
            notes.append(f"{src.mdoc}: sections matched to the stack by tilt angle "
                         "(the stack is not in ZValue order)")
    if mdoc is not None:
        return mdoc.tilt_deg[mdoc_of[alignment.images]], mdoc_of
    if alignment.nominal_deg is None:
        raise InputError(src.stack, "no tilt angles: give --mdoc, --tlt or an alignment",
                         field="--mdoc")
    return alignment.nominal_deg, mdoc_of


def _tomogram_size(src: Sources, optics: Optics, alignment: import_formats.StackAlignment,
                   width: int, height: int) -> tuple[int, int, int]:
    """``--tomo_size``, else the image size and ``--thickness`` or the alignment's (px)."""
    if optics.tomo_size_px is not None:
        size = tuple(int(v) for v in optics.tomo_size_px)
    else:
        z = optics.thickness_px
        if z is None:
            z = alignment.thickness_px
        if z is None:
            raise InputError(src.stack, "no tomogram thickness: give --thickness (px) or "
                             "--tomo_size X Y Z", field="--thickness")
        size = (width, height, int(z))
    if min(size) <= 0:
        raise InputError(None, f"tomogram size {size} must be positive", field="--tomo_size")
    return size


def _geometry(src: Sources, alignment: import_formats.StackAlignment, pixel_size_A: float,
              size: tuple[int, int, int], image_size: tuple[int, int], nominal: np.ndarray,
              axis: float | None, notes: list[str]) -> RelionParameters:
    """The alignment's five parameters per tilt; without one, the nominal angles about the
    tilt axis with zero shifts."""
    if alignment.to_relion is not None:
        return alignment.to_relion(pixel_size_A, size, image_size, notes)
    if axis is None:
        raise InputError(src.stack, "no alignment and no tilt-axis angle: give --imod, "
                         "--aln, --warp_xml or --tilt_axis", field="--tilt_axis")
    n = len(alignment.images)
    notes.append("no alignment given: nominal angles, tilt axis and zero shifts")
    return RelionParameters(np.zeros(n), nominal.copy(), np.full(n, float(axis)),
                            np.zeros(n), np.zeros(n))


def _exposure(src: Sources, optics: Optics, alignment: import_formats.StackAlignment,
              mdoc: MdocTiltSeries | None, mdoc_of: np.ndarray, nominal: np.ndarray,
              notes: list[str]) -> tuple[np.ndarray, float]:
    """Exposure before each kept image (e/Å²; Warp's, the ``.order`` list's, the mdoc's, or
    dose-symmetric from ``--dose_per_tilt``) and the dose per tilt (given, else the median
    step)."""
    dose_per_tilt = optics.dose_per_tilt
    if alignment.pre_exposure is not None:
        pre = alignment.pre_exposure
    elif src.order is not None:
        pre = imod.exposure_from_order(src.order, nominal, optics.order_scale)
    elif mdoc is not None:
        pre = mdoc.pre_exposure(dose_per_tilt)[mdoc_of[alignment.images]]
    elif dose_per_tilt is not None:
        order = np.argsort(np.abs(nominal), kind="stable")
        pre = np.empty(len(nominal))
        pre[order] = np.arange(len(nominal)) * dose_per_tilt
        notes.append("no acquisition order given: exposure assumed to grow with |tilt| "
                     "(dose-symmetric)")
    else:
        raise InputError(src.stack, "no exposure information: give --mdoc, --order, "
                         "--warp_xml or --dose_per_tilt", field="--dose_per_tilt")
    if dose_per_tilt is None:
        steps = np.diff(np.sort(pre))
        dose_per_tilt = float(np.median(steps)) if len(steps) else 0.0
    return pre, dose_per_tilt


def _ctf(src: Sources, optics: Optics, alignment: import_formats.StackAlignment, n_stack: int,
         ctfplotter_angles: np.ndarray | None, params: RelionParameters
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per kept image ``(U, V, angle, phase shift or None)`` (Å, Å, deg, deg): ctfplotter's
    ``.defocus``, else Warp's, else ``--defocus_um``."""
    images = alignment.images
    if src.defocus is not None:
        ctf = imod.read_defocus(src.defocus, n_stack, ctfplotter_angles)
        u, v, angle = ctf.defocus_u_A[images], ctf.defocus_v_A[images], ctf.angle_deg[images]
        missing = np.flatnonzero(~np.isfinite(u))
        if len(missing):
            raise InputError(src.defocus, f"no defocus for view {int(images[missing[0]]) + 1} "
                             f"(of {n_stack})", field="defocus")
        if optics.defocus_frame == "aligned":
            angle = angle + params.zrot
        return u, v, angle, (ctf.phase_shift_deg[images] if ctf.flags & 4 else None)
    if alignment.ctf is not None:
        return alignment.ctf
    if optics.defocus_um is not None:
        u = np.full(len(images), optics.defocus_um * 1e4)
        return u, u, np.zeros(len(images)), None
    raise InputError(src.stack, "no CTF: give --defocus (ctfplotter), --warp_xml or "
                     "--defocus_um", field="--defocus")


def _check_table(src: Sources, tilts: pd.DataFrame, params: RelionParameters,
                 images: np.ndarray) -> None:
    """Refuse non-finite angles, exposures or defoci and tilt angles beyond ±90°."""
    for label in ("rlnTomoYTilt", "rlnMicrographPreExposure", "rlnDefocusU"):
        values = tilts[label].to_numpy(np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError(src.stack, f"tilt series {src.name}: non-finite values", field=label)
    bad = np.flatnonzero(np.abs(params.ytilt) > 90)
    if len(bad):
        raise InputError(src.stack, f"tilt {int(images[bad[0]]) + 1}: tilt angle "
                         f"{params.ytilt[bad[0]]:g}° outside ±90°", field="rlnTomoYTilt")


def _match_mdoc(path: Path, mdoc_deg: np.ndarray, stack_deg: np.ndarray,
                tolerance_deg: float = 2.0) -> np.ndarray:
    """The mdoc section of each stack image: ZValue order when the angles agree there (after
    removing a common offset, e.g. tiltalign's), else the one permutation sorting both."""
    known = np.isfinite(stack_deg)

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        d = a - b
        return bool(np.all(np.abs(d - np.median(d)) <= tolerance_deg))

    if close(mdoc_deg[known], stack_deg[known]):
        return np.arange(len(stack_deg))
    order_m = np.argsort(mdoc_deg, kind="stable")
    out = np.empty(len(stack_deg), dtype=int)
    filled = stack_deg.copy()  # dark frames (no angle) sit between their neighbours
    if not known.all() and known.any():
        filled[~known] = np.interp(np.flatnonzero(~known), np.flatnonzero(known),
                                   stack_deg[known])
    order_s = np.argsort(filled, kind="stable")
    out[order_s] = order_m
    if not close(mdoc_deg[out][known], stack_deg[known]):
        raise InputError(path, "the mdoc's tilt angles do not match the stack's (neither in "
                         "ZValue order nor sorted by angle)", field="TiltAngle")
    return out


def source_files(src: Sources) -> list[Path]:
    """Every file an import of ``src`` may read (an IMOD basename's ``.xf .tlt .xtilt`` and the
    ``tilt.com`` beside them included)."""
    files = [getattr(src, f) for f in ("stack", "mdoc", "tilt_com", "aln", "warp_xml", "tlt",
                                       "defocus", "order")]
    if src.imod is not None:
        base = Path(src.imod)
        files += [Path(f"{base}{suffix}") for suffix in (".xf", ".tlt", ".xtilt")]
        files.append(base.parent / "tilt.com")
    return [Path(f) for f in files if f is not None]


def import_tomograms(sources: list[Sources], optics: Optics, output: str | Path,
                     tilt_series_dir: str = "tilt_series") -> tuple[TomogramSet, list[str]]:
    """Import every tilt series, then write ``output`` (RELION 5 ``tomograms.star`` and
    ``<dir>/<name>.star`` beside it). Nothing is written unless all of them import."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise InputError(None, "a tilt-series name appears twice", field="--name")
    inputs = [source_files(src) for src in sources]
    for files in inputs:
        check_not_input(output, *files)
    output = Path(output)
    check_outputs([f for files in inputs for f in files], output.parent,
                  [f"{tilt_series_dir}/{name}.star" for name in names])
    imported = [import_tilt_series(s, optics) for s in sources]
    tset = TomogramSet({i.tilt_series.name: i.tilt_series for i in imported}, str(output))
    write_tomogram_set(tset, output, flavour="relion5", tilt_series_dir=tilt_series_dir)
    notes = [f"{i.tilt_series.name}: {n}" for i in imported for n in i.notes]
    return tset, notes


def check_export(ts: TiltSeries, formats: tuple[str, ...]) -> None:
    """Refuse, before anything is written, what a format cannot hold."""
    unknown = set(formats) - {"imod", "aretomo"}
    if unknown:
        raise InputError(None, f"unknown export format(s) {sorted(unknown)}", field="--format")
    if "aretomo" in formats and np.any(np.abs(ts.column("rlnTomoXTilt", 0.0)) > 1e-6):
        raise InputError(ts.source, f"tilt series {ts.name}: AreTomo's .aln has no per-tilt "
                         "x-axis tilt, and rlnTomoXTilt is not 0", field="rlnTomoXTilt")
    ts.image_size_px  # noqa: B018 (fails now, not half-way, when the images are missing)


def export_tilt_series(ts: TiltSeries, out_dir: str | Path, formats: tuple[str, ...] = ("imod",)
                       ) -> list[Path]:
    """Write ``<out_dir>/<name>.xf .tlt .xtilt .defocus`` (``imod``) and/or ``<name>.aln``
    (``aretomo``) for one tilt series; returns the files written."""
    check_export(ts, formats)
    out_dir = Path(out_dir)
    params = RelionParameters(*(p.numpy() for p in ts.dof()))
    written: list[Path] = []
    base = out_dir / ts.name
    if "imod" in formats:
        al = tilt_imod.relion_to_imod(params, ts.pixel_size_A, ts.tomo_size_px,
                                      ts.image_size_px)
        written += imod.write_imod_alignment(base, al)
        if "rlnDefocusU" in ts.tilts:
            u, v, angle = ts.defocus()
            path = base.with_name(base.name + ".defocus")
            imod.write_defocus(path, al.tilt_deg, u, v, angle)
            written.append(path)
    if "aretomo" in formats:
        w, h = ts.image_size_px
        path = base.with_name(base.name + ".aln")
        aretomo.write_aln(path, params, ts.pixel_size_A, (w, h, ts.n_tilts))
        written.append(path)
    return written
