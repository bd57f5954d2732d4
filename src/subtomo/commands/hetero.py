"""``subtomo hetero train | analyze | eval-vol | select``: OPUS-TOMO's ``train_tomo``,
``analyze``, ``eval_vol`` and ``parse_pose`` on our files (option names kept)."""

from __future__ import annotations

import argparse
import sys

# what hetero train writes into --o (a split file given with --split is never written over)
TRAIN_OUTPUTS = ("consensus.mrc", "mask.mrc", "body*.mrc", "split.json", "config.json",
                 "log.tsv", "weights.*.pt", "z.*.npy")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


def _region(text: str) -> tuple[int, float, float]:
    try:
        pc, low, high = text.split(":")
        return int(pc), float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PC:LOW:HIGH, e.g. 1:-2:0.5, got {text!r}"
                                         ) from None


def _series_arguments(t: argparse.ArgumentParser) -> None:
    """The options of ``hetero train`` for 2D-stack sets."""
    t.add_argument("--tomograms", default=None, help="tomograms.star of a 2D-stack set")
    t.add_argument("--tilt-loss", "--tilt_loss", choices=("slices", "subtomograms"),
                   default="slices", help="2D-stack sets: score the decoded map on each "
                   "visible tilt's CTF-weighted central slice (slices) or on the "
                   "pseudo-subtomograms (subtomograms)")


