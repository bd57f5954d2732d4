"""``subtomo hetero analyze``: PCA, KMeans and (optionally) UMAP of the latent space of one
epoch, with pictures; the layout of OPUS-TOMO's ``dsdsh analyze`` (``DIR/analyze.N/``).

Files written into ``DIR/analyze.N/``:

* ``z_pca.npy`` (N, P) principal components of the latent means, ``pca.json`` (components,
  mean, explained variance), ``pc_histograms.png``;
* ``pcP/z_values.txt`` latent points along PC P at its 5, 15, …, 95th percentiles (one row
  each; what ``eval-vol … pc P`` decodes) and ``pcP/pc_values.txt`` their PC values;
* ``kmeansK/labels.npy`` the cluster (0 … K-1) of each particle, ``kmeansK/centers.txt`` the
  centres in the latent space, ``kmeansK/centers_ind.txt`` the particle nearest to each;
* ``umap.npy`` (if ``umap-learn`` is installed; ``--skip-umap`` reuses it);
* pictures: ``pca.png`` (density, KMeans centres), ``kmeansK/pca.png`` (coloured by cluster),
  ``pca_tilt.png`` / ``pca_rot.png`` (by pose), ``pca_defocus.png``, the same for UMAP, and
  ``loss.png`` (training and validation loss per epoch);
* ``analysis.json``: what was done, with the explained variance and the cluster sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subtomo.errors import InputError
from subtomo.hetero.checkpoints import LOG, latents_path, read_config
from subtomo.io.files import atomic_path
from subtomo.io.star import read_particles

__all__ = ["AnalysisResult", "analyze", "analysis_dir", "read_latents", "read_labels"]

PERCENTILES = tuple(range(5, 100, 10))


@dataclass
class AnalysisResult:
    out_dir: Path
    pcs: np.ndarray
    explained: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    umap: np.ndarray | None


def analysis_dir(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / f"analyze.{epoch}"


def load_npy(path: Path, field: str) -> np.ndarray:
    """A ``.npy`` array of a training folder; a torn or foreign file is one clear error."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"not a readable .npy array ({str(exc)[:80]})",
                         field=field) from None


def read_latents(run_dir: str | Path, epoch: int) -> np.ndarray:
    """``z.N.npy`` of a training folder; a clear error if that epoch has none."""
    path = latents_path(Path(run_dir), epoch)
    if not path.is_file():
        done = sorted(int(p.name.split(".")[1]) for p in Path(run_dir).glob("z.*.npy")
                      if p.name.split(".")[1].isdigit())
        have = f"epochs with latents: {done[0]}–{done[-1]}" if done else "no epoch finished"
        raise InputError(path, f"no latents for epoch {epoch} ({have})", field="EPOCH")
    return load_npy(path, "EPOCH")


def read_labels(run_dir: str | Path, epoch: int, k: int) -> np.ndarray:
    path = analysis_dir(run_dir, epoch) / f"kmeans{k}" / "labels.npy"
    if not path.is_file():
        raise InputError(path, f"no KMeans with {k} clusters for epoch {epoch}: run "
                         f"'subtomo hetero analyze {run_dir} {epoch} --ksample {k}' first",
                         field="--kmeans")
    return load_npy(path, "--kmeans")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _save_txt(path: Path, array: np.ndarray, fmt: str = "%.6g") -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, array, fmt=fmt)


def _umap(z: np.ndarray, out: Path, skip: bool, seed: int) -> np.ndarray | None:
    path = out / "umap.npy"
    if skip:
        return load_npy(path, "--skip-umap") if path.exists() else None
    try:
        import umap  # optional extra: pip install 'subtomo[umap]'
    except ImportError:
        return None
    embedding = umap.UMAP(random_state=seed).fit_transform(z)
    _save_npy(path, embedding)
    return embedding


def _particle_values(run_dir: Path, n: int) -> dict[str, np.ndarray]:
    """Per-particle tilt, rot and defocus from the training's STAR file (when readable)."""
    config = read_config(run_dir)
    star = config.get("particles")
    if not star or not Path(star).is_file():
        return {}
    try:
        ps = read_particles(star)
    except InputError:
        return {}
    if len(ps) != n:
        return {}
    angles = ps.angles_deg()
    values = {"rot": angles[:, 0], "tilt": angles[:, 1]}
    if "rlnDefocusU" in ps.particles:
        values["defocus"] = ps.particles["rlnDefocusU"].to_numpy(float)
    return values


