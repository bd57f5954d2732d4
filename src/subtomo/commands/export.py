"""``subtomo export cryodrgn|tomodrgn``: the files another program's tilt-series route reads
(``subtomo poses export --format cryodrgn`` on a tilt-series input runs the same export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from subtomo.commands.options import add_tomo_inputs, tomo_inputs
from subtomo.io.files import check_outputs

TARGETS = ("cryodrgn", "tomodrgn")  # OPUS-TOMO's 3D subtomograms + CTF volumes: `extract`
PREMULTIPLIED_HELP = ("write CTF-premultiplied images (× CTF × exposure, as RELION 5 and "
                      "WarpTools), flagged rlnCtfDataAreCtfPremultiplied 1")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="inputs for other programs (cryoDRGN-ET, tomoDRGN)")
    targets = parser.add_subparsers(dest="target", required=True, metavar="PROGRAM")
    _register_cryodrgn(targets)
    _register_tomodrgn(targets)


def _register_cryodrgn(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "cryodrgn", help="per-tilt images, pose and CTF pickles for cryoDRGN-ET",
        description="Writes DIR/particles.star (Warp 1 sub-tilt layout: one row per tilt "
        "image, grouped by rlnGroupName, in exposure order), DIR/Subtilts/*.mrcs (the images, "
        "not CTF-premultiplied: cryoDRGN multiplies by the CTF itself), DIR/poses.pkl and "
        "DIR/ctf.pkl (cryodrgn parse_pose_star / parse_ctf_star layouts), and prints the "
        "cryodrgn backproject_voxel line. --i a RELION 5 optimisation set (subtomograms or 2D "
        "stacks: the images are re-cut from its tilt series) or a Warp 1 sub-tilt STAR file "
        "(its images are used as they are). cryoDRGN cannot take CTF-premultiplied images "
        "(backproject_voxel and train_vae multiply by the CTF themselves; its parse_warptools "
        "only drops --ctf, leaving the data CTF²-filtered): --premultiplied is refused.")
    _tilt_series_options(p, "for a Warp 1 STAR file, the images' pixel size (Warp 1 writes "
                         "the unbinned one)")
    p.add_argument("--premultiplied", action="store_true",
                   help="refused: cryoDRGN needs images that are not CTF-premultiplied")
    p.set_defaults(run=run_cryodrgn)


def _register_tomodrgn(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "tomodrgn", help="a WarpTools particle series (2D stacks) that tomoDRGN reads",
        description="Writes DIR/tomodrgn_optimisation_set.star, DIR/particles.star, "
        "DIR/tomograms.star and DIR/Subtilts/<tomogram>/*.mrcs in WarpTools' layout (the labels "
        "tomoDRGN's auto-detection wants, exactly; one image per tilt, rlnTomoVisibleFrames "
        "marking the ones seen; rotation-only rlnTomoProjX/Y/Z; coordinates in the images' "
        "pixels, origins applied), and prints the tomodrgn backproject_voxel line. tomoDRGN "
        "does not read a RELION 5 set as RELION writes it (centred Å coordinates, one image "
        "per visible tilt, tilt angles instead of matrices); subtomo reads both. Images: not "
        "CTF-premultiplied (tomoDRGN phase-flips them), or with --premultiplied × CTF × "
        "exposure (read them with --uninvert-data). --i a RELION 5 optimisation set "
        "(subtomograms or 2D stacks: the images are cut from its tilt series).")
    _tilt_series_options(p)
    p.add_argument("--premultiplied", action="store_true", help=PREMULTIPLIED_HELP)
    p.set_defaults(run=run_tomodrgn)


def _tilt_series_options(p: argparse.ArgumentParser, angpix: str = "") -> None:
    add_tomo_inputs(p)
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--b", "--box", dest="box", type=int, default=None,
                   help="image size (px at the output pixel size); tilt-series input only")
    p.add_argument("--angpix", dest="angpix", type=float, default=None,
                   help="output pixel size, Å (default: the tilt series')"
                   + (f"; {angpix}" if angpix else ""))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--max_dose", type=float, default=None,
                       help="keep tilts with pre-exposure ≤ this (e/Å²)")
    group.add_argument("--max_tilts", type=int, default=None,
                       help="keep the N least exposed tilts")
    p.add_argument("--batch", type=int, default=32, help="particles per batch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def is_tilt_series_input(path: str | None) -> bool:
    """An optimisation set or a Warp 1 sub-tilt file: what the cryoDRGN export cuts from."""
    from subtomo.io.star_text import read_star
    from subtomo.io.warp1_series import is_warp1_series

    if path is None or not Path(path).is_file():
        return False
    blocks = read_star(path)
    return is_warp1_series(path) or any(
        "rlnTomoParticlesFile" in (b if isinstance(b, dict) else b.columns)
        for b in blocks.values())


def cryodrgn_args(path: str, output: str, box: int | None, angpix: float | None
                  ) -> argparse.Namespace:
    """``export cryodrgn``'s arguments for ``poses export --format cryodrgn``."""
    warp1 = _is_warp1(argparse.Namespace(input=path, particles=None, tomograms=None,
                                         motion=None))
    return argparse.Namespace(input=path, particles=None, tomograms=None, motion=None,
                              output=output, box=None if warp1 else box, angpix=angpix,
                              max_dose=None, max_tilts=None, batch=32, device="cpu",
                              premultiplied=False)


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


def run_cryodrgn(args: argparse.Namespace) -> int:
    """``export cryodrgn`` (and ``poses export --format cryodrgn`` of a tilt-series input)."""
    from subtomo.errors import InputError
    from subtomo.io.warp1_series import read_warp1_series, warp1_files
    from subtomo.tomo.export_cryodrgn import (
        OUTPUTS,
        cryodrgn_command,
        export_tilt_series,
        export_warp1,
    )

    if getattr(args, "premultiplied", False):
        raise InputError(args.input, "cryoDRGN cannot take CTF-premultiplied images (it "
                         "multiplies by the CTF itself); export without --premultiplied, or "
                         "use subtomo export tomodrgn --premultiplied", field="--premultiplied")
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


def run_tomodrgn(args: argparse.Namespace) -> int:
    from subtomo.tomo.export_tomodrgn import OUTPUTS, export_tomodrgn, tomodrgn_command

    if _is_warp1(args):
        from subtomo.errors import InputError

        raise InputError(args.input, "a Warp 1 sub-tilt file is read by tomoDRGN as it is "
                         "(its TiltSeriesStarfile); give an optimisation set", field="--i")
    _refuse(args, False)
    inputs = tomo_inputs(args)
    out = Path(args.output)
    check_outputs(inputs.paths(), out, OUTPUTS)
    result = export_tomodrgn(inputs.particles, inputs.tomograms, out, box=args.box,
                             pixel_size_A=args.angpix, premultiplied=args.premultiplied,
                             max_dose=args.max_dose, max_tilts=args.max_tilts,
                             motion=inputs.motion, batch_size=args.batch, device=args.device)
    skipped = f" ({result.skipped} seen in no tilt, left out)" if result.skipped else ""
    kind = "CTF-premultiplied" if result.premultiplied else "not CTF-premultiplied"
    print(f"Wrote {result.n_images} tilt images ({kind}) of {result.n_particles} particles"
          f"{skipped} ({result.box} px, {result.pixel_size_A:g} Å) for tomoDRGN into {out}. "
          f"Reconstruct with:\n  {tomodrgn_command(result, str(out / 'backproject' / 'map.mrc'))}")
    return 0
