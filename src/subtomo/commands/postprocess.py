"""``subtomo postprocess``: masked, corrected FSC and a sharpened map, as ``relion_postprocess``.

Writes ``postprocess.mrc`` (sharpened), ``postprocess_masked.mrc``, ``postprocess.star``,
``postprocess_fsc.png`` and ``postprocess_guinier.png`` into the output folder.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from subtomo.commands.options import add_output
from subtomo.errors import InputError
from subtomo.io.files import check_outputs

if TYPE_CHECKING:
    from subtomo.maps.postprocess import PostprocessResult

OUTPUTS = ("postprocess.mrc", "postprocess_masked.mrc", "postprocess.star",
           "postprocess_fsc.png", "postprocess_guinier.png")
PIXEL_TOLERANCE = 1e-3  # relative difference allowed between header pixel sizes


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("postprocess", help="masked FSC, resolution and sharpened map "
                            "(relion_postprocess)")
    parser.add_argument("--i", "-i", "--half1", dest="half1", required=True,
                        help="first unfiltered half map (MRC)")
    parser.add_argument("--i2", "--half2", dest="half2", required=True,
                        help="second unfiltered half map (MRC)")
    parser.add_argument("--mask", "-m", required=True, help="solvent mask (MRC, values 0..1)")
    add_output(parser, help="output folder, e.g. PostProcess/job001 (created)")
    parser.add_argument("--angpix", "--Apix", type=float, default=None,
                        help="pixel size, Å (default: from the half maps' header)")
    bfac = parser.add_mutually_exclusive_group()
    bfac.add_argument("--adhoc_bfac", type=float, default=None,
                      help="sharpen with this B-factor instead of fitting one (Å²; applied "
                           "as −|B|)")
    bfac.add_argument("--autob_lowres", type=float, default=10.0,
                      help="lowest resolution (Å) in the automatic B-factor fit (default 10)")
    parser.add_argument("--autob_highres", type=float, default=0.0,
                        help="highest resolution (Å) in the B-factor fit (default 0: Nyquist, "
                             "as RELION)")
    parser.add_argument("--randomize_at_fsc", type=float, default=0.8,
                        help="randomise phases from where the unmasked FSC drops below this "
                             "(default 0.8)")
    parser.add_argument("--randomize_at_A", type=float, default=None,
                        help="randomise phases from this resolution (Å) instead")
    parser.add_argument("--low_pass", type=float, default=None,
                        help="low-pass the sharpened map here (Å; default: final resolution)")
    parser.add_argument("--force_mask", action="store_true",
                        help="keep the mask even if the unmasked FSC reaches further")
    parser.add_argument("--mtf", default=None,
                        help="detector MTF STAR file (rlnResolutionInversePixel, rlnMtfValue)")
    parser.add_argument("--mtf_angpix", type=float, default=None,
                        help="pixel size (Å) of the movies the MTF refers to (default --angpix)")
    parser.add_argument("--random_seed", "--seed", dest="seed", type=int, default=0,
                        help="seed for the phase randomisation (default 0)")
    parser.set_defaults(run=_run)


def _read_mtf(path: str, mtf_angpix: float) -> np.ndarray:
    """RELION MTF STAR → ``(n, 2)`` table of (frequency 1/Å, MTF)."""
    from subtomo.io.star_text import read_star

    for block in read_star(path).values():
        if hasattr(block, "columns") and {"rlnResolutionInversePixel",
                                          "rlnMtfValue"} <= set(block.columns):
            freq = block["rlnResolutionInversePixel"].to_numpy(dtype=float) / mtf_angpix
            return np.stack([freq, block["rlnMtfValue"].to_numpy(dtype=float)], axis=1)
    raise InputError(path, "no loop with rlnResolutionInversePixel and rlnMtfValue",
                     field="rlnMtfValue")


def _load(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from subtomo.io.mrc import read_mrc

    half1, px1 = read_mrc(args.half1, role="reference", field="--i")
    half2, px2 = read_mrc(args.half2, role="reference", field="--i2")
    mask, _ = read_mrc(args.mask, role="mask", field="--mask")
    if half1.ndim != 3 or len(set(half1.shape)) != 1:
        raise InputError(args.half1, f"expected a cubic volume, got shape {half1.shape}")
    if half2.shape != half1.shape:
        raise InputError(args.half2, f"half maps differ in shape: {half1.shape} ({args.half1})"
                         f" and {half2.shape}")
    if px1 > 0 and px2 > 0 and abs(px1 - px2) > PIXEL_TOLERANCE * max(px1, px2):
        raise InputError(args.half2, f"half maps differ in pixel size: {px1:g} Å "
                         f"({args.half1}) and {px2:g} Å")
    if mask.shape != half1.shape:
        raise InputError(args.mask, f"mask shape {mask.shape} differs from the half maps' "
                         f"{half1.shape}")
    lo, hi = float(mask.min()), float(mask.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(args.mask, f"mask values must lie in [0, 1], found [{lo:g}, {hi:g}]")
    pixel = args.angpix if args.angpix is not None else px1
    if not pixel > 0:
        raise InputError(args.half1, "no pixel size in the header; pass --angpix")
    return half1, half2, mask, float(pixel)


def _write(result: PostprocessResult, args: argparse.Namespace, folder: Path) -> None:
    from subtomo.io.fsc_star import write_fsc_star
    from subtomo.io.mrc import write_mrc
    from subtomo.report.plots import plot_fsc, plot_guinier

    px, box = result.pixel_size_A, result.box
    write_mrc(folder / "postprocess.mrc", result.sharpened, px)
    write_mrc(folder / "postprocess_masked.mrc", result.sharpened_masked, px)
    general: dict[str, object] = {
        "final_resolution_A": min(result.resolution_A, 999.0),
        "bfactor_A2": result.bfactor_A2,
        "half1": args.half1,
        "half2": args.half2,
        "mask": args.mask,
        "randomise_from_A": min(result.randomize_from_A, 999.0),
    }
    if result.guinier_fit is not None:
        general.update(guinier_slope=result.guinier_fit.slope_A2,
                       guinier_intercept=result.guinier_fit.intercept,
                       guinier_correlation=result.guinier_fit.correlation)
    curves = {"corrected": result.fsc_corrected, "unmasked": result.fsc_unmasked,
              "masked": result.fsc_masked, "random_masked": result.fsc_random_masked}
    write_fsc_star(folder / "postprocess.star", curves, box, px, general, result.guinier)
    plot_fsc({"corrected": result.fsc_corrected, "unmasked maps": result.fsc_unmasked,
              "masked maps": result.fsc_masked,
              "phase-randomised masked maps": result.fsc_random_masked},
             box, px, folder / "postprocess_fsc.png",
             title=f"Final resolution = {result.resolution_A:.2f} Å",
             resolution_A=result.resolution_A)
    fit = result.guinier_fit
    plot_guinier({k: v for k, v in result.guinier.items() if k != "intercept"},
                 folder / "postprocess_guinier.png",
                 fit=None if fit is None else (fit.slope_A2, fit.intercept),
                 fit_range_A=None if fit is None else (fit.low_A, fit.high_A))


def _run(args: argparse.Namespace) -> int:
    from subtomo.maps.postprocess import postprocess

    folder = Path(args.output)
    check_outputs((args.half1, args.half2, args.mask, args.mtf), folder, OUTPUTS)
    half1, half2, mask, pixel = _load(args)
    mtf = None
    if args.mtf is not None:
        mtf = _read_mtf(args.mtf, args.mtf_angpix if args.mtf_angpix else pixel)
    result = postprocess(
        half1, half2, mask, pixel,
        adhoc_bfac=args.adhoc_bfac, autob_lowres_A=args.autob_lowres,
        autob_highres_A=args.autob_highres, randomize_at_fsc=args.randomize_at_fsc,
        randomize_at_A=args.randomize_at_A, mtf=mtf, low_pass_A=args.low_pass,
        force_mask=args.force_mask, seed=args.seed,
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write(result, args, folder)
    for note in result.warnings:
        print(f"subtomo: warning: {note}", file=sys.stderr)
    res = "∞" if math.isinf(result.resolution_A) else f"{result.resolution_A:.2f}"
    which = "masked, corrected" if result.mask_used else "unmasked"
    fitted = args.adhoc_bfac is not None or result.guinier_fit is not None
    bfactor = f"{result.bfactor_A2:.0f} Å²" if fitted else "0 Å² (not fitted, see warning)"
    print(f"Final resolution {res} Å (FSC 0.143, {which}); B-factor {bfactor}; "
          f"wrote {folder / 'postprocess.mrc'}.")
    return 0
