"""Ground-truth structures: pseudo-atomic chains (or an atomic model) with classes and a hinge.

A structure is a set of atoms (positions in Å relative to the box centre, (x, y, z), and
amplitudes) split into domains. Variants of one structure make the simulated heterogeneity:
class 1 is the full complex, class 2 lacks one subunit, class 3 has a domain rotated 25° about
a hinge axis; a continuous hinge rotates the same domain by any angle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from subtomo.errors import InputError
from subtomo.geometry.euler import euler_to_matrix
from subtomo.geometry.so3 import axis_angle_to_matrix
from subtomo.geometry.symmetry import symmetry_operators


@dataclass(frozen=True)
class Structure:
    """Atoms: ``positions_A`` (M, 3) (x, y, z) about the box centre, ``amplitudes`` (M,),
    ``domain`` (M,) int: 0 core, 1 the subunit a class may lack, 2 the hinged domain."""

    positions_A: torch.Tensor
    amplitudes: torch.Tensor
    domain: torch.Tensor
    hinge_point_A: torch.Tensor  # (3,)
    hinge_axis: torch.Tensor  # (3,) unit

    def without_domain(self, index: int) -> Structure:
        keep = self.domain != index
        return replace(self, positions_A=self.positions_A[keep], amplitudes=self.amplitudes[keep],
                       domain=self.domain[keep])

    def hinged(self, angle_deg: float) -> Structure:
        """The hinged domain (2) rotated by ``angle_deg`` about the hinge axis."""
        angle_rad = torch.deg2rad(torch.tensor(angle_deg, dtype=torch.float64))
        rotation = axis_angle_to_matrix(self.hinge_axis, angle_rad).to(self.positions_A)
        moving = self.domain == 2
        positions = self.positions_A.clone()
        positions[moving] = (positions[moving] - self.hinge_point_A) @ rotation.T + (
            self.hinge_point_A)
        return replace(self, positions_A=positions)


def _chain(n: int, start: torch.Tensor, radius_A: float, gen: torch.Generator) -> torch.Tensor:
    """A random walk of ``n`` Cα-like steps of 3.8 Å confined to a ball of ``radius_A``."""
    steps = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    steps = 3.8 * steps / steps.norm(dim=1, keepdim=True)
    out = torch.empty(n, 3, dtype=torch.float64)
    pos = start.clone()
    for i in range(n):  # builds the model once; not a hot path
        trial = pos + steps[i]
        if trial.norm() > radius_A:
            trial = pos - steps[i]
        pos = trial
        out[i] = pos
    return out


def pseudo_atomic(
    n_atoms: int = 4000,
    *,
    box_px: int = 48,
    pixel_size_A: float = 4.0,
    symmetry: str = "C1",
    seed: int = 0,
) -> Structure:
    """A compact, asymmetric (or symmetrised) pseudo-atomic complex filling ~60% of the box.

    Three domains: a core, a subunit (removable) and a hinged arm. With ``symmetry`` the
    asymmetric unit is repeated by RELION's operators of that group (n_atoms in total).
    """
    gen = torch.Generator().manual_seed(seed)
    ops = symmetry_operators(symmetry)
    per_unit = max(n_atoms // len(ops), 30)
    radius = 0.3 * box_px * pixel_size_A
    shares = (0.6, 0.2, 0.2)
    centres = torch.tensor([[0.0, 0.0, 0.0], [0.55, 0.25, 0.1], [-0.35, 0.45, -0.3]],
                           dtype=torch.float64) * radius
    if len(ops) > 1:  # put the asymmetric unit off-axis so the copies do not overlap
        centres = centres * 0.5 + torch.tensor([0.45 * radius, 0.1 * radius, 0.0],
                                               dtype=torch.float64)
    parts, domains = [], []
    for index, (share, centre) in enumerate(zip(shares, centres, strict=True)):
        n = max(int(per_unit * share), 10)
        walk = _chain(n, torch.zeros(3, dtype=torch.float64), radius * (0.45 if index else 0.6),
                      gen)
        parts.append(walk * (0.5 if len(ops) > 1 else 1.0) + centre)
        domains.append(torch.full((n,), index))
    unit = torch.cat(parts)
    unit_domain = torch.cat(domains)
    # symmetry copies: RELION operator R maps a point p to R^T p (A acts as particle = ref(A^T x))
    positions = torch.cat([unit @ op for op in ops.to(unit)])
    domain = unit_domain.repeat(len(ops))
    amplitudes = 1.0 + 0.2 * torch.rand(len(positions), generator=gen, dtype=torch.float64)
    return Structure(positions, amplitudes, domain, hinge_point_A=centres[2] * 0.6,
                     hinge_axis=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def from_model(path: str | Path) -> Structure:
    """Atoms of an atomic model (PDB/mmCIF via gemmi), centred; weights = atomic number."""
    try:
        import gemmi  # optional: pip install 'subtomo[models]'
    except ImportError as exc:  # optional dependency
        raise InputError(path, "reading atomic models needs gemmi: pip install gemmi") from exc
    if not Path(path).is_file():
        raise InputError(path, "file not found")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise InputError(path, f"cannot read atomic model ({exc})") from exc
    xyz, z = [], []
    for chain in st[0]:
        for residue in chain:
            for atom in residue:
                xyz.append(atom.pos.tolist())
                z.append(atom.element.atomic_number)
    if not xyz:
        raise InputError(path, "atomic model has no atoms")
    positions = torch.tensor(xyz, dtype=torch.float64)
    positions -= positions.mean(0)
    n = len(positions)
    domain = torch.zeros(n, dtype=torch.long)
    domain[positions[:, 0] > positions[:, 0].quantile(0.8)] = 1
    domain[positions[:, 1] > positions[:, 1].quantile(0.85)] = 2
    return Structure(positions, torch.tensor(z, dtype=torch.float64), domain,
                     hinge_point_A=positions[domain == 2].mean(0) * 0.5,
                     hinge_axis=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def class_variant(structure: Structure, class_index: int) -> Structure:
    """Class 1: full; 2: subunit (domain 1) missing; 3: hinged domain rotated 25°; then repeat."""
    kind = (class_index - 1) % 3
    if kind == 1:
        return structure.without_domain(1)
    if kind == 2:
        return structure.hinged(25.0)
    return structure


def rotated_positions(structure: Structure, angles_deg: torch.Tensor) -> torch.Tensor:
    """Atom positions of particles = structure rotated by RELION's A: p → A p. (B, M, 3)."""
    matrices = euler_to_matrix(angles_deg.to(torch.float64))
    return torch.einsum("bij,mj->bmi", matrices, structure.positions_A)
