"""``subtomo hetero select``: particles by KMeans cluster or by a region of the latent space,
written as STAR files in the input's flavour (OPUS-TOMO's ``parse_pose``), ready for
``subtomo reconstruct`` or ``refine``.

* no selection given: one file per cluster, ``DIR/analyze.N/kmeansK/preI.star`` (I = 0 … K-1,
  OPUS-TOMO's names), and ``particles_kmeansK.star`` with every particle and its cluster as
  ``rlnClassNumber`` (I + 1, so ``subtomo select --class`` works on it);
* ``clusters`` and/or ``regions`` (``(P, low, high)``: PC P of ``z_pca.npy`` within
  [low, high]; several regions must all hold) with ``output``: the particles in them;
* with ``--estpose`` the files carry the refined poses of that epoch;
* ``min_occupancy`` / ``min_cc``: the clusters whose decoded centre map holds at least that
  share of the fullest cluster's consensus density / correlates at least that well with the
  consensus inside the mask (:func:`cluster_scores`; junk — empty boxes, other molecules —
  decodes to little of the consensus and to other shapes).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from subtomo.errors import InputError
from subtomo.hetero.analysis import analysis_dir, load_npy, read_labels, read_latents
from subtomo.hetero.checkpoints import checkpoint_path, load_checkpoint, read_config
from subtomo.hetero.forward import corrected_poses
from subtomo.hetero.volumes import load_model, volumes_at
from subtomo.interop import same_flavour
from subtomo.io.files import atomic_path, check_not_input, check_outputs
from subtomo.io.star import read_particles, write_particles
from subtomo.refine.outputs import volume_poses, with_poses

__all__ = ["cluster_scores", "select_particles"]


def cluster_scores(run_dir: str | Path, epoch: int, k: int) -> np.ndarray:
    """Per cluster of ``analyze.N/kmeansK`` (K, 3): particles, occupancy and correlation of its
    centre's decoded map ``V_k`` with the consensus ``V_0`` inside the mask ``M``. Occupancy =
    ``ŝ_k <M V_k, M V_0>`` in the data's units (``ŝ_k`` the mean contrast scale of the
    cluster's particles, by which the loss multiplies the decoded maps; 1 for runs saved without
    it), relative to the largest over the clusters (1: as much of the consensus density as the
    fullest cluster; the consensus itself is diluted by any junk); correlation is the Pearson
    coefficient of ``M V_k`` and ``M V_0``. Written to ``kmeansK/clusters.tsv``.
    """
    labels = read_labels(run_dir, epoch, k)
    folder = analysis_dir(run_dir, epoch) / f"kmeans{k}"
    centres = np.atleast_2d(np.loadtxt(folder / "centers.txt"))
    loaded = load_model(run_dir, epoch)
    maps = volumes_at(loaded, centres)
    mask = loaded.model.mask.cpu()
    ref = (mask * loaded.model.consensus.cpu()).flatten()
    flat = (maps * mask).flatten(1)
    contrast = load_checkpoint(checkpoint_path(Path(run_dir), epoch), field="EPOCH").get(
        "contrast")
    sizes = np.bincount(labels, minlength=k)
    scale = torch.ones(k, dtype=flat.dtype) if contrast is None else torch.from_numpy(
        np.bincount(labels, weights=contrast.double().numpy(), minlength=k)
        / np.maximum(sizes, 1)).to(flat.dtype)
    occupancy = scale * (flat @ ref)
    occupancy = occupancy / occupancy.max().clamp_min(1e-12)
    centred = flat - flat.mean(1, keepdim=True)
    rc = ref - ref.mean()
    corr = (centred @ rc) / (centred.norm(dim=1) * rc.norm()).clamp_min(1e-12)
    table = np.column_stack([sizes, occupancy.numpy(), corr.numpy()])
    lines = ["cluster\tparticles\toccupancy\tcorrelation"] + [
        f"{i}\t{int(s)}\t{o:.4f}\t{c:.4f}" for i, (s, o, c) in enumerate(table)]
    with atomic_path(folder / "clusters.tsv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table


def select_particles(run_dir: str | Path, epoch: int, *, star: str | Path | None = None,
                     kmeans: int | None = None, clusters: list[int] | None = None,
                     regions: list[tuple[int, float, float]] | None = None,
                     min_occupancy: float | None = None, min_cc: float | None = None,
                     output: str | Path | None = None) -> dict[str, int]:
    """Write the selection (see the module docstring); returns {file: particles}."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    star = star or config.get("particles")
    if not star:
        raise InputError(None, "give the particle STAR file (--i)", field="--i")
    ps = read_particles(star)
    n = len(read_latents(run_dir, epoch))
    if len(ps) == n:
        ps = corrected_particles(ps, run_dir, epoch)
    if len(ps) != n:
        raise InputError(star, f"has {len(ps)} particles; the latents of epoch {epoch} have "
                         f"{n}", field="--i")
    if output is not None:
        check_not_input(output, star)
    by_score = min_occupancy is not None or min_cc is not None
    want = clusters is not None or regions or by_score
    if (clusters is not None or by_score) and kmeans is None:
        raise InputError(None, "selecting clusters needs --kmeans K", field="--kmeans")
    labels = read_labels(run_dir, epoch, kmeans) if kmeans is not None else None
    flavour = same_flavour(ps)
    if not want:
        if labels is None:
            raise InputError(None, "give --kmeans K (one file per cluster), or --clusters / "
                             "--region with --o", field="--kmeans")
        folder = analysis_dir(run_dir, epoch) / f"kmeans{kmeans}"
        check_outputs([star], folder, ["pre*.star", f"particles_kmeans{kmeans}.star"],
                      option="--kmeans")
        written = {}
        for i in range(kmeans):
            rows = np.flatnonzero(labels == i)
            path = folder / f"pre{i}.star"
            write_particles(ps.subset(rows), path, flavour)
            written[str(path)] = len(rows)
        df = ps.particles.copy()
        df["rlnClassNumber"] = labels + 1
        path = folder / f"particles_kmeans{kmeans}.star"
        write_particles(replace(ps, particles=df), path, flavour)
        written[str(path)] = n
        return written
    if output is None:
        raise InputError(None, "a selection by --clusters, --region, --min-occupancy or "
                         "--min-cc needs --o", field="--o")
    keep = np.ones(n, dtype=bool)
    chosen = set(clusters or [])
    if by_score:
        table = cluster_scores(run_dir, epoch, kmeans)
        chosen |= {i for i, row in enumerate(table)
                   if row[1] >= (min_occupancy or -np.inf) and row[2] >= (min_cc or -np.inf)}
    if clusters is not None or by_score:
        bad = sorted(c for c in chosen if not 0 <= c < kmeans)
        if bad:
            raise InputError(None, f"cluster {bad[0]} does not exist (0 … {kmeans - 1})",
                             field="--clusters")
        keep &= np.isin(labels, sorted(chosen))
    if regions:
        pcs_path = analysis_dir(run_dir, epoch) / "z_pca.npy"
        if not pcs_path.is_file():
            raise InputError(pcs_path, f"run 'subtomo hetero analyze {run_dir} {epoch}' first",
                             field="--region")
        pcs = load_npy(pcs_path, "--region")
        for pc, low, high in regions:
            if not 1 <= pc <= pcs.shape[1]:
                raise InputError(pcs_path, f"PC {pc} was not computed (1 … {pcs.shape[1]})",
                                 field="--region")
            keep &= (pcs[:, pc - 1] >= low) & (pcs[:, pc - 1] <= high)
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise InputError(None, "the selection is empty", field="--clusters")
    write_particles(ps.subset(rows), output, flavour)
    return {str(output): len(rows)}


