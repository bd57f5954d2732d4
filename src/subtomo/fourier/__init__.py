"""Fourier-space basics: grids, shells, crops and filters (``grid``), shifts (``shift``), the
FSC (``fsc``), central-section projection and back-projection (``projector``) and the
reconstruction from back-projected sums (``reconstruction``)."""

__all__ = ["fsc", "grid", "projector", "reconstruction", "shift"]
