"""Particle trajectories as PLY meshes (``Trajectories/<tomogram>_x<scale>.ply``, as RELION's
``relion_tomo_align`` documentation describes them).

One polyline per particle: as many vertices as tilts, in dose order, at
``position + scale × displacement`` (tomogram coordinates in tilt-series pixels, the frame
of RELION's C++ programs and of ``relion_tomo_reconstruct_tomogram`` at bin 1: only the
trajectories are scaled, the particles stay where they are), and an edge between each
vertex and the next. Vertices carry ``particle`` and ``tilt`` (0-based, table order) indices
so that a viewer can colour them. Written with ``plyfile`` (binary little-endian by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from subtomo.io.files import atomic_path

__all__ = ["read_trajectory_mesh", "write_trajectory_mesh"]


def write_trajectory_mesh(path: str | Path, positions_px: np.ndarray,
                          trajectories_px: np.ndarray, order: np.ndarray, scale: float = 1.0,
                          text: bool = False) -> None:
    """Write particles at ``positions_px (N, 3)`` moving by ``trajectories_px (N, T, 3)``
    (tilts in table order; ``order`` lists the tilts in dose order)."""
    positions = np.asarray(positions_px, np.float64)
    traj = np.asarray(trajectories_px, np.float64)[:, np.asarray(order)]
    n, t = traj.shape[:2]
    points = (positions[:, None] + scale * traj).reshape(-1, 3)
    vertex = np.empty(n * t, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                    ("particle", "i4"), ("tilt", "i4")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["particle"] = np.repeat(np.arange(n), t)
    vertex["tilt"] = np.tile(np.asarray(order), n)
    first = (np.arange(n)[:, None] * t + np.arange(t - 1)[None]).reshape(-1)
    edge = np.empty(len(first), dtype=[("vertex1", "i4"), ("vertex2", "i4")])
    edge["vertex1"], edge["vertex2"] = first, first + 1
    data = PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(edge, "edge")],
                   text=text, comments=[f"subtomo trajectories x{scale:g}: one polyline per "
                                        "particle, vertices in dose order, tilt-series px"])
    with atomic_path(path) as tmp:
        data.write(str(tmp))


def read_trajectory_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (V, 3), edges (E, 2))`` of a trajectory mesh."""
    data = PlyData.read(str(path))
    v = data["vertex"]
    e = data["edge"]
    return (np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64),
            np.stack([e["vertex1"], e["vertex2"]], 1).astype(np.int64))
