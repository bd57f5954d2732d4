"""Golden outputs: every figure the demo measures against the truth, before and after a change.

A restructuring must not change a result. ``record`` runs the whole quick demo
(:func:`subtomo.demo.run_demo`: interop, averaging, initial model and classification, the
tilt-series route, tomo-align, heterogeneity) with seeds 0 and 1 and stores every numeric
figure of every part in ``bench/.data/golden/<label>.json``, with the commit it measured.
``compare`` reads two records and, for every figure and seed, sets the change ``|after -
before|`` against the run-to-run noise the records measure: the spread between the two seeds
of the *before* record (``|seed 0 - seed 1|``), floored at 1 % of the value (figures that do
not move between seeds, such as a round trip at 1e-12, must stay within 1e-9). A figure is
unchanged when its change is within that noise for both seeds; the comparison and its verdict
go to ``bench/RESULTS.md``.

Run: ``.venv/bin/python bench/golden.py record --label before [--seeds 0 1]``, then after the
change ``... record --label after`` and ``... compare before after``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results import commit, machine_load, update_section  # noqa: E402

GOLDEN = Path(__file__).parent / ".data" / "golden"


def _figures(results: dict) -> dict[str, float]:
    """``part.figure`` → value for every number the demo returned against the truth (times,
    which measure the machine, are left out)."""
    out: dict[str, float] = {}
    for part, figures in results.items():
        if part == "checks" or not isinstance(figures, dict):
            continue
        for name, value in figures.items():
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or name == "seconds" or name.endswith("_s")):
                continue
            out[f"{part}.{name}"] = float(value)
    return out


def record(label: str, seeds: list[int]) -> Path:
    """Run the demo once per seed; write ``GOLDEN/<label>.json``."""
    from subtomo.demo import run_demo

    runs = {}
    for seed in seeds:
        start = time.perf_counter()
        results = run_demo(GOLDEN / f"run_{label}_{seed}", seed=seed)
        runs[str(seed)] = {"figures": _figures(results),
                           "failed_checks": [f"{c.part}.{c.figure}" for c in results["checks"]
                                             if not c.passed],
                           "wall_s": time.perf_counter() - start}
    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = GOLDEN / f"{label}.json"
    path.write_text(json.dumps({"label": label, "commit": commit(), "runs": runs}, indent=1))
    return path


def noise(before: dict, name: str) -> float:
    """Run-to-run noise of figure ``name``: the spread between the seeds of ``before``,
    floored at 1 % of its size (1e-9 for a figure that does not move between seeds)."""
    values = [run["figures"][name] for run in before["runs"].values()
              if name in run["figures"]]
    spread = max(values) - min(values) if len(values) > 1 else 0.0
    size = max(abs(v) for v in values)
    return max(spread, 0.01 * size) if spread > 0 else 1e-9 + 1e-9 * size


def compare(before: dict, after: dict) -> tuple[list[str], bool]:
    """Table rows (markdown) of every figure of both records and whether all are unchanged."""
    rows = ["| figure | seed | before | after | change | noise | unchanged |",
            "|---|---:|---:|---:|---:|---:|:---:|"]
    unchanged = True
    for seed, run in before["runs"].items():
        other = after["runs"].get(seed)
        if other is None:
            rows.append(f"| (seed {seed} missing after) | {seed} | | | | | no |")
            unchanged = False
            continue
        for name, b in run["figures"].items():
            a = other["figures"].get(name, math.nan)
            tol = noise(before, name)
            change = abs(a - b)
            same = (math.isnan(a) and math.isnan(b)) or change <= tol
            unchanged &= same
            rows.append(f"| {name} | {seed} | {b:.4g} | {a:.4g} | {change:.2g} | {tol:.2g} | "
                        f"{'yes' if same else '**no**'} |")
    return rows, unchanged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--label", required=True)
    rec.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before")
    cmp_.add_argument("after")
    args = parser.parse_args()
    if args.command == "record":
        print(record(args.label, args.seeds))
        return
    before, after = (json.loads((GOLDEN / f"{x}.json").read_text())
                     for x in (args.before, args.after))
    rows, unchanged = compare(before, after)
    failed = {s: r["failed_checks"] for s, r in after["runs"].items() if r["failed_checks"]}
    lines = [f"- before: `{before['label']}` (commit {before['commit']}), after: "
             f"`{after['label']}` (commit {after['commit']}); quick demo, seeds "
             f"{', '.join(before['runs'])}",
             f"- verdict: {'every figure unchanged' if unchanged else 'FIGURES CHANGED'} "
             "within the run-to-run noise (spread between seeds, at least 1 % of the value)",
             f"- demo checks failed after: {failed or 'none'}",
             f"- machine: {machine_load()}", "", *rows]
    print("\n".join(lines))
    update_section("Golden outputs: the demo's figures before and after (bench/golden.py)",
                   "\n".join(lines))
    raise SystemExit(0 if unchanged else 1)


if __name__ == "__main__":
    main()
