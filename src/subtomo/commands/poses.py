"""``subtomo poses export``: pose pickles for OPUS-TOMO / cryoDRGN."""

from __future__ import annotations

import argparse

from subtomo.commands.options import add_input, add_output


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("poses", help="export poses for heterogeneity tools")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="ACTION")
    exp = kinds.add_parser(
        "export", help="STAR → pose pickle (as OPUS-TOMO's parse_pose_star or cryoDRGN's), one "
        "pose per particle; --format cryodrgn of an optimisation set or Warp 1 sub-tilt file: "
        "the per-tilt images, poses and CTFs (subtomo export cryodrgn)",
        description="A particle STAR file (3D subtomograms): the pose pickle --o, one pose per "
        "particle (no CTF pickle: a subtomogram's CTF is a 3D volume, which cryoDRGN's (N, 9) "
        "table cannot hold). --format cryodrgn of a RELION 5 optimisation set or a Warp 1 "
        "sub-tilt STAR file: --o is a folder and gets what subtomo export cryodrgn writes "
        "(particles.star, Subtilts/*.mrcs images that are not CTF-premultiplied, poses.pkl, "
        "ctf.pkl; -D the image size, --Apix the output pixel size).")
    add_input(exp, help="particle STAR file (any flavour)")
    add_output(exp, help="output pickle (.pkl); a folder for --format cryodrgn of an "
               "optimisation set or Warp 1 file")
    exp.add_argument("-D", "--D", "--box", dest="box", type=int, required=True,
                     help="box size of the subtomograms, pixels")
    exp.add_argument("--Apix", "--angpix", dest="angpix", type=float, default=None,
                     help="pixel size of the subtomograms, Å (default: from the file)")
    exp.add_argument("--format", choices=("opus", "cryodrgn"), default="opus",
                     help="peer format (default opus)")
    exp.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from subtomo import interop

    if args.format == "cryodrgn":
        from subtomo.commands import export

        if export.is_tilt_series_input(args.input):
            return export.run_cryodrgn(export.cryodrgn_args(args.input, args.output, args.box,
                                                            args.angpix))
    n = interop.export_poses(args.input, args.output, box_px=args.box,
                             pixel_size_A=args.angpix, fmt=args.format)
    print(f"Wrote {args.format} poses of {n} particles to {args.output}.")
    return 0
