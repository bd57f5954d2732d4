"""Beam-induced particle motion for the tilt-series simulator: three generators.

Every generator draws, per exposure step, a 3D velocity field ``v_m(x)`` (px) over the
particles' positions ``x`` (px) and accumulates it in dose order (``rlnMicrographPreExposure``,
ascending): the first exposed tilt has no displacement, tilt ``order[k]`` the sum of the steps
``1 … k``. The displacements are then scaled so that the largest is ``amplitude_px``.

- ``gp`` (:func:`smooth_motion`): a random smooth field, independent between steps, with a
  squared-exponential correlation over ``scale_px``: the shape of RELION's prior
  (``--sq_exp_ker``), so it favours the motion model.
- ``gradient`` (:func:`gradient_motion`): a near-rigid field, ``v_m(x) = t_m + G_m (x − c)``
  (``c`` the tomogram's centre), a random rigid translation plus a gentle random 3D linear
  gradient across the field of view. No kernel, no decay with distance.
- ``short`` (:func:`bump_motion`): a random smooth field with a short correlation length (a
  few particle diameters): a sum of Gaussian bumps with random centres and 3D amplitudes.

None is written in terms of the motion model's basis (:mod:`subtomo.tomo.motion_model`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["MOTION_KINDS", "accumulate", "beam_motion", "bump_motion", "gradient_motion",
           "smooth_motion"]

MOTION_KINDS = ("gp", "gradient", "short")
GRADIENT = 0.5  # gradient part at the field's edge / rigid part (σ of each velocity)


def accumulate(velocity: Tensor, pre_exposure: np.ndarray, amplitude_px: float) -> Tensor:
    """Displacements ``(N, T, 3)`` of step velocities ``velocity (N, T, 3)`` (the velocity of
    tilt ``order[k]`` is the step ``k − 1 → k``; that of the first exposed tilt is unused),
    summed in dose order and scaled to a largest length of ``amplitude_px``."""
    order = np.argsort(pre_exposure, kind="stable")
    velocity = velocity.clone()
    velocity[:, order[0]] = 0.0
    motion = torch.zeros_like(velocity)
    motion[:, order] = torch.cumsum(velocity[:, order], dim=1)
    peak = motion.norm(dim=-1).amax()
    return motion * (amplitude_px / peak) if amplitude_px > 0 and peak > 0 else motion * 0.0


def smooth_motion(positions_px: Tensor, pre_exposure: np.ndarray, amplitude_px: float,
                  scale_px: float, gen: torch.Generator) -> Tensor:
    """``gp``: per exposure step a sum of 32 plane waves with wave vectors
    ``k ~ N(0, 1 / (2 π² ℓ²))`` (cycles per px), so that the velocities' covariance over a
    distance ``d`` is about ``exp(−d² / ℓ²)``, ``ℓ = scale_px``: RELION's squared-exponential
    kernel with ``σ_d = ℓ``."""
    t = len(pre_exposure)
    waves = 32
    k = torch.randn(t, waves, 3, generator=gen, dtype=torch.float64) / (
        math.pi * math.sqrt(2.0) * scale_px)
    phase = torch.rand(t, waves, generator=gen, dtype=torch.float64) * 2 * math.pi
    amp = torch.randn(t, waves, 3, generator=gen, dtype=torch.float64)
    arg = 2 * math.pi * torch.einsum("twc,nc->ntw", k, positions_px) + phase
    velocity = torch.einsum("ntw,twc->ntc", torch.cos(arg), amp)  # (N, T, 3)
    return accumulate(velocity, pre_exposure, amplitude_px)


def gradient_motion(positions_px: Tensor, pre_exposure: np.ndarray, amplitude_px: float,
                    size_px: tuple[float, float, float], gen: torch.Generator,
                    gradient: float = GRADIENT) -> Tensor:
    """``gradient``: per step ``v_m(x) = t_m + G_m (x − c)``, ``t_m ~ N(0, I)``, the nine
    entries of ``G_m`` ``~ N(0, (g / r)²)`` with ``r`` half the larger side of the field of
    view and ``g = gradient``: at the field's edge the gradient part is ``g`` times the rigid
    part. Exactly affine in position per step."""
    t = len(pre_exposure)
    size = torch.as_tensor(size_px, dtype=torch.float64)
    radius = 0.5 * float(size[:2].max())
    translation = torch.randn(t, 3, generator=gen, dtype=torch.float64)
    matrix = torch.randn(t, 3, 3, generator=gen, dtype=torch.float64) * (gradient / radius)
    r = positions_px.to(torch.float64) - size / 2
    velocity = translation[None] + torch.einsum("tij,nj->nti", matrix, r)
    return accumulate(velocity, pre_exposure, amplitude_px)


def bump_motion(positions_px: Tensor, pre_exposure: np.ndarray, amplitude_px: float,
                scale_px: float, size_px: tuple[float, float, float],
                gen: torch.Generator) -> Tensor:
    """``short``: per step a sum of Gaussian bumps ``a_j exp(−|x − c_j|² / (2 s²))``,
    ``s = scale_px / 2``, centres ``c_j`` uniform over the tomogram widened by ``2 s`` on each
    side (one per ``s³``), ``a_j ~ N(0, I)``: a stationary field whose covariance over a
    distance ``d`` is ``∝ exp(−d² / (4 s²)) = exp(−d² / scale_px²)``."""
    t = len(pre_exposure)
    s = 0.5 * float(scale_px)
    low = -2 * s * torch.ones(3, dtype=torch.float64)
    span = torch.as_tensor(size_px, dtype=torch.float64) + 4 * s
    count = max(int(math.ceil(float(span.prod()) / s**3)), 1)
    x = positions_px.to(torch.float64)
    velocity = x.new_zeros(len(x), t, 3)
    for m in range(t):
        centres = low + torch.rand(count, 3, generator=gen, dtype=torch.float64) * span
        amp = torch.randn(count, 3, generator=gen, dtype=torch.float64)
        weight = torch.exp(-torch.cdist(x, centres) ** 2 / (2 * s * s))  # (N, count)
        velocity[:, m] = weight @ amp
    return accumulate(velocity, pre_exposure, amplitude_px)


def beam_motion(kind: str, positions_px: Tensor, pre_exposure: np.ndarray,
                amplitude_px: float, scale_px: float, size_px: tuple[float, float, float],
                gen: torch.Generator) -> Tensor:
    """Displacements ``(N, T, 3)`` (px, tilts in table order) of generator ``kind``."""
    if kind == "gp":
        return smooth_motion(positions_px, pre_exposure, amplitude_px, scale_px, gen)
    if kind == "gradient":
        return gradient_motion(positions_px, pre_exposure, amplitude_px, size_px, gen)
    if kind == "short":
        return bump_motion(positions_px, pre_exposure, amplitude_px, scale_px, size_px, gen)
    raise ValueError(f"unknown motion kind {kind!r}; choose from {', '.join(MOTION_KINDS)}")
