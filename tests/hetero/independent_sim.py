"""An independent simulator of subtomograms for the heterogeneity VAE (issue 28).

Written from the physics, with numpy only: no subtomo projector, CTF, rotation or simulate
code, so that what the package's own simulator and model share (a convention, the CTF code,
the noise model) cannot hide a failure. It differs from ``subtomo.simulate`` in what the VAE
must not assume:

* phantoms of Gaussian blobs rendered at their rotated positions (not pseudo-atoms);
* a CTF of its own formula, ``C(k) = sin(χ + asin w) · exp(-B(α) k² / 4)`` with
  ``χ = π λ Δf k² − π/2 Cs λ³ k⁴`` (300 kV, Cs 2.7 mm, w 0.07), defocus 1.5–3.5 µm per
  particle, and a dose weight ``B(α)`` growing with the tilt ``α`` of the plane that samples
  ``k``; the missing wedge ±60° about the tomogram's Y axis: ``k`` is sampled where
  ``|k_z| ≤ tan 60° |k_x|``, fixed in the box (tomogram) frame, so that in the particle's own
  frame it turns with the pose;
* a contrast scale ×0.8–1.2 and an additive offset per particle, and noise whose level
  varies by ±20 % between particles (white, within the sampled wedge);
* consensus poses off by a rotation of ``angle_error_deg`` rms and ``shift_error_px`` rms.

RELION conventions, written out here: ``A = Euler_angles2matrix(rot, tilt, psi)`` (ZYZ); a
reference point ``p`` (x, y, z Å from the box centre, voxel ``n // 2``) appears in the
particle box at ``A p - origin``; volumes are (z, y, x). The 3D CTF volume is written in
RELION's centred full layout (frequency ``i - n // 2`` at voxel ``i``; the weights are even).

Sets: ``"hinge"`` (a body and a domain turned 0–30° about a hinge axis, truth ``hinge_deg``)
and ``"classes"`` (equal shares of: all subunits; subunit 2 absent; subunit 2 moved to the
other side; truth ``class``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

VOLTAGE_V, CS_MM, AMPLITUDE_CONTRAST = 300e3, 2.7, 0.07


@dataclass(frozen=True)
class IndependentConfig:
    kind: str = "hinge"  # "hinge" or "classes"
    n: int = 600
    box_px: int = 32
    pixel_size_A: float = 6.0
    snr: float = 0.1  # signal variance / noise variance inside the particle's sphere
    angle_error_deg: float = 3.0
    shift_error_px: float = 0.5
    wedge_deg: float = 60.0
    max_hinge_deg: float = 30.0
    scale_spread: float = 0.2  # contrast scale uniform in 1 ± this
    offset_sd: float = 0.5  # additive offset, in units of the signal's std
    noise_spread: float = 0.2  # noise level uniform in 1 ± this
    seed: int = 0


def euler_to_matrix(rot_deg: np.ndarray, tilt_deg: np.ndarray, psi_deg: np.ndarray) -> np.ndarray:
    """RELION's Euler_angles2matrix (ZYZ), (N, 3, 3)."""
    a, b, g = (np.radians(np.asarray(v, dtype=np.float64)) for v in (rot_deg, tilt_deg, psi_deg))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
                     np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
                     np.stack([sc, ss, cb], -1)], -2)


