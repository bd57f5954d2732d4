"""tomoDRGN's tilt-series inputs (``subtomo export tomodrgn``): a WarpTools particle series.

What ``tomodrgn backproject_voxel`` / ``train_vae`` read from an optimisation set (tomoDRGN at
commit e19eae9, ``starfile.TomoParticlesStarfile`` and ``dataset.TomoParticlesMRCData``, read
from its source, not copied):

- auto-detection compares every block's labels, in order, with WarpTools' (or its RELION
  list) *exactly*: one more column (``rlnRandomSubset``, ``rlnCenteredCoordinateXAngst``) and
  the set is refused. A RELION 5 set as RELION or ``subtomo extract --2d_stacks`` writes it is
  therefore not read: it counts its positions in centred Å (tomoDRGN reads
  ``rlnCoordinateX/Y/Z``), its stacks hold one image per *visible* tilt (tomoDRGN indexes a
  stack by tilt, ``rlnTomoVisibleFrames`` choosing which to read) and its tilt-series STAR
  files carry angles, not ``rlnTomoProjX/Y/Z/W``. This module writes WarpTools' layout
  (``ts_export_particles --2d``, e.g. ``tests/data/warptools_70s``), which our readers read too
  (:mod:`subtomo.io.tomograms`, :mod:`subtomo.io.particle_series`):
- ``tomodrgn_optimisation_set.star`` (tomoDRGN wants ``_optimisation_set`` in the name)
  naming ``particles.star`` and ``tomograms.star``;
- ``particles.star``: ``data_general`` (``rlnTomoSubTomosAre2DStacks 1``), ``data_optics``
  (one group per tomogram: image pixel and size, ``rlnCtfDataAreCtfPremultiplied``, the tilt
  series' pixel, binning), ``data_particles``: ``rlnCoordinateX/Y/Z`` in the images' pixels
  (``rlnImagePixelSize``; the particle's centre, origins applied, so ``rlnOrigin*Angst`` are
  0), the particle's angles in the tomogram frame, one stack per particle and its
  ``rlnTomoVisibleFrames`` over all tilts of its series; rows grouped by tomogram (tomoDRGN
  gathers poses and CTFs tomogram by tomogram but images in row order);
- ``tomograms.star`` (RELION 4 style): ``data_global`` (placeholder
  ``rlnTomoTiltSeriesName``, sizes in tilt-series px, hand in Warp's meaning, optics) and per
  tilt series one row per tilt: rotation-only ``rlnTomoProjX/Y/Z/W`` (``R_t``; tomoDRGN's
  pose of image ``t`` of particle ``i`` is ``R_t A_i``, as ours), defocus at the tomogram
  centre, Warp's weight ``cos(tilt)`` as ``rlnCtfScalefactor`` (tomoDRGN takes the tilt from
  it) and the pre-exposure;
- ``Subtilts/<tomogram>/<n>.mrcs``: one image per tilt of the series, in table order (zeros
  where the particle is not seen or the tilt not selected), each centred on its particle,
  protein white. Default: NOT CTF-premultiplied (``backproject_voxel`` phase-flips them with
  its CTF); ``premultiplied``: × CTF × exposure, as RELION 5 (tomoDRGN then applies no CTF;
  its CTF sign is ours × −1, so such data are read with ``--uninvert-data``).

``rlnTomoHand`` is written as minus ours, Warp's meaning, which tomoDRGN follows: with ``−1``
its defocus at depth is the centre's plus the depth ``(R_t (p − c))_z``, ours (RELION's) with
hand +1, exactly; with ``+1`` it mirrors the position through the mid-plane and the rotation's
last row (``D R_t D``), giving the centre's minus ``r_31 x + r_32 y − r_33 z``: ours with hand
−1 (RELION's usual) plus ``2 r_33 z``, ``z`` the particle's height above the tomogram's
mid-plane (at most the thickness in Å; writing −1 instead would err by twice the whole depth,
``x`` and ``y`` terms included). ``tests/tomo/test_export_tomodrgn.py`` compares tomoDRGN's
poses and CTFs with ours image by image. Our reader, like RELION, reads any WarpTools file's
hand literally (:mod:`subtomo.io.tomograms`): reading this export back, its defocus at depth has
the other sign (no change in the FSC of the test's set, 10 Å pixels). tomoDRGN ignores
``rlnTomoDefocusSlope`` and trajectories (their shifts are in the crops' centring).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.errors import InputError
from subtomo.geometry.euler import matrix_to_euler
from subtomo.io.files import BackgroundWriter, undone_on_input_error
from subtomo.io.mrc import write_mrc
from subtomo.io.particles import ParticleSet
from subtomo.io.star_text import write_star
from subtomo.io.tomograms import TomogramSet
from subtomo.tomo.extract import select_tilts
from subtomo.tomo.particles import CropBatch, for_each_batch, output_pixel_size_A

__all__ = ["OUTPUTS", "OPTICS", "PARTICLES", "TomodrgnExport", "export_tomodrgn",
           "tomodrgn_command"]

OUTPUTS = ("tomodrgn_optimisation_set.star", "particles.star", "tomograms.star", "Subtilts/*")
# WarpTools' labels, in WarpTools' order: tomoDRGN's auto-detection wants exactly these
OPTICS = ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnSphericalAberration", "rlnVoltage",
          "rlnTomoTiltSeriesPixelSize", "rlnCtfDataAreCtfPremultiplied",
          "rlnImageDimensionality", "rlnTomoSubtomogramBinning", "rlnImagePixelSize",
          "rlnImageSize", "rlnAmplitudeContrast")
PARTICLES = ("rlnTomoName", "rlnTomoParticleId", "rlnCoordinateX", "rlnCoordinateY",
             "rlnCoordinateZ", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
             "rlnTomoParticleName", "rlnOpticsGroup", "rlnImageName", "rlnOriginXAngst",
             "rlnOriginYAngst", "rlnOriginZAngst", "rlnTomoVisibleFrames")
GLOBAL = ("rlnTomoName", "rlnTomoTiltSeriesName", "rlnTomoFrameCount", "rlnTomoSizeX",
          "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoHand", "rlnOpticsGroupName",
          "rlnTomoTiltSeriesPixelSize", "rlnVoltage", "rlnSphericalAberration",
          "rlnAmplitudeContrast", "rlnTomoImportFractionalDose")
TILTS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW", "rlnDefocusU",
         "rlnDefocusV", "rlnDefocusAngle", "rlnCtfScalefactor", "rlnMicrographPreExposure")
PLACEHOLDER = "dummy_tiltseries.mrc"  # WarpTools' name: no tilt series stands behind the file


@dataclass
class TomodrgnExport:
    """What was written and how tomoDRGN should read it."""

    optimisation_set: Path
    n_particles: int
    n_images: int
    box: int
    pixel_size_A: float
    premultiplied: bool
    skipped: int = 0


def _row_string(values: np.ndarray) -> str:
    return "[" + ",".join(f"{float(v):.9g}" for v in values) + "]"


def _tilt_table(ts) -> pd.DataFrame:
    """A tilt series' rows as WarpTools writes them (rotation-only matrices, module doc)."""
    rot = ts.matrices()[:, :3, :3].numpy()
    u, v, angle = ts.defocus()
    table = {label: [_row_string([*rot[t, i], 0.0]) for t in range(ts.n_tilts)]
             for i, label in enumerate(TILTS[:3])}
    table["rlnTomoProjW"] = ["[0,0,0,1]"] * ts.n_tilts
    table.update(rlnDefocusU=u, rlnDefocusV=v, rlnDefocusAngle=angle,
                 rlnCtfScalefactor=np.cos(np.radians(ts.nominal_tilt_deg)),
                 rlnMicrographPreExposure=ts.pre_exposure)
    return pd.DataFrame(table)[list(TILTS)]


