"""Heterogeneity VAE (``subtomo hetero``) against the bars of issue 13, on simulated data at the
classification bench's level: 48³, 4 Å/px, CTF, missing wedge, noise σ 5, starting poses off by
3° rms and 0.5 px.

Parts (``--parts``, default all):

* ``speed``: one epoch over 1000 particles with ``--downfrac 0.75``, wall and CPU time, peak
  RSS; the same on 250 particles for the memory comparison (separate processes);
* ``composition``: 1500 particles of 3 classes (the classification bench's set); KMeans 3 on
  the latents, adjusted Rand index against the truth, per epoch;
* ``hinge``: 1000 particles with a domain hinged over 0–30°, trained (as seed 002 does) on the
  poses of a consensus refinement of the set (``subtomo refine``, local from the simulated
  poses); |Spearman ρ| between PC1 and the angle; ``eval-vol`` along PC1: FSC-0.5 resolution
  of the two end maps against the true end states (0° and 30°) next to the consensus map's;
  the median orientation error of the poses ``--estpose`` refines, per epoch, and the time of
  each pose search;
* ``ceiling``: the hinge angle by template matching against the true maps at the simulated,
  the consensus-refined and the true poses (and at the poses the *hinge* part's training
  refined, when it was run first): what the data allow without learning;
* ``independent_hinge``, ``independent_classes`` (issue 28; not in the default list): sets made by
  ``tests/hetero/independent_sim.py``, a simulator that shares no code with the package (its
  own phantoms of Gaussian blobs, CTF formula and wedge, a contrast scale ×0.8–1.2 and an offset
  per particle, noise level ±20 %): 1000 particles with a domain hinged 0–30° (poses 3° rms and
  0.5 px off; |Spearman ρ| of PC1 with the angle) and 1500 particles in three equal classes
  (poses 5° and 0.5 px off; ARI of KMeans 3), 48³ at 4 Å/px, default options;
* ``junk``: 1000 particles, 30 % replaced by noise or another molecule; KMeans 8, clusters kept
  whose centre map holds ≥ 85 % of the fullest cluster's consensus density and correlates
  ≥ 0.9 with it (``select --min-occupancy 0.85 --min-cc 0.9``):
  share of junk removed and of good particles kept.

Run: ``.venv/bin/python bench/bench_hetero.py [--parts speed,composition,hinge,junk]
[--epochs 6] [--device cpu]``. The machine may be shared: wall and CPU time are both printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "hetero"))

from independent_sim import IndependentConfig, simulate  # noqa: E402
from results import OWN_PEAK, machine_load, own_peak_mib, update_section  # noqa: E402

from subtomo.hetero.analysis import analyze  # noqa: E402
from subtomo.hetero.inputs import TrainOptions, read_inputs  # noqa: E402
from subtomo.hetero.select import cluster_scores, corrected_particles  # noqa: E402
from subtomo.hetero.train import train  # noqa: E402
from subtomo.io.particles import ParticleSet  # noqa: E402
from subtomo.io.star import read_particles  # noqa: E402
from subtomo.simulate.subtomograms import SimulationConfig, simulate_subtomograms  # noqa: E402

DATA = Path(__file__).parent / ".data"
COMMON = ("- data: 48³, 4 Å/px, CTF + missing wedge (±60°, 3° steps), noise σ 5, starting poses "
          "off by 3° rms / 0.5 px; {epochs} epochs, batch 8, default options otherwise. CPU "
          "times are the process's own; the machine's load is given below.")
BASE = dict(box_px=48, pixel_size_A=4.0, n_atoms=4000, noise_sigma=5.0, angle_error_deg=3.0,
            shift_error_px=0.5, seed=5)
SETS = {"composition": dict(n=1500, classes=3), "hinge": dict(n=1000, hinge_max_deg=30.0),
        "junk": dict(n=1000, junk_fraction=0.3)}


INDEPENDENT = {"independent_hinge": dict(kind="hinge", n=1000, angle_error_deg=3.0),
               "independent_classes": dict(kind="classes", n=1500, angle_error_deg=5.0)}
INDEPENDENT_BASE = dict(box_px=48, pixel_size_A=4.0, snr=0.3, shift_error_px=0.5, seed=1)
INDEPENDENT_COMMON = ("- data: tests/hetero/independent_sim.py (no code shared with the package): "
                      "48³, 4 Å/px, its own CTF (defocus 1.5–3.5 µm) and wedge (±60° about Y, "
                      "fixed in the tomogram), contrast ×0.8–1.2 and an offset per particle, "
                      "SNR 0.3 in the particle's sphere; {epochs} epochs, default options.")


def data_set(kind: str) -> Path:
    folder = DATA / f"hetero_{kind}"
    if not (folder / "particles.star").exists():
        shutil.rmtree(folder, ignore_errors=True)
        simulate_subtomograms(folder, SimulationConfig(**BASE, **SETS[kind]), progress=False)
    return folder


REFINE = dict(healpix_order=4, auto_local_healpix_order=4, offset_range_px=2.0,
              offset_step_px=1.0)  # local searches around the simulated poses


def consensus_refined(kind: str) -> Path:
    """The set's consensus refinement (``subtomo refine --ctf --healpix_order 4
    --auto_local_healpix_order 4 --offset_range 2 --offset_step 1``), made once and kept:
    its ``run_data.star``, the poses a user gives the VAE."""
    from subtomo.refine.autorefine import RefineOptions, auto_refine
    from subtomo.refine.reconstruct import reconstruct

    data = data_set(kind)
    out = data / "Refine3D"
    if not (out / "run_data.star").exists():
        shutil.rmtree(out, ignore_errors=True)
        given = read_particles(data / "particles.star")
        reference = reconstruct(given, ctf=True, progress=False).map
        auto_refine(given, reference, out, progress=False,
                    options=RefineOptions(ctf=True, **REFINE))
    return out / "run_data.star"


def median_error_deg(star: Path | ParticleSet, truth: Path) -> float:
    from subtomo.geometry.symmetry import symmetric_distance_deg

    a = star if isinstance(star, ParticleSet) else read_particles(star)
    b = read_particles(truth)
    return float(symmetric_distance_deg(b.rotation_matrices(), a.rotation_matrices(),
                                        "C1").median())


def refined_poses(star: Path, run_dir: Path, epoch: int) -> ParticleSet:
    """The particles of ``star`` at the poses ``hetero train --estpose`` had at ``epoch``."""
    return corrected_particles(read_particles(star), run_dir, epoch)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_speed(device: str, lines: list[str]) -> None:
    """One epoch (training pass + encoding pass) in a child process; peak RSS of each."""
    data = data_set("hinge")
    results = {}
    for n in (250, 1000):
        star = data / f"first_{n}.star"
        if not star.exists():
            subprocess.run([sys.executable, "-m", "subtomo", "select", "random", "--i",
                            str(data / "particles.star"), "--n", str(n), "--o", str(star)],
                           check=True, capture_output=True)
        out = fresh(data / f"speed_{n}")
        code = OWN_PEAK + (
            "import json, sys, time\n"
            "from subtomo.hetero.inputs import TrainOptions, read_inputs\n"
            "from subtomo.hetero.train import train\n"
            f"inputs = read_inputs({str(star)!r}, ref={str(data / 'consensus.mrc')!r})\n"
            "w, c = time.perf_counter(), time.process_time()\n"
            f"train(inputs, {str(out)!r}, TrainOptions(epochs=1, downfrac=0.75), "
            f"device={device!r}, progress=False)\n"
            "print(json.dumps({'wall': time.perf_counter() - w, 'cpu': time.process_time() - c,"
            " 'rss': own_peak_mib()}))\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        results[n] = json.loads(done.stdout.strip().splitlines()[-1])
        log = (out / "log.tsv").read_text().splitlines()[-1].split("\t")
        results[n]["epoch_wall"], results[n]["epoch_cpu"] = float(log[8]), float(log[9])
    r = results[1000]
    lines.append(f"- speed: one epoch over 1000 particles (48³, `--downfrac 0.75`, templateres "
                 f"48; 900 trained + all 1000 encoded) {r['epoch_wall']:.1f} s wall, "
                 f"{r['epoch_cpu']:.1f} s CPU (process time, both threads); bar ≤ 60 s")
    lines.append(f"- memory: peak RSS {results[250]['rss']:.0f} MiB with 250 particles, "
                 f"{r['rss']:.0f} MiB with 1000 (data streamed from disk; a consensus map "
                 "given, as reconstructing it is a separate job)")


def _train(kind: str, epochs: int, device: str, star: Path | None = None, name: str = "run",
           **options) -> tuple[Path, list[dict]]:
    data = data_set(kind)
    out = fresh(data / name)
    history = []

    def echo(row: dict) -> None:
        history.append(row)
        print(kind, {k: round(v, 4) for k, v in row.items()}, flush=True)

    train(read_inputs(star or data / "particles.star"), out,
          TrainOptions(epochs=epochs, **options),
          device=device, progress=False, echo=echo)
    return out, history


def _times(history: list[dict]) -> str:
    wall = np.mean([h["wall_s"] for h in history])
    cpu = np.mean([h["cpu_s"] for h in history])
    return f"{wall:.0f} s wall / {cpu:.0f} s CPU per epoch"


def run_composition(epochs: int, device: str, lines: list[str]) -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    out, history = _train("composition", epochs, device)
    truth = read_particles(DATA / "hetero_composition" / "truth.star").particles
    labels = truth["rlnClassNumber"].to_numpy()
    aris = []
    for h in history:
        z = np.load(out / f"z.{int(h['epoch'])}.npy")
        found = KMeans(3, n_init=10, random_state=0).fit_predict(z)
        aris.append(adjusted_rand_score(labels, found))
    lines.append(f"- composition (1500 particles, 3 classes): KMeans 3 on the latents, ARI "
                 f"per epoch {', '.join(f'{a:.3f}' for a in aris)}; last {aris[-1]:.3f} "
                 f"(bar ≥ 0.9); {_times(history)}")


def _end_states(data: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The true 0° and 30° maps and a soft mask on the hinged domain over its whole range."""
    from subtomo.maps.mask import create_mask
    from subtomo.simulate.render import render_atoms
    from subtomo.simulate.subtomograms import build_structure

    config = SimulationConfig(**BASE, **SETS["hinge"])
    base = build_structure(config)

    def render(angle: float, atoms=None, sigma: float = config.sigma_A) -> torch.Tensor:
        s = base.hinged(angle)
        sel = slice(None) if atoms is None else atoms
        return render_atoms(s.positions_A[sel][None], s.amplitudes[sel], config.box_px,
                            config.pixel_size_A, sigma)[0].float()

    moving = base.domain == 2
    domain = sum(render(a, moving, 2 * config.sigma_A) for a in (0.0, 15.0, 30.0))
    mask = create_mask(domain, config.pixel_size_A, 0.1 * float(domain.max()),
                       extend_inimask_px=1, width_soft_edge_px=2).float()
    return [render(0.0), render(30.0)], mask


