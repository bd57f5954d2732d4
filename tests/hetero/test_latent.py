"""Training on simulated compositions and motions; analyze, eval-vol and select on the result."""

from __future__ import annotations

import json

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

from subtomo.hetero.analysis import analyze
from subtomo.hetero.inputs import TrainOptions, read_inputs
from subtomo.hetero.select import select_particles
from subtomo.hetero.train import train
from subtomo.hetero.volumes import eval_vol, load_model
from subtomo.io.mrc import read_mrc, write_mrc
from subtomo.io.star import read_particles
from subtomo.maps.mask import create_mask
from subtomo.simulate.render import render_atoms
from subtomo.simulate.subtomograms import SimulationConfig, build_structure


def _options(**kwargs) -> TrainOptions:
    return TrainOptions(**{"zdim": 4, "batch_size": 8, "seed": 1, **kwargs})


def test_compositions_separate_and_their_maps_match_the_truth(tmp_path, classes3):
    sim = classes3
    truth = read_particles(sim.truth_star).particles["rlnClassNumber"].to_numpy()
    out = tmp_path / "run"
    train(read_inputs(sim.particles_star), out, _options(epochs=6), progress=False)
    result = analyze(out, 5, pcs=2, ksample=3, skip_umap=True)
    assert adjusted_rand_score(truth, result.labels) >= 0.9
    for name in ("pca.png", "kmeans3/pca.png", "pca_tilt.png", "pca_defocus.png",
                 "pc_histograms.png", "loss.png", "pc1/z_values.txt", "kmeans3/centers.txt"):
        assert (result.out_dir / name).is_file(), name
    paths = eval_vol(out, 5, "kmeans", 3)
    truths = [read_mrc(p)[0] for p in sim.truth_maps]
    mask = read_mrc(out / "mask.mrc")[0] > 0.5
    for k, path in enumerate(paths):
        members = truth[result.labels == k]
        own = np.bincount(members, minlength=4).argmax()
        vol = read_mrc(path)[0]
        cc = [np.corrcoef(vol[mask], t[mask])[0, 1] for t in truths]
        assert np.argmax(cc) == own - 1, (k, cc)
    # one STAR file per cluster (input flavour), the clusters by number and a latent region
    written = select_particles(out, 5, kmeans=3)
    sizes = [len(read_particles(p)) for p in written if "pre" in p]
    assert sorted(sizes) == sorted(np.bincount(result.labels).tolist())
    keep = select_particles(out, 5, kmeans=3, clusters=[1], output=tmp_path / "one.star")
    assert list(keep.values()) == [int(np.sum(result.labels == 1))]
    region = select_particles(out, 5, regions=[(1, -np.inf, 0.0)],
                              output=tmp_path / "low.star")
    assert list(region.values()) == [int(np.sum(result.pcs[:, 0] <= 0))]
    assert read_particles(tmp_path / "one.star").flavour == read_particles(
        sim.particles_star).flavour


def _domain_mask(sim, path) -> None:
    config = SimulationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in
                                 json.loads((sim.directory / "simulation.json").read_text())
                                 .items()})
    base = build_structure(config).hinged(15.0)
    moving = base.domain == 2
    density = render_atoms(base.positions_A[moving][None], base.amplitudes[moving],
                           config.box_px, config.pixel_size_A, 2.0 * config.sigma_A)[0]
    mask = create_mask(density, config.pixel_size_A, 0.1 * float(density.max()),
                       extend_inimask_px=1, width_soft_edge_px=2)
    write_mrc(path, mask, config.pixel_size_A)


def test_rigid_body_of_the_hinged_domain_follows_the_hinge(tmp_path, hinge):
    """With a mask on the hinged domain, its rigid-body rotation (about the hinge axis, z)
    follows the true hinge angle; the decoder's free correction takes part of the motion, so
    the rotation's range is smaller than the true 30°."""
    sim = hinge
    _domain_mask(sim, tmp_path / "domain.mrc")
    out = tmp_path / "run"
    inputs = read_inputs(sim.truth_star, masks=[str(tmp_path / "domain.mrc")])
    train(inputs, out, _options(epochs=5, zdim=1, zaffinedim=1, lamb=0.0), progress=False)
    loaded = load_model(out, 4)
    z = torch.from_numpy(np.load(out / "z.4.npy"))
    rotation, _ = loaded.model.motions(z)
    angle = torch.rad2deg(rotation[:, 0].norm(dim=-1) * torch.sign(rotation[:, 0, 2])).detach()
    hinge_deg = read_particles(sim.truth_star).particles["rlnSubtomoHingeDeg"].to_numpy()
    assert abs(spearmanr(angle.numpy(), hinge_deg).statistic) >= 0.8
    assert float(angle.max() - angle.min()) > 1.0
