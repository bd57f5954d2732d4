"""Option helpers shared by commands: RELION-style spellings beside Python-style ones."""

from __future__ import annotations

import argparse

FLAVOUR_FLAGS = {
    "relion5": "RELION 5 tomography (centred Å coordinates; needs tomogram sizes)",
    "relion4": "RELION 4 tomography (pixel coordinates, rlnTomoName)",
    "relion31": "RELION 3.1 (data_optics + data_particles)",
    "relion30": "RELION 3.0 (single table, origins in pixels)",
    "warp": "RELION 3.0 as Warp/M read it (.tomostar names)",
}


def add_input(parser: argparse.ArgumentParser, *extra: str, help: str) -> None:
    parser.add_argument("--i", "-i", "--input", *extra, dest="input", required=True, help=help)


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
