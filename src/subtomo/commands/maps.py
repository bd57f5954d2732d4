"""``subtomo mask create``, ``subtomo symmetrize`` and ``subtomo align-symmetry``."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from subtomo.commands.options import add_angpix, add_input, add_output
from subtomo.errors import InputError
from subtomo.io.files import check_not_input

if TYPE_CHECKING:
    import torch


def register(sub: argparse._SubParsersAction) -> None:
    mask = sub.add_parser("mask", help="masks from maps")
    kinds = mask.add_subparsers(dest="mask_action", required=True, metavar="ACTION")
    create = kinds.add_parser("create", help="a soft-edged mask from a thresholded map "
                              "(as relion_mask_create)")
    add_input(create, help="input map (MRC)")
    add_output(create, help="output mask (MRC)")
    create.add_argument("--ini_threshold", "--ini-threshold", dest="ini_threshold", type=float,
                        required=True, help="binarisation threshold (map units)")
    create.add_argument("--extend_inimask", "--extend-inimask", dest="extend_inimask",
                        type=float, default=0.0,
                        help="grow (or, if negative, shrink) the binary mask (pixels; default 0)")
    create.add_argument("--width_soft_edge", "--width-soft-edge", dest="width_soft_edge",
                        type=float, default=0.0,
                        help="width of the raised-cosine soft edge (pixels; default 0)")
    create.add_argument("--lowpass", type=float, default=None,
                        help="low-pass the map to this resolution first (Å)")
    add_angpix(create, help="pixel size (Å; default: from the map header)")
    create.set_defaults(run=_mask_create)

    sym = sub.add_parser("symmetrize", aliases=["symmetrise"],
                         help="impose point-group symmetry on a map")
    add_input(sym, help="input map (MRC)")
    add_output(sym, help="output map (MRC)")
    _add_sym(sym)
    sym.add_argument("--interp", choices=("fourier", "linear"), default="fourier",
                     help="interpolation of the rotated copies: band-limited Fourier shears "
                          "(default, exactly invariant for smooth maps) or trilinear")
    sym.set_defaults(run=_symmetrize)

    align = sub.add_parser("align-symmetry", aliases=["align_symmetry"],
                           help="rotate a map so its symmetry axes lie on RELION's axes "
                                "(as relion_align_symmetry)")
    add_input(align, help="input map (MRC)")
    add_output(align, help="output (aligned) map (MRC)")
    _add_sym(align)
    add_angpix(align, help="pixel size (Å; default: from the map header)")
    align.add_argument("--lowpass", type=float, default=None,
                       help="low-pass the map to this resolution before searching (Å)")
    align.add_argument("--search_box", "--search-box", dest="search_box", type=int, default=24,
                       help="box of the coarse exhaustive search (pixels; default 24)")
    align.add_argument("--angular_step", "--angular-step", dest="angular_step", type=float,
                       default=15.0, help="coarse angular step (degrees; default 15)")
    align.set_defaults(run=_align_symmetry)

    _register_maps(sub)


def _add_sym(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sym", required=True,
                        help="point group in RELION's notation (C<n>, D<n>, T, O, I, I1-I4)")


def _check_sym(name: str) -> str:
    from subtomo.geometry.symmetry import symmetry_operators

    try:
        symmetry_operators(name)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from exc
    return name


def _read(args: argparse.Namespace) -> tuple[torch.Tensor, float]:
    import torch

    from subtomo.io.mrc import read_mrc

    check_not_input(args.output, args.input)
    data, header_A = read_mrc(args.input, role="reference", field="--i")
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(args.input, f"expected a cubic 3D map, got shape {data.shape}")
    angpix = getattr(args, "angpix", None) or header_A or 1.0
    return torch.from_numpy(data), float(angpix)


def _mask_create(args: argparse.Namespace) -> int:
    from subtomo.io.mrc import write_mrc
    from subtomo.maps.mask import create_mask

    vol, angpix = _read(args)
    try:
        mask = create_mask(vol, angpix, args.ini_threshold, args.extend_inimask,
                           args.width_soft_edge, args.lowpass)
    except ValueError as exc:
        raise InputError(args.input, str(exc), field="--ini_threshold") from exc
    write_mrc(args.output, mask, angpix)
    inside = float((mask >= 0.5).float().mean()) * 100.0
    print(f"Wrote mask {args.output} ({tuple(mask.shape)}, {inside:.1f} % of the box >= 0.5).")
    return 0


def _symmetrize(args: argparse.Namespace) -> int:
    from subtomo.io.mrc import write_mrc
    from subtomo.maps.symmetrize import symmetrize

    _check_sym(args.sym)
    vol, angpix = _read(args)
    out = symmetrize(vol, args.sym, order=args.interp)
    write_mrc(args.output, out, angpix)
    print(f"Wrote {args.output}: {args.sym} symmetrised ({args.interp} interpolation).")
    return 0


def _align_symmetry(args: argparse.Namespace) -> int:
    from subtomo.geometry.euler import matrix_to_euler
    from subtomo.io.mrc import write_mrc
    from subtomo.maps.align_symmetry import align_symmetry

    _check_sym(args.sym)
    vol, angpix = _read(args)
    start = time.perf_counter()
    aligned, rot, score = align_symmetry(vol, args.sym, angpix, lowpass_A=args.lowpass,
                                         search_box_px=args.search_box,
                                         coarse_step_deg=args.angular_step)
    write_mrc(args.output, aligned, angpix)
    angles = matrix_to_euler(rot).tolist()
    print(f"Wrote {args.output}: rotated by (rot, tilt, psi) = ({angles[0]:.2f}, {angles[1]:.2f}, "
          f"{angles[2]:.2f}) degrees; {args.sym} self-correlation {score:.4f} "
          f"({time.perf_counter() - start:.1f} s).")
    return 0


def _register_maps(sub: argparse._SubParsersAction) -> None:
    """``subtomo maps align``."""
    parser = sub.add_parser("maps", help="operations on pairs of maps")
    actions = parser.add_subparsers(dest="maps_action", required=True, metavar="ACTION")
    align = actions.add_parser("align", help="rotate and shift a map onto a reference map "
                               "(optionally flipping its hand)")
    add_input(align, help="map to move (MRC)")
    align.add_argument("--ref", required=True, help="reference (fixed) map (MRC), same box")
    add_output(align, help="output: the moved map on the reference (MRC)")
    align.add_argument("--flip", action="store_true",
                       help="also try the mirror image (hand flip along z); keep the better")
    align.add_argument("--lowpass", type=float, default=None,
                       help="highest resolution used in the search (Å; default 2.5 pixels)")
    align.add_argument("--sym", default="C1",
                       help="point group of the reference: search its asymmetric unit only "
                            "(RELION's notation; default C1)")
    add_angpix(align, help="pixel size (Å; default: from the input map's header)")
    align.set_defaults(run=_maps_align)


def _maps_align(args: argparse.Namespace) -> int:
    import torch

    from subtomo.geometry.euler import matrix_to_euler
    from subtomo.io.mrc import read_mrc, write_mrc
    from subtomo.maps.align_maps import align_maps

    _check_sym(args.sym)
    check_not_input(args.output, args.ref)
    vol, angpix = _read(args)
    ref, ref_A = read_mrc(args.ref, role="reference", field="--ref")
    if tuple(ref.shape) != tuple(vol.shape):
        raise InputError(args.ref, f"reference shape {ref.shape} differs from the input map's "
                         f"{tuple(vol.shape)}; resample one of them first")
    if args.angpix is None and ref_A > 0 and abs(ref_A - angpix) > 0.01 * angpix:
        raise InputError(args.ref, f"pixel size {ref_A:g} Å differs from the input map's "
                         f"{angpix:g} Å; resample one of them first (or give --angpix)")
    if args.lowpass is not None and args.lowpass <= 0:
        raise InputError(None, "must be positive (Å)", field="--lowpass")
    start = time.perf_counter()
    result = align_maps(vol, torch.from_numpy(ref), angpix, lowpass_A=args.lowpass,
                        allow_flip=args.flip, sym=args.sym)
    write_mrc(args.output, result.aligned, angpix)
    rot, tilt, psi = matrix_to_euler(result.matrix).tolist()
    sx, sy, sz = (result.shift_px * angpix).tolist()
    print(f"Wrote {args.output}: rotated by (rot, tilt, psi) = ({rot:.2f}, {tilt:.2f}, "
          f"{psi:.2f}) degrees, then shifted by ({sx:.2f}, {sy:.2f}, {sz:.2f}) Å; "
          f"flipped {'yes' if result.flipped else 'no'}; correlation {result.score:.4f} "
          f"({time.perf_counter() - start:.1f} s).")
    return 0
