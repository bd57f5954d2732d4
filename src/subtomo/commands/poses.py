"""``subtomo poses export``: pose pickles for OPUS-TOMO / cryoDRGN."""

from __future__ import annotations

import argparse
from pathlib import Path

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
        "--warp route reads; for subtomograms cut from tilt series (--i an optimisation set, "
        "or particles with --t tomograms.star) the CSVs come from the tilt series instead: each "
        "particle's tilts with the defocus at its depth, the tilt's dose and Scale 0 where its "
        "box leaves the image; 2D stacks and tilts off the y axis are refused "
        "(cryoDRGN gets no CTF pickle here: a subtomogram's CTF is a 3D "
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
    exp.add_argument("--t", dest="tomograms", default=None,
                     help="opus: tomograms.star of the tilt series the subtomograms were cut "
                     "from: per-tilt CSVs from them (each particle's tilts, defocus at its "
                     "depth, dose; an optimisation set as --i names it)")
    exp.add_argument("--mot", dest="motion", default=None,
                     help="opus with tilt series: motion.star trajectories")
    exp.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from subtomo import interop

    if args.format == "cryodrgn":
        from subtomo.commands import export

        if export.is_tilt_series_input(args.input):
            return export.run_cryodrgn(export.cryodrgn_args(args.input, args.output, args.box,
                                                            args.angpix))
    star, tables = args.input, None
    if args.format == "opus" and (args.tomograms or _is_optimisation_set(args.input)):
        star, tables = _tilt_series_tables(args)
    n = interop.export_poses(star, args.output, box_px=args.box, pixel_size_A=args.angpix,
                             fmt=args.format, tilts=args.tilts, tilt_tables=tables)
    print(f"Wrote {args.format} poses of {n} particles to {args.output}.")
    if tables:
        print(opus_hint(tables, args.output))
    return 0


def opus_hint(tables, output: str) -> str:
    """OPUS's line for these CSVs: it maps each row to the nearest of its nominal tilts
    −R, −R + S, … R (rows farther than S/2 are dropped), so R and S come from the angles."""
    import numpy as np

    angles = np.unique(np.round(np.concatenate([t.TiltAngle.to_numpy() for t in tables]), 1))
    step = float(np.median(np.diff(angles))) if len(angles) > 1 else 1.0
    tilt_range = step * np.ceil(np.abs(angles).max() / step - 0.25)
    folder = Path(output).parent
    return (f"OPUS-ET: dsd train_tomo {folder / (Path(output).stem + '.star')} --poses {output} "
            f"--warp --datadir {folder} --tilt-range {tilt_range:g} --tilt-step {step:g}")


def _is_optimisation_set(path: str | None) -> bool:
    from subtomo.commands.export import is_tilt_series_input
    from subtomo.io.warp1_series import is_warp1_series

    return is_tilt_series_input(path) and not is_warp1_series(path)


def _tilt_series_tables(args: argparse.Namespace):
    """The particle STAR and each particle's OPUS CSV rows from its tilt series."""
    from subtomo.io.files import check_not_input
    from subtomo.io.tomograms import read_inputs
    from subtomo.tomo.export_opus import opus_tilt_tables

    opt = args.input if _is_optimisation_set(args.input) else None
    inputs = read_inputs(opt, particles=None if opt else args.input, tomograms=args.tomograms,
                         motion=args.motion)
    check_not_input(args.output, *inputs.paths())
    tables = opus_tilt_tables(inputs.particles, inputs.tomograms, box_px=args.box,
                              pixel_size_A=args.angpix, motion=inputs.motion)
    return inputs.files["particles"], tables
