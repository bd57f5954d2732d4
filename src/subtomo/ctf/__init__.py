"""The CTF: 2D CTF (``ctf2d``), dose weighting (``dose``), tilt schemes (``tilt_scheme``) and
3D CTF volumes from them (``volume``), tilt slices gathered onto a 3D grid (``slice_gather``)."""

__all__ = [
    "ctf2d",
    "dose",
    "tilt_scheme",
    "slice_gather",
    "volume",
]
