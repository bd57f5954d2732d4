"""One adapter per alignment format for :func:`subtomo.tomo.importing.import_tilt_series`.

Each adapter turns one program's files (IMOD ``.xf/.tlt[/.xtilt]`` + ``tilt.com``, an AreTomo
``.aln``, a Warp tilt-series XML, or a plain list of tilt angles) into a :class:`StackAlignment`:
which images of the stack the tilt series keeps, the tilt angle of each stack image, the
nominal angle of each kept image, the tomogram thickness the files give and the conversion to
RELION 5's five parameters per tilt. A Warp XML also carries exposure, CTF, voltage and
handedness. The merge step (:mod:`subtomo.tomo.importing`) takes what each source gives in a
fixed order of precedence. Counts are checked against the stack here, each with one line
naming the file and field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subtomo.errors import InputError
from subtomo.geometry import tilt_imod
from subtomo.geometry.tilt import RelionParameters
from subtomo.io import aretomo, imod, warp_xml

__all__ = ["StackAlignment", "check_count", "from_angles", "from_aretomo", "from_imod",
           "from_warp", "read_alignment_files"]

# (pixel size Å, tomogram size px (X, Y, Z), image size px (W, H), notes) → parameters
ToRelion = Callable[[float, tuple[int, int, int], tuple[int, int], list[str]], RelionParameters]


@dataclass
class StackAlignment:
    """What one alignment source says about the stack's images (all per-tilt arrays in the
    order of ``images``, the stack images kept, 0-based)."""

    images: np.ndarray
    stack_angles_deg: np.ndarray | None  # tilt angle of each stack image (NaN: dark frame)
    nominal_deg: np.ndarray | None  # nominal angle of each kept image (used without an mdoc)
    thickness_px: int | None = None
    to_relion: ToRelion | None = None  # None: nominal angles only, no alignment
    ctfplotter_angles_deg: np.ndarray | None = None  # for ctfplotter's old-file repair
    pre_exposure: np.ndarray | None = None  # e/Å² before each kept image
    ctf: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None  # U, V Å,
    # angle deg, phase shift deg
    voltage_kv: Callable[[], float] | None = None
    hand: float | None = None


def check_count(path: Path, what: str, n: int, n_stack: int, stack: Path,
                field_name: str) -> None:
    """Refuse ``n`` per-tilt entries in ``path`` for a stack of ``n_stack`` images."""
    if n != n_stack:
        relation = "fewer" if n < n_stack else "more"
        raise InputError(path, f"{n} {what}, {relation} than the {n_stack} images of "
                         f"{stack}", field=field_name)


def read_alignment_files(imod_base: Path | None, tilt_com: Path | None, aln: Path | None,
                         xml: Path | None, notes: list[str]
                         ) -> tuple[warp_xml.WarpTiltSeries | None, aretomo.AlnFile | None,
                                    imod.ImodAlignment | None]:
    """Read the alignment files given (at most one alignment: ``--imod``, ``--aln`` or
    ``--warp_xml``); an IMOD basename's ``tilt.com`` is taken from beside it unless given."""
    warp = warp_xml.read_warp_xml(xml) if xml else None
    aln_file = aretomo.read_aln(aln) if aln else None
    alignment = None
    if imod_base is not None:
        base = Path(imod_base)
        xf, tlt = base.with_name(base.name + ".xf"), base.with_name(base.name + ".tlt")
        xtilt = base.with_name(base.name + ".xtilt")
        com = tilt_com if tilt_com else base.parent / "tilt.com"
        if tilt_com is None and com.is_file():
            notes.append(f"using {com} (XAXISTILT, OFFSET, SHIFT, THICKNESS)")
        alignment = imod.read_imod_alignment(
            xf, tlt, xtilt if xtilt.is_file() else None, com if com.is_file() else None)
    if sum(x is not None for x in (warp, aln_file, alignment)) > 1:
        raise InputError(None, "give one alignment: --imod, --aln or --warp_xml",
                         field="--imod")
    return warp, aln_file, alignment


def _select(params: RelionParameters, index: np.ndarray) -> RelionParameters:
    return RelionParameters(*(v[index] for v in params.as_tuple()),
                            distortion_px=params.distortion_px)


