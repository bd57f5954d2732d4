"""Particle images as the refinement reads them: the background set to 0 (RELION's
normalisation), checked against the real-space mean it is defined by; CTF-premultiplied
subtomograms (RELION 5's 3D pseudo-subtomograms) read as the image and CTF they sum."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from subtomo.fourier.grid import centred_irfft, centred_rfft, soft_sphere
from subtomo.fourier.projector import Backprojector
from subtomo.geometry.euler import euler_to_matrix
from subtomo.io.mrc import read_ctf_volume, read_mrc, write_mrc
from subtomo.io.star import read_particles, write_particles
from subtomo.refine.batch import translated_rfft, whitened
from subtomo.refine.images import background_weights, subtract_background_
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms


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


def test_premultiplied_insertion_is_the_insertion_of_image_and_ctf():
    """Exact maths: the whitened pair of numerator ``D = C·X`` and weight ``W = C²``
    (CTF with zeros and both signs) inserts the same sums as ``X`` with its CTF ``C``."""
    box = 12
    gen = torch.Generator().manual_seed(3)
    shape = (4, box, box, box // 2 + 1)
    spectra = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    ctf = torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) > 0.3)
    A = euler_to_matrix(torch.rand(4, 3, generator=gen) * 360).float()
    plain, pre = Backprojector(box), Backprojector(box)
    plain.insert(spectra, A, ctf)
    x, c = whitened(ctf * spectra, ctf**2)
    pre.insert(x, A, c)
    assert torch.allclose(pre.weight, plain.weight, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pre.data, plain.data, rtol=1e-5, atol=1e-5)
    assert torch.equal(c == 0, ctf == 0) and torch.equal(x[c == 0], torch.zeros_like(x[c == 0]))


def test_relion5_premultiplied_subtomograms_reconstruct_as_the_plain_ones(tmp_path):
    """A set written as RELION 5's 3D pseudo-subtomograms (real-space numerator ``C·X``,
    weights ``C²`` stacked above the multiplicity, ``rlnCtfDataAreCtfPremultiplied 1``)
    reconstructs to the map of the same particles as subtomograms with CTF volumes; with or
    without ``--ctf`` (premultiplied data always come with their weights)."""
    sim = simulate_subtomograms(tmp_path / "sim", SimulationConfig(
        n=8, box_px=16, n_atoms=200, noise_sigma=1.0, angle_error_deg=0.0, shift_error_px=0.0),
        progress=False)
    ps = read_particles(sim.particles_star)
    box, data, weights = 16, [], []
    for row, (image, ctf_name) in enumerate(ps.particles[["rlnImageName", "rlnCtfImage"]]
                                            .itertuples(index=False)):
        ctf = read_ctf_volume(sim.directory / ctf_name, box)
        x = centred_rfft(torch.from_numpy(read_mrc(sim.directory / image)[0]).double())
        data.append(tmp_path / f"{row}_data.mrc")
        write_mrc(data[-1], centred_irfft(ctf.double() * x, box).float(), 4.0)
        weights.append(tmp_path / f"{row}_weights.mrc")
        write_mrc(weights[-1], torch.cat([ctf**2, torch.ones_like(ctf)]), 0.25)
    pre = replace(ps, particles=ps.particles.assign(rlnImageName=[str(p) for p in data],
                                                    rlnCtfImage=[str(p) for p in weights]),
                  optics=ps.optics.assign(rlnCtfDataAreCtfPremultiplied=1))
    star = tmp_path / "pre.star"
    write_particles(pre, star, flavour=ps.flavour)
    expected = reconstruct(ps, ctf=True, progress=False).map
    for ctf in (True, False):
        got = reconstruct(read_particles(star), ctf=ctf, progress=False).map
        assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))
