"""3D CTF volumes of subtomograms reconstructed from a tilt series (Fourier-space gridding).

Geometry (tomogram frame, vectors (x, y, z)): every tilt rotates the specimen about the y axis.
A tilt with angle θ produces the image whose 2D coordinates are the first two components of
``Ry(θ) r`` (``Ry`` as in :mod:`subtomo.geometry.euler`, active, right-handed), i.e. RELION 5's
projection matrix for ``rlnTomoYTilt = θ`` with no x-tilt or z-rotation (RELION
``src/jaz/tomography``: ``P = … r2 · r1 · r0 …``, ``r1 = rotation(yaxis, ytilt)``, GL-style
right-handed rotation). By the projection-slice theorem the tilt samples the central plane
spanned by the rows of Ry(θ)::

    u_θ = (cos θ, 0, sin θ)      image x axis (in-plane frequency kx' = k · u_θ)
    y   = (0, 1, 0)              image y axis = tilt axis (ky' = k · y)
    n_θ = (−sin θ, 0, cos θ)     beam direction = plane normal = Ry(θ)ᵀ ẑ

The missing wedge for tilts within ±θmax is the double cone of directions within 90° − θmax of
the kz axis. Mirroring the sign convention (n_θ = (sin θ, 0, cos θ)) leaves the wedge unchanged
and only swaps which tilt's defocus/dose lands at +kx or −kx.

Gridding, per 3D frequency voxel k (voxel units, rfftn half-spectrum, zero at index 0)::

    d_t      = k · n_t                                   distance to tilt plane t (voxels)
    τ_t      = max(0, 1 − |d_t|)                         tent kernel, 1 voxel half-width
    k2D_t    = (k · u_t, k · y) / (D · pixel_size_A)     in-plane frequency (1/Å)
    c_t      = CTF_t(k2D_t) · W(|k2D_t|, N_t)            2D CTF of the tilt × dose filter
    weight   = Σ_t τ_t c_t / max(Σ_t τ_t, 1)             (c_t² with ``squared=True``)
    multiplicity = min(Σ_t τ_t, 1)

where CTF_t is :func:`subtomo.ctf.ctf2d.ctf_2d` with the particle's defocus plus the tilt's
defocus offset and W is :func:`subtomo.ctf.dose.dose_filter` at the tilt's pre-exposure N_t.
The normalisation keeps the densely sampled low-frequency region on the CTF's scale (a
weighted mean of the tilts' CTFs) while between planes at high frequency the weight fades with
the tent sum; ``multiplicity`` is 0 in the missing wedge and 1 where the tilts cover k.

General geometry: pass ``frames`` ``(T, 3, 3)`` — each tilt's rotation from the tomogram
frame to the image frame (rows: image x ``u``, image y ``v``, beam ``n``; RELION 5's
``Rz(ZRot) Ry(YTilt) Rx(XTilt)``, :func:`subtomo.geometry.tilt.tilt_rotations`) — and the
in-plane frequency becomes ``(k · u_t, k · v_t)`` and the distance ``k · n_t``; the tilt scheme
then supplies only exposures and defocus offsets. :func:`tilt_pairs` and :class:`CtfGridder`
are the two halves of :func:`ctf_volume`, for callers (extraction) that reuse the pairs.

Implementation: the tent is sparse (a voxel touches only the planes within one voxel), so the
(tilt, voxel) pairs with τ > 0 and their in-plane frequencies and dose weights are found once
(chunked over voxels) and shared by all particles (:class:`CtfGridder`); each particle then
needs the CTF only at those pairs: one batched matrix product for the phases and one sparse
product that sums them into the grid (chunked over particles).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from subtomo.ctf.ctf2d import _check_amplitude_contrast, electron_wavelength_A
from subtomo.ctf.dose import dose_filter
from subtomo.ctf.tilt_scheme import TiltScheme

__all__ = ["CtfGridder", "TiltPairs", "ctf_volume", "tilt_frame", "tilt_pairs"]


def tilt_frame(tilt_angles_deg: Tensor | list[float] | tuple[float, ...], *,
               device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """In-plane x axis ``u`` and beam direction ``n`` of each tilt: two ``(T, 3)`` (x, y, z).

    ``u = (cos θ, 0, sin θ)``, ``n = (−sin θ, 0, cos θ)``: the first and third rows of Ry(θ).
    """
    theta = torch.deg2rad(torch.as_tensor(tilt_angles_deg, dtype=torch.float64, device=device))
    c, s, z = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)
    u = torch.stack([c, z, s], dim=-1)
    n = torch.stack([-s, z, c], dim=-1)
    return u.to(dtype), n.to(dtype)


def _per_particle_tilt(x: float | Tensor, batch: int, n_tilts: int, name: str,
                       device: torch.device, dtype: torch.dtype) -> Tensor:
    """Scalar, ``(B,)`` or ``(B, T)`` → ``(B, T)``."""
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if t.ndim == 0:
        return t.expand(batch, n_tilts)
    if t.ndim == 1 and t.shape[0] in (batch, 1):
        return t[:, None].expand(batch, n_tilts)
    if t.ndim == 2 and t.shape[0] in (batch, 1) and t.shape[1] == n_tilts:
        return t.expand(batch, n_tilts)
    raise ValueError(f"{name} must be a scalar, ({batch},) or ({batch}, {n_tilts}); "
                     f"got shape {tuple(t.shape)}")


def _voxel_frequencies(box: int, device: torch.device, dtype: torch.dtype
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Integer frequencies (voxels) along z, y (full) and x (half) of ``rfftn`` of a box."""
    full = torch.fft.fftfreq(box, d=1.0 / box, device=device, dtype=torch.float64).round()
    half = torch.fft.rfftfreq(box, d=1.0 / box, device=device, dtype=torch.float64).round()
    return full.to(dtype), full.to(dtype), half.to(dtype)


