"""Subtomograms and their 3D CTF volumes from tilt series (``relion_tomo_subtomo``, Warp).

Per tilt series, one sparse gather operator takes every particle's per-tilt crops (2D centred
spectra from :mod:`subtomo.tomo.crops`: sub-pixel phase, contrast flip, map scale) to its 3D half
spectrum on a ``D``-voxel grid in the tomogram frame (RELION's
``FourierBackprojection::backprojectSlice_forward_with_multiplicity`` spreads each 2D pixel
trilinearly instead; here each voxel gathers): a voxel ``k`` takes from tilt ``t`` (rows ``u_t, v_t,
n_t`` of its rotation) the bilinear interpolation of the crop spectrum at ``(k·u_t, k·v_t)`` with
the tent weight ``τ = max(0, 1 − |k·n_t|)``, and the sum is divided by ``max(Σ_t τ, 1)``. The result
is a subtomogram whose spectrum is ``C(k) · V(k)``, ``V`` the particle on the map's scale and ``C``
its 3D CTF: exactly the gridded ``CTF × exposure`` of :class:`subtomo.ctf.volume.CtfGridder` with
the same pairs, tents and normalisation, at each particle's depth in each tilt and over the tilts it
is seen in. This is the pair (subtomogram, CTF volume) that ``relion_reconstruct --ctf`` / RELION
3.0 / Warp and our ``reconstruct`` and ``refine`` expect (``rlnCtfDataAreCtfPremultiplied = 0``).

The operator is a real CSR matrix (``torch.sparse.mm``, on any device) acting on the real and
imaginary parts of all crops of a batch at once (two matrices, because values read at ``−k`` of
an rfft are conjugated): batched over particles and tilts, no loop per tilt or voxel; the CTF
volumes of the batch are one :class:`subtomo.ctf.volume.CtfGridder` call on the same pairs, and
the files are written on a background thread while the next batch is computed. With
``pad2d = 2`` the crops are zero-padded to twice their size (finer Fourier sampling, after
dividing by the bilinear kernel's transform), so the interpolation error is small; with 1 it is
fastest.

Subtomogram frames (RELION 4/5 ``rlnTomoSubtomogramRot/Tilt/Psi``, matrix ``A_sub``): a
subtomogram is cut in its particle's subtomogram frame, as RELION 5.0.1's
``relion_tomo_subtomo`` does without ``--apply_orientations`` (``programs/subtomo.cpp`` ~l. 770:
``projPart[f] = projCut[f] * d4Matrix(A)``, ``A = particleSet.getSubtomogramMatrix(part_id)``):
voxel ``y`` is the tomogram point ``A_sub y``, so tilt ``t`` is gathered with the rotation
``R_t · A_sub`` and the volume is ``V_sub(y) = V(A_sub y)``, its CTF volume likewise. The
particles.star keeps the frames and the relative ``rlnAngle*`` and ``rlnOrigin*`` (the pose in
the volume: ``particle_set.cpp``, ``getMatrix3x3 = A_sub · A_particle``, ``getPosition``
subtracts ``A_sub · origin``), which ``reconstruct`` and ``refine`` use as they are. The frames
differ per particle, so the batch's operator is block diagonal, one block of ``R_t · A_sub`` per
particle, built once per batch (without frames: once per tilt series; on one CPU thread of the
shared machine, 20 particles of 21 tilts at box 48 extract in 1.4 s against 0.3 s without
frames). RELION 3.x flavours
(``--relion30``, ``relion31``, Warp) have no frame and compose it into the angles: there the
volumes are cut in the tomogram frame.

``--2d_stacks`` writes RELION 5's pseudo-subtomograms as 2D stacks instead: per particle the
visible tilts' crops multiplied by ``CTF × exposure`` (and −1), as ``_stack2d.mrcs``.

``--premultiplied`` writes RELION 5's 3D pseudo-subtomograms (``relion_tomo_subtomo``'s default,
``rlnCtfDataAreCtfPremultiplied 1``): the crops ``Y_t`` (``--b`` px, tapered to RELION's soft
circle) times ``c_t = CTF × exposure`` gathered without normalisation by the same operator
(:class:`~subtomo.ctf.slice_gather.SliceGather`, as :mod:`subtomo.refine.series` does for 2D
stacks) onto the ``--crop`` grid, ``B = Σ_t τ_t c_t Y_t`` (real space in ``_data.mrc``), and
``_weights.mrc`` holding ``W = Σ_t τ_t c_t²`` (FFTW half spectrum, z y x) above the
multiplicity ``M = Σ_t τ_t`` along z, voxel size 1 / pixel size, as RELION writes it.
``reconstruct`` (:mod:`subtomo.refine.images`) then solves ``Σ_i B_i / Σ_i W_i``, where the CTF's
sign changes across tilts never cancel, unlike ``Σ_i C_i X_i / Σ_i C_i²`` of the normalised pair
(``X = Σ τ Y / max(Σ τ, 1)``, ``C = Σ τ c / max(Σ τ, 1)``): on the bench's standard project the
true-geometry map reaches mean FSC to Nyquist 0.944 against the truth (normalised 0.922,
RELION's files 0.935). The weights match RELION's within 3 % (RELION splats each 2D pixel
trilinearly; we interpolate each voxel's slice); the data's scale is not RELION's (its FFT
normalisations), which no map depends on. RELION 5 reads them in ``relion_refine`` only;
RELION 3.1's ``relion_reconstruct`` misreads the stacked weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from subtomo.ctf.slice_gather import SliceGather, padded_spectra
from subtomo.errors import InputError
from subtomo.fourier.grid import soft_sphere
from subtomo.io.files import BackgroundWriter, undone_on_input_error
from subtomo.io.mrc import write_ctf_volume, write_mrc
from subtomo.io.particles import COORD_CENTRED_A, COORD_PX, ORIGIN_A, ParticleSet
from subtomo.io.star import write_particles
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import TomogramSet, project_path
from subtomo.tomo.particles import CropBatch, for_each_batch, output_pixel_size_A

__all__ = ["FRAMELESS_FLAVOURS", "ExtractOptions", "ExtractResult", "extract_subtomograms",
           "select_tilts"]

FRAMELESS_FLAVOURS = ("relion30", "relion31", "warp")  # no rlnTomoSubtomogram*: tomogram frame


@dataclass
class ExtractOptions:
    """Options of :func:`extract_subtomograms` (px at the output pixel size; Å; e/Å²).
    ``invert``: multiply what is written by −1 (the crops are already flipped to white
    protein; this flips them back)."""

    box: int = 48
    crop: int | None = None
    pixel_size_A: float | None = None
    max_dose: float | None = None
    max_tilts: int | None = None
    normalise: bool = False
    bg_radius_px: float | None = None
    recenter: bool = False
    stacks_2d: bool = False
    premultiplied: bool = False
    flavour: str = "relion5"
    ctf_layout: str = "relion"
    pad2d: int = 1
    invert: bool = False
    batch_size: int = 32
    device: str = "cpu"


@dataclass
class ExtractResult:
    """The written particle set and what happened."""

    particles: ParticleSet
    star: Path
    written: int
    skipped: int
    pixel_size_A: float


def select_tilts(ts: TiltSeries, max_dose: float | None, max_tilts: int | None) -> np.ndarray:
    """Tilts with pre-exposure ≤ ``max_dose`` and among the ``max_tilts`` least exposed."""
    dose = ts.pre_exposure
    keep = np.ones(ts.n_tilts, bool) if max_dose is None else dose <= max_dose
    if max_tilts is not None:
        order = np.argsort(dose, kind="stable")
        keep &= np.isin(np.arange(ts.n_tilts), order[:max_tilts])
    return keep


def _normalise(volumes: Tensor, radius: float) -> Tensor:
    """RELION's ``--norm``: zero mean and unit σ outside a sphere of ``radius`` px."""
    box = volumes.shape[-1]
    outside = ~soft_sphere(box, 2 * radius, 0.0, volumes.device, torch.bool).reshape(-1)
    values = volumes.reshape(volumes.shape[0], -1)[:, outside]
    mean, std = values.mean(1), values.std(1).clamp_min(1e-12)
    return (volumes - mean[:, None, None, None]) / std[:, None, None, None]


