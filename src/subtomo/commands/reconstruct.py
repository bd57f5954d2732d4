"""``subtomo reconstruct``: CTF-weighted reconstruction (``relion_reconstruct --3d_rot --ctf``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from subtomo.commands.options import (
    add_accepted,
    add_max_memory,
    add_output,
    add_particle_input,
    read_particle_input,
)
from subtomo.io.files import check_not_input, check_outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="reconstruct a map from subtomograms with known poses",
        description="Fourier-space gridding of CTF-weighted subtomograms with CTF² weights. "
        "With --halves also writes the unregularised half maps <stem>_half1/2.mrc (for "
        "postprocess), <stem>_fsc.star and <stem>_fsc.png. A Warp 1 sub-tilt STAR file (one row "
        "per tilt image, grouped by rlnGroupName) is reconstructed with its per-image poses and "
        "CTFs (give --angpix: its rows hold the unbinned pixel size).")
    add_particle_input(p, help="particle STAR file (any flavour)")
    add_output(p, help="output map (.mrc)")
    p.add_argument("--ctf", action="store_true", help="weight by the 3D CTF volumes (rlnCtfImage)")
    add_accepted(p, "--3d_rot", help="3D subtomograms (RELION's option; always so here)")
    p.add_argument("--sym", default="C1", help="point-group symmetry (RELION's axes)")
    p.add_argument("--angpix", type=float, default=None, help="pixel size, Å (override)")
    p.add_argument("--subset", type=int, choices=(1, 2), default=None,
                   help="only half set 1 or 2 (rlnRandomSubset)")
    p.add_argument("--maxres", type=float, default=None, help="low-pass the map to this Å")
    p.add_argument("--halves", action="store_true",
                   help="reconstruct both half sets, their FSC and a Wiener-filtered full map")
    p.add_argument("--pad", type=int, default=2, help="padding factor of the Fourier grid")
    p.add_argument("--batch", type=int, default=16, help="particles per batch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_max_memory(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from subtomo.io.mrc import write_mrc
    from subtomo.io.warp1_series import is_warp1_series, read_warp1_series, warp1_files
    from subtomo.refine.reconstruct import reconstruct, write_fsc_outputs
    from subtomo.refine.warp1 import reconstruct_warp1

    out = Path(args.output)
    check_not_input(out, args.input)
    stem = out.with_suffix("").name
    beside = [f"{stem}{s}" for s in ("_fsc.star", "_fsc.png", "_half1.mrc", "_half2.mrc")]
    names = [out.name, *(beside if args.halves else ())]
    options = dict(sym=args.sym, halves=args.halves, subset=args.subset, maxres_A=args.maxres,
                   pad=args.pad, batch_size=args.batch, device=args.device)
    if args.tomograms is None and is_warp1_series(args.input):  # one row per tilt image
        ps, series = read_warp1_series(args.input, pixel_size_A=args.angpix)
        check_outputs(warp1_files(args.input, series), out.parent, names)
        if args.angpix is None:  # Warp 1 writes the unbinned pixel size in every row
            print(f"subtomo: warning: {args.input}: pixel size {ps.pixel_size_A()[0]:g} Å from "
                  "its rows; if the images were binned, give --angpix", file=sys.stderr)
        result = reconstruct_warp1(ps, series, **options)
    else:
        ps = read_particle_input(args)
        check_outputs(ps.files(), out.parent, names)
        result = reconstruct(ps, ctf=args.ctf, max_memory_gib=args.max_memory, **options)
    write_mrc(out, result.map, result.pixel_size_A)
    line = f"Reconstructed {result.n_particles} particles into {out}"
    if args.halves:
        write_fsc_outputs(result, out)
        line += f"; half-map FSC 0.143 resolution {result.resolution_A:.2f} Å"
    print(line + ".")
    return 0
