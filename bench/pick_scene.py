"""A picking scene the package did not make: numpy/scipy only, none of subtomo's simulator,
projector, CTF or dose code.

Two species of random blob phantoms (about ``diameter_A`` across, equal mass) sit on a jittered
lattice one particle per two diameters, in a slab ``thickness_px`` thick, at random orientations
(RELION's convention: a feature at ``p`` of the reference sits at ``A p``, ``A`` RELION's
``Euler_angles2matrix``, the transpose of the active ``Rz(rot) Ry(tilt) Rz(psi)``). Species A
fills an ellipsoid of semi-axes 0.5, 0.38, 0.3 diameters, species B a sphere of 0.4. The
volume is rendered analytically (Gaussian blobs), then projected in real space
for each tilt of a ±60° / 3° dose-symmetric series along RELION 5's beam direction: image
``(u, v) = (first two rows of Ry(θ)) (r − c) + image centre``, the line integral along the third
row (``scipy.ndimage.map_coordinates``, linear). Each image is multiplied in Fourier space by
its own CTF ``−(√(1−Q²) sin χ + Q cos χ)``, ``χ = πλΔf k² − π/2 Cs λ³ k⁴`` (defocus per tilt, no
depth gradient: at the picking voxel sizes it moves χ by < 0.1 rad), and Grant & Grigorieff's
exposure filter ``exp(−N / (2 (0.245 k^−1.665 + 2.81)))``; white noise sets the per-tilt
particle SNR (variance of one particle's noise-free 0° projection over its disc / σ²). Files:
RELION 5 ``tomograms.star``, per-tilt STAR, the stack, ``truth.star`` (species, centred Å
coordinates, angles) and ``template.mrc`` (species A at ``pixel_A``), written with ``starfile``
and ``mrcfile`` directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy import ndimage

WAVELENGTH_A = 0.019687  # 300 kV


def _rotation(rot: float, tilt: float, psi: float) -> np.ndarray:
    def rz(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])

    def ry(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    r, t, p = np.deg2rad([rot, tilt, psi])
    return rz(r) @ ry(t) @ rz(p)


def phantom(rng: np.random.Generator, diameter_A: float, shape: tuple[float, float, float],
            n_blobs: int = 40) -> np.ndarray:
    """Blobs ``(n, 5)``: x, y, z (Å, about the centre), σ (Å), weight; a random cluster in the
    ellipsoid of semi-axes ``shape × diameter_A``."""
    axes = np.array(shape) * diameter_A
    pts = []
    while len(pts) < n_blobs:
        p = rng.uniform(-1, 1, 3)
        if (p**2).sum() <= 1:
            pts.append(p * axes)
    pts = np.array(pts)
    pts -= pts.mean(0)
    sigma = rng.uniform(0.05, 0.09, n_blobs) * diameter_A
    weight = rng.uniform(0.5, 1.0, n_blobs)
    weight /= weight.sum()
    return np.column_stack([pts, sigma, weight])


def render(volume: np.ndarray, blobs: np.ndarray, centre_px: np.ndarray, rotation: np.ndarray,
           pixel_A: float) -> None:
    """Add the blobs at ``centre_px`` (x, y, z) into ``volume`` (z, y, x), rotated as RELION
    rotates a reference by the matrix of (rot, tilt, psi): RELION's ``Euler_angles2matrix`` is
    the transpose of the active ``Rz(rot) Ry(tilt) Rz(psi)`` (:func:`_rotation`), and a feature
    at ``p`` of the reference sits at ``A p`` in the particle."""
    for x, y, z, sigma, weight in blobs:
        p = rotation.T @ np.array([x, y, z]) / pixel_A + centre_px
        s = sigma / pixel_A
        lo = np.maximum(np.floor(p - 4 * s).astype(int), 0)
        hi = np.minimum(np.ceil(p + 4 * s).astype(int) + 1, volume.shape[::-1])
        if np.any(hi <= lo):
            continue
        gx, gy, gz = (np.arange(lo[i], hi[i]) - p[i] for i in range(3))
        g = np.exp(-(gz[:, None, None] ** 2 + gy[None, :, None] ** 2 + gx[None, None, :] ** 2)
                   / (2 * s * s))
        volume[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] += weight * g / (2 * math.pi * s * s) ** 1.5


def project(volume: np.ndarray, theta_deg: float, image_px: tuple[int, int]) -> np.ndarray:
    """RELION 5 projection at y-tilt ``θ`` (module docstring) of ``volume`` (z, y, x)."""
    nz, ny, nx = volume.shape
    c = np.array([nx / 2, ny / 2, nz / 2])
    t = math.radians(theta_deg)
    e1, n = np.array([math.cos(t), 0, math.sin(t)]), np.array([-math.sin(t), 0, math.cos(t)])
    w, h = image_px
    u = np.arange(w) - w / 2
    v = np.arange(h) - h / 2
    # the ray through image pixel (u, v) crosses height z (about the centre) at depth
    # w = (z − u sin θ) / cos θ: sample the heights of the slab, 1 / cos θ of depth apiece
    heights = np.arange(-nz / 2 - 2, nz / 2 + 2, math.cos(t))
    out = np.zeros((h, w), np.float32)
    for d0 in range(0, len(heights), 16):
        hz = heights[d0:d0 + 16]
        depth = (hz[:, None] - u[None, :] * math.sin(t)) / math.cos(t)  # (Z', W)
        r = (c[:, None, None, None] + e1[:, None, None, None] * u[None, None, None, :]
             + np.array([0, 1.0, 0])[:, None, None, None] * v[None, None, :, None]
             + n[:, None, None, None] * depth[None, :, None, :])
        out += ndimage.map_coordinates(volume, r[::-1], order=1, cval=0.0).sum(0)
    return out


def ctf_dose(shape: tuple[int, int], pixel_A: float, defocus_A: float, exposure: float,
             cs_mm: float = 2.7, q: float = 0.07) -> np.ndarray:
    """The 2D filter on the rfft2 grid of ``shape``: CTF × exposure filter."""
    ky = np.fft.fftfreq(shape[0])[:, None] / pixel_A
    kx = np.fft.rfftfreq(shape[1])[None, :] / pixel_A
    k2 = kx**2 + ky**2
    chi = (math.pi * WAVELENGTH_A * defocus_A * k2
           - 0.5 * math.pi * cs_mm * 1e7 * WAVELENGTH_A**3 * k2**2)
    ctf = -(math.sqrt(1 - q * q) * np.sin(chi) + q * np.cos(chi))
    k = np.sqrt(k2)
    critical = 0.245 * np.power(np.maximum(k, 1e-9), -1.665) + 2.81
    return ctf * np.exp(-exposure / (2 * critical))


def dose_symmetric(max_deg: float = 60, step_deg: float = 3) -> list[float]:
    """Hagen's scheme in acquisition order: 0°, then two positive, two negative, …"""
    n, order, plus, minus = int(round(max_deg / step_deg)), [0.0], 0, 0
    while plus < n or minus < n:
        for _ in range(2):
            if plus < n:
                plus += 1
                order.append(plus * step_deg)
        for _ in range(2):
            if minus < n:
                minus += 1
                order.append(-minus * step_deg)
    return order


