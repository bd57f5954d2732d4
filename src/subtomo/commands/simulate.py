"""``subtomo simulate subtomograms``: a data set with known structure, poses and classes."""

from __future__ import annotations

import argparse

from subtomo.errors import InputError
from subtomo.io.files import removed_on_input_error


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH in µm, got {text!r}") from None
    return low, high


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("simulate", help="simulate data with known ground truth")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="WHAT")
    p = kinds.add_parser(
        "subtomograms", help="subtomograms + 3D CTF volumes + particles.star + truth",
        description="Writes Subtomograms/, particles.star (perturbed starting poses), "
        "truth.star (true poses, classes, hinge), truth_classNNN.mrc and simulation.json.")
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--n", type=int, default=1000, help="number of particles")
    p.add_argument("--box", type=int, default=48, help="box size, pixels")
    p.add_argument("--angpix", type=float, default=4.0, help="pixel size, Å")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", default=None, help="atomic model (PDB/mmCIF, needs gemmi)")
    group.add_argument("--pseudo-atoms", "--pseudo_atoms", dest="n_atoms", type=int,
                       default=4000, help="built-in pseudo-atomic complex with N atoms")
    het = p.add_mutually_exclusive_group()
    het.add_argument("--classes", type=int, default=1,
                     help="discrete classes (1 full, 2 subunit missing, 3 domain rotated 25°)")
    het.add_argument("--hinge-max", "--hinge_max", dest="hinge_max", type=float, default=0.0,
                     help="continuous hinge motion up to this angle, degrees")
    p.add_argument("--junk-fraction", "--junk_fraction", dest="junk_fraction", type=float,
                   default=0.0, help="share of particles replaced by noise or another molecule "
                   "(truth.star: rlnSubtomoJunk 1 noise, 2 other molecule)")
    p.add_argument("--sym", default="C1", help="point-group symmetry of the complex")
    p.add_argument("--tilt-range", "--tilt_range", dest="tilt_range", type=float, default=60.0,
                   help="± tilt range, degrees")
    p.add_argument("--tilt-step", "--tilt_step", dest="tilt_step", type=float, default=3.0,
                   help="tilt increment, degrees")
    p.add_argument("--dose-per-tilt", "--dose_per_tilt", dest="dose", type=float, default=3.0,
                   help="exposure per tilt, e/Å²")
    p.add_argument("--order", choices=("dose-symmetric", "sequential", "bidirectional"),
                   default="dose-symmetric", help="tilt order")
    p.add_argument("--defocus", type=_range, default=(2.5, 4.0), help="defocus range LOW:HIGH µm")
    p.add_argument("--noise", type=float, default=0.0, help="noise σ (map density units)")
    p.add_argument("--angle-error", "--angle_error", dest="angle_error", type=float, default=8.0,
                   help="rms error of the starting orientations in particles.star, degrees")
    p.add_argument("--shift-error", "--shift_error", dest="shift_error", type=float, default=1.0,
                   help="rms error of the starting shifts in particles.star, pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=_run)
    _register_tiltseries(kinds)


def _register_tiltseries(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "tiltseries", help="tilt series + RELION 5 project + truth (geometry, motion, maps)",
        description="Writes a RELION 5 project (tomograms.star, tilt_series/, particles.star, "
        "optimisation_set.star) and its truth (truth/: tomograms.star, particles.star, "
        "motion.star, deformations.npz, classNNN.mrc), with optional known errors.")
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--tomograms", type=int, default=1, help="number of tilt series")
    p.add_argument("--n", type=int, default=30, help="particles per tomogram")
    p.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("W", "H"),
                   help="tilt-image size, pixels")
    p.add_argument("--thickness", type=int, default=80, help="tomogram thickness, pixels")
    p.add_argument("--angpix", type=float, default=10.0, help="pixel size, Å")
    p.add_argument("--box", type=int, default=32, help="box of the structure, pixels")
    p.add_argument("--pseudo-atoms", "--pseudo_atoms", dest="n_atoms", type=int, default=1500,
                   help="built-in pseudo-atomic complex with N atoms")
    p.add_argument("--model", default=None, help="atomic model (PDB/mmCIF, needs gemmi)")
    p.add_argument("--classes", type=int, default=1, help="discrete classes")
    p.add_argument("--hinge-max", "--hinge_max", dest="hinge_max", type=float, default=0.0,
                   help="continuous hinge motion up to this angle, degrees")
    p.add_argument("--sym", default="C1", help="point-group symmetry of the complex")
    p.add_argument("--tilt-range", "--tilt_range", dest="tilt_range", type=float, default=60.0)
    p.add_argument("--tilt-step", "--tilt_step", dest="tilt_step", type=float, default=3.0)
    p.add_argument("--dose-per-tilt", "--dose_per_tilt", dest="dose", type=float, default=3.0)
    p.add_argument("--order", choices=("dose-symmetric", "sequential", "bidirectional"),
                   default="dose-symmetric", help="tilt order")
    p.add_argument("--tilt-axis", "--tilt_axis", dest="tilt_axis", type=float, default=0.0,
                   help="tilt-axis angle (rlnTomoZRot), degrees")
    p.add_argument("--defocus", type=_range, default=(3.0, 4.0), help="defocus range LOW:HIGH µm")
    p.add_argument("--noise", type=float, default=0.0, help="noise σ per image pixel")
    p.add_argument("--shift-error", "--shift_error", dest="shift_error", type=float,
                   default=0.0, help="σ of per-tilt shift errors in tomograms.star, pixels")
    p.add_argument("--angle-error", "--angle_error", dest="angle_error", type=float,
                   default=0.0, help="σ of per-tilt errors of the three angles, degrees")
    p.add_argument("--position-error", "--position_error", dest="position_error", type=float,
                   default=0.0, help="σ of particle position errors in particles.star, pixels")
    p.add_argument("--motion", type=float, default=0.0,
                   help="largest beam-induced displacement (smooth, correlated), pixels")
    p.add_argument("--motion-kind", "--motion_kind", dest="motion_kind", default="gp",
                   choices=("gp", "gradient", "short"),
                   help="motion field per exposure step: gp (smooth, squared-exponential "
                   "correlation, the motion model's prior), gradient (rigid translation plus a "
                   "linear gradient) or short (smooth, short correlation length)")
    p.add_argument("--motion-scale", "--motion_scale", dest="motion_scale", type=float,
                   default=None, help="correlation length of the gp and short fields, pixels "
                   "(default: 150 for gp, two boxes for short)")
    p.add_argument("--deformation", type=float, default=0.0,
                   help="largest 2D image deformation per tilt, pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(run=_run_tiltseries)


def _run_tiltseries(args: argparse.Namespace) -> int:
    from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

    if args.n < 1 or args.box < 8 or args.tomograms < 1 or min(args.size) < 2 * args.box:
        raise InputError(None, "need --n ≥ 1, --tomograms ≥ 1, --box ≥ 8 and images at least "
                         "two boxes wide", field="--n/--box/--size")
    if args.thickness < args.box:
        raise InputError(None, f"--thickness {args.thickness} px must be at least one box "
                         f"({args.box} px)", field="--thickness")
    scale = args.motion_scale
    if scale is None:
        scale = 2.0 * args.box if args.motion_kind == "short" else 150.0
    if not scale > 0:
        raise InputError(None, f"--motion-scale must be positive (got {scale})",
                         field="--motion-scale")
    config = TiltSeriesConfig(
        n_tomograms=args.tomograms, n_particles=args.n, image_size_px=tuple(args.size),
        thickness_px=args.thickness, pixel_size_A=args.angpix, box_px=args.box,
        n_atoms=args.n_atoms, model=args.model, symmetry=args.sym, classes=args.classes,
        hinge_max_deg=args.hinge_max, tilt_range_deg=args.tilt_range,
        tilt_step_deg=args.tilt_step, dose_per_tilt=args.dose, order=args.order,
        tilt_axis_deg=args.tilt_axis, defocus_um=args.defocus, noise_sigma=args.noise,
        shift_error_px=args.shift_error, angle_error_deg=args.angle_error,
        position_error_px=args.position_error, motion_px=args.motion,
        motion_kind=args.motion_kind, motion_scale_px=scale,
        deformation_px=args.deformation, seed=args.seed)
    with removed_on_input_error(args.output):  # nothing left of a failed simulation
        try:
            sim = simulate_tiltseries(args.output, config)
        except ValueError as exc:
            raise InputError(None, str(exc), field="--n") from None
    print(f"Simulated {len(sim.truth_particles)} particles in {config.n_tomograms} tilt "
          f"series in {sim.directory}: optimisation_set.star, tomograms.star, particles.star; "
          "truth in truth/.")
    return 0


def _run(args: argparse.Namespace) -> int:
    from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

    if args.n < 1 or args.box < 8:
        raise InputError(None, "need --n ≥ 1 and --box ≥ 8", field="--n/--box")
    config = SimulationConfig(
        n=args.n, box_px=args.box, pixel_size_A=args.angpix, n_atoms=args.n_atoms,
        model=args.model, symmetry=args.sym, classes=args.classes, hinge_max_deg=args.hinge_max,
        junk_fraction=args.junk_fraction,
        tilt_range_deg=args.tilt_range, tilt_step_deg=args.tilt_step, dose_per_tilt=args.dose,
        order=args.order, defocus_um=args.defocus, noise_sigma=args.noise,
        angle_error_deg=args.angle_error, shift_error_px=args.shift_error, seed=args.seed)
    sim = simulate_subtomograms(args.output, config, device=args.device)
    print(f"Simulated {config.n} subtomograms ({config.box_px}³, {config.pixel_size_A} Å/px) in "
          f"{sim.directory}: particles.star, truth.star, {len(sim.truth_maps)} truth map(s).")
    return 0
