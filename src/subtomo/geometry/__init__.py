"""Rotations and orientations (the floor every other layer may import).

Active rotation matrices on column vectors ``(x, y, z)``; angles are RELION's ZYZ Euler angles
(rot, tilt, psi) in degrees, rotation vectors in radians.

- :mod:`.euler`: Euler angles <-> matrices, axis rotations, angular distances.
- :mod:`.so3`: rotation vectors (Rodrigues), axis-angle, uniform random rotations, a
  Fibonacci rotation grid.
- :mod:`.healpix`: RELION's HEALPix orientation grids and local grids.
- :mod:`.symmetry`: point-group operators.
- :mod:`.tilt`, :mod:`.tilt_imod`, :mod:`.tilt_series`: tilt-series projection geometry
  (RELION 5 / 4, IMOD) and the tilt series' metadata, so that ``io`` can use them.

Imports nothing of subtomo above :mod:`subtomo.errors`.
"""

from subtomo.geometry import tilt, tilt_imod, tilt_series
from subtomo.geometry.euler import (
    angular_distance_deg,
    dynamo_to_relion,
    euler_to_matrix,
    matrix_to_euler,
    relion_to_dynamo,
    rotation_x,
    rotation_y,
    rotation_z,
    wrap_angle_deg,
)
from subtomo.geometry.healpix import (
    ASU_CENTRE,
    angular_step_deg,
    cell_children,
    healpix_directions,
    local_rotations,
    nside,
    rotation_grid,
)
from subtomo.geometry.so3 import (
    axis_angle_to_matrix,
    fibonacci_rotation_grid,
    random_rotations,
    rotation_vector_to_matrix,
)
from subtomo.geometry.symmetry import group_order, symmetric_distance_deg, symmetry_operators

__all__ = [
    "ASU_CENTRE",
    "angular_distance_deg",
    "angular_step_deg",
    "axis_angle_to_matrix",
    "cell_children",
    "dynamo_to_relion",
    "euler_to_matrix",
    "fibonacci_rotation_grid",
    "group_order",
    "healpix_directions",
    "local_rotations",
    "matrix_to_euler",
    "nside",
    "random_rotations",
    "relion_to_dynamo",
    "rotation_grid",
    "rotation_vector_to_matrix",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "symmetric_distance_deg",
    "symmetry_operators",
    "tilt",
    "tilt_imod",
    "tilt_series",
    "wrap_angle_deg",
]