def _particle_names(ps: ParticleSet) -> list[str]:
    if "rlnTomoParticleName" in ps.particles:
        return list(ps.particles["rlnTomoParticleName"].astype(str))
    names = ps.tomo_names()
    counts: dict[str, int] = {}
    out = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        out.append(f"{name}/{counts[name]}")
    return out


def _recentred(ps: ParticleSet) -> ParticleSet:
    """Coordinates moved to the particle centres (coordinate − A_subtomogram · origin);
    origins 0."""
    df = ps.particles.copy()
    shifts = ps.tomogram_shifts_A()
    if ps.has_centred_coordinates():
        for i, label in enumerate(COORD_CENTRED_A):
            df[label] = df[label].to_numpy(float) - shifts[:, i]
    else:
        pixel_size_A = ps.coordinate_pixel_size_A()
        for i, label in enumerate(COORD_PX):
            df[label] = df[label].to_numpy(float) - shifts[:, i] / pixel_size_A
    for label in ORIGIN_A:
        df[label] = 0.0
    return replace(ps, particles=df)


def _write_subtomograms(files: list[tuple[Path, Path, int]], volumes: np.ndarray,
                        weights: np.ndarray, pixel_size_A: float, layout: str) -> None:
    for data_path, ctf_path, j in files:
        write_mrc(data_path, volumes[j], pixel_size_A)
        if layout == "stacked":  # RELION 5 writes the weights' voxel size as 1 / pixel size
            write_mrc(ctf_path, weights[j], 1.0 / pixel_size_A)
        else:
            write_ctf_volume(ctf_path, weights[j], pixel_size_A, layout=layout)


