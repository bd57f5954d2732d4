"""Real-size data (issue 14): memory and time of reconstruct, refine and classify at 64³–256³.

Every measured run is a fresh child process, so its peak resident memory (``VmHWM``, by
``results.own_peak_mib``; not ``ru_maxrss``, which holds the parent's) and its CPU time are its
own; the machine is shared, so wall time is printed beside CPU time.
Benchmarks (``bench/bench_scale.py NAME``):

- ``memory``: one global order-3 refinement iteration (a) at 48³ with an unlimited budget and
  with a tight one (no section cache, rotation chunks, particle groups): the poses must agree
  to 1e-3°; (b) at 128³ under ``--max_memory 8`` (bar: peak ≤ 8 GiB), near Nyquist.
- ``reconstruct``: ``reconstruct --ctf --halves`` of 250 and 1000 particles at 128³ and 256³
  (bar at 256³: flat memory). At 256³ the STAR file names 100 simulated subtomograms (and
  CTF volumes) over and over, to spare the disk (1000 distinct ones would take 128 GB).
- ``refine128``: auto-refine of 1000 particles at 128³ (global, then local) against the
  true-pose FSC-0.5 resolution (bar: within 5 %).
- ``refine64``: auto-refine of 5000 particles at 64³.
- ``classify96``: 3D classification, K 4, global searches at 96³.

Data are simulated into ``bench/.data/scale_*`` (git-ignored) and deleted afterwards unless
``--keep``. Results go to ``bench/RESULTS.md``.

Run: ``.venv/bin/python bench/bench_scale.py memory [--n ...] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results import machine_load, own_peak_mib, run_measured, update_section  # noqa: E402

DATA = Path(__file__).parent / ".data"
GiB = 1 << 30
SHARED = ("CPU times are user + system over all threads of the process; the machine's "
          "load at the end: ")


# ---- child processes ----------------------------------------------------------------------
def run_child(name: str, **kwargs) -> dict:
    """Run ``child_<name>(**kwargs)`` in a fresh process: its JSON result plus wall, CPU and
    peak RSS."""
    proc, wall, cpu, _ = run_measured([sys.executable, __file__, "_child", name,
                                       json.dumps(kwargs)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"child {name} failed ({proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"], result["cpu_s"] = wall, cpu
    print(f"  {name} {kwargs}: {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU, "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
    return result


def _peak_gib() -> float:
    return own_peak_mib() / 1024


def simulate(name: str, **config) -> Path:
    """Simulated subtomograms in ``bench/.data/scale_<name>`` (made once)."""
    from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

    folder = DATA / f"scale_{name}"
    if not (folder / "truth.star").exists():
        shutil.rmtree(folder, ignore_errors=True)
        start, cpu = time.perf_counter(), time.process_time()
        simulate_subtomograms(folder, SimulationConfig(**config), progress=False)
        print(f"  simulated {name}: {time.perf_counter() - start:.0f} s wall, "
              f"{time.process_time() - cpu:.0f} s CPU", flush=True)
    return folder


def child_iteration(star: str, reference: str, resolution_A: float, order: int,
                    max_memory: float | None, n: int, out: str) -> dict:
    """One global refinement iteration at ``order`` and ``resolution_A``; poses saved."""
    import numpy as np
    import torch

    from subtomo.align.score import Frequencies
    from subtomo.geometry.healpix import rotation_grid
    from subtomo.io.mrc import read_mrc
    from subtomo.io.star import read_particles
    from subtomo.parallel.distributed import Context
    from subtomo.refine import outputs
    from subtomo.refine.autorefine import (
        RefineOptions,
        Schedule,
        run_iteration,
        search_settings,
    )
    from subtomo.refine.expectation import Poses, plan_memory
    from subtomo.refine.job import Job, initial_sigma2
    from subtomo.refine.reconstruct import half_sets, image_box

    ps = read_particles(star).subset(np.arange(n))
    box, pixel_size_A = image_box(ps), float(ps.pixel_size_A()[0])
    ref = torch.from_numpy(read_mrc(reference)[0])
    options = RefineOptions(ctf=True, max_memory_gib=max_memory)
    matrices, origins = outputs.full_poses(ps, pixel_size_A)
    schedule = Schedule(order, 6.0, 2.0, resolution_A)
    settings = search_settings(schedule, options, box, pixel_size_A, 0.8 * box * pixel_size_A,
                               False, 1)
    sigma2 = initial_sigma2(ps, np.arange(n), box, True,
                            torch.as_tensor(origins, dtype=torch.float32), None, "cpu",
                            Context(), options.batch_size, max_memory)
    job = Job(Path(out).parent, options, box, pixel_size_A, 0.8 * box * pixel_size_A, None,
              half_sets(ps), progress=False)
    plan = plan_memory(job.e_step(settings, None), box=box, k_classes=1, n_searched=1,
                       device="cpu")
    cache_needed = 8 * len(rotation_grid(order)[0]) * len(
        Frequencies.within(box, settings.coarse_radius_px))
    start, cpu = time.perf_counter(), time.process_time()
    result = run_iteration(job, ps, [ref, ref], Poses(matrices, origins), sigma2, settings,
                           resolution_A)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.savez(out, matrices=result.matrices, origins=result.origins_px)
    return {"iteration_s": seconds, "iteration_cpu_s": cpu, "n": n, "box": box,
            "cached": plan.cache_bytes is None or plan.cache_bytes >= cache_needed,
            "cache_needed_gib": cache_needed / GiB,
            "coarse_px": settings.coarse_radius_px, "fine_px": settings.fine_radius_px,
            "batch": plan.batch_size, "cache_gib": (plan.cache_bytes or 0) / GiB,
            "work_gib": (plan.work_bytes or 0) / GiB, "peak_rss_gib": _peak_gib()}


def child_reconstruct(star: str, n: int, max_memory: float | None) -> dict:
    import numpy as np

    from subtomo.io.star import read_particles
    from subtomo.refine.reconstruct import reconstruct

    ps = read_particles(star)
    ps = ps.subset(np.arange(n) % len(ps))
    start, cpu = time.perf_counter(), time.process_time()
    result = reconstruct(ps, ctf=True, halves=True, progress=False, max_memory_gib=max_memory)
    return {"seconds": time.perf_counter() - start, "process_cpu_s": time.process_time() - cpu,
            "resolution_A": result.resolution_A, "n": n, "peak_rss_gib": _peak_gib()}


def child_refine(folder: str, n: int, max_iter: int, max_memory: float | None,
                 auto_local: int, resume: bool = False,
                 particle_diameter: float | None = None) -> dict:
    import numpy as np
    import torch

    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.geometry.symmetry import symmetric_distance_deg
    from subtomo.io.mrc import read_mrc
    from subtomo.io.star import read_particles
    from subtomo.refine.autorefine import RefineOptions, auto_refine
    from subtomo.refine.reconstruct import reconstruct

    data = Path(folder)
    start_ps = read_particles(data / "particles.star").subset(np.arange(n))
    truth_ps = read_particles(data / "truth.star").subset(np.arange(n))
    truth_map = torch.from_numpy(read_mrc(data / "truth_class001.mrc")[0])
    box, pixel_size_A = truth_map.shape[-1], float(start_ps.pixel_size_A()[0])
    reference = reconstruct(start_ps, ctf=True, progress=False, max_memory_gib=max_memory).map
    true_pose = reconstruct(truth_ps, ctf=True, halves=True, progress=False,
                            max_memory_gib=max_memory)
    out = data / "Refine3D"
    resume = resume and any(out.glob("run_it*_optimiser.json"))
    first = 0
    if resume:  # a run stopped earlier (e.g. at the end of a session) goes on where it was
        from subtomo.refine.outputs import last_state
        first = json.loads(last_state(out).read_text())["iteration"]
    else:
        shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = auto_refine(start_ps, reference, out, progress=False, continue_from=resume,
                         options=RefineOptions(ctf=True, max_iter=max_iter,
                                               max_memory_gib=max_memory,
                                               auto_local_healpix_order=auto_local,
                                               particle_diameter_A=particle_diameter,
                                               flatten_solvent=particle_diameter is not None))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    refined = resolution_at(fsc(result.reconstruction.map, truth_map), box, pixel_size_A, 0.5)
    true = resolution_at(fsc(true_pose.map, truth_map), box, pixel_size_A, 0.5)
    errors = symmetric_distance_deg(truth_ps.rotation_matrices(),
                                    result.particles.rotation_matrices(), "C1")
    start_errors = symmetric_distance_deg(truth_ps.rotation_matrices(),
                                          start_ps.rotation_matrices(), "C1")
    return {"seconds": seconds, "process_cpu_s": cpu, "iterations": result.iterations,
            "resumed_after": first,
            "converged": result.converged, "refined_fsc05_A": refined, "true_fsc05_A": true,
            "gold_A": result.reconstruction.resolution_A,
            "median_error_deg": float(errors.median()),
            "start_error_deg": float(start_errors.median()), "n": n, "box": box,
            "apix": pixel_size_A, "history": [
                {k: h[k] for k in ("iteration", "resolution_A", "healpix_order", "local",
                                   "final", "seconds")} for h in result.history],
            "peak_rss_gib": _peak_gib()}


def child_classify(folder: str, n: int, iters: int, max_memory: float | None) -> dict:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from subtomo.io.star import read_particles
    from subtomo.refine.classify import ClassifyOptions, classify
    from subtomo.refine.reconstruct import reconstruct

    data = Path(folder)
    given = read_particles(data / "particles.star").subset(np.arange(n))
    labels = read_particles(data / "truth.star").particles["rlnClassNumber"].to_numpy()[:n]
    reference = reconstruct(given, ctf=True, progress=False, max_memory_gib=max_memory).map
    out = data / "Class3D"
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = classify(given, reference, out, progress=False, options=ClassifyOptions(
        K=4, n_iter=iters, ctf=True, healpix_order=2, max_memory_gib=max_memory))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    found = result.particles.particles["rlnClassNumber"].to_numpy()
    return {"seconds": seconds, "process_cpu_s": cpu, "iterations": result.iterations,
            "ari": float(adjusted_rand_score(labels, found)), "n": n,
            "distribution": [float(x) for x in result.distribution],
            "history_s": [h["seconds"] for h in result.history], "peak_rss_gib": _peak_gib()}


# ---- benchmarks -----------------------------------------------------------------------------
def bench_memory(args) -> None:
    import numpy as np
    import torch

    from subtomo.geometry.euler import angular_distance_deg

    lines = []
    small = simulate("48", n=200, box_px=48, pixel_size_A=4.0, n_atoms=4000, noise_sigma=5.0,
                     seed=3)
    poses = {}
    for tag, budget in (("unlimited", 1000.0), ("tight", 1.2)):
        out = DATA / f"scale_48_{tag}.npz"
        r = run_child("iteration", star=str(small / "particles.star"),
                      reference=str(small / "truth_class001.mrc"), resolution_A=12.0, order=3,
                      max_memory=budget, n=200, out=str(out))
        poses[tag] = np.load(out)
        lines.append(f"- 48³, 200 particles, order 3 global, budget {budget:g} GiB ({tag}): "
                     f"section cache ({r['cache_needed_gib']:.2f} GiB) "
                     f"{'kept' if r['cached'] else 'off'}, work {r['work_gib']:.2f} GiB, "
                     f"batch {r['batch']}: {r['iteration_s']:.0f} s wall, "
                     f"{r['cpu_s']:.0f} s CPU, peak RSS {r['peak_rss_gib']:.2f} GiB")
    diff = angular_distance_deg(torch.as_tensor(poses["unlimited"]["matrices"]),
                                torch.as_tensor(poses["tight"]["matrices"]))
    shift = np.abs(poses["unlimited"]["origins"] - poses["tight"]["origins"]).max()
    lines.append(f"- same poses under both budgets: largest angular difference "
                 f"{float(diff.max()):.2e}° (bar 1e-3°), largest origin difference "
                 f"{shift:.2e} px")
    big = simulate("128", n=args.n or 1000, box_px=128, pixel_size_A=2.0, n_atoms=4000,
                   noise_sigma=5.0, seed=3, batch_size=8)
    n = 32  # one batch: the memory does not depend on the number of particles
    r = run_child("iteration", star=str(big / "particles.star"),
                  reference=str(big / "truth_class001.mrc"), resolution_A=5.3, order=3,
                  max_memory=8.0, n=n, out=str(DATA / "scale_128_order3.npz"))
    lines.append(f"- 128³, {n} particles, order 3 global (36,864 rotations x 123 translations, "
                 f"coarse {r['coarse_px']:.1f} px, fine {r['fine_px']:.1f} px), "
                 f"`--max_memory 8`: peak RSS **{r['peak_rss_gib']:.2f} GiB** (bar ≤ 8 GiB); "
                 f"batch {r['batch']}, work {r['work_gib']:.2f} GiB; {r['iteration_s']:.0f} s "
                 f"wall, {r['cpu_s']:.0f} s CPU: {r['cpu_s'] / n:.1f} s CPU per particle")
    body = "\n".join(lines) + (
        "\n\nOne E + M step (`run_iteration`) of a global order-3 search, reference = the "
        "ground truth. The 48³ runs differ only in the memory budget (the tight one keeps no "
        "section cache and scores rotations in chunks and particles in groups). At 128³ the "
        "resolution is 5.3 Å (2 Å/px: fine pass to 51 px, near Nyquist), the costliest "
        "fine pass. " + SHARED + machine_load())
    print(body)
    update_section("Fixed-memory search (bench/bench_scale.py memory)", body)


def bench_reconstruct(args) -> None:
    rows = ["| box | particles | distinct files | wall (s) | CPU (s) | CPU s/particle | "
            "peak RSS (GiB) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    sets = [("128", dict(n=1000, box_px=128, pixel_size_A=2.0, n_atoms=4000, noise_sigma=5.0,
                         seed=3, batch_size=8)),
            ("256", dict(n=100, box_px=256, pixel_size_A=2.0, n_atoms=8000, noise_sigma=5.0,
                         seed=4, batch_size=2))]
    for name, config in sets:
        folder = simulate(name, **config)
        for n in (250, 1000):
            r = run_child("reconstruct", star=str(folder / "truth.star"), n=n,
                          max_memory=args.max_memory)
            rows.append(f"| {config['box_px']} | {n} | {min(n, config['n'])} | "
                        f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['cpu_s'] / n:.2f} | "
                        f"{r['peak_rss_gib']:.2f} |")
            print(rows[-1], flush=True)
        if not args.keep and name == "256":
            shutil.rmtree(folder, ignore_errors=True)
    body = "\n".join(rows) + (
        "\n\n`reconstruct(ctf=True, halves=True)`: both half sets, FSC, Wiener filter; 2 Å/px; "
        "each run a fresh process (wall and CPU include start-up and reading). The 256³ STAR "
        "files name the same 100 subtomograms and CTF volumes (128 MB per particle on disk) "
        "repeatedly. Memory is the two padded back-projectors (0.8 GB each at 256³), a "
        "batch of particles and the reconstruction's transients: flat in the number of "
        "particles. " + SHARED + machine_load())
    update_section("Reconstruction at 128³ and 256³ (bench/bench_scale.py reconstruct)", body)


def bench_refine(args, name: str, n: int, box: int) -> None:
    full_n = n
    pixel_size_A = 2.0 if box >= 128 else 4.0
    n = min(args.n or n, n)
    folder = simulate(name if n == full_n else f"{name}_n{n}", n=n, box_px=box,
                      pixel_size_A=pixel_size_A, n_atoms=4000, noise_sigma=5.0, seed=3,
                      batch_size=8)
    r = run_child("refine", folder=str(folder), n=n, max_iter=args.max_iter,
                  max_memory=args.max_memory, auto_local=args.auto_local,
                  resume=args.resume, particle_diameter=args.particle_diameter)
    n = r["n"]
    iters = "; ".join(f"{h['iteration']}: {h['resolution_A']:.1f} Å o{h['healpix_order']}"
                      f"{'L' if h['local'] else 'G'} {h['seconds']:.0f} s"
                      for h in r["history"])
    per = r["process_cpu_s"] / n / max(1, r["iterations"] - r["resumed_after"])
    search = [h["seconds"] / n for h in r["history"] if not h.get("final")]
    final = [h["seconds"] / n for h in r["history"] if h.get("final")]
    typical = statistics.median(search) if search else 0.0
    at_scale = 40000 * (typical * len(search) + sum(final)) / 3600
    wall = sum(h["seconds"] for h in r["history"])
    gap = 100 * (r["refined_fsc05_A"] / r["true_fsc05_A"] - 1)
    body = "\n".join([
        f"- data: {n} subtomograms {box}³, {pixel_size_A} Å/px, CTF, noise σ 5; start median "
        f"angular error {r['start_error_deg']:.2f}°",
        f"- refine (global HEALPix order 2, local from order {args.auto_local}"
        + (f", `--particle_diameter {args.particle_diameter:g} --flatten_solvent`"
           if args.particle_diameter else ", no mask") + "): "
        f"{r['iterations']} iterations (converged: {r['converged']}), "
        f"{wall:.0f} s wall in all"
        + (f" (resumed after iteration {r['resumed_after']}; this run {r['seconds']:.0f} s "
           f"wall)" if r["resumed_after"] else "")
        + f", {r['process_cpu_s']:.0f} s CPU (this run), peak RSS "
        f"{r['peak_rss_gib']:.2f} GiB",
        f"- FSC 0.5 vs truth: refined {r['refined_fsc05_A']:.2f} Å, true poses "
        f"{r['true_fsc05_A']:.2f} Å ({gap:+.1f} %; bar within 5 %); gold-standard "
        f"{r['gold_A']:.2f} Å; median angular error {r['median_error_deg']:.2f}°",
        f"- **{typical:.2f} s wall per particle per search iteration** (median of "
        f"{len(search)}), " + (f"{final[0]:.2f} s for the final one (to Nyquist), "
                               if final else "")
        + f"{per:.2f} s CPU per particle per iteration of this run: 40,000 particles "
        f"through the same {r['iterations']} iterations ≈ {at_scale:.0f} h wall on these 2 "
        "cores",
        f"- iterations: {iters}",
        "", SHARED + machine_load()])
    print(body)
    reduced = ", ".join(([f"{n} of {full_n} particles"] if n < full_n else [])
                        + ([f"--max_iter {args.max_iter}"] if not r["converged"] else []))
    update_section(f"Auto-refine at scale, {full_n} particles {box}³ "
                   f"(bench/bench_scale.py refine{name})", body, reduced=reduced or None,
                   stopped_early=None if r["converged"] else
                   f"not converged after {r['iterations']} iterations")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


def bench_classify(args) -> None:
    n = args.n or 500
    folder = simulate("96", n=n, box_px=96, pixel_size_A=3.0, n_atoms=4000, noise_sigma=5.0,
                      classes=3, angle_error_deg=3.0, seed=5, batch_size=8)
    r = run_child("classify", folder=str(folder), n=n, iters=args.max_iter,
                  max_memory=args.max_memory)
    per = r["process_cpu_s"] / n / r["iterations"]
    body = "\n".join([
        f"- data: {n} subtomograms 96³, 3 Å/px, CTF, noise σ 5, 3 true classes",
        f"- classify K 4, T 4, global searches (HEALPix order 2), {r['iterations']} "
        f"iterations: {r['seconds']:.0f} s wall, {r['process_cpu_s']:.0f} s CPU, peak RSS "
        f"{r['peak_rss_gib']:.2f} GiB (bar: within 24 GiB)",
        f"- **{per:.2f} s CPU per particle per iteration**; seconds per iteration "
        + ", ".join(f"{s:.0f}" for s in r["history_s"]),
        f"- adjusted Rand index vs the true classes after {r['iterations']} iterations: "
        f"{r['ari']:.2f} (for information: too few iterations to converge; classes "
        + "/".join(f"{100 * d:.0f}" for d in r["distribution"]) + " %)",
        "", SHARED + machine_load()])
    print(body)
    reduced = ", ".join(([f"{n} of 500 particles"] if n < 500 else [])
                        + ([f"{args.max_iter} of 25 iterations"] if args.max_iter < 25 else []))
    update_section("3D classification at 96³, K 4, global (bench/bench_scale.py classify96)",
                   body, reduced=reduced or None)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        result = globals()[f"child_{sys.argv[2]}"](**json.loads(sys.argv[3]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", choices=("memory", "reconstruct", "refine128", "refine64",
                                          "classify96"))
    parser.add_argument("--n", type=int, default=None, help="particles (default: the bench's)")
    parser.add_argument("--max_iter", type=int, default=25)
    parser.add_argument("--max_memory", type=float, default=None, help="GiB (default: auto)")
    parser.add_argument("--auto_local", type=int, default=3,
                        help="refine: HEALPix order of the first local search (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated data")
    parser.add_argument("--particle_diameter", type=float, default=None,
                        help="refine: Å; particles and references masked by this sphere "
                             "(relion_refine's --particle_diameter with --flatten_solvent)")
    parser.add_argument("--resume", action="store_true",
                        help="refine: continue a stopped run from its last iteration")
    args = parser.parse_args()
    if args.bench == "memory":
        bench_memory(args)
    elif args.bench == "reconstruct":
        bench_reconstruct(args)
    elif args.bench == "refine128":
        bench_refine(args, "128", 1000, 128)
    elif args.bench == "refine64":
        bench_refine(args, "64", 5000, 64)
    else:
        bench_classify(args)


if __name__ == "__main__":
    main()
