"""Template matching over a whole tomogram: the normalised cross-correlation at every voxel and
orientation (the search behind ``subtomo pick``).

Scores (Roseman 2003's fast local correlation, with the denominator computed once):

* The tomogram ``V`` (protein white) is whitened once, ``V̂(k) / √P(|k|)``, with ``P`` its
  radially averaged power spectrum (noise and signal both flat afterwards; the template gets
  the same filter).
* For an orientation ``A`` the template is what a voxel sees: the reference rotated by ``A``
  (RELION: a particle is the reference rotated by ``A``), times the tomogram-frame weight
  ``W(k)`` — the CTF of every tilt at the slab's depth, dose-filtered, gridded on the tilt
  planes (:func:`subtomo.ctf.volume.ctf_volume`: zero in the missing wedge) — and the whitening
  filter; then masked by ``m`` and normalised: ``t = m (t₀ − ⟨t₀⟩_m)``, ``Σ t² = 1``.
* ``CC_A(x) = Σ_r t_A(r) V(x + r) = irfft(V̂ · conj(t̂_A))`` (one inverse FFT per orientation),
  with ``t̂_A`` the spectrum of the template embedded at the origin of the slab's grid, made
  by a pruned FFT (the template fills only ``D³`` voxels: x and y transforms on the small box,
  one z transform on the full grid, and the centring as phases).
* ``σ(x)² = ⟨V²⟩_m(x) − ⟨V⟩_m(x)²`` under the spherical mask ``m`` once for all orientations;
  ``score(x) = max_A CC_A(x) / (σ(x) √Σm)``, a normalised correlation in [−1, 1] for a
  spherical mask. The orientation index of the best score is kept, and so is
  ``max_A −CC_A(x) / (σ √Σm)``: the same statistic for the contrast-inverted template, which
  no particle matches, is the *null* from which :mod:`subtomo.tomo.peaks` estimates the
  false alarms.
* Slabs: the defocus changes with depth; the tomogram is cut into z-slabs (each padded by half
  the template box, no wrap-around in z), and each slab gets the weight ``W`` at its centre.
  Within a slab the CTF phase ``πλΔz k²`` moves by at most π/4 at the template's Nyquist
  (:func:`slab_thickness_px`); at 10 Å/px that is 500 nm, so most tomograms are one slab.
* Orientations are batched (``batch``) and the whole search runs on ``device``; the running
  maximum, its orientation and the null maximum are the only full-size state.

Voxels within half a template box of the x/y edges wrap around (circular correlation) and are
marked invalid (score −1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from subtomo.ctf.ctf2d import electron_wavelength_A
from subtomo.fourier.grid import centred_irfft, centred_rfft, soft_sphere
from subtomo.maps.rotate import rotate_volume

__all__ = ["MatchResult", "Refined", "fast_size", "match_template", "prepared", "radial_power",
           "refine_peaks", "slab_thickness_px", "whiten"]


@dataclass
class MatchResult:
    """Per voxel ``(Z, Y, X)``: the best normalised score, the index of its orientation, the
    null score (best score of the inverted template) and whether the score is defined (not
    within half a template box of the x/y edges)."""

    scores: Tensor
    angles: Tensor
    null: Tensor
    valid: Tensor


def slab_thickness_px(pixel_size_A: float, voltage_kv: float = 300.0) -> int:
    """Thickness (px) over which the CTF phase ``π λ Δz k²`` at Nyquist ``k = 1/(2 px)`` moves
    by at most π/4: ``Δz = px² / λ``."""
    return max(1, int(pixel_size_A / electron_wavelength_A(voltage_kv)))


def fast_size(n: int) -> int:
    """The smallest ``2^a 3^b 5^c ≥ n`` (sizes the FFT does fast)."""
    size = n
    while True:
        m = size
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return size
        size += 1


def _radius(shape: tuple[int, int, int], device) -> Tensor:
    """|k| in cycles/px on the rfftn grid of ``shape`` (z, y, x)."""
    kz = torch.fft.fftfreq(shape[0], device=device)[:, None, None]
    ky = torch.fft.fftfreq(shape[1], device=device)[None, :, None]
    kx = torch.fft.rfftfreq(shape[2], device=device)[None, None, :]
    return torch.sqrt(kz**2 + ky**2 + kx**2)


def radial_power(volume: Tensor, n_bins: int = 64) -> Tensor:
    """Radially averaged power ``P`` of ``volume`` (z, y, x) in ``n_bins`` shells of |k| up to
    √3/2 cycles/px (so that :func:`whiten` can evaluate it on any grid)."""
    spec = torch.fft.rfftn(volume)
    shell = (_radius(volume.shape, volume.device) * (n_bins / (math.sqrt(3) / 2))).long()
    shell = shell.clamp_max(n_bins - 1).flatten()
    power = torch.zeros(n_bins, device=volume.device, dtype=volume.dtype)
    count = torch.zeros_like(power)
    power.index_add_(0, shell, spec.abs().square().flatten().to(volume.dtype))
    count.index_add_(0, shell, torch.ones_like(shell, dtype=volume.dtype))
    power = power / count.clamp_min(1)
    filled = power[count > 0]
    return torch.where(count > 0, power, filled[-1] if len(filled) else 1.0)


def whiten(power: Tensor, shape: tuple[int, int, int], device=None) -> Tensor:
    """The filter ``1 / √P(|k|)`` on the rfftn grid of ``shape`` (linear in the shell)."""
    n_bins = power.shape[0]
    pos = (_radius(shape, device) * (n_bins / (math.sqrt(3) / 2))).clamp(0, n_bins - 1)
    lo = pos.floor().long().clamp_max(n_bins - 1)
    hi = (lo + 1).clamp_max(n_bins - 1)
    frac = pos - lo
    p = power.to(device)
    interp = p[lo] * (1 - frac) + p[hi] * frac
    return interp.clamp_min(p.max() * 1e-12).rsqrt()


def prepared(tomogram: Tensor, box: int, whitening: bool, device) -> tuple[Tensor, Tensor | None]:
    """The tomogram as searched (mean 0, whitened) and the whitening filter on the template's
    half grid (``None`` without whitening)."""
    vol = tomogram.to(device=device, dtype=torch.float32)
    vol = vol - vol.mean()
    if not whitening:
        return vol, None
    power = radial_power(vol)
    vol = torch.fft.irfftn(torch.fft.rfftn(vol) * whiten(power, vol.shape, device), s=vol.shape)
    return vol, whiten(power, (box, box, box), device)


def _template_spectra(template: Tensor, rotations: Tensor, weight: Tensor, mask: Tensor
                      ) -> Tensor:
    """Rotated, weighted, masked and normalised templates ``(B, D, D, D)`` (centred)."""
    rotated = rotate_volume(template, rotations).reshape(-1, *template.shape)  # (B, D, D, D)
    box = template.shape[-1]
    filtered = centred_irfft(centred_rfft(rotated) * weight, box)
    m = mask
    mean = (filtered * m).sum((-3, -2, -1), keepdim=True) / m.sum()
    t = m * (filtered - mean)
    return t / t.square().sum((-3, -2, -1), keepdim=True).sqrt().clamp_min(1e-30)


def _phase(n: int, shift: int, device) -> Tensor:
    """``exp(2πi k shift / n)`` for the full FFT frequencies ``k`` of length ``n``."""
    k = torch.fft.fftfreq(n, device=device, dtype=torch.float64) * n
    return torch.polar(torch.ones_like(k), 2 * math.pi * k * shift / n).to(torch.complex64)


class _Embedder:
    """Spectra on a grid ``(Z, Y, X)`` of centred ``D³`` boxes placed at the origin (pruned
    FFT; the z phase is left to the caller, see :attr:`phase_z`)."""

    def __init__(self, box: int, shape: tuple[int, int, int], device) -> None:
        self.box, self.shape = box, shape
        c = box // 2
        self.phase_x = _phase(shape[2], c, device)[: shape[2] // 2 + 1]
        self.phase_y = _phase(shape[1], c, device)
        self.phase_z = _phase(shape[0], c, device)

    def __call__(self, t: Tensor) -> Tensor:
        z, y, x = self.shape
        s = torch.fft.rfft(t, n=x, dim=-1) * self.phase_x
        s = torch.fft.fft(s, n=y, dim=-2) * self.phase_y[:, None]
        return torch.fft.fft(s, n=z, dim=-3)


def _local_sigma(spec: Tensor, volume: Tensor, mask: Tensor, embed: _Embedder) -> Tensor:
    """σ under the (centred) mask at every voxel of the slab (circular)."""
    shape = volume.shape
    m_hat = (embed(mask[None]) * embed.phase_z[:, None, None])[0].conj()
    n = mask.sum()
    mean = torch.fft.irfftn(spec * m_hat, s=shape) / n
    mean2 = torch.fft.irfftn(torch.fft.rfftn(volume.square()) * m_hat, s=shape) / n
    return (mean2 - mean.square()).clamp_min(0).sqrt()


def match_template(
    tomogram: Tensor,
    template: Tensor,
    rotations: Tensor,
    weights: Callable[[float], Tensor],
    *,
    mask: Tensor | None = None,
    sphere_diameter_px: float | None = None,
    slab_px: int | None = None,
    whitening: bool = True,
    batch: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "matching",
) -> MatchResult:
    """Scores of ``template`` (``D³``, centred, protein white, the tomogram's voxel size) at
    every voxel of ``tomogram`` (``(Z, Y, X)``, protein white) and every rotation
    ``(R, 3, 3)`` (see the module docstring). ``weights(z_centre_px)`` gives the half-spectrum
    weight ``(D, D, D // 2 + 1)`` of a slab centred at tomogram voxel ``z_centre_px``;
    ``mask`` (``D³``, default: a sphere of ``sphere_diameter_px``) masks the template;
    ``slab_px`` caps the slab thickness (default: the whole tomogram)."""
    device = torch.device(device)
    box = template.shape[-1]
    vol, white = prepared(tomogram, box, whitening, device)
    nz, ny, nx = vol.shape
    template = template.to(device=device, dtype=torch.float32)
    rotations = rotations.to(device=device, dtype=torch.float32)
    sphere = soft_sphere(box, sphere_diameter_px or box - 2, 2.0, device=device)
    mask = sphere if mask is None else mask.to(device=device, dtype=torch.float32)
    half = box // 2
    step = max(1, min(nz, slab_px or nz))
    scores = torch.full((nz, ny, nx), -1.0, device=device)
    null = torch.full_like(scores, -1.0)
    angles = torch.zeros((nz, ny, nx), dtype=torch.int32, device=device)
    n_mask = float(sphere.sum())
    slabs = list(range(0, nz, step))
    bar = tqdm(total=len(slabs) * len(rotations), desc=desc, unit="rot",
               disable=None if progress else True)
    for z0 in slabs:
        z1 = min(nz, z0 + step)
        lo = z0 - half  # padded slab, zeros beyond the tomogram, a fast FFT size
        hi = lo + fast_size(z1 - z0 + box)
        slab = torch.zeros((hi - lo, ny, nx), device=device)
        slab[max(lo, 0) - lo: min(hi, nz) - lo] = vol[max(lo, 0): min(hi, nz)]
        embed = _Embedder(box, slab.shape, device)
        spec = torch.fft.rfftn(slab)
        sigma = _local_sigma(spec, slab, sphere, embed)[z0 - lo: z1 - lo] * math.sqrt(n_mask)
        spec = spec * embed.phase_z[:, None, None].conj()
        weight = weights((z0 + z1 - 1) / 2).to(device)
        if white is not None:
            weight = weight * white
        best = torch.full((z1 - z0, ny, nx), -math.inf, device=device)
        worst = torch.full_like(best, -math.inf)
        index = torch.zeros((z1 - z0, ny, nx), dtype=torch.int32, device=device)
        for r0 in range(0, len(rotations), batch):
            t = _template_spectra(template, rotations[r0:r0 + batch], weight, mask)
            cc = torch.fft.irfftn(spec * embed(t).conj(), s=slab.shape)[:, z0 - lo: z1 - lo]
            top, arg = cc.max(0)
            better = top > best
            best = torch.where(better, top, best)
            index = torch.where(better, arg.to(torch.int32) + r0, index)
            worst = torch.maximum(worst, -cc.min(0).values)
            bar.update(len(cc))
        scale = sigma.clamp_min(sigma.max() * 1e-6)
        scores[z0:z1], null[z0:z1], angles[z0:z1] = best / scale, worst / scale, index
    bar.close()
    valid = torch.zeros_like(scores, dtype=torch.bool)
    valid[:, half:ny - half, half:nx - half] = True
    scores = torch.where(valid, scores, -1.0)
    null = torch.where(valid, null, -1.0)
    return MatchResult(scores=scores, angles=angles, null=null, valid=valid)


@dataclass
class Refined:
    """Per peak: the best rotation ``(K, 3, 3)``, position ``(K, 3)`` (z, y, x voxels, to a
    fraction of a voxel) and normalised score of the local search."""

    rotations: Tensor
    positions: Tensor
    scores: Tensor


def refine_peaks(volume: Tensor, white: Tensor | None, template: Tensor, peaks: Tensor,
                 rotations: Tensor, local: Tensor, weights: Callable[[float], Tensor], *,
                 mask: Tensor | None = None, sphere_diameter_px: float | None = None,
                 shift_px: int = 1, chunk: int = 8) -> Refined:
    """Local search around each peak: rotations ``A_k δ_j`` (``local``: ``(J, 3, 3)`` small
    rotations ``δ``, the identity first) and integer shifts of up to ``shift_px`` voxels, scored
    as in :func:`match_template` (the template weighted at the peak's own depth) by direct
    products of the templates with the peak's neighbourhood (one batched matrix product per
    chunk of peaks), the position then to a fraction of a voxel by a parabola through the
    best score and its two neighbours along each axis. ``volume``: the searched tomogram
    (:func:`prepared`); ``peaks`` ``(K, 3)`` voxels (z, y, x); ``rotations`` ``(K, 3, 3)``."""
    box = template.shape[-1]
    dev = volume.device
    sphere = soft_sphere(box, sphere_diameter_px or box - 2, 2.0, device=dev)
    mask = sphere if mask is None else mask.to(dev)
    n_sphere = float(sphere.sum())
    span = torch.arange(-shift_px, shift_px + 1, device=dev)
    offsets = torch.cartesian_prod(span, span, span)  # (S, 3)
    ax = torch.arange(box, device=dev) - box // 2
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    padded = F.pad(volume, [box] * 6)
    out_rot, out_pos, out_score = [], [], []
    for k0 in range(0, len(peaks), chunk):
        centres = peaks[k0:k0 + chunk].to(dev).long()
        k = len(centres)
        at = centres[:, None, :] + offsets[None]  # (k, S, 3)
        index = at[:, :, None, :] + grid[None, None] + box  # (k, S, D³, 3)
        patches = padded[index[..., 0], index[..., 1], index[..., 2]]  # (k, S, D³)
        mean = (patches * sphere.flatten()).sum(-1, keepdim=True) / n_sphere
        var = (patches.square() * sphere.flatten()).sum(-1, keepdim=True) / n_sphere
        sigma = (var - mean.square()).clamp_min(1e-12).sqrt() * math.sqrt(n_sphere)
        cand = rotations[k0:k0 + k].to(dev)[:, None] @ local.to(dev)[None]  # (k, J, 3, 3)
        templates = []
        for i in range(k):
            weight = weights(float(centres[i, 0]))
            weight = weight.to(dev) * (white if white is not None else 1.0)
            templates.append(_template_spectra(template.to(dev), cand[i], weight, mask))
        t = torch.stack(templates).reshape(k, cand.shape[1], -1)  # (k, J, D³)
        scores = (t @ patches.transpose(1, 2)) / sigma.transpose(1, 2)  # (k, J, S)
        best, where = scores.reshape(k, -1).max(-1)
        j, s = where // len(offsets), where % len(offsets)
        out_rot.append(cand[torch.arange(k), j])
        out_pos.append(centres + offsets[s] + _subvoxel(scores[torch.arange(k), j], s,
                                                          2 * shift_px + 1))
        out_score.append(best)
    if not out_rot:
        empty = torch.zeros((0, 3), device=dev)
        return Refined(torch.zeros((0, 3, 3), device=dev), empty, empty[:, 0])
    return Refined(torch.cat(out_rot), torch.cat(out_pos), torch.cat(out_score))


def _subvoxel(scores: Tensor, best: Tensor, width: int) -> Tensor:
    """Sub-voxel offsets ``(k, 3)`` (z, y, x) of the maxima of ``scores`` ``(k, width³)`` on the
    shift grid, from a parabola through the best and its neighbours on each axis (0 where the
    best is on the grid's edge); at most half a voxel."""
    cube = scores.reshape(-1, width, width, width)
    index = torch.stack([best // (width * width), best // width % width, best % width], -1)
    out = torch.zeros(index.shape, dtype=scores.dtype, device=scores.device)
    rows = torch.arange(len(index), device=scores.device)
    for axis in range(3):
        inner = (index[:, axis] > 0) & (index[:, axis] < width - 1)
        lo, hi = index.clone(), index.clone()
        lo[:, axis] = (index[:, axis] - 1).clamp_min(0)
        hi[:, axis] = (index[:, axis] + 1).clamp_max(width - 1)
        s0 = cube[rows, index[:, 0], index[:, 1], index[:, 2]]
        sm = cube[rows, lo[:, 0], lo[:, 1], lo[:, 2]]
        sp = cube[rows, hi[:, 0], hi[:, 1], hi[:, 2]]
        curve = sm - 2 * s0 + sp
        step = torch.where(curve < 0, 0.5 * (sm - sp) / curve.clamp_max(-1e-12), 0.0)
        out[:, axis] = torch.where(inner, step.clamp(-0.5, 0.5), 0.0)
    return out