def _write_stack_files(stacks: list[tuple[Path, np.ndarray]], pixel_size_A: float) -> None:
    for path, images in stacks:
        write_mrc(path, images, pixel_size_A, stack=True)


@undone_on_input_error("out_dir")
def extract_subtomograms(particles: ParticleSet, tomograms: TomogramSet, out_dir: str | Path,
                         options: ExtractOptions, *, motion: dict[str, np.ndarray] | None = None,
                         motion_source: str | Path | None = None,
                         progress: bool = True) -> ExtractResult:
    """Write ``Subtomograms/<tomogram>/<n>_data.mrc`` + ``_ctf.mrc`` (or ``_stack2d.mrcs``) and
    ``particles.star`` into ``out_dir``; returns the particle set written. 2D stacks name the
    tomograms (and ``motion_source``, the trajectories' file) they were cut with in the general
    block, so that later geometry re-centres their crops without re-extraction."""
    o = options
    if o.flavour in FRAMELESS_FLAVOURS:  # RELION 3.x: frames composed, cut in the tomogram's
        particles = particles.without_subtomogram_angles()
    crop, pixel_size_A, first_pixel_size_A = _checked(o, particles, tomograms)
    out = Path(out_dir)
    folder = out / "Subtomograms"
    files = _BatchFiles(o, crop, pixel_size_A, _particle_names(particles), folder,
                        project_path(folder), len(particles))
    files.frames = particles.subtomogram_matrices()
    def tilts(ts: TiltSeries) -> np.ndarray:
        files.selected[ts.name] = select_tilts(ts, o.max_dose, o.max_tilts)
        return files.selected[ts.name]

    with BackgroundWriter() as writer:
        for_each_batch(particles, tomograms, files.size2d, pixel_size_A,
                       lambda batch: files.write(batch, writer), motion=motion, tilts=tilts,
                       ctf=o.stacks_2d or o.premultiplied, circle_crop=o.premultiplied,
                       apply_origins=o.recenter, batch_size=o.batch_size,
                       device=o.device, progress=progress, desc="extracting")
    result, done = _written_set(particles, tomograms, o, files, crop, pixel_size_A,
                                first_pixel_size_A, motion_source if motion else None)
    star = out / "particles.star"
    write_particles(result, star, o.flavour)
    result.source = str(star)
    return ExtractResult(result, star, int(done.sum()), int((~done).sum()), pixel_size_A)


