"""Geometry floor: rotations, symmetry, orientation grids and tilt-series projections
(imports nothing of subtomo above :mod:`subtomo.errors`)."""

__all__ = [
    "euler",
    "healpix",
    "symmetry",
    # tilt-series projection geometry (RELION 5 / 4, IMOD) and metadata
    "tilt",
    "tilt_imod",
    "tilt_series",
]
