"""``subtomo select``: by class (no subcommand), ``random``, ``duplicates``, ``neighbours``."""

from __future__ import annotations

import argparse

from subtomo.commands.options import add_input, add_output
from subtomo.errors import InputError

SAME_FLAVOUR = "output STAR file (same flavour as the input)"


def _class_numbers(text: str) -> list[int]:
    """``3`` or ``3,4`` → [3] or [3, 4]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a class number (list): {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "select", help="select particle subsets",
        description="By class, as RELION's Select job: subtomo select --i IN --class N[,M] "
                    "[--recenter] --o OUT. Otherwise: subtomo select HOW ... (random, "
                    "duplicates, neighbours).")
    # class selection is the subcommand-less form; its --i/--o are checked in _class
    parser.add_argument("--i", "-i", "--input", dest="input", default=None,
                        help="particle STAR file with rlnClassNumber")
    parser.add_argument("--o", "-o", "--output", dest="output", default=None, help=SAME_FLAVOUR)
    parser.add_argument("--class", dest="classes", type=_class_numbers, action="append",
                        metavar="N[,M]", help="keep particles of this class (repeatable)")
    parser.add_argument("--recenter", "--recentre", action="store_true",
                        help="apply the shifts to the coordinates and zero the origins")
    parser.set_defaults(run=lambda args: _class(parser, args))
    kinds = parser.add_subparsers(dest="kind", required=False, metavar="HOW")
    _register_random(kinds)
    _register_duplicates(kinds)
    _register_neighbours(kinds)


def _register_random(kinds: argparse._SubParsersAction) -> None:
    rnd = kinds.add_parser("random", help="a random subset of N particles (file order kept)")
    add_input(rnd, help="particle STAR file")
    add_output(rnd, help=SAME_FLAVOUR)
    rnd.add_argument("--n", "-n", type=int, required=True, help="number of particles")
    rnd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rnd.set_defaults(run=_random)


def _register_duplicates(kinds: argparse._SubParsersAction) -> None:
    dup = kinds.add_parser(
        "duplicates", help="remove duplicates: of particles closer than a distance, keep the "
                           "most probable")
    add_input(dup, help="particle STAR file")
    add_output(dup, help=SAME_FLAVOUR)
    dup.add_argument("--min_distance", type=float, required=True, metavar="A",
                     help="centres of one tomogram closer than this (Å, shifts applied) are "
                          "duplicates")
    dup.add_argument("--score", default=None, metavar="LABEL",
                     help="column whose highest value wins (default rlnMaxValueProbDistribution, "
                          "else rlnLogLikeliContribution, else file order)")
    dup.set_defaults(run=_duplicates)


def _register_neighbours(kinds: argparse._SubParsersAction) -> None:
    nbr = kinds.add_parser(
        "neighbours", aliases=["neighbors"],
        help="keep particles with enough neighbours at a given distance (lattices, filaments)")
    add_input(nbr, help="particle STAR file")
    add_output(nbr, help=SAME_FLAVOUR)
    nbr.add_argument("--distance", type=float, required=True, metavar="A",
                     help="expected centre-to-centre distance (Å)")
    nbr.add_argument("--tolerance", type=float, required=True, metavar="A",
                     help="accepted deviation from --distance (Å, inclusive)")
    nbr.add_argument("--min_neighbours", "--min_neighbors", type=int, required=True,
                     metavar="N", help="least number of neighbours at that distance")
    nbr.set_defaults(run=_neighbours)


def _report(kept: int, total: int, what: str, output: str) -> None:
    print(f"Kept {kept} of {total} particles ({what}); wrote {output}.")


def _class(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from subtomo import selection
    from subtomo.io.star import read_particles
    if not args.classes:
        parser.error("give --class N (select by class) or a subcommand: random, duplicates, "
                     "neighbours")
    if args.input is None or args.output is None:
        parser.error("selecting by class needs --i and --o")
    classes = sorted({c for group in args.classes for c in group})
    total = len(read_particles(args.input))
    kept = selection.select_class(args.input, args.output, classes, recenter=args.recenter)
    what = f"class {', '.join(map(str, classes))}" + (", recentred" if args.recenter else "")
    _report(len(kept), total, what, args.output)
    return 0


def _no_class_options(args: argparse.Namespace) -> None:
    """--class and --recenter belong to class selection; refuse them beside a subcommand."""
    if args.classes or args.recenter:
        raise InputError(None, f"--class/--recenter select by class; they do not combine with "
                         f"'select {args.kind}'", field="--class")


def _random(args: argparse.Namespace) -> int:
    from subtomo import interop
    _no_class_options(args)
    subset = interop.select_random(args.input, args.output, args.n, args.seed)
    print(f"Wrote {len(subset)} randomly selected particles to {args.output}.")
    return 0


def _duplicates(args: argparse.Namespace) -> int:
    from subtomo import selection
    from subtomo.io.star import read_particles
    _no_class_options(args)
    total = len(read_particles(args.input))
    kept = selection.remove_duplicates(args.input, args.output, args.min_distance, args.score)
    _report(len(kept), total, f"duplicates within {args.min_distance:g} Å removed", args.output)
    return 0


def _neighbours(args: argparse.Namespace) -> int:
    from subtomo import selection
    from subtomo.io.star import read_particles
    _no_class_options(args)
    total = len(read_particles(args.input))
    kept = selection.select_neighbours(args.input, args.output, args.distance, args.tolerance,
                                       args.min_neighbours)
    what = (f"at least {args.min_neighbours} neighbours at {args.distance:g} ± "
            f"{args.tolerance:g} Å")
    _report(len(kept), total, what, args.output)
    return 0
