"""The simulators against implementations that share no code with the package.

The simulators use the package's own 2D CTF, exposure filter, Euler matrices and projection
geometry, and the methods they score use the same code: a convention error in one of those
would pass every other test. Here each is checked against a formula written out from its
source (RELION, CTFFIND4, Grant & Grigorieff 2015) with scipy's rotations, or against
teamtomo's ``torch-ctf`` where it is installed (the ``test`` extra pins it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import affine_transform
from scipy.spatial.transform import Rotation

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.fourier.projector import Projector
from subtomo.geometry.tilt import projection_matrices
from subtomo.io.star import read_particles
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import pseudo_atomic
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

# astigmatic, phase-shifted, Cs, amplitude contrast: every term of the CTF
CTF = dict(defocus_u_A=21000.0, defocus_v_A=17000.0, astigmatism_angle_deg=32.0,
           voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1, phase_shift_deg=40.0)


def _grid(shape_hw: tuple[int, int], pixel_size_A: float) -> torch.Tensor:
    """Full FFT grid ``(H, W, 2)`` of (kx, ky) in 1/Å: x along the columns, y along the rows."""
    ky = torch.fft.fftfreq(shape_hw[0], pixel_size_A, dtype=torch.float64)
    kx = torch.fft.fftfreq(shape_hw[1], pixel_size_A, dtype=torch.float64)
    return torch.stack(torch.broadcast_tensors(kx[None, :], ky[:, None]), dim=-1)


def _ctf_ctffind4(k: torch.Tensor, defocus_u_A, defocus_v_A, astigmatism_angle_deg, voltage_kv,
                  cs_mm, amplitude_contrast, phase_shift_deg) -> torch.Tensor:
    """CTFFIND4 (Rohou & Grigorieff 2015, eq. 1-3), written out here:
    λ = h / sqrt(2 m e V (1 + e V / 2 m c²)) (CODATA constants),
    Δf(θ) = ½ (Δf1 + Δf2 + (Δf1 − Δf2) cos 2(θ − θ_ast)),
    χ = π λ Δf k² − ½ π Cs λ³ k⁴ + φ + arctan(w / sqrt(1 − w²)),
    CTF = −sin(−χ) = sin χ (RELION: ``CTF = −sin γ`` with γ = −χ, so CTF(0) = w > 0)."""
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    volts = voltage_kv * 1e3
    lam_A = h / math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c))) * 1e10
    theta = torch.atan2(k[..., 1], k[..., 0])
    k2 = k[..., 0] ** 2 + k[..., 1] ** 2
    defocus = 0.5 * (defocus_u_A + defocus_v_A + (defocus_u_A - defocus_v_A)
                     * torch.cos(2 * (theta - math.radians(astigmatism_angle_deg))))
    chi = (math.pi * lam_A * defocus * k2 - 0.5 * math.pi * cs_mm * 1e7 * lam_A ** 3 * k2 ** 2
           + math.radians(phase_shift_deg)
           + math.atan(amplitude_contrast / math.sqrt(1 - amplitude_contrast ** 2)))
    return torch.sin(chi)


def test_ctf_2d_matches_the_ctffind4_formula():
    k = _grid((48, 64), 2.0)  # H ≠ W: x and y cannot be swapped unseen
    ours = ctf_2d(k, **CTF)
    expected = _ctf_ctffind4(k, **CTF)
    assert (ours - expected).abs().max() < 2e-3  # λ: RELION's 12.2643247 vs CODATA, 1e-6
    assert ours[0, 0] == pytest.approx(0.1 * math.cos(math.radians(40)) + math.sqrt(
        1 - 0.01) * math.sin(math.radians(40)), abs=1e-12)


def test_ctf_2d_matches_torch_ctf():
    torch_ctf = pytest.importorskip("torch_ctf")
    shape = (48, 64)
    theirs = torch_ctf.calculate_ctf_2d(
        defocus=(CTF["defocus_u_A"] + CTF["defocus_v_A"]) / 2e4,  # µm, positive underfocus
        astigmatism=(CTF["defocus_u_A"] - CTF["defocus_v_A"]) / 2e4,
        astigmatism_angle=CTF["astigmatism_angle_deg"], voltage=CTF["voltage_kv"],
        spherical_aberration=CTF["cs_mm"], amplitude_contrast=CTF["amplitude_contrast"],
        phase_shift=CTF["phase_shift_deg"], pixel_size=2.0, image_shape=shape, rfft=False,
        fftshift=False).double()
    ours = ctf_2d(_grid(shape, 2.0), **CTF)
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max() < 5e-3  # float32 in torch-ctf


def test_dose_filter_matches_grant_grigorieff():
    """Grant & Grigorieff (2015) eq. 3 and the fit of their Fig. 2: Ne(k) = 0.245 k^−1.665 +
    2.81 e/Å² at 300 kV; the amplitude falls as exp(−N / 2Ne)."""
    k = torch.linspace(0.01, 0.25, 50, dtype=torch.float64)
    for exposure in (0.0, 3.0, 40.0, 120.0):
        expected = torch.exp(-exposure / (2 * (0.245 * k ** -1.665 + 2.81)))
        assert torch.allclose(dose_filter(k, exposure), expected, rtol=1e-12, atol=0)
    # the amplitude falls to 1/e at twice the critical exposure, 2 (0.245 · 4^1.665 + 2.81)
    # at 1/4 Å⁻¹
    critical = 0.245 * 4.0 ** 1.665 + 2.81
    k = torch.tensor(0.25, dtype=torch.float64)
    assert float(dose_filter(k, 2 * critical)) == pytest.approx(math.exp(-1), rel=1e-12)


def _relion_A(rot_tilt_psi_deg) -> np.ndarray:
    """RELION's Euler matrix (``Euler_angles2matrix``): A = (Rz(rot) Ry(tilt) Rz(psi))ᵀ, from
    scipy's intrinsic ZYZ rotation."""
    return Rotation.from_euler("ZYZ", rot_tilt_psi_deg, degrees=True).as_matrix().T


