"""Tilt-series benches: extraction speed and memory, tomogram reconstruction speed.

Issue 11 bars: extraction of 64³ subtomograms from 41 tilts at ≥ 100 particles/s with memory
flat in the number of particles; a tomogram at bin 8 of a 4k × 4k × 41 stack in ≤ 60 s. Each
measurement runs in a fresh process (its own peak RSS); wall and process CPU time are recorded
because the machine is shared. The stacks are noise (speed does not depend on content): 41
tilts of 1024² px for extraction, 41 of 4096² px for the tomogram.

Run: ``.venv/bin/python bench/bench_tomo.py [--n 250 1000] [--threads 1 2]
[--skip-tomogram] [--skip-extract]`` (a partial run prints and does not record).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from results import OWN_PEAK, machine_load, update_section  # noqa: E402

DATA = Path(__file__).parent / ".data" / "tomo"

SETUP = OWN_PEAK + """
def peak_rss_GB():  # the process's own peak (not its parent's): KiB / 1e6, as recorded before
    return own_peak_mib() * 1024 / 1e6
import numpy as np, pandas as pd
from subtomo.io.tilt_series import TiltSeries
from subtomo.io.tomograms import TomogramSet
def series(stack, w, thickness):
    angles = np.arange(-60, 61, 3.0)
    tilts = pd.DataFrame({"rlnMicrographName": [f"{i + 1}@{stack}" for i in range(41)],
        "rlnTomoXTilt": 0.0, "rlnTomoYTilt": angles, "rlnTomoZRot": 0.0,
        "rlnTomoXShiftAngst": 0.0, "rlnTomoYShiftAngst": 0.0, "rlnDefocusU": 30000.0,
        "rlnDefocusV": 29000.0, "rlnDefocusAngle": 30.0,
        "rlnMicrographPreExposure": np.abs(angles)})
    g = {"rlnTomoName": "TS", "rlnTomoTiltSeriesPixelSize": 10.0, "rlnTomoSizeX": w,
         "rlnTomoSizeY": w, "rlnTomoSizeZ": thickness, "rlnTomoHand": -1.0}
    return TiltSeries(g, tilts, source=stack)
"""

EXTRACT = SETUP + """
import json, sys, threading, time, torch
from subtomo.io.particles import ParticleSet
import subtomo.tomo.extract as ex
n, stack, out, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
writer_cpu = []
write = ex._write_subtomograms
def timed_write(*args):  # CPU time of the writer thread, job by job
    start = time.thread_time()
    write(*args)
    writer_cpu.append(time.thread_time() - start)
ex._write_subtomograms = timed_write
ts = series(stack, 1024, 300)
rng = np.random.default_rng(0)
df = pd.DataFrame({"rlnTomoName": "TS", "rlnOpticsGroup": 1,
    "rlnCenteredCoordinateXAngst": rng.uniform(-2500, 2500, n),
    "rlnCenteredCoordinateYAngst": rng.uniform(-4500, 4500, n),
    "rlnCenteredCoordinateZAngst": rng.uniform(-1000, 1000, n)})
optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0],
                       "rlnTomoTiltSeriesPixelSize": [10.0]})
wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
r = ex.extract_subtomograms(ParticleSet(df, optics), TomogramSet({"TS": ts}), out,
                            ex.ExtractOptions(box=64, batch_size=32), progress=False)
print(json.dumps({"n": r.written, "threads": threads, "wall_s": time.perf_counter() - wall,
                  "cpu_s": time.process_time() - cpu, "main_cpu_s": time.thread_time() - main,
                  "writer_cpu_s": sum(writer_cpu),
                  "rss_GB": peak_rss_GB()}))
"""

TOMOGRAM = SETUP + """
import json, sys, time, torch
from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram
torch.set_num_threads(int(sys.argv[2]))
ts = series(sys.argv[1], 4096, 2000)
wall, cpu = time.perf_counter(), time.process_time()
volume, pixel_size_A = reconstruct_tomogram(ts, binning=8.0, progress=False)
print(json.dumps({"shape": list(volume.shape), "threads": int(sys.argv[2]),
                  "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                  "rss_GB": peak_rss_GB()}))
"""


def _stack(path: Path, size: int) -> Path:
    import mrcfile

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        with mrcfile.new_mmap(path, shape=(41, size, size), mrc_mode=2, overwrite=True) as mrc:
            for i in range(41):
                mrc.data[i] = rng.normal(size=(size, size)).astype(np.float32)
            mrc.voxel_size = 10.0
            mrc.set_image_stack()
    return path


def _child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-tomogram", action="store_true")
    parser.add_argument("--skip-extract", action="store_true")
    args = parser.parse_args()
    rows = []
    stack = _stack(DATA / "stack_1k.mrcs", 1024)
    for threads in ([] if args.skip_extract else args.threads):
        for n in args.n:
            r = _child(EXTRACT, str(n), str(stack), str(DATA / f"extract_{n}"), str(threads))
            r["per_cpu_s"] = r["n"] / r["cpu_s"]
            # two idle cores: the main and writer threads overlap, so the wall time lies
            # between max(main, writer) and their sum (torch on one thread: the CPU is the work)
            best = r["n"] / max(r["main_cpu_s"], r["writer_cpu_s"])
            r["idle"] = f"{r['per_cpu_s']:.0f}–{best:.0f}" if threads == 1 else "—"
            rows.append(r)
            print(r)
    lines = ["Extraction, 64³ subtomograms + CTF volumes from 41 tilts (1024² px, batches of "
             "32), files written; bar ≥ 100 particles/s on 2 cores, memory flat in particles. "
             f"Machine: {machine_load()}. With torch on one thread "
             "the CPU time is the work itself (on two threads under load OpenMP's spinning "
             "inflates it); on an idle 2-core machine the main (compute) and writer threads run "
             "side by side, so particles/s lies between N / (main + writer CPU) = particles per "
             "CPU-s and N / max(main, writer CPU) (one torch thread; with two, torch's own "
             "worker thread is in neither).", "",
             "| particles | torch threads | wall (s) | CPU (s): all / main / writer | "
             "particles per CPU-s | idle 2-core estimate (particles/s) | peak RSS (GB) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['threads']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} / "
              f"{r['main_cpu_s']:.1f} / {r['writer_cpu_s']:.1f} | {r['per_cpu_s']:.0f} | "
              f"{r['idle']} | {r['rss_GB']:.2f} |" for r in rows]
    if not args.skip_tomogram:
        big = _stack(DATA / "stack_4k.mrcs", 4096)
        lines += ["", "Tomogram at bin 8 of a 4096² × 41 stack (thickness 2000 px → 250 × 512 × "
                  "512 voxels, ramp-weighted back-projection, images read and Fourier-cropped "
                  "included); bar ≤ 60 s on 2 cores. On an idle 2-core machine the wall time is "
                  "at most the one-thread CPU time.", "",
                  "| torch threads | wall (s) | CPU (s) | peak RSS (GB) |", "|---|---|---|---|"]
        for threads in args.threads:
            t = _child(TOMOGRAM, str(big), str(threads))
            print(t)
            lines.append(f"| {threads} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | "
                         f"{t['rss_GB']:.2f} |")
    if args.skip_extract or args.skip_tomogram:
        print("\n".join(lines))  # a partial run does not replace the recorded section
        return
    update_section("Tilt series: extraction and tomograms", "\n".join(lines))


if __name__ == "__main__":
    main()
