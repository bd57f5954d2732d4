"""Checks of input values: one :class:`subtomo.errors.InputError` naming the file, the particle
(or row) and the field, before anything is computed or written.

One function per kind of check, for any reader or command to call:

- :func:`finite` — no NaN or infinity in an array (a subtomogram, a CTF volume, a map, a mask,
  a column); names the first bad element;
- :func:`positive` — values > 0 (pixel sizes, voltages, box sizes, ...);
- :func:`in_range` — values within ``[low, high]`` with their unit;
- :func:`tilt_angles` — stage tilts within ±90°;
- :func:`defocus_A` — defocus within 0–20 µm, given in Å (RELION's ``rlnDefocusU/V``);
- :func:`map_content` — a reference that is not constant, a mask with a voxel above 0;
- :func:`star_table` — every registered STAR label of a table against :data:`STAR_RULES`
  (called by :func:`subtomo.io.star_text.read_star` for every file it reads);
- :func:`command_options` — the numeric options of a command (:data:`OPTION_RULES`; called by
  the ``subtomo`` CLI before a command runs).

Scalars, sequences and arrays are accepted alike; ``particle`` (1-based) names the particle of
a scalar, ``rows`` (1-based particle numbers; STAR line numbers through ``lines``) name the
elements of an array, and ``noun`` what they count (``"particle"``, ``"tilt"``, or a pattern
such as ``"particle {} of particles.star"``). Rotation angles (``rlnAngleRot/Tilt/Psi``,
Dynamo's ``tdrot/tilt/narot``) only need to be finite: any value is a rotation;
``rlnAngleTilt`` is an Euler angle, not a stage tilt.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError

PathLike = str | Path | None
MAX_TILT_DEG = 90.0
MAX_DEFOCUS_UM = 20.0


def _array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values


def _where(index: int, particle: int | None, rows: Sequence[int] | None, noun: str) -> str:
    """``"particle 7: "`` for element ``index`` (0-based) of an array, or ``""``; a ``{}`` in
    ``noun`` places the number (``"particle {} of particles.star"``)."""
    if rows is not None:
        number = int(rows[index])
    elif particle is not None:
        number = particle
    else:
        return ""
    return (noun.format(number) if "{}" in noun else f"{noun} {number}") + ": "


def _fail(path: PathLike, field: str | None, message: str, index: int = 0,
          particle: int | None = None, rows: Sequence[int] | None = None,
          lines: Sequence[int] | None = None, noun: str = "particle") -> None:
    line = None if lines is None or index >= len(lines) else int(lines[index])
    raise InputError(path, _where(index, particle, rows, noun) + message, line=line,
                     field=field)


def _fmt(value: float, unit: str = "") -> str:
    """``-4 Å``, ``95°``: a number with its unit."""
    if not unit:
        return f"{value:g}"
    return f"{value:g}{'' if unit == '°' else ' '}{unit}"


def _lead(what: str) -> str:
    return f"{what} " if what else ""


def finite(values, path: PathLike, *, field: str | None = None, what: str = "value",
           particle: int | None = None, rows: Sequence[int] | None = None,
           lines: Sequence[int] | None = None, noun: str = "particle") -> None:
    """Refuse NaN or infinite values. For a volume (``ndim == 3`` and ``rows`` not given)
    the message counts the bad voxels and gives the first ``(z, y, x)``."""
    data = values.detach() if isinstance(values, torch.Tensor) else values
    ok = torch.isfinite(data) if isinstance(data, torch.Tensor) else np.isfinite(
        np.asarray(data))
    if bool(ok.all()):
        return
    bad = ~ok
    if isinstance(bad, torch.Tensor):
        bad = bad.cpu().numpy()
    flat = np.flatnonzero(bad)
    if np.ndim(bad) >= 2 and rows is None:
        first = np.unravel_index(int(flat[0]), np.shape(bad))
        where = ", ".join(str(int(i)) for i in first)
        axes = "z, y, x" if np.ndim(bad) == 3 else "index"
        _fail(path, field, f"{what} has {len(flat)} NaN or infinite value(s) of "
              f"{np.size(bad)} (first at {axes} = {where})", particle=particle, noun=noun)
    index = int(flat[0])
    value = np.ravel(_array(values))[index]
    _fail(path, field, f"{_lead(what)}{value} is not a finite number", index, particle, rows,
          lines, noun)


def positive(values, path: PathLike, *, field: str | None = None, what: str = "value",
             unit: str = "", particle: int | None = None, rows: Sequence[int] | None = None,
             lines: Sequence[int] | None = None, noun: str = "particle") -> None:
    """Refuse values that are not finite and > 0 (pixel sizes, voltages, box sizes ...)."""
    array = np.ravel(_array(values))
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if len(bad):
        i = int(bad[0])
        _fail(path, field, f"{_lead(what)}must be positive, got {_fmt(array[i], unit)}", i,
              particle, rows, lines, noun)


def in_range(values, low: float, high: float, path: PathLike, *, field: str | None = None,
             what: str = "value", unit: str = "", particle: int | None = None,
             rows: Sequence[int] | None = None, lines: Sequence[int] | None = None,
             noun: str = "particle", scale: float = 1.0, shown_unit: str | None = None
             ) -> None:
    """Refuse values outside ``[low, high]`` (inclusive; NaN refused). ``scale`` and
    ``shown_unit`` print the range in another unit than the values' (e.g. Å read, µm
    shown)."""
    array = np.ravel(_array(values))
    bad = np.flatnonzero(~(np.isfinite(array) & (array >= low) & (array <= high)))
    if len(bad):
        i = int(bad[0])
        shown = shown_unit if shown_unit is not None else unit
        if high == math.inf:
            span = f"must be at least {_fmt(low * scale, shown)}"
        else:
            span = f"is outside {_fmt(low * scale)} to {_fmt(high * scale, shown)}"
        _fail(path, field, f"{_lead(what)}{_fmt(array[i], unit)} {span}", i, particle, rows,
              lines, noun)


def tilt_angles(values, path: PathLike, *, field: str | None = None,
                particle: int | None = None, rows: Sequence[int] | None = None,
                lines: Sequence[int] | None = None, noun: str = "tilt") -> None:
    """Refuse stage tilt angles outside ±90° (degrees)."""
    in_range(values, -MAX_TILT_DEG, MAX_TILT_DEG, path, field=field, what="tilt angle",
             unit="°", particle=particle, rows=rows, lines=lines, noun=noun)


def defocus_A(values, path: PathLike, *, field: str | None = None,
              particle: int | None = None, rows: Sequence[int] | None = None,
              lines: Sequence[int] | None = None, noun: str = "particle") -> None:
    """Refuse defoci (Å, as RELION's ``rlnDefocusU/V``) outside 0–20 µm."""
    in_range(values, 0.0, MAX_DEFOCUS_UM * 1e4, path, field=field, what="defocus", unit="Å",
             particle=particle, rows=rows, lines=lines, noun=noun, scale=1e-4,
             shown_unit="µm")


def voxel_size(value: float, path: PathLike) -> None:
    """An MRC header voxel size (Å): 0 means unset; negative or not finite is refused."""
    if not math.isfinite(value) or value < 0:
        raise InputError(path, f"voxel size {value:g} Å in the header must be positive (or 0: "
                         "unset)", field="voxel size (MRC header)")


def volume(data, path: PathLike, *, field: str | None = None, what: str = "map",
           particle: int | None = None, noun: str = "particle") -> None:
    """A map, mask, subtomogram or CTF volume: every voxel finite."""
    finite(data, path, field=field, what=what, particle=particle, noun=noun)


MAP_ROLES = ("reference", "mask")


def map_content(data, path: PathLike, role: str, *, field: str | None = None,
                what: str | None = None) -> None:
    """A map a command works with: ``role`` ``reference`` (a map to align to, symmetrise,
    compare ...) must not be constant (max = min: zero everywhere, or one value), ``mask``
    must have a voxel > 0 (all ≤ 0 masks everything out; a constant 1 is a valid mask).
    Neither may be empty (no voxels)."""
    if role not in MAP_ROLES:
        raise ValueError(f"unknown map role {role!r}; choose from {MAP_ROLES}")
    what = what or ("mask" if role == "mask" else "map")
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if array.size == 0:
        raise InputError(path, f"{what} is empty (shape {array.shape}, no voxels)", field=field)
    high, low = float(array.max()), float(array.min())
    if role == "reference" and high == low:
        raise InputError(path, f"{what} is constant (every voxel {high:g}): it holds no "
                         "structure", field=field)
    if role == "mask" and not high > 0:
        raise InputError(path, f"{what} has no voxel above 0 (largest {high:g}): it masks out "
                         "everything", field=field)


# ---- STAR labels ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What a STAR label's values must be: ``kind`` is ``finite``, ``positive``, ``range``,
    ``tilt`` or ``defocus``; ``low``/``high`` for ranges; ``unit`` as the registry's."""

    kind: str
    unit: str = ""
    low: float = -math.inf
    high: float = math.inf


_POSITIVE_A = Rule("positive", "Å")
STAR_RULES: dict[str, Rule] = {
    **{label: Rule("finite", "px") for label in (
        "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
        "rlnOriginX", "rlnOriginY", "rlnOriginZ")},
    **{label: Rule("finite", "Å") for label in (
        "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
        "rlnCenteredCoordinateZAngst", "rlnOriginXAngst", "rlnOriginYAngst",
        "rlnOriginZAngst")},
    **{label: Rule("finite", "°") for label in (
        "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnAngleRotPrior", "rlnAngleTiltPrior",
        "rlnAnglePsiPrior", "rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt",
        "rlnTomoSubtomogramPsi", "rlnDefocusAngle", "rlnPhaseShift", "rlnTomoZRot")},
    "rlnImagePixelSize": _POSITIVE_A,
    "rlnMicrographPixelSize": _POSITIVE_A,
    "rlnMicrographOriginalPixelSize": _POSITIVE_A,
    "rlnTomoTiltSeriesPixelSize": _POSITIVE_A,
    "rlnDetectorPixelSize": Rule("positive", "µm"),
    "rlnMagnification": Rule("positive"),
    "rlnVoltage": Rule("positive", "kV"),
    "rlnImageSize": Rule("positive", "px"),
    "rlnTomoSizeX": Rule("positive", "px"),
    "rlnTomoSizeY": Rule("positive", "px"),
    "rlnTomoSizeZ": Rule("positive", "px"),
    "rlnTomoSubtomogramBinning": Rule("positive"),
    "rlnSphericalAberration": Rule("range", "mm", 0.0, math.inf),
    "rlnAmplitudeContrast": Rule("range", "", 0.0, 1.0),
    "rlnCtfScalefactor": Rule("finite"),
    "rlnCtfBfactor": Rule("finite", "Å²"),
    "rlnDefocusU": Rule("defocus", "Å"),
    "rlnDefocusV": Rule("defocus", "Å"),
    "rlnMicrographPreExposure": Rule("range", "e/Å²", 0.0, math.inf),
    "rlnTomoNominalStageTiltAngle": Rule("tilt", "°"),
    "rlnTomoNominalTiltAxisAngle": Rule("finite", "°"),
    "rlnTomoXTilt": Rule("tilt", "°"),
    "rlnTomoYTilt": Rule("tilt", "°"),
    "rlnTomoXShiftAngst": Rule("finite", "Å"),
    "rlnTomoYShiftAngst": Rule("finite", "Å"),
    "rlnTomoHand": Rule("range", "", -1.0, 1.0),
    "rlnMtfValue": Rule("finite"),
    "rlnResolutionInversePixel": Rule("range", "1/px", 0.0, 0.5),
}


BLOCK_NOUNS = {"particles": "particle", "": "particle", "images": "particle",
               "optics": "optics group", "global": "tomogram"}


def star_table(path: PathLike, block: str, table, lines: Sequence[int] | None = None) -> None:
    """Check every column of a STAR table (a DataFrame) or simple block (a dict) that has a
    rule; rows are named as particles in ``data_particles`` (and RELION 3.0's single table),
    else as rows of their block, with their line numbers where known."""
    noun = BLOCK_NOUNS.get(block, f"data_{block} row")
    if isinstance(table, dict):
        for label, value in table.items():
            rule = STAR_RULES.get(label)
            if rule is not None and isinstance(value, (int, float)):
                _apply(rule, [value], path, label, None, None, noun="")
        return
    for label in table.columns:
        rule = STAR_RULES.get(label)
        if rule is None:
            continue
        values = table[label]
        if values.dtype == object:
            continue  # not numbers: reported by the numeric check of the registry
        rows = np.arange(1, len(values) + 1)
        _apply(rule, values.to_numpy(dtype=np.float64), path, label, rows, lines, noun)


def _apply(rule: Rule, values, path: PathLike, label: str, rows, lines, noun: str,
           what: str = "value") -> None:
    kw = dict(field=label, rows=rows, lines=lines, noun=noun or "row")
    if rows is None:
        kw.pop("rows")
    if rule.kind == "finite":
        finite(values, path, what=what, **kw)
    elif rule.kind == "positive":
        positive(values, path, what=what, unit=rule.unit, **kw)
    elif rule.kind == "range":
        in_range(values, rule.low, rule.high, path, what=what, unit=rule.unit, **kw)
    elif rule.kind == "tilt":
        tilt_angles(values, path, **kw)
    elif rule.kind == "defocus":
        defocus_A(values, path, **kw)


# ---- command options ------------------------------------------------------------------------
OPTION_RULES: dict[str, Rule] = {
    # lengths and sizes
    "angpix": _POSITIVE_A, "mtf_angpix": _POSITIVE_A, "max_memory": Rule("positive", "GiB"),
    "box": Rule("positive", "px"), "n": Rule("positive"), "batch": Rule("positive"),
    "pad": Rule("positive"), "j": Rule("positive"), "K": Rule("positive"),
    "bin": Rule("positive"), "binned_angpix": _POSITIVE_A, "crop": Rule("positive", "px"),
    "iter": Rule("positive"), "max_iter": Rule("positive"),
    "iter_ini": Rule("range", "", 0, math.inf), "iter_inbetween": Rule("range", "", 0, math.inf),
    "iter_final": Rule("range", "", 0, math.inf), "batch_ini": Rule("positive"),
    "batch_final": Rule("positive"), "checkpoint_every": Rule("positive"),
    "particle_diameter": _POSITIVE_A, "ini_high": _POSITIVE_A, "final_high": _POSITIVE_A,
    "maxres": _POSITIVE_A, "lowpass": _POSITIVE_A, "low_pass": _POSITIVE_A,
    "autob_lowres": _POSITIVE_A, "autob_highres": Rule("range", "Å", 0.0, math.inf),  # 0: Nyquist
    "randomize_at_A": _POSITIVE_A,
    "randomize_at_fsc": Rule("range", "", 0.0, 1.0),
    "offset_range": Rule("range", "px", 0.0, math.inf), "offset_step": Rule("positive", "px"),
    "healpix_order": Rule("range", "", 0, 8), "auto_local_healpix_order": Rule("range", "", 0, 8),
    "sigma_ang": Rule("positive", "°"), "tau2_fudge": Rule("positive"),
    "split_every": Rule("range", "", 0, math.inf),
    "min_distance": _POSITIVE_A, "distance": _POSITIVE_A,
    "tolerance": Rule("range", "Å", 0.0, math.inf),
    "min_neighbours": Rule("range", "", 0, math.inf),
    "width_soft_edge": Rule("range", "px", 0.0, math.inf),
    "search_box": Rule("positive", "px"), "angular_step": Rule("positive", "°"),
    "bg_radius": Rule("positive", "px"), "snr": Rule("positive"),
    "sirt_iterations": Rule("positive"), "s_vel": Rule("positive"), "s_div": _POSITIVE_A,
    "def_reg": Rule("range", "", 0.0, math.inf), "max_ed": Rule("range", "", -1, math.inf),
    "image_size": Rule("positive", "px"), "tomo_size": Rule("positive", "px"),
    "size": Rule("positive", "px"),
    # simulation
    "tilt_range": Rule("range", "°", 0.0, MAX_TILT_DEG), "tilt_step": Rule("positive", "°"),
    "dose": Rule("range", "e/Å²", 0.0, math.inf), "noise": Rule("range", "", 0.0, math.inf),
    "angle_error": Rule("range", "°", 0.0, math.inf),
    "shift_error": Rule("range", "px", 0.0, math.inf),
    "n_atoms": Rule("positive"), "classes": Rule("positive"),
    "hinge_max": Rule("range", "°", 0.0, 180.0),
    "subtomograms": Rule("range", "", 0, math.inf),
    "classification": Rule("range", "", 0, math.inf),
    "tiltseries": Rule("range", "", 0, math.inf),
}


def _option_name(dest: str, spelled: dict[str, str]) -> str:
    return spelled.get(dest, "--" + dest)


def command_options(args, spelled: dict[str, str] | None = None) -> None:
    """Check the parsed options ``args`` (an ``argparse.Namespace``) of a command: every float
    must be finite, and those named in :data:`OPTION_RULES` must obey their rule; ``defocus``
    (``(low, high)`` µm) must lie in 0–20 µm. ``spelled``: option names to print per dest."""
    spelled = spelled or {}
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, (list, tuple)) and dest in OPTION_RULES and all(
                isinstance(v, (int, float)) for v in value):  # --size W H ...
            for item in value:
                _apply(OPTION_RULES[dest], [item], None, _option_name(dest, spelled), None,
                       None, noun="", what="")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = _option_name(dest, spelled)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(None, f"{value} is not a finite number", field=name)
        rule = OPTION_RULES.get(dest)
        if rule is not None:
            _apply(rule, [value], None, name, None, None, noun="", what="")
    defocus = getattr(args, "defocus", None)
    if isinstance(defocus, tuple) and len(defocus) == 2:
        low, high = defocus
        in_range([low, high], 0.0, MAX_DEFOCUS_UM, None, field="--defocus", what="",
                 unit="µm")
        if low > high:
            raise InputError(None, f"defocus range {low:g}:{high:g} µm is reversed (LOW:HIGH)",
                             field="--defocus")