@dataclass
class TiltPairs:
    """The (tilt, voxel) pairs with tent weight τ > 0 of a ``box``-voxel half grid:
    ``t``, flat voxel ``v``, ``tent``, in-plane frequencies ``kx``, ``ky`` (1/Å) and the tent
    sum per voxel ``tent_sum`` ``(D · D · (D // 2 + 1),)``."""

    box: int
    t: Tensor
    v: Tensor
    tent: Tensor
    kx: Tensor
    ky: Tensor
    tent_sum: Tensor


def tilt_pairs(box: int, pixel_size_A: float, frames: Tensor,
               max_chunk_elements: int = 1 << 24) -> TiltPairs:
    """Pairs of the tilts with rotations ``frames`` ``(T, 3, 3)`` (rows u, v, n; see the module
    docstring) on the half grid of a ``box`` of ``pixel_size_A`` voxels."""
    u, w, n = frames[:, 0], frames[:, 1], frames[:, 2]
    device, dtype = frames.device, frames.dtype
    fz, fy, fx = _voxel_frequencies(box, device, dtype)
    half = fx.shape[0]
    n_vox = box * box * half
    n_tilts = u.shape[0]
    chunk = max(1, max_chunk_elements // max(n_tilts, 1))
    tent_sum = torch.empty(n_vox, dtype=dtype, device=device)
    parts: list[tuple[Tensor, ...]] = []
    for v0 in range(0, n_vox, chunk):
        v = torch.arange(v0, min(v0 + chunk, n_vox), device=device)
        k = torch.stack([fx[v % half], fy[(v // half) % box], fz[v // (box * half)]], -1)
        tent = (1.0 - (n @ k.T).abs()).clamp_min(0.0)  # (T, Vc)
        tent_sum[v0:v0 + v.shape[0]] = tent.sum(0)
        t_idx, local = torch.nonzero(tent, as_tuple=True)
        kl = k[local]
        parts.append((t_idx, local + v0, tent[t_idx, local], (u[t_idx] * kl).sum(-1),
                      (w[t_idx] * kl).sum(-1)))
    t_idx, v_idx, tent, kx_in, ky_in = (torch.cat(p) for p in zip(*parts, strict=True))
    scale = 1.0 / (box * pixel_size_A)
    return TiltPairs(box, t_idx, v_idx, tent, kx_in * scale, ky_in * scale, tent_sum)


def ctf_volume(
    box: int,
    pixel_size_A: float,
    scheme: TiltScheme,
    defocus_A: float | Tensor,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    astigmatism_A: float | Tensor = 0.0,
    astigmatism_angle_deg: float | Tensor = 0.0,
    phase_shift_deg: float = 0.0,
    bfactor_A2: float = 0.0,
    dose_weighting: bool = True,
    squared: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    max_chunk_elements: int = 1 << 24,
    frames: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """3D CTF weights of subtomograms from a tilt series, gridded onto the rfftn half-spectrum.

    Args:
        box: box size D (voxels); any D, odd or even.
        pixel_size_A: voxel size (Å).
        scheme: tilts (acquisition order), pre-exposures and per-tilt defocus offsets.
        defocus_A: particle defocus (Å, underfocus positive): a scalar (one volume, no batch
            axis), ``(B,)`` per particle, or ``(B, T)`` per particle and tilt. The scheme's
            ``defocus_offset_A`` is added per tilt.
        astigmatism_A: ``ΔfU − ΔfV`` (Å); ΔfU = Δf + astig/2, ΔfV = Δf − astig/2. Scalar,
            ``(B,)`` or ``(B, T)``.
        astigmatism_angle_deg: angle of ΔfU from each tilt image's x axis (degrees); scalar,
            ``(B,)`` or ``(B, T)``.
        voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg, bfactor_A2: optics (scalars).
        dose_weighting: multiply each tilt's CTF by the Grant-Grigorieff filter at its
            pre-exposure.
        squared: grid ``(CTF · W)²`` instead of ``CTF · W`` (reconstruction weights).
        device, dtype: where and in which precision to compute (default: ``defocus_A``'s
            device, else CPU; float32).
        max_chunk_elements: bound on the size of temporary ``(tilts or particles) × pairs``
            tensors.
        frames: ``(T, 3, 3)`` tilt rotations for any geometry (default: tilts about y by the
            scheme's angles); see the module docstring.

    Returns:
        ``(weights, multiplicity)``: weights ``(B, D, D, D // 2 + 1)`` (or ``(D, D, D // 2 + 1)``
        for a scalar defocus) and multiplicity ``(D, D, D // 2 + 1)`` in [0, 1].
    """
    if box < 1:
        raise ValueError(f"box must be positive, got {box}")
    if pixel_size_A <= 0:
        raise ValueError(f"pixel_size_A must be positive, got {pixel_size_A}")
    _check_amplitude_contrast(amplitude_contrast)
    if device is None:
        device = defocus_A.device if isinstance(defocus_A, Tensor) else torch.device("cpu")
    device = torch.device(device)
    if frames is None:
        u, n = tilt_frame(scheme.tilt_angles_deg, device=device, dtype=dtype)
        v = torch.zeros_like(u)
        v[:, 1] = 1.0
        frames = torch.stack([u, v, n], dim=1)
    frames = torch.as_tensor(frames, device=device).to(dtype)
    if frames.shape != (scheme.n_tilts, 3, 3):
        raise ValueError(f"frames must be ({scheme.n_tilts}, 3, 3), got {tuple(frames.shape)}")
    pairs = tilt_pairs(box, pixel_size_A, frames, max_chunk_elements)
    _, pre_exposure, offsets = scheme.tensors(device=device, dtype=dtype)
    defocus = torch.as_tensor(defocus_A, dtype=dtype, device=device)
    batched = defocus.ndim > 0
    gridder = CtfGridder(pairs, pre_exposure, offsets, voltage_kv=voltage_kv, cs_mm=cs_mm,
                         amplitude_contrast=amplitude_contrast, phase_shift_deg=phase_shift_deg,
                         bfactor_A2=bfactor_A2, dose_weighting=dose_weighting, squared=squared)
    out = gridder(defocus if batched else defocus[None], astigmatism_A=astigmatism_A,
                  astigmatism_angle_deg=astigmatism_angle_deg,
                  max_chunk_elements=max_chunk_elements)
    batch = out.shape[0]
    tent_sum = pairs.tent_sum
    shape = (box, box, box // 2 + 1)
    weights = out.reshape(batch, *shape)
    multiplicity = tent_sum.clamp(max=1.0).reshape(shape)
    return (weights if batched else weights[0]), multiplicity


class CtfGridder:
    """The gridded CTF ``Σ_t τ c_t / max(Σ_t τ, 1)`` per voxel (module docstring), built once
    per set of pairs, exposures and optics and applied to batches of particles.

    Per pair ``p`` (tilt ``t``) the CTF phase is linear in the particle's per-tilt terms::

        χ_p = Δf_t · a_p + (½ astig cos 2α)_t · a_p cos 2φ_p + (½ astig sin 2α)_t · a_p sin 2φ_p
              + r_p,
        a_p = π λ |k_p|²,   r_p = −½ π Cs λ³ |k_p|⁴ + phase shift + atan(Q / √(1 − Q²))

    The pairs are laid out tilt by tilt in a ``(T, L)`` table (``L`` the largest number of pairs
    of a tilt; the rest are padding that nothing reads), so the phases of all pairs of ``B``
    particles are one batched matrix product of the ``(T, L, 4)`` factors with ``(T, 4, B)``
    per-particle terms, and the sums ``Σ_t τ c_t / max(Σ_t τ, 1)`` over each voxel's pairs, with
    the dose and B-factor envelopes folded into the weights, are one sparse (CSR) product.
    """

    def __init__(
        self,
        pairs: TiltPairs,
        pre_exposure: Tensor,
        defocus_offset_A: Tensor | float = 0.0,
        *,
        voltage_kv: float = 300.0,
        cs_mm: float = 2.7,
        amplitude_contrast: float = 0.07,
        phase_shift_deg: float = 0.0,
        bfactor_A2: float = 0.0,
        dose_weighting: bool = True,
        squared: bool = False,
    ) -> None:
        dtype, device = pairs.kx.dtype, pairs.kx.device
        n_tilts = int(pre_exposure.shape[0])
        order = torch.argsort(pairs.t, stable=True)
        t_idx, v_idx = pairs.t[order], pairs.v[order]
        kx_in, ky_in, tent = pairs.kx[order], pairs.ky[order], pairs.tent[order]
        counts = torch.bincount(t_idx, minlength=n_tilts)
        length = max(int(counts.max()) if len(counts) else 0, 1)
        first = torch.cumsum(counts, 0) - counts
        slot = t_idx * length + (torch.arange(len(t_idx), device=device) - first[t_idx])
        k2 = kx_in * kx_in + ky_in * ky_in
        safe = torch.where(k2 > 0, k2, torch.ones_like(k2))
        cos2phi = torch.where(k2 > 0, (kx_in * kx_in - ky_in * ky_in) / safe, torch.ones_like(k2))
        sin2phi = torch.where(k2 > 0, 2.0 * kx_in * ky_in / safe, torch.zeros_like(k2))
        # χ = π λ Δf k² − (π/2) Cs λ³ k⁴ + φ_shift + atan(Q/sqrt(1−Q²))  (as in ctf_2d)
        lam = float(electron_wavelength_A(voltage_kv))
        q = float(amplitude_contrast)
        per_defocus = math.pi * lam * k2
        rest = (-0.5 * math.pi * cs_mm * 1e7 * lam ** 3 * k2 * k2
                + math.radians(phase_shift_deg) + math.atan2(q, math.sqrt(1.0 - q * q)))
        factors = torch.zeros(n_tilts * length, 4, dtype=dtype, device=device)
        factors[slot] = torch.stack([per_defocus, per_defocus * cos2phi, per_defocus * sin2phi,
                                     rest], dim=-1)
        self.factors = factors.reshape(n_tilts, length, 4)
        envelope = tent
        if bfactor_A2 != 0.0:
            damping = torch.exp(-0.25 * bfactor_A2 * k2)
            envelope = envelope * (damping * damping if squared else damping)
        if dose_weighting:
            dose = dose_filter(torch.sqrt(k2), pre_exposure.to(device=device, dtype=dtype)[t_idx])
            envelope = envelope * (dose * dose if squared else dose)
        envelope = envelope / pairs.tent_sum[v_idx].clamp_min(1.0)
        n_vox = int(pairs.tent_sum.shape[0])
        with warnings.catch_warnings():  # CSR is "beta" in torch; its matmul is what we need
            warnings.simplefilter("ignore", UserWarning)
            self.scatter = torch.sparse_coo_tensor(
                torch.stack([v_idx, slot]), envelope, (n_vox, n_tilts * length),
                check_invariants=False).coalesce().to_sparse_csr()
        self.offset = torch.as_tensor(defocus_offset_A, dtype=dtype, device=device)
        self.squared = squared
        self.n_tilts, self.length, self.n_vox = n_tilts, length, n_vox

    def __call__(self, defocus_A: Tensor, *, astigmatism_A: float | Tensor = 0.0,
                 astigmatism_angle_deg: float | Tensor = 0.0, active: Tensor | None = None,
                 max_chunk_elements: int = 1 << 24) -> Tensor:
        """Weights ``(B, n_vox)`` of ``B`` particles: ``defocus_A`` ``(B,)`` or ``(B, T)`` (Å,
        the offsets added), astigmatism ``ΔfU − ΔfV`` (Å) and its angle (deg) scalars, ``(B,)``
        or ``(B, T)``, ``active`` an optional ``(B, T)`` mask of the tilts each particle is seen
        in (the others contribute 0; the normalisation keeps all tilts)."""
        dtype, device = self.factors.dtype, self.factors.device
        batch, n_tilts = defocus_A.shape[0], self.n_tilts
        df = _per_particle_tilt(defocus_A, batch, n_tilts, "defocus_A", device, dtype) + \
            self.offset
        astig = _per_particle_tilt(astigmatism_A, batch, n_tilts, "astigmatism_A", device, dtype)
        angle = _per_particle_tilt(astigmatism_angle_deg, batch, n_tilts,
                                   "astigmatism_angle_deg", device, dtype)
        alpha2 = 2.0 * torch.deg2rad(angle)
        terms = torch.stack([df, 0.5 * astig * torch.cos(alpha2), 0.5 * astig * torch.sin(alpha2),
                             torch.ones_like(df)], dim=0).permute(2, 0, 1)  # (T, 4, B)
        mask = None if active is None else active.to(device=device, dtype=dtype).T[:, None]
        out = torch.empty(batch, self.n_vox, dtype=dtype, device=device)
        step = max(1, max_chunk_elements // (n_tilts * self.length))
        for b0 in range(0, batch, step):
            b1 = min(b0 + step, batch)
            ctf = torch.bmm(self.factors, terms[..., b0:b1].contiguous()).sin_()  # (T, L, b)
            if self.squared:
                ctf = ctf.square_()
            if mask is not None:
                ctf = ctf.mul_(mask[..., b0:b1])
            out[b0:b1] = torch.sparse.mm(self.scatter, ctf.reshape(-1, b1 - b0)).T
        return out
