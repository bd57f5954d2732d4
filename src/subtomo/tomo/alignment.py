"""Refinement of one tilt series against its particles (the core of ``subtomo tomo-align``).

Model (RELION 5 ``ModularAlignment``, ``src/jaz/tomography/motion/modular_alignment/``): every
tilt keeps its five degrees of freedom free (X tilt, Y tilt, Z rotation, X/Y shift: no common
tilt axis), every particle its 3D position; with ``motion`` each particle also moves along a
3D trajectory in dose order whose velocities follow the Gaussian process of
:mod:`subtomo.tomo.motion_model`; with ``deformation`` the tilt images are deformed in 2D
(:mod:`subtomo.tomo.deformation`, one field for the series or one per tilt). A particle at
tomogram position ``x_pt`` (its position, its input trajectory and the new motion) appears
in tilt ``t`` at ``q_pt = D_t(P_t x_pt)``.

Objective: the precomputed cross-correlation maps of :mod:`subtomo.tomo.correlation` (each
centred on the particle's projected position under the input geometry), read by bicubic
interpolation at ``q_pt − q⁰_pt``::

    cost = −Σ_pt CC_pt(q_pt − q⁰_pt) + ½ Σ (motion coefficients)² + def_reg · R(deformation)

minimised over all parameters at once by L-BFGS with a strong-Wolfe line search on autograd
gradients (RELION: its own L-BFGS on hand-written gradients). Parameters are scaled so that a
unit step moves image points by about one pixel (angles by one pixel at the image's edge).

Gauge: projections and positions are only defined up to a rigid motion of the tomogram frame
(and, with deformations, an isotropic scaling, which a deformation absorbs): moving every
particle by ``G`` and every projection by ``G⁻¹`` changes nothing in the images. The
position changes are therefore kept orthogonal to those modes (the mean change, the mean
infinitesimal rotation about the particles' centroid and, with deformations, the mean
dilation are zero), so the frame stays that of the input positions and the result is
unique. Spline deformations, whose node values may all shift together like the tilt's own
shift, keep zero mean value per field.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from subtomo.geometry.tilt import project_points, projection_matrices
from subtomo.io.particle_series import particle_positions_px
from subtomo.io.particles import ParticleSet
from subtomo.io.tilt_series import TiltSeries
from subtomo.refine.reconstruct import half_sets
from subtomo.tomo import deformation as deform
from subtomo.tomo.correlation import CorrelationMaps, References, correlation_maps, interpolate
from subtomo.tomo.crops import prepare_images
from subtomo.tomo.motion_model import MotionBasis, frame_dose, motion_basis, trajectories

__all__ = ["AlignSettings", "SeriesAlignment", "align_series", "frame_transform", "gauge_basis"]


@dataclass
class AlignSettings:
    """Options of ``tomo-align`` (RELION's names; lengths in px of the tilt series unless
    named otherwise)."""

    box: int = 96  # --b: crop for the estimation (px at the references' pixel size)
    max_shift_px: float = 20.0  # --r: largest assumed 2D position error (tilt-series px)
    motion: bool = False
    s_vel: float = 0.3  # Å per e/Å² of exposure (RELION: 0.5; see motion_model)
    s_div: float = 5000.0  # Å (× exposure per tilt, as RELION, unless abs_params)
    sq_exp_kernel: bool = False
    abs_params: bool = False
    max_ed: int = -1
    deformation: bool = False
    def_w: int = 3
    def_h: int = 3
    def_model: str = "spline"
    def_reg: float | None = None  # None: the model's default (deformation.DEFAULT_REG)
    per_frame_deformation: bool = False
    shift_only: bool = False
    pad: int = 2  # CC map samples per px
    coarse_blur_px: float | None = None  # σ of the first pass's smoothing (None: r / 3, 1–4 px)
    max_iter: int = 500
    batch_size: int = 32


@dataclass
class SeriesAlignment:
    """Result for one tilt series: the refined tilt series (angles, shifts, deformation),
    particle ``rows``, their new positions ``(N, 3)`` (tilt-series px, origins folded in: the
    position in the first exposed tilt) and trajectories ``(N, T, 3)`` (Å, tilts in table
    order), and figures of the fit."""

    ts: TiltSeries
    rows: np.ndarray
    positions_px: np.ndarray
    trajectories_A: np.ndarray
    stats: dict = field(default_factory=dict)


def gauge_basis(positions_px: Tensor, scaling: bool = False) -> Tensor:
    """Orthonormal ``(3N, k)`` basis of the position changes a change of the tomogram frame
    makes: 3 translations, 3 infinitesimal rotations about the centroid (and a dilation)."""
    x = positions_px.to(torch.float64)
    n = len(x)
    r = x - x.mean(0)
    modes = []
    for axis in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[axis] = 1.0
        modes.append(e.expand(n, 3))
        modes.append(torch.cross(e.expand(n, 3), r, dim=1))
    if scaling:
        modes.append(r)
    b = torch.stack([m.reshape(-1) for m in modes], 1)
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    return u[:, s > 1e-9 * max(float(s.max()), 1.0)]


def frame_transform(source: np.ndarray, target: np.ndarray, scaling: bool = False):
    """The rigid motion (and, with ``scaling``, isotropic scale) that best takes points
    ``source (N, 3)`` onto ``target (N, 3)`` in least squares (Kabsch–Umeyama): the change of
    gauge between two refinements' frames. Returns a function of points ``(M, 3)``."""
    p, q = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mp, mq = p.mean(0), q.mean(0)
    u, s, vt = np.linalg.svd((p - mp).T @ (q - mq))
    sign = np.sign(np.linalg.det(u @ vt))
    rot = (u @ np.diag([1.0, 1.0, sign]) @ vt).T
    scale = (s * [1.0, 1.0, sign]).sum() / ((p - mp) ** 2).sum() if scaling else 1.0
    return lambda x: scale * (np.asarray(x, np.float64) - mp) @ rot.T + mq


