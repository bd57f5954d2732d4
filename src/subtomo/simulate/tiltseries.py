"""Simulated tilt series with known structure, geometry, CTF, exposure, motion and deformations.

Particles (the structures of :mod:`subtomo.simulate.structure`: pseudo-atoms or an atomic
model, classes, a hinge) are placed at random in tomograms. For every tilt each particle's
atoms are projected with the true projection matrix (RELION 5 geometry,
:mod:`subtomo.geometry.tilt`) and rendered analytically as 2D Gaussians at their sub-pixel
positions in a patch around the particle (the tomogram is never a 3D volume); the patch is
multiplied in Fourier space by the tilt's CTF at the particle's depth (defocus of the tilt plus
``hand × pixel × depth``, RELION's ``Tomogram::getCtf``), by the exposure filter at the tilt's
pre-exposure and by −1 (raw images show protein dark), and added into the image. White noise of
σ ``noise_sigma`` is added last. Image values are projections of the map on its own scale
(density × voxels along the beam).

Known errors, for tilt-series refinement to find: the images follow the *true* geometry; the
project's ``tomograms.star`` holds it plus per-tilt errors of all five parameters, its
``particles.star`` the positions plus errors. Beam-induced motion: each particle's position in
each tilt is displaced along a 3D trajectory (per exposure step a random velocity field,
accumulated in dose order; the first tilt has none; ``motion_kind`` picks the field, see
:mod:`subtomo.simulate.motion`), written as ``truth/motion.star``. 2D deformations: per tilt,
a smooth displacement field of the image plane (:func:`deformation_offsets`, coefficients in
``truth/deformations.npz``), or RELION's affine ``linear`` model, per tilt or one for the
whole series (:func:`image_deformation` evaluates either).

Written (a RELION 5 project in ``out``): ``tilt_series/<name>.mrcs`` (stacks in table order,
sorted by tilt angle), ``tilt_series/<name>.star``, ``tomograms.star``, ``particles.star``,
``optimisation_set.star``; the truth in ``truth/``: ``tomograms.star`` (+ its per-tilt files),
``particles.star`` (with classes and hinge angles), ``motion.star``, ``deformations.npz``,
``class001.mrc`` …; ``simulation.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from subtomo.ctf.ctf2d import ctf_2d, electron_wavelength_A
from subtomo.ctf.dose import dose_filter
from subtomo.fourier.grid import frequencies_2d
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.so3 import random_rotations
from subtomo.geometry.tilt import project_points
from subtomo.io.mrc import write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import write_particles
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import (
    TomogramSet,
    project_path,
    write_motion,
    write_optimisation_set,
    write_tomogram_set,
)
from subtomo.simulate.motion import beam_motion
from subtomo.simulate.render import render_atoms, render_projected_atoms
from subtomo.simulate.structure import Structure, class_variant
from subtomo.simulate.subtomograms import SimulationConfig, build_structure, tilt_scheme
from subtomo.tomo.deformation import offsets

DEFORMATION_MODES = 3  # cos(π m u) cos(π n v), m, n < 3


@dataclass
class TiltSeriesConfig:
    """A simulated tilt-series project (lengths in Å unless the name says px)."""

    n_tomograms: int = 1
    n_particles: int = 30  # per tomogram
    image_size_px: tuple[int, int] = (320, 320)
    thickness_px: int = 80
    pixel_size_A: float = 10.0
    box_px: int = 32  # box of the structure (and of the truth map)
    n_atoms: int = 1500
    model: str | None = None
    symmetry: str = "C1"
    classes: int = 1
    hinge_max_deg: float = 0.0
    atom_sigma_A: float | None = None  # default 0.8 px
    tilt_range_deg: float = 60.0
    tilt_step_deg: float = 3.0
    dose_per_tilt: float = 3.0
    order: str = "dose-symmetric"
    tilt_axis_deg: float = 0.0  # rlnTomoZRot of every tilt
    defocus_um: tuple[float, float] = (3.0, 4.0)
    defocus_tilt_sd_A: float = 100.0
    astigmatism_A: float = 0.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    hand: float = -1.0
    noise_sigma: float = 0.0
    shift_error_px: float = 0.0
    angle_error_deg: float = 0.0
    position_error_px: float = 0.0
    motion_px: float = 0.0
    motion_scale_px: float = 150.0  # correlation length of the gp and short kinds
    motion_kind: str = "gp"  # gp, gradient or short (subtomo.simulate.motion)
    deformation_px: float = 0.0
    deformation_model: str = "cosine"  # or "linear": RELION's 3-parameter affine model
    deformation_per_tilt: bool = True  # False: one field for the whole tilt series
    seed: int = 0

    @property
    def sigma_A(self) -> float:
        return self.atom_sigma_A if self.atom_sigma_A is not None else 0.8 * self.pixel_size_A

    def structure_config(self) -> SimulationConfig:
        return SimulationConfig(
            n=1, box_px=self.box_px, pixel_size_A=self.pixel_size_A, n_atoms=self.n_atoms,
            model=self.model, symmetry=self.symmetry, tilt_range_deg=self.tilt_range_deg,
            tilt_step_deg=self.tilt_step_deg, dose_per_tilt=self.dose_per_tilt,
            order=self.order, seed=self.seed)


@dataclass
class SimulatedTiltSeries:
    """Where the simulation wrote the project, and its truth in memory."""

    directory: Path
    optimisation_set: Path
    tomograms_star: Path
    particles_star: Path
    truth_tomograms_star: Path
    truth_particles_star: Path
    truth_motion_star: Path
    truth_maps: list[Path]
    truth_tomograms: TomogramSet
    truth_particles: ParticleSet


def deformation_offsets(coefficients: torch.Tensor, xy_px: torch.Tensor,
                        image_size_px: tuple[int, int]) -> torch.Tensor:
    """Image-plane displacements ``(..., 2)`` (px) of a deformation at positions ``xy_px``.

    ``coefficients``: ``(2, 3, 3)`` (x and y displacement, cosine orders m, n) or a batch
    ``(T, 2, 3, 3)`` for positions ``(N, T, 2)``. With u = x / W and v = y / H::

        d(x, y) = Σ_{m, n < 3} c[m, n] cos(π m u) cos(π n v)
    """
    w, h = image_size_px
    orders = torch.arange(DEFORMATION_MODES, dtype=xy_px.dtype, device=xy_px.device)
    cu = torch.cos(math.pi * orders * (xy_px[..., 0:1] / w))  # (..., 3)
    cv = torch.cos(math.pi * orders * (xy_px[..., 1:2] / h))
    c = coefficients.to(xy_px)
    return torch.einsum("...m,...n,...dmn->...d", cu, cv, c)


def image_deformation(coefficients: torch.Tensor, xy_px: torch.Tensor,
                      image_size_px: tuple[int, int]) -> torch.Tensor:
    """Displacements ``(..., 2)`` (px) of a simulated deformation: the cosine fields of
    :func:`deformation_offsets` (coefficients ``(..., 2, 3, 3)``) or RELION's ``linear``
    model (coefficients ``(..., 3)``, :func:`subtomo.tomo.deformation.offsets`)."""
    modes = (2, DEFORMATION_MODES, DEFORMATION_MODES)
    if coefficients.ndim >= 3 and tuple(coefficients.shape[-3:]) == modes:
        return deformation_offsets(coefficients, xy_px, image_size_px)
    return offsets("linear", coefficients, xy_px, image_size_px, (0, 0))


def _random_deformations(n_tilts: int, amplitude_px: float, image_size: tuple[int, int],
                         gen: torch.Generator, model: str = "cosine",
                         per_tilt: bool = True) -> torch.Tensor:
    fields = n_tilts if per_tilt else 1
    if model == "linear":
        coeffs = torch.randn(fields, 3, generator=gen, dtype=torch.float64)
    elif model == "cosine":
        coeffs = torch.randn(fields, 2, DEFORMATION_MODES, DEFORMATION_MODES, generator=gen,
                             dtype=torch.float64)
        coeffs[:, :, 0, 0] = 0.0  # no rigid shift: that is the alignment's job
    else:
        raise ValueError(f"unknown deformation model {model!r}; choose cosine or linear")
    coeffs = coeffs.expand(n_tilts, *coeffs.shape[1:]).clone()
    w, h = image_size
    grid = torch.stack(torch.meshgrid(torch.linspace(0, w, 17, dtype=torch.float64),
                                      torch.linspace(0, h, 17, dtype=torch.float64),
                                      indexing="xy"), -1).reshape(1, -1, 2).expand(n_tilts, -1, -1)
    peak = image_deformation(coeffs[:, None], grid, image_size).norm(dim=-1).amax()
    return coeffs * (amplitude_px / peak) if amplitude_px > 0 else coeffs * 0.0


def _place(n: int, size: tuple[int, int, int], box: int, rng: np.random.Generator
           ) -> np.ndarray:
    """``n`` positions (px) in the tomogram at least ``0.9 box`` apart, ``box`` from the x/y
    edges and half a box from the z faces."""
    low = np.array([box, box, box / 2])
    high = np.array(size, float) - low
    out: list[np.ndarray] = []
    for _ in range(200 * n):
        p = rng.uniform(low, high)
        if all(np.linalg.norm(p - q) >= 0.9 * box for q in out):
            out.append(p)
            if len(out) == n:
                return np.array(out)
    raise ValueError(f"cannot place {n} particles of box {box} px in a {size} px tomogram; "
                     "use fewer particles or larger images")


def _tilt_table(config: TiltSeriesConfig, name: str, stack: str, gen: torch.Generator
                ) -> pd.DataFrame:
    scheme = tilt_scheme(config.structure_config()).sorted_by_angle()
    t = scheme.n_tilts
    defocus = (torch.empty(1, dtype=torch.float64).uniform_(*config.defocus_um, generator=gen)
               * 1e4 + torch.randn(t, generator=gen, dtype=torch.float64)
               * config.defocus_tilt_sd_A).numpy()
    angles = np.array(scheme.tilt_angles_deg)
    return pd.DataFrame({
        "rlnMicrographName": [f"{i + 1}@{stack}" for i in range(t)],
        "rlnTomoNominalStageTiltAngle": angles,
        "rlnTomoNominalTiltAxisAngle": config.tilt_axis_deg,
        "rlnMicrographPreExposure": np.array(scheme.pre_exposure_e_per_A2),
        "rlnDefocusU": defocus + config.astigmatism_A / 2,
        "rlnDefocusV": defocus - config.astigmatism_A / 2,
        "rlnDefocusAngle": 30.0 if config.astigmatism_A else 0.0,
        "rlnTomoXTilt": 0.0, "rlnTomoYTilt": angles, "rlnTomoZRot": config.tilt_axis_deg,
        "rlnTomoXShiftAngst": 0.0, "rlnTomoYShiftAngst": 0.0,
    })


def _render_series(ts: TiltSeries, structures: list[Structure], angles: torch.Tensor,
                   positions_px: torch.Tensor, motion_px: torch.Tensor,
                   deformation: torch.Tensor, config: TiltSeriesConfig,
                   gen: torch.Generator, progress: bool) -> torch.Tensor:
    """The noisy tilt images ``(T, H, W)`` of one tilt series."""
    w, h = ts.image_size_px
    t = ts.n_tilts
    pixel_size_A = ts.pixel_size_A
    mats = ts.matrices()
    lam = electron_wavelength_A(config.voltage_kv)
    delocalisation = lam * config.defocus_um[1] * 1e4 / (2 * pixel_size_A * pixel_size_A)
    size = config.box_px + 2 * (int(math.ceil(delocalisation)) + 6)
    images = torch.zeros(t * h * w, dtype=torch.float64)
    freqs = frequencies_2d(size, pixel_size_A)  # (S, S // 2 + 1, 2) (x, y), 1/Å
    dose = dose_filter(freqs.norm(dim=-1), torch.as_tensor(ts.pre_exposure)[:, None, None])
    trajectories = positions_px[:, None] + motion_px  # (N, T, 3)
    u, v, angle = ts.defocus_at(trajectories, mats)
    centre = project_points(mats, trajectories)[..., :2]  # (N, T, 2)
    centre = centre + image_deformation(deformation, centre, (w, h))
    rotations = euler_to_matrix(angles)
    for i in tqdm(range(len(structures)), desc=f"rendering {ts.name}",
                  disable=None if progress else True, unit="particle"):
        atoms = trajectories[i][None] + (structures[i].positions_A @ rotations[i].T)[:, None] / (
            pixel_size_A)  # (M, T, 3): each tilt with the particle's position in it
        xy = project_points(mats, atoms)[..., :2].transpose(0, 1)  # (T, M, 2)
        xy = xy + image_deformation(deformation[:, None], xy, (w, h))
        origin = torch.round(centre[i]) - size // 2  # (T, 2) patch corner (px)
        patch = render_projected_atoms(xy - origin[:, None], structures[i].amplitudes, size,
                                       config.sigma_A / pixel_size_A)
        ctf = ctf_2d(freqs, u[i, :, None, None], v[i, :, None, None], angle[i, :, None, None],
                     config.voltage_kv, config.cs_mm, config.amplitude_contrast)
        patch = -torch.fft.irfft2(torch.fft.rfft2(patch) * ctf * dose, s=(size, size))
        cols = origin[:, 0, None, None].long() + torch.arange(size)[None, None, :]
        rows = origin[:, 1, None, None].long() + torch.arange(size)[None, :, None]
        inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        index = (torch.arange(t)[:, None, None] * h + rows) * w + cols
        images.index_add_(0, index[inside], patch[inside])
    images = images.view(t, h, w).float()
    if config.noise_sigma > 0:
        images += torch.randn(images.shape, generator=gen) * config.noise_sigma
    return images


def _particle_set(ts_of: list[TiltSeries], positions_px: np.ndarray,
                  angles: np.ndarray, halves: np.ndarray, config: TiltSeriesConfig,
                  classes: np.ndarray | None = None, hinge: np.ndarray | None = None
                  ) -> ParticleSet:
    centred = np.stack([ts.px_to_centred(torch.as_tensor(p)).numpy()
                        for ts, p in zip(ts_of, positions_px, strict=True)])
    counts: dict[str, int] = {}
    particle_names = []
    for ts in ts_of:
        counts[ts.name] = counts.get(ts.name, 0) + 1
        particle_names.append(f"{ts.name}/{counts[ts.name]}")
    df = pd.DataFrame({
        "rlnTomoName": [ts.name for ts in ts_of], "rlnTomoParticleName": particle_names,
        "rlnCenteredCoordinateXAngst": centred[:, 0],
        "rlnCenteredCoordinateYAngst": centred[:, 1],
        "rlnCenteredCoordinateZAngst": centred[:, 2],
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnOriginZAngst": 0.0,
        "rlnOpticsGroup": 1, "rlnRandomSubset": halves,
    })
    if classes is not None:
        df["rlnClassNumber"] = classes
        df["rlnSubtomoHingeDeg"] = hinge
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnSphericalAberration": [config.cs_mm], "rlnVoltage": [config.voltage_kv],
        "rlnAmplitudeContrast": [config.amplitude_contrast],
        "rlnTomoTiltSeriesPixelSize": [config.pixel_size_A],
        "rlnImagePixelSize": [config.pixel_size_A]})
    tomograms = pd.DataFrame([ts.globals for ts in {t.name: t for t in ts_of}.values()])
    return ParticleSet(df, optics, tomograms, flavour="relion5")


def simulate_tiltseries(out_dir: str | Path, config: TiltSeriesConfig, progress: bool = True
                        ) -> SimulatedTiltSeries:
    """Simulate ``config`` into the RELION 5 project ``out_dir`` (see the module docstring)."""
    out = Path(out_dir)
    (out / "tilt_series").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    base = build_structure(config.structure_config())
    truth_maps = _write_truth_maps(base, config, out)
    series = [_simulate_series(index, base, config, out, gen, rng, progress)
              for index in range(config.n_tomograms)]
    all_ts = [s.truth for s in series for _ in range(len(s.positions))]
    positions = np.concatenate([s.positions for s in series])
    angles = np.concatenate([s.angles for s in series])
    halves = (np.arange(len(positions)) % 2) + 1
    truth_ps = _particle_set(all_ts, positions, angles, halves, config,
                             np.concatenate([s.classes for s in series]),
                             np.concatenate([s.hinge for s in series]))
    noisy = positions + rng.normal(0, config.position_error_px, positions.shape)
    given_ps = _particle_set(all_ts, noisy, angles, halves, config)
    paths = _write_project(out, config, series, truth_ps, given_ps)
    true_series = [s.truth for s in series]
    truth_set = TomogramSet({ts.name: ts for ts in true_series}, str(paths["truth_tomograms"]))
    return SimulatedTiltSeries(out, out / "optimisation_set.star", paths["tomograms"],
                               paths["particles"], paths["truth_tomograms"],
                               paths["truth_particles"], paths["motion"], truth_maps,
                               truth_set, truth_ps)


def _write_truth_maps(base: Structure, config: TiltSeriesConfig, out: Path) -> list[Path]:
    """``truth/classNNN.mrc``: the map of each class (rendered on the particle box)."""
    pixel_size_A = config.pixel_size_A
    truth_maps = []
    for k in range(1, max(config.classes, 1) + 1):
        variant = class_variant(base, k)
        density = render_atoms(variant.positions_A[None], variant.amplitudes, config.box_px,
                               pixel_size_A, config.sigma_A)[0]
        truth_maps.append(out / "truth" / f"class{k:03d}.mrc")
        write_mrc(truth_maps[-1], density, pixel_size_A)
    return truth_maps


@dataclass
class _Series:
    """One simulated tilt series: its true geometry and the one given (with per-tilt errors),
    its particles (positions px, ZYZ angles °, classes, hinge angles °), their motion (Å, by
    particle name) and the image deformations."""

    truth: TiltSeries
    given: TiltSeries
    positions: np.ndarray
    angles: np.ndarray
    classes: np.ndarray
    hinge: np.ndarray
    motion_A: dict[str, np.ndarray]
    deformations: np.ndarray


def _series_globals(config: TiltSeriesConfig, name: str) -> dict:
    """The ``tomograms.star`` row of tilt series ``name``."""
    w, h = config.image_size_px
    return {
        "rlnTomoName": name, "rlnVoltage": config.voltage_kv,
        "rlnSphericalAberration": config.cs_mm,
        "rlnAmplitudeContrast": config.amplitude_contrast,
        "rlnMicrographOriginalPixelSize": config.pixel_size_A, "rlnTomoHand": config.hand,
        "rlnTomoTiltSeriesPixelSize": config.pixel_size_A, "rlnTomoSizeX": w,
        "rlnTomoSizeY": h, "rlnTomoSizeZ": config.thickness_px, "rlnTomoImportFractionalDose":
            config.dose_per_tilt, "rlnOpticsGroupName": "opticsGroup1"}


def _simulate_series(index: int, base: Structure, config: TiltSeriesConfig, out: Path,
                     gen: torch.Generator, rng: np.random.Generator, progress: bool
                     ) -> _Series:
    """Tilt series ``index``: tilts, particles (placed, rotated, of a class and hinge angle),
    motion and deformations drawn in this order, the images rendered and written
    (``tilt_series/TS_NN.mrcs``), then the per-tilt errors of the geometry given."""
    pixel_size_A = config.pixel_size_A
    w, h = config.image_size_px
    size = (w, h, config.thickness_px)
    name = f"TS_{index + 1:02d}"
    stack = out / "tilt_series" / f"{name}.mrcs"
    tilts = _tilt_table(config, name, project_path(stack), gen)
    truth = TiltSeries(_series_globals(config, name), tilts, image_size=(w, h))
    positions = torch.from_numpy(_place(config.n_particles, size, config.box_px, rng))
    n = len(positions)
    angles = random_rotations(n, gen)
    classes = torch.randint(1, max(config.classes, 1) + 1, (n,), generator=gen)
    hinge = torch.rand(n, generator=gen, dtype=torch.float64) * config.hinge_max_deg
    structures = []
    for i in range(n):
        variant = class_variant(base, int(classes[i]))
        structures.append(variant.hinged(float(hinge[i])) if config.hinge_max_deg > 0
                          else variant)
    shifts = beam_motion(config.motion_kind, positions, truth.pre_exposure, config.motion_px,
                         config.motion_scale_px, size, gen)
    deform = _random_deformations(truth.n_tilts, config.deformation_px, (w, h), gen,
                                  config.deformation_model, config.deformation_per_tilt)
    images = _render_series(truth, structures, angles, positions, shifts, deform, config,
                            gen, progress)
    write_mrc(stack, images, pixel_size_A, stack=True)

    t = truth.n_tilts
    errors = [torch.randn(t, generator=gen, dtype=torch.float64) * config.angle_error_deg
              for _ in range(3)]
    errors += [torch.randn(t, generator=gen, dtype=torch.float64) * config.shift_error_px
               * pixel_size_A for _ in range(2)]
    given = truth.with_dof(*(p + e for p, e in zip(truth.dof(), errors, strict=True)))
    motion_A = (shifts * pixel_size_A).numpy()
    return _Series(truth, given, positions.numpy(), angles.numpy(), classes.numpy(),
                   hinge.numpy(), {f"{name}/{i + 1}": motion_A[i] for i in range(n)},
                   deform.numpy())


def _write_project(out: Path, config: TiltSeriesConfig, series: list[_Series],
                   truth_ps: ParticleSet, given_ps: ParticleSet) -> dict[str, Path]:
    """The project's STAR files (given geometry) and the truth's (``truth/``: geometry,
    particles, motion, deformations), both optimisation sets and ``simulation.json``."""
    paths = {
        "tomograms": out / "tomograms.star", "particles": out / "particles.star",
        "truth_tomograms": out / "truth" / "tomograms.star",
        "truth_particles": out / "truth" / "particles.star",
        "motion": out / "truth" / "motion.star"}
    write_tomogram_set([s.given for s in series], paths["tomograms"])
    write_tomogram_set([s.truth for s in series], paths["truth_tomograms"])
    write_particles(given_ps, paths["particles"], "relion5")
    write_particles(truth_ps, paths["truth_particles"], "relion5")
    write_motion(paths["motion"], {k: v for s in series for k, v in s.motion_A.items()})
    np.savez(out / "truth" / "deformations.npz",
             **{s.truth.name: s.deformations for s in series})
    write_optimisation_set(out / "optimisation_set.star", particles=paths["particles"],
                           tomograms=paths["tomograms"])
    write_optimisation_set(out / "truth" / "optimisation_set.star",
                           particles=paths["truth_particles"], tomograms=paths["truth_tomograms"],
                           trajectories=paths["motion"])
    (out / "simulation.json").write_text(json.dumps(asdict(config), indent=2))
    return paths
