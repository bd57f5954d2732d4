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

from subtomo.ctf.volume import CtfGridder, TiltPairs, _voxel_frequencies

__all__ = ["SliceGather", "padded_spectra"]


def _row_pairs(box: int, pixel_size_A: float, frames: Tensor,
               max_chunk_elements: int = 1 << 24) -> TiltPairs:
    """The (tilt, voxel) pairs with ``τ > 0`` inside the Nyquist sphere of tilt rotations
    ``frames`` ``(T, 3, 3)``, or ``(N, T, 3, 3)`` per particle (a block each: tilts ``n · T + t``,
    voxels ``n · V + r``, tent sums per block), as :func:`subtomo.ctf.volume.tilt_pairs` finds
    them but with the voxels numbered ``r = (ix · D + iz) · D + iy`` (the ``(x, z, y)`` order of
    the operator's rows) and sorted by (block, voxel, tilt): the sparse matrices are then built
    in CSR order, without a sort."""
    frames = frames.reshape(-1, *frames.shape[-3:])  # (B, T, 3, 3)
    blocks, n_tilts = frames.shape[:2]
    device, dtype = frames.device, frames.dtype
    fz, fy, fx = _voxel_frequencies(box, device, dtype)
    n_vox = box * box * (box // 2 + 1)
    r = torch.arange(n_vox, device=device)
    k = torch.stack([fx[r // (box * box)], fy[r % box], fz[(r // box) % box]], -1)
    inside = (k * k).sum(-1) <= (box / 2) ** 2
    r, k = r[inside], k[inside]
    u, w, n = frames[:, :, 0], frames[:, :, 1], frames[:, :, 2]  # (B, T, 3)
    tent_sum = torch.zeros(blocks * n_vox, dtype=dtype, device=device)
    step_b = max(1, max_chunk_elements // max(len(r) * n_tilts, 1))
    step_v = len(r) if step_b > 1 else max(1, max_chunk_elements // n_tilts)
    parts = []
    for b0 in range(0, blocks, step_b):  # blocks in chunks (a big block: voxels in chunks)
        b1 = min(b0 + step_b, blocks)
        for v0 in range(0, len(r), step_v):
            kc = k[v0:v0 + step_v]
            tent = (1.0 - torch.einsum("vc,btc->bvt", kc, n[b0:b1]).abs()).clamp_min(0.0)
            rows = torch.arange(b0, b1, device=device)[:, None] * n_vox + r[v0:v0 + step_v]
            tent_sum[rows.reshape(-1)] = tent.sum(-1).reshape(-1)
            b, j, t = torch.nonzero(tent, as_tuple=True)  # sorted by (block, voxel, tilt)
            kj = kc[j]
            parts.append((t + (b + b0) * n_tilts, rows[b, j], tent[b, j, t],
                          (u[b + b0, t] * kj).sum(-1), (w[b + b0, t] * kj).sum(-1)))
    t, v, tent, kx, ky = (torch.cat(p) for p in zip(*parts, strict=True))
    scale = 1.0 / (box * pixel_size_A)
    return TiltPairs(box, t, v, tent, kx * scale, ky * scale, tent_sum)


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """CSR matrix of entries already sorted by row, then column (distinct)."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    with warnings.catch_warnings():  # CSR is "beta" in torch; its matmul is what we need
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape)


def _zyx(rows_xzy: Tensor, box: int) -> Tensor:
    """``(B, V)`` values in the operator's voxel order ``(x, z, y)`` → ``(B, V)`` in the rfftn
    half grid's ``(z, y, x)`` order."""
    h3 = box // 2 + 1
    return rows_xzy.reshape(-1, h3, box, box).permute(0, 2, 3, 1).reshape(rows_xzy.shape[0], -1)


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
        p = _row_pairs(box, pixel_size_A, frames.to(torch.float64))
        tent_sum = p.tent_sum if normalise else torch.ones_like(p.tent_sum)
        half, n_vox = padded // 2 + 1, box * box * (box // 2 + 1)
        gx = p.kx * (padded * crop_pixel_size_A[0])
        gy = p.ky * (padded * crop_pixel_size_A[1])
        sign = torch.where(gx < 0, -1.0, 1.0).to(torch.float64)  # read at −k: conjugate
        gx, gy = gx * sign, gy * sign
        x0, y0 = torch.floor(gx), torch.floor(gy)
        fx, fy = gx - x0, gy - y0
        weight = p.tent / tent_sum[p.v].clamp_min(1.0)
        local = p.v % n_vox
        self.centred = centre and box % 2 == 0
        if self.centred:  # fftshift of the volume = (−1)^(iz + iy + ix) on its spectrum
            parity = (local // (box * box) + (local // box) % box + local % box) % 2
            weight = weight * (1.0 - 2.0 * parity.to(torch.float64))
        # bilinear neighbours in (dy, dx) order; x clamped at the last column (merged there)
        dx, dy = (torch.tensor(d, device=p.v.device) for d in ([0, 1, 0, 1], [0, 0, 1, 1]))
        x = (x0.long()[:, None] + dx).clamp(max=half - 1)
        y = (y0.long()[:, None] + dy) % padded
        values = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy],
                             1) * weight[:, None]
        clamped = x[:, 1] == x[:, 0]
        values[:, 0] += torch.where(clamped, values[:, 1], 0.0)
        values[:, 2] += torch.where(clamped, values[:, 3], 0.0)
        keep = torch.stack([torch.ones_like(clamped), ~clamped] * 2, 1)
        cols, order = ((p.t[:, None] * padded + y) * half + x).sort(dim=1)
        values, keep = values.gather(1, order), keep.gather(1, order)
        rows = p.v[:, None].expand_as(cols)[keep]
        cols, values = cols[keep], values[keep]
        signs = sign[:, None].expand_as(keep)[keep]
        all_tilts = self.blocks * n_tilts
        shape = (self.blocks * n_vox, all_tilts * padded * half)
        self.real = _csr(rows, cols, values.float(), shape)
        self.imag = _csr(rows, cols, (values * signs).float(), shape)
        self.box, self.padded, self.n_tilts = box, padded, n_tilts
        self.tents = _csr(p.v, p.t, p.tent.float(), (shape[0], all_tilts))
        ctf_pairs = TiltPairs(box, p.t, p.v, *(x.float() for x in (p.tent, p.kx, p.ky,
                                                                   tent_sum)))
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
            return _zyx(self._ctf(defocus_A, astigmatism_A=astigmatism_A,
                                  astigmatism_angle_deg=astigmatism_angle_deg, active=active),
                        self.box)
        n, t = self.blocks, self.n_tilts

        def flat(x: Tensor | float) -> Tensor | float:
            x = torch.as_tensor(x)
            return x if x.ndim == 0 else x.reshape(n, -1).expand(n, t).reshape(1, n * t)
        out = self._ctf(flat(defocus_A), astigmatism_A=flat(astigmatism_A),
                        astigmatism_angle_deg=flat(astigmatism_angle_deg),
                        active=None if active is None else active.reshape(1, n * t))
        return _zyx(out.reshape(n, -1), self.box)

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
            m = m.reshape(self.blocks, -1)
        else:
            m = torch.sparse.mm(self.tents, active.T.to(torch.float32).contiguous()).T
        return _zyx(m, box).reshape(-1, box, box, box // 2 + 1)

    def volumes(self, spectra: Tensor) -> Tensor:
        """Subtomograms ``(N, D, D, D)`` (float32, centred at ``D // 2``) of crop spectra
        ``(N, T, P, P // 2 + 1)``."""
        box = self.box
        spectrum = self._gathered(spectra)  # (x, z, y, N)
        # irfftn as its two steps, the complex one first over the (z, y) planes as they lie
        planes = torch.fft.ifft2(spectrum, dim=(1, 2)).permute(3, 1, 2, 0)  # (N, z, y, x)
        volumes = torch.fft.irfft(planes, n=box, dim=-1)
        return volumes if self.centred else torch.fft.fftshift(volumes, dim=(-3, -2, -1))
