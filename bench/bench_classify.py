"""3D classification quality and speed on the issue's simulated 3-class set.

Data (issue 23's configuration): 1500 simulated subtomograms, 48³, 4 Å/px, CTF + missing
wedge, noise σ 10; three classes (the full complex, one subunit missing, one domain rotated
25°), each particle's class drawn uniformly (about equal thirds); the given poses are off by 5°
rms and 0.5 px rms. Reference: the consensus reconstruction of all particles at the given poses.
``classify`` runs K = 3, T = 4, 25 iterations with local searches (HEALPix order 3, σ_ang 5°,
``ini_high`` 40 Å). Prints and records (``bench/RESULTS.md``): adjusted Rand index
against the true classes, each class map's FSC-0.5 resolution against its ground truth next to
the reconstruction from the true labels (at the given and at the true poses), wall time and
peak memory.

Run: ``.venv/bin/python bench/bench_classify.py [--n 1500] [--iter 25] [--noise 10]
[--angle_error 5] [--ini_high 40] [--seed 5] [--device cpu]``; a run in another configuration
is marked as reduced and keeps the last full run's figures below its own.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).parent))

from results import bench_peak, update_section  # noqa: E402

from subtomo.fourier.fsc import fsc, resolution_at  # noqa: E402
from subtomo.geometry.symmetry import symmetric_distance_deg  # noqa: E402
from subtomo.io.mrc import read_mrc  # noqa: E402
from subtomo.io.star import read_particles  # noqa: E402
from subtomo.refine.classify import ClassifyOptions, classify  # noqa: E402
from subtomo.refine.reconstruct import reconstruct  # noqa: E402
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms  # noqa: E402

DATA = Path(__file__).parent / ".data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--noise", type=float, default=10.0)
    parser.add_argument("--iter", type=int, default=25)
    parser.add_argument("--angle_error", type=float, default=5.0, help="degrees rms")
    parser.add_argument("--ini_high", type=float, default=40.0, help="Å")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = DATA / f"classify_{args.n}_{args.noise}_{args.angle_error}_{args.seed}"
    simulated = not (data / "particles.star").exists()
    if simulated:
        shutil.rmtree(data, ignore_errors=True)
        simulate_subtomograms(data, SimulationConfig(
            n=args.n, box_px=48, pixel_size_A=4.0, n_atoms=4000, noise_sigma=args.noise,
            classes=3, angle_error_deg=args.angle_error, shift_error_px=0.5, seed=args.seed))
    given = read_particles(data / "particles.star")
    truth = read_particles(data / "truth.star")
    labels = truth.particles["rlnClassNumber"].to_numpy()
    truth_maps = [torch.from_numpy(read_mrc(data / f"truth_class{k:03d}.mrc")[0])
                  for k in (1, 2, 3)]
    start_error = symmetric_distance_deg(truth.rotation_matrices(), given.rotation_matrices(),
                                         "C1")
    reference = reconstruct(given, ctf=True, progress=False, device=args.device).map
    out = data / "Class3D"
    shutil.rmtree(out, ignore_errors=True)
    options = ClassifyOptions(K=3, tau2_fudge=4.0, n_iter=args.iter, ctf=True, local=True,
                              healpix_order=3, sigma_ang_deg=5.0, ini_high_A=args.ini_high)
    start = time.perf_counter()
    result = classify(given, reference, out, options=options, device=args.device,
                      progress=False)
    seconds = time.perf_counter() - start
    peak = bench_peak(simulated)
    found = result.particles.particles["rlnClassNumber"].to_numpy()
    ari = adjusted_rand_score(labels, found)
    confusion = np.array([[np.sum((labels == t) & (found == f)) for f in (1, 2, 3)]
                          for t in (1, 2, 3)])
    _, match = linear_sum_assignment(-confusion)  # true class t -> found class match[t]
    box, pixel_size_A = 48, 4.0
    lines = [
        f"- configuration: `bench_classify.py --n {args.n} --iter {args.iter} --noise "
        f"{args.noise} --angle_error {args.angle_error} --ini_high {args.ini_high} --seed "
        f"{args.seed}` ({torch.get_num_threads()} torch threads)",
        f"- data: {args.n} subtomograms 48³, 4 Å/px, CTF, noise σ {args.noise}, 3 classes "
        f"({', '.join(str(int(np.sum(labels == t))) for t in (1, 2, 3))} particles); given "
        f"poses off by {float(start_error.median()):.2f}° median, "
        f"{100 * float((start_error <= 5).double().mean()):.0f} % within 5°",
        f"- classify ({args.device}): K 3, T 4, {result.iterations} iterations, local "
        f"(order 3, σ_ang 5°, ini_high {args.ini_high:g} Å): {seconds:.0f} s wall "
        f"({seconds / max(result.iterations, 1):.1f} s per iteration), {peak}",
        f"- adjusted Rand index vs true classes: {ari:.3f}",
    ]
    worst = 0.0
    for t in range(3):
        rows = np.flatnonzero(labels == t + 1)
        class_map = result.reconstructions[match[t]].map
        got = resolution_at(fsc(class_map, truth_maps[t]), box, pixel_size_A, 0.5)
        ref_given = reconstruct(given.subset(rows), ctf=True, progress=False, halves=True,
                                device=args.device).map
        ref_true = reconstruct(truth.subset(rows), ctf=True, progress=False, halves=True,
                               device=args.device).map
        at_given = resolution_at(fsc(ref_given, truth_maps[t]), box, pixel_size_A, 0.5)
        at_true = resolution_at(fsc(ref_true, truth_maps[t]), box, pixel_size_A, 0.5)
        worst = max(worst, got / at_true - 1)
        lines.append(
            f"- true class {t + 1} → class {match[t] + 1}: FSC 0.5 vs truth {got:.2f} Å; "
            f"true labels at the given poses {at_given:.2f} Å, at the true poses "
            f"{at_true:.2f} Å ({100 * (got / at_true - 1):+.1f} %)")
    lines.append(f"- worst class vs true labels and poses: {100 * worst:+.1f} % (bar: ≤ 10 %)")
    lines.append("- occupancy per iteration: " + "; ".join(
        f"{h['iteration']}: " + "/".join(f"{100 * s:.0f}" for s in h["distribution"])
        for h in result.history))
    print("\n".join(lines))
    full = (1500, 25, 10.0, 5.0, 40.0, 5)
    reduced = None if (args.n, args.iter, args.noise, args.angle_error, args.ini_high,
                       args.seed) == full else (
        f"{args.n} particles, {args.iter} iterations, noise σ {args.noise:g}, poses "
        f"{args.angle_error:g}° off, ini_high {args.ini_high:g} Å, seed {args.seed} (full: "
        "1500, 25, σ 10, 5°, 40 Å, seed 5)")
    update_section(f"3D classification, 1500 particles 48³, 3 classes ({args.device})",
                   "\n".join(lines), reduced=reduced)


if __name__ == "__main__":
    main()
