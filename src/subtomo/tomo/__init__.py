"""Tilt series: import, tomogram reconstruction, per-particle crops, extraction and alignment
(their geometry is :mod:`subtomo.geometry.tilt`)."""
