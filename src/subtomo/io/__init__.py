"""File formats: RELION STAR (particles, tomogram sets, optimisation sets, postprocess), MRC,
Dynamo, IMOD, AreTomo, Warp, SerialEM mdoc, PLY; tilt series with their images. Of subtomo it
imports only :mod:`subtomo.geometry` and :mod:`subtomo.errors`."""

__all__ = [
    "aretomo",
    "dynamo",
    "files",
    "fsc_star",
    "half_maps",
    "imod",
    "labels",
    "mdoc",
    "mrc",
    "particles",
    "ply",
    "poses",
    "star",
    "star_text",
    "text_columns",
    "tilt_series",
    "tomograms",
    "validate",
    "warp_xml",
]
