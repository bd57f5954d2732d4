"""Tilt schemes: tilt angles in acquisition order, exposure history and per-tilt defocus offsets.

A :class:`TiltScheme` lists the tilts **in the order they were acquired**:

- ``tilt_angles_deg`` — stage tilt of each image (degrees), about the y axis (see
  :mod:`subtomo.ctf.volume` for the geometry);
- ``pre_exposure_e_per_A2`` — cumulative exposure received *before* each image (e/Å²), RELION's
  ``rlnMicrographPreExposure``; with a constant dose per tilt, image i has ``i · dose_per_tilt``;
- ``defocus_offset_A`` — per-tilt defocus (Å) added to a particle's defocus (zeros by default;
  pass absolute per-tilt defoci here with a particle defocus of 0 to use them as they are).

Constructors:

- :meth:`TiltScheme.dose_symmetric` — Hagen, Wan & Briggs, J. Struct. Biol. 197:191 (2017):
  0° first, then ``group`` tilts on the positive side, ``group`` on the negative side, and so on
  outwards. For ±6°, step 3°, group 2 the order is ``[0, 3, 6, −3, −6]``; for ±60°/3°/group 2 it
  is ``0, 3, 6, −3, −6, 9, 12, −9, −12, …`` (41 tilts), the order PACEtomo's dose-symmetric
  loop acquires (github.com/eisfabian/PACEtomo).
- :meth:`TiltScheme.sequential` — unidirectional, from −range to +range (or the reverse).
- :meth:`TiltScheme.bidirectional` — from ``start_angle_deg`` to one end, then from the tilt next
  to the start to the other end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["TiltScheme"]


def _floats(values: Sequence[float] | Tensor) -> tuple[float, ...]:
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    return tuple(float(v) for v in values)


def _steps(tilt_range_deg: float, tilt_step_deg: float) -> int:
    if tilt_step_deg <= 0:
        raise ValueError(f"tilt_step_deg must be positive, got {tilt_step_deg}")
    if tilt_range_deg < 0:
        raise ValueError(f"tilt_range_deg must be non-negative, got {tilt_range_deg}")
    n = tilt_range_deg / tilt_step_deg
    if abs(n - round(n)) > 1e-6:
        raise ValueError(f"tilt_range_deg {tilt_range_deg} is not a multiple of the step "
                         f"{tilt_step_deg}")
    return int(round(n))


@dataclass(frozen=True)
class TiltScheme:
    """Tilts in acquisition order: angles (deg), pre-exposure (e/Å²), defocus offsets (Å)."""

    tilt_angles_deg: tuple[float, ...]
    pre_exposure_e_per_A2: tuple[float, ...]
    defocus_offset_A: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        angles = _floats(self.tilt_angles_deg)
        exposure = _floats(self.pre_exposure_e_per_A2)
        offsets = _floats(self.defocus_offset_A) if len(self.defocus_offset_A) else (
            (0.0,) * len(angles))
        if not angles:
            raise ValueError("a tilt scheme needs at least one tilt")
        if len(exposure) != len(angles) or len(offsets) != len(angles):
            raise ValueError(f"{len(angles)} tilt angles but {len(exposure)} pre-exposures and "
                             f"{len(offsets)} defocus offsets")
        if any(e < 0 or not math.isfinite(e) for e in exposure):
            raise ValueError("pre-exposures must be finite and non-negative")
        if any(not math.isfinite(a) or abs(a) > 90 for a in angles):
            bad = next(a for a in angles if not math.isfinite(a) or abs(a) > 90)
            raise ValueError(f"tilt angle {bad:g}° is outside ±90°")
        object.__setattr__(self, "tilt_angles_deg", angles)
        object.__setattr__(self, "pre_exposure_e_per_A2", exposure)
        object.__setattr__(self, "defocus_offset_A", offsets)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_order(cls, angles_deg: Sequence[float], dose_per_tilt: float,
                   defocus_offset_A: Sequence[float] = ()) -> TiltScheme:
        """Tilts acquired in the given order with a constant dose per tilt (e/Å²)."""
        angles = _floats(angles_deg)
        exposure = tuple(i * float(dose_per_tilt) for i in range(len(angles)))
        return cls(angles, exposure, tuple(defocus_offset_A))

    @classmethod
    def dose_symmetric(cls, tilt_range_deg: float = 60.0, tilt_step_deg: float = 3.0,
                       dose_per_tilt: float = 3.0, group: int = 2) -> TiltScheme:
        """Hagen dose-symmetric scheme: 0°, then ``group`` positive, ``group`` negative, …"""
        if group < 1:
            raise ValueError(f"group must be at least 1, got {group}")
        n = _steps(tilt_range_deg, tilt_step_deg)
        order = [0.0]
        plus = minus = 0
        while plus < n or minus < n:
            for _ in range(group):
                if plus < n:
                    plus += 1
                    order.append(plus * tilt_step_deg)
            for _ in range(group):
                if minus < n:
                    minus += 1
                    order.append(-minus * tilt_step_deg)
        return cls.from_order(order, dose_per_tilt)

    @classmethod
    def sequential(cls, tilt_range_deg: float = 60.0, tilt_step_deg: float = 3.0,
                   dose_per_tilt: float = 3.0, from_negative: bool = True) -> TiltScheme:
        """Unidirectional scheme from −range to +range (or +range to −range)."""
        n = _steps(tilt_range_deg, tilt_step_deg)
        order = [i * tilt_step_deg for i in range(-n, n + 1)]
        return cls.from_order(order if from_negative else order[::-1], dose_per_tilt)

    @classmethod
    def bidirectional(cls, tilt_range_deg: float = 60.0, tilt_step_deg: float = 3.0,
                      dose_per_tilt: float = 3.0, start_angle_deg: float = 0.0,
                      first_positive: bool = True) -> TiltScheme:
        """Bidirectional scheme: start → one end, then start ∓ step → the other end."""
        n = _steps(tilt_range_deg, tilt_step_deg)
        grid = [i * tilt_step_deg for i in range(-n, n + 1)]
        start = min(range(len(grid)), key=lambda i: abs(grid[i] - start_angle_deg))
        if abs(grid[start] - start_angle_deg) > 1e-6:
            raise ValueError(f"start angle {start_angle_deg} is not on the {tilt_step_deg}° grid")
        up, down = grid[start:], grid[:start][::-1]
        order = up + down if first_positive else grid[: start + 1][::-1] + grid[start + 1:]
        return cls.from_order(order, dose_per_tilt)

    # ------------------------------------------------------------------ views
    @property
    def n_tilts(self) -> int:
        return len(self.tilt_angles_deg)

    def sorted_by_angle(self) -> TiltScheme:
        """The same tilts ordered by angle (as a tilt-series stack usually is)."""
        idx = sorted(range(self.n_tilts), key=lambda i: self.tilt_angles_deg[i])
        return TiltScheme(tuple(self.tilt_angles_deg[i] for i in idx),
                          tuple(self.pre_exposure_e_per_A2[i] for i in idx),
                          tuple(self.defocus_offset_A[i] for i in idx))

    def tensors(self, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """``(angles_deg, pre_exposure_e_per_A2, defocus_offset_A)``, each of shape ``(T,)``."""
        make = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        return (make(self.tilt_angles_deg), make(self.pre_exposure_e_per_A2),
                make(self.defocus_offset_A))
