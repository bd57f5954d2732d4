"""The CTF: 2D CTF (``ctf2d``), dose weighting (``dose``), tilt schemes (``tilt_scheme``) and
3D CTF volumes from them (``volume``)."""

__all__ = [
    "ctf2d",
    "dose",
    "tilt_scheme",
    "volume",
]
