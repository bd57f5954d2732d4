"""CTF-weighted reconstruction of subtomograms with known poses (``relion_reconstruct --3d_rot``).

For particle i with RELION matrix A_i, origin o_i (px) and 3D CTF C_i, the data are
X_i(k) = C_i(k) V(A_iᵀ k) e^{+2πi k·o_i} + noise (content at −o_i). We undo the shift, then grid
C_i X_i into Fourier space at A_iᵀ k (and A_i R_g for every symmetry operator R_g) with weights
C_i², and divide: V = Σ C X / (Σ C² + 1/τ²). With half sets, τ² comes from their FSC
(RELION: SNR = FSC / (1 − FSC) per shell, 1/τ² = mean weight / SNR); without, a small floor.

Parity with ``relion_reconstruct --3d_rot --ctf``: on the same STAR file our map is as close to
the truth at every shell; RELION flattens the noise in the box corners and so does
:class:`subtomo.fourier.projector.Backprojector` (its module docstring has the term-by-term
comparison, bench/RESULTS.md the figures). Every map of refine, classify and initial model goes
through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from subtomo import memory
from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc, resolution_at, shell_resolution_A
from subtomo.fourier.grid import lowpass_map
from subtomo.fourier.projector import Backprojector
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io import validate
from subtomo.io.files import resolve
from subtomo.io.mrc import read_mrc_header, write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star_text import write_star
from subtomo.refine.images import check_files, iterate_batches


@dataclass
class Reconstruction:
    """A map (and its half maps, FSC and resolution when reconstructed in halves)."""

    map: torch.Tensor
    pixel_size_A: float
    n_particles: int
    half1: torch.Tensor | None = None
    half2: torch.Tensor | None = None
    fsc: torch.Tensor | None = None
    resolution_A: float | None = None
    denominator: torch.Tensor | None = None  # per box shell: mean of W + 1/τ² of ``map``
    half1_unfil: torch.Tensor | None = None  # unregularised half maps (RELION's ``_unfil``)
    half2_unfil: torch.Tensor | None = None

    def unfiltered_halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The half maps for post-processing: unregularised where reconstructed so."""
        return (self.half1 if self.half1_unfil is None else self.half1_unfil,
                self.half2 if self.half2_unfil is None else self.half2_unfil)


def image_box(ps: ParticleSet) -> int:
    """Box size (px) of the particles: ``rlnImageSize``, else the first image's header."""
    if "rlnImageSize" in ps.optics:
        return int(ps.optics["rlnImageSize"].iloc[0])
    star_dir = Path(ps.source).parent if ps.source else None
    shape, _ = read_mrc_header(resolve(str(ps.particles["rlnImageName"].iloc[0]), star_dir))
    return shape[-1]


