"""Auto-refinement quality and speed on the issue's simulated set, and the scoring-kernel rate.

Data: 1000 simulated subtomograms, 48³, 4 Å/px, CTF + missing wedge, noise set so that the
true-pose reconstruction reaches about 11 Å (FSC 0.5 against the truth); starting poses off by
8° rms and 1 px rms; reference = reconstruction from the starting poses. Prints and records
(``bench/RESULTS.md``): wall time and peak memory of ``auto_refine``, FSC-0.5 resolution of the
refined and true-pose maps against the truth, median angular error, the reported gold-standard
resolution, and the rate of the scoring GEMMs against the machine's float32 GEMM rate.

Run: ``.venv/bin/python bench/bench_refine.py [--n 1000] [--noise 5] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from results import bench_peak, machine_load, update_section  # noqa: E402

from subtomo.align.score import (  # noqa: E402
    Frequencies,
    particle_terms,
    scores_shared,
    translated_columns,  # noqa: E402
)
from subtomo.fourier.fsc import fsc, resolution_at  # noqa: E402
from subtomo.geometry.symmetry import symmetric_distance_deg  # noqa: E402
from subtomo.io.mrc import read_mrc  # noqa: E402
from subtomo.io.star import read_particles  # noqa: E402
from subtomo.refine.autorefine import RefineOptions, auto_refine  # noqa: E402
from subtomo.refine.reconstruct import reconstruct  # noqa: E402
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms  # noqa: E402

DATA = Path(__file__).parent / ".data"


def gemm_rate(device: str, n: int = 4096) -> float:
    """Measured float32 GEMM rate (GFLOP/s) of the machine, best of 3."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        (a @ b).sum().item()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def kernel_rate(device: str, box: int = 48, batch: int = 32) -> float:
    """GFLOP/s of :func:`scores_shared` on an order-2 global search batch (cross + power)."""
    freqs = Frequencies.within(box, 10.0, device)
    n = len(freqs)
    sections = torch.randn(4608, n, dtype=torch.complex64, device=device)
    spectra = torch.randn(batch, box, box, box // 2 + 1, dtype=torch.complex64, device=device)
    terms = particle_terms(spectra, None, freqs, None)
    shifts = torch.randn(27, 3, device=device)
    columns = translated_columns(terms, freqs.phases(shifts))
    power = sections.abs().square()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        scores_shared(sections, terms, columns, power).sum().item()
        seconds = time.perf_counter() - start
        flops = 2 * 4608 * 2 * n * batch * 27 + 2 * 4608 * n * batch
        best = max(best, flops / seconds / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sym", default="C1")
    parser.add_argument("--max_iter", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    tag = f"refine_{args.n}_{args.noise}_{args.sym}"
    data = DATA / tag
    simulated = not (data / "particles.star").exists()
    if simulated:
        shutil.rmtree(data, ignore_errors=True)
        simulate_subtomograms(data, SimulationConfig(
            n=args.n, box_px=48, pixel_size_A=4.0, n_atoms=4000, noise_sigma=args.noise,
            symmetry=args.sym, seed=3))
    truth_map = torch.from_numpy(read_mrc(data / "truth_class001.mrc")[0])
    start_ps = read_particles(data / "particles.star")
    truth_ps = read_particles(data / "truth.star")
    reference = reconstruct(start_ps, ctf=True, progress=False, device=args.device).map
    true_pose = reconstruct(truth_ps, ctf=True, halves=True, sym=args.sym, progress=False,
                            device=args.device)
    out = data / "Refine3D"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(data / "Refine3D_C1", ignore_errors=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = auto_refine(start_ps, reference, out, device=args.device, progress=False,
                         options=RefineOptions(ctf=True, sym=args.sym,
                                               max_iter=args.max_iter))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = bench_peak(simulated)
    box, pixel_size_A = 48, 4.0
    refined_05 = resolution_at(fsc(result.reconstruction.map, truth_map), box, pixel_size_A, 0.5)
    true_05 = resolution_at(fsc(true_pose.map, truth_map), box, pixel_size_A, 0.5)
    errors = symmetric_distance_deg(truth_ps.rotation_matrices(),
                                    result.particles.rotation_matrices(), args.sym)
    start_errors = symmetric_distance_deg(truth_ps.rotation_matrices(),
                                          start_ps.rotation_matrices(), args.sym)
    gemm, kernel = gemm_rate(args.device), kernel_rate(args.device)
    lines = [
        f"- data: {args.n} subtomograms 48³, 4 Å/px, CTF, noise σ {args.noise}, symmetry "
        f"{args.sym}; start median angular error {float(start_errors.median()):.2f}°",
        f"- refine ({args.device}): {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU, "
        f"{result.iterations} iterations (converged: {result.converged}), {peak}; "
        f"{machine_load()}",
        f"- FSC 0.5 vs truth: refined {refined_05:.2f} Å, true poses {true_05:.2f} Å "
        f"({100 * (refined_05 / true_05 - 1):+.1f} %)",
        f"- median angular error to the true poses: {float(errors.median()):.2f}° "
        f"(90th percentile {float(errors.quantile(0.9)):.2f}°)",
        f"- gold-standard resolution (FSC 0.143): {result.reconstruction.resolution_A:.2f} Å, "
        f"truth FSC 0.5: {refined_05:.2f} Å "
        f"({100 * (result.reconstruction.resolution_A / refined_05 - 1):+.1f} %)",
        f"- scoring GEMMs {kernel:.0f} GFLOP/s vs machine float32 GEMM {gemm:.0f} GFLOP/s "
        f"({100 * kernel / gemm:.0f} %)",
        "- iterations: " + "; ".join(
            f"{h['iteration']}: {h['resolution_A']:.1f} Å o{h['healpix_order']}"
            f"{'L' if h['local'] else 'G'} {h['seconds']:.0f} s" for h in result.history),
    ]
    if shutil.which("relion_reconstruct"):  # RELION's map of the same refined poses
        import subprocess

        subprocess.run(["relion_reconstruct", "--i", str(out / "run_data.star"), "--o",
                        str(out / "relion_reconstruct.mrc"), "--3d_rot", "--ctf",
                        "--sym", args.sym], check=True, capture_output=True)
        theirs = torch.from_numpy(read_mrc(out / "relion_reconstruct.mrc")[0])
        ours = reconstruct(read_particles(out / "run_data.star"), ctf=True, sym=args.sym,
                           progress=False, device=args.device).map
        lines.append(
            "- the refined poses (run_data.star) rebuilt: relion_reconstruct "
            f"{resolution_at(fsc(theirs, truth_map), box, pixel_size_A, 0.5):.2f} Å, subtomo "
            f"reconstruct {resolution_at(fsc(ours, truth_map), box, pixel_size_A, 0.5):.2f} Å "
            "(FSC 0.5 vs truth)")
    if args.sym != "C1":  # the same data refined without symmetry, for comparison
        c1 = auto_refine(start_ps, reference, data / "Refine3D_C1", device=args.device,
                         progress=False, options=RefineOptions(ctf=True, max_iter=args.max_iter))
        c1_05 = resolution_at(fsc(c1.reconstruction.map, truth_map), box, pixel_size_A, 0.5)
        lines.append(f"- same data refined in C1: FSC 0.5 vs truth {c1_05:.2f} Å, gold-standard "
                     f"{c1.reconstruction.resolution_A:.2f} Å ({args.sym}: {refined_05:.2f} Å)")
    print("\n".join(lines))
    update_section(f"Auto-refine, {args.n} particles 48³ {args.sym} ({args.device})",
                   "\n".join(lines))


if __name__ == "__main__":
    main()