class _Model(torch.nn.Module):
    """Parameters and cost of one tilt series (see the module docstring)."""

    def __init__(self, ts: TiltSeries, maps: CorrelationMaps, positions_px: Tensor,
                 input_trajectories_px: Tensor, settings: AlignSettings,
                 mb: MotionBasis | None, initial: deform.Deformation | None) -> None:
        super().__init__()
        device = maps.maps.device
        t, n = ts.n_tilts, len(positions_px)
        self.ts, self.maps, self.settings, self.mb = ts, maps, settings, mb
        self.dof0 = ts.dof(device)
        self.image_size = ts.image_size_px
        self.angle_unit = math.degrees(1.0) / (0.5 * max(self.image_size))  # deg per param
        self.pos0 = positions_px.to(device, torch.float64)
        self.traj0 = input_trajectories_px.to(device, torch.float64)
        self.angles = torch.nn.Parameter(torch.zeros(t, 3, dtype=torch.float64, device=device))
        self.shifts = torch.nn.Parameter(torch.zeros(t, 2, dtype=torch.float64, device=device))
        self.positions = torch.nn.Parameter(torch.zeros(n, 3, dtype=torch.float64,
                                                        device=device))
        self.gauge = gauge_basis(self.pos0, scaling=settings.deformation).to(device)
        self.motion = None
        if mb is not None:
            self.motion = torch.nn.Parameter(torch.zeros(t - 1, mb.n_basis, 3,
                                                         dtype=torch.float64, device=device))
        # deformation: fixed (from the input), free (estimated), or none
        self.fixed = initial if not settings.deformation else None
        self.coeffs = None
        if settings.deformation:
            model = deform.canonical_model(settings.def_model)
            grid = (settings.def_w, settings.def_h)
            count = deform.n_coefficients(model, grid)
            rows = t if settings.per_frame_deformation else 1
            start = torch.zeros(rows, count, dtype=torch.float64)
            if initial is not None and initial.model == model and initial.grid == grid:
                c = initial.coefficients.to(torch.float64)
                start = c if settings.per_frame_deformation else c.mean(0, keepdim=True)
            self.def_model, self.def_grid = model, grid
            self.def_reg = (deform.DEFAULT_REG[model] if settings.def_reg is None
                            else float(settings.def_reg))
            self.def_scale = deform.coefficient_scale(model, self.image_size, count).to(device)
            self.def_start = start.to(device)
            self.coeffs = torch.nn.Parameter(torch.zeros_like(self.def_start))
        self.use(maps)

    def use(self, maps: CorrelationMaps) -> None:
        """Evaluate the data term on ``maps`` (a stage of the coarse-to-fine schedule)."""
        self.maps = maps
        self.visible = maps.visible.to(torch.float64)
        self.norm = max(maps.peak, 1e-30)

    # ---- parameters -> geometry ---------------------------------------------------------
    def dof(self) -> tuple[Tensor, ...]:
        xt, yt, zr, sx, sy = self.dof0
        a = self.angles * self.angle_unit
        s = self.shifts * self.ts.pixel_size_A
        return xt + a[:, 0], yt + a[:, 1], zr + a[:, 2], sx + s[:, 0], sy + s[:, 1]

    def matrices(self) -> Tensor:
        ts = self.ts
        return projection_matrices(*self.dof(), ts.pixel_size_A, ts.tomo_size_px,
                                   self.image_size)

    def position_change(self) -> Tensor:
        u = self.positions.reshape(-1)
        return (u - self.gauge @ (self.gauge.T @ u)).reshape(-1, 3)

    def new_motion(self) -> Tensor | None:
        return None if self.motion is None else trajectories(self.motion, self.mb)

    def deformation_coefficients(self) -> Tensor | None:
        if self.coeffs is None:
            return None
        c = self.coeffs * self.def_scale
        if self.def_model == "spline":  # pin the common offset of the node values
            gw, gh = self.def_grid
            c = c.reshape(len(c), 2, gh, gw, 4)
            values = c[..., 0]
            values = values - values.mean(dim=(-2, -1), keepdim=True)
            c = torch.cat([values[..., None], c[..., 1:]], -1).reshape(len(c), -1)
        return self.def_start + c

    def trajectory_positions(self) -> Tensor:
        """Tomogram positions ``(N, T, 3)`` (px) in every tilt."""
        pos = self.pos0 + self.position_change()
        out = pos[:, None] + self.traj0
        motion = self.new_motion()
        return out if motion is None else out + motion

    def image_positions(self) -> Tensor:
        xy = project_points(self.matrices(), self.trajectory_positions())[..., :2]
        coeffs = self.deformation_coefficients()
        if coeffs is not None:
            xy = xy + deform.offsets(self.def_model, coeffs, xy, self.image_size, self.def_grid)
        elif self.fixed is not None:
            xy = self.fixed.apply(xy)
        return xy

    # ---- cost -----------------------------------------------------------------------------
    def correlations(self) -> Tensor:
        """Interpolated CC ``(N, T)`` at the current parameters."""
        m = self.maps
        centre = (m.maps.shape[-1] - 1) / 2
        uv = centre + (self.image_positions() - m.centres) * m.scale * m.pad
        return interpolate(m.maps, uv)

    def forward(self) -> Tensor:
        cost = -(self.correlations() * self.visible).sum()
        if self.motion is not None:
            cost = cost + 0.5 * (self.motion**2).sum()
        coeffs = self.deformation_coefficients()
        if coeffs is not None:
            cost = cost + deform.regulariser(self.def_model, coeffs, self.def_grid,
                                             self.image_size, self.def_reg)
        return cost / self.norm


