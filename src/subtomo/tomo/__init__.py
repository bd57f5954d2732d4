"""Tilt series: geometry, tomogram reconstruction, per-particle crops and extraction."""