def _pose_arguments(t: argparse.ArgumentParser) -> None:
    """``--estpose`` and how often it searches (:mod:`subtomo.hetero.poses`)."""
    t.add_argument("--estpose", action="store_true", help="refine each particle's pose by a "
                   "local search against the decoded map of its latent group (where the "
                   "decoded maps are noisy it can fit the noise and move poses away: off by "
                   "default)")
    t.add_argument("--pose-every", "--pose_every", type=int, default=3,
                   help="with --estpose: search the poses before every N-th epoch (from N)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("hetero", help="heterogeneity: VAE on subtomograms, latent space",
                            description=__doc__)
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="STEP")
    t = kinds.add_parser("train", help="train the VAE (OPUS-TOMO train_tomo)",
                         description="Train the variational autoencoder of subtomo.hetero.model;"
                         " checkpoints weights.N.pt, latents z.N.npy, log.tsv, config.json in "
                         "--o. Run under `torchrun --nproc_per_node N -m subtomo hetero train "
                         "...` for data parallelism (-b is per process).")
    t.add_argument("star", nargs="?", default=None, help="particle STAR file (or --i)")
    t.add_argument("--i", "-i", "--input", dest="input", default=None,
                   help="particle STAR file (any flavour)")
    t.add_argument("--o", "-o", dest="output", default=None, help="output folder")
    t.add_argument("--poses", default=None, help="pose pickle (subtomo poses export)")
    t.add_argument("--ctf", action="store_true", help="use the 3D CTF volumes (rlnCtfImage)")
    _series_arguments(t)
    t.add_argument("--ref", default=None, help="consensus map (default: reconstructed)")
    t.add_argument("-r", "--mask", default=None, help="solvent mask of the consensus map")
    t.add_argument("--masks", nargs="+", default=None, help="masks of rigid bodies (.mrc)")
    t.add_argument("--zdim", type=int, default=12, help="composition latent dimension")
    t.add_argument("--zaffinedim", type=int, default=0,
                   help="dynamics latent dimension for --masks (default 4 with --masks)")
    t.add_argument("-n", "--num-epochs", dest="epochs", type=int, default=20, help="epochs")
    t.add_argument("-b", "--batch-size", dest="batch", type=int, default=8,
                   help="particles per batch and process")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--beta-control", "--beta_control", dest="beta_control", type=float,
                   default=1.0, help="weight of the KL term")
    t.add_argument("--beta", default="cos", help="'cos' (cyclical annealing) or a number")
    t.add_argument("--beta-cycle", dest="beta_cycle", type=int, default=4,
                   help="epochs per annealing cycle")
    t.add_argument("--lamb", type=float, default=0.05,
                   help="weight of the structural disentanglement prior")
    t.add_argument("--downfrac", type=float, default=0.75, help="encoder input box / box")
    t.add_argument("--templateres", type=int, default=None,
                   help="decoder output box, a multiple of 16 (default ⌈D·downfrac/0.75⌉₁₆)")
    t.add_argument("--valfrac", type=float, default=0.1, help="validation fraction")
    t.add_argument("--split", default=None, help="train/validation split file (JSON)")
    t.add_argument("--bfactor", type=float, default=0.0, help="B-factor on the decoded maps")
    t.add_argument("--ctfalpha", type=float, default=1.0,
                   help="encoder input CTF weighting sign(C)|C|^alpha (1: matched filter, "
                   "0: phase flip)")
    t.add_argument("--ctfbeta", type=float, default=1.0, help="model CTF sign(C)|C|^beta")
    _pose_arguments(t)
    t.add_argument("--ema", type=float, default=2.0, help="latents and saved model from a "
                   "moving average of the weights over about this many epochs (0: the last)")
    t.add_argument("--offset-range", "--offset_range", type=float, default=2.0,
                   help="centre each particle on the consensus within this many px (0: no)")
    t.add_argument("--angpix", "--Apix", type=float, default=None, help="pixel size, Å")
    t.add_argument("--datadir", default=None, help="folder the STAR's image names are in")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--j", type=int, default=None, help="CPU threads per process")
    t.add_argument("--continue", dest="continue_dir", default=None,
                   help="resume the run in this folder after its last epoch (-n: total)")
    t.add_argument("--load", default=None, help="resume from this weights.N.pt")
    t.add_argument("--latents", default=None, help="z.N.npy beside --load (checked)")
    t.set_defaults(run=_train, option_defaults=dict(vars(t.parse_args([]))))

    a = kinds.add_parser("analyze", help="PCA, KMeans, UMAP and plots of one epoch")
    a.add_argument("dir", help="training folder")
    a.add_argument("epoch", type=int, help="epoch (0-based)")
    a.add_argument("pcs_pos", nargs="?", type=int, default=None, help=argparse.SUPPRESS)
    a.add_argument("ksample_pos", nargs="?", type=int, default=None, help=argparse.SUPPRESS)
    a.add_argument("--pcs", type=int, default=4, help="principal components to sample")
    a.add_argument("--ksample", type=int, default=16, help="KMeans clusters")
    a.add_argument("--skip-umap", "--skip_umap", dest="skip_umap", action="store_true",
                   help="reuse umap.npy instead of computing UMAP")
    a.set_defaults(run=_analyze)

    e = kinds.add_parser("eval-vol", aliases=["eval_vol"], help="maps at KMeans centres or "
                         "along a PC: DIR/analyze.N/{kmeansK,pcP}/referenceI.mrc")
    e.add_argument("dir", help="training folder")
    e.add_argument("epoch", type=int, help="epoch (0-based)")
    e.add_argument("what", choices=("kmeans", "pc"), help="kmeans or pc")
    e.add_argument("number", type=int, help="K (kmeans) or P (pc)")
    e.add_argument("apix_pos", nargs="?", type=float, default=None, help=argparse.SUPPRESS)
    e.add_argument("--apix", type=float, default=None, help="pixel size of the maps, Å")
    e.add_argument("--flip", action="store_true", help="invert the hand")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    e.set_defaults(run=_eval_vol)

    s = kinds.add_parser("select", aliases=["parse_pose"], help="STAR files per cluster, or "
                         "the particles of some clusters / a latent region")
    s.add_argument("dir", help="training folder")
    s.add_argument("epoch", type=int, help="epoch (0-based)")
    s.add_argument("--i", "-i", dest="input", default=None, help="particle STAR file "
                   "(default: the training's)")
    s.add_argument("--kmeans", type=int, default=None, help="K of the analysed KMeans")
    s.add_argument("--clusters", type=_ints, default=None, help="clusters to keep, e.g. 0,3")
    s.add_argument("--region", type=_region, action="append", default=None,
                   metavar="PC:LOW:HIGH", help="keep PC values within [LOW, HIGH] "
                   "(repeatable: all must hold)")
    s.add_argument("--min-occupancy", dest="min_occupancy", type=float, default=None,
                   help="keep clusters whose centre map holds ≥ this share of the consensus "
                   "density of the fullest cluster")
    s.add_argument("--min-cc", dest="min_cc", type=float, default=None,
                   help="keep clusters whose centre map correlates ≥ this with the consensus")
    s.add_argument("--o", "-o", dest="output", default=None, help="output STAR file")
    s.set_defaults(run=_select)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from subtomo.errors import InputError
    from subtomo.hetero import checkpoints as ck
    from subtomo.hetero import inputs as hi
    from subtomo.hetero import train as tr
    from subtomo.io.files import check_outputs
    from subtomo.parallel.distributed import init

    if args.j:
        torch.set_num_threads(args.j)
    star = args.input or args.star
    ctx = init(args.device)

    def echo(row: dict) -> None:
        if "pose_s" in row:
            print(f"pose search: {row['pose_particles']} particles, {row['pose_rotations']} "
                  f"rotations each, {row['pose_maps']} decoded maps, {row['pose_s']:.1f} s",
                  flush=True)
        print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, validation "
              f"{row['val_rec']:.4f}, β {row['beta']:.2f}, {row['wall_s']:.1f} s "
              f"(CPU {row['cpu_s']:.1f} s)", flush=True)

    resume_dir = args.continue_dir
    if args.load:
        from pathlib import Path

        resume_dir = str(Path(args.load).parent)
    config = None
    epochs = None if args.epochs == args.option_defaults["epochs"] else args.epochs  # -n given
    if resume_dir:
        config = _resumable_config(args, resume_dir)
        if not args.load and not ck.epochs_done(resume_dir):
            # killed before its first epoch: nothing to resume, the run starts again
            if config is not None:
                star = star or config["particles"]
            args.output = resume_dir
            resume_dir = None
    if resume_dir:
        star = star or config["particles"]
        inputs = hi.read_inputs(star, poses=config.get("poses"), pixel_size_A=config.get("angpix"),
                                datadir=args.datadir, tomograms=config.get("tomograms"))
        inputs = ck.saved_inputs(resume_dir, inputs.particles, inputs.matrices,
                                 inputs.shifts_A, inputs.sources)
        if args.latents:
            _check_latents(args.latents, len(inputs.particles))
        result = tr.resume(inputs, resume_dir, epochs=epochs, checkpoint=args.load,
                           out_dir=args.output, ctx=ctx, device=ctx.device, echo=echo)
    else:
        if star is None or args.output is None:
            raise InputError(None, "give the particles (--i) and an output folder (--o)",
                             field="--i/--o")
        options = ck.options_from_config(config) if config is not None else hi.TrainOptions(
            zdim=args.zdim, zaffinedim=args.zaffinedim, epochs=args.epochs,
            batch_size=args.batch, lr=args.lr, beta_control=args.beta_control, beta=args.beta,
            beta_cycle=args.beta_cycle, lamb=args.lamb, downfrac=args.downfrac,
            templateres=args.templateres, valfrac=args.valfrac, bfactor=args.bfactor,
            ctf=args.ctf, ctfalpha=args.ctfalpha, ctfbeta=args.ctfbeta, estpose=args.estpose,
            ema=args.ema, offset_range_px=args.offset_range, seed=args.seed,
            tilt_loss=args.tilt_loss, pose_every=args.pose_every)
        saved = config or {}
        if config is not None and epochs is not None:
            options = replace(options, epochs=epochs)
        options.check()
        inputs = hi.read_inputs(star, poses=saved.get("poses", args.poses),
                                ref=saved.get("ref", args.ref), mask=saved.get("mask", args.mask),
                                masks=saved.get("masks", args.masks) or None,
                                pixel_size_A=saved.get("angpix", args.angpix), datadir=args.datadir,
                                tomograms=saved.get("tomograms", args.tomograms))
        if inputs.particles.series is not None:  # a particle series carries its CTFs
            options = replace(options, ctf=True)
        check_outputs([*inputs.particles.files(), saved.get("poses", args.poses),
                       saved.get("ref", args.ref), saved.get("mask", args.mask),
                       *(saved.get("masks", args.masks) or [])], args.output, TRAIN_OUTPUTS)
        inputs.sources["command"] = ["subtomo", *sys.argv[1:]]
        result = tr.train(inputs, args.output, options, ctx=ctx, device=ctx.device,
                          split_path=args.split, echo=echo)
    if ctx.main:
        last = result.history[-1] if result.history else None
        what = f"; validation {last['val_rec']:.4f}" if last else " (nothing left to do)"
        print(f"Trained {result.epochs} epochs{what}; latents z.{result.epochs - 1}.npy in "
              f"{result.out_dir}.")
    return 0


