"""What each part of ``subtomo demo`` is expected to reach, and the one place that decides.

Every part returns its figures (measured against the simulated truth); :data:`EXPECTED` names,
per part, the figures that are checked and the bound each must reach: ``("<=", b)`` passes
when ``value <= b``, ``(">=", b)`` when ``value >= b``. The bounds are what the default
(quick) demo reaches with its default seed 0, with a margin that covers seed 1 too (the
comments give the figures measured with seeds 0 / 1; ``bench/golden.py`` records them all).
The part tables print each checked figure beside its
bound with PASS or FAIL; :func:`exit_status` turns the whole demo into its exit status (0 only
if every check passes).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

__all__ = ["EXPECTED", "Check", "checks", "demo_table", "exit_status", "row"]

EXPECTED: dict[str, dict[str, tuple[str, float]]] = {
    "interop": {  # measured ≤ 1e-12
        "max_pose_error_deg": ("<=", 1e-3),
        "max_shift_error_A": ("<=", 1e-3),
        "max_centre_error_A": ("<=", 1e-3),
    },
    "averaging": {  # 2.4°/1.9° (from 6.1°/4.4°); 10.0/9.6, 9.8/9.8, 9.8/9.8 Å (Nyquist 8 Å)
        "median_pose_error_refined_deg": ("<=", 3.5),
        "half_map_resolution_A": ("<=", 11.5),
        "postprocess_resolution_A": ("<=", 11.5),
        "true_fsc05_resolution_A": ("<=", 11.5),
    },
    "classification": {  # 15.0/15.7 Å; 1.0/0.92; 14.8/15.1, 15.3/15.5, 14.4/14.5 Å; 1.0/1.0
        "initial_model_fsc05_A": ("<=", 25.0),
        "adjusted_rand_index": (">=", 0.9),
        "class_1_fsc05_A": ("<=", 20.0),
        "class_2_fsc05_A": ("<=", 20.0),
        "class_3_fsc05_A": ("<=", 20.0),
        "selected_purity": (">=", 0.95),
    },
    "tiltseries": {  # before picking (true positions): 18.1/17.4, 18.2/18.1 Å; 1.3°/2.7°;
        # 17.7/17.4, 17.5/17.5 Å; from picks (seed 0, test_cli): every check within its bound
        "pick_precision": (">=", 0.95),
        "pick_recall": (">=", 0.9),
        "reconstruct_particle_fsc05_truth_A": ("<=", 21.0),
        "extract_reconstruct_fsc05_truth_A": ("<=", 21.0),
        "median_pose_error_refined_deg": ("<=", 3.5),
        "refined_fsc05_truth_A": ("<=", 21.0),
        "postprocess_resolution_A": ("<=", 21.0),
    },
    "tomo_align": {  # 0.34/0.49 px (from 2.6); 23.1/26.9 Å; 21.8/30.0 Å (Nyquist 20 Å)
        "error_aligned_px": ("<=", 0.6),
        "fsc05_aligned_A": ("<=", 30.0),
        "postprocess_resolution_A": ("<=", 33.0),
    },
    "series": {  # 21.4/24.3 Å (true geometry 21.2/24.5 Å); gain 134 %/105 % (from 50/50 Å)
        "aligned_refined_fsc05_A": ("<=", 30.0),
        "gain_at_tomo_align": (">=", 0.05),
    },
    "hetero": {  # 1.0 and 1.0 on seeds 0, 1 and 2
        "junk_removed": (">=", 0.9),
        "good_kept": (">=", 0.9),
    },
}


@dataclass(frozen=True)
class Check:
    """One figure of one part against its bound."""

    part: str
    figure: str
    value: float
    op: str  # "<=" or ">="
    bound: float

    @property
    def passed(self) -> bool:
        """``value <= bound`` or ``value >= bound`` (a NaN value fails)."""
        if self.op == "<=":
            return self.value <= self.bound
        if self.op == ">=":
            return self.value >= self.bound
        raise ValueError(f"unknown comparison {self.op!r}")

    @property
    def expected(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {self.bound:g}"

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def checks(part: str, figures: dict[str, float]) -> list[Check]:
    """The checks of ``part`` on its ``figures`` (every figure :data:`EXPECTED` names)."""
    return [Check(part, name, float(figures[name]), op, bound)
            for name, (op, bound) in EXPECTED.get(part, {}).items()]


def exit_status(all_checks: list[Check]) -> int:
    """0 when every check passes, 1 otherwise (the exit status of ``subtomo demo``)."""
    return 0 if all(c.passed for c in all_checks) else 1


def demo_table(title: str) -> Table:
    """A part's table: step, result, and for checked figures the bound and PASS/FAIL."""
    table = Table(title=title)
    table.add_column("step")
    table.add_column("result", justify="right")
    table.add_column("expected", justify="right")
    table.add_column("check")
    return table


def row(table: Table, step: str, result: str, part: str | None = None,
        figures: dict[str, float] | None = None, *names: str) -> None:
    """Add a row; with ``part``, ``figures`` and figure ``names``, print their bounds and
    verdicts (FAIL if any named figure misses its bound)."""
    found = [c for c in checks(part, figures) if c.figure in names] if part else []
    expected = ", ".join(c.expected for c in found)
    verdict = ("PASS" if all(c.passed for c in found) else "FAIL") if found else ""
    table.add_row(step, result, expected, verdict)