def _global_row(ts, optics_name: str) -> dict:
    g = ts.globals
    size = ts.tomo_size_px
    dose = np.diff(np.sort(ts.pre_exposure))
    return _labelled(GLOBAL, (ts.name, PLACEHOLDER, ts.n_tilts, *size, -ts.hand, optics_name,
                              ts.pixel_size_A, ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast,
                              float(g.get("rlnTomoImportFractionalDose",
                                          np.median(dose) if len(dose) else 0.0))))


def _labelled(labels: tuple[str, ...], values: tuple) -> dict:
    return dict(zip(labels, values, strict=True))


class _Stacks:
    """Per particle, one image per tilt of its series (zeros where not seen) and its row."""

    def __init__(self, out: Path, box: int, pixel_size_A: float, premultiplied: bool,
                 selected: dict[str, np.ndarray], writer: BackgroundWriter) -> None:
        self.out, self.box, self.pixel_size_A = out, box, pixel_size_A
        self.premultiplied, self.selected, self.writer = premultiplied, selected, writer
        self.rows: list[dict] = []
        self.groups: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.skipped = 0

    def add(self, batch: CropBatch) -> None:
        ts, crops = batch.ts, batch.crops
        spectra = crops.spectra * crops.ctf if self.premultiplied else crops.spectra
        images = torch.fft.fftshift(torch.fft.irfft2(spectra, s=(self.box, self.box)),
                                    dim=(-2, -1)).cpu().numpy()
        visible = crops.visible.cpu().numpy()
        keep = self.selected[ts.name]
        angles = matrix_to_euler(batch.matrices.cpu().to(torch.float64)).numpy()
        # the centre (origins applied), averaged over tilts where trajectories move it
        centre = batch.positions_px.mean(1).cpu().numpy() * ts.pixel_size_A / self.pixel_size_A
        group = self.groups.setdefault(ts.name, len(self.groups) + 1)
        stacks = []
        for j in range(len(batch.rows)):
            if not visible[j].any():
                self.skipped += 1
                continue
            n = self.counts[ts.name] = self.counts.get(ts.name, 0) + 1
            name = f"Subtilts/{ts.name}/{ts.name}_{n:06d}.mrcs"
            full = np.zeros((len(keep), self.box, self.box), np.float32)
            flags = np.zeros(len(keep), int)
            full[keep] = images[j] * visible[j][:, None, None]
            flags[keep] = visible[j]
            stacks.append((self.out / name, full))
            self.rows.append(_labelled(PARTICLES, (
                ts.name, n, *(float(x) for x in centre[j]), *(float(a) for a in angles[j]),
                f"{ts.name}/{n}", group, name, 0.0, 0.0, 0.0,
                "[" + ",".join(str(int(f)) for f in flags) + "]")))
        self.writer.submit(_write_stacks, stacks, self.pixel_size_A)


