"""``subtomo demo``: the simulated end-to-end demo."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the simulated end-to-end demo")
    parser.add_argument("--o", "-o", "--output", dest="output", default="demo_out",
                        help="output folder (default demo_out)")
    parser.add_argument("--n", type=int, default=300, help="number of simulated particles")
    parser.add_argument("--full", action="store_true",
                        help="the averaging and classification parts at 300 particles each, "
                        "at higher noise and with more iterations (subtomo.demo.FULL; the other "
                        "parts are unchanged)")
    parser.add_argument("--subtomograms", type=int, default=None,
                        help="simulated subtomograms for the averaging part (default 120, "
                        "--full 300; 0 skips it)")
    parser.add_argument("--classification", type=int, default=None,
                        help="simulated subtomograms of 3 classes for the initial-model and "
                        "classification part (default 150, --full 300; 0 skips it)")
    parser.add_argument("--tiltseries", type=int, default=40,
                        help="particles of the simulated tilt series for the tilt-series route "
                        "(tomogram, extraction, refinement, tomo-align; 0 skips it)")
    parser.add_argument("--hetero", type=int, default=200,
                        help="simulated subtomograms with a hinge and junk for the "
                        "heterogeneity (VAE) part (0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from subtomo.demo import run_demo
    from subtomo.demo_checks import exit_status

    results = run_demo(args.output, n=args.n, seed=args.seed, n_subtomograms=args.subtomograms,
                       n_classification=args.classification, n_tiltseries=args.tiltseries,
                       n_hetero=args.hetero, full=args.full)
    return exit_status(results["checks"])
