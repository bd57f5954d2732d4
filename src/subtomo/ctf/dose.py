"""Exposure (dose) weighting after Grant & Grigorieff (2015), batched over tilts.

Critical exposure (e/Å²) at spatial frequency k (1/Å)::

    Ne(k) = a · k^b + c,    a = 0.245,  b = −1.665,  c = 2.81

and the amplitude filter for a cumulative exposure N (e/Å²) received before (or during) the
image::

    W(k, N) = exp(−N / (2 Ne(k)))

so the signal amplitude falls to 1/e at N = 2 Ne. W(0, N) = 1 (Ne → ∞ at k = 0).

Sources: T. Grant & N. Grigorieff, "Measuring the optimal exposure for single particle cryo-EM
using a 2.6 Å reconstruction of rotavirus VP6", eLife 4:e06980 (2015), fitted at 300 kV;
the same constants and ``exp(−0.5 · dose / (a k^b + c))`` are in RELION
``src/jaz/optics/damage.cpp`` (``Damage::getWeight``, ``Damage::weightImage``,
``Damage::criticalDamageVector``), which RELION's tomography uses with
``rlnMicrographPreExposure`` as N. The constants are for 300 kV; RELION applies them
unchanged at other voltages, and so do we (pass ``a``/``b``/``c`` to override).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CRITICAL_EXPOSURE_A", "CRITICAL_EXPOSURE_B", "CRITICAL_EXPOSURE_C",
           "critical_exposure", "dose_filter"]

CRITICAL_EXPOSURE_A = 0.245
CRITICAL_EXPOSURE_B = -1.665
CRITICAL_EXPOSURE_C = 2.81


def _as_float(x: float | Tensor, ref: Tensor | None = None) -> Tensor:
    if ref is not None:
        return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    t = torch.as_tensor(x)
    return t if torch.is_floating_point(t) else t.to(torch.get_default_dtype())


def critical_exposure(
    k_per_A: float | Tensor,
    a: float = CRITICAL_EXPOSURE_A,
    b: float = CRITICAL_EXPOSURE_B,
    c: float = CRITICAL_EXPOSURE_C,
) -> Tensor:
    """Critical exposure ``Ne(k) = a k^b + c`` (e/Å²) at |k| in 1/Å; +inf at k = 0."""
    k = _as_float(k_per_A).abs()
    return a * torch.pow(k, b) + c


def dose_filter(
    k_per_A: float | Tensor,
    exposure_e_per_A2: float | Tensor,
    a: float = CRITICAL_EXPOSURE_A,
    b: float = CRITICAL_EXPOSURE_B,
    c: float = CRITICAL_EXPOSURE_C,
) -> Tensor:
    """Exposure filter ``exp(−N / (2 Ne(k)))``; ``k_per_A`` and ``exposure_e_per_A2`` broadcast.

    For a tilt series pass exposures of shape ``(T, 1, ...)`` against frequencies ``(..., )`` to
    get one filter per tilt. Values lie in (0, 1]; exactly 1 at k = 0 or N = 0.
    """
    k = _as_float(k_per_A)
    n = _as_float(exposure_e_per_A2, k)
    return torch.exp(-0.5 * n / critical_exposure(k, a, b, c))
