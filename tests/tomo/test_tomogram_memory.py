"""Peak memory of tomogram reconstruction, and of the benches' measurement of a child's (Linux
only: both read the high-water mark ``VmHWM`` of ``/proc/self/status``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

BENCH = Path(__file__).parents[2] / "bench"
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(),
                                reason="needs /proc/self/status (Linux)")


def _python(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bench_child_reports_its_own_peak():
    # The parent touches 1 GB, frees it, then runs bare children: through bench/results.py's
    # run_measured, and through bench_tomo's _child with the OWN_PEAK code string (own_peak_mib,
    # as the benches' Python children use it). Each holds a few MB; under 0.2 GB is its own
    # peak, 1 GB or more the parent's (bench_tomo once recorded 3.07 GB for a 0.8 GB tomogram:
    # its parent had just written the stack). ru_maxrss, which the benches read before, reports
    # the parent's gigabyte in the same child: the setting does show the fault.
    parent = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(BENCH)!r})
import bench_tomo, results
ballast = np.ones(1 << 27)
del ballast
_, _, _, measured_MiB = results.run_measured([sys.executable, "-c", "pass"])
code = "import json, resource" + chr(10) + results.OWN_PEAK + (
    "print(json.dumps({{'own': own_peak_mib(),"
    " 'maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))")
child = bench_tomo._child(code)
print(json.dumps({{"measured": measured_MiB, "own": child["own"], "maxrss": child["maxrss"]}}))
"""
    peaks_MiB = _python(parent)
    if Path("/usr/bin/time").is_file():  # without it run_measured falls back to ru_maxrss
        assert peaks_MiB["measured"] < 200, peaks_MiB
    assert peaks_MiB["own"] < 200, peaks_MiB
    assert peaks_MiB["maxrss"] > 1000, peaks_MiB


CHILD = """
import json, sys
import numpy as np, pandas as pd, torch
from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram
from subtomo.io.tilt_series import TiltSeries

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                if line.startswith(key + ":"))

stack, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tilts = pd.DataFrame({"rlnMicrographName": [f"{i + 1}@{stack}" for i in range(n)],
                      "rlnTomoYTilt": np.linspace(-60, 60, n), "rlnTomoZRot": 0.0})
ts = TiltSeries({"rlnTomoName": "TS", "rlnTomoTiltSeriesPixelSize": 10.0, "rlnTomoSizeX": size,
                 "rlnTomoSizeY": size, "rlnTomoSizeZ": size // 2}, tilts, source=stack)
torch.set_num_threads(1)
before = status("VmRSS")
volume, _ = reconstruct_tomogram(ts, binning=8.0, progress=False)
print(json.dumps({"shape": list(volume.shape), "growth": status("VmHWM") - before}))
"""


def test_tomogram_never_holds_the_whole_stack(tmp_path):
    # 41 tilts of 1024² float32: a 172 MB stack. Read and Fourier-cropped tilt by tilt, the
    # reconstruction holds a few full-size images at once (4 MB each: the image, its memory
    # map, its spectrum, the crop's inverse), then the binned stack (41 × 128² × 4 B = 2.7 MB)
    # a few times over (spectra, filters, the filtered images), the (T, Y, X, 2) sampling grid
    # (5.4 MB) and the 64 × 128² tomogram (4.2 MB): 50 MB above the memory before it (47–109
    # MB measured, the allocator's share varying). A whole-stack read, a float64 copy or a memory
    # map touched end to end adds at least the stack's 172 MB (measured: 179 MB, 520 MB): the
    # bound is the stack.
    n, size = 41, 1024
    stack = tmp_path / "stack.mrcs"
    with mrcfile.new_mmap(stack, shape=(n, size, size), mrc_mode=2) as mrc:
        rng = np.random.default_rng(0)
        for i in range(n):
            mrc.data[i] = rng.normal(size=(size, size)).astype(np.float32)
        mrc.voxel_size = 10.0
        mrc.set_image_stack()
    r = _python(CHILD, str(stack), str(n), str(size))
    assert r["shape"] == [64, 128, 128]
    assert r["growth"] < n * size * size * 4, r