# options of ``hetero train`` (dest → TrainOptions field) that a continued run must keep
KEPT = {"zdim": "zdim", "zaffinedim": "zaffinedim", "batch": "batch_size", "lr": "lr",
        "beta_control": "beta_control", "beta": "beta", "beta_cycle": "beta_cycle",
        "lamb": "lamb", "downfrac": "downfrac", "templateres": "templateres",
        "valfrac": "valfrac", "bfactor": "bfactor", "ctf": "ctf", "ctfalpha": "ctfalpha",
        "ctfbeta": "ctfbeta", "estpose": "estpose", "pose_every": "pose_every", "ema": "ema",
        "offset_range": "offset_range_px", "seed": "seed", "tilt_loss": "tilt_loss"}


def _resumable_config(args: argparse.Namespace, run_dir: str) -> dict | None:
    """The configuration of the run to continue in ``run_dir`` (None: a run killed before it
    wrote one, which starts again from ``--i``); refuses options given now that differ from
    the run's."""
    from pathlib import Path

    from subtomo.errors import InputError
    from subtomo.hetero import checkpoints as ck

    folder = Path(run_dir)
    if not (folder / ck.CONFIG).is_file() and not ck.epochs_done(folder) and not args.load:
        if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
            raise InputError(folder, f"not a training folder (no {ck.CONFIG})",
                             field="--continue")
        if (args.input or args.star) is None:
            raise InputError(folder, "nothing to continue (no finished epoch); give the "
                             "particles (--i) to start the run", field="--continue")
        return None
    config = ck.read_config(folder)
    saved = config.get("options", {})
    for dest, key in KEPT.items():
        given = getattr(args, dest)
        if given != args.option_defaults.get(dest) and key in saved and given != saved[key]:
            raise InputError(folder / ck.CONFIG, f"the run was trained with {key} "
                             f"{saved[key]}, not {given}; continue it with the same options",
                             field="--" + dest)
    return config


