"""``subtomo refine``: gold-standard 3D auto-refinement (``relion_refine --auto_refine``)."""

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
        "refine", help="gold-standard 3D auto-refinement of subtomograms",
        description="Auto-refinement in independent half sets with HEALPix coarse-to-fine "
        "searches (global, then local), τ² from the half-map FSC and RELION's convergence "
        "rules; after convergence a final iteration searches to Nyquist and joins the "
        "halves into run_class001.mrc. Writes RELION's Refine3D job layout into "
        "--o; --continue resumes a killed job. Run under `torchrun --nproc_per_node N -m "
        "subtomo refine ...` to shard particles over processes.")
    add_particle_input(p, help="particle STAR file (any flavour)")
    add_output(p, required=False, help="job folder, e.g. Refine3D/job001")
    p.add_argument("--ref", help="initial reference map (.mrc), same box and pixel size")
    p.add_argument("--ini_high", type=float, default=30.0,
                   help="low-pass the initial reference to this resolution, Å (default 30)")
    p.add_argument("--sym", default="C1", help="point-group symmetry (RELION's axes)")
    p.add_argument("--mask", "--solvent_mask", dest="mask", default=None,
                   help="solvent mask (.mrc, values in [0, 1]) for --flatten_solvent")
    p.add_argument("--particle_diameter", type=float, default=None,
                   help="particle diameter, Å: soft spherical mask on the particles")
    p.add_argument("--healpix_order", type=int, default=2,
                   help="initial HEALPix order (2: 15° steps)")
    p.add_argument("--auto_local_healpix_order", type=int, default=4,
                   help="order from which searches are local around the current poses")
    p.add_argument("--offset_range", type=float, default=6.0, help="offset search range, px")
    p.add_argument("--offset_step", type=float, default=2.0, help="offset search step, px")
    p.add_argument("--ctf", action="store_true", help="use the 3D CTF volumes (rlnCtfImage)")
    p.add_argument("--firstiter_cc", action="store_true",
                   help="cross-correlation instead of likelihood in the first iteration (not "
                        "needed for a reference on another greyscale: it is measured)")
    p.add_argument("--absolute_greyscale", action="store_true",
                   help="the reference is on the particles' intensity scale: skip measuring "
                        "its scale before the first iteration")
    p.add_argument("--zero_mask", action="store_true",
                   help="fill outside the --particle_diameter mask with zeros (default: with "
                        "noise of the current noise spectrum, as relion_refine)")
    p.add_argument("--flatten_solvent", action="store_true",
                   help="multiply the references by --mask (without one: by the "
                        "--particle_diameter sphere, as relion_refine) before each search")
    p.add_argument("--iter", "--max_iter", dest="max_iter", type=int, default=25,
                   help="stop after this many iterations if not converged (default 25)")
    add_job_options(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from subtomo.errors import InputError
    from subtomo.io.mrc import read_mrc
    from subtomo.parallel.distributed import init
    from subtomo.refine.autorefine import RefineOptions, auto_refine

    if args.ref is None:
        raise InputError(None, "--ref is needed (the initial reference map)", field="--ref")
    ps = read_particle_input(args)
    out = job_folder(args, *ps.files(), args.ref, args.mask)
    reference, ref_apix = read_mrc(args.ref, role="reference", field="--ref")
    mask = None
    if args.mask:
        mask = torch.from_numpy(read_mrc(args.mask, role="mask", field="--mask")[0])
    options = RefineOptions(
        **job_options(args), auto_local_healpix_order=args.auto_local_healpix_order,
        firstiter_cc=args.firstiter_cc, zero_mask=args.zero_mask,
        greyscale=not args.absolute_greyscale, flatten_solvent=args.flatten_solvent,
        max_iter=args.max_iter)
    ctx = init(args.device)
    result = auto_refine(
        ps, torch.from_numpy(reference), Path(out), options=options, solvent_mask=mask,
        reference_path=args.ref, mask_path=args.mask, reference_pixel_size_A=ref_apix,
        **job_run(args, ctx))
    if ctx.main:
        state = "converged" if result.converged else "stopped at --iter"
        print(f"Refined {len(ps)} particles in {result.iterations} iterations ({state}): "
              f"{result.reconstruction.resolution_A:.2f} Å at FSC 0.143; "
              f"{Path(out) / 'run_class001.mrc'}.")
    return 0
