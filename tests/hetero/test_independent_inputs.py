"""Issue 28: the latent space on data the package did not simulate (tests/hetero/independent_sim:
its own phantoms, CTF, wedge fixed in the tomogram, contrast scale and offset per particle,
consensus poses off), and the three corrections that made it work: box mean removed, contrast
scale fitted, particles centred on the consensus."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from independent_sim import render, structure

from subtomo.errors import InputError
from subtomo.fourier.grid import centred_rfft, resample_map
from subtomo.hetero.forward import (
    Boxes,
    contrast_scale,
    encoder_input,
    real_at,
    translation_search,
)
from subtomo.hetero.inputs import TrainOptions
from subtomo.hetero.model import HeteroVAE
from subtomo.hetero.run import residual_terms
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.refine.images import iterate_batches

BOX, PIXEL_A = 24, 8.0


def _phantom(origin_A=(0.0, 0.0, 0.0), kind="classes", variable=1.0) -> torch.Tensor:
    return torch.from_numpy(render(structure(kind, variable), np.eye(3), np.asarray(origin_A),
                                   BOX, PIXEL_A)).float()


def test_translation_search_finds_a_known_subpixel_shift():
    reference = _phantom()
    tau = np.array([[1.3, -0.6, 0.4], [-1.8, 0.2, 1.1]])  # px, (x, y, z)
    data = torch.stack([_phantom(-t * PIXEL_A) for t in tau])  # content at +tau
    boxes = Boxes(BOX, PIXEL_A, BOX, 32)
    padded = torch.nn.functional.pad(reference, (4, 4, 4, 4, 4, 4))  # the 32³ template box
    A = torch.eye(3).expand(2, 3, 3)
    found = translation_search(centred_rfft(data), None, A, boxes, padded, 3.0)
    assert np.abs(found.numpy() - tau).max() < 0.15
    outside = translation_search(centred_rfft(data), None, A, boxes, padded, 1.0)
    assert (outside.norm(dim=1) <= 1.0 + 0.5 * 3 ** 0.5).all()  # peak voxel within range


def test_encoder_input_ignores_contrast_scale_and_offset():
    """Exact: the least-squares scale is linear in the data and the box mean is removed."""
    reference = _phantom()
    data = torch.stack([_phantom((4.0, -3.0, 2.0), variable=2.0)] * 2)
    spectra = centred_rfft(data)
    spectra[..., 0, 0, 0] = 0
    other = centred_rfft(data * torch.tensor([1.3, 0.7])[:, None, None, None] + 5.0)
    other[..., 0, 0, 0] = 0
    boxes = Boxes(BOX, PIXEL_A, 16, BOX)
    A = torch.eye(3).expand(2, 3, 3)
    args = (None, A, torch.zeros(2, 3), boxes, torch.ones(16, 16, 16), 1.0, 1.0, reference)
    a, b = encoder_input(spectra, *args), encoder_input(other, *args)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    s = contrast_scale(data * 1.3, data)
    torch.testing.assert_close(s, torch.full((2,), 1.3))
    assert float(contrast_scale(torch.zeros_like(data), data).min()) == 0.5  # clamped


def test_a_negative_offset_range_is_one_clear_error():
    with pytest.raises(InputError, match="--offset-range"):
        TrainOptions(offset_range_px=-1.0).check()


def test_loss_takes_the_contrast_scale_from_the_data(clean):
    """Exact: the prediction carries the least-squares scale of the consensus view in the data,
    so data scaled by c leave residuals scaled by c² (without it the decoder would have to
    learn the scale, and a latent dimension would follow it)."""
    ps = read_particles(clean.truth_star)
    ones = np.flatnonzero(ps.particles["rlnClassNumber"].to_numpy() == 1)
    box, pixel_A = 24, 8.0
    boxes = Boxes(box, pixel_A, 16, 32)
    consensus = resample_map(torch.from_numpy(read_mrc(clean.truth_maps[0])[0].copy()), 32)
    net = HeteroVAE(enc_box=16, template_box=32, zdim=2, zaffinedim=0, consensus=consensus,
                    mask=torch.ones_like(consensus), body_masks=None,
                    template_pixel_size_A=boxes.pixel(32))
    run = SimpleNamespace(model=net, A=ps.rotation_matrices().float(), device=torch.device("cpu"),
                          boxes=boxes,
                          options=SimpleNamespace(ctfbeta=1.0, bfactor=0.0))
    batch = next(iterate_batches(ps, ones, box=box, ctf=True, batch_size=len(ones),
                                 shifts_px=torch.as_tensor(ps.shifts_A() / pixel_A)))
    batch.spectra[..., 0, 0, 0] = 0
    batch.ctf[..., 0, 0, 0] = 0
    z = torch.zeros(len(ones), 2)
    with torch.no_grad():
        base, _ = residual_terms(run, batch, z, None)
        energy = real_at(batch.spectra, box, box).square().sum((1, 2, 3))
        assert (base < 0.1 * energy).all()  # noise-free: the consensus view explains the data
        for c in (0.7, 1.4):
            scaled = SimpleNamespace(rows=batch.rows, spectra=batch.spectra * c, ctf=batch.ctf)
            res, _ = residual_terms(run, scaled, z, None)
            torch.testing.assert_close(res, base * c**2, rtol=1e-3,
                                       atol=1e-6 * float(energy.max()))
