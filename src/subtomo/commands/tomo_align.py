"""``subtomo tomo-align``: refine tilt-series projections, particle positions, beam-induced
motion and 2D deformations against the particles (``relion_tomo_align``)."""

from __future__ import annotations

import argparse
import sys

from subtomo.commands.options import add_tomo_inputs, tomo_inputs

OUTPUTS = ("tomograms.star", "particles.star", "motion.star", "optimisation_set.star",
           "note.txt", "job.json", "fsc_before_after.png", "tilt_changes_*.png",
           "Trajectories/*", "temp/*")  # what the job writes into --o (and tilt_series/)

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tomo-align", help="tilt-series refinement: per-tilt 5-DOF projections, particle "
        "positions, motion and deformations",
        description="Compares every particle in every tilt with the CTF-weighted projection of "
        "its own half set's reference and maximises the summed cross-correlation over all "
        "parameters at once (L-BFGS). Writes DIR/tomograms.star, particles.star, motion.star, "
        "optimisation_set.star, Trajectories/<tomogram>_x1.ply and _x8.ply, plots, note.txt "
        "and job.json. Runs under torchrun (tilt series are sharded over processes); there, write "
        "`torchrun ... -m subtomo -- tomo-align ...` so that torchrun leaves --r alone.")
    add_tomo_inputs(p)
    p.add_argument("--ref1", default=None, help="half map 1 (default: the optimisation set's)")
    p.add_argument("--ref2", default=None, help="half map 2 (default: the optimisation set's)")
    p.add_argument("--mask", default=None, help="reference mask (default: the optimisation "
                   "set's, if any)")
    p.add_argument("--fsc", default=None, help="postprocess.star / fsc.star whose FSC weights "
                   "the frequencies (default: the optimisation set's, else the half maps' FSC)")
    p.add_argument("--o", "-o", "--output", dest="output", default=None,
                   help="output job folder (new)")
    p.add_argument("--b", "--box", dest="box", type=int, default=96,
                   help="box for the estimation, px at the references' pixel size (may exceed "
                   "the references' box)")
    p.add_argument("--r", dest="max_shift", type=float, default=20.0,
                   help="largest assumed error of the 2D particle positions, tilt-series px")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of alignment; each round after the first aligns against half "
                   "maps reconstructed (reconstruct-particle) with the previous round's "
                   "geometry (default: 2; see subtomo.tomo.tomo_align)")
    p.add_argument("--sym", default="C1", help="point-group symmetry of the references that "
                   "the rounds after the first reconstruct")
    p.add_argument("--j", type=int, default=None, help="CPU threads per process")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    g = p.add_argument_group("motion")
    g.add_argument("--motion", dest="do_motion", action="store_true",
                   help="estimate beam-induced particle motion")
    g.add_argument("--s_vel", type=float, default=0.3,
                   help="expected motion: σ of the velocity, Å per e/Å² of exposure (default "
                   "0.3; RELION's 0.5 fits noise where the motion is small: see "
                   "subtomo.tomo.motion_model)")
    g.add_argument("--s_div", type=float, default=5000.0,
                   help="spatial smoothness of the motion (Å; × exposure per tilt as RELION "
                   "unless --abs_params)")
    g.add_argument("--sq_exp_ker", action="store_true",
                   help="squared-exponential spatial kernel instead of the exponential")
    g.add_argument("--abs_params", action="store_true",
                   help="do not scale --s_vel and --s_div by the exposure per tilt")
    g.add_argument("--max_ed", type=int, default=-1,
                   help="most motion basis vectors (eigendeformations) kept; -1: all")
    g = p.add_argument_group("deformation")
    g.add_argument("--deformation", action="store_true", help="estimate 2D image deformations")
    g.add_argument("--def_w", type=int, default=3, help="deformation grid points along x")
    g.add_argument("--def_h", type=int, default=3, help="deformation grid points along y")
    g.add_argument("--def_model", default="spline", help="linear, spline or Fourier")
    g.add_argument("--def_reg", type=float, default=None,
                   help="deformation regulariser (RELION's: λ Σ c² for linear and spline, "
                   "λ Σ |f|² |z|² for Fourier); default: spline 0.1, Fourier 1e3, linear 0")
    g.add_argument("--per_frame_deformation", action="store_true",
                   help="one deformation per tilt instead of one per tilt series")
    g = p.add_argument_group("other")
    g.add_argument("--shift_only", action="store_true",
                   help="only a rigid shift per tilt (positions and angles kept)")
    g.add_argument("--write_proj_matrices", action="store_true",
                   help="also write RELION 4's rlnTomoProjX/Y/Z/W in the tilt tables")
    g.add_argument("--no_reconstruct", action="store_true",
                   help="skip reconstruct-particle before and after (the FSC plot)")
    g.add_argument("--pad", type=int, default=2, help="CC map samples per pixel")
    g.add_argument("--it", dest="max_iter", type=int, default=500,
                   help="most L-BFGS iterations per pass")
    g.add_argument("--batch", type=int, default=32, help="particles per batch")
    g.add_argument("--continue", dest="continue_dir", nargs="?", const="", default=None,
                   help="resume a killed run in --o (or in this folder): finished rounds and "
                   "tilt series are kept (a higher --rounds adds rounds to a finished job)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from subtomo.errors import InputError
    from subtomo.io.files import check_outputs
    from subtomo.parallel.distributed import init
    from subtomo.tomo.alignment import AlignSettings
    from subtomo.tomo.correlation import read_references
    from subtomo.tomo.tomo_align import tomo_align

    if args.j:
        torch.set_num_threads(args.j)
    out = args.continue_dir or args.output
    if not out:
        raise InputError(None, "give --o (a new job folder) or --continue DIR", field="--o")
    inputs = tomo_inputs(args)
    for key in ("ref1", "ref2", "mask", "fsc"):
        if getattr(args, key) is not None:
            inputs.files[key] = getattr(args, key)
    check_outputs(inputs.paths(), out, OUTPUTS + tuple(
        f"tilt_series/{n}.star" for n in inputs.tomograms.names))
    refs = read_references(inputs.files.get("ref1"), inputs.files.get("ref2"),
                           inputs.files.get("mask"), inputs.files.get("fsc"))
    settings = AlignSettings(
        box=args.box, max_shift_px=args.max_shift, motion=args.do_motion, s_vel=args.s_vel,
        s_div=args.s_div, sq_exp_kernel=args.sq_exp_ker, abs_params=args.abs_params,
        max_ed=args.max_ed, deformation=args.deformation, def_w=args.def_w, def_h=args.def_h,
        def_model=args.def_model, def_reg=args.def_reg,
        per_frame_deformation=args.per_frame_deformation, shift_only=args.shift_only,
        pad=args.pad, max_iter=args.max_iter, batch_size=args.batch)
    ctx = init(args.device)
    job = tomo_align(inputs, refs, settings, out, device=ctx.device, ctx=ctx,
                     resume=args.continue_dir is not None, reconstruct=not args.no_reconstruct,
                     write_matrices=args.write_proj_matrices,
                     rounds=args.rounds, sym=args.sym,
                     command=["subtomo", *sys.argv[1:]], progress=ctx.main)
    if job is not None:
        moved = [s["rms_image_shift_px"] for s in job.stats.values()]
        line = (f"Aligned {len(job.particles)} particles in {len(job.stats)} tilt series into "
                f"{out} in {len(job.rounds)} round(s): projected positions moved in the last "
                f"round by up to {max(moved):.2f} px rms per tilt series")
        if job.resolution_after_A is not None:
            line += (f"; half-map FSC 0.143 {job.resolution_before_A:.2f} Å → "
                     f"{job.resolution_after_A:.2f} Å")
        print(line + ".")
    return 0