def corrected_particles(ps, run_dir: str | Path, epoch: int):
    """``ps`` with the pose corrections of ``--estpose`` at ``epoch`` applied (angles and
    origins; unchanged if the run did not refine poses). ``A' = A exp([ω]×)``, origin'
    = origin - τ + δs (Å), ``τ`` the centring of ``--offset-range`` (corrections are on top
    of it)."""
    state = load_checkpoint(checkpoint_path(Path(run_dir), epoch), field="EPOCH")
    if state.get("poses") is None:
        return ps
    pixel_size_A = float(np.nanmean(ps.pixel_size_A()))
    A, origins_px = volume_poses(ps, pixel_size_A)
    delta = state["poses"]["delta"].double()
    if len(delta) != len(ps):
        raise InputError(ps.source, f"has {len(ps)} particles; the pose corrections "
                         f"{len(delta)}", field="--i")
    if state.get("centring_px") is not None:
        origins_px = origins_px - state["centring_px"].double().numpy()
    A2, shifts = corrected_poses(torch.as_tensor(A), torch.as_tensor(origins_px * pixel_size_A),
                                 delta)
    out = with_poses(ps, A2.numpy(), shifts.numpy() / pixel_size_A, pixel_size_A,
                     np.ones(len(ps)),
                     np.zeros(len(ps)))
    df = out.particles.drop(columns=["rlnMaxValueProbDistribution",
                                     "rlnLogLikeliContribution"])
    if "rlnClassNumber" not in ps.particles:
        df = df.drop(columns=["rlnClassNumber"])
    return replace(out, particles=df)
