"""Heterogeneity side by side (issue 28): ``subtomo hetero train`` next to OPUS-ET (``dsd
train_tomo --warp``, patched for CPU by bench/opus/setup.sh) and cryoDRGN-ET on the same
simulated sets, at a size a 2-core CPU manages.

Parts (``--part``, comma separated): ``composition`` (3 classes), ``hinge`` (domain 0–30°),
``junk`` (30 % noise or another molecule) from ``bench_hetero.data_set``'s simulator at
``--n`` particles and ``--box``³ (4 Å/px, CTF + wedge ±60°/3°, noise σ 5, poses 3°/0.5 px
off), ``independent_hinge``, ``independent_classes`` from tests/hetero/independent_sim.py,
and ``tiltseries``: 3 classes simulated as tilt series (``subtomo simulate tiltseries``, 5
tomograms, ±60° / 6°, noise σ 40 per image pixel, ``--tilt-noise``), the one set all three
tools read: ours and OPUS on its subtomograms (``subtomo extract``), cryoDRGN-ET on its tilt
images (``subtomo export cryodrgn``, ``train_vae --encode-mode tilt``).

Per tool and set, per epoch: the score on the latents (KMeans 3 ARI; |Spearman ρ(PC1, hinge)|;
junk: KMeans 8 with each cluster called junk when most of its members are, an oracle labelling
that bounds what a selection on the latents could do: junk removed / good kept), wall and CPU
time, peak RSS, and the cumulative time to the bar (0.9). Every epoch is its own process (the
tool's own resume: ``hetero train --continue``, OPUS ``--load latest``), recorded in
``epochs.json`` of the tool's folder: a killed bench resumes where it stopped and finished
epochs are skipped; the per-epoch times include each process's start (data index, model).
At the last epoch, each tool's decoder at the ends of its latent path against the true states
(:mod:`hetero_end_maps`); for the hinge and composition sets, the template-matching ceiling
at the given and true poses (``bench_hetero.matched_states``). An OPUS epoch that ran no batch
is an error.

Run: ``python bench/bench_hetero_anchors.py --part composition [--tools ours,opus]
[--epochs 4] [--opus-epochs 2] [--opus-batches 8,4] [--noise 5] [--data DIR]``; OPUS from
``--opus`` (default /work/opus_venv/bin/dsd); its settings are those of its README scaled to
the box: ``-b 8`` (each of ``--opus-batches`` a row) ``--zdim 12 --lr 4e-5 --beta-control
0.5 --lamb 0.5 --bfactor 4 --templateres 128`` (its smallest) ``--downfrac 1 --ctfalpha 0
--ctfbeta 1 --valfrac 0.1``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "hetero"))

import hetero_end_maps  # noqa: E402
from results import machine_load, run_measured, update_section  # noqa: E402

ROOT = Path(__file__).parents[1]
BAR = 0.9
SETS = {"composition": dict(classes=3), "hinge": dict(hinge_max_deg=30.0),
        "junk": dict(junk_fraction=0.3)}
INDEPENDENT = {"independent_hinge": "hinge", "independent_classes": "classes"}
OPUS_SETTINGS = ["--zdim", "12", "--lr", "4e-5", "--beta-control", "0.5",
                 "--lamb", "0.5", "--bfactor", "4", "--templateres", "128", "--downfrac", "1",
                 "--ctfalpha", "0", "--ctfbeta", "1", "--valfrac", "0.1", "--checkpoint", "1",
                 "--num-workers", "0"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}


def simulate_set(part: str, folder: Path, n: int, box: int, noise: float = 5.0) -> Path:
    """The set's particles.star of subtomograms (made once); a tilts.json for OPUS's CSVs."""
    star = folder / "particles.star"
    if part == "tiltseries":
        return simulate_tiltseries(folder, n, box, noise)
    if star.exists():
        return star
    shutil.rmtree(folder, ignore_errors=True)
    if part in INDEPENDENT:
        from independent_sim import IndependentConfig, simulate

        simulate(folder, IndependentConfig(kind=INDEPENDENT[part], n=n, box_px=box,
                                           pixel_size_A=4.0, snr=0.3, seed=1))
        # its wedge ±60° about Y with no dose weighting: the closest tilt scheme
        (folder / "tilts.json").write_text(json.dumps(dict(
            tilt_range_deg=60.0, tilt_step_deg=3.0, dose_per_tilt=0.0, order="sequential")))
    else:
        from subtomo.simulate.subtomograms import simulate_subtomograms

        simulate_subtomograms(folder, set_config(part, n, box, noise), progress=False)
        shutil.copy(folder / "simulation.json", folder / "tilts.json")
    return star


def set_config(part: str, n: int, box: int, noise: float = 5.0):
    from subtomo.simulate.subtomograms import SimulationConfig

    return SimulationConfig(n=n, box_px=box, pixel_size_A=4.0, n_atoms=4000, noise_sigma=noise,
                            angle_error_deg=3.0, shift_error_px=0.5, seed=5, **SETS[part])


def ceiling(part: str, folder: Path, n: int, box: int, noise: float) -> str:
    """What the data allow a matcher (``bench_hetero.matched_states``: template matching
    against the true maps through the training's forward model) at the given and at the true
    poses, once (``ceiling.json``): the hinge's |Spearman ρ|, the classes' KMeans-free ARI."""
    path = folder / "ceiling.json"
    if not path.exists():
        from bench_hetero import hinge_ceiling, matched_states
        from sklearn.metrics import adjusted_rand_score

        from subtomo.io.star import read_particles

        poses = {"given": read_particles(folder / "particles.star"),
                 "true": read_particles(folder / "truth.star")}
        if part == "hinge":
            found = hinge_ceiling(set_config("hinge", n, box, noise), folder / "truth.star",
                                  poses)
        else:
            maps = torch.stack(hetero_end_maps.truth_maps(part, folder))
            classes = truth(part, folder)
            pixel_A = set_config(part, n, box, noise).pixel_size_A
            found = {label: adjusted_rand_score(classes[:400], matched_states(
                maps, pixel_A, ps, min(400, len(classes)))) for label, ps in poses.items()}
        path.write_text(json.dumps(found))
    found = json.loads(path.read_text())
    what = ("the hinge angle", "maps (0, 5, …, 30°)", "|Spearman ρ|") if part == "hinge" else (
        "the class", "class maps", "ARI")
    return (f"- ceiling: {what[0]} of each particle by template matching against the true "
            f"{what[1]} through our training's forward model, first 400 particles: "
            f"{what[2]} {found['given']:.3f} at the given poses (the tools' input, 3° rms "
            f"off), {found['true']:.3f} at the true poses")


TOMOGRAMS = 5


def simulate_tiltseries(folder: Path, n: int, box: int, noise: float = 40.0) -> Path:
    """RELION 5 project of ``n`` particles in 3 classes (noise σ ``noise`` per tilt-image
    pixel) and its subtomograms (extract/)."""
    star = folder / "extract" / "particles.star"
    if star.exists():
        return star
    if not (folder / "optimisation_set.star").exists():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "subtomo", "simulate", "tiltseries", "--o",
                        str(folder), "--tomograms", str(TOMOGRAMS), "--n",
                        str(-(-n // TOMOGRAMS)), "--size", "384", "384", "--thickness", "96",
                        "--angpix", "4", "--box", str(box), "--pseudo-atoms", "4000",
                        "--classes", "3", "--tilt-step", "6", "--noise", f"{noise:g}",
                        "--seed", "5"],
                       env=env(), check=True, capture_output=True)
    shutil.rmtree(folder / "extract", ignore_errors=True)
    subprocess.run([sys.executable, "-m", "subtomo", "extract", "--i",
                    str(folder / "optimisation_set.star"), "--o", str(folder / "extract"),
                    "--b", str(box)], env=env(), check=True, capture_output=True)
    return star


def truth(part: str, folder: Path) -> np.ndarray:
    if part in INDEPENDENT:
        return np.load(folder / "truth.npz")["variable"]
    from subtomo.io.star import read_particles

    if part == "tiltseries":
        given = read_particles(folder / "extract" / "particles.star").particles
        true = read_particles(folder / "truth" / "particles.star").particles
        lookup = true.set_index("rlnTomoParticleName")["rlnClassNumber"]
        return given["rlnTomoParticleName"].map(lookup).to_numpy()

    df = read_particles(folder / "truth.star").particles
    column = {"composition": "rlnClassNumber", "hinge": "rlnSubtomoHingeDeg",
              "junk": "rlnSubtomoJunk"}[part]
    return df[column].to_numpy()


def score(part: str, z: np.ndarray, target: np.ndarray) -> tuple[float, str]:
    """(score against the bar, text)."""
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    if part in ("hinge", "independent_hinge"):
        rho = abs(spearmanr(PCA(1).fit_transform(z)[:, 0], target).statistic)
        return rho, f"{rho:.3f}"
    if part == "junk":
        labels = KMeans(8, n_init=10, random_state=0).fit_predict(z)
        junk = target > 0
        called = np.array([junk[labels == k].mean() > 0.5 if np.any(labels == k) else False
                           for k in range(8)])
        removed, kept = called[labels][junk].mean(), (~called[labels])[~junk].mean()
        return min(removed, kept), f"{100 * removed:.0f} % / {100 * kept:.0f} %"
    ari = adjusted_rand_score(target, KMeans(3, n_init=10, random_state=0).fit_predict(z))
    return ari, f"{ari:.3f}"


class Tool:
    """One tool's training folder; ``epoch_argv(k)`` runs epoch k (0-based) and leaves its
    latents for ``latents(k)``."""

    name = ""

    def __init__(self, folder: Path, star: Path, box: int):
        self.dir, self.star, self.box = folder, star, box
        self.dir.mkdir(parents=True, exist_ok=True)

    def decode(self, k: int, z: np.ndarray) -> torch.Tensor:
        """Maps (m, d, d, d) of epoch k's decoder at latent points z (m, zdim)."""
        raise NotImplementedError

    def trained(self, k: int) -> bool:
        """Whether epoch k trained at all (a peer may finish an epoch without a batch)."""
        return True

    def _eval_dir(self, k: int, z: np.ndarray) -> Path:
        """A fresh folder for a peer's eval_vol with ``z.txt`` in it."""
        out = self.dir / f"eval.{k}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        np.savetxt(out / "z.txt", z)
        return out

    def _maps(self, out: Path, pattern: str) -> torch.Tensor:
        return torch.stack([hetero_end_maps.read_map(f) for f in sorted(out.glob(pattern))])

    def record(self) -> dict:
        path = self.dir / "epochs.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def run(self, epochs: int) -> dict:
        done = self.record()
        for k in range(epochs):
            if str(k) in done and self.has_latents(k):
                continue
            # in its folder: OPUS writes its intermediate maps (tmpcpu.mrc) to the cwd
            proc, wall, cpu, peak = run_measured(self.epoch_argv(k), env=env(), cwd=self.dir,
                                                 capture_output=True, text=True)
            (self.dir / f"log.{k}.txt").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0 or not self.has_latents(k) or not self.trained(k):
                raise RuntimeError(f"{self.name} epoch {k} failed: see {self.dir}/log.{k}.txt")
            done[str(k)] = dict(wall_s=wall, cpu_s=cpu, peak_mib=peak)
            (self.dir / "epochs.json").write_text(json.dumps(done, indent=1))
            self.prune(k)
        return done

    def prune(self, k: int) -> None:
        """Drop what epoch ``k`` made redundant (checkpoints a resume and the scores no longer
        need)."""


class Ours(Tool):
    name = "ours (subtomo hetero)"

    def epoch_argv(self, k: int) -> list[str]:
        argv = [sys.executable, "-m", "subtomo", "hetero", "train", str(self.star), "--o",
                str(self.dir / "run"), "-n", str(k + 1), "--j", "2", "--ctf"]
        return argv + (["--continue", str(self.dir / "run")] if k else [])

    def has_latents(self, k: int) -> bool:
        return (self.dir / "run" / f"z.{k}.npy").exists()

    def latents(self, k: int) -> np.ndarray:
        return np.load(self.dir / "run" / f"z.{k}.npy")

    def decode(self, k: int, z: np.ndarray) -> torch.Tensor:
        from subtomo.hetero.volumes import load_model, volumes_at

        return volumes_at(load_model(self.dir / "run", k), z)


class Opus(Tool):
    name = "OPUS-ET"
    batch = 8  # OPUS's -b (its README's 8); a smaller one for small sets, see main

    def __init__(self, folder: Path, star: Path, box: int, batch: int = 8):
        super().__init__(folder, star, box)
        self.batch = batch
        if batch != 8:
            self.name = f"OPUS-ET -b {batch}"
    dsd = "/work/opus_venv/bin/dsd"

    def prune(self, k: int) -> None:
        """OPUS's checkpoints hold its weights and optimiser state, 0.7 GB each at
        --templateres 128: keep the latest (resume with --load latest, end maps)."""
        for path in (self.dir / "run").glob("weights.*.pkl"):
            if int(path.name.split(".")[1]) < k:
                path.unlink()

    def trained(self, k: int) -> bool:
        """OPUS logs ``Epoch: k+1 Average training gen_loss = 0.0`` for an epoch without a
        batch (seen with -b 2: its epoch loop ran no iteration)."""
        log = (self.dir / "run" / "run.log").read_text().splitlines()
        line = next((x for x in reversed(log) if f"Epoch: {k + 1} Average training" in x), "")
        return "gen_loss = 0.0," not in line

    def tilts(self) -> dict:
        """The tilt scheme (OPUS's --tilt-range/--tilt-step): tilts.json beside subtomograms
        simulated as such, the project's simulation.json for ones cut from tilt series."""
        path = self.star.parent / "tilts.json"
        return json.loads((path if path.exists() else self.star.parents[1] /
                           "simulation.json").read_text())

    def prepare(self) -> None:
        """``subtomo poses export --format opus`` (per-tilt CSVs from the tilt scheme, or from
        the tilt series for subtomograms cut from them) and a spherical mask (radius 0.4 box)."""
        if (self.dir / "poses.star").exists():
            return
        from subtomo import interop
        from subtomo.io.mrc import write_mrc

        opt = self.star.parent / "optimisation_set.star"
        if (self.star.parent / "tilts.json").exists() or not opt.exists():
            interop.export_poses(self.star, self.dir / "poses.pkl", box_px=self.box,
                                 fmt="opus", tilts=self.star.parent / "tilts.json")
        else:
            subprocess.run([sys.executable, "-m", "subtomo", "poses", "export", "--i", str(opt),
                            "-D", str(self.box), "--format", "opus", "-o",
                            str(self.dir / "poses.pkl")], env=env(), check=True,
                           capture_output=True)
        g = torch.arange(self.box) - self.box // 2
        r = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2).sqrt()
        write_mrc(self.dir / "mask.mrc", (r < 0.4 * self.box).float(), 4.0)

    def epoch_argv(self, k: int) -> list[str]:
        self.prepare()
        tilts = self.tilts()
        argv = [self.dsd, "train_tomo", str(self.dir / "poses.star"), "--poses",
                str(self.dir / "poses.pkl"), "-n", str(k + 1), "-o", str(self.dir / "run"),
                "-r", str(self.dir / "mask.mrc"), "--split", str(self.dir / "split.pkl"),
                "--angpix", "4", "--datadir", str(self.dir), "--warp",
                "--tilt-range", str(tilts["tilt_range_deg"]),
                "--tilt-step", str(tilts["tilt_step_deg"]), *OPUS_SETTINGS, "-b",
                str(self.batch)]
        return argv + (["--load", "latest"] if k else [])

    def has_latents(self, k: int) -> bool:
        return (self.dir / "run" / f"z.{k}.pkl").exists()

    def latents(self, k: int) -> np.ndarray:
        return torch.load(self.dir / "run" / f"z.{k}.pkl", weights_only=False)["mu"].numpy()

    def decode(self, k: int, z: np.ndarray) -> torch.Tensor:
        """``dsd eval_vol`` (its output: 0.85 of the box, cropped about the centre)."""
        out = self._eval_dir(k, z)
        subprocess.run([self.dsd, "eval_vol", "--load", str(self.dir / "run" /
                        f"weights.{k}.pkl"), "-c", str(self.dir / "run" / "config.pkl"),
                        "--zfile", str(out / "z.txt"), "-o", str(out), "--Apix", "4"],
                       cwd=out, env=env(), check=True, capture_output=True)
        return self._maps(out, "reference*.mrc")

    def coverage(self, n: int) -> str:
        """Share of the particles OPUS's sampler encodes per epoch: per pose bin (of its 48)
        whole batches only, the rest never (``num_samples`` of train + validation)."""
        log = self.dir / "log.0.txt"
        if not log.exists():
            return ""
        counts = [int(line.split()[-1]) for line in log.read_text().splitlines()
                  if line.startswith("num_samples:")]
        return f" ({100 * sum(counts[-2:]) / n:.0f} % of the particles in its batches)"


