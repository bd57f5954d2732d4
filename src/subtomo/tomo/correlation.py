"""Cross-correlation maps of tilt-image crops against the references' CTF-weighted projections.

For tilt-series refinement (RELION 5 ``Prediction::computeCroppedCCs``, ``TomoReferenceMap``
and ``RefinementProgram::computeFrequencyWeights``): each particle ``p`` in each tilt ``t`` is
cropped around its projected position (:func:`subtomo.tomo.crops.particle_crops`: sub-pixel
phase, contrast flip, CTF at its depth × exposure filter ``c``) and compared with the central
section of its own half set's reference (masked, zero-padded to the crop box, sampled by
:class:`subtomo.fourier.projector.Projector` at ``(R_t A_p)ᵀ k``):

    CC_pt(s) = Σ_k w_t(k) X_pt(k) conj(c_pt(k) V_h(p)((R_t A_p)ᵀ k)) exp(2πi k·s)

over the full spectrum, for displacements ``s`` (working px) within ``±r``; ``w_t(k) =
SNR(|k|) / σ²_t(|k|)``: ``σ²_t`` the power of the tilt's crops per ring (noise whitening, from
the data as RELION's periodogram), ``SNR = 2 FSC / (1 + FSC)`` from the references' FSC
(``rlnFourierShellCorrelationCorrected`` of ``--fsc``, else the FSC of the masked half maps),
zero from the first shell under 0.143 on. The DC term is left out. With these weights
``CC_pt(s)`` is, up to a constant, the log-likelihood of the crop given the particle at ``s``
(Gaussian noise), which is what the motion prior is balanced against.

Maps are computed with one zero-padded inverse FFT per crop (``pad`` samples per px) and kept
on the window ``|s| ≤ r`` plus three zero samples on each side, so that the bicubic (Keys)
interpolation of :func:`interpolate` fades smoothly to zero outside the window (as RELION
pads its maps by three zero pixels). Besides the sharp maps, the same spectra give maps
smoothed by a Gaussian (``blur_px``): their wider peaks let a first pass of the optimiser
reach the right basin from errors of several pixels, which the sharp maps then refine
(RELION makes one pass on sharp maps: on a simulated tilt series with 1.9 px rms errors and
the true map as reference, one sharp pass stopped at 0.95 px rms, the two passes at 0.04 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc as fourier_shell_correlation
from subtomo.fourier.projector import Projector
from subtomo.io.fsc_star import read_fsc_curve
from subtomo.io.half_maps import read_half_maps
from subtomo.io.tilt_series import TiltSeries
from subtomo.tomo.crops import PreparedImages, particle_crops
from subtomo.tomo.deformation import deformation_of

__all__ = ["CorrelationMaps", "References", "correlation_maps", "interpolate", "read_references"]

BORDER = 3  # zero samples around each map (cubic support)
FFT_POINTS = 1 << 22  # samples of the padded inverse FFTs held at once


def snr_weight(curve: np.ndarray) -> np.ndarray:
    """``2 FSC / (1 + FSC)`` per shell, zero from the first shell (after 0) under 0.143."""
    curve = np.asarray(curve, np.float64).copy()
    bad = np.flatnonzero(curve[1:] < 0.143)
    if len(bad):
        curve[bad[0] + 1:] = 0.0
    curve = np.clip(curve, 0.0, 1.0)
    return 2 * curve / (1 + curve)


@dataclass
class References:
    """Two half maps (masked, ``D³``, ``pixel_size_A``) and the SNR weight per shell of the
    ``D`` box (``snr (D // 2 + 1,)``)."""

    half1: Tensor
    half2: Tensor
    pixel_size_A: float
    snr: np.ndarray
    sources: tuple[str, ...] = ()

    @property
    def box(self) -> int:
        return int(self.half1.shape[-1])

    def projectors(self, box: int, device) -> tuple[Projector, Projector]:
        """Projectors of both halves zero-padded to ``max(box, D)`` (central sections on the
        estimation box's grid need no interpolation beyond the projector's own)."""
        big = max(box, self.box)
        out = []
        for half in (self.half1, self.half2):
            vol = half.to(device=device, dtype=torch.float32)
            if big > self.box:
                o = big // 2 - self.box // 2
                padded = vol.new_zeros((big, big, big))
                padded[o:o + self.box, o:o + self.box, o:o + self.box] = vol
                vol = padded
            out.append(Projector(vol, pad=2))
        return out[0], out[1]

    def snr_at(self, freq_per_A: Tensor) -> Tensor:
        """SNR weight at frequencies (1/Å), linear between the shells of the ``D`` box."""
        shell = freq_per_A * (self.box * self.pixel_size_A)
        table = torch.as_tensor(self.snr, dtype=freq_per_A.dtype, device=freq_per_A.device)
        i0 = shell.floor().long().clamp(0, len(table) - 1)
        i1 = (i0 + 1).clamp(max=len(table) - 1)
        f = (shell - i0).clamp(0, 1)
        out = (1 - f) * table[i0] + f * table[i1]
        return torch.where(shell <= len(table) - 1, out, torch.zeros_like(out))


def read_references(ref1: str | Path, ref2: str | Path, mask: str | Path | None = None,
                    fsc: str | Path | None = None) -> References:
    """Half maps, mask and FSC of ``--ref1 --ref2 --mask --fsc`` (checked to agree, by
    :func:`subtomo.io.half_maps.read_half_maps`), with the SNR weight per shell from ``fsc``
    interpolated to the maps' box, or from the FSC of the masked half maps."""
    h1, h2, p1 = read_half_maps(ref1, ref2, mask)
    box = h1.shape[-1]
    if fsc is not None:
        curve = read_fsc_curve(fsc)
        shells = np.arange(box // 2 + 1) * (len(curve) - 1) / (box // 2)
        curve = np.interp(shells, np.arange(len(curve)), curve)
    else:
        curve = fourier_shell_correlation(h1.double(), h2.double()).double().numpy()
    sources = tuple(str(p) for p in (ref1, ref2, mask, fsc) if p is not None)
    return References(h1.float(), h2.float(), float(p1), snr_weight(curve), sources)


@dataclass
class CorrelationMaps:
    """``maps (N, T, S, S)`` (rows y, columns x): CC at displacements ``(i − c) / pad`` working
    px, ``c = (S − 1) / 2``; ``centres (N, T, 2)``: the tilt-series px positions the crops were
    centred on; ``scale (2,)``: tilt-series px → working px; ``visible (N, T)``; ``peak``:
    the summed maxima (a natural scale of the summed CC); ``blur_px``: σ of the Gaussian the
    maps were smoothed with (working px)."""

    maps: Tensor
    centres: Tensor
    scale: Tensor
    pad: int
    visible: Tensor
    peak: float
    blur_px: float = 0.0

    @property
    def radius_px(self) -> float:
        """Largest displacement (working px) with a full cubic neighbourhood of map samples."""
        return ((self.maps.shape[-1] - 1) / 2 - BORDER) / self.pad


def _ring_index(freqs: Tensor, size: int, pixel_size_A: tuple[float, float]) -> Tensor:
    """Integer ring of each crop frequency (Fourier px of the crop)."""
    kx = freqs[..., 0] * size * pixel_size_A[0]
    ky = freqs[..., 1] * size * pixel_size_A[1]
    return torch.sqrt(kx * kx + ky * ky).round().long()


def correlation_maps(
    ts: TiltSeries,
    prepared: PreparedImages,
    positions_px: Tensor,
    particle_matrices: Tensor,
    halves: np.ndarray,
    refs: References,
    projectors: tuple[Projector, Projector],
    *,
    box: int,
    radius_px: float,
    pad: int = 2,
    matrices: Tensor | None = None,
    batch_size: int = 32,
    blur_px: tuple[float, ...] = (0.0,),
    progress=None,
) -> list[CorrelationMaps]:
    """CC maps of particles at tomogram positions ``positions_px (N, T, 3)`` (tilt-series px,
    one per tilt: trajectories included) with full orientations ``particle_matrices (N, 3, 3)``
    and half sets ``halves (N,)`` (1 or 2). ``box``: crop (working px); ``radius_px``: window
    (working px); ``matrices``: projection matrices (default the tilt series'). One set of
    maps per entry of ``blur_px``: the CC convolved with a Gaussian of that σ (working px)."""
    device = prepared.images.device
    n, t = positions_px.shape[:2]
    mats = ts.matrices(device=device) if matrices is None else matrices.to(device)
    pixel_size_A = refs.pixel_size_A

    def crops_of(rows):
        return particle_crops(ts, prepared, positions_px[rows].to(device), box, pixel_size_A,
                              matrices=mats)

    batches = [np.arange(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    sigma2, rings, freqs = _noise_power(crops_of, batches, t, box, prepared.pixel_size_A,
                                        device)
    weights = _frequency_weights(refs, freqs, rings, sigma2, box, projectors[0].box, device)
    window = _fft_window(box, pad, radius_px, device)
    blurs = tuple(float(v) for v in blur_px)
    maps = torch.zeros(len(blurs), n, t, window.side, window.side, dtype=torch.float32,
                       device=device)
    visible = torch.zeros(n, t, dtype=torch.bool, device=device)
    peaks = [0.0] * len(blurs)
    half_idx = torch.as_tensor(np.array(halves), device=device)
    k2 = (freqs[..., 0] * prepared.pixel_size_A[0]) ** 2 + (
        freqs[..., 1] * prepared.pixel_size_A[1]) ** 2  # (cycles per working px)²
    for rows in batches:
        crops = crops_of(rows)
        product = _weighted_products(crops, particle_matrices[rows], half_idx[rows],
                                     mats[:, :3, :3], projectors, weights, box)
        visible[rows] = crops.visible
        for level, blur in enumerate(blurs):
            spectrum = product
            if blur > 0:  # a Gaussian of σ = blur working px: wider basins for a first pass
                spectrum = product * torch.exp(-2 * math.pi**2 * blur**2 * k2).to(torch.float32)
            peaks[level] = _windowed_maps(spectrum, crops.visible, window, maps[level], rows,
                                          peaks[level])
        if progress is not None:
            progress(len(rows))
    xy = ts.project(positions_px.to(device=device, dtype=torch.float64), mats)
    deformation = deformation_of(ts)
    if deformation is not None:
        xy = deformation.apply(xy)
    scale = torch.tensor(prepared.scale, dtype=torch.float64, device=device)
    return [CorrelationMaps(maps[level], xy, scale, pad, visible, peaks[level], blurs[level])
            for level in range(len(blurs))]


def _noise_power(crops_of, batches: list[np.ndarray], t: int, box: int,
                 pixel_size_A: tuple[float, float], device: torch.device
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Noise power ``σ²_t`` per tilt and ring ``(T, D // 2 + 2)`` from the crops themselves
    (whitening: the mean of ``|X|²`` over the visible crops of each tilt and ring), the ring of
    each crop frequency and the crop frequencies (1/Å)."""
    ring_count = box // 2 + 1
    power = torch.zeros(t, ring_count + 1, dtype=torch.float64, device=device)
    count = torch.zeros_like(power)
    rings = None
    for rows in batches:
        crops = crops_of(rows)
        if rings is None:
            rings = _ring_index(crops.freqs_per_A, box, pixel_size_A).clamp(max=ring_count)
        vis = crops.visible.to(torch.float64)  # (b, T)
        p2 = (crops.spectra.abs() ** 2).to(torch.float64) * vis[..., None, None]
        flat = rings.reshape(-1).expand(t, -1)
        power.scatter_add_(1, flat, p2.sum(0).reshape(t, -1))
        count.scatter_add_(1, flat, vis.sum(0)[:, None].expand(-1, flat.shape[1]).contiguous())
    return power / count.clamp(min=1), rings, crops.freqs_per_A


@dataclass
class _Weights:
    """The crop frequencies that take part (``selected``: flat half-grid indices), the same as
    frequencies of the projectors' box ``k3 (n, 3)`` (Fourier px) and their weights
    ``w (T, n)``."""

    selected: Tensor
    k3: Tensor
    w: Tensor


def _frequency_weights(refs: References, freqs: Tensor, rings: Tensor, sigma2: Tensor,
                       box: int, big: int, device: torch.device) -> _Weights:
    """The frequency weights ``w_t(k) = SNR(|k|) / σ²_t(ring)``: zero at DC, the crop's Nyquist
    ring and beyond, where the reference has no signal, and in tilts nobody sees; ``big``: the
    projectors' box."""
    t = sigma2.shape[0]
    snr = refs.snr_at(freqs.norm(dim=-1)).to(device)
    inside = (rings < box // 2) & (rings > 0) & (snr > 0)
    weight = torch.where(
        inside[None] & (sigma2[:, rings] > 0),
        snr[None] / sigma2[:, rings].clamp(min=1e-300), torch.zeros((), dtype=torch.float64,
                                                                   device=device))
    selected = torch.nonzero(inside.reshape(-1)).reshape(-1)
    k3 = torch.zeros(len(selected), 3, dtype=torch.float64, device=device)
    k3[:, :2] = freqs.reshape(-1, 2)[selected] * (big * refs.pixel_size_A)
    return _Weights(selected, k3, weight.reshape(t, -1)[:, selected].float())


@dataclass
class _Window:
    """The padded inverse FFT of a crop's CC (``size = box · pad`` samples a side) and the
    samples of it kept: ``offsets`` (indices within ``±half_window``, mod ``size``);
    ``rows_pad``: the rows of the padded half spectrum that take the crop's."""

    box: int
    size: int
    offsets: Tensor
    rows_pad: Tensor

    @property
    def side(self) -> int:
        return len(self.offsets)


def _fft_window(box: int, pad: int, radius_px: float, device: torch.device) -> _Window:
    """The window ``|s| ≤ radius_px`` (working px) plus :data:`BORDER` samples each side."""
    size = box * pad
    half_window = int(math.ceil(radius_px * pad)) + BORDER
    if 2 * half_window + 1 > size:
        raise InputError(None, f"--r of {radius_px:.1f} working px needs a box of at least "
                         f"{2 * math.ceil(radius_px) + 4} px; --b is {box}", field="--r")
    offsets = torch.arange(-half_window, half_window + 1, device=device) % size
    rows_pad = torch.cat([torch.arange(0, (box + 1) // 2), torch.arange(size - box // 2, size)]
                         ).to(device)
    return _Window(box, size, offsets, rows_pad)


def _weighted_products(crops, particle_matrices: Tensor, halves: Tensor, rot: Tensor,
                       projectors: tuple[Projector, Projector], weights: _Weights, box: int
                       ) -> Tensor:
    """``w_t(k) X_pt(k) conj(c_pt(k) V_h(p)((R_t A_p)ᵀ k))`` on the crops' half grid
    ``(b, T, D, D // 2 + 1)`` (0 outside the selected frequencies)."""
    b, t = crops.visible.shape
    selected = weights.selected
    device = rot.device
    frames = (rot[None] @ particle_matrices.to(device=device, dtype=rot.dtype)
              [:, None])  # (b, T, 3, 3)
    pred = torch.zeros(b, t, len(selected), dtype=torch.complex64, device=device)
    for h in (1, 2):
        sel = halves == h
        if bool(sel.any()):
            pred[sel] = projectors[h - 1].sample(frames[sel].reshape(-1, 3, 3),
                                                 weights.k3).reshape(
                int(sel.sum()), t, -1).to(torch.complex64)
    x = crops.spectra.reshape(b, t, -1)[..., selected].to(torch.complex64)
    c = crops.ctf.reshape(b, t, -1)[..., selected].to(torch.float32)
    product = torch.zeros(b, t, box * (box // 2 + 1), dtype=torch.complex64, device=device)
    product[..., selected] = x * (weights.w[None] * c) * pred.conj()
    return product.reshape(b, t, box, box // 2 + 1)


def _windowed_maps(spectrum: Tensor, vis: Tensor, window: _Window, maps: Tensor,
                   rows: np.ndarray, peak: float) -> float:
    """Inverse FFTs of the zero-padded ``spectrum (b, T, D, D // 2 + 1)``, a few particles at a
    time, cut to the window, :data:`BORDER` samples zeroed, invisible tilts zeroed; written into
    ``maps[rows]``; returns ``peak`` plus the summed positive maxima."""
    b, t = vis.shape
    box, size, offsets = window.box, window.size, window.offsets
    chunk = max(1, FFT_POINTS // (t * size * size))  # particles per padded inverse FFT
    for first in range(0, b, chunk):
        part = spectrum[first:first + chunk]
        padded = torch.zeros(len(part), t, size, size // 2 + 1, dtype=torch.complex64,
                             device=spectrum.device)
        padded[:, :, window.rows_pad, : box // 2 + 1] = part
        full = torch.fft.irfft2(padded, s=(size, size)) * float(size * size)
        cut = full[:, :, offsets][:, :, :, offsets]  # (c, T, side, side)
        del padded, full
        cut[..., :BORDER, :] = 0
        cut[..., -BORDER:, :] = 0
        cut[..., :, :BORDER] = 0
        cut[..., :, -BORDER:] = 0
        cut = cut * vis[first:first + chunk, :, None, None]
        maps[rows[first:first + chunk]] = cut
        peak += float(cut.amax(dim=(-2, -1)).clamp(min=0).sum())
    return peak


_KEYS = torch.tensor([[0.0, -0.5, 1.0, -0.5], [1.0, 0.0, -2.5, 1.5], [0.0, 0.5, 2.0, -1.5],
                      [0.0, 0.0, -0.5, 0.5]], dtype=torch.float64)  # rows: taps; cols: 1,t,t²,t³


def _cubic_weights(t: Tensor) -> Tensor:
    """Keys cubic convolution weights (a = −0.5) of taps −1, 0, 1, 2: ``(..., 4)``."""
    powers = torch.stack([torch.ones_like(t), t, t * t, t * t * t], -1)
    return powers @ _KEYS.to(t).T


def interpolate(maps: Tensor, uv: Tensor) -> Tensor:
    """Bicubic values of ``maps (..., S, S)`` at fractional indices ``uv (..., 2)`` (column,
    row); differentiable in ``uv``. Indices are clamped into the map (whose border is zero)."""
    s = maps.shape[-1]
    lead = maps.shape[:-2]
    uv = uv.clamp(1.0, s - 2.0 - 1e-6)
    base = uv.detach().floor()
    frac = uv - base
    base = base.long() - 1
    wx, wy = _cubic_weights(frac[..., 0]), _cubic_weights(frac[..., 1])  # (..., 4)
    taps = torch.arange(4, device=maps.device)
    cols = base[..., 0, None] + taps  # (..., 4)
    rows = base[..., 1, None] + taps
    index = (rows[..., :, None] * s + cols[..., None, :]).reshape(*lead, 16)
    values = torch.gather(maps.reshape(*lead, s * s), -1, index).reshape(*lead, 4, 4)
    return torch.einsum("...ij,...i,...j->...", values.to(wx.dtype), wy, wx)