def matrix_to_euler(A: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix` (N, 3) degrees (tilt in [0, 180])."""
    tilt = np.arccos(np.clip(A[:, 2, 2], -1, 1))
    rot = np.arctan2(A[:, 2, 1], A[:, 2, 0])
    psi = np.arctan2(A[:, 1, 2], -A[:, 0, 2])
    small = np.abs(np.sin(tilt)) < 1e-6  # gimbal lock: all of the turn in rot
    rot = np.where(small, np.arctan2(-A[:, 1, 0], A[:, 0, 0]), rot)
    psi = np.where(small, 0.0, psi)
    return np.degrees(np.stack([rot, tilt, psi], -1))


def axis_angle(axis: np.ndarray, angle_rad: float | np.ndarray) -> np.ndarray:
    """Rodrigues: rotation by ``angle_rad`` about unit ``axis`` (..., 3, 3)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = np.asarray(angle_rad, dtype=np.float64)[..., None, None]
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform rotations from unit quaternions (N, 3, 3)."""
    q = rng.normal(size=(n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    return np.stack([np.stack(row, -1) for row in rows], -2)


# blobs: (x, y, z) Å, sigma Å, weight; a body of two lobes, a domain on an arm
BODY = [(-14, -6, 0, 9, 1.0), (0, -8, 4, 10, 1.2), (14, -6, -2, 9, 1.0), (-6, 8, -6, 8, 0.9),
        (8, 6, 6, 8, 0.9), (0, 0, -12, 7, 0.7)]
DOMAIN = [(20, 14, 2, 7, 0.8), (28, 22, 0, 7, 0.8), (34, 32, -2, 6, 0.7)]
HINGE_POINT_A, HINGE_AXIS = np.array([16.0, 8.0, 0.0]), np.array([0.0, 0.0, 1.0])
SUBUNIT = [(-22, 16, 4, 7, 0.9), (-28, 26, 2, 6, 0.8)]  # present / absent / mirrored in x


def structure(kind: str, variable: float) -> np.ndarray:
    """Blobs (K, 5) of one particle: ``variable`` the hinge angle (°) or the class (1-3)."""
    body = np.array(BODY, dtype=np.float64)
    if kind == "hinge":
        domain = np.array(DOMAIN, dtype=np.float64)
        R = axis_angle(HINGE_AXIS, np.radians(variable))
        domain[:, :3] = (domain[:, :3] - HINGE_POINT_A) @ R.T + HINGE_POINT_A
        return np.concatenate([body, domain])
    sub = np.array(SUBUNIT, dtype=np.float64)
    if int(variable) == 2:
        return body
    if int(variable) == 3:
        sub[:, 0] = -sub[:, 0]
    return np.concatenate([body, sub])


def render(blobs: np.ndarray, A: np.ndarray, origin_A: np.ndarray, box: int,
           pixel_size_A: float) -> np.ndarray:
    """Σ_b w_b exp(-|r - (A p_b - origin)|² / 2σ_b²) at the voxel centres (z, y, x)."""
    axis = (np.arange(box) - box // 2) * pixel_size_A
    centres = blobs[:, :3] @ A.T - origin_A
    out = np.zeros((box, box, box))
    for (cx, cy, cz), (sigma, weight) in zip(centres, blobs[:, 3:], strict=True):
        gx = np.exp(-((axis - cx) ** 2) / (2 * sigma ** 2))
        gy = np.exp(-((axis - cy) ** 2) / (2 * sigma ** 2))
        gz = np.exp(-((axis - cz) ** 2) / (2 * sigma ** 2))
        out += weight * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return out


def frequencies(box: int, pixel_size_A: float) -> tuple[np.ndarray, ...]:
    """(kz, ky, kx) in 1/Å on the full, unshifted FFT grid."""
    f = np.fft.fftfreq(box, d=pixel_size_A)
    return np.meshgrid(f, f, f, indexing="ij")


def ctf_3d(box: int, pixel_size_A: float, defocus_A: float, wedge_deg: float) -> np.ndarray:
    """The particle's 3D CTF on the unshifted full FFT grid (module docstring)."""
    kz, ky, kx = frequencies(box, pixel_size_A)
    k2 = kx ** 2 + ky ** 2 + kz ** 2
    lam = 12.2643 / np.sqrt(VOLTAGE_V * (1 + 0.978466e-6 * VOLTAGE_V))
    cs_A = CS_MM * 1e7
    chi = np.pi * lam * defocus_A * k2 - 0.5 * np.pi * cs_A * lam ** 3 * k2 ** 2
    ctf = np.sin(chi + np.arcsin(AMPLITUDE_CONTRAST))
    tilt_deg = np.degrees(np.arctan2(np.abs(kz), np.abs(kx)))  # of the plane through k
    sampled = tilt_deg <= wedge_deg + 1e-9
    sampled[0, 0, 0] = True
    bfactor = 4.0 * tilt_deg / 3.0  # dose: about 1 e/Å² more per 3° step, B ≈ 4 Å² per e/Å²
    return ctf * np.exp(-bfactor * k2 / 4) * sampled, sampled


def rotation_error(n: int, rms_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotations about random axes by angles of ``rms_deg`` rms (N, 3, 3)."""
    vec = rng.normal(size=(n, 3)) * np.radians(rms_deg) / np.sqrt(3)
    out = np.empty((n, 3, 3))
    for i, v in enumerate(vec):
        out[i] = axis_angle(v, np.linalg.norm(v)) if np.linalg.norm(v) > 0 else np.eye(3)
    return out


def _write_star(path: Path, rows: dict, config: IndependentConfig) -> None:
    n = len(next(iter(rows.values())))
    lines = ["", "# version 30001", "", "data_optics", "", "loop_"]
    optics = [("rlnOpticsGroup", 1), ("rlnOpticsGroupName", "opticsGroup1"),
              ("rlnVoltage", 300.0), ("rlnSphericalAberration", CS_MM),
              ("rlnAmplitudeContrast", AMPLITUDE_CONTRAST),
              ("rlnImagePixelSize", config.pixel_size_A), ("rlnImageSize", config.box_px),
              ("rlnImageDimensionality", 3)]
    lines += [f"_{name} #{i + 1}" for i, (name, _) in enumerate(optics)]
    lines += [" ".join(str(v) for _, v in optics), "", "", "# version 30001", "",
              "data_particles", "", "loop_"]
    lines += [f"_{name} #{i + 1}" for i, name in enumerate(rows)]
    for i in range(n):
        lines.append(" ".join(f"{v[i]:.6f}" if isinstance(v[i], float) else str(v[i])
                              for v in rows.values()))
    path.write_text("\n".join(lines) + "\n")


def _write_mrc(path: Path, data: np.ndarray, pixel_size_A: float) -> None:
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(data.astype(np.float32))
        f.voxel_size = pixel_size_A


def simulate(out_dir: str | Path, config: IndependentConfig) -> dict:
    """Write ``particles.star`` (consensus poses), ``Subtomograms/*.mrc`` and their CTF volumes
    and ``truth.npz``; returns the truth (``hinge_deg`` or ``class``, true and given poses,
    scale, offset, defocus)."""
    out = Path(out_dir)
    (out / "Subtomograms").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    n, box, a = config.n, config.box_px, config.pixel_size_A
    if config.kind == "hinge":
        variable = rng.uniform(0, config.max_hinge_deg, n)
    else:
        variable = (np.arange(n) % 3 + 1)[rng.permutation(n)].astype(np.float64)
    A = random_rotations(n, rng)
    shift_A = rng.normal(size=(n, 3)) * a  # content at -origin; origin = shift
    defocus_A = rng.uniform(1.5e4, 3.5e4, n)
    scale = rng.uniform(1 - config.scale_spread, 1 + config.scale_spread, n)
    noise_scale = rng.uniform(1 - config.scale_spread, 1 + config.scale_spread, n)
    reference = render(structure(config.kind, variable[0]), np.eye(3), np.zeros(3), box, a)
    kz, ky, kx = np.meshgrid(*[(np.arange(box) - box // 2) * a] * 3, indexing="ij")
    inside = kx ** 2 + ky ** 2 + kz ** 2 < (0.35 * box * a) ** 2
    signal = np.fft.ifftn(np.fft.fftn(reference) * ctf_3d(box, a, 2.5e4, config.wedge_deg)[0]).real
    noise_sigma = np.sqrt(signal[inside].var() / config.snr)
    offset = rng.normal(size=n) * config.offset_sd * np.sqrt(signal[inside].var())
    names, ctf_names = [], []
    for i in range(n):
        density = render(structure(config.kind, variable[i]), A[i], shift_A[i], box, a)
        ctf, sampled = ctf_3d(box, a, defocus_A[i], config.wedge_deg)
        noise = np.fft.fftn(rng.normal(size=(box,) * 3)) * sampled
        spectrum = scale[i] * np.fft.fftn(density) * ctf + noise_sigma * noise_scale[i] * noise
        volume = np.fft.ifftn(spectrum).real + offset[i]
        names.append(f"Subtomograms/p{i + 1:05d}.mrc")
        ctf_names.append(f"Subtomograms/p{i + 1:05d}_ctf.mrc")
        _write_mrc(out / names[-1], volume, a)
        _write_mrc(out / ctf_names[-1], np.fft.fftshift(ctf), a)
    given = A @ rotation_error(n, config.angle_error_deg, rng)
    given_shift_A = shift_A + rng.normal(size=(n, 3)) * config.shift_error_px * a / np.sqrt(3)
    euler = matrix_to_euler(given)
    rows = {"rlnMicrographName": ["TS_01.tomostar"] * n,
            "rlnCoordinateX": [float(x) for x in rng.uniform(0, 1000, n)],
            "rlnCoordinateY": [float(x) for x in rng.uniform(0, 1000, n)],
            "rlnCoordinateZ": [float(x) for x in rng.uniform(0, 300, n)],
            "rlnImageName": names, "rlnCtfImage": ctf_names,
            "rlnAngleRot": [float(x) for x in euler[:, 0]],
            "rlnAngleTilt": [float(x) for x in euler[:, 1]],
            "rlnAnglePsi": [float(x) for x in euler[:, 2]],
            "rlnOriginXAngst": [float(x) for x in given_shift_A[:, 0]],
            "rlnOriginYAngst": [float(x) for x in given_shift_A[:, 1]],
            "rlnOriginZAngst": [float(x) for x in given_shift_A[:, 2]],
            "rlnDefocusU": [float(x) for x in defocus_A],
            "rlnDefocusV": [float(x) for x in defocus_A],
            "rlnOpticsGroup": [1] * n, "rlnRandomSubset": [int(i % 2 + 1) for i in range(n)]}
    _write_star(out / "particles.star", rows, config)
    truth = {"variable": variable, "A": A, "shift_A": shift_A, "given_A": given,
             "given_shift_A": given_shift_A, "defocus_A": defocus_A, "scale": scale,
             "offset": offset, "noise_scale": noise_scale, "noise_sigma": noise_sigma}
    np.savez(out / "truth.npz", **truth)
    return truth