def _checked(o: ExtractOptions, particles: ParticleSet, tomograms: TomogramSet
             ) -> tuple[int, float, float]:
    """The crop (px), the output pixel size (Å) and the pixel size of the first particle's
    tomogram (Å); one-line errors for impossible options."""
    crop = o.crop or o.box
    if o.box < 8 or not 8 <= crop <= o.box:
        raise InputError(None, "need --b ≥ 8 and 8 ≤ --crop ≤ --b", field="--b")
    if o.bg_radius_px is not None and o.bg_radius_px >= crop / 2:
        raise InputError(None, f"--bg_radius {o.bg_radius_px:g} px leaves no background: it "
                         f"must be less than half the box ({crop / 2:g} px)", field="--bg_radius")
    if o.crop and o.crop % 2:
        raise InputError(None, f"--crop {o.crop} px must be even", field="--crop")
    if o.premultiplied and (o.stacks_2d or o.normalise):
        flag = "--2d_stacks" if o.stacks_2d else "--norm"
        raise InputError(None, f"--premultiplied and {flag} exclude each other (pseudo-"
                         "subtomograms are never normalised)", field="--premultiplied")
    if o.pad2d not in (1, 2):
        raise InputError(None, "--pad2d must be 1 or 2", field="--pad2d")
    pixel_size_A, tilt_pixel_size_A = output_pixel_size_A(particles, tomograms, o.pixel_size_A)
    return crop, pixel_size_A, tilt_pixel_size_A


