"""``subtomo reconstruct-particle``: the average from the tilt series
(``relion_tomo_reconstruct_particle``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from subtomo.commands.options import add_tomo_inputs, tomo_inputs
from subtomo.io.files import check_outputs

OUTPUTS = ("half1.mrc", "half2.mrc", "merged.mrc", "fsc.star", "fsc.png",
           "optimisation_set.star", "note.txt")  # what the job writes into --o

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct-particle", help="gold-standard average straight from the tilt series",
        description="CTF-weighted central slices of every visible tilt of every particle, per "
        "half set; writes DIR/half1.mrc, DIR/half2.mrc, DIR/merged.mrc, DIR/fsc.star (+ .png), "
        "DIR/optimisation_set.star (with the references) and DIR/note.txt.")
    add_tomo_inputs(p)
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--b", "--box", dest="box", type=int, required=True,
                   help="box size (px at the output pixel size)")
    p.add_argument("--crop", type=int, default=None, help="crop the maps to this box")
    p.add_argument("--taper", type=float, default=0.0,
                   help="taper the written maps to the sphere over this many px (RELION 5 "
                   "writes --taper 10; 0, the default: off; the FSC is that of the untapered "
                   "half maps)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bin", type=float, default=None, help="binning of the tilt series")
    group.add_argument("--angpix", "--binned_angpix", dest="angpix", type=float, default=None,
                       help="output pixel size, Å (any ratio to the tilt series')")
    p.add_argument("--circle_crop", action="store_true",
                   help="cut each 2D crop to a soft circle first (RELION 5's default)")
    p.add_argument("--sym", default="C1", help="point-group symmetry")
    p.add_argument("--batch", type=int, default=32, help="particles per batch")
    p.add_argument("--j", type=int, default=None, help="CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from subtomo.io.tomograms import write_optimisation_set
    from subtomo.tomo.reconstruct_particle import reconstruct_particle, write_outputs

    if args.j:
        torch.set_num_threads(args.j)
    inputs = tomo_inputs(args)
    check_outputs(inputs.paths(), args.output, OUTPUTS)
    apix = args.angpix
    if args.bin is not None:
        first = next(iter(inputs.tomograms.series.values()))
        apix = first.pixel_size_A * args.bin
    result = reconstruct_particle(inputs.particles, inputs.tomograms, box=args.box,
                                  crop=args.crop, pixel_size_A=apix, sym=args.sym,
                                  motion=inputs.motion, batch_size=args.batch,
                                  circle_crop=args.circle_crop,
                                  device=args.device)
    out = Path(args.output)
    write_outputs(result, out, args.taper)
    files = inputs.files
    write_optimisation_set(out / "optimisation_set.star", particles=files["particles"],
                           tomograms=files["tomograms"], trajectories=files["trajectories"],
                           ref1=out / "half1.mrc", ref2=out / "half2.mrc", fsc=out / "fsc.star",
                           mask=files["mask"])
    (out / "note.txt").write_text(" ".join(["subtomo", *sys.argv[1:]]) + "\n")
    print(f"Reconstructed {result.n_particles} particles ({result.tilt_images} tilt images, "
          f"{result.skipped} not visible) into {out}: half-map FSC 0.143 resolution "
          f"{result.resolution_A:.2f} Å.")
    return 0
