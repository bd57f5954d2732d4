"""Reconstruction of a Warp 1 sub-tilt series (:mod:`subtomo.io.warp1_series`) with its
per-image poses (``subtomo reconstruct --i sub-tilts.star``).

Image j of particle i is a projection with its own pose: ``A_ij`` is the RELION matrix of its
``rlnAngleRot/Tilt/Psi`` (the particle's orientation composed with the tilt, by Warp). By the
projection-slice theorem its spectrum is the central slice ``Y_ij(k) = c_ij(k) V(A_ijᵀ k)``
(+ noise), so each image goes into the :class:`~subtomo.fourier.projector.Backprojector` as
``c_ij Y_ij`` at ``A_ijᵀ k`` with weight ``c_ij²``, and ``V = Σ c Y / (Σ c² + 1/τ²)`` with τ²
from the half sets (:func:`subtomo.refine.reconstruct.gold_standard`). The images are NOT
CTF-premultiplied nor exposure-weighted (Warp 1 cuts them from the raw tilt images; tomoDRGN
reads Warp v1 image series with ``image_ctf_premultiplied = image_dose_weighted = False`` and
cryoDRGN's ``backproject_voxel`` multiplies them by their CTF, ``--ctf-alg mul``).

    c_ij(k) = s_ij · CTF(k; ΔfU, ΔfV, α, φ) · exp(−N_ij / (2 N_e(|k|)))

with ``s_ij`` = ``rlnCtfScalefactor`` (Warp's weight, cos tilt), the CTF in RELION's
convention (:func:`subtomo.ctf.ctf2d.ctf_2d`) and the Grant–Grigorieff exposure filter
(:func:`subtomo.ctf.dose.dose_filter`) at the accumulated exposure ``N_ij = −rlnCtfBfactor / 4``
e/Å² (Warp writes ``B = −4 N``; tomoDRGN reads the dose back so). Why not ``exp(B k² / 4)``:
RELION's CTF applies ``rlnCtfBfactor`` as ``exp(−B k² / 4)``, which for Warp's negative B
would amplify; Warp's own Gaussian ``exp(−N k²)`` is a cruder model of the same radiation
damage, and the Grant–Grigorieff filter is what every other tilt in this package, tomoDRGN and
cryoDRGN (``--dose-per-tilt``) weight by. Without ``rlnCtfBfactor`` no exposure filter.
Origins ``o`` (px; content at ``−o``, as RELION) are undone by translating each image by
``+o``. Half sets: ``rlnRandomSubset`` of each particle (all its images), else a seeded split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.errors import InputError
from subtomo.fourier.grid import frequencies_2d
from subtomo.fourier.projector import Backprojector
from subtomo.fourier.shift import shift_spectra_2d_
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io.mrc import read_section
from subtomo.io.particles import ParticleSet
from subtomo.io.warp1_series import TiltImages, check_warp1_images
from subtomo.refine.reconstruct import Reconstruction, half_sets, reconstruct_rows

__all__ = ["image_spectra", "image_ctfs", "reconstruct_warp1"]


def image_spectra(images: Tensor, origins_px: Tensor) -> Tensor:
    """Centred half spectra ``rfft2(ifftshift(image))`` ``(n, S, S // 2 + 1)`` of images
    ``(n, S, S)``, each translated by its origin ``(x, y)`` px (content at ``−o`` → centre)."""
    spectra = torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    return shift_spectra_2d_(spectra, origins_px.to(torch.float64))


def image_ctfs(s: TiltImages, optics: dict[str, float], box: int, pixel_size_A: float,
               device: torch.device) -> Tensor:
    """``c = scale · CTF · exposure filter`` ``(n, S, S // 2 + 1)`` of one particle's images
    (module docstring)."""
    freqs = frequencies_2d(box, pixel_size_A, device=device).float()
    column = s.columns.get

    def per_image(values, default: float = 0.0) -> Tensor:
        values = np.full(len(s), default) if values is None else values
        return torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]

    u, v, angle = (per_image(s.defocus[:, i]) for i in range(3))
    c = ctf_2d(freqs, u, v, angle, optics["rlnVoltage"], optics["rlnSphericalAberration"],
               optics["rlnAmplitudeContrast"], per_image(column("rlnPhaseShift")))
    if "rlnCtfBfactor" in s.columns:
        exposure = (-per_image(column("rlnCtfBfactor")) / 4).clamp_min(0.0)
        c = c * dose_filter(freqs.norm(dim=-1), exposure)
    return c * per_image(column("rlnCtfScalefactor"), 1.0)


def _particle_slices(s: TiltImages, optics: dict[str, float], box: int, pixel_size_A: float,
                     device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """One particle's image spectra, RELION matrices ``(n, 3, 3)`` and CTFs."""
    images = torch.from_numpy(np.stack([read_section(f, i) for f, i in s.images])).to(device)
    origins = torch.as_tensor(s.shifts_A / pixel_size_A, device=device)
    A = euler_to_matrix(torch.as_tensor(s.angles_deg)).to(device=device, dtype=torch.float32)
    return image_spectra(images, origins), A, image_ctfs(s, optics, box, pixel_size_A, device)


def _backproject(series: list[TiltImages], optics: dict[str, float], box: int,
                 pixel_size_A: float, ops: Tensor, pad: int, batch_size: int,
                 device: torch.device, desc: str, progress: bool) -> Backprojector:
    """Σ c·Y and Σ c² of the images of ``series`` (``batch_size`` particles at a time)."""
    bp = Backprojector(box, pad=pad, device=device)
    for start in tqdm(range(0, len(series), batch_size), desc=desc, unit="batch",
                      disable=None if progress else True):
        parts = [_particle_slices(s, optics, box, pixel_size_A, device)
                 for s in series[start:start + batch_size]]
        spectra, A, ctf = (torch.cat(x) for x in zip(*parts, strict=True))
        for op in ops:  # symmetry mates: the same slices at A R_g
            bp.insert_slices(spectra, A @ op, ctf)
    return bp


def reconstruct_warp1(ps: ParticleSet, series: dict[str, TiltImages], *, sym: str = "C1",
                      halves: bool = False, subset: int | None = None,
                      maxres_A: float | None = None, pad: int = 2, batch_size: int = 16,
                      device: str | torch.device = "cpu", progress: bool = True,
                      seed: int = 0) -> Reconstruction:
    """Map (and with ``halves`` the half maps, FSC, resolution) of the Warp 1 set ``ps`` /
    ``series`` (:func:`subtomo.io.warp1_series.read_warp1_series`) with its per-image poses;
    ``subset`` keeps half set 1 or 2, ``maxres_A`` low-passes the map (Å)."""
    try:
        ops = symmetry_operators(sym, dtype=torch.float32, device=device)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from None
    device = torch.device(device)
    box = check_warp1_images(ps.source, series)
    pixel_size_A = float(ps.pixel_size_A()[0])
    optics = ps.optics.iloc[0].to_dict()
    for label in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if label not in optics:
            raise InputError(ps.source, "required column missing (the images' CTF)", field=label)
    names = ps.particles["rlnTomoParticleName"].astype(str).tolist()
    split = half_sets(ps, seed)
    rows = np.arange(len(ps)) if subset is None else np.flatnonzero(split == subset)
    if len(rows) == 0:
        raise InputError(ps.source, f"half set {subset} is empty", field="rlnRandomSubset")
    kwargs = dict(optics=optics, box=box, pixel_size_A=pixel_size_A, ops=ops, pad=pad,
                  batch_size=batch_size, device=device, progress=progress)
    return reconstruct_rows(
        lambda mine, desc: _backproject([series[names[r]] for r in mine], desc=desc, **kwargs),
        rows, split, halves=halves, pixel_size_A=pixel_size_A, pad=pad, maxres_A=maxres_A,
        source=ps.source)
