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
from subtomo.hetero.model import HeteroVAE, rotation_vector_matrix

__all__ = ["Boxes", "encoder_input", "predict", "sample_at", "box_points_A"]


@dataclass(frozen=True)
class Boxes:
    """Box sizes (voxels) and the particle pixel size (Å) of one training run.

    ``box`` D of the particles; ``enc_box`` d = the encoder input (``--downfrac``);
    ``template_box`` T of the decoded maps (``--templateres``); ``loss_box`` L = min(D, T) where
    the model is compared with the data. All cover the same field of view, ``D · pixel_A``.
    """

    box: int
    pixel_A: float
    enc_box: int
    template_box: int

    @property
    def loss_box(self) -> int:
        return min(self.box, self.template_box)

    def pixel(self, n: int) -> float:
        """Pixel size (Å) of an ``n``-voxel box over the same field of view."""
        return self.pixel_A * self.box / n

    def as_dict(self) -> dict:
        return asdict(self)


def enc_box_for(box: int, downfrac: float) -> int:
    """Encoder box: ``box · downfrac`` rounded to an even number of voxels (at least 8)."""
    return max(8, min(box, 2 * int(round(box * downfrac / 2))))


def box_points_A(box: int, pixel_A: float, device: torch.device | str | None = None) -> Tensor:
    """All voxel centres of a box as points (box³, 3) (x, y, z) Å, in (z, y, x) raster order."""
    axis = (torch.arange(box, device=device, dtype=torch.float32) - box // 2) * pixel_A
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def sample_at(volumes: Tensor, points_A: Tensor, pixel_A: float, out_box: int) -> Tensor:
    """Trilinear samples of ``volumes`` (B, C, n, n, n) (pixel ``pixel_A``) at ``points_A``
    (B, out_box³, 3): (B, C, out_box, out_box, out_box); 0 outside the box."""
    n = volumes.shape[-1]
    grid = 2 * (points_A / pixel_A + n // 2) / (n - 1) - 1
    grid = grid.view(points_A.shape[0], out_box, out_box, out_box, 3).to(volumes.dtype)
    return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def corrected_poses(A: Tensor, shift_A: Tensor, correction: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """``A' = A exp([ω]×)``, ``s' = s + δs`` for corrections (B, 6) = (ω rad, δs Å), or as is."""
    if correction is None:
        return A, shift_A
    return A @ rotation_vector_matrix(correction[:, :3]), shift_A + correction[:, 3:]


def real_at(spectra: Tensor, box: int, n: int) -> Tensor:
    """Real-space maps at ``n`` voxels (same field of view) from centred half spectra of
    ``box``-voxel maps: Fourier crop, inverse FFT, density scale kept."""
    return centred_irfft(crop_spectrum(spectra, n), n) * (n / box) ** 3


def encoder_input(spectra: Tensor, ctf: Tensor | None, A: Tensor, shift_A: Tensor,
                  boxes: Boxes, enc_mask: Tensor, ctfalpha: float, scale: float,
                  reference: Tensor | None = None) -> Tensor:
    """Encoder input (B, 1, d, d, d): the subtomogram minus the ``reference`` (T³, the masked
    consensus) seen at the particle's pose through its CTF, CTF-corrected
    (``sign(C) |C|^alpha``), cropped to ``d``, rotated into the reference frame
    (``y(p) = x(A p - δs)``), masked and divided by ``scale``.

    Subtracting what every particle shares leaves what tells them apart (and noise), so the
    encoder's first, random features already differ between particles. ``shift_A``: the
    residual shift of the content after centring (the pose correction δs, or zeros), (B, 3) Å.
    """
    d = boxes.enc_box
    pixel = boxes.pixel(d)
    points = box_points_A(d, pixel, spectra.device)
    spectra = crop_spectrum(spectra, d) * (d / boxes.box) ** 3
    c = None if ctf is None else crop_spectrum(ctf, d)
    if reference is not None:
        t = reference.shape[-1]
        p = (points[None] + shift_A[:, None, :].float()) @ A.float()  # A^T (r + s)
        seen = sample_at(reference.expand(len(A), 1, t, t, t), p, boxes.pixel(t), d)[:, 0]
        model = centred_rfft(seen)
        spectra = spectra - (model if c is None else model * c)
    if c is not None:
        spectra = spectra * (torch.sign(c) if ctfalpha == 0 else
                             torch.sign(c) * c.abs() ** ctfalpha)
    x = centred_irfft(spectra, d)
    q = points[None] @ A.transpose(1, 2).to(x.dtype) - shift_A[:, None, :].to(x.dtype)
    aligned = sample_at(x[:, None], q, pixel, d)
    return aligned * enc_mask / scale


def ctf_filter(ctf: Tensor | None, boxes: Boxes, ctfbeta: float, bfactor: float,
               batch: int, device: torch.device) -> Tensor | None:
    """The model's Fourier filter at the loss box: ``sign(C)|C|^beta`` × B-factor envelope
    (``exp(-bfactor π² f²)``, f in 1/Å), (B, L, L, L // 2 + 1); None when it is 1."""
    n = boxes.loss_box
    out = None
    if ctf is not None:
        c = crop_spectrum(ctf, n)
        out = c if ctfbeta == 1 else torch.sign(c) * c.abs() ** ctfbeta
    if bfactor:
        f = shell_radius_px(n, device) / (n * boxes.pixel(n))
        envelope = torch.exp(-bfactor * math.pi ** 2 * f * f)
        out = envelope.expand(batch, *envelope.shape) if out is None else out * envelope
    return out


def predict(model: HeteroVAE, maps: Tensor, z: Tensor, A: Tensor, shift_A: Tensor,
            boxes: Boxes, filt: Tensor | None) -> tuple[Tensor, Tensor]:
    """Predicted subtomograms (B, L, L, L) of ``maps`` (B, T³) at poses ``A`` (B, 3, 3) and
    residual shifts ``shift_A`` (B, 3) Å, and the mask at each pose (B, L, L, L).

    With rigid bodies the masked parts of each map move by the motions of ``z``'s dynamics
    latent before the pose is applied.
    """
    n, t = boxes.loss_box, boxes.template_box
    pixel_t = boxes.pixel(t)
    points = box_points_A(n, boxes.pixel(n), maps.device)
    p = (points[None] + shift_A[:, None, :].to(maps.dtype)) @ A.to(maps.dtype)  # A^T (r + s)
    mask = model.mask.expand(maps.shape[0], 1, t, t, t)
    motions = model.motions(z)
    if motions is None:
        sampled = sample_at(torch.cat([maps[:, None], mask], 1), p, pixel_t, n)
        moved, mask_at = sampled[:, 0], sampled[:, 1]
    else:
        bodies = model.body_masks  # (J, T³)
        static = (1 - bodies.sum(0)).clamp_min(0)
        sampled = sample_at(torch.cat([(maps * static)[:, None], mask], 1), p, pixel_t, n)
        moved, mask_at = sampled[:, 0], sampled[:, 1]
        rotvec, trans = motions
        R = rotation_vector_matrix(rotvec)  # (B, J, 3, 3)
        centres = model.body_centres_A
        for j in range(bodies.shape[0]):  # a handful of bodies; each one grid_sample
            q = (p - centres[j] - trans[:, j, None, :]) @ R[:, j] + centres[j]
            moved = moved + sample_at((maps * bodies[j])[:, None], q, pixel_t, n)[:, 0]
    if filt is not None:
        moved = centred_irfft(centred_rfft(moved) * filt, n)
    return moved, mask_at
