"""The ``subtomo`` command: parses options, calls one library function, reports one line."""

from __future__ import annotations

import argparse
import sys

from subtomo import __version__
from subtomo.commands import (
    classify,
    convert,
    demo,
    export,
    extract,
    hetero,
    initial_model,
    maps,
    pick,
    poses,
    postprocess,
    reconstruct,
    reconstruct_particle,
    reconstruct_tomogram,
    refine,
    select,
    simulate,
    star,
    tomo_align,
    tomograms,
)
from subtomo.errors import InputError

COMMANDS = (convert, star, select, poses, simulate, reconstruct, initial_model, refine,
            classify, maps, postprocess, hetero, demo, reconstruct_particle, extract,
            reconstruct_tomogram, tomograms, tomo_align, pick, export)


class Parser(argparse.ArgumentParser):
    """Option errors as one line (``subtomo: error: COMMAND: message``), exit status 2, as
    every other bad input; ``--help`` gives the usage."""

    def error(self, message: str):
        command = self.prog.removeprefix("subtomo").strip()
        self.exit(2, f"subtomo: error: {command + ': ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="subtomo",
        description="Subtomogram averaging and heterogeneity analysis for cryo-ET.",
    )
    parser.add_argument("--version", action="version", version=f"subtomo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from subtomo.io import validate  # start-up: --help and option errors before numpy/torch

    try:
        validate.command_options(args)
        validate.outputs(args)
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"subtomo: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a fault of the file system (full disk, permissions): one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"subtomo: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