def analyze(run_dir: str | Path, epoch: int, *, pcs: int = 4, ksample: int = 16,
            skip_umap: bool = False, seed: int = 0) -> AnalysisResult:
    """PCA, KMeans and UMAP of the latents of ``epoch``; files and pictures as in the module
    docstring. Returns the embeddings."""
    # scikit-learn and matplotlib (report/) imported here, not at the top: eval-vol and select
    # import this module and need neither. Measured on the shared 2-core machine (load 3, 3
    # runs): importing subtomo.hetero.select takes 1.7 s, scikit-learn adds 0.7 s and
    # matplotlib 0.4 s (at load 13: 5.9 s and 3.2 s)
    from sklearn.cluster import KMeans  # start-up: scikit-learn 0.7 s, see above
    from sklearn.decomposition import PCA  # start-up: scikit-learn, see above

    from subtomo.report import latent_plots  # start-up: matplotlib 0.4 s, see above

    run_dir = Path(run_dir)
    read_config(run_dir)
    z = read_latents(run_dir, epoch).astype(np.float64)
    n, dim = z.shape
    if ksample < 1 or ksample > n:
        raise InputError(None, f"--ksample must be between 1 and {n} (particles)",
                         field="--ksample")
    if pcs < 1:
        raise InputError(None, "--pcs must be at least 1", field="--pcs")
    out = analysis_dir(run_dir, epoch)
    out.mkdir(parents=True, exist_ok=True)
    p = min(pcs, dim, n)
    pca = PCA(n_components=max(p, min(2, dim)), random_state=seed).fit(z)
    proj = pca.transform(z)
    _save_npy(out / "z_pca.npy", proj[:, :p])
    with atomic_path(out / "pca.json") as tmp:
        tmp.write_text(json.dumps({
            "mean": pca.mean_.tolist(), "components": pca.components_[:p].tolist(),
            "explained_variance_ratio": pca.explained_variance_ratio_[:p].tolist()}, indent=1))
    for i in range(p):
        values = np.percentile(proj[:, i], PERCENTILES)
        folder = out / f"pc{i + 1}"
        folder.mkdir(exist_ok=True)
        _save_txt(folder / "pc_values.txt", values)
        _save_txt(folder / "z_values.txt", pca.mean_ + values[:, None] * pca.components_[i])

    kmeans = KMeans(n_clusters=ksample, n_init=10, random_state=seed).fit(z)
    labels, centres = kmeans.labels_.astype(np.int64), kmeans.cluster_centers_
    nearest = np.array([int(np.argmin(((z - c) ** 2).sum(1))) for c in centres])
    kdir = out / f"kmeans{ksample}"
    kdir.mkdir(exist_ok=True)
    _save_npy(kdir / "labels.npy", labels)
    _save_txt(kdir / "centers.txt", centres)
    _save_txt(kdir / "centers_ind.txt", nearest, fmt="%d")

    embedding = _umap(z, out, skip_umap, seed)
    views = [("pca", proj[:, :2] if proj.shape[1] > 1 else np.c_[proj[:, 0], proj[:, 0]],
              ("PC1", "PC2"), pca.transform(centres)[:, :2] if proj.shape[1] > 1 else None)]
    if embedding is not None:
        views.append(("umap", embedding, ("UMAP1", "UMAP2"), embedding[nearest]))
    extra = _particle_values(run_dir, n)
    for name, points, axes, centre_points in views:
        latent_plots.plot_embedding(points, out / f"{name}.png", centres=centre_points,
                                    names=axes, title=f"epoch {epoch}: {n} particles, "
                                    f"KMeans {ksample} centres")
        latent_plots.plot_embedding(points, kdir / f"{name}.png", labels=labels,
                                    centres=centre_points, names=axes,
                                    title=f"KMeans {ksample}")
        for key, values in extra.items():
            unit = "Å" if key == "defocus" else "°"
            latent_plots.plot_embedding(points, out / f"{name}_{key}.png", values=values,
                                        value_name=f"{key} ({unit})", names=axes,
                                        title=f"particles coloured by {key}")
    latent_plots.plot_histograms(proj[:, :p], out / "pc_histograms.png")
    log = run_dir / LOG
    if log.exists():
        rows = _read_log(log)
        if rows:
            latent_plots.plot_training_loss(rows, out / "loss.png")
    summary = {"epoch": epoch, "particles": n, "latent_dim": dim, "pcs": p,
               "explained_variance_ratio": pca.explained_variance_ratio_[:p].tolist(),
               "kmeans": ksample, "cluster_sizes": np.bincount(labels,
                                                               minlength=ksample).tolist(),
               "umap": embedding is not None}
    with atomic_path(out / "analysis.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return AnalysisResult(out, proj[:, :p], pca.explained_variance_ratio_[:p], labels, centres,
                          embedding)


def _read_log(path: Path) -> list[dict[str, float]]:
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:]]
