"""Simulated subtomograms with known structure, poses, classes and hinge values.

Each particle is the ground-truth structure rendered exactly at its pose (atoms at A·r − origin,
RELION's A and origin: the particle centre sits at −origin from the box centre), seen through
its own 3D CTF (per-tilt CTFs with defocus, dose weighting and the missing wedge, gridded from
the tilt scheme), plus noise that lives only where the tilts sample Fourier space (a junk
particle, see ``junk_fraction``, has no density or that of another molecule):

    X(k) = C_i(k) · F[density_i](k) + M(k) · F[white noise σ](k)

with C_i the 3D CTF volume written beside the subtomogram and M the tilt sampling (0 in the
wedge). Particles are streamed in batches: memory does not grow with their number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import ctf_volume
from subtomo.errors import InputError
from subtomo.fourier.grid import centred_irfft, centred_rfft
from subtomo.geometry.euler import euler_to_matrix, matrix_to_euler
from subtomo.geometry.so3 import axis_angle_to_matrix, random_rotations
from subtomo.io import validate
from subtomo.io.mrc import write_ctf_volume, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star import write_particles
from subtomo.simulate.render import render_atoms
from subtomo.simulate.structure import (
    Structure,
    class_variant,
    from_model,
    pseudo_atomic,
    rotated_positions,
)


@dataclass
class SimulationConfig:
    """Parameters of a simulated data set (lengths in Å unless the name says px)."""

    n: int = 1000
    box_px: int = 48
    pixel_size_A: float = 4.0
    n_atoms: int = 4000
    model: str | None = None
    symmetry: str = "C1"
    classes: int = 1
    hinge_max_deg: float = 0.0
    junk_fraction: float = 0.0  # share of particles replaced by noise or another molecule
    atom_sigma_A: float | None = None  # default 0.8 px: sharp, like a well-ordered protein
    tilt_range_deg: float = 60.0
    tilt_step_deg: float = 3.0
    dose_per_tilt: float = 3.0
    order: str = "dose-symmetric"
    defocus_um: tuple[float, float] = (2.5, 4.0)
    noise_sigma: float = 0.0
    shift_sd_px: float = 1.0
    angle_error_deg: float = 8.0  # rms error of the starting poses in particles.star
    shift_error_px: float = 1.0  # rms error of the starting shifts in particles.star
    seed: int = 0
    batch_size: int = 16
    flavour: str = "relion31"
    extra: dict = field(default_factory=dict)

    @property
    def sigma_A(self) -> float:
        return self.atom_sigma_A if self.atom_sigma_A is not None else 0.8 * self.pixel_size_A


@dataclass
class Simulation:
    """Where a simulation put its files, and its ground truth in memory."""

    directory: Path
    particles_star: Path
    truth_star: Path
    truth_maps: list[Path]
    truth: ParticleSet


def tilt_scheme(config: SimulationConfig) -> TiltScheme:
    builders = {"dose-symmetric": TiltScheme.dose_symmetric, "sequential": TiltScheme.sequential,
                "bidirectional": TiltScheme.bidirectional}
    if config.order not in builders:
        raise InputError(None, f"unknown tilt order {config.order!r}; choose from "
                         f"{sorted(builders)}", field="--order")
    validate.tilt_angles(config.tilt_range_deg, None, field="--tilt_range")
    try:
        return builders[config.order](tilt_range_deg=config.tilt_range_deg,
                                      tilt_step_deg=config.tilt_step_deg,
                                      dose_per_tilt=config.dose_per_tilt)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--tilt_step") from None


def check_config(config: SimulationConfig) -> None:
    """Refuse impossible parameters (one line naming the option) before anything is written."""
    validate.positive(config.n, None, field="--n")
    validate.positive(config.box_px, None, field="--box", unit="px")
    validate.positive(config.pixel_size_A, None, field="--angpix", unit="Å")
    validate.in_range(config.tilt_range_deg, 0.0, validate.MAX_TILT_DEG, None,
                      field="--tilt_range", what="", unit="°")
    validate.positive(config.tilt_step_deg, None, field="--tilt_step", unit="°")
    validate.in_range(config.dose_per_tilt, 0.0, math.inf, None, field="--dose_per_tilt",
                      what="", unit="e/Å²")
    validate.in_range(list(config.defocus_um), 0.0, validate.MAX_DEFOCUS_UM, None,
                      field="--defocus", what="", unit="µm")
    if config.defocus_um[0] > config.defocus_um[1]:
        raise InputError(None, "defocus range is reversed (LOW:HIGH)", field="--defocus")
    for name, value in (("--noise", config.noise_sigma), ("--angle_error",
                        config.angle_error_deg), ("--shift_error", config.shift_error_px)):
        validate.in_range(value, 0.0, math.inf, None, field=name, what="")


def build_structure(config: SimulationConfig) -> Structure:
    if config.model:
        if config.symmetry.upper() != "C1":
            raise InputError(config.model, "--sym builds the pseudo-atomic complex; an atomic "
                             "model brings its own symmetry", field="--sym")
        return from_model(config.model)
    return pseudo_atomic(config.n_atoms, box_px=config.box_px, pixel_size_A=config.pixel_size_A,
                         symmetry=config.symmetry, seed=config.seed)


def perturb_rotations(angles_deg: torch.Tensor, rms_deg: float, gen: torch.Generator
                      ) -> torch.Tensor:
    """Angles whose rotations differ from ``angles_deg`` by random rotations of rms ``rms_deg``."""
    n = len(angles_deg)
    axis = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    angle = torch.randn(n, generator=gen, dtype=torch.float64).abs() * rms_deg
    errors = axis_angle_to_matrix(axis, torch.deg2rad(angle))
    return matrix_to_euler(errors @ euler_to_matrix(angles_deg))


def junk_particles(config: SimulationConfig, base: Structure
                   ) -> tuple[np.ndarray, Structure | None]:
    """Which particles are junk (0: the molecule, 1: noise only, 2: another molecule) and that
    other molecule (a pseudo-atomic complex of as many atoms, another seed).

    ``round(junk_fraction * n)`` particles, drawn from their own random stream, so that the
    other draws (poses, classes, noise) are those of the same simulation without junk.
    """
    junk = np.zeros(config.n, dtype=np.int64)
    if not 0 <= config.junk_fraction <= 1:
        raise InputError(None, f"junk fraction must be in [0, 1], not {config.junk_fraction}",
                         field="--junk-fraction")
    count = int(round(config.junk_fraction * config.n))
    if count == 0:
        return junk, None
    rng = np.random.default_rng([config.seed, 7919])
    chosen = rng.permutation(config.n)[:count]
    junk[chosen] = rng.integers(1, 3, count)
    other = pseudo_atomic(len(base.positions_A), box_px=config.box_px,
                          pixel_size_A=config.pixel_size_A, seed=config.seed + 7919)
    return junk, other


def simulate_subtomograms(out_dir: str | Path, config: SimulationConfig,
                          device: str | torch.device = "cpu", progress: bool = True
                          ) -> Simulation:
    """Write subtomograms, CTF volumes, particles.star, truth.star and truth maps to ``out_dir``."""
    out = Path(out_dir)
    check_config(config)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n, box, pixel_size_A = config.n, config.box_px, config.pixel_size_A
    base = build_structure(config)
    scheme = tilt_scheme(config)
    (out / "Subtomograms").mkdir(parents=True, exist_ok=True)

    true_angles = random_rotations(n, gen)
    true_shift_A = torch.randn(n, 3, generator=gen, dtype=torch.float64) * (
        config.shift_sd_px * pixel_size_A)
    classes = torch.randint(1, max(config.classes, 1) + 1, (n,), generator=gen)
    hinge = torch.rand(n, generator=gen, dtype=torch.float64) * config.hinge_max_deg
    defocus_A = torch.empty(n, dtype=torch.float64).uniform_(
        config.defocus_um[0] * 1e4, config.defocus_um[1] * 1e4, generator=gen)
    junk, other = junk_particles(config, base)

    truth_maps = []
    for k in range(1, max(config.classes, 1) + 1):
        variant = class_variant(base, k)
        density = render_atoms(variant.positions_A[None], variant.amplitudes, box, pixel_size_A,
                               config.sigma_A)[0]
        path = out / f"truth_class{k:03d}.mrc"
        write_mrc(path, density, pixel_size_A)
        truth_maps.append(path)

    names = [f"Subtomograms/particle_{i + 1:06d}.mrc" for i in range(n)]
    ctf_names = [f"Subtomograms/particle_{i + 1:06d}_ctf.mrc" for i in range(n)]
    batches = range(0, n, config.batch_size)
    # progress bars only on a terminal (disable=None), so that logs and errors stay clean
    for start in tqdm(batches, desc="simulating subtomograms",
                      disable=None if progress else True,
                      unit="batch"):
        idx = list(range(start, min(start + config.batch_size, n)))
        volumes = []
        for i in idx:  # per particle: its own class / hinge structure (cheap, no voxels)
            variant = class_variant(base, int(classes[i])) if junk[i] != 2 else other
            if config.hinge_max_deg > 0:
                variant = variant.hinged(float(hinge[i]))
            positions = rotated_positions(variant, true_angles[i:i + 1]) - true_shift_A[i]
            volume = render_atoms(positions, variant.amplitudes, box, pixel_size_A, config.sigma_A,
                                  device=device)[0]
            volumes.append(volume if junk[i] != 1 else torch.zeros_like(volume))
        density = torch.stack(volumes)
        weights, sampling = ctf_volume(box, pixel_size_A, scheme, defocus_A[idx].to(torch.float32),
                                       device=device)
        spectrum = centred_rfft(density) * weights
        if config.noise_sigma > 0:
            noise = torch.randn(density.shape, generator=gen, dtype=density.dtype) * (
                config.noise_sigma)
            spectrum = spectrum + centred_rfft(noise.to(device)) * sampling
        subtomograms = centred_irfft(spectrum, box)
        for j, i in enumerate(idx):
            write_mrc(out / names[i], subtomograms[j], pixel_size_A)
            write_ctf_volume(out / ctf_names[i], weights[j], pixel_size_A, layout="relion")

    start_angles = perturb_rotations(true_angles, config.angle_error_deg, gen)
    start_shift_A = true_shift_A + torch.randn(n, 3, generator=gen, dtype=torch.float64) * (
        config.shift_error_px * pixel_size_A / np.sqrt(3))

    def particle_set(angles: torch.Tensor, origins_A: torch.Tensor, truth: bool) -> ParticleSet:
        df = pd.DataFrame({
            "rlnMicrographName": ["sim_TS_01.tomostar"] * n,
            "rlnCoordinateX": coords[:, 0],
            "rlnCoordinateY": coords[:, 1], "rlnCoordinateZ": coords[:, 2],
            "rlnImageName": names, "rlnCtfImage": ctf_names,
            "rlnAngleRot": angles[:, 0].numpy(), "rlnAngleTilt": angles[:, 1].numpy(),
            "rlnAnglePsi": angles[:, 2].numpy(),
            # the content sits at −origin from the centre (centre = coordinate − origin)
            "rlnOriginXAngst": origins_A[:, 0].numpy(), "rlnOriginYAngst": origins_A[:, 1].numpy(),
            "rlnOriginZAngst": origins_A[:, 2].numpy(),
            "rlnDefocusU": defocus_A.numpy(), "rlnDefocusV": defocus_A.numpy(),
            "rlnRandomSubset": (np.arange(n) % 2) + 1,
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        })
        if truth:
            df["rlnClassNumber"] = classes.numpy()
            df["rlnSubtomoHingeDeg"] = hinge.numpy()
            if config.junk_fraction > 0:
                df["rlnSubtomoJunk"] = junk
        optics = pd.DataFrame({
            "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.07], "rlnImagePixelSize": [pixel_size_A],
            "rlnImageSize": [box], "rlnImageDimensionality": [3]})
        return ParticleSet(particles=df, optics=optics, flavour=config.flavour, source=str(out))

    coords = rng.uniform(0, 1000, (n, 3))
    truth = particle_set(true_angles, true_shift_A, truth=True)
    # the particle is at −origin from the box centre: rendered at A·r − shift ⇒ origin = +shift
    start = particle_set(start_angles, start_shift_A, truth=False)
    write_particles(truth, out / "truth.star", config.flavour)
    write_particles(start, out / "particles.star", config.flavour)
    (out / "simulation.json").write_text(json.dumps(asdict(config), indent=2))
    return Simulation(out, out / "particles.star", out / "truth.star", truth_maps, truth)
