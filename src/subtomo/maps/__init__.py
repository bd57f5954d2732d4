"""Maps: masks, symmetrisation, symmetry alignment, map-to-map alignment, rotation and
post-processing."""

__all__ = [
    "align_maps",
    "align_symmetry",
    "mask",
    "postprocess",
    "rotate",
    "symmetrize",
]