# ---- outputs --------------------------------------------------------------------------------
def writable(path: PathLike, field: str) -> None:
    """Refuse an output ``path`` that cannot be written: its nearest existing ancestor must be
    a folder that is writable (by this user, and not marked read-only for all: a ``chmod a-w``
    folder is refused even to root)."""
    if path in (None, ""):
        return
    target = Path(path)
    ancestor = target if target.is_dir() else target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(path, f"cannot write here: {str(ancestor)!r} is a file, not a folder",
                         field=field)
    if not os.access(ancestor, os.W_OK | os.X_OK) or not (
            ancestor.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)):
        raise InputError(path, f"cannot write here: folder {str(ancestor)!r} is read-only",
                         field=field)


OUTPUT_OPTIONS = {"output": "--o", "continue_dir": "--continue"}
FOLDER_ARGUMENTS = {("hetero", "analyze"), ("hetero", "eval-vol"), ("hetero", "eval_vol"),
                    ("hetero", "select"), ("hetero", "parse_pose")}  # select: without --o


def outputs(args) -> None:
    """Check every output of a command (``--o``, ``--continue``; the training folder that
    ``hetero analyze``, ``eval-vol`` and ``select`` without ``--o`` write into) with
    :func:`writable`."""
    for dest, name in OUTPUT_OPTIONS.items():
        value = getattr(args, dest, None)
        if isinstance(value, (str, Path)):
            writable(value, name)
    if (getattr(args, "command", None), getattr(args, "kind", None)) in FOLDER_ARGUMENTS:
        if Path(args.dir).is_dir() and getattr(args, "output", None) is None:
            writable(args.dir, "DIR")