class _BatchFiles:
    """Writes the files of each batch of crops (on the background writer) and records the
    names the STAR file gives them (None: the particle is seen in no tilt)."""

    def __init__(self, o: ExtractOptions, crop: int, pixel_size_A: float, labels: list[str],
                 folder: Path, named: str, n: int) -> None:
        self.o, self.crop, self.pixel_size_A, self.labels = o, crop, pixel_size_A, labels
        self.folder, self.named = folder, named  # named: how the STAR file names the folder
        self.image_names: list[str | None] = [None] * n
        self.ctf_names: list[str | None] = [None] * n
        self.visible_frames: list[str | None] = [None] * n
        self.gathers: dict[str, SliceGather] = {}
        self.selected: dict[str, np.ndarray] = {}  # tilts in use per tilt series (all tilts)
        self.frames: Tensor | None = None  # (n, 3, 3) subtomogram frames A_sub, if any
        self.size2d = o.box if o.stacks_2d or o.premultiplied else crop
        self.padded = self.size2d * o.pad2d
        self.sign = -1.0 if o.invert else 1.0

    def write(self, batch: CropBatch, writer: BackgroundWriter) -> None:
        """Subtomograms and CTF volumes (or 2D stacks) of the particles seen in ``batch``."""
        o, crop, labels, folder, named = self.o, self.crop, self.labels, self.folder, self.named
        crops, ts = batch.crops, batch.ts
        seen = crops.visible.any(1)
        if o.stacks_2d:
            self._write_stacks(batch, seen, writer)
            return
        gather = self._gather(batch)
        spectra = crops.spectra * crops.ctf if o.premultiplied else crops.spectra
        if o.pad2d > 1:
            spectra = padded_spectra(spectra, self.size2d, self.padded)
        volumes = gather.volumes(spectra) * self.sign
        u, v, angle = (x.float() for x in ts.defocus_at(batch.positions_px))
        weights = gather.ctf((u + v) / 2, astigmatism_A=u - v, astigmatism_angle_deg=angle,
                             active=crops.visible)
        weights = weights.reshape(-1, crop, crop, crop // 2 + 1)
        if o.premultiplied:  # RELION 5's weights file: W above the multiplicity M, along z
            weights = torch.cat([weights, gather.multiplicity(crops.visible)], dim=1)
        if o.normalise:
            volumes = _normalise(volumes, o.bg_radius_px or 0.75 * crop / 2)
        volumes, weights = volumes.cpu().numpy(), weights.cpu().numpy()
        files = []
        for j, row in enumerate(batch.rows):
            if not bool(seen[j]):
                continue
            ctf_name = f"{labels[row]}_{'weights' if o.premultiplied else 'ctf'}.mrc"
            files.append((folder / f"{labels[row]}_data.mrc", folder / ctf_name, j))
            self.image_names[row] = f"{named}/{labels[row]}_data.mrc"
            self.ctf_names[row] = f"{named}/{ctf_name}"
        layout = "stacked" if o.premultiplied else o.ctf_layout
        writer.submit(_write_subtomograms, files, volumes, weights, self.pixel_size_A, layout)

    def _gather(self, batch: CropBatch) -> SliceGather:
        """The gather operator of the batch: of its tilt series (one kept at a time), or, with
        subtomogram frames, of the batch's particles (rotations ``R_t · A_sub``, one block per
        particle: the volumes are cut in the subtomogram frame)."""
        ts = batch.ts
        if self.frames is not None:
            frames = self.frames[torch.as_tensor(batch.rows)].to(batch.rotations)
            return self._operator(batch, batch.rotations[None] @ frames[:, None])
        if ts.name not in self.gathers:
            self.gathers.clear()
            self.gathers[ts.name] = self._operator(batch, batch.rotations)
        return self.gathers[ts.name]

    def _operator(self, batch: CropBatch, frames: Tensor) -> SliceGather:
        ts = batch.ts
        return SliceGather(
            self.crop, self.pixel_size_A, frames, batch.prepared.pixel_size_A, self.padded,
            torch.as_tensor(ts.pre_exposure).float(), voltage_kv=ts.voltage_kv,
            cs_mm=ts.cs_mm, amplitude_contrast=ts.amplitude_contrast,
            normalise=not self.o.premultiplied, squared_ctf=self.o.premultiplied)

    def _write_stacks(self, batch: CropBatch, seen: Tensor, writer: BackgroundWriter) -> None:
        """RELION 5's 2D stacks: the visible tilts' crops × ``CTF × exposure``."""
        o, crop, labels, folder, named = self.o, self.crop, self.labels, self.folder, self.named
        crops = batch.crops
        images = torch.fft.fftshift(torch.fft.irfft2(crops.spectra * crops.ctf,
                                                     s=(o.box, o.box)), dim=(-2, -1)) * self.sign
        start = o.box // 2 - crop // 2
        images = images[..., start:start + crop, start:start + crop]
        stacks = []
        for j, row in enumerate(batch.rows):
            if not bool(seen[j]):
                continue
            vis = crops.visible[j]
            stacks.append((folder / f"{labels[row]}_stack2d.mrcs", images[j][vis].cpu().numpy()))
            self.image_names[row] = f"{named}/{labels[row]}_stack2d.mrcs"
            flags = np.zeros(len(self.selected[batch.ts.name]), dtype=int)
            flags[self.selected[batch.ts.name]] = vis.cpu().numpy()  # over all tilts, as RELION
            self.visible_frames[row] = "[" + ",".join(str(int(b)) for b in flags) + "]"
        writer.submit(_write_stack_files, stacks, self.pixel_size_A)


def _written_set(particles: ParticleSet, tomograms: TomogramSet, o: ExtractOptions,
                 files: _BatchFiles, crop: int, pixel_size_A: float, first_pixel_size_A: float,
                 motion_source: str | Path | None = None) -> tuple[ParticleSet, np.ndarray]:
    """The particle set of what was written (particles seen in no tilt left out; recentred
    with ``--recenter``) with its optics, and which input rows it keeps."""
    done = np.array([name is not None for name in files.image_names])
    ps = _recentred(particles) if o.recenter else particles
    df = ps.particles.copy()
    df["rlnImageName"] = files.image_names
    if o.stacks_2d:
        df["rlnTomoVisibleFrames"] = files.visible_frames
    else:
        df["rlnCtfImage"] = files.ctf_names
    if "rlnTomoParticleName" not in df:
        df["rlnTomoParticleName"] = files.labels
    df = df.loc[done].reset_index(drop=True)
    optics = ps.optics.copy()
    optics["rlnImagePixelSize"] = pixel_size_A
    optics["rlnImageSize"] = crop
    optics["rlnImageDimensionality"] = 2 if o.stacks_2d else 3
    optics["rlnTomoSubtomogramBinning"] = pixel_size_A / first_pixel_size_A
    optics["rlnCtfDataAreCtfPremultiplied"] = int(o.stacks_2d or o.premultiplied)
    general = {"rlnTomoSubTomosAre2DStacks": int(o.stacks_2d)}
    if o.stacks_2d and tomograms.source:  # the geometry the crops were cut with (particle_series)
        general["rlnTomoTomogramsFile"] = project_path(Path(tomograms.source))
        if motion_source is not None:
            general["rlnTomoTrajectoriesFile"] = project_path(Path(motion_source))
    result = replace(ps, particles=df, optics=optics, general=general,
                     tomograms=tomograms.global_table())
    return result, done
