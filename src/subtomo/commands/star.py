"""``subtomo star info | downgrade | upgrade | convert``."""

from __future__ import annotations

import argparse
from pathlib import Path

from subtomo.commands.options import add_angpix, add_flavour, add_input, add_output, add_tomograms


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("star", help="inspect and convert particle STAR files")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="ACTION")

    info = kinds.add_parser("info", help="flavour, particle count, pixel size, tomograms, columns")
    info.add_argument("file", help="particle STAR file")
    info.set_defaults(run=_info)

    down = kinds.add_parser(
        "downgrade", help="RELION 3.1+ → 3.0 (like relion_star_downgrade)",
        description="Writes <stem>_rln3.0.star by default. Shifts are applied to the "
        "coordinates (centre = coordinate − origin) unless --keep_origins.")
    add_input(down, "-s", "--s", help="RELION 3.1+ particle STAR file")
    add_output(down, required=False, help="output (default: <stem>_rln3.0.star beside input)")
    down.add_argument("--keep_origins", action="store_true",
                      help="keep shifts as rlnOriginX/Y/Z (pixels) instead of applying them")
    down.set_defaults(run=_downgrade)

    up = kinds.add_parser("upgrade", help="RELION 3.0 / Warp → RELION 5 (or 4 without sizes)")
    add_input(up, help="RELION 3.0 or Warp particle STAR file")
    add_output(up, required=False, help="output (default: <stem>_rln5.star beside input)")
    add_angpix(up, "pixel size in Å (when the file has no rlnDetectorPixelSize)")
    add_tomograms(up)
    add_flavour(up)
    up.set_defaults(run=_upgrade)

    conv = kinds.add_parser("convert", help="any flavour → any flavour")
    add_input(conv, help="particle STAR file")
    add_output(conv, help="output STAR file")
    add_angpix(conv, "pixel size in Å (RELION 3.0 files without one)")
    add_tomograms(conv)
    add_flavour(conv)
    conv.set_defaults(run=_convert)


def _info(args: argparse.Namespace) -> int:
    from subtomo import interop
    info = interop.star_info(args.file)
    for key, value in info.items():
        if key == "columns":
            value = " ".join(value)
        print(f"{key:>14}: {value}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    from subtomo import interop
    out = interop.star_downgrade(args.input, args.output, keep_origins=args.keep_origins)
    print(f"Wrote RELION 3.0 STAR file {out}.")
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from subtomo import interop
    src = Path(args.input)
    out = args.output or src.with_name(f"{src.stem}_rln5.star")
    flavour = interop.star_convert(src, out, flavour=args.flavour, pixel_size_A=args.angpix,
                                   tomograms=args.tomograms)
    print(f"Wrote {out} ({flavour}).")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from subtomo import interop
    flavour = interop.star_convert(args.input, args.output, flavour=args.flavour,
                                   pixel_size_A=args.angpix, tomograms=args.tomograms)
    print(f"Wrote {args.output} ({flavour}).")
    return 0
