"""Two half maps and an optional mask (MRC), read and checked to agree: cubes of one box and
one pixel size (Å, to 0.1 %), the mask on the same grid. Each refusal is one line naming the
file and the option that gave it (``--ref1``, ``--ref2``, ``--mask``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from subtomo.errors import InputError
from subtomo.io.mrc import read_mrc

__all__ = ["read_half_maps"]


def read_half_maps(ref1: str | Path | None, ref2: str | Path | None,
                   mask: str | Path | None = None) -> tuple[Tensor, Tensor, float]:
    """``(half1, half2, pixel_size_A)``: both maps as float32 ``(D, D, D)`` tensors, each
    multiplied by the mask when one is given."""
    maps = []
    for path, field in ((ref1, "--ref1"), (ref2, "--ref2")):
        if path is None:
            raise InputError(None, "tomo-align needs both half maps (--ref1, --ref2 or "
                             "rlnTomoReferenceMap1File/2File in --i)", field=field)
        data, pixel_size_A = read_mrc(path, role="reference", field=field)
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise InputError(path, f"reference is not a cube: {data.shape}", field=field)
        maps.append((torch.from_numpy(data), pixel_size_A, Path(path)))
    (h1, p1, f1), (h2, p2, f2) = maps
    if h1.shape != h2.shape:
        raise InputError(f2, f"half maps differ in box: {tuple(h1.shape)} ({f1.name}) and "
                         f"{tuple(h2.shape)}", field="--ref2")
    if abs(p1 - p2) > 1e-3 * p1:
        raise InputError(f2, f"half maps differ in pixel size: {p1} Å ({f1.name}) and {p2} Å",
                         field="--ref2")
    if not p1 > 0:
        raise InputError(f1, "pixel size of the reference must be positive", field="--ref1")
    if mask is not None:
        m, pm = read_mrc(mask, role="mask", field="--mask")
        if m.shape != tuple(h1.shape):
            raise InputError(mask, f"mask box {m.shape} differs from the references' "
                             f"{tuple(h1.shape)}", field="--mask")
        if abs(pm - p1) > 1e-3 * p1:
            raise InputError(mask, f"mask pixel size {pm} Å differs from the references' "
                             f"{p1} Å", field="--mask")
        m = torch.from_numpy(m)
        h1, h2 = h1 * m, h2 * m
    return h1, h2, p1
