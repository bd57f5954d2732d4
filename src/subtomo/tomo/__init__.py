"""Tilt series: import, tomogram reconstruction, per-particle crops, extraction and alignment
(their geometry is :mod:`subtomo.geometry.tilt`)."""

__all__ = [
    "alignment",
    "correlation",
    "crops",
    "deformation",
    "export_cryodrgn",
    "extract",
    "from_tomograms",
    "import_formats",
    "importing",
    "motion_model",
    "particles",
    "reconstruct_particle",
    "reconstruct_tomogram",
    "tomo_align",
]
