"""3D CTF volumes: single tilts, the missing wedge, tilted planes and the gridding formula."""

from __future__ import annotations

import math

import pytest
import torch

from subtomo.ctf.ctf2d import ctf_2d
from subtomo.ctf.dose import dose_filter
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import CtfGridder, ctf_volume, tilt_pairs
from subtomo.geometry.euler import rotation_y

OPTICS = {"voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}
F64 = torch.float64


def grid(box: int) -> torch.Tensor:
    """Voxel frequencies (kx, ky, kz) of the rfftn half-spectrum, shape (D, D, D//2+1, 3)."""
    full = torch.fft.fftfreq(box, d=1.0 / box, dtype=F64)
    half = torch.fft.rfftfreq(box, d=1.0 / box, dtype=F64)
    kz, ky, kx = torch.meshgrid(full, full, half, indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1)


def reference(box: int, px: float, scheme: TiltScheme, defocus: float, astig: float,
              astig_angle: float, squared: bool = False, phase_shift_deg: float = 0.0,
              bfactor_A2: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented gridding, tilt by tilt, with the tilt frame taken from rotation_y:
    a tilt at θ images (Ry(θ) r)_xy, so frequency k sits at (Ry(θ) k)_xy in the image and at
    distance (Ry(θ) k)_z from its plane."""
    k = grid(box)
    num = torch.zeros(k.shape[:-1], dtype=F64)
    den = torch.zeros_like(num)
    for theta, pre, off in zip(scheme.tilt_angles_deg, scheme.pre_exposure_e_per_A2,
                               scheme.defocus_offset_A, strict=True):
        kt = k @ rotation_y(torch.tensor(theta, dtype=F64)).T
        tent = (1 - kt[..., 2].abs()).clamp_min(0)
        f2d = kt[..., :2] / (box * px)
        c = ctf_2d(f2d, defocus + off + astig / 2, defocus + off - astig / 2, astig_angle,
                   **OPTICS, phase_shift_deg=phase_shift_deg, bfactor_A2=bfactor_A2)
        c = c * dose_filter(f2d.norm(dim=-1), pre)
        num += tent * (c * c if squared else c)
        den += tent
    return num / den.clamp_min(1), den.clamp(max=1)


@pytest.mark.parametrize("box", [31, 32])
def test_single_untilted_tilt_is_the_2d_ctf(box: int) -> None:
    px, df = 2.1, 18000.0
    scheme = TiltScheme((0.0,), (12.0,))
    w, mult = ctf_volume(box, px, scheme, df, **OPTICS, astigmatism_A=800.0,
                         astigmatism_angle_deg=25.0, dtype=F64)
    assert w.shape == mult.shape == (box, box, box // 2 + 1)
    k = grid(box)[0] / (box * px)                    # kz = 0 plane: (D, D//2+1, 3)
    want = ctf_2d(k[..., :2], df + 400, df - 400, 25.0, **OPTICS) * dose_filter(
        k[..., :2].norm(dim=-1), 12.0)
    torch.testing.assert_close(w[0], want, rtol=0, atol=1e-12)
    assert bool((mult[0] == 1).all())
    assert bool((w[1:] == 0).all()) and bool((mult[1:] == 0).all())


def test_missing_wedge_and_sampled_region() -> None:
    box = 64
    scheme = TiltScheme.dose_symmetric(60, 3, 3.0, group=2)
    w, mult = ctf_volume(box, 2.0, scheme, 25000.0, **OPTICS)
    k = grid(box)
    r_xz = torch.hypot(k[..., 0], k[..., 2])
    alpha = torch.rad2deg(torch.atan2(k[..., 0].abs(), k[..., 2]))  # angle from +kz, [0, 180]
    wedge_angle = torch.minimum(alpha, 180 - alpha)                  # from the kz axis
    # inside the wedge, the nearest plane (±60°) lies r_xz · sin(30° − angle) away
    far = (wedge_angle < 30) & (r_xz * torch.sin(torch.deg2rad(30 - wedge_angle)) >= 1)
    assert int(far.sum()) > 5000
    assert bool((mult[far] == 0).all()) and bool((w[far] == 0).all())
    loose = (wedge_angle < 25) & (r_xz > 12)  # "angle < 30° − margin, a few voxels out"
    assert bool((mult[loose] == 0).all())
    # inside the tilt range, adjacent planes lie ≤ r_xz · Δθ apart: full coverage if that ≤ 1
    covered = (wedge_angle > 31) & (r_xz <= 1 / math.radians(3.0))
    assert int(covered.sum()) > 20000
    assert bool((mult[covered] == 1).all())
    # beyond that radius, voxels between planes are only partly sampled (blended)
    between = (wedge_angle > 31) & (r_xz > 28)
    partial = (mult[between] > 0) & (mult[between] < 1)
    assert int(partial.sum()) > 1000


@pytest.mark.parametrize("box", [32, 33])
def test_tilted_plane_matches_projected_2d_ctf(box: int) -> None:
    px, df, theta = 1.7, 22000.0, 30.0
    w, mult = ctf_volume(box, px, TiltScheme((theta,), (0.0,)), df, **OPTICS, dtype=F64)
    k = grid(box)
    kt = k @ rotation_y(torch.tensor(theta, dtype=F64)).T     # image frame of the tilt
    on = kt[..., 2].abs() < 1
    assert bool((mult[~on] == 0).all())
    torch.testing.assert_close(mult[on], 1 - kt[..., 2].abs()[on])
    want = ctf_2d(kt[..., :2] / (box * px), df, df, 0.0, **OPTICS)
    torch.testing.assert_close(w[on], mult[on] * want[on], rtol=0, atol=1e-12)
    # the plane contains the direction u = (cos θ, 0, sin θ), not its mirror (cos θ, 0, −sin θ)
    # (kx, kz) = (7, 4) is 0.04 voxel from the 30° plane (tan 30° ≈ 4/7); (7, −4) is 7 away
    assert float(mult[4, 0, 7]) > 0.95 and float(mult[box - 4, 0, 7]) == 0


@pytest.mark.parametrize("squared", [False, True])
def test_gridding_formula_several_tilts(squared: bool) -> None:
    box, px = 17, 3.0
    scheme = TiltScheme((0.0, -7.0, 11.0, 40.0), (0.0, 3.0, 6.0, 9.0),
                        (0.0, 150.0, -300.0, 500.0))
    defocus = torch.tensor([15000.0, 30000.0], dtype=F64)
    w, mult = ctf_volume(box, px, scheme, defocus, **OPTICS, astigmatism_A=600.0,
                         astigmatism_angle_deg=-35.0, squared=squared, phase_shift_deg=20.0,
                         bfactor_A2=40.0, dtype=F64)
    assert w.shape == (2, box, box, box // 2 + 1)
    for i, df in enumerate(defocus.tolist()):
        want_w, want_m = reference(box, px, scheme, df, 600.0, -35.0, squared, 20.0, 40.0)
        torch.testing.assert_close(w[i], want_w, rtol=0, atol=1e-12)
        torch.testing.assert_close(mult, want_m, rtol=0, atol=1e-12)


def test_batch_chunking_and_per_tilt_defocus() -> None:
    box = 24
    scheme = TiltScheme.dose_symmetric(30, 5, 2.0, group=2)
    defocus = torch.tensor([12000.0, 20000.0, 35000.0])
    w, mult = ctf_volume(box, 2.5, scheme, defocus, **OPTICS)
    w_small, mult_small = ctf_volume(box, 2.5, scheme, defocus, **OPTICS,
                                     max_chunk_elements=5000)
    torch.testing.assert_close(w, w_small)
    torch.testing.assert_close(mult, mult_small)
    for i in range(3):
        single, _ = ctf_volume(box, 2.5, scheme, float(defocus[i]), **OPTICS)
        torch.testing.assert_close(w[i], single)
    per_tilt = defocus[:, None].expand(3, scheme.n_tilts)
    torch.testing.assert_close(ctf_volume(box, 2.5, scheme, per_tilt, **OPTICS)[0], w)
    with pytest.raises(ValueError):
        ctf_volume(box, 2.5, scheme, torch.zeros(3, 2), **OPTICS)


def test_runs_on_every_available_device() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    scheme = TiltScheme.dose_symmetric(60, 3, 3.0)
    ref = None
    for device in devices:
        w, mult = ctf_volume(32, 2.0, scheme, torch.tensor([20000.0, 30000.0], device=device),
                             **OPTICS)
        assert w.device.type == device and mult.device.type == device
        if ref is None:
            ref = w.cpu()
        else:
            torch.testing.assert_close(w.cpu(), ref, rtol=1e-4, atol=1e-4)


def test_active_tilts_drop_out_of_the_sum_but_not_the_normalisation() -> None:
    """``active`` removes a tilt's CTF from each voxel's sum and keeps its tent in the
    normaliser: the sums over complementary masks add up to the unmasked volume."""
    box, px = 17, 3.0
    scheme = TiltScheme((0.0, -7.0, 11.0, 40.0), (0.0, 3.0, 6.0, 9.0))
    frames = torch.stack([rotation_y(torch.tensor(a, dtype=F64))
                          for a in scheme.tilt_angles_deg])
    pairs = tilt_pairs(box, px, frames)
    defocus = torch.tensor([15000.0, 30000.0], dtype=F64)
    gridder = CtfGridder(pairs, torch.tensor(scheme.pre_exposure_e_per_A2, dtype=F64),
                         **OPTICS)
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    full = gridder(defocus, astigmatism_A=600.0, astigmatism_angle_deg=-35.0)
    parts = [gridder(defocus, astigmatism_A=600.0, astigmatism_angle_deg=-35.0, active=m)
             for m in (mask, ~mask)]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=0, atol=1e-12)
    only = torch.zeros(2, 4, dtype=torch.bool)
    only[:, 3] = True  # the 40° tilt alone, divided by the tent sum of all four
    want, _ = reference(box, px, TiltScheme((40.0,), (9.0,)), 15000.0, 600.0, -35.0)
    tents = (1 - (grid(box) @ frames[:, 2].T).abs()).clamp_min(0)  # (D, D, H, T)
    got = gridder(defocus, astigmatism_A=600.0, astigmatism_angle_deg=-35.0, active=only)
    torch.testing.assert_close(got[0].reshape(want.shape), want / tents.sum(-1).clamp_min(1),
                               rtol=0, atol=1e-12)
