"""Tilt slices gathered onto a 3D half grid: the operator behind subtomograms from tilt series
and pseudo-subtomograms from 2D stacks.

A voxel ``k`` of a ``D``-voxel half grid takes from tilt ``t`` (rows ``u_t, v_t, n_t`` of its
rotation) the bilinear interpolation of that tilt's crop spectrum at ``(k·u_t, k·v_t)`` with the
tent weight ``τ = max(0, 1 − |k·n_t|)`` (RELION's
``FourierBackprojection::backprojectSlice_forward_with_multiplicity``); the pairs are those of
:func:`subtomo.ctf.volume.tilt_pairs`. Two normalisations:

- ``normalise=True`` (extraction): the sum is divided by ``max(Σ_t τ, 1)``, so a subtomogram's
  spectrum is ``C(k) V(k)`` with ``C`` the gridded CTF of :class:`CtfGridder` on the same pairs.
- ``normalise=False`` (2D stacks, CTF-premultiplied crops ``Y_t = c_t X_t``): the sums
  ``B(k) = Σ_t τ_t Y_t`` and ``W(k) = Σ_t τ_t c_t²`` (``squared_ctf=True``) are RELION 4/5's
  pseudo-subtomogram data and weights. Since ``Σ_k τ(k·n) f(k) ≈ Σ_{k₂} f(k₂)`` (a tent sums to 1
  across the slice), ``Re Σ_k B̄ P − ½ Σ_k W |P|²`` equals the sum over tilts of the 2D
  log-likelihoods ``Re Σ c_t Ȳ_t P(R_tᵀ k₂) − ½ Σ c_t² |P(R_tᵀ k₂)|²`` up to interpolation.
  :meth:`SliceGather.multiplicity` gives ``M(k) = Σ_t τ_t`` over each particle's tilts, the
  third volume RELION 5 writes with them (``extract --premultiplied``).

Per-particle frames (``frames`` ``(N, T, 3, 3)``, e.g. ``R_t · A_sub`` of subtomograms cut in
their subtomogram frames, :mod:`subtomo.tomo.extract`): the operator is block diagonal, one block
of ``T`` tilts per particle with its own tent sums, and a batch of exactly ``N`` particles is
one sparse product (its CTF volumes one :class:`CtfGridder` call of ``N · T`` tilts).

The way back, :meth:`SliceGather.slices`, is the adjoint ``Gᵀ`` of the same sparse operator
divided by its row sums: each crop frequency takes the weighted mean of the voxels it is
gathered into (bilinear in the plane × tent across it), so a 3D spectrum ``P`` gives its central
slice ``P(R_tᵀ k₂)`` at each tilt, and ``Re Σ_t Ȳ_t (Gᵀ P)_t = Re Σ_k (G Y)‾ P`` up to that
normalisation: the slices the 2D likelihood compares are the ones the pseudo-subtomogram sums.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from subtomo.ctf.volume import CtfGridder, TiltPairs, _voxel_frequencies, tilt_pairs

__all__ = ["SliceGather", "padded_spectra"]


def _voxel_radius_px(box: int, v: Tensor) -> Tensor:
    """``|k|`` (Fourier px) of flat half-grid voxels ``v``."""
    fz, fy, fx = _voxel_frequencies(box, v.device, torch.float64)
    half = fx.shape[0]
    return torch.sqrt(fx[v % half] ** 2 + fy[(v // half) % box] ** 2 + fz[v // (box * half)] ** 2)


def _block_pairs(box: int, pixel_size_A: float, frames: Tensor, normalise: bool
                 ) -> tuple[TiltPairs, Tensor]:
    """The pairs inside the Nyquist sphere of tilt rotations ``frames`` ``(T, 3, 3)``, or
    ``(N, T, 3, 3)`` per particle (``R_t · A_subtomogram``: a block per particle, tilts
    numbered ``n · T + t`` and voxels ``n · V + v``, tent sums per block), and each pair's
    block. Without ``normalise`` the tent sums are 1."""
    n_tilts = frames.shape[-3]
    pairs = tilt_pairs(box, pixel_size_A, frames.reshape(-1, 3, 3))
    n_vox = pairs.tent_sum.shape[0]
    inside = _voxel_radius_px(box, pairs.v) <= box / 2
    t, v, tent, kx, ky = (x[inside] for x in (pairs.t, pairs.v, pairs.tent, pairs.kx, pairs.ky))
    block = t // n_tilts
    blocks = frames.shape[0] if frames.ndim == 4 else 1
    if blocks > 1:
        v = v + block * n_vox
        tent_sum = torch.zeros(blocks * n_vox, dtype=tent.dtype, device=tent.device)
        tent_sum.index_add_(0, pairs.v + (pairs.t // n_tilts) * n_vox, pairs.tent)
    else:
        tent_sum = pairs.tent_sum
    if not normalise:
        tent_sum = torch.ones_like(tent_sum)
    return TiltPairs(box, t, v, tent, kx, ky, tent_sum), block


def padded_spectra(spectra: Tensor, size: int, padded: int) -> Tensor:
    """Centred crop spectra zero-padded to ``padded`` px in real space, after dividing by the
    transform of the bilinear kernel on that grid (gridding pre-correction).

    The image of a centred spectrum has its centre at pixel 0 (wrapped), so the kernel is
    divided in that layout and the padding inserts zeros in the middle of each wrapped axis: no
    shifted copies."""
    images = torch.fft.irfft2(spectra, s=(size, size))  # centre at pixel 0
    axis = torch.fft.fftfreq(size, d=1.0 / size, device=spectra.device,
                             dtype=torch.float64) / padded
    kernel = torch.sinc(axis) ** 2
    images = images / (kernel[:, None] * kernel[None, :]).to(images.dtype)
    out = images.new_zeros(*images.shape[:-2], padded, padded)
    low, high = (size + 1) // 2, size // 2  # pixels 0 … low−1 and the last ``high`` (negative)
    for rows_in, rows_out in ((slice(0, low), slice(0, low)),
                              (slice(size - high, size), slice(padded - high, padded))):
        out[..., rows_out, :low] = images[..., rows_in, :low]
        out[..., rows_out, padded - high:] = images[..., rows_in, size - high:]
    return torch.fft.rfft2(out)


class SliceGather:
    """The sparse operator from crop spectra ``(N, T, P, P // 2 + 1)`` to subtomograms
    ``(N, D, D, D)`` of one tilt geometry (see the module docstring), and the
    :class:`subtomo.ctf.volume.CtfGridder` of the same pairs.

    ``frames``: ``(T, 3, 3)`` tilt rotations, or ``(N, T, 3, 3)`` per particle (module
    docstring); ``pixel_size_A``: voxel size of the 3D box;
    ``crop_pixel_size_A``: pixel size (x, y) of the crops; ``padded``: crop spectrum size ``P``;
    ``pre_exposure`` (e/Å², per tilt) and the optics for the CTF volumes; ``normalise``: divide
    by ``max(Σ_t τ, 1)`` (module docstring); ``squared_ctf``: :attr:`ctf` grids ``c²``;
    ``centre=False``: for :meth:`half_spectra` (spectra, not volumes).

    For an even box the centring of the subtomogram (``fftshift`` after the inverse FFT) is
    folded into the operator as the sign ``(−1)^(kx + ky + kz)`` of each output voxel; an odd
    box is shifted after the transform.
    """

    def __init__(self, box: int, pixel_size_A: float, frames: Tensor,
                 crop_pixel_size_A: tuple[float, float], padded: int, pre_exposure: Tensor, *,
                 voltage_kv: float, cs_mm: float, amplitude_contrast: float,
                 normalise: bool = True, squared_ctf: bool = False,
                 centre: bool = True) -> None:
        self.blocks = frames.shape[0] if frames.ndim == 4 else 1  # per-particle frames: N
        n_tilts = frames.shape[-3]
        p, block = _block_pairs(box, pixel_size_A, frames.to(torch.float64), normalise)
        half = padded // 2 + 1
        gx = p.kx * (padded * crop_pixel_size_A[0])
        gy = p.ky * (padded * crop_pixel_size_A[1])
        mirror = gx < 0
        sign = torch.where(mirror, -1.0, 1.0).to(torch.float64)
        gx, gy = gx * sign, gy * sign
        x0, y0 = torch.floor(gx), torch.floor(gy)
        fx, fy = gx - x0, gy - y0
        weight = p.tent / p.tent_sum[p.v].clamp_min(1.0)
        h3 = box // 2 + 1
        n_vox = box * box * h3
        local = p.v - block * n_vox
        iz, iy, ix = local // (box * h3), (local // h3) % box, local % h3
        voxel = block * n_vox + (ix * box + iz) * box + iy  # rows (block, x, z, y): volumes()
        self.centred = centre and box % 2 == 0
        if self.centred:  # fftshift of the volume = (−1)^(iz + iy + ix) on its spectrum
            weight = weight * (1.0 - 2.0 * ((iz + iy + ix) % 2).to(torch.float64))
        rows, cols, values, signs = [], [], [], []
        for dx, wx in ((0, 1 - fx), (1, fx)):
            for dy, wy in ((0, 1 - fy), (1, fy)):
                x = (x0.long() + dx).clamp(max=half - 1)
                y = (y0.long() + dy) % padded
                rows.append(voxel)
                cols.append((p.t * padded + y) * half + x)
                values.append(weight * wx * wy)
                signs.append(sign)
        rows, cols, values, signs = (torch.cat(x) for x in (rows, cols, values, signs))
        all_tilts = self.blocks * n_tilts
        shape = (self.blocks * n_vox, all_tilts * padded * half)
        index = torch.stack([rows, cols])
        with warnings.catch_warnings():  # CSR is "beta" in torch; its matmul is what we need
            warnings.simplefilter("ignore", UserWarning)
            self.real, self.imag = (
                torch.sparse_coo_tensor(index, v, shape, check_invariants=False).coalesce()
                .to_sparse_csr().to(torch.float32) for v in (values, values * signs))
        self.box = box
        self.padded = padded
        self.n_tilts = n_tilts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.tents = torch.sparse_coo_tensor(
                torch.stack([p.v, p.t]), p.tent.float(), (shape[0], all_tilts),
                check_invariants=False).coalesce().to_sparse_csr()
        ctf_pairs = TiltPairs(box, p.t, p.v, *(x.float() for x in (p.tent, p.kx, p.ky,
                                                                   p.tent_sum)))
        exposure = torch.as_tensor(pre_exposure, device=frames.device).repeat(self.blocks)
        self._ctf = CtfGridder(ctf_pairs, exposure, voltage_kv=voltage_kv, cs_mm=cs_mm,
                               amplitude_contrast=amplitude_contrast, squared=squared_ctf)

    def ctf(self, defocus_A: Tensor, *, astigmatism_A: Tensor | float = 0.0,
            astigmatism_angle_deg: Tensor | float = 0.0, active: Tensor | None = None
            ) -> Tensor:
        """Gridded CTF weights ``(N, D · D · (D // 2 + 1))`` of the particles (arguments of
        :meth:`subtomo.ctf.volume.CtfGridder.__call__`, ``(N,)`` or ``(N, T)``); with
        per-particle frames the N particles are the operator's blocks, gridded in one call."""
        if self.blocks == 1:
            return self._ctf(defocus_A, astigmatism_A=astigmatism_A,
                             astigmatism_angle_deg=astigmatism_angle_deg, active=active)
        n, t = self.blocks, self.n_tilts

        def flat(x: Tensor | float) -> Tensor | float:
            x = torch.as_tensor(x)
            return x if x.ndim == 0 else x.reshape(n, -1).expand(n, t).reshape(1, n * t)
        out = self._ctf(flat(defocus_A), astigmatism_A=flat(astigmatism_A),
                        astigmatism_angle_deg=flat(astigmatism_angle_deg),
                        active=None if active is None else active.reshape(1, n * t))
        return out.reshape(n, -1)

    def half_spectra(self, spectra: Tensor) -> Tensor:
        """The gathered centred half spectra ``(N, D, D, D // 2 + 1)`` (phase origin at the
        particle centre, as the crops'), of an operator built with ``centre=False``."""
        if self.centred:
            raise ValueError("half_spectra needs an operator built with centre=False")
        return self._gathered(spectra).permute(3, 1, 2, 0)

    def _gathered(self, spectra: Tensor) -> Tensor:
        """The sparse products: the half spectrum laid out ``(x, z, y, N)``. With per-particle
        frames the operator is block diagonal and all crops are one column."""
        n, box = spectra.shape[0], self.box
        columns = n if self.blocks == 1 else 1
        if self.blocks not in (1, n):
            raise ValueError(f"operator of {self.blocks} particles' frames given {n} particles")
        parts = torch.view_as_real(spectra.reshape(columns, -1).to(torch.complex64))
        parts = parts.permute(2, 1, 0).contiguous()  # (re/im, crop frequencies, columns)
        re = torch.sparse.mm(self.real, parts[0])
        im = torch.sparse.mm(self.imag, parts[1])
        out = torch.complex(re, im)
        if self.blocks == 1:
            return out.reshape(box // 2 + 1, box, box, n)
        return out.reshape(n, box // 2 + 1, box, box).permute(1, 2, 3, 0)

    def slices(self, half_spectra: Tensor) -> Tensor:
        """Central slices ``(N, T, P, P // 2 + 1)`` of centred 3D half spectra
        ``(N, D, D, D // 2 + 1)`` (module docstring: ``Gᵀ`` over its row sums, 0 at crop
        frequencies no voxel reaches); differentiable in ``half_spectra``. Operator built with
        ``centre=False``."""
        if self.centred or self.blocks > 1:
            raise ValueError("slices needs an operator of shared frames built with centre=False")
        if not hasattr(self, "_adjoint"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                real_t, imag_t = (m.to_sparse_coo().t().coalesce().to_sparse_csr()
                                  for m in (self.real, self.imag))
            ones = torch.ones(real_t.shape[1], 1, device=real_t.device)
            rows = torch.sparse.mm(real_t, ones)[:, 0]
            self._adjoint = (real_t, imag_t, torch.where(rows > 0, 1 / rows.clamp_min(1e-12), 0))
        real_t, imag_t, inverse = self._adjoint
        n, half = half_spectra.shape[0], self.padded // 2 + 1
        parts = torch.view_as_real(half_spectra.to(torch.complex64).permute(3, 1, 2, 0)
                                   .reshape(-1, n))  # rows in (x, z, y) order, as _gathered
        re = torch.sparse.mm(real_t, parts[..., 0].contiguous()) * inverse[:, None]
        im = torch.sparse.mm(imag_t, parts[..., 1].contiguous()) * inverse[:, None]
        out = torch.complex(re, im).reshape(-1, self.padded, half, n)
        return out.permute(3, 0, 1, 2)

    def multiplicity(self, active: Tensor) -> Tensor:
        """``M(k) = Σ_t τ_t(k)`` over the tilts ``active`` ``(N, T)`` (bool) of each particle:
        ``(N, D, D, D // 2 + 1)`` in the layout of :attr:`ctf`'s weights."""
        box = self.box
        if self.blocks > 1:
            m = torch.sparse.mm(self.tents, active.reshape(-1, 1).to(torch.float32))
            return m.reshape(-1, box, box, box // 2 + 1)
        m = torch.sparse.mm(self.tents, active.T.to(torch.float32).contiguous())
        return m.T.reshape(-1, box, box, box // 2 + 1)

    def volumes(self, spectra: Tensor) -> Tensor:
        """Subtomograms ``(N, D, D, D)`` (float32, centred at ``D // 2``) of crop spectra
        ``(N, T, P, P // 2 + 1)``."""
        box = self.box
        spectrum = self._gathered(spectra)  # (x, z, y, N)
        # irfftn as its two steps, the complex one first over the (z, y) planes as they lie
        planes = torch.fft.ifft2(spectrum, dim=(1, 2)).permute(3, 1, 2, 0)  # (N, z, y, x)
        volumes = torch.fft.irfft(planes, n=box, dim=-1)
        return volumes if self.centred else torch.fft.fftshift(volumes, dim=(-3, -2, -1))
