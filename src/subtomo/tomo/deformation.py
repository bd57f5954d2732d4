"""2D image deformations of tilt images (RELION 5's ``linear``, ``spline`` and ``Fourier`` models).

A deformation moves every projected point ``p`` (tilt-image px, origin at pixel 0) to
``p + d(p)`` (RELION ``Tomogram::projectPoint``: ``imageDeformations[f]->apply(P_f x)``). Models
and coefficient layouts follow RELION 5 ``src/jaz/tomography/motion/modular_alignment/
*_2D_deformation_model.h`` so that ``rlnTomoDeformationCoefficients`` read and write unchanged:

- ``linear`` (3 coefficients, the grid is not used): with ``r = p − (W/2, H/2)``,
  ``d = (a_xx r_x, a_xy r_x + a_yy r_y)`` (the fourth affine term is a rotation, which the
  tilt's Z rotation already holds).
- ``spline`` (``8 gw gh``): cubic Hermite patches on a ``gw × gh`` grid of nodes spaced
  ``(W/(gw − 1), H/(gh − 1))``; each node holds, for x then y displacement, its value, its
  slopes along x and y and its twist (slopes per grid cell). Layout ``(2, gh, gw, 4)``.
- ``Fourier`` (``4 n_f``): ``d = Σ_i Re z_i cos(f_i·p) + Im z_i sin(f_i·p)`` over the
  frequencies ``f = (x π / W, y π / H)`` with ``0 ≤ x ≤ gw/2``, ``y`` in ``0 … gh/2 − 1`` (and
  ``x ≥ 1`` on the row ``y = 0``) and ``y − gh`` for the rows above (``x ≥ 1``): the spatial
  frequencies of RELION's ``Fourier2DDeformationModel``. Layout ``(2, n_f, 2)`` (re, im).

Regularisers (``--def_reg λ``) as RELION's ``computePriorValueAndGradient``: λ × the sum of
squared coefficients (linear, spline), λ Σ |f_i|² |z_i|² (Fourier). Our data term is a log-
likelihood (:mod:`subtomo.tomo.correlation`), so λ is a Gaussian prior's ``1 / (2 σ²)``: σ in
px for spline coefficients (node values, and slopes per grid cell), σ a strain (px per px) for
a Fourier mode's slope ``|f| |z|``. Without ``--def_reg`` we take :data:`DEFAULT_REG` (RELION's
default is 0): spline 0.1 (σ ≈ 2.2 px, fields of a few px), Fourier 10³ (σ ≈ 0.02: 1 px over
45 px), linear 0. With
per-tilt deformations and free particle positions, a smooth warp of the positions that every
tilt's field undoes is nearly invisible in the data (only the particles' spread in depth tells
them apart); without a prior the positions drift along it (on simulated per-tilt fields of 2
px, a 5 × 5 spline moved the positions by a smooth 0.5 px and left 0.36 px rms on held-out
points, 0.10 px with λ = 1), and spline nodes at image edges, where no particle is seen, are
unconstrained. Too tight a prior is as bad: on fields of up to 4 px a 3 × 3 spline with λ = 1
(σ ≈ 0.7 px) cannot follow them (figures in bench/RESULTS.md, "RELION 5 side by side" and
"Tilt-series refinement").

In a tomogram set a deformation is ``rlnTomoDeformationType`` and
``rlnTomoDeformationGridSizeX/Y`` in ``data_global`` and ``rlnTomoDeformationCoefficients``
(``[c1,c2,…]``) per tilt (``TomogramSet::setDeformation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from subtomo.errors import InputError

__all__ = ["DEFAULT_REG", "MODELS", "Deformation", "deformation_of", "fourier_frequencies",
           "n_coefficients", "offsets", "regulariser", "with_deformation"]

MODELS = ("linear", "spline", "Fourier")
TYPE = "rlnTomoDeformationType"
GRID = ("rlnTomoDeformationGridSizeX", "rlnTomoDeformationGridSizeY")
COEFFS = "rlnTomoDeformationCoefficients"


DEFAULT_REG = {"linear": 0.0, "spline": 0.1, "Fourier": 1.0e3}


def canonical_model(name: str) -> str:
    """``linear``, ``spline`` or ``Fourier`` (case-insensitive input)."""
    for model in MODELS:
        if str(name).lower() == model.lower():
            return model
    raise InputError(None, f"unknown deformation model {name!r}; choose linear, spline or "
                     "Fourier", field="--def_model")


def fourier_frequencies(grid: tuple[int, int], image_size: tuple[int, int],
                        dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """RELION's Fourier-model frequencies ``(n_f, 2)`` (radians per px)."""
    gw, gh = grid
    w, h = image_size
    out = []
    for y in range(gh):
        if y < gh // 2:
            out += [(x * math.pi / w, y * math.pi / h) for x in range(1 if y == 0 else 0,
                                                                       gw // 2 + 1)]
        else:
            out += [(x * math.pi / w, (y - gh) * math.pi / h) for x in range(1, gw // 2 + 1)]
    return torch.tensor(out, dtype=dtype, device=device).reshape(-1, 2)


def n_coefficients(model: str, grid: tuple[int, int]) -> int:
    """Coefficients of one deformation."""
    if model == "linear":
        return 3
    if model == "spline":
        return 8 * grid[0] * grid[1]
    return 4 * len(fourier_frequencies(grid, (1, 1)))


def _hermite(t: Tensor) -> Tensor:
    """Cubic Hermite basis ``(..., 4)``: value at 0, value at 1, slope at 0, slope at 1."""
    t2, t3 = t * t, t * t * t
    return torch.stack([1 - 3 * t2 + 2 * t3, 3 * t2 - 2 * t3, t - 2 * t2 + t3, t3 - t2], -1)


def offsets(model: str, coefficients: Tensor, xy: Tensor, image_size: tuple[int, int],
            grid: tuple[int, int]) -> Tensor:
    """Displacements ``d(p)`` ``(..., 2)`` (px) at image positions ``xy (..., 2)``.

    ``coefficients``: ``(..., C)`` broadcasting against ``xy``'s leading dimensions (e.g.
    ``(T, C)`` per tilt for positions ``(N, T, 2)``, or ``(C,)`` for one field). Differentiable.
    """
    w, h = image_size
    c = coefficients.to(xy.dtype)
    if model == "linear":
        rx, ry = xy[..., 0] - 0.5 * w, xy[..., 1] - 0.5 * h
        return torch.stack([c[..., 0] * rx, c[..., 1] * rx + c[..., 2] * ry], -1)
    if model == "Fourier":
        freqs = fourier_frequencies(grid, image_size, xy.dtype, xy.device)
        nf = len(freqs)
        z = c.reshape(*c.shape[:-1], 2, nf, 2)
        phase = xy @ freqs.T  # (..., n_f)
        cos, sin = torch.cos(phase), torch.sin(phase)
        return torch.stack([(z[..., d, :, 0] * cos + z[..., d, :, 1] * sin).sum(-1)
                            for d in (0, 1)], -1)
    gw, gh = grid
    data = c.reshape(*c.shape[:-1], 2, gh, gw, 4)
    g = torch.stack([xy[..., 0] / (w / (gw - 1)), xy[..., 1] / (h / (gh - 1))], -1)
    upper = torch.tensor([gw - 1, gh - 1], dtype=xy.dtype, device=xy.device) - 1e-10
    g = torch.minimum(g.clamp(min=0.0), upper)
    cell = g.detach().floor().long()
    frac = g - cell
    vx, vy = _hermite(frac[..., 0]), _hermite(frac[..., 1])  # (..., 4)
    lead = torch.broadcast_shapes(data.shape[:-4], cell.shape[:-1])
    data = data.expand(*lead, *data.shape[-4:])
    cx, cy = cell[..., 0].expand(lead), cell[..., 1].expand(lead)
    out = []
    for dim in (0, 1):
        nodes = data[..., dim, :, :, :]  # (..., gh, gw, 4)
        flat = nodes.reshape(*lead, gh * gw, 4)

        def node(i: int, j: int, _flat=flat) -> Tensor:
            index = ((cy + j) * gw + (cx + i))[..., None, None].expand(*lead, 1, 4)
            return torch.gather(_flat, -2, index)[..., 0, :]  # (..., 4)

        n00, n01, n10, n11 = node(0, 0), node(0, 1), node(1, 0), node(1, 1)
        # F[a, b]: a = (x0 value, x1 value, x0 slope, x1 slope), b likewise in y
        f = torch.stack([
            torch.stack([n00[..., 0], n01[..., 0], n00[..., 2], n01[..., 2]], -1),
            torch.stack([n10[..., 0], n11[..., 0], n10[..., 2], n11[..., 2]], -1),
            torch.stack([n00[..., 1], n01[..., 1], n00[..., 3], n01[..., 3]], -1),
            torch.stack([n10[..., 1], n11[..., 1], n10[..., 3], n11[..., 3]], -1),
        ], -2)  # (..., 4, 4)
        out.append(torch.einsum("...a,...ab,...b->...", vx, f, vy))
    return torch.stack(out, -1)


def regulariser(model: str, coefficients: Tensor, grid: tuple[int, int],
                image_size: tuple[int, int], weight: float) -> Tensor:
    """RELION's deformation prior: ``weight`` × Σ c² (linear, spline) or Σ |f|² |z|² (Fourier)."""
    if weight <= 0:
        return coefficients.new_zeros(())
    if model != "Fourier":
        return weight * (coefficients**2).sum()
    f2 = (fourier_frequencies(grid, image_size, coefficients.dtype, coefficients.device)**2
          ).sum(-1)
    z = coefficients.reshape(*coefficients.shape[:-1], 2, len(f2), 2)
    return weight * ((z**2).sum(-1) * f2).sum()


def coefficient_scale(model: str, image_size: tuple[int, int], n: int) -> Tensor:
    """Units in which a coefficient of 1 moves image points by about 1 px (for optimisers)."""
    if model == "linear":
        w, h = image_size
        return torch.tensor([2.0 / w, 2.0 / w, 2.0 / h], dtype=torch.float64)
    return torch.ones(n, dtype=torch.float64)


@dataclass
class Deformation:
    """The 2D deformations of one tilt series: ``coefficients (T, C)`` (one row per tilt, table
    order) of ``model`` on a ``grid (gw, gh)`` for images of ``image_size (W, H)`` px."""

    model: str
    grid: tuple[int, int]
    coefficients: Tensor
    image_size: tuple[int, int]

    def apply(self, xy: Tensor) -> Tensor:
        """``p + d(p)`` for projected positions ``(N, T, 2)`` (px)."""
        return xy + offsets(self.model, self.coefficients.to(xy), xy, self.image_size,
                            self.grid)


def _vector(text, where, tilt: int) -> np.ndarray:
    if isinstance(text, (list, tuple, np.ndarray)):
        return np.asarray(text, dtype=np.float64)
    try:
        return np.array([float(v) for v in str(text).strip().strip("[]").split(",") if v],
                        dtype=np.float64)
    except ValueError:
        raise InputError(where, f"tilt {tilt + 1}: {text!r} is not a vector [a,b,…]",
                         field=COEFFS) from None


def deformation_of(ts) -> Deformation | None:
    """The tilt series' deformation from its STAR columns, or None (no deformation)."""
    if TYPE not in ts.globals or COEFFS not in ts.tilts or any(g not in ts.globals
                                                                  for g in GRID):
        return None
    model = canonical_model(ts.globals[TYPE])
    grid = (int(ts.globals[GRID[0]]), int(ts.globals[GRID[1]]))
    n = n_coefficients(model, grid)
    rows = [_vector(v, ts.source, t) for t, v in enumerate(ts.tilts[COEFFS])]
    for t, row in enumerate(rows):
        if len(row) != n:
            raise InputError(ts.source, f"tilt series {ts.name}, tilt {t + 1}: {len(row)} "
                             f"deformation coefficients; a {model} model on a {grid[0]}×"
                             f"{grid[1]} grid has {n}", field=COEFFS)
    return Deformation(model, grid, torch.from_numpy(np.stack(rows)), ts.image_size_px)


def with_deformation(ts, deformation: Deformation | None):
    """A copy of ``ts`` holding ``deformation`` in RELION's columns (None removes it)."""
    globals_ = {k: v for k, v in ts.globals.items() if k not in (TYPE, *GRID)}
    tilts = ts.tilts.drop(columns=[COEFFS], errors="ignore")
    if deformation is not None:
        globals_[GRID[0]], globals_[GRID[1]] = (int(g) for g in deformation.grid)
        globals_[TYPE] = deformation.model
        coeffs = deformation.coefficients.detach().cpu().double().numpy()
        coeffs = np.broadcast_to(coeffs, (ts.n_tilts, coeffs.shape[-1]))
        tilts[COEFFS] = ["[" + ",".join(repr(float(v)) for v in row) + "]" for row in coeffs]
    return replace(ts, globals=globals_, tilts=tilts)
