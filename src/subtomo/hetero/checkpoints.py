"""The files of a training folder: ``config.json``, ``log.tsv``, the latents ``z.N.npy`` and
the checkpoints ``weights.N.pt`` of each finished epoch, and the maps a run saved; written by
``hetero train``, read back by ``--continue``, ``analyze``, ``eval-vol`` and ``select``."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.hetero.inputs import TrainInputs, TrainOptions
from subtomo.io.files import atomic_path
from subtomo.io.mrc import read_mrc
from subtomo.io.particles import ParticleSet

__all__ = ["CONFIG", "LOG", "LOG_COLUMNS", "checkpoint_path", "epochs_done", "latents_path",
           "load_checkpoint", "options_from_config", "read_config", "save_epoch", "saved_inputs",
           "write_json"]

CONFIG = "config.json"
LOG = "log.tsv"
LOG_COLUMNS = ("epoch", "train_loss", "train_rec", "train_kl", "train_prior", "val_rec",
               "val_kl", "beta", "wall_s", "cpu_s")


def write_json(data: dict, path: Path) -> None:
    """``data`` as indented JSON into ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def read_config(run_dir: Path) -> dict:
    """The ``config.json`` of the training folder ``run_dir``."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InputError(run_dir, f"not a training folder (no {CONFIG})", field="DIR")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError(path, "not a JSON file") from None


def options_from_config(config: dict) -> TrainOptions:
    """The options of a saved run; a run saved before ``offset_range_px`` existed did not
    centre its particles (0), one saved before ``tilt_loss`` scored 2D stacks on their
    pseudo-subtomograms."""
    names = {f.name for f in fields(TrainOptions)}
    saved = {"offset_range_px": 0.0, "tilt_loss": "subtomograms", **config["options"]}
    return TrainOptions(**{k: v for k, v in saved.items() if k in names})


def checkpoint_path(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"weights.{epoch}.pt"


def latents_path(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"z.{epoch}.npy"


def save_epoch(out_dir: Path, epoch: int, latents: np.ndarray, row: dict, state: dict) -> None:
    """``z.N.npy`` (the latent means), the log line ``row`` and ``weights.N.pt`` (``state``,
    written last: its presence means the epoch is complete)."""
    with atomic_path(latents_path(out_dir, epoch)) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, latents.astype(np.float32))
    log = out_dir / LOG
    lines = log.read_text().splitlines() if log.exists() else ["\t".join(LOG_COLUMNS)]
    lines = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[0]) < epoch]
    lines.append("\t".join(f"{row[c]:.6g}" if c != "epoch" else str(epoch)
                           for c in LOG_COLUMNS))
    with atomic_path(log) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(checkpoint_path(out_dir, epoch)) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, field: str = "--load") -> dict:
    """A checkpoint written by :func:`save_epoch` (tensors and numbers only)."""
    if not path.is_file():
        raise InputError(path, "no such checkpoint", field=field)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file (torch's own message runs to many lines)
        raise InputError(path, "not a readable subtomo hetero checkpoint (truncated, or "
                         "written by another program)", field=field) from None


def epochs_done(out_dir: Path) -> list[int]:
    """Complete epochs (those with ``weights.N.pt``) in ``out_dir``, ascending."""
    found = []
    for p in Path(out_dir).glob("weights.*.pt"):
        middle = p.name[len("weights."):-len(".pt")]
        if middle.isdigit():
            found.append(int(middle))
    return sorted(found)


def saved_inputs(run_dir: Path, particles: ParticleSet, matrices: np.ndarray,
                 shifts_A: np.ndarray, sources: dict) -> TrainInputs:
    """Inputs of a run to continue: its particles and poses, and the maps it saved."""
    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(read_mrc(Path(run_dir) / name)[0].copy())

    config = read_config(run_dir)
    bodies = [load(f"body{j + 1}.mrc") for j in range(len(config.get("masks", [])))]
    return TrainInputs(particles, matrices, shifts_A, load("consensus.mrc"), load("mask.mrc"),
                       bodies, sources)
