"""2D contrast transfer function in RELION's convention (batched torch).

Formula (RELION ``src/ctf.h`` ``CTF::getCTF`` with ``CTF::initialise`` in ``src/ctf.cpp``)::

    λ      = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))             Å, V in volts (relativistic)
    Δf(φ)  = (ΔfU + ΔfV)/2 + (ΔfU − ΔfV)/2 · cos(2 (φ − α))        Å, φ = atan2(ky, kx)
    χ(k)   = π λ Δf(φ) k² − (π/2) Cs λ³ k⁴ + φ_shift + atan(Q / sqrt(1 − Q²))
    CTF(k) = sin(χ(k)) · exp(−B k² / 4)

with k in 1/Å, Cs in Å (``cs_mm · 1e7``), α the astigmatism angle (``rlnDefocusAngle``, measured
from the image x axis; ΔfU lies along α, ΔfV perpendicular), Q the amplitude contrast
(``rlnAmplitudeContrast``), φ_shift the phase-plate shift (``rlnPhaseShift``) and B the
B-factor (``rlnCtfBfactor``, Å²). Defocus is positive for underfocus.

RELION writes this as ``CTF = −sin(γ)`` with ``γ = K1 Δf' k² + K2 k⁴ − K5 − K3`` where
``Δf' = −Δf(φ)``, ``K1 = π λ``, ``K2 = (π/2) Cs λ³``, ``K3 = atan(Q/sqrt(1−Q²))``,
``K5 = φ_shift``: γ = −χ, so ``−sin(γ) = sin(χ)``. Hence CTF(0) = Q > 0 and, for
underfocus, the first lobe is positive. At 300 kV λ = 0.0196876 Å.

Every parameter broadcasts against ``freqs[..., 0]``; pass tensors of shape ``(B, 1, ...)``
to evaluate a batch of particles or tilts at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ctf_2d", "electron_wavelength_A"]


def electron_wavelength_A(voltage_kv: float | Tensor) -> float | Tensor:
    """Relativistic electron wavelength (Å) for an accelerating voltage in kV (RELION's formula).

    ``λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with V in volts; 0.0196876 Å at 300 kV.
    Returns a float for a float input, a tensor for a tensor input.
    """
    if isinstance(voltage_kv, Tensor):
        volts = voltage_kv * 1e3
        return 12.2643247 / torch.sqrt(volts * (1.0 + volts * 0.978466e-6))
    volts = float(voltage_kv) * 1e3
    return 12.2643247 / math.sqrt(volts * (1.0 + volts * 0.978466e-6))


def _param(x: float | Tensor, ref: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


def _check_amplitude_contrast(q: float | Tensor) -> None:
    if isinstance(q, Tensor):
        if bool(((q < 0) | (q > 1)).any()):
            raise ValueError("amplitude_contrast must lie in [0, 1]")
    elif not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"amplitude_contrast must lie in [0, 1], got {q}")


def _ctf_polar(
    k2: Tensor,
    cos2phi: Tensor,
    sin2phi: Tensor,
    defocus_u_A: float | Tensor,
    defocus_v_A: float | Tensor,
    astigmatism_angle_deg: float | Tensor,
    voltage_kv: float | Tensor,
    cs_mm: float | Tensor,
    amplitude_contrast: float | Tensor,
    phase_shift_deg: float | Tensor = 0.0,
    bfactor_A2: float | Tensor = 0.0,
) -> Tensor:
    """CTF from |k|² (1/Å²) and cos 2φ, sin 2φ of the frequency direction (shared kernel)."""
    lam = electron_wavelength_A(_param(voltage_kv, k2))
    du, dv = _param(defocus_u_A, k2), _param(defocus_v_A, k2)
    alpha2 = 2.0 * torch.deg2rad(_param(astigmatism_angle_deg, k2))
    # cos(2(φ − α)) = cos 2φ cos 2α + sin 2φ sin 2α
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * (cos2phi * torch.cos(alpha2)
                                                   + sin2phi * torch.sin(alpha2))
    cs_A = _param(cs_mm, k2) * 1e7
    q = _param(amplitude_contrast, k2)
    chi = (math.pi * lam * defocus * k2
           - 0.5 * math.pi * cs_A * lam ** 3 * k2 * k2
           + torch.deg2rad(_param(phase_shift_deg, k2))
           + torch.atan2(q, torch.sqrt(1.0 - q * q)))
    ctf = torch.sin(chi)
    if isinstance(bfactor_A2, Tensor) or bfactor_A2 != 0.0:
        ctf = ctf * torch.exp(-0.25 * _param(bfactor_A2, k2) * k2)
    return ctf


def _polar(freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    fx, fy = freqs[..., 0], freqs[..., 1]
    k2 = fx * fx + fy * fy
    safe = torch.where(k2 > 0, k2, torch.ones_like(k2))
    cos2phi = torch.where(k2 > 0, (fx * fx - fy * fy) / safe, torch.ones_like(k2))
    sin2phi = torch.where(k2 > 0, 2.0 * fx * fy / safe, torch.zeros_like(k2))
    return k2, cos2phi, sin2phi


def ctf_2d(
    freqs_xy_per_A: Tensor,
    defocus_u_A: float | Tensor,
    defocus_v_A: float | Tensor,
    astigmatism_angle_deg: float | Tensor,
    voltage_kv: float | Tensor,
    cs_mm: float | Tensor,
    amplitude_contrast: float | Tensor,
    phase_shift_deg: float | Tensor = 0.0,
    bfactor_A2: float | Tensor = 0.0,
) -> Tensor:
    """RELION's 2D CTF at spatial frequencies ``freqs_xy_per_A`` ``(..., 2)`` = (kx, ky) in 1/Å.

    Defocus values in Å (positive = underfocus), astigmatism angle in degrees from the x axis
    (ΔfU along it), voltage in kV, Cs in mm, amplitude contrast Q in [0, 1], phase shift in
    degrees, B-factor in Å². Parameters broadcast against ``freqs_xy_per_A[..., 0]``.
    Returns the CTF (not squared, not absolute), same dtype and device as the frequencies.
    """
    if freqs_xy_per_A.shape[-1] != 2:
        raise ValueError("expected frequencies of shape (..., 2), "
                         f"got {tuple(freqs_xy_per_A.shape)}")
    _check_amplitude_contrast(amplitude_contrast)
    freqs = freqs_xy_per_A
    if not torch.is_floating_point(freqs):
        freqs = freqs.to(torch.get_default_dtype())
    k2, cos2phi, sin2phi = _polar(freqs)
    return _ctf_polar(k2, cos2phi, sin2phi, defocus_u_A, defocus_v_A, astigmatism_angle_deg,
                      voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg, bfactor_A2)
