"""Reconstruction speed: CTF-weighted reconstruction of simulated 64³ subtomograms.

Issue bar: ≥ 100 particles/s for 1000 subtomograms of 64³ with CTF on a 2-core CPU, with peak
memory independent of the particle count. Each reconstruction runs in a fresh process so that
its peak resident memory is its own; it is measured for two particle counts.

Run: ``.venv/bin/python bench/bench_reconstruct.py [--n 1000] [--box 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results import run_measured, update_section  # noqa: E402

DATA = Path(__file__).parent / ".data"

CHILD = """
import json, sys, time, torch
from subtomo.io.star import read_particles
from subtomo.refine.reconstruct import reconstruct
ps = read_particles(sys.argv[1])
n = int(sys.argv[2]); ps = ps.subset(list(range(n)))
start = time.perf_counter()
result = reconstruct(ps, ctf=True, batch_size=int(sys.argv[4]), device=sys.argv[3],
                     progress=False)
if sys.argv[3] == "cuda":
    torch.cuda.synchronize()
print(json.dumps({"seconds": time.perf_counter() - start, "n": n}))
"""


def simulate(n: int, box: int) -> Path:
    from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms

    folder = DATA / f"sim_{n}_{box}"
    if not (folder / "truth.star").exists():
        config = SimulationConfig(n=n, box_px=box, pixel_size_A=4.0, n_atoms=4000,
                                  noise_sigma=5.0, batch_size=32)
        simulate_subtomograms(folder, config)
    return folder / "truth.star"


def run(star: Path, n: int, device: str, batch: int) -> tuple[float, float]:
    """(reconstruction seconds, peak RSS MiB of the child process)."""
    done, _, _, peak_mib = run_measured([sys.executable, "-c", CHILD, str(star), str(n), device,
                                         str(batch)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"], peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    t0 = time.perf_counter()
    star = simulate(args.n, args.box)
    print(f"simulation ready in {time.perf_counter() - t0:.0f} s")
    rows = ["| particles | box | device | time (s) | particles/s | peak RSS (MiB) |",
            "| ---: | ---: | --- | ---: | ---: | ---: |"]
    for n in (args.n // 4, args.n):
        seconds, peak = run(star, n, args.device, args.batch)
        rows.append(f"| {n} | {args.box} | {args.device} | {seconds:.1f} | {n / seconds:.0f} | "
                    f"{peak:.0f} |")
        print(rows[-1])
    body = "\n".join(rows) + (
        "\n\nCTF-weighted reconstruction (`reconstruct --ctf`, pad 2, batch "
        f"{args.batch}): reading subtomograms and CTF volumes, FFT, shift correction and "
        "trilinear gridding. Peak RSS is that of the reconstruction process alone.")
    update_section(f"Reconstruction with CTF (bench/bench_reconstruct.py, {args.device})", body)


if __name__ == "__main__":
    main()
