"""What ``subtomo hetero train`` reads and derives before training: its options, the particles
with their poses and maps (:func:`read_inputs`), the particle geometry, the validation split,
the consensus map and the automatic mask."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.fourier.grid import lowpass_map, resample_map
from subtomo.io.mrc import read_mrc
from subtomo.io.particle_series import read_particle_input
from subtomo.io.particles import ParticleSet
from subtomo.io.poses import read_poses_pickle
from subtomo.maps.mask import create_mask
from subtomo.refine.outputs import volume_poses, with_poses
from subtomo.refine.reconstruct import image_box, reconstruct

__all__ = ["TrainInputs", "TrainOptions", "auto_mask", "consensus_map", "default_templateres",
           "particle_geometry", "read_inputs", "split_rows", "to_template"]


@dataclass
class TrainOptions:
    """Options of ``subtomo hetero train`` (OPUS-TOMO's names; lengths in Å, angles in °)."""

    zdim: int = 12
    zaffinedim: int = 0
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    beta_control: float = 1.0
    beta: str = "cos"
    beta_cycle: int = 4
    lamb: float = 0.05
    downfrac: float = 0.75
    templateres: int | None = None
    valfrac: float = 0.1
    bfactor: float = 0.0
    ctf: bool = True
    ctfalpha: float = 1.0
    ctfbeta: float = 1.0
    estpose: bool = False
    pose_every: int = 3
    ema: float = 2.0
    offset_range_px: float = 2.0
    seed: int = 0
    tilt_loss: str = "slices"  # 2D stacks: "slices" (per-tilt 2D) or "subtomograms" (3D)

    def check(self) -> None:
        """One-line errors for impossible values (before anything is read or written)."""
        def bad(field_name: str, message: str) -> InputError:
            return InputError(None, message, field=field_name)

        if self.templateres is not None and (self.templateres % 16 or self.templateres < 16):
            raise bad("--templateres", f"{self.templateres} is not a positive multiple of 16")
        if self.zdim < 1:
            raise bad("--zdim", "the latent needs at least one dimension")
        if not 0 < self.downfrac <= 1:
            raise bad("--downfrac", f"must be in (0, 1], not {self.downfrac}")
        if not 0 <= self.valfrac < 1:
            raise bad("--valfrac", f"must be in [0, 1), not {self.valfrac}")
        if not 0 <= self.offset_range_px <= 100:
            raise bad("--offset-range", f"must be in [0, 100] px, not {self.offset_range_px}")
        if self.pose_every < 1:
            raise bad("--pose-every", f"need at least one epoch, not {self.pose_every}")
        if not 0 <= self.ema <= 1000:
            raise bad("--ema", f"must be in [0, 1000] epochs, not {self.ema}")
        if self.epochs < 1 or self.batch_size < 1:
            raise bad("-n/-b", "need at least one epoch and one particle per batch")
        if not self.lr > 0:
            raise bad("--lr", f"the learning rate must be positive, not {self.lr}")
        for name in ("beta_control", "lamb"):
            if getattr(self, name) < 0:
                raise bad("--" + name, f"a weight must not be negative, not "
                          f"{getattr(self, name)}")
        if self.tilt_loss not in ("slices", "subtomograms"):
            raise bad("--tilt-loss", f"'slices' or 'subtomograms', not {self.tilt_loss!r}")
        if self.beta_cycle < 1:
            raise bad("--beta-cycle", f"need at least one epoch per cycle, not {self.beta_cycle}")
        if self.beta != "cos":
            try:
                float(self.beta)
            except ValueError:
                raise bad("--beta", f"'cos' or a number, not {self.beta!r}") from None


@dataclass
class TrainInputs:
    """What training reads: particles, their poses (RELION A and origins in Å, in particle
    order), maps on the particle box (or None: computed) and where they came from."""

    particles: ParticleSet
    matrices: np.ndarray
    shifts_A: np.ndarray
    reference: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    body_masks: list[torch.Tensor] = field(default_factory=list)
    sources: dict = field(default_factory=dict)


def read_inputs(star: str | Path, *, poses: str | Path | None = None,
                ref: str | Path | None = None, mask: str | Path | None = None,
                masks: list[str] | None = None, pixel_size_A: float | None = None,
                datadir: str | Path | None = None, ctf: bool = True,
                tomograms: str | Path | None = None) -> TrainInputs:
    """Read what training needs: the STAR file or optimisation set (image names under
    ``datadir`` if given; a 2D-stack set with its tomograms), poses from it or from a pose
    pickle (``subtomo poses export``), and the maps."""
    ps = read_particle_input(star, tomograms=tomograms, pixel_size_A=pixel_size_A)
    if datadir is not None:
        root = Path(datadir)
        if not root.is_dir():
            raise InputError(root, "not a folder", field="--datadir")
        df = ps.particles.copy()
        for column in ("rlnImageName", "rlnCtfImage"):
            if column in df:
                df[column] = [name if Path(name.split("@")[-1]).is_absolute() else
                              str(root / name.split("@")[-1]) for name in df[column].astype(str)]
        ps = replace(ps, particles=df)
    box, resolved_pixel_size_A = particle_geometry(ps, pixel_size_A)
    if poses is not None:
        if not Path(poses).is_file():
            raise InputError(poses, "file not found", field="--poses")
        try:
            matrices, shifts = read_poses_pickle(poses, box, resolved_pixel_size_A)
        except (ValueError, OSError) as exc:
            raise InputError(poses, str(exc), field="--poses") from None
    else:
        matrices, origins_px = volume_poses(ps, resolved_pixel_size_A)
        shifts = origins_px * resolved_pixel_size_A

    def volume(path: str | Path | None, name: str) -> torch.Tensor | None:
        if path is None:
            return None
        role = "reference" if name == "--ref" else "mask"
        return torch.from_numpy(read_mrc(path, role=role, field=name)[0].astype(np.float32))

    sources = {"poses": str(poses) if poses else None, "--ref": str(ref) if ref else None,
               "--mask": str(mask) if mask else None, "angpix": pixel_size_A,
               "body_masks": [str(m) for m in masks or []],
               "tomograms": str(Path(tomograms).resolve()) if tomograms else None}
    for name in ("--masks",):
        sources[name] = ", ".join(masks or [])
    return TrainInputs(ps, np.asarray(matrices, dtype=np.float64),
                       np.asarray(shifts, dtype=np.float64), volume(ref, "--ref"),
                       volume(mask, "--mask"), [volume(m, "--masks") for m in masks or []],
                       sources)


def default_templateres(box: int, downfrac: float) -> int:
    """OPUS-TOMO's advice, ``D · downfrac / 0.75`` rounded up to a multiple of 16."""
    return max(16, int(math.ceil(box * downfrac / 0.75 / 16)) * 16)


def particle_geometry(ps: ParticleSet, given_pixel_size_A: float | None) -> tuple[int, float]:
    """Box (px) and pixel size (Å) of the particle images."""
    pixel_size_A = (float(given_pixel_size_A) if given_pixel_size_A
                    else float(np.nanmean(ps.pixel_size_A())))
    if not math.isfinite(pixel_size_A) or pixel_size_A <= 0:
        raise InputError(ps.source, "particles have no pixel size; give --angpix",
                         field="rlnImagePixelSize")
    return image_box(ps), pixel_size_A


def to_template(volume: torch.Tensor, template_box: int) -> torch.Tensor:
    """A map on the particle box resampled (Fourier) to the template box, same field of view."""
    return resample_map(volume.float(), template_box)


def split_rows(n: int, valfrac: float, seed: int, path: Path | None) -> np.ndarray:
    """Validation rows: read from ``path`` if it exists (checked), else a seeded random draw."""
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text())
            val = np.asarray(data["val"], dtype=np.int64)
            count = int(data["n"])
        except (ValueError, KeyError, TypeError):
            raise InputError(path, "not a split file (JSON with 'n' and 'val')",
                             field="--split") from None
        if count != n or (len(val) and (val.min() < 0 or val.max() >= n)):
            raise InputError(path, f"split of {count} particles; the input has {n}",
                             field="--split")
        return np.sort(val)
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.permutation(n)[: int(round(valfrac * n))])


def consensus_map(inputs: TrainInputs, pixel_size_A: float, ctf: bool, progress: bool,
                  device: torch.device) -> torch.Tensor:
    """CTF-weighted reconstruction of all particles at the given poses (the decoder's base)."""
    ps = inputs.particles
    n = len(ps)
    posed = with_poses(ps, inputs.matrices, inputs.shifts_A / pixel_size_A, pixel_size_A,
                       np.ones(n),
                       np.zeros(n))
    return reconstruct(posed, ctf=ctf, progress=progress, device=device).map.cpu()


def auto_mask(consensus: torch.Tensor, pixel_size_A: float) -> torch.Tensor:
    """A soft mask from the consensus map: 20 Å low-pass, threshold at 20 % of its maximum,
    extended 2 px with a 3 px soft edge."""
    smooth_A = max(20.0, 3 * pixel_size_A)
    low = lowpass_map(consensus.float(), pixel_size_A, smooth_A)
    return create_mask(low, pixel_size_A, 0.2 * float(low.max()), extend_inimask_px=2,
                       width_soft_edge_px=3)
