"""The reconstruction steps of :class:`subtomo.fourier.projector.Backprojector`: division of the
padded sums by their weight (with RELION's floor), inverse FFT, crop and gridding correction
(:func:`gridding_kernel`), the corners beyond the sphere (:func:`flatten_corners`) and the
Wiener filter on the ``D`` grid (:func:`d_grid_weight`, :func:`regulariser`).

Parity with ``relion_reconstruct``. RELION replaces the map beyond the sphere of diameter
``D`` by the mean there (``softMaskOutsideMap`` in ``windowToOridimRealSpace``, 3 px
raised-cosine edge); :meth:`Backprojector.reconstruct` does the same (:func:`flatten_corners`,
after the gridding correction rather than before it): the corners hold 48 % of the box and
only noise, and keeping them lowers the FSC against the truth at every shell beyond ~30 Å.
RELION divides by a weight made smooth by its iterative gridding pre-weighting (Pipe & Menon;
a Kaiser-Bessel blob of radius 3.8 padded voxels, 10 iterations) where we divide by the
trilinear weight itself (with RELION's floor, 1e-3 of the shell mean); on the same sums the
two agree up to 0.6 Nyquist, ours is higher beyond. Both use pad 2, trilinear gridding,
CTF-weighted data with CTF² weights and a ``sinc²`` correction; ``relion_reconstruct``
applies no Wiener term. The figures are in bench/RESULTS.md ("RELION parity").

Regularised maps (half maps and joined maps with τ² from the FSC, as in refine, classify and
initial model) go one step further than RELION: RELION adds 1/τ² to the weight on the padded
grid before the crop, where a filter that falls steeply with frequency leaks each shell into
the next (cropping convolves the padded spectrum), so such a joined map ends below the
unregularised one near Nyquist. We divide unregularised and apply the Wiener factor
``W_D / (W_D + 1/τ²)`` on the ``D`` grid after the crop: the joined map is as close to
``relion_reconstruct``'s or above it at every shell (bench/RESULTS.md, "RELION parity").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from subtomo.fourier.grid import (
    centred_irfft,
    centred_rfft,
    rfft_shape,
    shell_radius_px,
    soft_sphere,
)

__all__ = ["PaddedSums", "d_grid_weight", "flatten_corners", "gridding_kernel",
           "reconstruct_map", "regulariser", "taper_to_sphere"]

_DIMS = (-3, -2, -1)


class PaddedSums(Protocol):
    """What reconstruction reads from a backprojector: the box ``D``, the padding, the padded
    box ``P``, the device, the sums on the padded half grid and views of them."""

    box: int
    pad: int
    padded_box: int
    device: torch.device

    @property
    def data(self) -> Tensor: ...

    @property
    def weight(self) -> Tensor: ...

    def hermitian_planes(self) -> dict[int, tuple[Tensor, Tensor]]: ...

    def slabs(self) -> Iterator[tuple[slice, Tensor, Tensor, Tensor]]: ...

    def plane_r2(self, col: int) -> Tensor: ...

    def shell_lookup(self, r2_max: int, divisor: float = 1.0) -> Tensor: ...


def gridding_kernel(
    box: int, padded_box: int, device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Real-space transform of the trilinear kernel on a ``box`` cube: ``(box, box, box)``.

    ``g = sinc^2(x / P) sinc^2(y / P) sinc^2(z / P)`` with ``P = padded_box`` and ``x, y, z``
    voxels from the centre voxel ``box // 2``.
    """
    x = (torch.arange(box, device=device, dtype=torch.float64) - box // 2) / padded_box
    s2 = torch.sinc(x) ** 2
    return (s2.view(-1, 1, 1) * s2.view(1, -1, 1) * s2.view(1, 1, -1)).to(dtype)


def flatten_corners(volume: Tensor, edge_px: float = 3.0, blend: bool = True) -> Tensor:
    """``volume`` ``(D, D, D)`` outside the sphere of diameter ``D`` replaced by its mean there.

    RELION's ``softMaskOutsideMap`` with its defaults, which every RELION reconstruction
    applies: within radius ``D / 2`` the map is kept, over a raised-cosine edge ``edge_px``
    wide it blends into the weighted mean of the region outside, beyond which it is that mean.
    ``blend=False`` leaves the edge as it is and only resets the region beyond it (applying
    it after ``flatten_corners`` changes nothing).
    """
    keep = soft_sphere(volume.shape[-1], volume.shape[-1], edge_px, volume.device,
                       volume.dtype)
    outside = 1.0 - keep
    if not blend:
        outside = (outside >= 1.0).to(volume.dtype)
        keep = 1.0 - outside
    background = (outside * volume).sum() / outside.sum().clamp(min=1e-12)
    return keep * volume + outside * background


def taper_to_sphere(volume: Tensor, width_px: float) -> Tensor:
    """``c (V - m)``: RELION 5's ``Reconstruction::taper`` (``relion_tomo_reconstruct_particle
    --taper``, applied to every map it writes). ``c`` is 1 within radius ``D/2 - width_px``
    of the centre voxel ``D // 2``, a raised cosine down to 0 at ``D/2`` and 0 beyond;
    ``m = Σ c V / Σ c``. A soft spherical mask: with ``D`` 24 and RELION's 10 px it keeps
    half the amplitude at radius 7 px and removes most of the noise of the box.
    """
    box = volume.shape[-1]
    c = soft_sphere(box, box - 2.0 * width_px, width_px, volume.device, volume.dtype)
    mean = (c * volume).sum() / c.sum().clamp(min=1e-12)
    return c * (volume - mean)


def d_grid_weight(weight: Tensor, box: int, pad: int) -> Tensor:
    """A padded half-grid weight ``(P, P, P // 2 + 1)`` (Hermitian-complete) seen from the
    ``D`` grid: convolved with the trilinear tent of half-width ``pad`` padded voxels (one
    ``D`` voxel) and sampled at ``q = pad * k``; ``(D, D, D // 2 + 1)``.

    The convolution is a product in real space with the tent's periodic transform, the
    Fejér kernel ``(sin(pi pad x / P) / (pad sin(pi x / P)))^2`` per axis.
    """
    big = pad * box
    x = torch.arange(big, device=weight.device, dtype=torch.float64) / big
    safe = torch.where(x == 0, 1.0, torch.sin(math.pi * x))
    fejer = torch.where(x == 0, 1.0, (torch.sin(math.pi * pad * x) / (pad * safe)) ** 2)
    real = torch.fft.irfftn(weight.to(torch.float64), s=(big, big, big), dim=_DIMS)
    real.mul_(fejer.view(-1, 1, 1)).mul_(fejer.view(1, -1, 1)).mul_(fejer.view(1, 1, -1))
    smooth = torch.fft.rfftn(real, dim=_DIMS).real
    yz = (torch.fft.fftfreq(box, d=1.0 / box, device=weight.device).round().long() * pad) % big
    xs = torch.arange(box // 2 + 1, device=weight.device) * pad
    return smooth[yz][:, yz][:, :, xs]


def _filled_weight(w_d: Tensor) -> Tensor:
    """``w_d`` on the ``D`` half grid with its empty coefficients (the corners beyond the
    Nyquist sphere, unmeasured cells) set to the mean of their shell (the corners: of the
    last shell), so that a Wiener factor there follows the shell's."""
    box = w_d.shape[0]
    last = box // 2
    shells = shell_radius_px(box, w_d.device, torch.float64).round().long().clamp(max=last)
    sums = torch.zeros(last + 1, dtype=torch.float64, device=w_d.device)
    sums.index_add_(0, shells.reshape(-1), w_d.reshape(-1).to(torch.float64))
    counts = torch.bincount(shells.reshape(-1), minlength=last + 1).to(torch.float64)
    mean = (sums / counts.clamp(min=1))[shells]
    return torch.where(w_d > 1e-6 * mean, w_d, mean)


def reconstruct_map(sums: PaddedSums, tau2: Tensor | None = None, wiener_constant: float = 0.0,
                    mask_corners: bool = True) -> Tensor:
    """Real ``(D, D, D)`` map on the scale of the inserted volumes (centre ``D // 2``).

    With ``W = pad^3 * weight`` (the weight per ``D``-grid coefficient: a padded cell
    is ``1 / pad^3`` of one) the padded spectrum is ``pad^3 * data / max(W, floor)``,
    ``floor = 1e-3 * <W>_shell`` (the mean of ``W`` over the padded shell
    ``round(|q|)``, RELION's guard against tiny weights); cells beyond the Nyquist
    sphere (``|q| > P / 2``) or with no weight give 0. Inverse FFT on the padded grid,
    crop to ``D`` about the centre and divide by the gridding kernel: the unregularised
    map. Its corners beyond the sphere of diameter ``D`` are replaced by their mean
    (:func:`flatten_corners`, as RELION; ``mask_corners=False`` keeps them).

    Regularisation (a Wiener filter) follows on the ``D`` grid: each coefficient ``k``
    is multiplied by ``W_D / (W_D + r)`` with ``W_D`` the weight at ``pad * k`` smoothed
    over the trilinear footprint of one ``D`` voxel (:func:`d_grid_weight`) and ``r =
    1 / tau2`` when ``tau2`` is given, else ``r = wiener_constant`` (0: none). ``tau2``
    is indexed by ``D``-box shells ``round(|k|)`` if it has ``D // 2 + 1`` entries, or
    by padded shells ``round(pad |k|)`` if it has ``P // 2 + 1``; it is on the
    per-coefficient scale of ``W`` (signal power / noise power, as RELION's); shells
    with ``tau2 <= 0`` give 0, the corners beyond its last shell take the last value.
    Filtering after the crop rather than dividing by ``W + r`` on the padded grid
    (RELION's way) keeps the map as close to the truth as the unregularised one at every
    shell (see the module docstring). The flattened corners stay flat: after the filter
    only the region beyond the sphere's edge is reset to its mean.
    """
    planes = sums.hermitian_planes()
    vol = unregularised_map(sums, planes)
    if mask_corners:
        vol = flatten_corners(vol)
    reg = regulariser(tau2, wiener_constant, sums.box, sums.pad, sums.device)
    if reg is None:
        return vol
    vol = wiener_filtered(vol, sums, planes, reg)
    return flatten_corners(vol, blend=False) if mask_corners else vol


def unregularised_map(sums: PaddedSums, planes: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """``pad^3 * data / max(W, floor)`` inside the Nyquist sphere (0 elsewhere), inverse FFT,
    crop to ``D`` and divide by the gridding kernel; ``planes``: the completed Hermitian
    planes (:meth:`hermitian_planes`), used in place of the raw ones."""
    big = sums.padded_box
    scale = float(sums.pad**3)
    r2_max = 3 * (big // 2) ** 2
    shells = sums.shell_lookup(r2_max)  # padded shell of each |q|^2
    inside = torch.arange(r2_max + 1, device=sums.device) <= (big / 2) ** 2
    floor = weight_floor(sums, planes, shells, scale)
    return corrected_crop(divided_spectrum(sums, planes, floor, shells, inside, scale),
                          sums.box, big)


def weight_floor(sums: PaddedSums, planes: dict[int, tuple[Tensor, Tensor]], shells: Tensor,
                 scale: float) -> Tensor:
    """RELION's floor per padded shell: ``1e-3 <W>_shell`` with ``W = scale * weight`` (shells
    indexed by ``shells[|q|^2]``, the Hermitian planes completed); ``(P // 2 + 2,)``."""
    n_big = sums.padded_box // 2 + 1
    # slab by slab, so that temporaries stay small.
    sums_w = torch.zeros(n_big + 1, dtype=torch.float64, device=sums.device)
    counts = torch.zeros_like(sums_w)

    def add(weight: Tensor, r2: Tensor, sign: float = 1.0) -> None:
        flat_shell = shells[r2].reshape(-1).clamp(max=n_big)
        sums_w.index_add_(0, flat_shell, sign * (weight * scale).reshape(-1).to(torch.float64))
        counts.add_(torch.bincount(flat_shell, minlength=n_big + 1).to(torch.float64),
                    alpha=sign)

    for _, _, weight, r2 in sums.slabs():
        add(weight, r2)
    for col, (_, w) in planes.items():  # the completed planes replace the raw ones
        r2 = sums.plane_r2(col)
        add(sums.weight[:, :, col], r2, -1.0)
        add(w, r2)
    return 1e-3 * sums_w / counts.clamp(min=1)


def divided_spectrum(sums: PaddedSums, planes: dict[int, tuple[Tensor, Tensor]],
                     floor: Tensor, shells: Tensor, inside: Tensor, scale: float) -> Tensor:
    """The padded spectrum ``scale * data / max(scale * weight, floor)``; 0 beyond the Nyquist
    sphere (``inside[|q|^2]`` false) or where the weight and floor are 0."""
    n_big = sums.padded_box // 2 + 1

    def divided(data: Tensor, weight: Tensor, r2: Tensor) -> Tensor:
        den = torch.maximum((weight * scale).to(torch.float64),
                            floor[shells[r2].clamp(max=n_big)])
        ok = (den > 0) & inside[r2]
        factor = torch.where(ok, scale / torch.where(ok, den, 1.0), 0.0)
        return data * factor.to(weight.dtype)

    spec = torch.empty_like(sums.data)
    for z, data, weight, r2 in sums.slabs():
        spec[z] = divided(data, weight, r2)
    for col, (d, w) in planes.items():
        spec[:, :, col] = divided(d, w, sums.plane_r2(col))
    return spec


def corrected_crop(spec: Tensor, box: int, big: int) -> Tensor:
    """Inverse FFT of the padded half spectrum ``spec``, crop to ``box`` about the centre and
    divide by the gridding kernel: ``(D, D, D)``."""
    vol = torch.fft.irfftn(spec, s=(big, big, big), dim=_DIMS)
    del spec
    # crop D about the centre of the fftshift-ed volume: index i <- (i - D // 2) mod P
    at = (torch.arange(box, device=vol.device) - box // 2) % big
    vol = vol.index_select(0, at).index_select(1, at).index_select(2, at)
    return vol / gridding_kernel(box, big, vol.device, vol.dtype)


def wiener_filtered(vol: Tensor, sums: PaddedSums, planes: dict[int, tuple[Tensor, Tensor]],
                    reg: Tensor) -> Tensor:
    """``vol`` with each ``D``-grid coefficient multiplied by ``W_D / (W_D + r)``: ``W_D`` the
    weight smoothed over one ``D`` voxel (:func:`d_grid_weight`, empty cells filled with their
    shell's mean), ``r = reg`` (``inf``: the coefficient goes to 0)."""
    box, pad = sums.box, sums.pad
    scale = float(pad**3)
    w = sums.weight.to(torch.float64, copy=True)  # the sums stay as they are
    for col, (_, wp) in planes.items():
        w[:, :, col] = wp
    w_d = _filled_weight(d_grid_weight(w.mul_(scale), box, pad))
    del w
    keep = torch.isfinite(reg)
    wiener = torch.where(keep, w_d / (w_d + torch.where(keep, reg, 0.0)).clamp(min=1e-30),
                         0.0)
    return centred_irfft(centred_rfft(vol) * wiener.to(vol.dtype), box)


def regulariser(tau2: Tensor | None, wiener_constant: float, box: int, pad: int,
                device: torch.device) -> Tensor | None:
    """``r`` per ``D`` half-grid coefficient (float64; ``inf``: not filled), or None: ``1 / tau2``
    by shell (``tau2`` of ``D // 2 + 1`` box shells or ``P // 2 + 1`` padded shells), else the
    constant ``wiener_constant`` (0: None)."""
    big = pad * box
    if tau2 is None:
        if not wiener_constant:
            return None
        return torch.full(rfft_shape(box), float(wiener_constant), dtype=torch.float64,
                          device=device)
    tau2 = torch.as_tensor(tau2, device=device, dtype=torch.float64).reshape(-1)
    radius = shell_radius_px(box, device, torch.float64)
    if tau2.numel() == box // 2 + 1:
        tshell = radius.round().long()
    elif tau2.numel() == big // 2 + 1:
        tshell = (radius * pad).round().long()
    else:
        raise ValueError(f"tau2 must have {box // 2 + 1} (box) or {big // 2 + 1} (padded) "
                         f"shells, got {tau2.numel()}")
    t = tau2[tshell.clamp(max=tau2.numel() - 1)]
    return torch.where(t > 0, 1.0 / torch.where(t > 0, t, 1.0), math.inf)
