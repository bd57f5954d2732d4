"""``subtomo extract``: subtomograms + 3D CTF volumes from tilt series (``relion_tomo_subtomo``),
or from reconstructed tomograms and coordinate files (``relion_preprocess --extract`` with
``relion_ctf_prepare.py``'s per-particle CTF volumes)."""

from __future__ import annotations

import argparse

from subtomo.commands.options import add_flavour, add_tomo_inputs, tomo_inputs
from subtomo.errors import InputError
from subtomo.io.files import check_outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="subtomograms and 3D CTF volumes from tilt series or tomograms",
        description="From tilt series (--i optimisation_set.star or --p/--t/--mot): per "
        "particle and tilt a crop at the projected position (sub-pixel phase), gridded into a "
        "3D Fourier volume, with its 3D CTF (defocus at the particle's depth, exposure) in "
        "RELION's layout; DIR/Subtomograms/<tomogram>/<n>_data.mrc + _ctf.mrc (or, with "
        "--2d_stacks, <n>_stack2d.mrcs), DIR/particles.star and DIR/optimisation_set.star "
        "(particles, tomograms, trajectories) for the next command. From tomograms "
        "(--tomograms_star with --coord_suffix): boxes cut from each tomogram, CTF volumes "
        "from the IMOD files beside it (.tlt, ctfplotter .defocus, .order).")
    add_tomo_inputs(p)
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--b", "--box", "--extract_size", dest="box", type=int, default=None,
                   help="box size, px at the output pixel size (2D crop for --2d_stacks)")
    p.add_argument("--crop", type=int, default=None, help="output box (default --b)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bin", type=float, default=None,
                       help="binning of the tilt series (of the first tomogram with "
                       "--tomograms_star)")
    group.add_argument("--angpix", "--binned_angpix", dest="angpix", type=float, default=None,
                       help="output pixel size, Å (any ratio; with --tomograms_star "
                       "≥ the tomogram's and --b × ratio whole)")
    p.add_argument("--max_dose", type=float, default=None,
                   help="only tilts with at most this pre-exposure, e/Å²")
    p.add_argument("--max_tilts", type=int, default=None, help="only the N least exposed tilts")
    p.add_argument("--norm", action="store_true",
                   help="normalise: zero mean, unit σ outside --bg_radius")
    p.add_argument("--bg_radius", type=float, default=None,
                   help="background radius, px (default 75 %% of half the box)")
    p.add_argument("--recenter", action="store_true",
                   help="extract at coordinate − origin and zero the origins (tilt series)")
    p.add_argument("--2d_stacks", "--stack2d", dest="stacks_2d", action="store_true",
                   help="RELION 5 pseudo-subtomograms as 2D stacks (CTF-premultiplied; tilt "
                   "series)")
    p.add_argument("--premultiplied", action="store_true",
                   help="RELION 5's 3D pseudo-subtomograms (relion_tomo_subtomo's): data "
                   "Σ τ CTF × crop, <n>_weights.mrc Σ τ CTF² above the multiplicity Σ τ, "
                   "rlnCtfDataAreCtfPremultiplied 1 (tilt series)")
    p.add_argument("--ctf_layout", choices=("relion", "warp"), default="relion",
                   help="CTF volumes: RELION's centred full cube or Warp's half spectrum")
    p.add_argument("--pad2d", type=int, choices=(1, 2), default=None,
                   help="zero-pad crops before gridding (2: accurate, 1: fastest, the default; "
                   "tilt series)")
    p.add_argument("--tomograms_star", default=None,
                   help="RELION 3.0 STAR listing tomograms (rlnMicrographName): extract from "
                   "reconstructed tomograms")
    p.add_argument("--coord_suffix", default=None,
                   help="coordinate files <tomogram stem><suffix> beside each tomogram "
                   "(default .coords)")
    p.add_argument("--tomo_angpix", type=float, default=None,
                   help="tomogram pixel size, Å (default: its header)")
    p.add_argument("--defocus", default=None,
                   help="ctfplotter file name in each tomogram's folder (default "
                   "ctfplotter.defocus)")
    p.add_argument("--hand", type=float, choices=(-1.0, 1.0), default=None,
                   help="defocus handedness, the sign of the depth term (rlnTomoHand; default "
                   "−1 for tomograms, the tomograms.star's for tilt series)")
    p.add_argument("--invert_contrast", action="store_true",
                   help="multiply the boxes by −1 (tomograms: dark protein → white; tilt "
                   "series, already flipped to white: back to dark)")
    p.add_argument("--batch", type=int, default=32, help="particles per batch")
    p.add_argument("--j", type=int, default=None, help="CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_flavour(p, default="relion5")
    p.set_defaults(run=_run)


# options of one route only: dest → option
TILT_SERIES_ONLY = {"input": "--i", "particles": "--p", "tomograms": "--t", "motion": "--mot",
                    "recenter": "--recenter", "stacks_2d": "--2d_stacks", "pad2d": "--pad2d",
                    "premultiplied": "--premultiplied"}
TOMOGRAMS_ONLY = {"coord_suffix": "--coord_suffix", "tomo_angpix": "--tomo_angpix",
                  "defocus": "--defocus"}


def _refuse(args: argparse.Namespace, options: dict[str, str], needs: str) -> None:
    """One line naming the first option given that the chosen route has no use for."""
    for dest, flag in options.items():
        if getattr(args, dest) not in (None, False):
            raise InputError(None, f"{flag} needs {needs}", field=flag)


def _run(args: argparse.Namespace) -> int:
    import torch

    if args.j:
        torch.set_num_threads(args.j)
    if args.box is None:
        raise InputError(None, "give the box size --b", field="--b")
    if args.tomograms_star:
        _refuse(args, TILT_SERIES_ONLY, "tilt series (--i/--t), not --tomograms_star")
        return _run_tomograms(args)
    _refuse(args, TOMOGRAMS_ONLY, "--tomograms_star (tomograms and their IMOD files)")
    from pathlib import Path

    from subtomo.io.tomograms import write_optimisation_set
    from subtomo.tomo.extract import ExtractOptions, extract_subtomograms

    inputs = tomo_inputs(args)
    check_outputs(inputs.paths(), args.output,
                  ("particles.star", "optimisation_set.star", "Subtomograms/*"))
    if args.hand is not None:
        for ts in inputs.tomograms.series.values():
            ts.globals["rlnTomoHand"] = args.hand
    first = next(iter(inputs.tomograms.series.values()))
    apix = args.angpix or (first.pixel_size_A * args.bin if args.bin else None)
    options = ExtractOptions(
        box=args.box, crop=args.crop, pixel_size_A=apix, max_dose=args.max_dose,
        max_tilts=args.max_tilts, normalise=args.norm, bg_radius_px=args.bg_radius,
        recenter=args.recenter, stacks_2d=args.stacks_2d,
        premultiplied=args.premultiplied, flavour=args.flavour,
        ctf_layout=args.ctf_layout, pad2d=args.pad2d or 1, invert=args.invert_contrast,
        batch_size=args.batch, device=args.device)
    result = extract_subtomograms(inputs.particles, inputs.tomograms, args.output, options,
                                  motion=inputs.motion,
                                  motion_source=inputs.files["trajectories"])
    files = inputs.files  # the next command starts from DIR/optimisation_set.star
    write_optimisation_set(Path(args.output) / "optimisation_set.star", particles=result.star,
                           tomograms=files["tomograms"], trajectories=files["trajectories"])
    print(f"Extracted {result.written} particles at {result.pixel_size_A:.3g} Å/px into "
          f"{args.output}/Subtomograms; {result.skipped} skipped (their boxes leave every tilt "
          f"image); {result.star} ({args.flavour}).")
    return 0


def _tomogram_inputs(star: str, coord_suffix: str) -> list:
    """The STAR file, the tomograms it lists and their coordinate files."""
    from pathlib import Path

    import pandas as pd

    from subtomo.io.files import resolve
    from subtomo.io.star_text import read_star

    names = [str(name) for block in read_star(star).values()
             if isinstance(block, pd.DataFrame) and "rlnMicrographName" in block
             for name in block["rlnMicrographName"]]
    tomograms = [resolve(name, Path(star).parent) for name in names]
    return [star, *tomograms, *(t.parent / f"{t.stem}{coord_suffix}" for t in tomograms)]


def _run_tomograms(args: argparse.Namespace) -> int:
    from subtomo.tomo.from_tomograms import extract_from_tomograms

    check_outputs(_tomogram_inputs(args.tomograms_star, args.coord_suffix or ".coords"),
                  args.output, ("particles.star", "Subtomograms/*"))
    result = extract_from_tomograms(
        args.tomograms_star, args.output, box=args.box, crop=args.crop,
        pixel_size_A=args.angpix, binning=args.bin, max_dose=args.max_dose,
        max_tilts=args.max_tilts, coord_suffix=args.coord_suffix or ".coords",
        tomo_pixel_size_A=args.tomo_angpix, defocus_name=args.defocus or "ctfplotter.defocus",
        hand=-1.0 if args.hand is None else args.hand, normalise=args.norm,
        bg_radius_px=args.bg_radius, invert=args.invert_contrast, flavour=args.flavour,
        ctf_layout=args.ctf_layout, batch_size=args.batch, device=args.device)
    print(f"Extracted {result.written} particles at {result.pixel_size_A:.3g} Å/px from "
          f"tomograms into {args.output}; {result.skipped} skipped (box outside the "
          f"tomogram); {result.star}.")
    return 0