class CryoDRGN(Tool):
    name = "cryoDRGN-ET"
    exe = "/work/cdrgn_venv/bin/cryodrgn"
    NTILTS = 10

    def prepare(self) -> list[str]:
        """``subtomo export cryodrgn`` of the tilt series (once); its dose and angle steps."""
        project = self.star.parents[1]
        export = self.dir / "export"
        if not (export / "ctf.pkl").exists():
            shutil.rmtree(export, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "subtomo", "export", "cryodrgn", "--i",
                            str(project / "optimisation_set.star"), "--o", str(export), "--b",
                            str(self.box)], env=env(), check=True, capture_output=True)
        settings = json.loads((project / "simulation.json").read_text())
        return ["--dose-per-tilt", str(settings["dose_per_tilt"]), "--angle-per-tilt",
                str(settings["tilt_step_deg"])]

    def epoch_argv(self, k: int) -> list[str]:
        steps = self.prepare()
        export = self.dir / "export"
        argv = [self.exe, "train_vae", str(export / "particles.star"), "--poses",
                str(export / "poses.pkl"), "--ctf", str(export / "ctf.pkl"), "--encode-mode",
                "tilt", "--ntilts", str(self.NTILTS), *steps, "--zdim", "12", "-n",
                str(k + 1), "--beta", "0.025", "--no-analysis", "--max-threads", "2", "-o",
                str(self.dir / "run")]
        return argv + (["--load", "latest"] if k else [])

    def has_latents(self, k: int) -> bool:  # cryoDRGN counts epochs from 1
        return (self.dir / "run" / f"z.{k + 1}.pkl").exists()

    def latents(self, k: int) -> np.ndarray:
        import pickle

        with open(self.dir / "run" / f"z.{k + 1}.pkl", "rb") as f:
            return np.asarray(pickle.load(f))

    def decode(self, k: int, z: np.ndarray) -> torch.Tensor:
        out = self._eval_dir(k, z)
        subprocess.run([self.exe, "eval_vol", str(self.dir / "run" / f"weights.{k + 1}.pkl"),
                        "-c", str(self.dir / "run" / "config.yaml"), "--zfile",
                        str(out / "z.txt"), "-o", str(out), "--Apix", "4"], env=env(),
                       check=True, capture_output=True)
        return self._maps(out, "vol_*.mrc")


