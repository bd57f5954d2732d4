"""``subtomo classify``: maximum-likelihood 3D classification (``relion_refine --K``)."""

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
        "classify", help="3D classification of subtomograms into K classes",
        description="Multi-reference maximum-likelihood classification: class posteriors from "
        "the likelihoods summed over poses, posterior-weighted class maps regularised with "
        "--tau2_fudge, class priors. Without alignment (--skip_align), with local searches "
        "around the given poses (--local / --sigma_ang) or with global searches. Writes "
        "RELION's Class3D job layout into --o; --continue resumes a killed job; run under "
        "`torchrun --nproc_per_node N -m subtomo classify ...` to shard particles.")
    add_particle_input(p, help="particle STAR file (any flavour), ideally with refined poses")
    add_output(p, required=False, help="job folder, e.g. Class3D/job001")
    p.add_argument("--ref", help="reference map (.mrc) all classes start from")
    p.add_argument("--K", type=int, default=4, help="number of classes (default 4)")
    p.add_argument("--tau2_fudge", type=float, default=4.0,
                   help="regularisation T: > 1 trusts the data more (default 4)")
    p.add_argument("--iter", type=int, default=25, help="iterations (default 25)")
    p.add_argument("--ini_high", type=float, default=50.0,
                   help="low-pass the reference to this resolution, Å (default 50)")
    p.add_argument("--sym", default="C1", help="point-group symmetry (RELION's axes)")
    p.add_argument("--mask", "--solvent_mask", dest="mask", default=None,
                   help="reference mask (.mrc, values in [0, 1]) applied before each search")
    p.add_argument("--particle_diameter", type=float, default=None,
                   help="particle diameter, Å: soft spherical mask on the particles")
    p.add_argument("--skip_align", action="store_true",
                   help="classify at the given poses, no alignment")
    p.add_argument("--healpix_order", type=int, default=2,
                   help="HEALPix order of the searches (2: 15°, 3: 7.5°)")
    p.add_argument("--local", action="store_true",
                   help="local searches around the given poses (σ_ang 5° unless given)")
    p.add_argument("--sigma_ang", type=float, default=None,
                   help="σ of the Gaussian prior on the pose change, degrees (implies --local)")
    p.add_argument("--offset_range", type=float, default=5.0, help="offset search range, px")
    p.add_argument("--offset_step", type=float, default=1.0, help="offset search step, px")
    p.add_argument("--ctf", action="store_true", help="use the 3D CTF volumes (rlnCtfImage)")
    p.add_argument("--split_every", type=int, default=4,
                   help="start from 2 classes and split the largest every N iterations until "
                   "K (0: K random classes at once, as RELION)")
    add_job_options(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from subtomo.errors import InputError
    from subtomo.io.mrc import read_mrc
    from subtomo.parallel.distributed import init
    from subtomo.refine.classify import ClassifyOptions, classify

    if args.ref is None:
        raise InputError(None, "--ref is needed (the reference all classes start from)",
                         field="--ref")
    if args.skip_align and (args.local or args.sigma_ang is not None):
        raise InputError(None, "--skip_align excludes --local and --sigma_ang",
                         field="--skip_align")
    ps = read_particle_input(args)
    out = job_folder(args, *ps.files(), args.ref, args.mask)
    reference, ref_apix = read_mrc(args.ref, role="reference", field="--ref")
    mask = (torch.from_numpy(read_mrc(args.mask, role="mask", field="--mask")[0])
            if args.mask else None)
    options = ClassifyOptions(
        **job_options(args), K=args.K, tau2_fudge=args.tau2_fudge, n_iter=args.iter,
        skip_align=args.skip_align, local=args.local, sigma_ang_deg=args.sigma_ang,
        split_every=args.split_every)
    ctx = init(args.device)
    result = classify(
        ps, torch.from_numpy(reference), Path(out), options=options, mask=mask,
        reference_path=args.ref, mask_path=args.mask, reference_pixel_size_A=ref_apix,
        **job_run(args, ctx))
    if ctx.main:
        shares = ", ".join(f"{k}: {100 * s:.1f} %" for k, s in
                           enumerate(result.distribution, 1))
        print(f"Classified {len(ps)} particles into {args.K} classes in {result.iterations} "
              f"iterations ({shares}); {Path(out) / f'run_it{result.iterations:03d}_data.star'}"
              ".")
    return 0