def make_scene(out: Path, *, image_px: int = 400, thickness_px: int = 150, pixel_A: float = 10.0,
               diameter_A: float = 250.0, snr: float = 0.05, seed: int = 0) -> Path:
    """Write the scene (module docstring) into ``out``; returns ``out / 'tomograms.star'``."""
    rng = np.random.default_rng(seed)
    species = [phantom(rng, diameter_A, (0.5, 0.38, 0.3)),
               phantom(rng, diameter_A, (0.4, 0.4, 0.4))]
    spacing = 2 * diameter_A / pixel_A
    margin = 1.2 * diameter_A / pixel_A
    sites = [np.array([x, y, z]) for x in np.arange(margin, image_px - margin + 1, spacing)
             for y in np.arange(margin, image_px - margin + 1, spacing)
             for z in np.arange(thickness_px / 2 - spacing, thickness_px / 2 + spacing + 1,
                                spacing)]
    sites = [s + rng.uniform(-0.15, 0.15, 3) * spacing for s in sites]
    sites = [s for s in sites if abs(s[2] - thickness_px / 2) <= thickness_px / 2 - margin / 2]
    volume = np.zeros((thickness_px, image_px, image_px), np.float64)
    rows = []
    for site in sites:
        kind = int(rng.integers(2))
        angles = (rng.uniform(-180, 180), math.degrees(math.acos(rng.uniform(-1, 1))),
                  rng.uniform(-180, 180))
        render(volume, species[kind], site, _rotation(*angles), pixel_A)
        centred = (site - np.array([image_px / 2, image_px / 2, thickness_px / 2])) * pixel_A
        rows.append({"rlnTomoName": "scene", "species": "AB"[kind],
                     "rlnCenteredCoordinateXAngst": centred[0],
                     "rlnCenteredCoordinateYAngst": centred[1],
                     "rlnCenteredCoordinateZAngst": centred[2],
                     "rlnAngleRot": angles[0], "rlnAngleTilt": angles[1],
                     "rlnAnglePsi": angles[2]})
    alone = np.zeros((thickness_px, 64, 64))
    render(alone, species[0], np.array([32, 32, thickness_px / 2]), np.eye(3), pixel_A)
    reference = np.fft.irfft2(np.fft.rfft2(project(alone, 0.0, (64, 64))) * ctf_dose(
        (64, 64), pixel_A, 30000.0, 0.0), s=(64, 64))
    yy, xx = np.mgrid[:64, :64] - 32
    disc = (xx**2 + yy**2) <= (diameter_A / 2 / pixel_A) ** 2
    sigma = math.sqrt(reference[disc].var() / snr)
    tilts = dose_symmetric()
    order = np.argsort(tilts)
    out.mkdir(parents=True, exist_ok=True)
    stack = np.zeros((len(tilts), image_px, image_px), np.float32)
    tilt_rows = []
    for slot, i in enumerate(order):
        theta, exposure = tilts[i], 3.0 * i
        defocus = 30000.0 + rng.normal(0, 500)
        image = project(volume, theta, (image_px, image_px))
        image = np.fft.irfft2(np.fft.rfft2(image) * ctf_dose(image.shape, pixel_A, defocus,
                                                             exposure), s=image.shape)
        stack[slot] = image + rng.normal(0, sigma, image.shape)
        tilt_rows.append({"rlnMicrographName": f"{slot + 1}@{out / 'scene.mrcs'}",
                          "rlnTomoNominalStageTiltAngle": theta, "rlnMicrographPreExposure":
                          exposure, "rlnDefocusU": defocus, "rlnDefocusV": defocus,
                          "rlnDefocusAngle": 0.0, "rlnTomoXTilt": 0.0, "rlnTomoYTilt": theta,
                          "rlnTomoZRot": 0.0, "rlnTomoXShiftAngst": 0.0,
                          "rlnTomoYShiftAngst": 0.0})
    with mrcfile.new(out / "scene.mrcs", overwrite=True) as mrc:
        mrc.set_data(stack)
        mrc.voxel_size = pixel_A
    starfile.write({"scene": pd.DataFrame(tilt_rows)}, out / "scene.star", overwrite=True)
    starfile.write({"global": pd.DataFrame([{
        "rlnTomoName": "scene", "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.07, "rlnMicrographOriginalPixelSize": pixel_A,
        "rlnTomoHand": -1.0, "rlnTomoTiltSeriesPixelSize": pixel_A, "rlnTomoSizeX": image_px,
        "rlnTomoSizeY": image_px, "rlnTomoSizeZ": thickness_px,
        "rlnTomoTiltSeriesStarFile": str(out / "scene.star")}])}, out / "tomograms.star",
        overwrite=True)
    starfile.write({"particles": pd.DataFrame(rows)}, out / "truth.star", overwrite=True)
    box = int(math.ceil(1.3 * diameter_A / pixel_A / 2)) * 2
    template = np.zeros((box, box, box))
    render(template, species[0], np.array([box // 2] * 3, float), np.eye(3), pixel_A)
    with mrcfile.new(out / "template.mrc", overwrite=True) as mrc:
        mrc.set_data(template.astype(np.float32))
        mrc.voxel_size = pixel_A
    return out / "tomograms.star"
