"""The forward model of :mod:`subtomo.hetero.model` in tensors: boxes, sampling grids, the
encoder's input and the predicted subtomogram (formulas in that module's docstring).

Points are ``(x, y, z)`` Å from a box centre (voxel ``n // 2``, RELION's origin); volumes are
``(z, y, x)``. A point ``p`` of a ``n``-voxel box of pixel ``a`` is voxel ``p / a + n // 2``,
which ``grid_sample(align_corners=True)`` reads at ``2 (p / a + n // 2) / (n - 1) - 1``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from subtomo.fourier.grid import centred_irfft, centred_rfft, crop_spectrum, shell_radius_px
from subtomo.geometry.so3 import rotation_vector_to_matrix
from subtomo.hetero.model import HeteroVAE

__all__ = ["Boxes", "affine_grid", "encoder_input", "predict", "sample_affine",
           "sample_model", "within_radius"]


@dataclass(frozen=True)
class Boxes:
    """Box sizes (voxels) and the particle pixel size (Å) of one training run.

    ``box`` D of the particles; ``enc_box`` d = the encoder input (``--downfrac``);
    ``template_box`` T of the decoded maps (``--templateres``); ``loss_box`` L = min(D, T) where
    the model is compared with the data. All cover the same field of view, ``D · pixel_size_A``.
    """

    box: int
    pixel_size_A: float
    enc_box: int
    template_box: int

    @property
    def loss_box(self) -> int:
        return min(self.box, self.template_box)

    def pixel(self, n: int) -> float:
        """Pixel size (Å) of an ``n``-voxel box over the same field of view."""
        return self.pixel_size_A * self.box / n

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> Boxes:
        """Boxes of a saved config.json; runs written before the rename store ``pixel_A``."""
        saved = dict(saved)
        if "pixel_A" in saved:
            saved["pixel_size_A"] = saved.pop("pixel_A")
        return cls(**saved)


def enc_box_for(box: int, downfrac: float) -> int:
    """Encoder box: ``box · downfrac`` rounded to an even number of voxels (at least 8)."""
    return max(8, min(box, 2 * int(round(box * downfrac / 2))))


def affine_grid(M: Tensor, b_A: Tensor, out_box: int, out_pixel_size_A: float, in_box: int,
                in_pixel_size_A: float, where: Tensor | None = None) -> Tensor:
    """The ``grid_sample`` grid (B, n, n, n, 3) that reads, at each voxel centre ``r`` (x, y, z)
    Å of an ``n = out_box`` box (pixel ``out_pixel_size_A``), the point ``r M + b`` (row vectors;
    ``M`` (B, 3, 3), ``b_A`` (B, 3) Å) of an ``in_box`` volume of pixel ``in_pixel_size_A``; with
    ``where`` (P,) flat voxel indices, only at those voxels: (B, P, 3).

    The grid is affine in the voxel indices, so it is summed from three (B, n, 3) rows per
    axis: one pass over the grid, and gradients to ``M`` and ``b`` through small tensors."""
    n = out_box
    axis = (torch.arange(n, device=M.device, dtype=M.dtype) - n // 2) * out_pixel_size_A
    scale = 2 / (in_pixel_size_A * (in_box - 1))
    offset = 2 * (in_box // 2) / (in_box - 1) - 1
    Ms, bs = M * scale, b_A * scale + offset
    if where is not None:  # one (P, 3) x (3, 3B) product for the listed voxels
        r = torch.stack([axis[where % n], axis[where // n % n], axis[where // (n * n)]], 1)
        B = M.shape[0]
        grid = torch.addmm(bs.reshape(1, 3 * B), r, Ms.transpose(0, 1).reshape(3, 3 * B))
        return grid.view(-1, B, 3).transpose(0, 1).contiguous()
    gx = axis[None, :, None] * Ms[:, None, 0, :]
    gy = axis[None, :, None] * Ms[:, None, 1, :]
    gz = axis[None, :, None] * Ms[:, None, 2, :] + bs[:, None, :]
    return (gz[:, :, None, None] + gy[:, None, :, None]) + gx[:, None, None, :]


def sample_affine(volumes: Tensor, M: Tensor, b_A: Tensor, pixel_size_A: float, out_box: int,
                  out_pixel_size_A: float, where: Tensor | None = None) -> Tensor:
    """Trilinear samples (B, C, n, n, n) of ``volumes`` (B, C, m, m, m) (pixel ``pixel_size_A``) at
    ``r M + b`` for the voxel centres ``r`` of an ``out_box`` box of pixel ``out_pixel_size_A``
    (see :func:`affine_grid`); 0 outside the box. With ``where`` (flat voxel indices), only
    those voxels are sampled and the others are 0: exact where the caller knows the rest
    reads zeros (:func:`within_radius`) or is masked out."""
    m = volumes.shape[-1]
    grid = affine_grid(M, b_A, out_box, out_pixel_size_A, m, pixel_size_A, where).to(volumes.dtype)
    if where is None:
        return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)
    B, C = volumes.shape[:2]
    values = F.grid_sample(volumes, grid.reshape(B, 1, 1, -1, 3), mode="bilinear",
                           padding_mode="zeros", align_corners=True).view(B, C, -1)
    out = values.new_zeros(B, C, out_box ** 3).index_copy(2, where, values)
    return out.view(B, C, out_box, out_box, out_box)


def within_radius(volume: Tensor, pixel_size_A: float, out_box: int, out_pixel_size_A: float,
                  shift_A: Tensor | None = None) -> Tensor | None:
    """Flat indices of the voxels of an ``out_box`` box (pixel ``out_pixel_size_A``) that can read
    non-zero values of ``volume`` (T³, pixel ``pixel_size_A``) rotated about the centres and
    shifted by at most ``|shift_A|`` (B, 3) Å: ``|r| < R + √3 a + max |s|``, ``R`` the
    largest distance of a non-zero voxel from the centre, ``√3 a`` the reach of trilinear
    interpolation. None when that is the whole box."""
    t = volume.shape[-1]
    axis = (torch.arange(t, device=volume.device, dtype=torch.float32) - t // 2) ** 2
    r2 = axis[:, None, None] + axis[None, :, None] + axis[None, None, :]
    support = r2[volume != 0]
    if not len(support):
        return None
    reach = float(support.max()) ** 0.5 * pixel_size_A + 3 ** 0.5 * pixel_size_A + 1e-3
    if shift_A is not None and len(shift_A):
        reach += float(shift_A.detach().norm(dim=-1).max())
    n = out_box
    out = ((torch.arange(n, device=volume.device, dtype=torch.float32) - n // 2)
           * out_pixel_size_A) ** 2
    inside = (out[:, None, None] + out[None, :, None] + out[None, None, :]) < reach ** 2
    if bool(inside.all()):
        return None
    return torch.nonzero(inside.flatten()).flatten()


def sample_model(model: HeteroVAE, maps: Tensor, z: Tensor, M: Tensor, b_A: Tensor,
                 out_box: int, out_pixel_size_A: float, where: Tensor | None = None) -> Tensor:
    """``maps`` (B, T³) with the rigid-body motions of ``z``'s dynamics latent applied (module
    docstring of :mod:`subtomo.hetero.model`), read at ``r M + b`` (:func:`affine_grid`):
    (B, n, n, n). Body ``j`` moves ``p`` to ``(p - c_j - t_j) R_j + c_j``, which composes with
    the affine read into ``r (M R_j) + ((b - c_j - t_j) R_j + c_j)``. ``where``: the voxels
    to sample without bodies (:func:`sample_affine`); bodies can move density anywhere."""
    pixel_t = model.template_pixel_size_A
    motions = model.motions(z)
    if motions is None:
        return sample_affine(maps[:, None], M, b_A, pixel_t, out_box, out_pixel_size_A,
                             where)[:, 0]
    bodies = model.body_masks  # (J, T³)
    static = (1 - bodies.sum(0)).clamp_min(0)
    moved = sample_affine((maps * static)[:, None], M, b_A, pixel_t, out_box,
                          out_pixel_size_A)[:, 0]
    rotvec, trans = motions
    R = rotation_vector_to_matrix(rotvec)  # (B, J, 3, 3)
    for j in range(bodies.shape[0]):  # a handful of bodies; each one grid_sample
        c = model.body_centres_A[j]
        Mj = M @ R[:, j]
        bj = ((b_A - c - trans[:, j])[:, None, :] @ R[:, j])[:, 0] + c
        moved = moved + sample_affine((maps * bodies[j])[:, None], Mj, bj, pixel_t, out_box,
                                      out_pixel_size_A)[:, 0]
    return moved


def corrected_poses(A: Tensor, shift_A: Tensor, correction: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """``A' = A exp([ω]×)``, ``s' = s + δs`` for corrections (B, 6) = (ω rad, δs Å), or as is."""
    if correction is None:
        return A, shift_A
    return A @ rotation_vector_to_matrix(correction[:, :3]), shift_A + correction[:, 3:]


def real_at(spectra: Tensor, box: int, n: int) -> Tensor:
    """Real-space maps at ``n`` voxels (same field of view) from centred half spectra of
    ``box``-voxel maps: Fourier crop, inverse FFT, density scale kept."""
    return centred_irfft(crop_spectrum(spectra, n), n) * (n / box) ** 3


def encoder_input(spectra: Tensor, ctf: Tensor | None, A: Tensor, shift_A: Tensor,
                  boxes: Boxes, enc_mask: Tensor, ctfalpha: float, scale: float,
                  reference: Tensor | None = None) -> Tensor:
    """Encoder input (B, 1, d, d, d): the subtomogram divided by its contrast scale
    (:func:`contrast_scale`) against the ``reference`` (T³, the masked consensus) seen at the
    particle's pose through its CTF, minus that view, CTF-corrected
    (``sign(C) |C|^alpha``), cropped to ``d``, rotated into the reference frame
    (``y(p) = x(A p - δs)``), masked and divided by ``scale``.

    Subtracting what every particle shares leaves what tells them apart (and noise), so the
    encoder's first, random features already differ between particles. ``shift_A``: the
    residual shift of the content after centring (the pose correction δs, or zeros), (B, 3) Å.
    """
    d = boxes.enc_box
    pixel = boxes.pixel(d)
    A, shift_A = A.float(), shift_A.float()
    spectra = crop_spectrum(spectra, d) * (d / boxes.box) ** 3
    c = None if ctf is None else crop_spectrum(ctf, d)
    if reference is not None:
        model = seen_reference(reference, A, shift_A, boxes, d)
        model = model if c is None else model * c
        spectra = spectra / contrast_scale(spectra, model)[:, None, None, None] - model
    if c is not None:
        spectra = spectra * (torch.sign(c) if ctfalpha == 0 else
                             torch.sign(c) * c.abs() ** ctfalpha)
    x = centred_irfft(spectra, d)
    where = torch.nonzero(enc_mask.flatten() != 0).flatten()  # the rest is masked out
    aligned = sample_affine(x[:, None], A.transpose(1, 2), -shift_A, pixel, d, pixel,
                            where if len(where) < d ** 3 else None)  # x(A r - s)
    return aligned * enc_mask / scale


def seen_reference(reference: Tensor, A: Tensor, shift_A: Tensor, boxes: Boxes, n: int
                   ) -> Tensor:
    """Centred half spectra (B, n, n, n // 2 + 1) of ``reference`` (T³, reference frame) at the
    poses ``A`` (B, 3, 3) with residual shifts ``shift_A`` (B, 3) Å, on an ``n``-voxel box."""
    t, pixel = reference.shape[-1], boxes.pixel(n)
    b = (shift_A[:, None, :] @ A)[:, 0]  # A^T (r + s)
    where = within_radius(reference, boxes.pixel(t), n, pixel, shift_A)
    seen = sample_affine(reference.expand(len(A), 1, t, t, t), A, b, boxes.pixel(t), n, pixel,
                         where)[:, 0]
    return centred_rfft(seen)


def translation_search(spectra: Tensor, ctf: Tensor | None, A: Tensor, boxes: Boxes,
                       reference: Tensor, max_px: float) -> Tensor:
    """The translation ``τ`` (B, 3) px (x, y, z) by which each particle's content sits away
    from the ``reference`` seen at its pose through its CTF: the peak of the cross-correlation
    ``c(τ) = Σ_r x(r + τ) m(r)`` (``F^-1[X conj(C M)]``, the matched filter for white noise)
    at a voxel within ``|τ| ≤ max_px``, refined by at most half a voxel by a parabola through
    the peak and its two neighbours along each axis. Moving each particle by ``-τ`` centres it."""
    d = boxes.box
    model = seen_reference(reference, A.float(), torch.zeros(len(A), 3, device=A.device),
                           boxes, d)
    if ctf is not None:
        model = model * ctf
    cc = centred_irfft(spectra * model.conj(), d)
    axis = torch.arange(d, device=cc.device, dtype=cc.dtype) - d // 2
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    inside = torch.where(r2 <= max_px ** 2, cc, torch.full_like(cc, -torch.inf))
    flat = inside.flatten(1).argmax(1)
    zyx = [flat // (d * d), flat // d % d, flat % d]
    rows = torch.arange(len(cc), device=cc.device)

    def at(dim: int, step: int) -> Tensor:  # cc one voxel from the peak along ``dim``
        idx = list(zyx)
        idx[dim] = (idx[dim] + step).clamp(0, d - 1)
        return cc[rows, idx[0], idx[1], idx[2]]

    out = torch.stack(zyx[::-1], 1).to(torch.float64) - d // 2  # (x, y, z)
    for column, dim in enumerate((2, 1, 0)):
        lo, centre, hi = at(dim, -1), at(dim, 0), at(dim, 1)
        curve = lo + hi - 2 * centre
        frac = torch.where(curve < 0, 0.5 * (lo - hi) / torch.where(curve < 0, curve, -1), 0)
        out[:, column] += frac.clamp(-0.5, 0.5).double()
    return out


SCALE_RANGE = (0.5, 2.0)  # the per-particle contrast scale is searched within


def contrast_scale(data: Tensor, model: Tensor, weights: Tensor | None = None) -> Tensor:
    """The least-squares contrast scale (B,) of ``model`` in ``data``, ``ŝ = <m, x>_w / <m,
    m>_w`` (real or complex arrays, summed over the last three axes, ``w`` real weights),
    clamped to :data:`SCALE_RANGE` (an empty box stays a poor fit instead of a free one)."""
    w = 1.0 if weights is None else weights
    num = (model.conj() * data * w).real.sum((-3, -2, -1))
    den = ((model.conj() * model).real * w).sum((-3, -2, -1))
    return (num / den.clamp_min(1e-30)).clamp(*SCALE_RANGE)


def ctf_filter(ctf: Tensor | None, boxes: Boxes, ctfbeta: float, bfactor: float,
               batch: int, device: torch.device) -> Tensor:
    """The model's Fourier filter at the loss box: ``sign(C)|C|^beta`` × B-factor envelope
    (``exp(-bfactor π² f²)``, f in 1/Å), 0 at the origin (the data's box mean is removed,
    :func:`subtomo.hetero.run.stream_batches`), (B or 1, L, L, L // 2 + 1)."""
    n = boxes.loss_box
    f = shell_radius_px(n, device) / (n * boxes.pixel(n))
    out = torch.exp(-bfactor * math.pi ** 2 * f * f) if bfactor else torch.ones_like(f)
    out = out * (f > 0)
    if ctf is not None:
        c = crop_spectrum(ctf, n)
        out = out * (c if ctfbeta == 1 else torch.sign(c) * c.abs() ** ctfbeta)
    return out if out.ndim == 4 else out[None]


def predict(model: HeteroVAE, maps: Tensor, z: Tensor, A: Tensor, shift_A: Tensor,
            boxes: Boxes, filt: Tensor | None) -> tuple[Tensor, Tensor]:
    """Predicted subtomograms (B, L, L, L) of ``maps`` (B, T³) at poses ``A`` (B, 3, 3) and
    residual shifts ``shift_A`` (B, 3) Å, and the mask at each pose (B, L, L, L).

    With rigid bodies the masked parts of each map move by the motions of ``z``'s dynamics
    latent before the pose is applied.
    """
    n, t = boxes.loss_box, boxes.template_box
    A = A.to(maps.dtype)
    b = (shift_A.to(maps.dtype)[:, None, :] @ A)[:, 0]  # A^T (r + s)
    # maps and mask are 0 outside the mask: only the voxels that can read it are sampled
    where = within_radius(model.mask, model.template_pixel_size_A, n, boxes.pixel(n), shift_A)
    moved = sample_model(model, maps, z, A, b, n, boxes.pixel(n), where)
    mask = model.mask.expand(maps.shape[0], 1, t, t, t)
    with torch.set_grad_enabled(torch.is_grad_enabled() and (A.requires_grad or
                                                             b.requires_grad)):
        mask_at = sample_affine(mask, A, b, model.template_pixel_size_A, n, boxes.pixel(n),
                                where)[:, 0]
    if filt is not None:
        moved = centred_irfft(centred_rfft(moved) * filt, n)
    return moved, mask_at
