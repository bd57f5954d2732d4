"""Pictures of a latent space (``subtomo hetero analyze``): 2D embeddings coloured by cluster or
by a per-particle value, cluster centres, principal-component histograms and the training
loss. Object API on the Agg canvas, written atomically (as :mod:`subtomo.report.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from subtomo.report.plots import _save

__all__ = ["plot_embedding", "plot_histograms", "plot_training_loss"]


def _axes_labels(ax, names: tuple[str, str]) -> None:
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(alpha=0.2)


def plot_embedding(points: np.ndarray, path: str | Path, *, labels: np.ndarray | None = None,
                   values: np.ndarray | None = None, value_name: str = "",
                   centres: np.ndarray | None = None, names: tuple[str, str] = ("PC1", "PC2"),
                   title: str = "", dpi: int = 110) -> Path:
    """Scatter of 2D ``points`` (N, 2): coloured by cluster ``labels`` (N,), by ``values`` (N,)
    with a colour bar, or as a density (hexagonal bins); ``centres`` (K, 2) are drawn and
    numbered (0-based, as the cluster files)."""
    points = np.asarray(points, dtype=float)
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    if labels is not None:
        k = int(labels.max()) + 1 if len(labels) else 0
        cmap = "tab10" if k <= 10 else "tab20"
        ax.scatter(points[:, 0], points[:, 1], c=labels, cmap=cmap, s=4, alpha=0.6,
                   vmin=-0.5, vmax=max(k, 10 if k <= 10 else 20) - 0.5, linewidths=0)
    elif values is not None:
        art = ax.scatter(points[:, 0], points[:, 1], c=values, cmap="viridis", s=4, alpha=0.7,
                         linewidths=0)
        fig.colorbar(art, ax=ax, label=value_name)
    else:
        art = ax.hexbin(points[:, 0], points[:, 1], gridsize=40, cmap="Blues", mincnt=1)
        fig.colorbar(art, ax=ax, label="particles")
    if centres is not None:
        c = np.asarray(centres, dtype=float)
        ax.scatter(c[:, 0], c[:, 1], c="black", marker="x", s=40)
        for i, (x, y) in enumerate(c):
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    _axes_labels(ax, names)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_histograms(values: np.ndarray, path: str | Path, *, prefix: str = "PC",
                    dpi: int = 110) -> Path:
    """One histogram per column of ``values`` (N, P), titled ``PC1 .. PCP``."""
    values = np.asarray(values, dtype=float)
    p = values.shape[1]
    cols = min(p, 4)
    rows = (p + cols - 1) // cols
    fig = Figure(figsize=(3.0 * cols, 2.6 * rows))
    for i in range(p):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.hist(values[:, i], bins=50, color="tab:blue", alpha=0.8)
        ax.set_title(f"{prefix}{i + 1}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_training_loss(rows: Sequence[Mapping[str, float]], path: str | Path,
                       dpi: int = 110) -> Path:
    """Training and validation reconstruction loss (per particle, in units of the noise
    variance) and the KL term per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(epochs, [2 * r["train_rec"] for r in rows], "o-", ms=3, label="training")
    ax.plot(epochs, [r["val_rec"] for r in rows], "s-", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked squared residual / σ²")
    ax.grid(alpha=0.3)
    kl = ax.twinx()
    kl.plot(epochs, [r["train_kl"] for r in rows], ":", color="grey", label="KL / N_M")
    kl.set_ylabel("KL per mask voxel", color="grey")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("hetero train: loss per particle")
    fig.tight_layout()
    return _save(fig, path, dpi)
