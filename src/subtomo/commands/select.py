"""``subtomo select random``."""

from __future__ import annotations

import argparse

from subtomo import interop
from subtomo.commands.options import add_input, add_output


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("select", help="select particle subsets")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="HOW")
    rnd = kinds.add_parser("random", help="a random subset of N particles (file order kept)")
    add_input(rnd, help="particle STAR file")
    add_output(rnd, help="output STAR file (same flavour as the input)")
    rnd.add_argument("--n", "-n", type=int, required=True, help="number of particles")
    rnd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rnd.set_defaults(run=_random)


def _random(args: argparse.Namespace) -> int:
    subset = interop.select_random(args.input, args.output, args.n, args.seed)
    print(f"Wrote {len(subset)} randomly selected particles to {args.output}.")
    return 0
