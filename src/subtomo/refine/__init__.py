"""Refinement jobs in RELION's layout: gold-standard auto-refine (:mod:`.autorefine`), 3D
classification (:mod:`.classify`) and the de novo initial model (:mod:`.initial_model`), all on
one job skeleton (:mod:`.job`) and one E step (:mod:`.expectation`); reconstruction
(:mod:`.reconstruct`), particle images (:mod:`.images`), greyscale (:mod:`.greyscale`) and job
files (:mod:`.outputs`).

The public API is these modules (``from subtomo.refine.autorefine import auto_refine``); the
package itself imports none of them.
"""

__all__ = [
    "autorefine",
    "classify",
    "expectation",
    "greyscale",
    "images",
    "initial_model",
    "job",
    "outputs",
    "reconstruct",
]
