"""``subtomo poses export``: pose pickles for OPUS-TOMO / cryoDRGN."""

from __future__ import annotations

import argparse

from subtomo.commands.options import add_input, add_output


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("poses", help="export poses for heterogeneity tools")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="ACTION")
    exp = kinds.add_parser(
        "export", help="STAR → pose pickle (as OPUS-TOMO's parse_pose_star or cryoDRGN's), one "
        "pose per particle; with --format opus and a tilt scheme also OUT.star + OUT_ctf/*.csv "
        "(dsd train_tomo --warp --datadir <OUT's folder>); --format cryodrgn of an optimisation "
        "set or Warp 1 sub-tilt file: the per-tilt images, poses and CTFs (subtomo export "
        "cryodrgn)",
        description="A particle STAR file (3D subtomograms): the pose pickle --o, one pose per "
        "particle; --format opus with a tilt scheme (--tilts, or simulation.json beside the "
        "STAR) also writes OUT.star and OUT_ctf/*.csv, the per-tilt CTF parameters OPUS-ET's "
        "--warp route reads (cryoDRGN gets no CTF pickle here: a subtomogram's CTF is a 3D "
        "volume, which its (N, 9) table cannot hold). --format cryodrgn of a RELION 5 "
        "optimisation set or a Warp 1 sub-tilt STAR file: --o is a folder and gets what subtomo "
        "export cryodrgn writes (particles.star, Subtilts/*.mrcs images that are not "
        "CTF-premultiplied, poses.pkl, ctf.pkl; -D the image size, --Apix the output pixel "
        "size).")
    add_input(exp, help="particle STAR file (any flavour)")
    add_output(exp, help="output pickle (.pkl); a folder for --format cryodrgn of an "
               "optimisation set or Warp 1 file")
    exp.add_argument("-D", "--D", "--box", dest="box", type=int, required=True,
                     help="box size of the subtomograms, pixels")
    exp.add_argument("--Apix", "--angpix", dest="angpix", type=float, default=None,
                     help="pixel size of the subtomograms, Å (default: from the file)")
    exp.add_argument("--format", choices=("opus", "cryodrgn"), default="opus",
                     help="peer format (default opus)")
    exp.add_argument("--tilts", default=None,
                     help="opus: tilt scheme JSON (tilt_range_deg, tilt_step_deg, dose_per_tilt, "
                     "order; default simulation.json beside the STAR) for the per-tilt CTF CSVs")
    exp.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from subtomo import interop

    if args.format == "cryodrgn":
        from subtomo.commands import export

        if export.is_tilt_series_input(args.input):
            return export.run_cryodrgn(export.cryodrgn_args(args.input, args.output, args.box,
                                                            args.angpix))
    n = interop.export_poses(args.input, args.output, box_px=args.box,
                             pixel_size_A=args.angpix, fmt=args.format, tilts=args.tilts)
    print(f"Wrote {args.format} poses of {n} particles to {args.output}.")
    return 0