def table_row(part: str, tool: Tool, epochs: int, target: np.ndarray,
              truths: list[torch.Tensor] | None) -> str:
    record = tool.record()
    done = [k for k in range(epochs) if str(k) in record and tool.has_latents(k)]
    if not done:
        return f"| {tool.name} | not run | | | | | |"
    ends = "—"
    if truths is not None:
        points, labels = hetero_end_maps.end_points(part, tool.latents(done[-1]), target)
        ends = hetero_end_maps.scores(tool.decode(done[-1], points), truths, labels)
    scores = [score(part, tool.latents(k), target) for k in done]
    wall = [record[str(k)]["wall_s"] for k in done]
    cpu = [record[str(k)]["cpu_s"] for k in done]
    peak = max(record[str(k)]["peak_mib"] for k in done)
    reached = next((i for i, (s, _) in enumerate(scores) if s >= BAR), None)
    to_bar = ("not reached" if reached is None else
              f"epoch {done[reached] + 1}: {sum(wall[:reached + 1]):.0f} s wall / "
              f"{sum(cpu[:reached + 1]):.0f} s CPU")
    name = tool.name + (tool.coverage(len(target)) if isinstance(tool, Opus) else "")
    return (f"| {name} | {', '.join(t for _, t in scores)} | {np.mean(wall):.0f} / "
            f"{np.mean(cpu):.0f} | {peak:.0f} | {to_bar} | {len(done)} | {ends} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="composition")
    parser.add_argument("--tools", default="ours,opus,cryodrgn")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of ours")
    parser.add_argument("--opus-epochs", type=int, default=2)
    parser.add_argument("--opus", default=Opus.dsd, help="OPUS-ET's dsd")
    parser.add_argument("--opus-batches", default="8",
                        help="OPUS's -b, one row each: 8 (its README's); 2 lets its per-pose-bin "
                        "batches cover a small set")
    parser.add_argument("--noise", type=float, default=5.0,
                        help="noise σ per voxel of the subtomogram sets (a second SNR: 10)")
    parser.add_argument("--tilt-noise", type=float, default=40.0,
                        help="noise σ per tilt-image pixel of the tiltseries set (a second "
                        "SNR: 80)")
    parser.add_argument("--data", default=str(ROOT / "bench" / ".data" / "anchors"))
    parser.add_argument("--score-only", action="store_true",
                        help="write the section from the finished epochs, train nothing")
    args = parser.parse_args()
    Opus.dsd = args.opus
    tools = args.tools.split(",")
    for part in args.part.split(","):
        noise = args.tilt_noise if part == "tiltseries" else args.noise
        other_snr = (noise != 5.0 and part in SETS) or (part == "tiltseries" and noise != 40.0)
        folder = Path(args.data).resolve() / (part + (f"_noise{noise:g}" if other_snr
                                                      else ""))
        star = simulate_set(part, folder, args.n, args.box, noise)
        target = truth(part, folder)
        runs = [("ours", Ours(folder / "ours", star, args.box), args.epochs),
                *[("opus", Opus(folder / ("opus" if b == 8 else f"opus_b{b}"), star,
                                args.box, b), args.opus_epochs)
                  for b in map(int, args.opus_batches.split(","))]]
        if part == "tiltseries":
            runs.append(("cryodrgn", CryoDRGN(folder / "cryodrgn", star, args.box),
                         args.epochs))
        lines = ["| tool | score per epoch | wall / CPU s per epoch | peak RSS MiB | "
                 f"time to {BAR} | epochs | end maps: FSC / r |",
                 "|---|---|---|---|---|---|---|"]
        truths = (hetero_end_maps.truth_maps(part, folder, set_config(
            "hinge", args.n, args.box, args.noise)) if part in ("composition", "hinge",
                                                                "tiltseries") else None)
        for key, tool, epochs in runs:
            if not args.score_only and key in tools:
                tool.run(epochs)
            lines.append(table_row(part, tool, epochs, target, truths))
        if part != "tiltseries":
            lines.append("| cryoDRGN-ET | needs tilt images: see the tiltseries part | | | | | |")
        what = {"composition": "KMeans 3 ARI", "independent_classes": "KMeans 3 ARI",
                "hinge": "|Spearman ρ(PC1, hinge)|", "independent_hinge":
                "|Spearman ρ(PC1, hinge)|", "junk": "junk removed / good kept (oracle "
                "labelling of KMeans 8 clusters)", "tiltseries": "KMeans 3 ARI"}[part]
        snr = (f", noise σ {noise:g}" + (" per tilt pixel" if part == "tiltseries" else "")
               if other_snr else "")
        update_section(f"Heterogeneity side by side: {part}{snr}", "\n".join([
            f"- set: {part}, {args.n} particles, {args.box}³ at 4 Å/px"
            f"{snr or (', noise σ 5' if part in SETS else ', noise σ 40 per tilt pixel')}; "
            f"score: {what}; "
            "bar 0.9", "", *lines, "",
            "- each epoch is one process (times include its start); OPUS-ET: bench/opus "
            "(patched for CPU), `dsd train_tomo --warp` on `subtomo poses export --format opus`"
            f" with -b 8 (or as the row says) {' '.join(OPUS_SETTINGS)}; ours: `subtomo hetero "
            "train --ctf` defaults; "
            f"cryoDRGN-ET: `train_vae --encode-mode tilt --ntilts {CryoDRGN.NTILTS} --zdim 12 "
            "--beta 0.025` (its tutorial's), other options default",
            "- OPUS-ET's README trains 40 epochs at lr 4e-5 on thousands of subtomograms with "
            "GPUs; its sampler uses whole batches of 8 within each of 48 pose bins only, so on "
            "a few hundred particles part of the set is never seen; its CPU cost (~9 min CPU "
            "per epoch of 500 32³ particles, 61 M parameters at its smallest --templateres "
            "128) limits it here to --opus-epochs: its scores are an early model's",
            "- end maps (last epoch, `bench/hetero_end_maps.py`): each tool's decoder at the "
            "ends of its latent path (KMeans-3 centres; PC1's 5th / 95th percentiles for the "
            "hinge) against the true state: mean FSC to Nyquist in a soft sphere / correlation "
            "of the maps' differences from their mean with the true states' (1: the decoded "
            "states differ as the true ones do, 0: not at all)",
            *([ceiling(part, folder, args.n, args.box, noise)]
              if part in ("hinge", "composition") else []),
            f"- machine: {machine_load()}"]))


if __name__ == "__main__":
    main()