def from_imod(al: imod.ImodAlignment, n_stack: int, stack: Path) -> StackAlignment:
    """IMOD: every stack image, ``.tlt`` angles, ``tilt.com``'s thickness, exact geometry
    (:func:`subtomo.geometry.tilt_imod.imod_to_relion`)."""
    check_count(Path(al.source), "views", al.n_views, n_stack, stack, "A11")
    images = np.arange(n_stack)

    def to_relion(pixel_size_A: float, size: tuple[int, int, int], image_size: tuple[int, int],
                  notes: list[str]) -> RelionParameters:
        params = tilt_imod.imod_to_relion(al, pixel_size_A, size, image_size)
        if params.distortion_px > 0.1:
            notes.append(f"{al.source}: magnification/skew in the .xf is not representable "
                         f"(up to {params.distortion_px:.2f} px at the image corners); "
                         "nearest rotation used")
        params = _select(params, images)
        if al.tilt_com.exclude:
            notes.append(f"EXCLUDELIST views {al.tilt_com.exclude} kept "
                         "(the stack has them)")
        return params

    return StackAlignment(images, al.tilt_deg, al.tilt_deg[images], al.tilt_com.thickness_px,
                          to_relion, ctfplotter_angles_deg=al.tilt_deg)


def from_aretomo(aln: aretomo.AlnFile, path: Path, n_stack: int, stack: Path,
                 notes: list[str]) -> StackAlignment:
    """AreTomo: the sections it kept (dark frames left out), its global alignment."""
    check_count(path, "images (RawSize)", aln.raw_size[2], n_stack, stack, "RawSize")
    if aln.dark_frames:
        notes.append(f"{len(aln.dark_frames)} dark frames dropped by AreTomo left out")
    if aln.num_patches:
        notes.append(f"local alignment of {aln.num_patches} patches in {path} ignored "
                     "(RELION holds five parameters per tilt)")
    stack_angles = np.full(n_stack, np.nan)  # NaN for dark frames
    stack_angles[aln.sections] = aln.tilt_deg
    return StackAlignment(aln.sections, stack_angles, aln.tilt_deg, aln.thickness_px,
                          lambda pixel_size_A, size, image_size, notes:
                          aretomo.aln_to_relion(aln, pixel_size_A))


def from_warp(warp: warp_xml.WarpTiltSeries, path: Path, n_stack: int, stack: Path,
              notes: list[str]) -> StackAlignment:
    """Warp: the stack holds every tilt of the XML (unused ones left out here) or only the
    used ones (WarpTools); geometry, exposure, CTF, voltage and hand from the XML."""
    n_used = int(warp.use.sum())
    images = np.arange(n_stack)
    if n_stack == warp.n_tilts:
        images = np.flatnonzero(warp.use)
    elif n_stack == n_used:
        images = np.arange(n_used)
    else:
        check_count(path, f"tilts ({n_used} used)", warp.n_tilts, n_stack, stack, "Angles")
    if n_used < warp.n_tilts:
        notes.append(f"{warp.n_tilts - n_used} tilts with UseTilt False left out")
    notes.extend(warp.notes)
    stack_tilts = np.arange(n_stack)  # the XML's tilt of each stack image
    if n_stack != warp.n_tilts:
        stack_tilts = np.flatnonzero(warp.use)
    rows = stack_tilts[images]
    d = warp.defocus_um[rows] * 1e4
    delta = warp.defocus_delta_um[rows] * 1e4
    phase = warp.phase_shift_pi[rows] * 180.0 if np.any(warp.phase_shift_pi != 0) else None
    voltage = (lambda: float(warp.ctf["Voltage"])) if "Voltage" in warp.ctf else None
    return StackAlignment(
        images, warp.angles_deg[stack_tilts], warp.angles_deg[rows],
        to_relion=lambda pixel_size_A, size, image_size, notes: warp_xml.warp_to_relion(
            warp, pixel_size_A, size, image_size, rows),
        pre_exposure=warp.dose[rows],
        ctf=(d + delta / 2, d - delta / 2, warp.defocus_angle_deg[rows], phase),
        voltage_kv=voltage, hand=warp.hand)


def from_angles(tlt: np.ndarray | None, n_stack: int) -> StackAlignment:
    """No alignment: every stack image, nominal angles from a tilt-angle list if given."""
    images = np.arange(n_stack)
    return StackAlignment(images, tlt, tlt[images] if tlt is not None else None)
