"""Particle images as the refinement reads them: the background set to 0 (RELION's
normalisation), checked against the real-space mean it is defined by."""

from __future__ import annotations

import pytest
import torch

from subtomo.fourier.grid import centred_irfft, soft_sphere
from subtomo.refine.batch import translated_rfft
from subtomo.refine.images import background_weights, subtract_background_


@pytest.mark.parametrize("box", [32, 33])
@pytest.mark.parametrize("masked", [True, False])
def test_background_mean_from_the_spectrum_equals_the_real_space_mean(box, masked):
    """``b = Re sum w X`` is the mean over ``1 - m`` of the translated volume, and subtracting
    it moves the whole volume by ``-b`` (only the origin of the spectrum changes)."""
    gen = torch.Generator().manual_seed(box)
    offsets = torch.tensor([5.0, -2.0, 0.0])
    volumes = torch.randn(3, box, box, box, generator=gen) + offsets[:, None, None, None]
    shifts = torch.tensor([[1.5, -2.0, 0.3], [0.0, 0.0, 0.0], [3.0, 1.0, -1.0]])
    mask = soft_sphere(box, 0.6 * box) if masked else None
    outside = 1 - (mask if masked else soft_sphere(box, 0.75 * box, width_px=0.0))
    spectra = translated_rfft(volumes, shifts)
    before = centred_irfft(spectra.clone(), box)
    expected = (outside * before).sum((-3, -2, -1)) / outside.sum()
    weights = background_weights(box, mask)
    assert torch.allclose((spectra * weights).real.sum((-3, -2, -1)), expected, atol=1e-4)
    after = centred_irfft(subtract_background_(spectra, weights), box)
    assert torch.allclose(after, before - expected[:, None, None, None], atol=1e-4)
    mean_after = (outside * after).sum((-3, -2, -1)) / outside.sum()
    assert torch.allclose(mean_after, torch.zeros(3), atol=1e-4)
