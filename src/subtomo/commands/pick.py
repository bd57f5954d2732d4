"""``subtomo pick``: particles found by template matching in the tomograms of a tilt-series set
(see :mod:`subtomo.tomo.picking` and :mod:`subtomo.tomo.pick_job`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from subtomo.commands.options import add_max_memory, add_tomo_inputs, tomo_inputs


def _threshold(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a number") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pick", help="find particles by template matching (CTF, wedge and dose aware)",
        description="Normalised cross-correlation of a template at every voxel and orientation "
        "of each tomogram, the template weighted per z-slab by the CTF of every tilt at that "
        "depth, the missing wedge of the real tilts and the dose; peaks at --min_distance; "
        "threshold from the score statistics (expected false positives printed). Writes "
        "DIR/particles.star, DIR/optimisation_set.star, score/angle maps and plots.")
    add_tomo_inputs(p, particles=False)
    p.add_argument("--template", required=True, help="template map (protein white)")
    p.add_argument("--template_angpix", type=float, default=None,
                   help="template pixel size, Å (default: its header's)")
    p.add_argument("--mask", default=None, help="template mask (same box as the template)")
    p.add_argument("--particle_diameter", type=float, required=True, help="diameter, Å")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--binned_angpix", type=float, default=None,
                       help="voxel size of the tomogram searched, Å (default: the set's "
                       "reconstructed tomogram, else --bin 8)")
    group.add_argument("--bin", type=float, default=None, help="OR: its binning")
    p.add_argument("--angular_step", type=float, default=15.0,
                   help="angular sampling of the picks' orientations, degrees")
    p.add_argument("--coarse_factor", type=float, default=2.0,
                   help="the global search over every voxel runs at this times "
                   "--angular_step, each pick is then refined at --angular_step (1: the "
                   "global search at --angular_step)")
    p.add_argument("--sym", default="C1", help="symmetry of the template")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--number", type=int, default=None, help="the N best peaks per tomogram")
    pick.add_argument("--threshold", type=_threshold, default=None,
                      help="'auto' (default) or a score")
    p.add_argument("--false_positives", type=float, default=1.0,
                   help="expected false picks per tomogram at the auto threshold")
    p.add_argument("--no_split_modes", action="store_true",
                   help="auto threshold: keep a lower, separate mode of peaks (by default taken "
                   "for another kind of object and left out)")
    p.add_argument("--min_distance", type=float, default=None,
                   help="closest two picks, Å (default: the particle diameter)")
    p.add_argument("--no_whitening", action="store_true", help="do not whiten the spectra")
    p.add_argument("--tomo_name", nargs="*", default=None, help="only these tilt series")
    p.add_argument("--batch", type=int, default=None, help="orientations per FFT batch "
                   "(default: from --max_memory)")
    add_max_memory(p)
    p.add_argument("--j", type=int, default=None, help="CPU threads per process")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--o", "-o", "--output", dest="output", default=None, help="output folder")
    p.add_argument("--continue", dest="continue_dir", default=None,
                   help="resume the job in this folder (tomograms already searched are kept)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from subtomo.errors import InputError
    from subtomo.io.files import check_outputs, removed_on_input_error
    from subtomo.memory import budget_bytes
    from subtomo.parallel.distributed import init
    from subtomo.tomo.pick_job import map_names, run_pick
    from subtomo.tomo.picking import PickOptions, load_template

    if args.j:
        torch.set_num_threads(args.j)
    out = args.continue_dir or args.output
    if out is None:
        raise InputError(None, "give --o (a new job folder) or --continue DIR", field="--o")
    if not args.particle_diameter > 0:
        raise InputError(None, "the particle diameter must be positive",
                         field="--particle_diameter")
    inputs = tomo_inputs(args, particles=False)
    tset = inputs.tomograms
    names = args.tomo_name or tset.names
    for name in names:
        if name not in tset.series:
            raise InputError(tset.source, f"no tilt series {name!r}", field="--tomo_name")
    check_outputs([*inputs.paths(), args.template, args.mask], out, [
        "particles.star", "optimisation_set.star", "angles.star", "scores.png",
        *map_names(names)], option="--continue" if args.continue_dir else "--o")
    first = tset[names[0]]
    binning = args.binned_angpix / first.pixel_size_A if args.binned_angpix else args.bin
    if binning is None and "rlnTomoReconstructedTomogram" not in first.globals:
        binning = 8.0
    voxel_A = first.pixel_size_A * (binning or float(first.globals.get(
        "rlnTomoTomogramBinning", 1.0)))
    template, mask = load_template(args.template, voxel_A, mask_path=args.mask,
                                   template_A=args.template_angpix)
    ctx = init(args.device)
    batch = args.batch
    if batch is None:  # one orientation holds ~6 floats per voxel (spectra, product, scores)
        size = first.tomo_size_px
        voxels = 1.0
        for s in size:
            voxels *= s / (binning or voxel_A / first.pixel_size_A)
        batch = int(max(1, min(16, budget_bytes(args.max_memory, ctx.device) // (
            24 * voxels) - 1)))
    opts = PickOptions(particle_diameter_A=args.particle_diameter,
                       angular_step_deg=args.angular_step, sym=args.sym, number=args.number,
                       threshold=args.threshold, false_positives=args.false_positives,
                       min_distance_A=args.min_distance, whitening=not args.no_whitening,
                       coarse_factor=args.coarse_factor, split_modes=not args.no_split_modes,
                       batch=batch, device=str(ctx.device))
    with removed_on_input_error(out):
        picks = run_pick(tset, Path(tset.source), names, template, mask, opts, Path(out),
                         binning=binning, ctx=ctx)
    if ctx.main:
        total = sum(len(p.scores) for p in picks.values())
        print(f"Picked {total} particles in {len(picks)} tomogram(s): "
              f"{Path(out) / 'particles.star'}")
    return 0

