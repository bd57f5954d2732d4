"""The `subtomo` subcommands: each parses its options and calls one library function."""

__all__ = [
    "classify",
    "convert",
    "demo",
    "extract",
    "hetero",
    "initial_model",
    "maps",
    "options",
    "pick",
    "poses",
    "postprocess",
    "reconstruct",
    "reconstruct_particle",
    "reconstruct_tomogram",
    "refine",
    "select",
    "simulate",
    "star",
    "tomo_align",
    "tomograms",
]
