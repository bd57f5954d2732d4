"""``subtomo hetero train`` on 2D stacks against 3D subtomograms of the same particles.

One tilt-series project (``subtomo simulate tiltseries``: two classes, or a hinge) is extracted
at its true geometry as 3D subtomograms and as 2D stacks; the VAE is trained on the subtomograms
(``--ctf``), on the stacks scored on the pseudo-subtomograms (``--tilt-loss subtomograms``) and
on the stacks scored on each tilt's CTF-weighted slice (``--tilt-loss slices``, the default).
Reported: ARI of KMeans(2) on the latents against the classes, or |ρ| (Spearman) of the
latents' PC1 with the hinge angle, and the wall time per epoch (1 thread).

    python bench/bench_hetero_series.py [--epochs 8] [--n 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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

sys.path.insert(0, str(Path(__file__).parent))
from results import machine_load, update_section  # noqa: E402


def _score(kind: str, z: np.ndarray, truth: np.ndarray) -> float:
    if kind == "classes":
        found = KMeans(2, n_init=10, random_state=0).fit_predict(z)
        return adjusted_rand_score(truth, found)
    return abs(spearmanr(PCA(1).fit_transform(z)[:, 0], truth).statistic)


GRID = (("classes", 20.0, 1), ("classes", 120.0, 1), ("classes", 160.0, 2),
        ("hinge", 20.0, 1), ("hinge", 40.0, 1), ("hinge", 40.0, 2))
ROUTES = ("3D subtomograms", "2D stacks, `--tilt-loss slices` (default)",
          "2D stacks, `--tilt-loss subtomograms`")


def run_set(kind: str, noise: float, seed: int, n: int, epochs: int, root: Path) -> list[dict]:
    """Simulate one project, extract it both ways, train each route: per route the score of
    each epoch and the mean wall and CPU seconds per epoch."""
    shape = dict(classes=2) if kind == "classes" else dict(hinge_max_deg=40.0)
    config = TiltSeriesConfig(n_particles=n, image_size_px=(384, 384), thickness_px=56,
                              box_px=24, n_atoms=800, tilt_step_deg=4.0, seed=seed,
                              noise_sigma=noise, **shape)
    folder = root / f"{kind}_{noise:g}_{seed}"
    sim = simulate_tiltseries(folder / "sim", config, progress=False)
    ps = read_particles(sim.truth_particles_star)
    tset = read_tomogram_set(sim.truth_tomograms_star)
    column = "rlnClassNumber" if kind == "classes" else "rlnSubtomoHingeDeg"
    stars = {stacks: extract_subtomograms(ps, tset, folder / f"stacks_{stacks}", ExtractOptions(
        box=24, stacks_2d=stacks), progress=False).star for stacks in (False, True)}
    out = []
    for route, (stacks, loss) in zip(ROUTES, ((False, "slices"), (True, "slices"),
                                              (True, "subtomograms")), strict=True):
        inputs = read_inputs(stars[stacks], tomograms=sim.truth_tomograms_star if stacks else None)
        truth = inputs.particles.particles[column].to_numpy()
        options = TrainOptions(zdim=4, epochs=epochs, ctf=True, tilt_loss=loss, seed=0)
        run = folder / f"run_{stacks}_{loss}"
        result = train(inputs, run, options, progress=False)
        scores = [_score(kind, np.load(run / f"z.{e}.npy"), truth) for e in range(epochs)]
        out.append(dict(route=route, scores=scores,
                        wall_s=float(np.mean([row["wall_s"] for row in result.history])),
                        cpu_s=float(np.mean([row["cpu_s"] for row in result.history]))))
        print(kind, noise, seed, route, [round(x, 3) for x in scores], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_hetero_series_"))
    rows = ["| set | σ | sim seed | " + " | ".join(ROUTES) + " |", "|---" * (3 + len(ROUTES))
            + "|"]
    times = {route: [] for route in ROUTES}
    for kind, noise, seed in GRID:
        runs = run_set(kind, noise, seed, args.n, args.epochs, root)
        rows.append(f"| {kind} | {noise:g} | {seed} | " + " | ".join(
            f"{r['scores'][-1]:.2f} ({max(r['scores']):.2f})" for r in runs) + " |")
        for r in runs:
            times[r["route"]].append((r["wall_s"], r["cpu_s"]))
    timing = "; ".join(f"{route.split(' (')[0]}: {np.mean([w for w, _ in t]):.1f} s wall, "
                       f"{np.mean([c for _, c in t]):.1f} s CPU" for route, t in times.items())
    update_section("Heterogeneity VAE: 2D stacks vs 3D subtomograms (bench/bench_hetero_series.py, "
                   "cpu)", "\n".join([
        f"One `simulate tiltseries` project per row ({args.n} particles, 31 tilts ±60° at 4°, "
        "box 24 at 10 Å, 800 pseudo-atoms, noise σ per tilt pixel as given), extracted at the "
        "true geometry as 3D subtomograms (`--ctf`) and as 2D stacks; `hetero train --zdim 4 "
        f"-n {args.epochs}`, otherwise default options, 1 thread. Two classes (one subunit "
        "missing): ARI of KMeans(2) of the latents against the classes; hinge (0–40°): "
        "|Spearman ρ| of the latents' PC1 with the hinge angle. Last epoch (best epoch).", "",
        *rows, "", f"Mean time per epoch over the rows: {timing}.", "",
        f"_{machine_load()}_"]))


if __name__ == "__main__":
    main()
