"""Beam-induced particle motion as a Gaussian process over velocities (RELION 5's GP model).

Facts from RELION 5 ``src/jaz/tomography/motion/modular_alignment/GP_motion_model.cpp`` and
``src/jaz/math/Gaussian_process.cpp``:

- Tilts are taken in dose order (``rlnMicrographPreExposure``); a particle's 3D position in the
  first exposed tilt is its position, in the next ones the sum of the velocities of the steps
  before (``T − 1`` steps, no acceleration term).
- Velocities of different particles are correlated by their distance ``d`` (px):
  ``C = σ_v² exp(−d / σ_d)`` (``--sq_exp_ker``: ``σ_v² exp(−d² / σ_d²)``), the same for x, y and
  z and independent between steps, with ``σ_v = dose × s_vel / pixel`` and
  ``σ_d = dose × s_div / pixel`` (px; ``dose`` the exposure per tilt,
  ``rlnTomoImportFractionalDose`` or the difference of the first two exposures; RELION scales
  both by it unless ``--abs_params``).
- Reduced basis: ``C = V Λ Vᵀ``; the velocity of particle ``p`` in step ``m`` is
  ``Σ_b q_{m,b} V_{p,b} √λ_b`` with ``q`` (per axis) a priori standard normal; eigenvalues below
  1e-10 are dropped, and ``--max_ed`` keeps at most that many (the largest).

The prior's negative log is ``½ Σ q²`` (RELION's cost adds ``Σ q²`` to minus its
cross-correlation; we add the exact Gaussian term to minus a log-likelihood, see
:mod:`subtomo.tomo.alignment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["MotionBasis", "frame_dose", "motion_basis", "trajectories"]


def frame_dose(ts) -> float:
    """Exposure per tilt (e/Å²): ``rlnTomoImportFractionalDose``, else the difference of the
    first two pre-exposures in dose order (RELION ``Tomogram::getFrameDose``)."""
    value = ts.globals.get("rlnTomoImportFractionalDose")
    if value is not None and np.isfinite(float(value)) and float(value) > 0:
        return float(value)
    exposure = np.sort(ts.pre_exposure)
    return float(exposure[1] - exposure[0]) if len(exposure) > 1 else 1.0


@dataclass
class MotionBasis:
    """``basis (N, B)``: eigenvectors scaled by √eigenvalue (px per step per unit coefficient);
    ``order (T,)``: tilt indices in dose order."""

    basis: Tensor
    order: np.ndarray

    @property
    def n_basis(self) -> int:
        return int(self.basis.shape[1])


def motion_basis(positions_px: Tensor, order: np.ndarray, sigma_vel_px: float,
                 sigma_div_px: float, square_exponential: bool = False,
                 max_basis: int = -1) -> MotionBasis:
    """The reduced GP basis for particles at ``positions_px (N, 3)``."""
    x = positions_px.detach().to(torch.float64)
    d = torch.cdist(x, x)
    scale = max(float(sigma_div_px), 1e-12)
    kernel = torch.exp(-(d / scale) ** 2) if square_exponential else torch.exp(-d / scale)
    cov = sigma_vel_px**2 * kernel
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.flip(1)  # largest first
    keep = int((values >= 1e-10).sum())
    if max_basis is not None and max_basis >= 0:
        keep = min(keep, int(max_basis))
    basis = vectors[:, :keep] * values[:keep].clamp(min=0).sqrt()
    return MotionBasis(basis.to(positions_px.dtype), np.asarray(order))


def trajectories(coefficients: Tensor, mb: MotionBasis) -> Tensor:
    """Displacements ``(N, T, 3)`` (px, tilts in table order) of ``coefficients (T − 1, B, 3)``:
    zero in the first exposed tilt, then the running sum of the steps' velocities."""
    velocity = torch.einsum("pb,mbc->pmc", mb.basis.to(coefficients), coefficients)
    in_dose_order = torch.cat([velocity.new_zeros(velocity.shape[0], 1, 3),
                               velocity.cumsum(1)], 1)
    rank = torch.as_tensor(np.argsort(mb.order), device=velocity.device)
    return in_dose_order[:, rank]