def _blobs(box: int) -> np.ndarray:
    """An asymmetric volume (z, y, x): Gaussian blobs of different sizes and weights."""
    z, y, x = np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij")
    volume = np.zeros((box,) * 3)
    for (cx, cy, cz), sigma, weight in (((4, -2, 1), 2.0, 1.0), ((-5, 3, -2), 1.6, 0.7),
                                        ((1, 6, 4), 1.8, 0.5), ((-2, -6, -5), 2.2, 0.8)):
        volume += weight * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
                                  / (2 * sigma ** 2))
    return volume


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (30.0, 50.0, -70.0), (-120.0, 100.0, 15.0),
                                    (75.0, 160.0, 200.0)])
def test_fourier_projection_matches_real_space_rotate_and_sum(angles):
    """RELION projects ``V`` by A as the image ∫ V(Aᵀ r) dz (``Projector::project`` samples
    ``V(Aᵀ k)``): rotate the volume in real space with scipy and sum along z."""
    box = 32
    volume = _blobs(box)
    A = _relion_A(angles)

    def rotate_and_sum(R: np.ndarray) -> np.ndarray:
        """∫ V(R r) dz about the centre voxel; scipy works on (z, y, x) arrays, out[o] =
        in[M o + offset], so R acts with its index order reversed."""
        flip = np.eye(3)[::-1]
        M = flip @ R @ flip
        centre = np.full(3, box // 2, dtype=float)
        return affine_transform(volume, M, offset=centre - M @ centre, order=3).sum(axis=0)

    def low_pass(x: np.ndarray) -> np.ndarray:
        ky, kx = np.fft.fftfreq(box)[:, None], np.fft.rfftfreq(box)[None, :]
        return np.fft.irfft2(np.fft.rfft2(x) * (np.hypot(kx, ky) < 0.3), s=(box, box))

    spectra = Projector(torch.from_numpy(volume), pad=2).spectra(torch.from_numpy(A))[0]
    central = spectra[0]  # kz = 0: the 2D spectrum of the projection (centred: rfftn ∘ ifftshift)
    image = low_pass(torch.fft.fftshift(torch.fft.irfft2(central, s=(box, box))).numpy())
    expected = low_pass(rotate_and_sum(A.T))
    assert np.corrcoef(image.ravel(), expected.ravel())[0, 1] >= 0.999
    # ≤ 5 % (the trilinear gridding's bias at grid points, A = I, is the largest)
    assert np.linalg.norm(image - expected) < 0.06 * np.linalg.norm(expected)
    if angles != (0.0, 0.0, 0.0):  # the other convention, V(A r), is far off
        wrong = low_pass(rotate_and_sum(A))
        assert np.corrcoef(image.ravel(), wrong.ravel())[0, 1] < 0.9


def _relion5_projection(xtilt, ytilt, zrot, shift_x_A, shift_y_A, pixel_size_A, tomo_size,
                        image_size
                        ) -> np.ndarray:
    """RELION 5 ``Tomogram::setProjectionMatrix``: P = S(shift / pixel) S(image centre) Rz Ry Rx
    S(−specimen centre), the centres ``int(size / 2)``, active right-handed rotations."""
    def translation(v) -> np.ndarray:
        m = np.eye(4)
        m[:3, 3] = v
        return m

    def rotation(axis, deg) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = Rotation.from_rotvec(np.radians(deg) * np.asarray(axis, float)).as_matrix()
        return m

    specimen = np.array([int(s / 2) for s in tomo_size], dtype=float)
    image_centre = np.array([int(image_size[0] / 2), int(image_size[1] / 2), 0.0])
    return (translation([shift_x_A / pixel_size_A, shift_y_A / pixel_size_A, 0.0])
            @ translation(image_centre) @ rotation([0, 0, 1], zrot) @ rotation([0, 1, 0], ytilt)
            @ rotation([1, 0, 0], xtilt) @ translation(-specimen))


def test_projection_matrices_match_relion5():
    rng = np.random.default_rng(3)
    params = [rng.uniform(-5, 5, 6), rng.uniform(-60, 60, 6), rng.uniform(-95, 95, 6),
              rng.uniform(-40, 40, 6), rng.uniform(-40, 40, 6)]
    tomo_size, image_size, pixel_size_A = (301, 257, 61), (301, 257), 7.5  # odd: int(size / 2)
    ours = projection_matrices(*(torch.from_numpy(p) for p in params), pixel_size_A, tomo_size,
                               image_size).numpy()
    for t in range(6):
        expected = _relion5_projection(*(p[t] for p in params), pixel_size_A, tomo_size, image_size)
        assert np.abs(ours[t] - expected).max() < 1e-9


def test_simulated_tilt_images_show_particles_where_relion5_projects_them(tmp_path):
    """The simulator's images against the written-out RELION 5 geometry: no package code for
    the projection matrix, the Euler matrix or the centred → tomogram-pixel conversion
    (``rlnCenteredCoordinate*Angst / pixel + size / 2``, RELION's
    ``ParticleSet::getParticleCoordDecenteredPixel``). CTF ≡ 1 and no exposure, so each image
    is minus the projection of the rotated atoms; odd sizes and a tilt axis at −12°."""
    config = TiltSeriesConfig(image_size_px=(161, 131), thickness_px=41, pixel_size_A=10.0,
                              box_px=20, n_atoms=300, tilt_range_deg=60.0, tilt_step_deg=30.0,
                              dose_per_tilt=0.0, defocus_um=(0.0, 0.0), defocus_tilt_sd_A=0.0,
                              cs_mm=0.0, amplitude_contrast=1.0, tilt_axis_deg=-12.0,
                              n_particles=1, seed=4)
    sim = simulate_tiltseries(tmp_path / "ts", config, progress=False)
    ts = sim.truth_tomograms["TS_01"]
    images = ts.read_images().double()
    row = read_particles(sim.truth_particles_star).particles.iloc[0]
    structure = pseudo_atomic(config.n_atoms, box_px=config.box_px,
                              pixel_size_A=config.pixel_size_A, seed=config.seed)
    pixel_size_A, box = config.pixel_size_A, 32
    size = (161, 131, 41)
    position = np.array([row[f"rlnCenteredCoordinate{a}Angst"] for a in "XYZ"]) / pixel_size_A + (
        np.array(size) / 2.0)
    A = _relion_A([row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"]])
    tilts = ts.tilts
    for t in range(len(tilts)):
        P = _relion5_projection(*(float(tilts[c].iloc[t]) for c in (
            "rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
            "rlnTomoYShiftAngst")), pixel_size_A, size, config.image_size_px)
        xy = (P @ np.append(position, 1.0))[:2]
        corner = np.round(xy) - box // 2
        atoms = structure.positions_A.numpy() @ (P[:3, :3] @ A).T  # Å, tilt frame
        atoms[:, :2] += (xy - np.round(xy)) * pixel_size_A
        volume = render_atoms(torch.from_numpy(atoms)[None], structure.amplitudes, box,
                              pixel_size_A,
                              config.sigma_A, dtype=torch.float64)[0]
        expected = -volume.sum(0)  # along the beam
        x0, y0 = int(corner[0]), int(corner[1])
        assert 0 <= x0 and x0 + box <= size[0] and 0 <= y0 and y0 + box <= size[1]
        patch = images[t, y0:y0 + box, x0:x0 + box]
        assert (patch - expected).abs().max() < 2e-3 * expected.abs().max(), t
