"""``subtomo export cryodrgn``: the files another program's tilt-series route reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from subtomo.commands.options import add_tomo_inputs, tomo_inputs
from subtomo.io.files import check_outputs

TARGETS = ("cryodrgn",)  # OPUS-TOMO's 3D subtomograms + CTF volumes: `subtomo extract`


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="inputs for other programs (cryoDRGN-ET)")
    targets = parser.add_subparsers(dest="target", required=True, metavar="PROGRAM")
    p = targets.add_parser(
        "cryodrgn", help="per-tilt images, pose and CTF pickles for cryoDRGN-ET",
        description="Writes DIR/particles.star (Warp 1 sub-tilt layout: one row per tilt "
        "image, grouped by rlnGroupName, in exposure order), DIR/Subtilts/*.mrcs (the images, "
        "not CTF-premultiplied: cryoDRGN multiplies by the CTF itself), DIR/poses.pkl and "
        "DIR/ctf.pkl (cryodrgn parse_pose_star / parse_ctf_star layouts), and prints the "
        "cryodrgn backproject_voxel line. --i a RELION 5 optimisation set (subtomograms or 2D "
        "stacks: the images are re-cut from its tilt series) or a Warp 1 sub-tilt STAR file "
        "(its images are used as they are).")
    add_tomo_inputs(p)
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--b", "--box", dest="box", type=int, default=None,
                   help="image size (px at the output pixel size); tilt-series input only")
    p.add_argument("--angpix", dest="angpix", type=float, default=None,
                   help="output pixel size, Å (default: the tilt series'); for a Warp 1 STAR "
                   "file, the images' pixel size (Warp 1 writes the unbinned one)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--max_dose", type=float, default=None,
                       help="keep tilts with pre-exposure ≤ this (e/Å²)")
    group.add_argument("--max_tilts", type=int, default=None,
                       help="keep the N least exposed tilts")
    p.add_argument("--batch", type=int, default=32, help="particles per batch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=_run)


def _is_warp1(args: argparse.Namespace) -> bool:
    from subtomo.io.warp1_series import is_warp1_series

    if args.input is None or args.particles or args.tomograms or args.motion:
        return False
    return is_warp1_series(args.input)


def _refuse(args: argparse.Namespace, warp1: bool) -> None:
    from subtomo.errors import InputError

    if warp1:
        for option, flag in (("box", "--b"), ("max_dose", "--max_dose"),
                             ("max_tilts", "--max_tilts")):
            if getattr(args, option) is not None:
                raise InputError(args.input, "a Warp 1 sub-tilt file's images are used as they "
                                 f"are: {flag} applies to tilt-series input only", field=flag)
    elif args.box is None:
        raise InputError(args.input, "give the image size --b (px) to cut from the tilt series",
                         field="--b")


def _run(args: argparse.Namespace) -> int:
    from subtomo.io.warp1_series import read_warp1_series, warp1_files
    from subtomo.tomo.export_cryodrgn import (
        OUTPUTS,
        cryodrgn_command,
        export_tilt_series,
        export_warp1,
    )

    warp1 = _is_warp1(args)
    _refuse(args, warp1)
    out = Path(args.output)
    if warp1:
        _, series = read_warp1_series(args.input, pixel_size_A=args.angpix)
        check_outputs(warp1_files(args.input, series), out, OUTPUTS)
        result = export_warp1(args.input, out, pixel_size_A=args.angpix)
    else:
        inputs = tomo_inputs(args)
        check_outputs(inputs.paths(), out, OUTPUTS)
        result = export_tilt_series(inputs.particles, inputs.tomograms, out, box=args.box,
                                    pixel_size_A=args.angpix, max_dose=args.max_dose,
                                    max_tilts=args.max_tilts, motion=inputs.motion,
                                    batch_size=args.batch, device=args.device)
    skipped = f" ({result.skipped} seen in no tilt, left out)" if result.skipped else ""
    print(f"Wrote {result.n_images} tilt images of {result.n_particles} particles{skipped} "
          f"({result.box} px, {result.pixel_size_A:g} Å) for cryoDRGN into {out}; at least "
          f"{result.min_tilts} tilts per particle. Reconstruct with:\n"
          f"  {cryodrgn_command(result, str(out / 'backproject'))}")
    return 0
