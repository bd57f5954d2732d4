"""The forward model against the simulator's ground truth, and its building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from subtomo.fourier.grid import (
    resample_map,
)
from subtomo.geometry.so3 import rotation_vector_to_matrix
from subtomo.hetero.forward import (
    Boxes,
    affine_grid,
    ctf_filter,
    encoder_input,
    predict,
    real_at,
    sample_affine,
    sample_model,
    within_radius,
)
from subtomo.hetero.model import (
    Decoder,
    HeteroVAE,
    SubpixelConvTranspose3d,
    beta_value,
    disentanglement_prior,
    kl_divergence,
)
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.refine.images import iterate_batches


def _truth(sim):
    ps = read_particles(sim.truth_star)
    maps = [torch.from_numpy(read_mrc(p)[0].copy()) for p in sim.truth_maps]
    return ps, maps


def _model(box: int, consensus: torch.Tensor, pixel_size_A: float) -> HeteroVAE:
    return HeteroVAE(enc_box=16, template_box=box, zdim=2, zaffinedim=0, consensus=consensus,
                     mask=torch.ones_like(consensus), body_masks=None,
                     template_pixel_size_A=pixel_size_A)


def test_prediction_reproduces_the_simulated_particles(clean):
    """The true class map at the true pose through the particle's CTF is the simulated
    (noise-free) subtomogram, up to trilinear interpolation (template grid 32³ for the 24³
    particles)."""
    ps, maps = _truth(clean)
    box, pixel_size_A = 24, 8.0
    boxes = Boxes(box, pixel_size_A, 16, 32)
    maps = [resample_map(m, 32) for m in maps]
    model = _model(32, maps[0], boxes.pixel(32))
    rows = np.arange(len(ps))
    batch = next(iterate_batches(ps, rows, box=box, ctf=True, batch_size=len(rows),
                                 shifts_px=torch.as_tensor(ps.shifts_A() / pixel_size_A)))
    classes = ps.particles["rlnClassNumber"].to_numpy()
    volumes = torch.stack([maps[c - 1] for c in classes])
    filt = ctf_filter(batch.ctf, boxes, 1.0, 0.0, len(rows), torch.device("cpu"))
    A = ps.rotation_matrices().float()
    pred, _ = predict(model, volumes, torch.zeros(len(rows), 2), A, torch.zeros(len(rows), 3),
                      boxes, filt)
    data = real_at(batch.spectra, box, box)
    for p, d in zip(pred, data, strict=True):
        assert np.corrcoef(p.ravel(), d.ravel())[0, 1] > 0.97
    wrong, _ = predict(model, volumes, torch.zeros(len(rows), 2), A.transpose(1, 2),
                       torch.zeros(len(rows), 3), boxes, filt)
    assert np.corrcoef(wrong[0].ravel(), data[0].ravel())[0, 1] < 0.8


def test_encoder_input_is_the_particle_in_the_reference_frame(clean):
    """Rotated back by its pose, a particle (phase-flipped, no reference subtracted) lines up
    with its class map; the transposed rotation does not."""
    ps, maps = _truth(clean)
    box, pixel_size_A = 24, 8.0
    boxes = Boxes(box, pixel_size_A, 16, 16)
    batch = next(iterate_batches(ps, np.arange(len(ps)), box=box, ctf=True, batch_size=6,
                                 shifts_px=torch.as_tensor(ps.shifts_A() / pixel_size_A)))
    A = ps.rotation_matrices().float()
    ones = torch.ones(16, 16, 16)
    right = encoder_input(batch.spectra, batch.ctf, A, torch.zeros(6, 3), boxes, ones, 0.0, 1.0)
    wrong = encoder_input(batch.spectra, batch.ctf, A.transpose(1, 2), torch.zeros(6, 3),
                          boxes, ones, 0.0, 1.0)
    classes = ps.particles["rlnClassNumber"].to_numpy()
    for i, c in enumerate(classes):
        truth = resample_map(maps[c - 1], 16).ravel()
        assert np.corrcoef(right[i, 0].ravel(), truth)[0, 1] > 0.6
        assert np.corrcoef(right[i, 0].ravel(), truth)[0, 1] > (
            np.corrcoef(wrong[i, 0].ravel(), truth)[0, 1] + 0.2)


def test_affine_grid_reads_r_M_plus_b_at_every_voxel():
    """The separable grid equals the points ``r M + b`` of every voxel centre, normalised to
    ``grid_sample``'s [-1, 1] (voxel ``p / a + m // 2`` of an ``m``-voxel box)."""
    gen = torch.Generator().manual_seed(1)
    M, b = torch.randn(2, 3, 3, generator=gen), torch.randn(2, 3, generator=gen) * 5
    n, a_out, m, a_in = 7, 3.0, 10, 2.5
    axis = (torch.arange(n) - n // 2) * a_out
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = torch.stack([x, y, z], -1).reshape(-1, 3)
    p = r[None] @ M + b[:, None, :]
    expected = (2 * (p / a_in + m // 2) / (m - 1) - 1).view(2, n, n, n, 3)
    assert torch.allclose(affine_grid(M, b, n, a_out, m, a_in), expected, atol=1e-5)
    where = torch.tensor([0, 5, 17, 100, n ** 3 - 1])
    assert torch.allclose(affine_grid(M, b, n, a_out, m, a_in, where),
                          expected.view(2, -1, 3)[:, where], atol=1e-5)


def test_sampling_within_the_support_radius_is_exact():
    """Voxels beyond ``within_radius`` read only zeros of a map that is 0 outside a ball."""
    t = 24
    axis = torch.arange(t) - t // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    vol = torch.rand(t, t, t) * ((x ** 2 + y ** 2 + z ** 2) <= 6 ** 2)
    A = rotation_vector_to_matrix(torch.randn(3, 3, generator=torch.Generator().manual_seed(2)))
    shift = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [-3.0, 0.0, 1.0]])
    where = within_radius(vol, 2.0, t, 2.0, shift)
    assert where is not None and len(where) < t ** 3 / 2
    b = (shift[:, None, :] @ A)[:, 0]
    full = sample_affine(vol.expand(3, 1, t, t, t), A, b, 2.0, t, 2.0)
    sparse = sample_affine(vol.expand(3, 1, t, t, t), A, b, 2.0, t, 2.0, where)
    assert full.abs().sum() > 0
    assert torch.allclose(sparse, full, atol=1e-5)


def test_rigid_body_moves_its_density_about_its_centre():
    """A body rotated by 90° about z through its centre c and shifted by t puts the density
    found at ``p`` at ``R (p - c) + c + t``; the static part stays."""
    t = 16
    vol = torch.zeros(t, t, t)
    vol[8, 8, 12] = 1.0  # body voxel at x = +4 px, 1 px from the body's centre (x = 3 px)
    vol[4, 4, 4] = 2.0  # static voxel
    body = torch.zeros(1, t, t, t)
    body[0, 6:11, 6:11, 9:14] = 1
    model = HeteroVAE(enc_box=16, template_box=t, zdim=2, zaffinedim=1, consensus=vol,
                      mask=torch.ones_like(vol), body_masks=body, template_pixel_size_A=1.0)
    c = model.body_centres_A[0]
    angle = math.pi / 2

    def fixed_motion(u):
        return (torch.tensor([[[0.0, 0.0, angle]]]).expand(len(u), 1, 3),
                torch.tensor([[[0.0, 1.0, 0.0]]]).expand(len(u), 1, 3))

    model.motions = lambda z: fixed_motion(z)
    out = sample_model(model, vol[None], torch.zeros(1, 3), torch.eye(3)[None],
                       torch.zeros(1, 3), t, 1.0)[0]
    R = rotation_vector_to_matrix(torch.tensor([0.0, 0.0, angle], dtype=torch.float64)).float()
    assert torch.allclose(c, torch.tensor([3.0, 0.0, 0.0]))
    x0 = torch.tensor([4.0, 0.0, 0.0])  # (x, y, z) Å from the box centre
    moved = (R @ (x0 - c)) + c + torch.tensor([0.0, 1.0, 0.0])
    ix, iy, iz = (moved.round().long() + t // 2).tolist()
    assert out[iz, iy, ix] == pytest.approx(1.0, abs=1e-4)
    assert out[4, 4, 4] == pytest.approx(2.0, abs=1e-5)
    assert out[8, 8, 12] == pytest.approx(0, abs=1e-5)
    assert float(out.sum()) == pytest.approx(3.0, abs=1e-4)


def test_beta_schedule_kl_and_prior():
    values = [beta_value("cos", 2.0, e, s, 10, 2) for e in range(2) for s in range(10)]
    assert values[0] == 0.0 and max(values) == pytest.approx(2.0)
    assert values[10] == pytest.approx(2.0) and values == sorted(values)
    assert beta_value("0.25", 2.0, 5, 3, 10, 2) == 0.5
    # cycles of 4 epochs restart at 4 in a 12-epoch run, not in the last 4 epochs (8 … 11)
    assert beta_value("cos", 1.0, 4, 0, 10, 4, 12) == 0.0
    assert [beta_value("cos", 1.0, e, 0, 10, 4, 12) for e in (8, 11)] == [1.0, 1.0]
    assert beta_value("cos", 1.0, 4, 0, 10, 4, 6) == 1.0
    assert beta_value("cos", 1.0, 0, 0, 10, 4, 2) == 0.0
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    assert float(kl_divergence(mu, logvar)) == pytest.approx(0.5 * (1 + 4 - math.log(4) - 1))
    # latents proportional to the map differences cost nothing
    delta = torch.randn(5, 4, 4, 4)
    mu = delta.flatten(1)[:, :3] * 0 + torch.arange(5.0)[:, None]
    maps = torch.arange(5.0)[:, None, None, None].expand(5, 4, 4, 4) * 2
    assert float(disentanglement_prior(mu, maps, torch.ones(4, 4, 4))) == pytest.approx(0.0,
                                                                                        abs=1e-9)
    assert float(disentanglement_prior(mu.flip(0) ** 2, maps, torch.ones(4, 4, 4))) > 0.01


def test_weight_average_is_the_exponential_moving_average():
    """After k steps towards constant training weights c from a = 0, the average is
    c · (1 − Π decay_t): decay 1 − 1/(ema · steps per epoch), or 1 − 2/(t + 1) while that is
    smaller."""
    from types import SimpleNamespace

    from subtomo.hetero.inputs import TrainOptions
    from subtomo.hetero.train import average_weights

    model, averaged = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
        for p in averaged.parameters():
            p.zero_()
    run = SimpleNamespace(model=model, averaged=averaged, options=TrainOptions(ema=0.5))
    left = 1.0
    for t in range(1, 41):
        average_weights(run, t, steps_per_epoch=20)  # horizon 10 steps: decay 0.9
        left *= min(0.9, 1 - 2 / (t + 1))
    for p in averaged.parameters():
        assert torch.allclose(p, torch.full_like(p, 2.0 * (1 - left)), rtol=1e-5)
    assert left == 0.0  # step 1 takes the training weights: the start is forgotten
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(4.0)
    for t in range(41, 46):
        average_weights(run, t, steps_per_epoch=20)
    for p in averaged.parameters():  # 5 steps of decay 0.9 towards 4 from 2
        assert torch.allclose(p, torch.full_like(p, 4.0 - 2.0 * 0.9 ** 5), rtol=1e-5)
    run.averaged = None
    average_weights(run, 41, 20)  # --ema 0: nothing to average, nothing fails


def test_subpixel_transposed_convolution_is_the_transposed_convolution():
    torch.manual_seed(0)
    fast = SubpixelConvTranspose3d(3, 2)
    plain = torch.nn.ConvTranspose3d(3, 2, 4, 2, 1)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 5, 5, 5)
    a, b = fast(x), plain(x)
    assert a.shape == b.shape == (2, 2, 10, 10, 10)
    assert torch.allclose(a, b, atol=1e-5)
    (a * b.detach()).sum().backward()
    (b * b.detach()).sum().backward()
    assert torch.allclose(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fast.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_decoder_starts_small_and_reaches_the_template_box():
    decoder = Decoder(3, 32)
    out = decoder(torch.randn(4, 3))
    assert out.shape == (4, 32, 32, 32)
    with pytest.raises(ValueError):
        Decoder(3, 40)


def test_boxes_read_back_from_a_config_written_before_the_rename():
    """config.json of runs written before ``pixel_A`` became ``pixel_size_A`` still load."""
    boxes = Boxes(24, 8.0, 16, 32)
    assert Boxes.from_dict(boxes.as_dict()) == boxes
    old = {"box": 24, "pixel_A": 8.0, "enc_box": 16, "template_box": 32}
    assert Boxes.from_dict(old) == boxes