def _write_stacks(stacks: list[tuple[Path, np.ndarray]], pixel_size_A: float) -> None:
    for path, images in stacks:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mrc(path, images, pixel_size_A, stack=True)


@undone_on_input_error("out_dir")
def export_tomodrgn(particles: ParticleSet, tomograms: TomogramSet, out_dir: str | Path, *,
                    box: int, pixel_size_A: float | None = None, premultiplied: bool = False,
                    max_dose: float | None = None, max_tilts: int | None = None,
                    motion: dict[str, np.ndarray] | None = None, batch_size: int = 32,
                    device: str | torch.device = "cpu", progress: bool = True
                    ) -> TomodrgnExport:
    """Every particle seen in a tilt, cut from its tilt series (``box`` px at ``pixel_size_A``,
    default the tilt series'), written into ``out_dir`` as a WarpTools particle series
    (module docstring)."""
    pixel, _ = output_pixel_size_A(particles, tomograms, pixel_size_A)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected: dict[str, np.ndarray] = {}

    def select(ts) -> np.ndarray:
        selected[ts.name] = select_tilts(ts, max_dose, max_tilts)
        return selected[ts.name]

    with BackgroundWriter() as writer:
        stacks = _Stacks(out, box, pixel, premultiplied, selected, writer)
        for_each_batch(particles, tomograms, box, pixel, stacks.add, motion=motion,
                       tilts=select, ctf=premultiplied, apply_origins=True,
                       batch_size=batch_size, device=device, progress=progress,
                       desc="exporting")
    if not stacks.rows:
        raise InputError(particles.source, "no particle is visible in any tilt image")
    series = [tomograms[name] for name in stacks.groups]
    groups = list(stacks.groups.values())
    optics = pd.DataFrame([_labelled(OPTICS, (
        group, f"opticsGroup{group}", ts.cs_mm, ts.voltage_kv, ts.pixel_size_A,
        int(premultiplied), 2, pixel / ts.pixel_size_A, pixel, box, ts.amplitude_contrast))
        for ts, group in zip(series, groups, strict=True)])
    write_star({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics,
                "particles": pd.DataFrame(stacks.rows)[list(PARTICLES)]},
               out / "particles.star")
    globals_ = pd.DataFrame([_global_row(ts, f"opticsGroup{g}")
                             for ts, g in zip(series, groups, strict=True)])
    write_star({"global": globals_, **{ts.name: _tilt_table(ts) for ts in series}},
               out / "tomograms.star")
    # names relative to the set's folder, where tomoDRGN looks for them
    write_star({"": {"rlnTomoParticlesFile": "particles.star",
                     "rlnTomoTomogramsFile": "tomograms.star"}}, out / OUTPUTS[0])
    n_images = sum(r["rlnTomoVisibleFrames"].count("1") for r in stacks.rows)
    return TomodrgnExport(out / OUTPUTS[0], len(stacks.rows), n_images, box, pixel,
                          premultiplied, stacks.skipped)


def tomodrgn_command(result: TomodrgnExport, output: str = "backproject/map.mrc") -> str:
    """The ``tomodrgn backproject_voxel`` line for the export."""
    line = f"tomodrgn backproject_voxel {result.optimisation_set} --output {output}"
    return line + (" --uninvert-data" if result.premultiplied else "")
