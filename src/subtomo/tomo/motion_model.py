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

Default ``s_vel`` 0.3 Å per e/Å², not RELION's 0.5. Rms projected-position error (px, seen
pairs, references' origin removed) of ``tomo-align --rounds 2`` from references of the given
geometry, with the motion of each of the simulator's generators
(:mod:`subtomo.simulate.motion`; bench/bench_tomo_align.py "Motion": 150 particles × 41
tilts, 10 Å px, 3 e/Å² per tilt, motion up to 1.5 px, per-tilt errors σ 1.5 px and 0.4°;
``gradient`` on two seeds), error / error without ``--motion`` in brackets::

    motion          without   --s_vel 0.5    0.3            0.2            true motion given
    gp              0.161     0.052 (0.32)   0.054 (0.34)   0.061 (0.38)   0.036
    gradient        0.058     0.051 (0.88)   0.045 (0.77)   0.043 (0.74)   0.037
    gradient (2)    0.050     0.045 (0.90)   0.039 (0.78)   0.037 (0.74)
    short           0.222     0.072 (0.32)   0.084 (0.38)   0.098 (0.44)   0.035

The near-rigid ``gradient`` field is mostly absorbed by the per-tilt angles and shifts (a
common 3D translation of all particles in a tilt is exactly a shift of it, a rotation about
their centroid a change of its angles, so the prior leaves those parts to them); what is left,
its strain, is small (0.058 px without ``--motion`` against 0.037 px with the true motion
given). Its velocities have a maximum-likelihood scale of 0.02 px per step under the
default kernel (σ_d 1500 px), against ``σ_v`` = 0.15 px at ``s_vel`` 0.5: a prior seven
times too loose lets the estimate follow the noise, and the gain goes (also against the true
map as reference: 0.050 px without, 0.038 at 0.5, 0.029 at 0.2). The prior does not shrink
the gradient away; it is too wide for it. At 0.3 every generator stays under 0.8 of the
error without ``--motion``, at some cost where the motion is large and rough (``short``: its
velocities' scale under the same kernel is 0.21 px per step). Neither the dose order (the
simulator and the model agree: tests/simulate/test_motion.py) nor the tilt sign shows in
these errors: negative and positive tilts differ by at most 0.004 px in every run, although
the motion itself is larger on the negative tilts of the ``gradient`` project (0.67 against
0.51 px with the true geometry and no motion; one draw, and in the dose-symmetric order each
negative tilt comes two exposures after its positive twin): the tilts' geometry takes most of
it, ``--motion`` has only the rest to find.

The scales are physical (Å), the motion's effect is in pixels: the same 1.5 px of motion on
4 Å pixels is 6 Å, against 15 Å here, and the default prior is 2.5 times looser for it. On
the ``gradient`` project with the scales of 4 Å pixels (``--s_vel 1.25 --s_div 12500``
for RELION's defaults, ``--s_vel 0.75 --s_div 12500`` for 0.3): 0.059 px (1.02 of the error
without ``--motion``) and 0.050 px (0.86). Motion of a few Å needs a smaller ``--s_vel``
(0.12 there); no fixed default suits every size of motion.
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