def _check_latents(path: str, n: int) -> None:
    import numpy as np

    from subtomo.errors import InputError

    try:
        rows = len(np.load(path))
    except (OSError, ValueError):
        raise InputError(path, "not a latent file (.npy)", field="--latents") from None
    if rows != n:
        raise InputError(path, f"has {rows} rows; there are {n} particles", field="--latents")


def _analyze(args: argparse.Namespace) -> int:
    from subtomo.hetero.analysis import analyze

    pcs = args.pcs_pos if args.pcs_pos is not None else args.pcs
    k = args.ksample_pos if args.ksample_pos is not None else args.ksample
    result = analyze(args.dir, args.epoch, pcs=pcs, ksample=k, skip_umap=args.skip_umap)
    explained = ", ".join(f"{100 * v:.0f} %" for v in result.explained)
    print(f"PCA ({explained} of the variance), KMeans {k}"
          f"{', UMAP' if result.umap is not None else ''} → {result.out_dir}.")
    return 0


def _eval_vol(args: argparse.Namespace) -> int:
    from subtomo.hetero.volumes import eval_vol

    apix = args.apix if args.apix is not None else args.apix_pos
    paths = eval_vol(args.dir, args.epoch, args.what, args.number, pixel_size_A=apix,
                     flip=args.flip,
                     device=args.device)
    print(f"Wrote {len(paths)} maps reference0.mrc … reference{len(paths) - 1}.mrc in "
          f"{paths[0].parent}.")
    return 0


def _select(args: argparse.Namespace) -> int:
    from subtomo.hetero.select import select_particles

    written = select_particles(args.dir, args.epoch, star=args.input, kmeans=args.kmeans,
                               clusters=args.clusters, regions=args.region,
                               min_occupancy=args.min_occupancy, min_cc=args.min_cc,
                               output=args.output)
    for path, count in written.items():
        print(f"{count} particles → {path}")
    return 0