def _lbfgs(model: _Model, params: list[Tensor], max_iter: int) -> int:
    """Minimise ``model()`` over ``params``; returns the iterations taken. On the CPU it runs
    on one thread: each evaluation is a few hundred small operations, which more threads only
    slow down (and, on a busy machine, make spin for nothing)."""
    threads = torch.get_num_threads()
    if model.maps.maps.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _minimise(model, params, max_iter)
    finally:
        torch.set_num_threads(threads)


def _minimise(model: _Model, params: list[Tensor], max_iter: int) -> int:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=30,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = model()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[opt._params[0]]
    return int(state.get("n_iter", 0))


def _summed_map_shifts(model: _Model) -> Tensor:
    """Per tilt, the displacement (tilt-series px) where the CC maps of all particles summed
    peak: the starting point of ``--shift_only``."""
    m = model.maps
    total = (m.maps * m.visible[..., None, None]).sum(0)  # (T, S, S)
    s = total.shape[-1]
    best = total.reshape(len(total), -1).argmax(-1)
    centre = (s - 1) / 2
    d = torch.stack([best % s, best // s], -1).to(torch.float64) - centre
    return d / m.pad / m.scale


def align_series(
    ts: TiltSeries,
    ps: ParticleSet,
    rows: np.ndarray,
    refs: References,
    projectors,
    settings: AlignSettings,
    *,
    motion: dict[str, np.ndarray] | None = None,
    device: str | torch.device = "cpu",
    progress=None,
) -> SeriesAlignment:
    """Refine ``ts`` and the positions (and motion) of its particles ``rows`` of ``ps``."""
    start_time, start_cpu = time.perf_counter(), time.process_time()
    device = torch.device(device)
    rows = np.asarray(rows)
    static = particle_positions_px(ps, ts, rows, None, apply_origins=True)
    moving = particle_positions_px(ps, ts, rows, motion, apply_origins=True) if motion else static
    traj0 = moving - static
    halves = half_sets(ps)[rows]
    A = ps.subset(rows).rotation_matrices().to(torch.float64)
    prepared = prepare_images(ts.read_images().to(device), ts.pixel_size_A, refs.pixel_size_A)
    radius = settings.max_shift_px * max(prepared.scale)
    coarse = settings.coarse_blur_px
    if coarse is None:
        coarse = min(max(radius / 3, 1.0), 4.0)
    stages = correlation_maps(ts, prepared, moving, A, halves, refs, projectors,
                              box=settings.box, radius_px=radius, pad=settings.pad,
                              batch_size=settings.batch_size,
                              blur_px=(coarse, 0.0) if coarse > 0 else (0.0,),
                              progress=progress)
    maps = stages[-1]
    del prepared
    mb = None
    if settings.motion:
        dose = 1.0 if settings.abs_params else frame_dose(ts)
        order = np.argsort(ts.pre_exposure, kind="stable")
        mb = motion_basis(static[:, 0].to(device), order, dose * settings.s_vel / ts.pixel_size_A,
                          dose * settings.s_div / ts.pixel_size_A, settings.sq_exp_kernel,
                          settings.max_ed)
    initial = deform.deformation_of(ts)
    model = _Model(ts, maps, static[:, 0], traj0, settings, mb, initial)
    with torch.no_grad():
        xy_before = model.image_positions()
        cost_before = float(model())
    params = [model.shifts] if settings.shift_only else list(model.parameters())
    iterations = []
    for level, stage in enumerate(stages):  # coarse to fine
        model.use(stage)
        if settings.shift_only and level == 0:
            with torch.no_grad():
                model.shifts.copy_(_summed_map_shifts(model))
        iterations.append(_lbfgs(model, params, settings.max_iter))
    with torch.no_grad():
        cost_after = float(model())
        xy_after = model.image_positions()
        positions = (model.pos0 + model.position_change()).cpu().numpy()
        traj = model.traj0 + (model.new_motion() if model.motion is not None else 0.0)
        new_ts = ts.with_dof(*model.dof())
        coeffs = model.deformation_coefficients()
        if coeffs is not None:
            coeffs = coeffs.expand(ts.n_tilts, -1) if len(coeffs) == 1 else coeffs
            new_ts = deform.with_deformation(new_ts, deform.Deformation(
                model.def_model, model.def_grid, coeffs.cpu(), ts.image_size_px))
        vis = maps.visible
        moved = (xy_after - xy_before).norm(dim=-1)[vis]
    stats = {
        "particles": len(rows), "tilts": ts.n_tilts, "visible_crops": int(vis.sum()),
        "cost_before": cost_before, "cost_after": cost_after, "iterations": iterations,
        "rms_image_shift_px": float(moved.pow(2).mean().sqrt()) if moved.numel() else 0.0,
        "motion_basis": 0 if mb is None else mb.n_basis,
        "wall_s": time.perf_counter() - start_time, "cpu_s": time.process_time() - start_cpu,
    }
    return SeriesAlignment(new_ts, rows, positions, traj.cpu().numpy() * ts.pixel_size_A, stats)
