"""``subtomo hetero eval-vol``: maps decoded at latent points (KMeans centres, points along a
principal component), written as numbered series ``referenceI.mrc`` (0-based, as OPUS-TOMO's
``eval_vol``), ready for ChimeraX's ``vseries``.

The map at a latent point ``z`` is the model's ``M (V_0 + s Δ(z))`` with its rigid bodies
moved by ``z``'s dynamics latent (:mod:`subtomo.hetero.model`), in the reference frame, on the
template grid, Fourier-resampled to ``--apix`` over the same field of view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.fourier.grid import resample_map
from subtomo.hetero.analysis import analysis_dir
from subtomo.hetero.checkpoints import (
    checkpoint_path,
    load_checkpoint,
    options_from_config,
    read_config,
)
from subtomo.hetero.forward import Boxes, sample_model
from subtomo.hetero.model import HeteroVAE
from subtomo.io.mrc import write_mrc

__all__ = ["eval_vol", "load_model", "volumes_at"]

KINDS = ("kmeans", "pc")


@dataclass
class LoadedModel:
    model: HeteroVAE
    boxes: Boxes
    config: dict
    state: dict


def load_model(run_dir: str | Path, epoch: int, device: str | torch.device = "cpu"
               ) -> LoadedModel:
    """The network of ``weights.N.pt`` with its maps (consensus, mask, bodies) restored."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path = checkpoint_path(run_dir, epoch)
    if not path.is_file():
        done = sorted(int(p.name.split(".")[1]) for p in run_dir.glob("weights.*.pt")
                      if p.name.split(".")[1].isdigit())
        have = f"checkpoints of epochs {done[0]}–{done[-1]}" if done else "no checkpoint"
        raise InputError(path, f"no checkpoint for epoch {epoch} ({have})", field="EPOCH")
    state = load_checkpoint(path, field="EPOCH")
    options = options_from_config(config)
    boxes = Boxes.from_dict(config["boxes"])
    t = boxes.template_box
    bodies = len(config.get("masks", []))
    model = HeteroVAE(enc_box=boxes.enc_box, template_box=t, zdim=options.zdim,
                      zaffinedim=options.zaffinedim, consensus=torch.zeros(t, t, t),
                      mask=torch.zeros(t, t, t),
                      body_masks=torch.zeros(bodies, t, t, t) if bodies else None,
                      template_pixel_size_A=boxes.pixel(t))
    model.load_state_dict(state["model"])
    return LoadedModel(model.to(device).eval(), boxes, config, state)


def volumes_at(loaded: LoadedModel, z: np.ndarray | torch.Tensor, batch: int = 8
               ) -> torch.Tensor:
    """Maps (K, T, T, T) in the reference frame at latent points ``z`` (K, latent dims)."""
    model, boxes = loaded.model, loaded.boxes
    t = boxes.template_box
    device = model.consensus.device
    z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device)
    if z.ndim != 2 or z.shape[1] != model.zdim + model.zaffinedim:
        raise InputError(None, f"latent points of dimension {tuple(z.shape)}; the model has "
                         f"{model.zdim + model.zaffinedim}", field="z")
    out = []
    with torch.no_grad():
        for start in range(0, len(z), batch):
            zb = z[start:start + batch]
            maps, _ = model.maps(zb)
            if model.bodies is not None:  # the bodies moved in the reference frame
                eye = torch.eye(3, device=device).expand(len(zb), 3, 3)
                maps = sample_model(model, maps, zb, eye, torch.zeros(len(zb), 3,
                                    device=device), t, boxes.pixel(t))
            out.append(maps.cpu())
    return torch.cat(out)


def eval_vol(run_dir: str | Path, epoch: int, kind: str, number: int, *,
             pixel_size_A: float | None = None, flip: bool = False,
             device: str | torch.device = "cpu") -> list[Path]:
    """Decode the KMeans centres of ``analyze.N/kmeansK`` (``kind`` "kmeans", ``number`` K)
    or the points along ``analyze.N/pcP`` (``kind`` "pc", ``number`` P) into
    ``referenceI.mrc`` beside them, at ``pixel_size_A`` Å (default the particles'); ``flip`` mirrors
    the hand. Returns the paths written."""
    # matplotlib 0.4 s of 1.7 s importing subtomo.hetero.select (which imports this module and
    # never plots), measured on the shared 2-core machine at load 3
    from subtomo.report.plots import plot_class_slices  # start-up: matplotlib 0.4 s, see above

    if kind not in KINDS:
        raise InputError(None, f"unknown kind {kind!r}; choose kmeans or pc", field="KIND")
    folder = analysis_dir(run_dir, epoch) / f"{kind}{number}"
    points_file = folder / ("centers.txt" if kind == "kmeans" else "z_values.txt")
    loaded = load_model(run_dir, epoch, device)
    if not points_file.is_file():
        raise InputError(points_file, f"not found: run 'subtomo hetero analyze {run_dir} "
                         f"{epoch}' with --ksample {number} (kmeans) or --pcs ≥ {number} "
                         "(pc) first", field="KIND")
    z = np.atleast_2d(np.loadtxt(points_file))
    boxes = loaded.boxes
    out_pixel_size_A = float(pixel_size_A) if pixel_size_A else boxes.pixel_size_A
    if out_pixel_size_A <= 0:
        raise InputError(None, f"--apix must be positive, not {out_pixel_size_A}", field="--apix")
    box_out = max(2, int(round(boxes.box * boxes.pixel_size_A / out_pixel_size_A / 2)) * 2)
    maps = volumes_at(loaded, z)
    written = []
    slices = []
    for i, vol in enumerate(maps):
        out = resample_map(vol, box_out)
        if flip:
            out = torch.flip(out, dims=(0,))
        path = folder / f"reference{i}.mrc"
        write_mrc(path, out, boxes.box * boxes.pixel_size_A / box_out)
        written.append(path)
        slices.append(out)
    plot_class_slices(slices, folder / "references.png",
                      titles=[f"{kind}{number} #{i}" for i in range(len(slices))])
    return written
