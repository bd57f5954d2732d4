"""Subtomogram frames (RELION 4/5 ``rlnTomoSubtomogramRot/Tilt/Psi``, ``A_sub``): 3D
subtomograms live in their subtomogram frame, as RELION 5 cuts them (``relion_tomo_subtomo``
without ``--apply_orientations``: ``projPart = projCut · A_sub``, ``programs/subtomo.cpp``), and
``rlnAngle*`` and ``rlnOrigin*`` are the particle's pose in that volume (``getMatrix3x3 = A_sub ·
A_particle``, ``getPosition`` subtracts ``A_sub · origin``, ``particle_set.cpp``).

The same physical poses told without frames and with random frames (``with_subtomogram_frames``:
``A_rel = A_subᵀ A``, ``o_sub = A_subᵀ o``, random origins σ 12 Å moved into the coordinates)
must extract to volumes that differ by the rotation ``A_sub`` and reconstruct to the same map.
Figures on ``tests/data/relion5_tiny`` (20 particles, 21 tilts, box 24, 10 Å/px; FSC shells
1–12 to Nyquist):

- our extract + reconstruct, framed against unframed: FSC ≥ 0.997 over shells 1–7, then falling
  to 0.65 near Nyquist, where each map is mostly the noise of its own gridding (the tent
  gridding of the tilts' slices onto differently oriented voxel grids; ``--pad2d 2`` does not
  change it), mean FSC with the truth 0.805 and 0.820; each framed volume against the unframed
  one rotated by ``A_sub`` (trilinear), correlation 0.92–0.95 (≈ 0 unrotated; premultiplied:
  0.96–0.98, FSC ≥ 0.995 over shells 1–7). Before the fix (volumes cut in the tomogram frame,
  inserted with ``A_sub A_rel`` and the subtomogram-frame origins): framed against unframed
  FSC 0.66 at shell 6, the framed map against the truth 0.53 (0.80 unframed), the rotated
  correlation −0.08 to 0.33.
- RELION 5.0.1's pseudo-subtomograms of the framed ``Framed/`` set (``Subtomo/3d_framed``,
  ``--crop 16``) as our ``reconstruct`` reads them: low-pass (40 Å) correlation with the truth
  0.767 (unframed ``Subtomo/3d``: 0.757; before the fix 0.514), with RELION's map of that
  geometry 0.950 (0.939); our ``extract --premultiplied --recenter`` of ``Framed/`` against
  RELION's files of it: weights correlation ≥ 0.985 per particle (before the fix ≈ 0), data 0.94
  per shell (1–5).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_relion5_files import (
    DATA,
    PSEUDO_BOX,
    _centre,
    _map,
    low_pass_correlation,
)

from subtomo.fourier.fsc import fsc
from subtomo.fourier.grid import shell_index
from subtomo.geometry.euler import angular_distance_deg
from subtomo.io.mrc import read_mrc
from subtomo.io.particles import SUBTOMO_ANGLES
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_inputs
from subtomo.maps.rotate import rotate_volume
from subtomo.refine.reconstruct import reconstruct
from subtomo.simulate.particles import with_subtomogram_frames
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms

RELION5 = Path(os.environ["RELION5_BIN"]) if os.environ.get("RELION5_BIN") else None


@pytest.fixture(autouse=True)
def in_project(monkeypatch):
    monkeypatch.chdir(DATA)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _extracted(ps, inputs, out: Path, **options):
    """Our extraction of ``ps`` (the truth's tilt series and motion) and its reconstruction."""
    result = extract_subtomograms(ps, inputs.tomograms, out, ExtractOptions(box=24, **options),
                                  motion=inputs.motion, progress=False)
    written = read_particles(result.star)
    volumes = [torch.from_numpy(read_mrc(name)[0]).double()
               for name in written.particles["rlnImageName"]]
    return written, volumes, reconstruct(written, ctf=True, progress=False).map.double()


@pytest.mark.parametrize("premultiplied", [False, True])
def test_framed_extraction_is_the_unframed_one_rotated_and_reconstructs_alike(tmp_path,
                                                                               premultiplied):
    """Same physical poses with and without subtomogram frames: each framed subtomogram is the
    unframed one rotated by ``A_sub`` (``V_sub(y) = V(A_sub y)``; correlation ≥ 0.85 with
    trilinear resampling, 0.92–0.98 measured), the frames and relative angles are written as given,
    and the maps agree (FSC ≥ 0.99 over shells 1–7, where the signal is; means against the
    truth within 0.03)."""
    inputs = read_inputs("truth/optimisation_set.star")
    plain, framed = with_subtomogram_frames(inputs.particles, seed=3, origin_sigma_A=12.0)
    options = {"premultiplied": premultiplied}
    _, plain_volumes, plain_map = _extracted(plain, inputs, tmp_path / "plain", **options)
    written, framed_volumes, framed_map = _extracted(framed, inputs, tmp_path / "framed",
                                                     **options)
    for label in (*SUBTOMO_ANGLES, "rlnAngleRot", "rlnOriginXAngst"):
        np.testing.assert_allclose(written.particles[label], framed.particles[label], atol=1e-4)
    frames = framed.subtomogram_matrices()
    rotated = [correlation(rotate_volume(v, frames[i].T), framed_volumes[i])
               for i, v in enumerate(plain_volumes)]
    assert min(rotated) > 0.85, rotated
    truth = _map("truth/class001.mrc")
    curve = fsc(plain_map, framed_map)
    assert float(curve[1:8].min()) > 0.99, curve.tolist()
    scores = [float(fsc(m, truth)[1:13].mean()) for m in (plain_map, framed_map)]
    assert scores[0] > 0.7 and abs(scores[0] - scores[1]) < 0.03, scores


def test_relion3_flavours_cut_in_the_tomogram_frame(tmp_path):
    """RELION 3.x files have no subtomogram frame (the angles and origins written are the
    composed ones), so extraction for them cuts in the tomogram frame: the framed set's volumes
    are the unframed set's, voxel for voxel."""
    inputs = read_inputs("truth/optimisation_set.star")
    plain, framed = with_subtomogram_frames(inputs.particles.subset(range(4)), seed=3,
                                            origin_sigma_A=12.0)
    written, framed_volumes, _ = _extracted(framed, inputs, tmp_path / "framed",
                                            flavour="relion31")
    _, plain_volumes, _ = _extracted(plain, inputs, tmp_path / "plain")
    assert not set(SUBTOMO_ANGLES) & set(written.particles.columns)
    np.testing.assert_allclose(written.tomogram_shifts_A(), plain.shifts_A(), atol=1e-4)
    for a, b in zip(plain_volumes, framed_volumes, strict=True):
        assert torch.equal(a, b)


def test_our_reconstruction_of_relion5_framed_pseudo_subtomograms():
    """RELION 5's pseudo-subtomograms of the framed set (``Subtomo/3d_framed``: cut in each
    particle's subtomogram frame, re-centred by ``A_sub · origin``) reconstruct as well as those
    of the same geometry without frames (``Subtomo/3d``): low-pass correlation with the truth
    and with RELION's map of that geometry within 0.02 (0.767 / 0.757 and 0.950 / 0.939)."""
    truth = _centre(_map("truth/class001.mrc"))
    theirs = _centre(_map("Reconstruct/aligned/merged.mrc"))
    maps = [reconstruct(read_particles(f"Subtomo/{name}/particles.star"), ctf=True,
                        progress=False).map.double() for name in ("3d", "3d_framed")]
    for reference in (truth, theirs):
        plain, framed = (low_pass_correlation(m, reference) for m in maps)
        assert framed > plain - 0.02 and plain > 0.7, (plain, framed)


def _against_relion(out: Path, theirs_star: str) -> tuple[np.ndarray, np.ndarray]:
    """Per particle: correlation of our ``extract --premultiplied --recenter`` weights (W and M,
    inside the Nyquist sphere) of ``Framed/`` with RELION's, and of the data per shell 1–5."""
    inputs = read_inputs("Framed/optimisation_set.star")
    result = extract_subtomograms(inputs.particles, inputs.tomograms, out,
                                  ExtractOptions(box=24, crop=PSEUDO_BOX, premultiplied=True,
                                                 recenter=True),
                                  motion=inputs.motion, progress=False)
    ours, theirs = read_particles(result.star), read_particles(theirs_star)
    shells = shell_index(PSEUDO_BOX).numpy()
    inside = shells <= PSEUDO_BOX // 2 - 1
    weights, data = [], []
    for row in range(len(theirs)):
        w, v = (read_mrc(ps.particles["rlnCtfImage"].iloc[row])[0] for ps in (ours, theirs))
        for a, b in ((w[:PSEUDO_BOX], v[:PSEUDO_BOX]), (w[PSEUDO_BOX:], v[PSEUDO_BOX:])):
            weights.append(np.corrcoef(a[inside].astype(float), b[inside].astype(float))[0, 1])
        x, y = (np.fft.rfftn(read_mrc(ps.particles["rlnImageName"].iloc[row])[0].astype(float))
                for ps in (ours, theirs))
        data.append([float((x[shells == s] * y[shells == s].conj()).sum().real
                           / np.sqrt((np.abs(x[shells == s]) ** 2).sum()
                                     * (np.abs(y[shells == s]) ** 2).sum())) for s in range(1, 6)])
    return np.array(weights), np.array(data)


def test_our_framed_extraction_is_relion5s(tmp_path):
    """Our ``extract --premultiplied --recenter`` of the framed set against RELION 5's files of
    it, particle by particle: weights and multiplicity correlate ≥ 0.975 (≥ 0.985), the data
    ≥ 0.9 per shell on average (0.94) and ≥ 0.8 for every particle (0.89)."""
    weights, data = _against_relion(tmp_path, "Subtomo/3d_framed/particles.star")
    assert weights.min() > 0.975, weights
    assert data.mean() > 0.9 and data.mean(1).min() > 0.8, data.mean(0)


@pytest.mark.skipif(RELION5 is None or not (RELION5 / "relion_tomo_subtomo").is_file(),
                    reason="RELION 5 not found: set RELION5_BIN (bench/relion5/build.sh)")
def test_relion5_cuts_the_framed_set_as_stored_and_as_we_do(tmp_path):
    """relion_tomo_subtomo on ``Framed/`` (as ``make.sh`` runs it) writes the stored files of
    ``Subtomo/3d_framed`` again, and our extraction matches what it wrote."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run([str(RELION5 / "relion_tomo_subtomo"), "--i",
                           "Framed/optimisation_set.star", "--b", "24", "--crop", "16",
                           "--float16", "--j", "1", "--o", f"{tmp_path}/relion/"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stored = read_particles("Subtomo/3d_framed/particles.star")
    fresh = read_particles(tmp_path / "relion" / "particles.star")
    for column in ("rlnImageName", "rlnCtfImage"):
        for a, b in zip(stored.particles[column], fresh.particles[column], strict=True):
            assert np.array_equal(read_mrc(a)[0], read_mrc(b)[0]), (a, b)
    weights, data = _against_relion(tmp_path / "ours", str(tmp_path / "relion/particles.star"))
    assert weights.min() > 0.975 and data.mean() > 0.9, (weights.min(), data.mean())


def test_pose_in_the_volume_and_back():
    """The pose a refinement sees and writes back: for 3D subtomograms the angles and origins as
    given (the subtomogram frame), written back unchanged with the frames kept; for a particle
    series (gathered in the tomogram frame) ``A_sub A`` and ``A_sub o``, turned back on writing."""
    from subtomo.refine.outputs import volume_poses, with_poses

    _, framed = with_subtomogram_frames(read_particles("truth/particles.star"), seed=5,
                                        origin_sigma_A=12.0)
    matrices, origins_px = volume_poses(framed, 10.0)
    np.testing.assert_allclose(matrices, framed.particle_matrices().numpy(), atol=1e-12)
    np.testing.assert_allclose(origins_px * 10.0, framed.shifts_A(), atol=1e-12)
    n = len(framed)
    back = with_poses(framed, matrices, origins_px, 10.0, np.ones(n), np.zeros(n))
    for label in (*SUBTOMO_ANGLES, "rlnOriginXAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(back.particles[label], framed.particles[label], atol=1e-9)
    assert float(angular_distance_deg(back.rotation_matrices(),
                                      framed.rotation_matrices()).max()) < 1e-6
    series = replace(framed, general={"rlnTomoSubTomosAre2DStacks": 1})
    full, tomogram_A = series.volume_poses()
    np.testing.assert_allclose(full.numpy(), framed.rotation_matrices().numpy(), atol=1e-12)
    np.testing.assert_allclose(tomogram_A, framed.tomogram_shifts_A(), atol=1e-12)
    again = series.with_volume_poses(full, tomogram_A)
    for label in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(again.particles[label], framed.particles[label], atol=1e-9)
    assert float(angular_distance_deg(again.particle_matrices(),
                                      framed.particle_matrices()).max()) < 1e-6


@pytest.mark.parametrize(("box", "padded", "normalise"), [(16, 16, True), (15, 30, False)])
def test_per_particle_operator_is_each_particles_own(box, padded, normalise):
    """The block-diagonal gather of N particles' frames ``R_t · A_sub`` gives, in one product,
    each particle's volume, CTF volume and multiplicity as the operator of its frames alone."""
    from subtomo.ctf.slice_gather import SliceGather
    from subtomo.geometry.euler import euler_to_matrix
    from subtomo.geometry.so3 import random_rotations

    gen = torch.Generator().manual_seed(1)
    n, tilts = 4, 11
    angles = torch.zeros(tilts, 3, dtype=torch.float64)
    angles[:, 1] = torch.linspace(-60, 60, tilts)
    frames = euler_to_matrix(angles)[None] @ euler_to_matrix(random_rotations(n, gen))[:, None]
    optics = dict(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, normalise=normalise,
                  squared_ctf=not normalise)

    def operator(f):
        return SliceGather(box, 10.0, f, (10.0, 10.0), padded, torch.linspace(0, 40, tilts),
                           **optics)
    spectra = torch.randn(n, tilts, padded, padded // 2 + 1, dtype=torch.complex64,
                          generator=gen)
    defocus = 2e4 + 1e3 * torch.randn(n, tilts, generator=gen)
    active = torch.rand(n, tilts, generator=gen) > 0.2
    block, single = operator(frames), [operator(f) for f in frames]
    pairs = [(block.volumes(spectra), [s.volumes(spectra[i:i + 1]) for i, s in enumerate(single)]),
             (block.ctf(defocus, active=active),
              [s.ctf(defocus[i:i + 1], active=active[i:i + 1]) for i, s in enumerate(single)]),
             (block.multiplicity(active),
              [s.multiplicity(active[i:i + 1]) for i, s in enumerate(single)])]
    for together, alone in pairs:
        alone = torch.cat(alone)
        assert torch.allclose(together, alone, atol=1e-6 * float(alone.abs().max()))
