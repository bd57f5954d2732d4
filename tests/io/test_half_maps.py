"""Tests for subtomo.io.half_maps: the pair is read as written, masked exactly, and every
disagreement is refused with one line naming the file and option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtomo.errors import InputError
from subtomo.io.half_maps import read_half_maps
from subtomo.io.mrc import write_mrc

APIX = 2.0


@pytest.fixture
def maps(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in (("h1", (8, 8, 8)), ("h2", (8, 8, 8)), ("small", (6, 6, 6)),
                        ("flat", (8, 8, 6))):
        paths[name] = tmp_path / f"{name}.mrc"
        write_mrc(paths[name], rng.normal(size=shape).astype(np.float32), APIX)
    mask = np.zeros((8, 8, 8), np.float32)
    mask[2:6, 2:6, 2:6] = 1.0
    mask[3, 3, 3] = 0.5
    paths["mask"] = tmp_path / "mask.mrc"
    write_mrc(paths["mask"], mask, APIX)
    paths["apix"] = tmp_path / "apix.mrc"
    write_mrc(paths["apix"], rng.normal(size=(8, 8, 8)).astype(np.float32), 2 * APIX)
    return paths, mask


def test_maps_are_read_and_masked_exactly(maps):
    paths, mask = maps
    h1, h2, pixel_size_A = read_half_maps(paths["h1"], paths["h2"])
    assert pixel_size_A == APIX and h1.dtype == torch.float32 and h1.shape == (8, 8, 8)
    m1, m2, _ = read_half_maps(paths["h1"], paths["h2"], paths["mask"])
    assert torch.equal(m1, h1 * torch.from_numpy(mask))
    assert torch.equal(m2, h2 * torch.from_numpy(mask))


@pytest.mark.parametrize("args,expected", [
    ((None, "h2"), "--ref1: tomo-align needs both half maps (--ref1, --ref2 or "
                   "rlnTomoReferenceMap1File/2File in --i)"),
    (("h1", "small"), "small.mrc: --ref2: half maps differ in box: (8, 8, 8) (h1.mrc) and "
                      "(6, 6, 6)"),
    (("h1", "apix"), "apix.mrc: --ref2: half maps differ in pixel size: 2.0 Å (h1.mrc) and "
                     "4.0 Å"),
    (("flat", "h2"), "flat.mrc: --ref1: reference is not a cube: (8, 8, 6)"),
    (("h1", "h2", "small"), "small.mrc: --mask: mask box (6, 6, 6) differs from the "
                            "references' (8, 8, 8)"),
    (("h1", "h2", "apix"), "apix.mrc: --mask: mask pixel size 4.0 Å differs from the "
                           "references' 2.0 Å"),
])
def test_disagreements_are_refused_naming_file_and_option(maps, args, expected):
    paths, _ = maps
    with pytest.raises(InputError) as error:
        read_half_maps(*(paths[a] if a else None for a in args))
    assert str(error.value).endswith(expected), str(error.value)
    assert "\n" not in str(error.value)
