"""``subtomo poses export``: pose pickles for OPUS-TOMO / cryoDRGN."""

from __future__ import annotations

import argparse

from subtomo import interop
from subtomo.commands.options import add_input, add_output


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("poses", help="export poses for heterogeneity tools")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="ACTION")
    exp = kinds.add_parser(
        "export", help="STAR → pose pickle (as OPUS-TOMO's parse_pose_star or cryoDRGN's), one "
        "pose per particle; with --format opus and a tilt scheme also OUT.star + OUT_ctf/*.csv "
        "(dsd train_tomo --warp --datadir <OUT's folder>); per-tilt-image poses, CTFs and "
        "images for cryoDRGN-ET: subtomo export cryodrgn")
    add_input(exp, help="particle STAR file (any flavour)")
    add_output(exp, help="output pickle (.pkl)")
    exp.add_argument("-D", "--D", "--box", dest="box", type=int, required=True,
                     help="box size of the subtomograms, pixels")
    exp.add_argument("--Apix", "--angpix", dest="angpix", type=float, default=None,
                     help="pixel size of the subtomograms, Å (default: from the file)")
    exp.add_argument("--format", choices=interop.POSE_FORMATS, default="opus",
                     help="peer format (default opus)")
    exp.add_argument("--tilts", default=None,
                     help="opus: tilt scheme JSON (tilt_range_deg, tilt_step_deg, dose_per_tilt, "
                     "order; default simulation.json beside the STAR) for the per-tilt CTF CSVs")
    exp.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    n = interop.export_poses(args.input, args.output, box_px=args.box,
                             pixel_size_A=args.angpix, fmt=args.format, tilts=args.tilts)
    print(f"Wrote {args.format} poses of {n} particles to {args.output}.")
    return 0
