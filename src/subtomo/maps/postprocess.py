"""RELION-style post-processing: masked, noise-substitution-corrected FSC and sharpening.

Follows ``relion_postprocess`` (Scheres; Chen et al. 2013, Ultramicroscopy 135:24):

1. FSC of the unmasked half maps; the randomisation shell ``r0`` is the first shell (> 0) where
   it falls below ``randomize_at_fsc`` (or ``D·px / randomize_at_A``).
2. FSC of the masked half maps (FSC_t), and of the masked half maps whose phases were randomised
   at ``|k| ≥ r0`` (FSC_n, independent phases per half). The corrected FSC is FSC_t for shells
   ``< r0 + 2`` (RELION moves the start two shells out, past artefacts at the randomisation
   edge) and ``(FSC_t − FSC_n) / (1 − FSC_n)`` beyond.
3. Resolution: RELION's rule, the last shell before the corrected FSC first drops below 0.143.
   If the unmasked FSC reaches further than the corrected one, RELION distrusts the mask and uses
   the unmasked FSC (unless ``force_mask``); both cases are reported in ``warnings``.
4. Sharpening of the *unmasked* half-map average: divide by the detector MTF (optional), weight
   each shell by ``sqrt(2·FSC/(1+FSC))`` (Rosenthal & Henderson 2003; zero from the first shell
   where the corrected FSC < 1e-4), fit ``ln⟨|F|⟩`` against ``1/d²`` and apply ``B = 4·slope``
   as ``F·exp(−B/4·s²)`` up to Nyquist (the fitted B is negative for a decaying spectrum, so
   this sharpens), then low-pass at the resolution with a raised-cosine edge two shells wide.

Guinier fit, as ``relion_postprocess --auto_bfac`` (``sharpenMap``, ``makeGuinierPlot``,
``fitStraightLine``): one point per shell ``i ≤ D/2`` at ``x = 1/d²``, ``y = ln`` of the mean
``|F|`` of the FSC-weighted spectrum over the half-spectrum voxels with ``round(|k|) = i`` (as
RELION counts them: each stored voxel once); the points with ``autob_highres_A ≤ d ≤
autob_lowres_A`` and a non-zero mean enter an unweighted least-squares line. ``autob_highres_A``
defaults to 0, i.e. up to Nyquist: the fit runs on past the resolution, through the shells the
FSC weighting damps, until the weights vanish (the first shell with FSC < 1e-4). With fewer than
two points in the range RELION silently applies B = 0; here B is 0 too, with a warning that names
the range, the shells it holds and the way out (``PostprocessResult.warnings``).

Fourier conventions: :mod:`subtomo.fourier.grid` (half spectra, shells ``round(|k|·D)``) and
:func:`subtomo.fourier.fsc.fsc`; amplitudes normalised as RELION's (``norm="forward"``).
Radial filters and phase randomisation do not depend on where the real-space origin sits, so
plain ``rfftn`` is used (the centred spectrum differs only by a phase factor).
Everything runs on the device of the inputs (``cpu`` or ``cuda``); the three FSCs and the two
half maps are processed as batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc, resolution_at, resolution_shell, shell_to_A
from subtomo.fourier.grid import lowpass_mask, shell_index, shell_radius_px

FSC_WEIGHT_FLOOR = 1e-4  # RELION: FSC weights are zero from the first shell below this
MIN_GUINIER_POINTS = 2  # a line; RELION fits from two points

MtfLike = Callable[[torch.Tensor], torch.Tensor] | np.ndarray | torch.Tensor


@dataclass
class GuinierFit:
    """Straight line through the Guinier plot: ``ln⟨|F|⟩ = intercept + slope · (1/d²)``."""

    slope_A2: float
    intercept: float
    correlation: float
    low_A: float  # fitted from this resolution (Å) ...
    high_A: float  # ... to this one
    points: int


@dataclass
class PostprocessResult:
    """Everything ``relion_postprocess`` reports. Curves are ``(D // 2 + 1,)`` on the CPU."""

    box: int
    pixel_size_A: float
    fsc_unmasked: torch.Tensor
    fsc_masked: torch.Tensor
    fsc_random_masked: torch.Tensor  # phase-randomised halves, masked
    fsc_corrected: torch.Tensor
    randomize_shell: int  # phases randomised at |k| ≥ this shell
    randomize_from_A: float
    resolution_shell: int
    resolution_A: float  # RELION's: the last shell before FSC < 0.143
    resolution_interpolated_A: float  # the 0.143 crossing interpolated between shells
    bfactor_A2: float  # applied as exp(−B/4·s²) to amplitudes; negative sharpens
    guinier_fit: GuinierFit | None  # None unless the B-factor was fitted
    guinier: dict[str, np.ndarray]  # resolution_squared (1/Å²) and ln⟨|F|⟩ columns (−99: none)
    sharpened: torch.Tensor  # (D, D, D): FSC-weighted, B-factor, low-passed, unmasked
    sharpened_masked: torch.Tensor  # sharpened × mask
    masked_average: torch.Tensor  # (half1 + half2) / 2 × mask, unfiltered
    lowpass_A: float
    mask_used: bool  # False when RELION's check fell back to the unmasked FSC
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def randomize_phases(spectra: torch.Tensor, radius: torch.Tensor, from_shell: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Replace phases at ``|k| ≥ from_shell`` by uniform random ones, keeping amplitudes.

    ``spectra``: ``(..., D, D, D//2+1)`` complex; every leading entry gets its own phases. Drawn
    on the CPU from ``generator`` so results do not depend on the device.
    """
    phase = torch.rand(spectra.shape, generator=generator, dtype=torch.float64)
    phase = (2 * math.pi * phase).to(device=spectra.device, dtype=spectra.real.dtype)
    random = torch.polar(spectra.abs(), phase)
    return torch.where(radius >= from_shell, random, spectra)


def apply_bfactor(spectrum: torch.Tensor, s2: torch.Tensor, bfactor_A2: float,
                  nyquist_s2: float) -> torch.Tensor:
    """``F·exp(−B/4·s²)`` up to Nyquist and zero beyond (RELION's ``applyBFactorToMap``)."""
    factor = torch.exp(-(bfactor_A2 / 4.0) * s2)
    factor = torch.where(s2 <= nyquist_s2 * (1 + 1e-12), factor, torch.zeros_like(factor))
    return spectrum * factor.to(spectrum.real.dtype)


def fsc_weights(fsc_curve: torch.Tensor, shells: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``sqrt(2·FSC/(1+FSC))``, zero from the first shell with FSC < 1e-4 onwards."""
    n = fsc_curve.numel()
    below = torch.nonzero(fsc_curve < FSC_WEIGHT_FLOOR).flatten()
    last = (int(below[0]) - 1) if below.numel() else n - 1
    f = fsc_curve.clamp_min(0.0)
    w = torch.sqrt(2 * f / (1 + f))
    w[last + 1:] = 0.0
    w = torch.cat([w, w.new_zeros(1)])  # shells ≥ n (corners) get zero
    return w[shells.clamp(max=n)]


def guinier_curve(spectrum: torch.Tensor, box: int) -> torch.Tensor:
    """``ln⟨|F|⟩`` over shells ``0 .. D // 2``, the mean over the half-spectrum voxels of each
    shell ``round(|k|)`` counted once each (RELION's ``makeGuinierPlot``); −99 where it is 0."""
    shells = shell_index(box, spectrum.device).reshape(-1)
    n = box // 2 + 1
    inside = shells < n
    values = spectrum.abs().double().reshape(-1)[inside]
    sums = torch.zeros(n, dtype=torch.float64, device=spectrum.device).index_add_(
        0, shells[inside], values)
    mean = sums / torch.bincount(shells[inside], minlength=n).double().clamp(min=1)
    return torch.where(mean > 0, torch.log(mean.clamp_min(1e-300)),
                       torch.full_like(mean, -99.0))


def fit_guinier(x: np.ndarray, y: np.ndarray, low_A: float, high_A: float) -> GuinierFit | None:
    """Least-squares line through the points with ``high_A ≤ d ≤ low_A`` (and y > −99);
    None with fewer than :data:`MIN_GUINIER_POINTS` of them."""
    with np.errstate(divide="ignore"):
        d = np.where(x > 0, 1.0 / np.sqrt(np.maximum(x, 1e-300)), np.inf)
    use = (d <= low_A * (1 + 1e-9)) & (d >= high_A * (1 - 1e-9)) & (y > -99.0)
    if use.sum() < MIN_GUINIER_POINTS:
        return None
    xs, ys = x[use], y[use]
    slope, intercept = np.polyfit(xs, ys, 1)
    corr = float(np.corrcoef(xs, ys)[0, 1]) if np.ptp(ys) > 0 else 1.0
    return GuinierFit(float(slope), float(intercept), corr, low_A, high_A, int(use.sum()))


def _mtf_per_voxel(mtf: MtfLike, frequency_A: torch.Tensor) -> torch.Tensor:
    """MTF at every voxel: a callable of frequency (1/Å), or an ``(n, 2)`` table (1/Å, MTF)."""
    if callable(mtf) and not isinstance(mtf, np.ndarray | torch.Tensor):
        values = torch.as_tensor(mtf(frequency_A), dtype=torch.float64,
                                 device=frequency_A.device)
    else:
        table = np.asarray(mtf.detach().cpu() if isinstance(mtf, torch.Tensor) else mtf,
                           dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != 2 or len(table) < 2:
            raise InputError(None, "MTF must be an (n, 2) table of (frequency 1/Å, value)")
        if np.any(table[:, 1] <= 1e-10):
            raise InputError(None, "MTF has zero or negative values")
        order = np.argsort(table[:, 0])
        values = torch.from_numpy(np.interp(frequency_A.cpu().numpy(), table[order, 0],
                                            table[order, 1])).to(frequency_A.device)
    if torch.any(values <= 1e-10):
        raise InputError(None, "MTF has zero or negative values")
    return values


# --------------------------------------------------------------------------- main entry
def _as_volume(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    volume = torch.as_tensor(x)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(None, f"{name} must be a cubic (z, y, x) volume, got shape "
                         f"{tuple(volume.shape)}")
    if not volume.is_floating_point():
        volume = volume.float()
    return volume


def _checked_volumes(half1: np.ndarray | torch.Tensor, half2: np.ndarray | torch.Tensor,
                     mask: np.ndarray | torch.Tensor, pixel_size_A: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Half maps stacked ``(2, D, D, D)`` and the mask, on ``half1``'s device, float32 (or
    float64 if ``half1`` is); bad shapes, mask values or pixel size raise InputError."""
    h1 = _as_volume(half1, "half map 1")
    device = h1.device
    dtype = h1.dtype if h1.dtype == torch.float64 else torch.float32
    h1 = h1.to(dtype)
    h2 = _as_volume(half2, "half map 2").to(device=device, dtype=dtype)
    m = _as_volume(mask, "mask").to(device=device, dtype=dtype)
    if h2.shape != h1.shape:
        raise InputError(None, f"half maps differ in shape: {tuple(h1.shape)} and "
                         f"{tuple(h2.shape)}")
    if m.shape != h1.shape:
        raise InputError(None, f"mask shape {tuple(m.shape)} differs from the half maps' "
                         f"{tuple(h1.shape)}")
    lo, hi = float(m.min()), float(m.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(None, f"mask values must lie in [0, 1], found [{lo:g}, {hi:g}]")
    if not pixel_size_A > 0:
        raise InputError(None, f"pixel size must be positive, got {pixel_size_A}")
    return torch.stack([h1, h2]), m


@dataclass
class _FscCurves:
    """The FSCs of steps 1-2 of the module docstring, shells ``0 .. D // 2``."""

    unmasked: torch.Tensor
    masked: torch.Tensor
    random: torch.Tensor  # masked, phases randomised from ``randomize_shell``
    corrected: torch.Tensor
    randomize_shell: int


def _randomize_shell(fsc_unmasked: torch.Tensor, box: int, pixel_size_A: float,
                     randomize_at_fsc: float, randomize_at_A: float | None) -> int:
    """``D·px / randomize_at_A``, or the first shell (> 0) where the unmasked FSC drops below
    ``randomize_at_fsc`` (:func:`resolution_shell` + 1); ``D // 2 + 1`` when it never does."""
    if randomize_at_A is not None and randomize_at_A > 0:
        return int(box * pixel_size_A / randomize_at_A)
    return resolution_shell(fsc_unmasked, randomize_at_fsc) + 1


def _fsc_curves(halves: torch.Tensor, m: torch.Tensor, pixel_size_A: float,
                randomize_at_fsc: float, randomize_at_A: float | None, seed: int,
                notes: list[str]) -> _FscCurves:
    """Unmasked, masked, masked phase-randomised and corrected FSCs (module docstring, 1-2)."""
    box = halves.shape[-1]
    n = box // 2 + 1
    radius = shell_radius_px(box, halves.device, torch.float64)
    spectra = torch.fft.rfftn(halves, dim=(-3, -2, -1))
    fsc_unmasked = fsc(spectra[0], spectra[1], spectra=True)
    r0 = _randomize_shell(fsc_unmasked, box, pixel_size_A, randomize_at_fsc, randomize_at_A)
    if r0 <= 0 or r0 >= n:
        notes.append(f"unmasked FSC never drops below {randomize_at_fsc}: no phase "
                     "randomisation, corrected FSC = masked FSC")
        r0 = n
    generator = torch.Generator().manual_seed(seed)
    random = torch.fft.irfftn(randomize_phases(spectra, radius, r0, generator), s=(box,) * 3,
                              dim=(-3, -2, -1))
    # masked and masked-randomised FSCs in one batch
    fsc_mr = fsc(torch.stack([halves[0] * m, random[0] * m]),
                 torch.stack([halves[1] * m, random[1] * m]))
    fsc_masked, fsc_random = fsc_mr[0].clone(), fsc_mr[1].clone()
    if fsc_masked[0] <= 0:  # RELION: the FSC at the origin sometimes comes out as −1
        fsc_masked[0] = 1.0
    if fsc_random[0] <= 0:
        fsc_random[0] = 1.0
    start = min(r0 + 2, n)
    fsc_corrected = fsc_masked.clone()
    denom = (1.0 - fsc_random[start:]).clamp_min(1e-6)
    fsc_corrected[start:] = (fsc_masked[start:] - fsc_random[start:]) / denom
    return _FscCurves(fsc_unmasked, fsc_masked, fsc_random, fsc_corrected, r0)


def _resolution(curves: _FscCurves, force_mask: bool, notes: list[str]) -> tuple[int, bool]:
    """RELION's resolution shell of the corrected FSC, and whether the mask is trusted (module
    docstring, 3); falls back to the unmasked FSC (``curves.corrected`` replaced) if it
    reaches further, unless ``force_mask``."""
    n = curves.corrected.numel()
    res_i = resolution_shell(curves.corrected)
    unmasked_i = resolution_shell(curves.unmasked)
    if unmasked_i > res_i:
        if force_mask:
            notes.append("the unmasked FSC extends beyond the solvent-corrected FSC")
            return res_i, True
        notes.append("the unmasked FSC extends beyond the solvent-corrected FSC: mask "
                     "ignored (use force_mask to keep it); check the mask")
        curves.corrected = curves.unmasked.clone()
        return unmasked_i, False
    if curves.randomize_shell < n and float(curves.random[res_i]) > 0.1:
        notes.append(f"phase-randomised FSC is {float(curves.random[res_i]):.2f} (> 0.10) at "
                     "the estimated resolution: the mask may be too sharp or too tight")
    return res_i, True


def _bfactor(weighted: np.ndarray, x: np.ndarray, box: int, pixel_size_A: float,
             adhoc_bfac: float | None, autob_lowres_A: float, autob_highres_A: float | None,
             notes: list[str]) -> tuple[float, GuinierFit | None]:
    """The B-factor (Å²) to apply and the Guinier fit it came from (None if not fitted);
    ``weighted``: ``ln⟨|F|⟩`` of the FSC-weighted map at ``x = 1/d²``."""
    if adhoc_bfac is not None:
        return (-abs(float(adhoc_bfac)) if adhoc_bfac != 0 else 0.0), None
    high = autob_highres_A if autob_highres_A and autob_highres_A > 0 else 2 * pixel_size_A
    fit = fit_guinier(x, weighted, autob_lowres_A, high)
    if fit is None:
        with np.errstate(divide="ignore"):
            d = np.where(x > 0, 1.0 / np.sqrt(x), np.inf)
        inside = (d <= autob_lowres_A) & (d >= high)
        count = int((inside & (weighted > -99.0)).sum())
        signal = np.flatnonzero(weighted > -99.0)
        reach = shell_to_A(int(signal.max()) if signal.size else 0, box, pixel_size_A)
        notes.append(f"no B-factor fitted: the fit range {autob_lowres_A:g}–{high:.2f} Å "
                     f"holds {count} shell(s) with signal, {MIN_GUINIER_POINTS} needed "
                     f"({int(inside.sum())} shell(s) in range; the FSC-weighted map "
                     f"reaches {reach:.2f} Å); the map is not sharpened: lower "
                     "--autob_lowres, or give --adhoc_bfac")
    return (0.0 if fit is None else 4.0 * fit.slope_A2), fit


def postprocess(
    half1: np.ndarray | torch.Tensor,
    half2: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    pixel_size_A: float,
    *,
    adhoc_bfac: float | None = None,
    autob_lowres_A: float = 10.0,
    autob_highres_A: float | None = 0.0,
    randomize_at_fsc: float = 0.8,
    randomize_at_A: float | None = None,
    mtf: MtfLike | None = None,
    low_pass_A: float | None = None,
    force_mask: bool = False,
    filter_edge_width: int = 2,
    seed: int = 0,
) -> PostprocessResult:
    """Post-process two half maps as ``relion_postprocess`` does (see the module docstring).

    ``adhoc_bfac`` (Å²) skips the Guinier fit and sharpens with ``−|adhoc_bfac|`` (0: none);
    otherwise the B-factor is fitted between ``autob_lowres_A`` and ``autob_highres_A`` (default
    0: Nyquist; see the module docstring); with fewer than two shells in that range B is 0 and
    a warning names the range. ``mtf``: a callable of frequency (1/Å) or an ``(n, 2)`` table
    (1/Å, value). Works on the device of ``half1`` (the others are moved there).
    """
    halves, m = _checked_volumes(half1, half2, mask, pixel_size_A)
    device, dtype = halves.device, halves.dtype
    box = halves.shape[-1]
    n = box // 2 + 1
    notes: list[str] = []
    curves = _fsc_curves(halves, m, pixel_size_A, randomize_at_fsc, randomize_at_A, seed, notes)
    res_i, mask_used = _resolution(curves, force_mask, notes)
    resolution_A = shell_to_A(res_i, box, pixel_size_A)

    # sharpen the unmasked average
    average = 0.5 * (halves[0] + halves[1])
    ft = torch.fft.rfftn(average, dim=(-3, -2, -1), norm="forward")
    frequency_A = shell_radius_px(box, device, torch.float64) / (box * pixel_size_A)
    columns: dict[str, torch.Tensor] = {"original": guinier_curve(ft, box)}
    if mtf is not None:
        ft = ft / _mtf_per_voxel(mtf, frequency_A).to(dtype)
        columns["mtf_corrected"] = guinier_curve(ft, box)
    ft = ft * fsc_weights(curves.corrected, shell_index(box, device)).to(dtype)
    columns["weighted"] = guinier_curve(ft, box)
    x = (np.arange(n) / (box * pixel_size_A)) ** 2
    bfactor, fit = _bfactor(columns["weighted"].cpu().numpy(), x, box, pixel_size_A,
                            adhoc_bfac, autob_lowres_A, autob_highres_A, notes)
    if bfactor != 0.0:
        ft = apply_bfactor(ft, frequency_A**2, bfactor, (1.0 / (2.0 * pixel_size_A)) ** 2)
        columns["sharpened"] = guinier_curve(ft, box)
    lowpass_A = low_pass_A if low_pass_A and low_pass_A > 0 else resolution_A
    lowpass_shell = round(box * pixel_size_A / lowpass_A) if math.isfinite(lowpass_A) else 0
    ft = ft * lowpass_mask(box, lowpass_shell, filter_edge_width, device, dtype)
    sharpened = torch.fft.irfftn(ft, s=(box,) * 3, dim=(-3, -2, -1), norm="forward")

    guinier = {"resolution_squared": x}
    guinier.update({k: v.cpu().numpy() for k, v in columns.items()})
    if fit is not None:
        guinier["intercept"] = np.full(n, fit.intercept)
    return PostprocessResult(
        box=box,
        pixel_size_A=float(pixel_size_A),
        fsc_unmasked=curves.unmasked.cpu(),
        fsc_masked=curves.masked.cpu(),
        fsc_random_masked=curves.random.cpu(),
        fsc_corrected=curves.corrected.cpu(),
        randomize_shell=curves.randomize_shell,
        randomize_from_A=shell_to_A(curves.randomize_shell, box, pixel_size_A),
        resolution_shell=res_i,
        resolution_A=resolution_A,
        resolution_interpolated_A=resolution_at(curves.corrected, box, pixel_size_A),
        bfactor_A2=bfactor,
        guinier_fit=fit,
        guinier=guinier,
        sharpened=sharpened,
        sharpened_masked=sharpened * m,
        masked_average=average * m,
        lowpass_A=lowpass_A,
        mask_used=mask_used,
        warnings=notes,
    )
