"""``subtomo hetero train`` on 2D stacks against 3D subtomograms of the same particles.

One tilt-series project (``subtomo simulate tiltseries``: two classes, or a hinge) is extracted
at its true geometry as 3D subtomograms and as 2D stacks; the VAE is trained on the subtomograms
(``--ctf``), on the stacks scored on the pseudo-subtomograms (``--tilt-loss subtomograms``) and
on the stacks scored on each tilt's CTF-weighted slice (``--tilt-loss slices``, the default).
Reported: ARI of KMeans(2) on the latents against the classes, or |ρ| (Spearman) of the
latents' PC1 with the hinge angle, and the wall time per epoch (1 thread).

    python bench/bench_hetero_series.py [classes|hinge] [--epochs 8] [--noise 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from subtomo.hetero.inputs import TrainOptions, read_inputs
from subtomo.hetero.train import train
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_tomogram_set
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms


def _score(kind: str, z: np.ndarray, truth: np.ndarray) -> float:
    if kind == "classes":
        found = KMeans(2, n_init=10, random_state=0).fit_predict(z)
        return adjusted_rand_score(truth, found)
    return abs(spearmanr(PCA(1).fit_transform(z)[:, 0], truth).statistic)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("classes", "hinge"), nargs="?", default="classes")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--noise", type=float, default=20.0)
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation")
    parser.add_argument("--only", default=None, help="run only the runs whose label has this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_hetero_series_"))
    shape = dict(classes=2) if args.kind == "classes" else dict(hinge_max_deg=40.0)
    config = TiltSeriesConfig(n_particles=args.n, image_size_px=(384, 384), thickness_px=56,
                              box_px=24, n_atoms=800, tilt_step_deg=4.0, seed=args.seed,
                              noise_sigma=args.noise, **shape)
    sim = simulate_tiltseries(root / "sim", config, progress=False)
    ps = read_particles(sim.truth_particles_star)
    tset = read_tomogram_set(sim.truth_tomograms_star)
    column = "rlnClassNumber" if args.kind == "classes" else "rlnSubtomoHingeDeg"
    runs = []
    for name, stacks in (("3D subtomograms", False), ("2D stacks", True)):
        written = extract_subtomograms(ps, tset, root / name.replace(" ", "_"), ExtractOptions(
            box=24, stacks_2d=stacks), progress=False)
        losses = ("slices", "subtomograms") if stacks else ("slices",)
        for loss in losses:
            runs.append((f"{name}" + (f", --tilt-loss {loss}" if stacks else ""), written.star,
                         stacks, loss))
    print(f"{args.kind} (seed {args.seed}): {len(ps)} particles, 24³ at 10 Å, noise σ "
          f"{args.noise} per tilt pixel, {args.epochs} epochs, zdim 4")
    for label, star, stacks, loss in runs:
        if args.only and args.only not in label:
            continue
        inputs = read_inputs(star, tomograms=sim.truth_tomograms_star if stacks else None)
        truth = inputs.particles.particles[column].to_numpy()
        options = TrainOptions(zdim=4, epochs=args.epochs, ctf=True, tilt_loss=loss, seed=0)
        start = time.perf_counter()
        result = train(inputs, root / f"run_{len(label)}_{loss}_{stacks}", options,
                       progress=False)
        wall = time.perf_counter() - start
        per_epoch = np.mean([row["wall_s"] for row in result.history])
        cpu = np.mean([row["cpu_s"] for row in result.history])
        scores = [_score(args.kind, np.load(root / f"run_{len(label)}_{loss}_{stacks}" /
                                            f"z.{e}.npy"), truth)
                  for e in range(args.epochs)]
        what = "ARI" if args.kind == "classes" else "|ρ| PC1"
        print(f"- {label}: {what} last {scores[-1]:.3f}, best {max(scores):.3f} (per epoch "
              f"{', '.join(f'{s:.2f}' for s in scores)}); {per_epoch:.1f} s wall, {cpu:.1f} s CPU "
              f"per epoch, "
              f"{wall:.0f} s in all")


if __name__ == "__main__":
    main()