def run_hinge(epochs: int, device: str, lines: list[str]) -> None:
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA

    from subtomo.fourier.fsc import fsc, resolution_at
    from subtomo.hetero.volumes import eval_vol
    from subtomo.io.mrc import read_mrc

    star = consensus_refined("hinge")
    out, history = _train("hinge", epochs, device, star=star, estpose=True)
    data = DATA / "hetero_hinge"
    errors = [median_error_deg(p, data / "truth.star") for p in (data / "particles.star", star)]
    refined = [median_error_deg(refined_poses(star, out, int(h["epoch"])), data / "truth.star")
               for h in history]
    searches = [h for h in history if "pose_s" in h]
    angle = read_particles(data / "truth.star").particles["rlnSubtomoHingeDeg"].to_numpy()
    last = int(history[-1]["epoch"])
    result = analyze(out, last, pcs=2, ksample=4, skip_umap=True)
    _, plain = _train("hinge", epochs, device, star=star, name="run_fixed_poses")

    def pc1_rho(run: Path, epoch: int) -> float:
        z = np.load(run / f"z.{epoch}.npy")
        return abs(spearmanr(PCA(1).fit_transform(z)[:, 0], angle).statistic)

    rhos = [pc1_rho(out, int(h["epoch"])) for h in history]
    rhos_fixed = [pc1_rho(data / "run_fixed_poses", int(h["epoch"])) for h in plain]
    rho = spearmanr(result.pcs[:, 0], angle).statistic
    paths = eval_vol(out, last, "pc", 1)
    ends = [torch.from_numpy(read_mrc(paths[i])[0].copy()) for i in (0, len(paths) - 1)]
    mask = torch.from_numpy(read_mrc(out / "mask.mrc")[0].copy())
    consensus = torch.from_numpy(read_mrc(out / "consensus.mrc")[0].copy())
    truths, domain = _end_states(data)
    if rho < 0:  # PC1 runs from 30° to 0°: pair the ends with the matching states
        truths = truths[::-1]

    def res(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> float:
        return resolution_at(fsc(a * m, b * m), 48, 4.0, threshold=0.5)

    def band(a: torch.Tensor, b: torch.Tensor) -> float:  # mean FSC, 48–16 Å, domain mask
        return float(fsc(a * domain, b * domain)[1:4 * 48 // 16 + 1].mean())

    pairs = [(res(e, t, mask), res(consensus, t, mask)) for e, t in zip(ends, truths,
                                                                         strict=True)]
    blind = res(truths[0], truths[1], mask)
    bands = [(band(e, t), band(consensus, t)) for e, t in zip(ends, truths, strict=True)]
    lines.append("- poses: the consensus refinement's (`subtomo refine --ctf --healpix_order 4 "
                 "--auto_local_healpix_order 4 --offset_range 2 --offset_step 1` from the "
                 f"simulated poses): median orientation error {errors[0]:.2f}° → {errors[1]:.2f}°"
                 " against the fixed body's true pose (the refinement aligns the whole "
                 "particle, hinged domain included, to the consensus map)")
    lines.append("- poses refined in training (`--estpose`: a local search against the decoded "
                 "map of the particle's latent group before every 3rd epoch from 3, "
                 "`subtomo.hetero.poses`): median orientation error per epoch "
                 f"{', '.join(f'{e:.2f}°' for e in refined)}; without `--estpose` "
                 f"{errors[1]:.2f}° throughout (the input poses); "
                 + ("; ".join(f"search before epoch {int(h['epoch'])}: {h['pose_particles']} "
                              f"particles, {h['pose_rotations']} rotations each, "
                              f"{h['pose_s']:.0f} s" for h in searches) or "no search"))
    lines.append(f"- hinge (1000 particles, 0–30°, `--estpose`, `--ema 2`): |Spearman ρ(PC1, "
                 f"angle)| per epoch {', '.join(f'{r:.3f}' for r in rhos)}; last {abs(rho):.3f}"
                 f" (bar ≥ 0.9); {_times(history)}; the same run without `--estpose`: "
                 f"{', '.join(f'{r:.3f}' for r in rhos_fixed)}")
    lines.append("- hinge end maps (eval-vol pc 1, 5th/95th percentile) vs the true 0°/30° "
                 "states, FSC 0.5 in the run's mask: " + "; ".join(
                     f"{name} {e:.2f} Å (consensus {c:.2f} Å)" for name, (e, c) in
                     zip(("0° end", "30° end"), pairs, strict=True)) +
                 " (bar: each end closer than the consensus). This measure cannot see the "
                 f"hinge: the true 0° and 30° maps agree to FSC 0.5 at {blind:.1f} Å (Nyquist "
                 "8 Å) in that mask, so it ranks maps by their noise at 9 Å")
    lines.append("- the same ends in a mask on the hinged domain, mean FSC over 48–16 Å against "
                 "the true end state: " + "; ".join(
                     f"{name} {e:.3f} (consensus {c:.3f})" for name, (e, c) in
                     zip(("0° end", "30° end"), bands, strict=True)) +
                 f" (true 0° vs true 30°: {band(truths[0], truths[1]):.3f})")


def matched_states(maps: torch.Tensor, pixel_A: float, ps, n: int,
                   reference: torch.Tensor | None = None) -> np.ndarray:
    """Index of the map in ``maps`` (``(S, D, D, D)``) that best explains each of the first
    ``n`` particles of ``ps`` at its pose, through the training's forward model (CTF, wedge,
    the mask training takes from ``reference``, default the mean map; least squares):
    template matching, no learning."""
    from subtomo.hetero.forward import Boxes, ctf_filter, predict, real_at
    from subtomo.hetero.inputs import auto_mask
    from subtomo.hetero.model import HeteroVAE
    from subtomo.refine.images import iterate_batches

    box = maps.shape[-1]
    reference = maps.mean(0) if reference is None else reference
    mask = auto_mask(reference, pixel_A)
    boxes = Boxes(box, pixel_A, 3 * box // 4, box)
    model = HeteroVAE(enc_box=3 * box // 4, template_box=box, zdim=1, zaffinedim=0,
                      consensus=reference, mask=mask, body_masks=None,
                      template_pixel_size_A=pixel_A)
    A = ps.rotation_matrices().float()
    best = np.zeros(n, dtype=int)
    for batch in iterate_batches(ps, np.arange(n), box=box, ctf=True, batch_size=16,
                                 shifts_px=torch.as_tensor(ps.shifts_A() / pixel_A)):
        b = len(batch.rows)
        idx = torch.as_tensor(batch.rows)
        filt = ctf_filter(batch.ctf, boxes, 1.0, 0.0, b, torch.device("cpu"))
        x = real_at(batch.spectra, box, box)
        cost = []
        for m in maps:
            pred, at = predict(model, (m * mask).expand(b, box, box, box), torch.zeros(b, 1),
                               A[idx], torch.zeros(b, 3), boxes, filt)
            cost.append(((pred - x) ** 2 * at).sum((1, 2, 3)))
        best[batch.rows] = torch.stack(cost, 1).argmin(1).numpy()
    return best


def hinge_ceiling(config: SimulationConfig, truth_star: Path, poses: dict, n: int = 400
                  ) -> dict[str, float]:
    """What hinge data allow: each particle's angle by template matching against the true maps
    at 0, 5, … 30° (:func:`matched_states`) at each of ``poses`` (label → particle set);
    |Spearman ρ| with the true angle on the first ``n`` particles."""
    from scipy.stats import spearmanr

    from subtomo.simulate.render import render_atoms
    from subtomo.simulate.subtomograms import build_structure

    base = build_structure(config)
    angles = np.arange(0.0, 31.0, 5.0)
    maps = torch.stack([render_atoms(base.hinged(a).positions_A[None], base.amplitudes,
                                     config.box_px, config.pixel_size_A, config.sigma_A)[0].float()
                        for a in angles])
    angle = read_particles(truth_star).particles["rlnSubtomoHingeDeg"].to_numpy()
    n = min(n, len(angle))
    return {label: abs(spearmanr(angles[matched_states(maps, config.pixel_size_A, ps, n,
                                                       reference=maps[3])],
                                 angle[:n]).statistic) for label, ps in poses.items()}


def run_ceiling(lines: list[str]) -> None:
    """:func:`hinge_ceiling` of the *hinge* part's set at the simulated, consensus, true and
    (if that part was run) training-refined poses."""
    data = data_set("hinge")
    run_dir = data / "run"  # the *hinge* part's training, if it was run
    done = sorted(int(p.name.split(".")[1]) for p in run_dir.glob("weights.*.pt"))
    consensus_refined("hinge")
    poses = {name: read_particles(data / name) for name in
             ("particles.star", "Refine3D/run_data.star", "truth.star")}
    if done:
        poses["refined"] = refined_poses(data / "Refine3D/run_data.star", run_dir, done[-1])
    found = hinge_ceiling(SimulationConfig(**BASE, **SETS["hinge"]), data / "truth.star", poses)
    lines.append(f"- ceiling: the hinge angle of each particle by template matching against the "
                 f"true maps (0, 5, …, 30°) through the training's forward model, 400 particles:"
                 f" |Spearman ρ| {found['particles.star']:.3f} at the simulated poses (3° rms "
                 f"off), {found['Refine3D/run_data.star']:.3f} at the consensus refinement's "
                 f"(the *hinge* section's input), {found['truth.star']:.3f} at the true poses"
                 + (f", {found['refined']:.3f} at the poses the *hinge* training refined "
                    f"(`--estpose`, epoch {done[-1]})" if "refined" in found else ""))


def run_independent(part: str, epochs: int, device: str, lines: list[str]) -> None:
    """Train on an independent set (module docstring) and score the latents of every epoch."""
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    folder = DATA / part
    if not (folder / "truth.npz").exists():
        shutil.rmtree(folder, ignore_errors=True)
        simulate(folder, IndependentConfig(**INDEPENDENT_BASE, **INDEPENDENT[part]))
    truth = np.load(folder / "truth.npz")["variable"]
    out = fresh(folder / "run")
    history: list[dict] = []
    train(read_inputs(folder / "particles.star"), out, TrainOptions(epochs=epochs),
          device=device, progress=False, echo=history.append)
    scores = []
    for h in history:
        z = np.load(out / f"z.{int(h['epoch'])}.npy")
        if INDEPENDENT[part]["kind"] == "hinge":
            scores.append(abs(spearmanr(PCA(1).fit_transform(z)[:, 0], truth).statistic))
        else:
            found = KMeans(3, n_init=10, random_state=0).fit_predict(z)
            scores.append(adjusted_rand_score(truth, found))
    config = INDEPENDENT[part]
    what = (f"{config['n']} particles, " + ("hinge 0–30°" if config["kind"] == "hinge" else
                                             "3 classes") +
            f", poses {config['angle_error_deg']:g}° / {INDEPENDENT_BASE['shift_error_px']} px "
            "off: " + ("|Spearman ρ(PC1, angle)|" if config["kind"] == "hinge" else
                       "KMeans 3 ARI"))
    lines.append(f"- {part} ({what}) per epoch {', '.join(f'{x:.3f}' for x in scores)}; last "
                 f"{scores[-1]:.3f} (bar ≥ 0.9); {_times(history)}")


def run_junk(epochs: int, device: str, lines: list[str]) -> None:
    out, history = _train("junk", epochs, device)
    truth = read_particles(DATA / "hetero_junk" / "truth.star").particles
    junk = truth["rlnSubtomoJunk"].to_numpy() > 0
    last = int(history[-1]["epoch"])
    result = analyze(out, last, pcs=2, ksample=8, skip_umap=True)
    table = cluster_scores(out, last, 8)
    kept_clusters = [i for i, row in enumerate(table) if row[1] >= 0.85 and row[2] >= 0.9]
    kept = np.isin(result.labels, kept_clusters)
    removed_junk = float(np.mean(~kept[junk]))
    kept_good = float(np.mean(kept[~junk]))
    purity = [float(np.bincount(junk[result.labels == i].astype(int), minlength=2).max() /
                    max(1, np.sum(result.labels == i))) for i in range(8)]
    scores = ", ".join(f"{int(s)}: {o:.2f}/{c:.2f}" for s, o, c in table)
    lines.append(f"- junk (1000 particles, 30 % noise or another molecule): KMeans 8 (cluster "
                 f"purity min {min(purity):.2f}); clusters kept whose centre map has "
                 f"occupancy ≥ 0.85 and correlation ≥ 0.9 with the consensus "
                 f"({len(kept_clusters)} of 8; size: occupancy/correlation {scores}): "
                 f"junk removed "
                 f"{100 * removed_junk:.1f} %, good kept "
                 f"{100 * kept_good:.1f} % (bars ≥ 90 %, ≥ 90 %); {_times(history)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="speed,composition,hinge,junk")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    parts = args.parts.split(",")
    DATA.mkdir(exist_ok=True)
    if "speed" in parts and not (DATA / "hetero_hinge" / "consensus.mrc").exists():
        from subtomo.io.mrc import write_mrc
        from subtomo.refine.reconstruct import reconstruct

        data = data_set("hinge")
        volume = reconstruct(read_particles(data / "particles.star"), ctf=True, progress=False)
        write_mrc(data / "consensus.mrc", volume.map, 4.0)
    lines: list[str] = []
    start = time.perf_counter()
    runners = {"speed": lambda: run_speed(args.device, lines),
               "composition": lambda: run_composition(args.epochs, args.device, lines),
               "hinge": lambda: run_hinge(args.epochs, args.device, lines),
               "junk": lambda: run_junk(args.epochs, args.device, lines),
               "ceiling": lambda: run_ceiling(lines),
               **{part: (lambda part=part: run_independent(part, args.epochs, args.device,
                                                           lines)) for part in INDEPENDENT}}
    for part in parts:
        before = len(lines)
        runners[part]()
        common = COMMON.format(epochs=1 if part == "speed" else args.epochs)
        if part == "ceiling":
            common = COMMON.split(";")[0] + "; no training."
        if part in INDEPENDENT:
            common = INDEPENDENT_COMMON.format(epochs=args.epochs)
        update_section(f"Heterogeneity VAE: {part} ({args.device})", "\n".join(
            lines[before:] + [common, f"- machine: {machine_load()}"]))
        print("\n".join(lines), flush=True)
    print(f"peak RSS {own_peak_mib():.0f} MiB (of the bench process, data simulation and "
          f"consensus refinement included where not cached); "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
