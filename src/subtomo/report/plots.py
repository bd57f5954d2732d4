"""Plots a person looks at: FSC curves and Guinier plots, written atomically as PNG.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
state), saved to a temporary file beside the target and moved into place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from subtomo.io.files import atomic_path

_THRESHOLD_STYLES = ("--", ":", "-.")


def _as_numpy(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _angstrom_label(frequency: float, _pos: int | None = None) -> str:
    if frequency <= 0:
        return "∞"
    value = 1.0 / frequency
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def plot_fsc(
    curves: Mapping[str, object],
    box: int,
    pixel_size_A: float,
    path: str | Path,
    thresholds: Sequence[float] = (0.143, 0.5),
    title: str = "Fourier shell correlation",
    *,
    resolution_A: float | None = None,
    dpi: int = 120,
) -> Path:
    """Plot FSC curves (each ``(box // 2 + 1,)``) against spatial frequency.

    The x axis is linear in 1/Å (bottom labels in Å, top in 1/Å); ``thresholds`` are drawn as
    horizontal lines; ``resolution_A`` (if given) as a vertical line. Returns ``path``.
    """
    n = box // 2 + 1
    frequency = np.arange(n) / (box * pixel_size_A)  # 1/Å
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        y = _as_numpy(values)
        if y.shape != (n,):
            raise ValueError(f"FSC curve {name!r} has shape {y.shape}; expected ({n},)")
        ax.plot(frequency, y, label=name, linewidth=1.5)
    for k, threshold in enumerate(thresholds):
        ax.axhline(threshold, color="grey", linewidth=0.8,
                   linestyle=_THRESHOLD_STYLES[k % len(_THRESHOLD_STYLES)],
                   label=f"FSC = {threshold:g}")
    ax.axhline(0.0, color="black", linewidth=0.5)
    if resolution_A is not None and np.isfinite(resolution_A) and resolution_A > 0:
        ax.axvline(1.0 / resolution_A, color="black", linewidth=0.8, linestyle="--",
                   label=f"{resolution_A:.2f} Å")
    ax.set_xlim(0.0, frequency[-1])
    ax.set_ylim(-0.1, 1.05)
    ax.xaxis.set_major_formatter(FuncFormatter(_angstrom_label))
    ax.set_xlabel("resolution (Å)")
    ax.set_ylabel("Fourier shell correlation")
    top = ax.secondary_xaxis("top")
    top.set_xlabel("spatial frequency (1/Å)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_guinier(
    guinier: Mapping[str, object],
    path: str | Path,
    *,
    fit: tuple[float, float] | None = None,
    fit_range_A: tuple[float, float] | None = None,
    title: str = "Guinier plot",
    dpi: int = 120,
) -> Path:
    """Plot ln(amplitude) against 1/d² (1/Å²).

    ``guinier`` holds ``resolution_squared`` (1/Å²) and any number of ln-amplitude columns
    (values ≤ −99 mean undefined and are not drawn, as in RELION's table); ``fit`` is the fitted
    line ``(slope Å², intercept)`` and ``fit_range_A`` the (low, high) resolution range in Å it
    was fitted over (shaded). Returns ``path``.
    """
    if "resolution_squared" not in guinier:
        raise ValueError("guinier needs a 'resolution_squared' column (1/Å²)")
    x = _as_numpy(guinier["resolution_squared"])
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, values in guinier.items():
        if name in ("resolution_squared", "intercept"):
            continue
        y = _as_numpy(values)
        if y.shape != x.shape:
            raise ValueError(f"Guinier column {name!r} has shape {y.shape}; expected {x.shape}")
        y = np.where(y <= -99.0, np.nan, y)
        ax.plot(x, y, label=name, linewidth=1.5)
    if fit_range_A is not None:
        low, high = fit_range_A
        ax.axvspan(1.0 / low**2, 1.0 / high**2, color="grey", alpha=0.15, label="fit range")
    if fit is not None:
        slope, intercept = fit
        ax.plot(x, intercept + slope * x, color="black", linestyle="--", linewidth=1.0,
                label=f"fit: B = {4 * slope:.0f} Å²")
    ax.set_xlabel("1/d² (1/Å²)")
    ax.set_ylabel("ln(amplitude)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_resolution_history(history: Sequence[Mapping], path: str | Path,
                            dpi: int = 110) -> Path:
    """Resolution (Å) per iteration of a refinement, with its angular step (degrees)."""
    iterations = [h["iteration"] for h in history]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(iterations, [h["resolution_A"] for h in history], "o-", color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("resolution at FSC 0.143 (Å)", color="tab:blue")
    ax.invert_yaxis()
    steps = ax.twinx()
    steps.step(iterations, [h["angular_step_deg"] for h in history], where="mid",
               color="tab:orange")
    steps.set_ylabel("angular step (°)", color="tab:orange")
    ax.set_title("auto-refine: resolution per iteration")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_class_slices(maps: Sequence[object], path: str | Path,
                      titles: Sequence[str] | None = None, dpi: int = 110) -> Path:
    """Central orthoslices of 3D maps side by side: one column per map, rows XY, XZ, YZ
    (each map on its own grey scale, ``x`` to the right, origin at the bottom left)."""
    volumes = [_as_numpy(m) for m in maps]
    n = len(volumes)
    fig = Figure(figsize=(1.9 * n + 0.6, 5.9))
    for j, vol in enumerate(volumes):
        c = vol.shape[0] // 2
        views = (("XY", vol[c]), ("XZ", vol[:, c]), ("YZ", vol[:, :, c]))
        low, high = np.percentile(vol, [0.5, 99.5]) if vol.any() else (0.0, 1.0)
        for i, (name, image) in enumerate(views):
            ax = fig.add_subplot(3, n, i * n + j + 1)
            ax.imshow(image, cmap="gray", origin="lower", vmin=low, vmax=max(high, low + 1e-12))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j] if titles else f"class {j + 1}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_class_occupancy(history: Sequence[Mapping], path: str | Path, dpi: int = 110) -> Path:
    """Fraction of particles per class (``history[i]["distribution"]``) per iteration."""
    iterations = [h["iteration"] for h in history]
    k = max(len(h["distribution"]) for h in history)  # classes may be added on the way
    shares = np.array([list(h["distribution"]) + [np.nan] * (k - len(h["distribution"]))
                       for h in history], dtype=np.float64)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for k in range(shares.shape[1]):
        ax.plot(iterations, shares[:, k], "o-", ms=3, label=f"class {k + 1}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("class distribution")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, shares.shape[1]))
    ax.set_title("3D classification: class occupancy")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_tilt_changes(tilt_deg: Sequence[float], shift_px: object, angles_deg: object,
                      path: str | Path, title: str = "tilt-series refinement",
                      dpi: int = 110) -> Path:
    """Per-tilt changes of a tilt-series refinement against the nominal tilt angle: the X/Y
    shift change (px, ``(T, 2)``) and the X tilt, Y tilt and Z rotation changes (°, ``(T, 3)``)."""
    tilt = _as_numpy(tilt_deg)
    shifts, angles = _as_numpy(shift_px), _as_numpy(angles_deg)
    order = np.argsort(tilt)
    fig = Figure(figsize=(7.5, 5.5))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    for k, name in enumerate(("x shift", "y shift")):
        top.plot(tilt[order], shifts[order, k], "o-", markersize=3, label=name)
    for k, name in enumerate(("X tilt", "Y tilt", "Z rotation")):
        bottom.plot(tilt[order], angles[order, k], "o-", markersize=3, label=name)
    top.set_ylabel("shift change (px)")
    bottom.set_ylabel("angle change (°)")
    bottom.set_xlabel("nominal tilt angle (°)")
    for ax in (top, bottom):
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    top.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)
