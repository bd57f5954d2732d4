"""STAR and Dynamo I/O throughput: read, convert and write 100 000 particles per flavour.

Run: ``.venv/bin/python bench/bench_io.py [--n 100000]``; prints and records in RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results import update_section  # noqa: E402

from subtomo import interop  # noqa: E402
from subtomo.io.star import FLAVOURS, read_particles, write_particles  # noqa: E402
from subtomo.io.star_text import write_star  # noqa: E402
from subtomo.simulate.particles import random_particle_set  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    ps = random_particle_set(args.n, seed=0, subtomogram_angles=True)
    rows = ["| flavour | write (s) | read (s) | particles/s (read) | file (MB) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        tomograms = Path(tmp) / "tomograms.star"
        write_star({"global": ps.tomograms}, tomograms)
        for flavour in FLAVOURS:
            path = Path(tmp) / f"{flavour}.star"
            _, t_write = timed(lambda p=path, f=flavour: write_particles(ps, p, f))
            _, t_read = timed(lambda p=path: read_particles(p, tomograms=tomograms))
            size = path.stat().st_size / 2**20
            rows.append(f"| {flavour} | {t_write:.2f} | {t_read:.2f} | {args.n / t_read:,.0f} | "
                        f"{size:.1f} |")
            print(rows[-1])
        _, t_dyn = timed(lambda: interop.star2dynamo(Path(tmp) / "relion5.star",
                                                     Path(tmp) / "t.tbl", tomograms=tomograms))
        _, t_back = timed(lambda: interop.dynamo2star(Path(tmp) / "t.tbl", Path(tmp) / "t.doc",
                                                      Path(tmp) / "back.star", flavour="warp",
                                                      pixel_size_A=10.0))
    body = "\n".join(rows) + (
        f"\n\n{args.n:,} simulated particles with subtomogram frames. "
        f"RELION 5 → Dynamo table: {t_dyn:.2f} s; Dynamo table → Warp STAR: {t_back:.2f} s.")
    print(body)
    update_section("STAR and Dynamo I/O (bench/bench_io.py)", body)


if __name__ == "__main__":
    main()