def half_sets(ps: ParticleSet, seed: int = 0) -> np.ndarray:
    """Gold-standard half of each particle: ``rlnRandomSubset`` or a seeded random split."""
    if "rlnRandomSubset" in ps.particles:
        halves = ps.particles["rlnRandomSubset"].to_numpy()
        if not set(np.unique(halves)) <= {1, 2}:
            raise InputError(ps.source, "rlnRandomSubset must be 1 or 2", field="rlnRandomSubset")
        return halves
    rng = np.random.default_rng(seed)
    halves = np.ones(len(ps), dtype=np.int64)
    halves[rng.permutation(len(ps))[: len(ps) // 2]] = 2
    return halves


def backproject(
    ps: ParticleSet, rows: np.ndarray, *, box: int, ctf: bool, sym: str = "C1",
    pad: int = 2, batch_size: int = 16, device: str | torch.device = "cpu",
    progress: bool = True, desc: str = "backprojecting",
) -> Backprojector:
    """Accumulate Σ C·X and Σ C² of particles ``rows`` (shift-corrected, symmetry-expanded)."""
    ops = symmetry_operators(sym, dtype=torch.float32, device=device)
    matrices, origins_A = ps.volume_poses()  # in the particles' volumes (their frames)
    matrices = matrices.to(device=device, dtype=torch.float32)
    origins_px = torch.as_tensor(origins_A / ps.pixel_size_A()[:, None],
                                 dtype=torch.float32, device=device)
    bp = Backprojector(box, pad=pad, device=device)
    total = (len(rows) + batch_size - 1) // batch_size
    # content sits at −origin: the batches are translated by +origin to centre it
    for batch in tqdm(iterate_batches(ps, rows, box=box, ctf=ctf, batch_size=batch_size,
                                      device=device, shifts_px=origins_px), total=total,
                      desc=desc, disable=None if progress else True, unit="batch"):
        index = torch.as_tensor(batch.rows, device=device)
        A = matrices[index]
        insert_symmetric(bp, batch.spectra, A, batch.ctf, ops)
    return bp


def _tau2_from_fsc(bp_half: Backprojector, fsc_curve: torch.Tensor, box: int,
                   pad: int) -> torch.Tensor:
    """τ² per box shell on the Backprojector's per-coefficient scale W = pad³·weight.

    RELION's Wiener term: SNR = FSC / (1 − FSC) of the half maps, σ²/τ² = ⟨W⟩_shell / SNR,
    so the division by W + 1/τ² leaves signal where the data are strong and damps the rest.
    """
    f = fsc_curve.to(device=bp_half.device, dtype=torch.float64).clamp(1e-3, 0.999)
    return (f / (1 - f)) / shell_mean_weight(bp_half, box, pad).clamp(min=1e-12)


def shell_mean_weight(bp: Backprojector, box: int, pad: int) -> torch.Tensor:
    """⟨W⟩ per box shell (``box // 2 + 1``), W = pad³·weight: the CTF² sum per coefficient
    (computed slab by slab over the padded grid)."""
    n_shells = box // 2 + 1
    big = pad * box
    r2_max = 3 * (big // 2) ** 2
    # box shell of each |q|^2, as round(float32(|q|) / pad)
    radius = torch.arange(r2_max + 1, device=bp.device, dtype=torch.float64).sqrt()
    lookup = (radius.to(torch.float32) / pad).round().long()
    sums = torch.zeros(n_shells, dtype=torch.float64, device=bp.device)
    counts = torch.zeros_like(sums)
    for _, _, weight, r2 in bp.slabs():
        shells = lookup[r2].flatten()
        inside = shells < n_shells
        index = shells[inside]
        values = (weight * float(pad**3)).flatten()[inside].to(torch.float64)
        sums.index_add_(0, index, values)
        counts += torch.bincount(index, minlength=n_shells).to(torch.float64)
    return sums / counts.clamp(min=1)


def reconstruct(
    ps: ParticleSet,
    *,
    ctf: bool = True,
    sym: str = "C1",
    halves: bool = False,
    subset: int | None = None,
    maxres_A: float | None = None,
    pad: int = 2,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seed: int = 0,
    max_memory_gib: float | None = None,
) -> Reconstruction:
    """Reconstruct a map (Å units: ``maxres_A``) from particles with known poses.

    Particles stream from disk in batches of at most ``batch_size`` that fit the memory
    budget ``max_memory_gib`` (GiB; ``None``: automatic) beside the back-projectors, so
    memory does not grow with the number of particles."""
    try:
        symmetry_operators(sym)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from None
    pixel_sizes_A = ps.pixel_size_A()
    if len(ps) == 0:
        raise InputError(ps.source, "no particles selected")
    if not np.all(np.isfinite(pixel_sizes_A)):
        raise InputError(ps.source, "particles have no pixel size", field="rlnImagePixelSize")
    validate.positive(pixel_sizes_A, ps.source, field="rlnImagePixelSize", what="pixel size",
                      unit="Å", rows=np.arange(1, len(ps) + 1))
    pixel_size_A = float(pixel_sizes_A[0])
    box = image_box(ps)
    validate.positive(box, ps.source, field="rlnImageSize", what="box size", unit="px")
    split = half_sets(ps, seed)
    rows_all = np.arange(len(ps))
    if subset is not None:
        rows_all = rows_all[split == subset]
        if len(rows_all) == 0:
            raise InputError(ps.source, f"half set {subset} is empty", field="rlnRandomSubset")
    check_files(ps, rows_all, ctf)
    reserved = ((2 if halves else 1) * memory.backprojector_bytes(box, pad)
                + memory.reconstruction_bytes(box, pad))
    batch_size = memory.streaming_batch(batch_size, box, ctf, max_memory_gib, device, reserved)
    kwargs = dict(box=box, ctf=ctf, sym=sym, pad=pad, batch_size=batch_size, device=device,
                  progress=progress)

    return reconstruct_rows(lambda rows, desc: backproject(ps, rows, desc=desc, **kwargs),
                            rows_all, split, halves=halves, pixel_size_A=pixel_size_A, pad=pad,
                            maxres_A=maxres_A, source=ps.source)


def reconstruct_rows(backproject_rows, rows_all: np.ndarray, split: np.ndarray, *, halves: bool,
                     pixel_size_A: float, pad: int, maxres_A: float | None,
                     source: str | None) -> Reconstruction:
    """The map of particles ``rows_all``, from ``backproject_rows(rows, desc)`` (a filled
    :class:`Backprojector`): one back-projection, or the two half sets of ``split`` through
    :func:`gold_standard`; low-passed to ``maxres_A`` when given."""
    if not halves:
        volume = backproject_rows(rows_all, "backprojecting").reconstruct()
        if maxres_A:
            volume = lowpass_map(volume, pixel_size_A, maxres_A)
        return Reconstruction(volume, pixel_size_A, len(rows_all))
    bps = []
    for h in (1, 2):
        rows = rows_all[split[rows_all] == h]
        if len(rows) == 0:
            raise InputError(source, f"half set {h} is empty", field="rlnRandomSubset")
        bps.append(backproject_rows(rows, f"half {h}"))
    result = gold_standard(bps[0], bps[1], pixel_size_A, pad)
    joined = result.map if not maxres_A else lowpass_map(result.map, pixel_size_A, maxres_A)
    result.map, result.n_particles = joined, len(rows_all)
    return result


def insert_symmetric(bp: Backprojector, spectra: torch.Tensor, A: torch.Tensor,
                     ctf: torch.Tensor | None, ops: torch.Tensor,
                     max_radius_px: float | None = None) -> None:
    """Insert a batch at ``A`` and at every symmetry-related pose ``A R_g`` (frequencies up
    to ``max_radius_px`` Fourier pixels; all by default)."""
    for op in ops:  # ≤ 60 operators, each a batched insertion
        bp.insert(spectra, A @ op, ctf, max_radius_px)


def gold_standard(bp1: Backprojector, bp2: Backprojector, pixel_size_A: float,
                  pad: int, tau2_fudge: float = 1.0) -> Reconstruction:
    """Half maps with τ² from their FSC, the FSC, its 0.143 resolution and the joined map.

    As RELION: the FSC (and resolution) is that of the unregularised half maps (also
    returned, RELION's ``_unfil`` maps); τ² for the half maps comes from it, τ² for the
    joined map from the FSC expected of the whole set, √(2F / (1 + F)) (RELION's
    ``is_whole_instead_of_half``). ``tau2_fudge`` multiplies τ² (RELION's T: > 1 trusts the
    data more). ``bp1`` is merged with ``bp2`` (it then holds both halves)."""
    box = bp1.box
    unfil = [b.reconstruct() for b in (bp1, bp2)]
    curve = fsc(unfil[0], unfil[1])
    tau2 = tau2_fudge * _tau2_from_fsc(bp1, curve, box, pad)
    half_maps = [b.reconstruct(tau2=tau2) for b in (bp1, bp2)]
    bp1.merge(bp2)
    whole = curve.to(torch.float64).clamp(min=1e-3)
    whole = torch.sqrt(2 * whole / (1 + whole))
    tau2_joined = tau2_fudge * _tau2_from_fsc(bp1, whole, box, pad)
    joined = bp1.reconstruct(tau2=tau2_joined)
    denominator = shell_mean_weight(bp1, box, pad) + 1.0 / tau2_joined.clamp(min=1e-30)
    return Reconstruction(joined, pixel_size_A, 0, half_maps[0], half_maps[1], curve,
                          resolution_at(curve, box, pixel_size_A), denominator,
                          unfil[0], unfil[1])


def empty_class(box: int, pixel_size_A: float, device: torch.device | str) -> Reconstruction:
    """A class that no particle joined: a zero map with no resolution."""
    zero = torch.zeros(box, box, box, device=device)
    return Reconstruction(zero, pixel_size_A, 0, zero, zero, torch.zeros(box // 2 + 1),
                          box * pixel_size_A)


def reconstruct_classes(bps: list[list[Backprojector]], pixel_size_A: float, pad: int,
                        tau2_fudge: float) -> list[Reconstruction]:
    """Each class's map from its two half back-projectors (τ² from their FSC times
    ``tau2_fudge``); a class without particles in both halves gives a zero map."""
    recons = []
    for pair in bps:
        if min(float(bp.weight.sum()) for bp in pair) <= 0:
            recons.append(empty_class(pair[0].box, pixel_size_A, pair[0].device))
        else:
            recons.append(gold_standard(pair[0], pair[1], pixel_size_A, pad, tau2_fudge))
    return recons


def write_fsc_outputs(result: Reconstruction, map_path, halves: bool = True) -> None:
    """Beside ``map_path``: ``_fsc.star``, ``_fsc.png`` and (``halves``) ``_half1/2.mrc`` (the
    unregularised half maps when the result has them)."""
    from subtomo.report.plots import plot_fsc  # start-up: matplotlib, 1.5 s, only for plots

    map_path = Path(map_path)
    stem = map_path.with_suffix("")
    if halves:  # unregularised, as RELION's for post-processing (their FSC is result.fsc)
        for h, half in enumerate(result.unfiltered_halves(), 1):
            write_mrc(f"{stem}_half{h}.mrc", half, result.pixel_size_A)
    box = result.map.shape[-1]
    curve = result.fsc.cpu().numpy()
    res = shell_resolution_A(box, result.pixel_size_A).cpu().numpy()
    table = pd.DataFrame({
        "rlnSpectralIndex": np.arange(len(curve)),
        "rlnResolution": np.where(np.isfinite(res) & (res > 0), 1 / res, 0.0),
        "rlnAngstromResolution": res,
        "rlnFourierShellCorrelation": curve,
    })
    general = {"rlnFinalResolution": result.resolution_A}
    if halves:
        general |= {"rlnUnfilteredMapHalf1": f"{stem.name}_half1.mrc",
                    "rlnUnfilteredMapHalf2": f"{stem.name}_half2.mrc"}
    write_star({"general": general, "fsc": table}, f"{stem}_fsc.star")
    plot_fsc({"half maps": result.fsc.cpu()}, box, result.pixel_size_A, f"{stem}_fsc.png",
             title=f"{map_path.name}: {result.resolution_A:.2f} Å at FSC 0.143")
