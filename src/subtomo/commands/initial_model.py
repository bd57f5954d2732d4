"""``subtomo initial-model``: de novo 3D model(s) from subtomograms (RELION's InitialModel)."""

from __future__ import annotations

import argparse
from pathlib import Path

from subtomo.commands.options import (
    add_job_options,
    add_output,
    add_particle_input,
    job_folder,
    job_options,
    job_run,
    read_particle_input,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "initial-model", aliases=["initial_model"],
        help="de novo initial model from the particles alone (no reference)",
        description="Stochastic (online) expectation-maximisation from random orientations: "
        "global searches of random mini-batches, running reconstruction statistics. The hand "
        "of the result is arbitrary. Writes RELION's InitialModel job layout into --o; "
        "--continue resumes from the last checkpoint. Follow with `align-symmetry` and "
        "`symmetrize` when the complex is symmetric.")
    add_particle_input(p, help="particle STAR file (any flavour); poses are not used")
    add_output(p, required=False, help="job folder, e.g. InitialModel/job001")
    p.add_argument("--K", type=int, default=1, help="number of models (default 1)")
    p.add_argument("--sym", default="C1", help="point-group symmetry (RELION's axes)")
    p.add_argument("--particle_diameter", type=float, default=None,
                   help="particle diameter, Å: soft spherical mask on the particles")
    p.add_argument("--iter_ini", type=int, default=25,
                   help="iterations at --ini_high with --batch_ini (default 25)")
    p.add_argument("--iter_inbetween", type=int, default=100,
                   help="iterations towards --final_high and --batch_final (default 100)")
    p.add_argument("--iter_final", type=int, default=25,
                   help="iterations at --final_high; the last uses all particles (default 25)")
    p.add_argument("--ini_high", type=float, default=35.0,
                   help="resolution of the first searches, Å (default 35)")
    p.add_argument("--final_high", type=float, default=15.0,
                   help="resolution of the last searches, Å (default 15)")
    p.add_argument("--batch_ini", type=int, default=100, help="first mini-batch size")
    p.add_argument("--batch_final", type=int, default=500, help="last mini-batch size")
    p.add_argument("--healpix_order", type=int, default=1,
                   help="first HEALPix order (1: 30° directions, 15° psi); goes up to 2")
    p.add_argument("--offset_range", type=float, default=6.0, help="offset search range, px")
    p.add_argument("--offset_step", type=float, default=2.0, help="offset search step, px")
    p.add_argument("--ctf", action="store_true", help="use the 3D CTF volumes (rlnCtfImage)")
    p.add_argument("--checkpoint_every", type=int, default=10,
                   help="write maps, particles and the resume state every N iterations")
    add_job_options(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from subtomo.parallel.distributed import init
    from subtomo.refine.initial_model import InitialModelOptions, initial_model

    ps = read_particle_input(args)
    out = job_folder(args, *ps.files())
    options = InitialModelOptions(
        **job_options(args), K=args.K, iter_ini=args.iter_ini,
        iter_inbetween=args.iter_inbetween, iter_final=args.iter_final,
        final_high_A=args.final_high, batch_ini=args.batch_ini, batch_final=args.batch_final,
        max_healpix_order=max(2, args.healpix_order), checkpoint_every=args.checkpoint_every)
    ctx = init(args.device)
    result = initial_model(ps, Path(out), options=options, **job_run(args, ctx))
    if ctx.main:
        maps = ", ".join(f"run_it{result.iterations:03d}_class{k:03d}.mrc"
                         for k in range(1, len(result.reconstructions) + 1))
        print(f"Built {args.K} initial model(s) from {len(ps)} particles in "
              f"{result.iterations} iterations: {Path(out)}/{{{maps}}}.")
    return 0
