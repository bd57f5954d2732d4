"""Point-group symmetry operators in RELION's conventions.

Each group is generated, as in RELION's ``SymList::fill_symmetry_class`` (src/symmetries.cpp),
from the axes below, then closed under multiplication. Axes are written exactly
(phi = golden ratio); RELION's decimal values are given for reference.

* ``C<n>``: n-fold about z.
* ``Ci``: inversion ``-I``; ``Cs``: mirror plane z = 0, ``diag(1, 1, -1)`` (both improper).
* ``D<n>``: n-fold about z plus a 2-fold about x (``rot_axis 2 1 0 0``).
* ``T``: 3-fold about z plus a 2-fold about (0, sqrt(2/3), sqrt(1/3)) = (0, 0.816496, 0.577350).
  A 3-fold is on z, deviating from Heymann et al. (2005).
* ``O``: 3-fold about (1, 1, 1)/sqrt(3) plus 4-fold about z; 4-folds on x, y, z.
* ``I`` = ``I2`` (Crowther 222): 2-fold z, 5-fold (1, 0, phi)/|.| = (0.525731, 0, 0.850651),
  3-fold (0, 0.356822, 0.934172); 2-folds on x, y, z, front-most 5-folds in the xz plane.
* ``I1`` (Heymann standard 222): 2-fold x, 5-fold (phi, 0, -1)/|.|, 3-fold (0.934172,
  0.356822, 0); 2-folds on x, y, z, front-most 5-folds in the yz plane.
* ``I3``: 2-fold (-1, 0, phi)/|.|, 5-fold z, 3-fold (-0.491123, 0.356822, 0.794654).
* ``I4``: 2-fold (1, 0, phi)/|.|, 5-fold (2, 0, 1)/sqrt(5), 3-fold (0.491123, 0.356822,
  0.794654); 5-fold on z (mirror image of I3 in x).

Operators are active rotation matrices acting on column vectors (x, y, z). RELION stores
the transposes, which is the same set since each group is closed under inversion.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from subtomo.geometry.euler import angular_distance_deg
from subtomo.geometry.so3 import axis_angle_to_matrix

__all__ = ["group_order", "symmetric_distance_deg", "symmetry_operators"]

_PHI = (1.0 + math.sqrt(5.0)) / 2.0
_ACCEPTED = "C<n>, D<n> (n >= 1), Ci, Cs, T, O, I, I1, I2, I3, I4 (case-insensitive)"

# Generators per group: list of (fold, axis); axes need not be normalised.
_Axis = tuple[float, float, float]
_GENERATORS: dict[str, tuple[tuple[int, _Axis], ...]] = {
    "T": ((3, (0.0, 0.0, 1.0)), (2, (0.0, math.sqrt(2.0 / 3.0), math.sqrt(1.0 / 3.0)))),
    "O": ((3, (1.0, 1.0, 1.0)), (4, (0.0, 0.0, 1.0))),
    "I1": ((2, (1.0, 0.0, 0.0)), (5, (_PHI, 0.0, -1.0))),
    "I2": ((2, (0.0, 0.0, 1.0)), (5, (1.0, 0.0, _PHI))),
    "I3": ((2, (-1.0, 0.0, _PHI)), (5, (0.0, 0.0, 1.0))),
    "I4": ((2, (1.0, 0.0, _PHI)), (5, (2.0, 0.0, 1.0))),
}


def _close(generators: list[Tensor], tol: float = 1e-8) -> Tensor:
    """Close a set of 3x3 matrices under multiplication; identity first."""
    ops = torch.eye(3, dtype=torch.float64)[None]

    def add(cands: Tensor, ops: Tensor) -> Tensor:
        dist = (cands[:, None] - ops[None]).abs().amax(dim=(-1, -2)).amin(dim=1)
        for m in cands[dist > tol]:
            if (ops - m).abs().amax(dim=(-1, -2)).min() > tol:
                ops = torch.cat([ops, m[None]])
        return ops

    ops = add(torch.stack(generators), ops)
    while True:
        n = ops.shape[0]
        products = (ops[:, None] @ ops[None]).reshape(-1, 3, 3)
        ops = add(products, ops)
        if ops.shape[0] == n:
            break
        if n > 240:
            raise RuntimeError("symmetry closure did not converge")
    ops = torch.where(ops.abs() < 1e-12, torch.zeros_like(ops), ops)
    return ops


def _parse(name: str) -> tuple[str, int]:
    key = name.strip().upper()
    m = re.fullmatch(r"([CD])(\d+)", key)
    if m is not None and int(m.group(2)) >= 1:
        return m.group(1), int(m.group(2))
    if key in ("CI", "CS", "T", "O", "I1", "I2", "I3", "I4"):
        return key, 0
    if key == "I":
        return "I2", 0
    raise ValueError(f"unknown symmetry group {name!r}; accepted: {_ACCEPTED}")


def symmetry_operators(
    name: str, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """Symmetry operators of point group ``name`` as a (n, 3, 3) tensor, identity first.

    Orders: C<n> = n, D<n> = 2n, Ci = Cs = 2, T = 12, O = 24, I/I1..I4 = 60. Raises
    ``ValueError`` for an unknown group.
    """
    kind, n = _parse(name)
    if kind == "C":
        gens = [axis_angle_to_matrix((0.0, 0.0, 1.0), 2.0 * math.pi / n)]
    elif kind == "D":
        gens = [axis_angle_to_matrix((0.0, 0.0, 1.0), 2.0 * math.pi / n),
                axis_angle_to_matrix((1.0, 0.0, 0.0), math.pi)]
    elif kind == "CI":
        gens = [-torch.eye(3, dtype=torch.float64)]
    elif kind == "CS":
        gens = [torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))]
    else:
        gens = [axis_angle_to_matrix(axis, 2.0 * math.pi / fold)
                for fold, axis in _GENERATORS[kind]]
    return _close(gens).to(dtype=dtype, device=device)


def group_order(name: str) -> int:
    """Number of operators of point group ``name`` (including the identity)."""
    kind, n = _parse(name)
    if kind == "C":
        return n
    if kind == "D":
        return 2 * n
    return {"CI": 2, "CS": 2, "T": 12, "O": 24}.get(kind, 60)


def symmetric_distance_deg(A: torch.Tensor, B: torch.Tensor, name: str) -> torch.Tensor:
    """Angular distance (degrees) between poses ``A`` and ``B`` ``(N, 3, 3)`` of a particle with
    point group ``name``: the smallest over the equivalent poses ``B R_g^T`` (proper ``R_g``)."""
    ops = symmetry_operators(name, dtype=B.dtype)
    ops = ops[torch.linalg.det(ops) > 0]
    candidates = B[:, None] @ ops.transpose(1, 2)[None]  # (N, G, 3, 3)
    distances = angular_distance_deg(A[:, None].expand_as(candidates).reshape(-1, 3, 3),
                                     candidates.reshape(-1, 3, 3))
    return distances.view(B.shape[0], -1).amin(dim=1)
