"""Option helpers shared by commands: RELION-style spellings beside Python-style ones."""

from __future__ import annotations

import argparse
import sys

FLAVOUR_FLAGS = {
    "relion5": "RELION 5 tomography (centred Å coordinates; needs tomogram sizes)",
    "relion4": "RELION 4 tomography (pixel coordinates, rlnTomoName)",
    "relion31": "RELION 3.1 (data_optics + data_particles)",
    "relion30": "RELION 3.0 (single table, origins in pixels)",
    "warp": "RELION 3.0 as Warp/M read it (.tomostar names)",
}


class _Accepted(argparse.Action):
    """A RELION option that states what this program always does: parsed, stored nowhere."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS,
                         **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        pass


def add_accepted(parser: argparse.ArgumentParser, *flags: str, help: str) -> None:
    """RELION's ``flags`` for what is always on here (``--3d_rot``): accepted, changing
    nothing."""
    parser.add_argument(*flags, action=_Accepted, help=help)


def add_input(parser: argparse.ArgumentParser, *extra: str, help: str) -> None:
    parser.add_argument("--i", "-i", "--input", *extra, dest="input", required=True, help=help)


def add_particle_input(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--i`` particles or optimisation set (RELION 5's ``--ios``), with ``--tomograms`` and
    ``--mot`` for particle series (2D stacks) given as a particles STAR file."""
    add_input(parser, "--ios", help=help + "; or optimisation_set.star (2D stacks: RELION 5, "
              "WarpTools, subtomo extract --2d_stacks)")
    parser.add_argument("--tomograms", "--t", dest="tomograms", default=None,
                        help="tomograms.star of a 2D-stack set (overrides the optimisation set's)")
    parser.add_argument("--mot", dest="motion", default=None,
                        help="motion.star trajectories of a 2D-stack set")


def read_particle_input(args: argparse.Namespace):
    """The particle set of :func:`add_particle_input`'s options (a particle series with its
    tomograms attached; ``args.ctf`` is then set: its CTFs come with it)."""
    from subtomo.io.particle_series import read_particle_input as read

    ps = read(args.input, tomograms=args.tomograms, motion=args.motion,
              pixel_size_A=getattr(args, "angpix", None))
    if ps.series is not None and hasattr(args, "ctf"):
        args.ctf = True
    return ps


def add_output(parser: argparse.ArgumentParser, *, required: bool = True, help: str) -> None:
    parser.add_argument("--o", "-o", "--output", dest="output", required=required, help=help)


def add_flavour(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    group = parser.add_mutually_exclusive_group()
    for name, text in FLAVOUR_FLAGS.items():
        group.add_argument(f"--{name}", dest="flavour", action="store_const", const=name,
                           help=text)
    parser.set_defaults(flavour=default)


def add_tomograms(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tomograms", "--t", default=None,
                        help="RELION 5 tomograms.star (tomogram sizes, for centred coordinates)")


def add_angpix(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--angpix", "--Apix", type=float, default=None, help=help)


def add_max_memory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max_memory", "--max-memory", dest="max_memory", type=float,
                        default=None, help="memory budget per process, GiB (default: 60 %% of "
                        "the free RAM shared by the processes of a node, or 80 %% of the free "
                        "GPU memory); searches and batches are chunked to fit, with the same "
                        "results")


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Options every iterative job (refine, classify, initial model) shares."""
    parser.add_argument("--pad", type=int, default=2, help="padding factor of the Fourier grids")
    parser.add_argument("--batch", type=int, default=32, help="particles per batch")
    parser.add_argument("--j", type=int, default=None, help="CPU threads per process")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_max_memory(parser)
    parser.add_argument("--angpix", type=float, default=None, help="pixel size, Å (override)")
    parser.add_argument("--relion30", action="store_true",
                        help="write data STAR files as RELION 3.0 (default: RELION 5/4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--continue", dest="continue_dir", default=None,
                        help="resume the job in this folder after its last finished iteration")


def job_options(args: argparse.Namespace) -> dict:
    """The fields of :class:`subtomo.refine.job.JobOptions` (those every iterative job has)
    from the parsed options."""
    return dict(ini_high_A=args.ini_high, sym=args.sym, particle_diameter_A=args.particle_diameter,
                healpix_order=args.healpix_order, offset_range_px=args.offset_range,
                offset_step_px=args.offset_step, ctf=args.ctf, pad=args.pad,
                batch_size=args.batch, seed=args.seed, max_memory_gib=args.max_memory)


def job_run(args: argparse.Namespace, ctx) -> dict:
    """How an iterative job runs (:class:`subtomo.refine.job.JobRun`) on the ranks ``ctx``:
    device, ``--continue``, ``--relion30`` and the command line for ``job.json``."""
    return dict(device=ctx.device, ctx=ctx, continue_from=args.continue_dir is not None,
                relion30=args.relion30, command=["subtomo", *sys.argv[1:]])


JOB_OUTPUTS = ("run_*", "job.json")  # what refine, classify and initial-model write


def job_folder(args: argparse.Namespace, *inputs: str | None) -> str:
    """The job folder (``--o`` or ``--continue``), after setting the thread count and checking
    that the job writes over none of the ``inputs`` (every file it reads)."""
    import torch

    from subtomo.errors import InputError
    from subtomo.io.files import check_outputs

    if args.j:
        torch.set_num_threads(args.j)
    out = args.continue_dir or args.output
    if out is None:
        raise InputError(None, "give --o (a new job folder) or --continue DIR", field="--o")
    check_outputs(inputs, out, JOB_OUTPUTS, option="--continue" if args.continue_dir else "--o")
    return out


def add_tomo_inputs(parser: argparse.ArgumentParser, particles: bool = True) -> None:
    """RELION's tomography inputs: ``--i optimisation_set.star`` and/or its components."""
    parser.add_argument("--i", "-i", "--input", dest="input", default=None,
                        help="optimisation_set.star")
    if particles:
        parser.add_argument("--p", dest="particles", default=None,
                            help="particles.star (overrides the optimisation set's)")
    parser.add_argument("--t", dest="tomograms", default=None,
                        help="tomograms.star (overrides the optimisation set's)")
    if particles:
        parser.add_argument("--mot", dest="motion", default=None,
                            help="motion.star trajectories (overrides the optimisation set's)")


def tomo_inputs(args: argparse.Namespace, particles: bool = True):
    """Read the inputs named by :func:`add_tomo_inputs` (see
    :func:`subtomo.io.tomograms.read_inputs`)."""
    from subtomo.io.tomograms import read_inputs

    return read_inputs(args.input, particles=getattr(args, "particles", None),
                       tomograms=args.tomograms, motion=getattr(args, "motion", None),
                       need_particles=particles)
