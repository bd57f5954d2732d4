"""``subtomo tomograms import`` / ``export``: tilt series from SerialEM, IMOD, AreTomo and Warp
files into a RELION 5 ``tomograms.star`` (``relion_tomo_import_tomograms``), and alignments
back out as IMOD or AreTomo files."""

from __future__ import annotations

import argparse
from pathlib import Path

FILE_OPTIONS = {
    "stack": "tilt-image stack (MRC), one image per tilt",
    "mdoc": "SerialEM .mdoc (nominal angles, exposure order, pixel size, tilt axis)",
    "imod": "IMOD basename: BASE.xf, BASE.tlt (+ BASE.xtilt and tilt.com beside them if there)",
    "tilt_com": "IMOD tilt.com (default: tilt.com beside the .xf, when there)",
    "aln": "AreTomo2/AreTomo3 .aln alignment",
    "warp_xml": "Warp tilt-series XML (beside the .tomostar)",
    "tlt": "tilt angles (one per line) when there is no alignment",
    "defocus": "ctfplotter .defocus (versions 2 and 3)",
    "order": "exposure list 'tilt_angle exposure' per line (seed 002's .order)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tomograms", help="import tilt series / export alignments",
                       description="Tilt-series sets (RELION 5 tomograms.star) from and to "
                       "other programs' files.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import", help="build tomograms.star from SerialEM/IMOD/AreTomo/Warp files",
        description="Every file option may contain {name}, replaced by each --name in turn. "
        "Checks every file against the stack and the others, then writes OUT (RELION 5 "
        "tomograms.star) and one tilt_series/<name>.star per tilt series beside it.")
    for key, text in FILE_OPTIONS.items():
        imp.add_argument(f"--{key}", required=key == "stack", default=None, help=text)
    imp.add_argument("--name", action="append", default=None,
                     help="tilt-series name (repeat, or comma-separate); default: stack stem")
    imp.add_argument("--o", "-o", "--output", dest="output", required=True,
                     help="output tomograms.star")
    imp.add_argument("--angpix", type=float, default=None, help="tilt-series pixel size, Å")
    imp.add_argument("--voltage", "--kv", dest="voltage", type=float, default=None,
                     help="acceleration voltage, kV")
    imp.add_argument("--cs", "--Cs", dest="cs", type=float, default=2.7,
                     help="spherical aberration, mm")
    imp.add_argument("--q0", "--amplitude_contrast", dest="q0", type=float, default=0.1,
                     help="amplitude contrast")
    imp.add_argument("--dose_per_tilt", "--dose_per_tilt_image", dest="dose_per_tilt",
                     type=float, default=None, help="exposure per tilt image, e/Å²")
    imp.add_argument("--order_scale", type=float, default=1.0,
                     help="e/Å² per unit of the .order file's exposure column (the dose per "
                     "tilt when it counts tilts)")
    imp.add_argument("--tomo_size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                     help="tomogram size, tilt-series px (default: image size × thickness)")
    imp.add_argument("--thickness", type=int, default=None,
                     help="tomogram thickness, tilt-series px (default: tilt.com/.aln's)")
    imp.add_argument("--tilt_axis", type=float, default=None,
                     help="nominal tilt-axis angle, degrees (default: the mdoc's)")
    imp.add_argument("--defocus_um", type=float, default=None,
                     help="one defocus for every tilt, µm (when there is no CTF file)")
    imp.add_argument("--hand", type=float, choices=(-1.0, 1.0), default=None,
                     help="rlnTomoHand (default −1; Warp: from AreAnglesInverted)")
    imp.add_argument("--defocus_frame", choices=("raw", "aligned"), default="raw",
                     help="stack ctfplotter measured astigmatism angles on")
    imp.set_defaults(run=_run_import)

    exp = actions.add_parser("export", help="write IMOD (.xf .tlt .xtilt .defocus) or AreTomo "
                             "(.aln) files for every tilt series")
    exp.add_argument("--i", "-i", "--input", dest="input", required=True,
                     help="tomograms.star (RELION 5 or 4)")
    exp.add_argument("--o", "-o", "--output", dest="output", required=True,
                     help="output folder (files named by rlnTomoName)")
    exp.add_argument("--imod", action="store_true", help="IMOD .xf .tlt .xtilt .defocus")
    exp.add_argument("--aretomo", action="store_true", help="AreTomo .aln")
    exp.add_argument("--image_size", type=int, nargs=2, default=None, metavar=("W", "H"),
                     help="tilt-image size, px (default: from the stacks' headers)")
    exp.set_defaults(run=_run_export)


def _names(args: argparse.Namespace) -> list[str]:
    if args.name:
        return [n.strip() for item in args.name for n in item.split(",") if n.strip()]
    return [Path(args.stack).stem]


def _run_import(args: argparse.Namespace) -> int:
    from subtomo.tomo.importing import Optics, Sources, import_tomograms

    sources = []
    for name in _names(args):
        files = {key: (Path(getattr(args, key).replace("{name}", name))
                       if getattr(args, key) else None) for key in FILE_OPTIONS}
        sources.append(Sources(name=name, **files))
    optics = Optics(pixel_size_A=args.angpix, voltage_kv=args.voltage, cs_mm=args.cs,
                    amplitude_contrast=args.q0, dose_per_tilt=args.dose_per_tilt,
                    order_scale=args.order_scale,
                    tomo_size_px=tuple(args.tomo_size) if args.tomo_size else None,
                    thickness_px=args.thickness, tilt_axis_deg=args.tilt_axis,
                    defocus_um=args.defocus_um, hand=args.hand,
                    defocus_frame=args.defocus_frame)
    tset, notes = import_tomograms(sources, optics, args.output)
    for note in notes:
        print(f"note: {note}")
    tilts = sum(ts.n_tilts for ts in tset.series.values())
    print(f"Imported {len(tset)} tilt series ({tilts} tilt images) into {args.output}.")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from subtomo.errors import InputError
    from subtomo.io.tomograms import read_tomogram_set
    from subtomo.tomo.importing import check_export, export_tilt_series

    formats = tuple(f for f in ("imod", "aretomo") if getattr(args, f))
    if not formats:
        raise InputError(None, "choose a format: --imod and/or --aretomo", field="--imod")
    tset = read_tomogram_set(args.input, image_size=tuple(args.image_size)
                             if args.image_size else None)
    for ts in tset.series.values():
        check_export(ts, formats)  # every series first: nothing written on bad input
    written = []
    for ts in tset.series.values():
        written += export_tilt_series(ts, args.output, formats)
    print(f"Wrote {len(written)} files for {len(tset)} tilt series into {args.output}.")
    return 0
