"""``subtomo convert dynamo2star | star2dynamo``."""

from __future__ import annotations

import argparse

from subtomo.commands.options import add_angpix, add_flavour, add_input, add_output, add_tomograms


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert Dynamo tables ⇄ particle STAR files")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    d2s = kinds.add_parser(
        "dynamo2star",
        help="Dynamo table (+ table map) → STAR (replaces dynamo2warp)",
        description="Coordinates x+dx, y+dy, z+dz (tomogram pixels), Dynamo ZXZ angles → RELION "
        "ZYZ. Default flavour: RELION 5 when tomogram sizes are known (--tomograms), "
        "else RELION 4 tomography.",
    )
    add_input(d2s, help="Dynamo table (.tbl)")
    d2s.add_argument("--tm", "-tm", "--table_map", dest="table_map", default=None,
                     help="table map (.doc) mapping column 20 to tomogram files")
    add_output(d2s, help="output STAR file")
    add_angpix(d2s, "tomogram pixel size in Å (default: Dynamo column 36 when set)")
    add_tomograms(d2s)
    add_flavour(d2s)
    d2s.set_defaults(run=_dynamo2star)

    s2d = kinds.add_parser("star2dynamo", help="particle STAR → Dynamo table + table map")
    add_input(s2d, help="particle STAR file (any flavour)")
    add_output(s2d, help="output table (.tbl); the table map is written beside it (.doc)")
    add_angpix(s2d, "image pixel size in Å (RELION 3.0 files without one)")
    add_tomograms(s2d)
    s2d.set_defaults(run=_star2dynamo)


def _dynamo2star(args: argparse.Namespace) -> int:
    from subtomo import interop
    ps, flavour = interop.dynamo2star(args.input, args.table_map, args.output,
                                      pixel_size_A=args.angpix, flavour=args.flavour,
                                      tomograms=args.tomograms)
    print(f"Wrote {len(ps)} particles to {args.output} ({flavour}).")
    return 0


def _star2dynamo(args: argparse.Namespace) -> int:
    from subtomo import interop
    table, doc = interop.star2dynamo(args.input, args.output, tomograms=args.tomograms,
                                     pixel_size_A=args.angpix)
    print(f"Wrote Dynamo table {table} and table map {doc}.")
    return 0
