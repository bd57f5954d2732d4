"""Tilt-series benches: extraction speed and memory, tomogram reconstruction speed.

Issue 11 bars: extraction of 64³ subtomograms from 41 tilts at ≥ 100 particles/s with memory
flat in the number of particles; a tomogram at bin 8 of a 4k × 4k × 41 stack in ≤ 60 s. Each
measurement runs in a fresh process (its own peak RSS); wall and process CPU time are recorded
because the machine is shared. The stacks are noise (speed does not depend on content): 41
tilts of 1024² px for extraction, 41 of 4096² px for the tomogram.

Run: ``.venv/bin/python bench/bench_tomo.py [--n 250 1000] [--skip-tomogram]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from results import update_section  # noqa: E402

DATA = Path(__file__).parent / ".data" / "tomo"

SETUP = """
import numpy as np, pandas as pd
from subtomo.tomo.tiltseries import TiltSeries
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
import json, resource, sys, time, torch
from subtomo.io.particles import ParticleSet
from subtomo.tomo.extract import ExtractOptions, extract_subtomograms
n, stack, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ts = series(stack, 1024, 300)
rng = np.random.default_rng(0)
df = pd.DataFrame({"rlnTomoName": "TS", "rlnOpticsGroup": 1,
    "rlnCenteredCoordinateXAngst": rng.uniform(-2500, 2500, n),
    "rlnCenteredCoordinateYAngst": rng.uniform(-4500, 4500, n),
    "rlnCenteredCoordinateZAngst": rng.uniform(-1000, 1000, n)})
optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0],
                       "rlnTomoTiltSeriesPixelSize": [10.0]})
wall, cpu = time.perf_counter(), time.process_time()
r = extract_subtomograms(ParticleSet(df, optics), TomogramSet({"TS": ts}), out,
                         ExtractOptions(box=64, batch_size=32), progress=False)
print(json.dumps({"n": r.written, "wall_s": time.perf_counter() - wall,
                  "cpu_s": time.process_time() - cpu,
                  "rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""

TOMOGRAM = SETUP + """
import json, resource, sys, time
from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram
ts = series(sys.argv[1], 4096, 2000)
wall, cpu = time.perf_counter(), time.process_time()
volume, apix = reconstruct_tomogram(ts, binning=8.0, progress=False)
print(json.dumps({"shape": list(volume.shape), "wall_s": time.perf_counter() - wall,
                  "cpu_s": time.process_time() - cpu,
                  "rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
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
    parser.add_argument("--skip-tomogram", action="store_true")
    args = parser.parse_args()
    rows = []
    stack = _stack(DATA / "stack_1k.mrcs", 1024)
    for n in args.n:
        r = _child(EXTRACT, str(n), str(stack), str(DATA / f"extract_{n}"))
        r["per_s"] = r["n"] / r["wall_s"]
        r["per_cpu_s"] = r["n"] / r["cpu_s"]
        rows.append(r)
        print(r)
    lines = ["Extraction, 64³ subtomograms + CTF volumes from 41 tilts (1024² px), files "
             "written; bar ≥ 100 particles/s, memory flat in particles. Machine shared by up "
             "to four sessions: wall and CPU time both given.", "",
             "| particles | wall (s) | CPU (s) | particles/s (wall) | particles per CPU-s | "
             "peak RSS (GB) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['per_s']:.1f} | "
              f"{r['per_cpu_s']:.1f} | {r['rss_GB']:.2f} |" for r in rows]
    if not args.skip_tomogram:
        big = _stack(DATA / "stack_4k.mrcs", 4096)
        t = _child(TOMOGRAM, str(big))
        print(t)
        lines += ["", f"Tomogram at bin 8 of a 4096² × 41 stack (thickness 2000 px → "
                  f"{t['shape']} voxels, ramp-weighted back-projection): wall "
                  f"{t['wall_s']:.1f} s, CPU {t['cpu_s']:.1f} s, peak RSS {t['rss_GB']:.2f} GB "
                  "(bar ≤ 60 s)."]
    update_section("Tilt series: extraction and tomograms", "\n".join(lines))


if __name__ == "__main__":
    main()
