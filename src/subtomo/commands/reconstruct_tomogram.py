"""``subtomo reconstruct-tomogram``: weighted back-projection of tilt series
(``relion_tomo_reconstruct_tomogram``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from subtomo.commands.options import add_tomo_inputs, tomo_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct-tomogram", help="tomograms by weighted back-projection at a binning",
        description="Fourier-cropped images, ramp or SIRT-like weighting (optional CTF phase "
        "flip or Wiener filter), back-projected with the RELION 5 geometry. Writes "
        "DIR/tomograms/rec_<name>.mrc and DIR/tomograms.star (rlnTomoReconstructedTomogram, "
        "rlnTomoTomogramBinning).")
    add_tomo_inputs(p, particles=False)
    p.add_argument("--o", "-o", "--output", dest="output", required=True, help="output folder")
    p.add_argument("--tomo_name", nargs="*", default=None, help="only these tilt series")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bin", type=float, default=8.0, help="binning (any ratio)")
    group.add_argument("--binned_angpix", type=float, default=None,
                       help="OR: voxel size of the tomogram, Å")
    p.add_argument("--w", type=int, default=None, help="width at bin 1 (default: rlnTomoSizeX)")
    p.add_argument("--h", type=int, default=None, help="height at bin 1 (rlnTomoSizeY)")
    p.add_argument("--d", type=int, default=None, help="thickness at bin 1 (rlnTomoSizeZ)")
    p.add_argument("--filter", choices=("ramp", "sirt", "none"), default="ramp",
                   help="weighting: ramp (WBP), SIRT-like or none")
    p.add_argument("--sirt_iterations", type=int, default=10, help="N of the SIRT-like filter")
    p.add_argument("--ctf", choices=("none", "flip", "wiener"), default="none",
                   help="CTF correction of each tilt at the tomogram centre")
    p.add_argument("--snr", "--SNR", dest="snr", type=float, default=10.0,
                   help="SNR of the Wiener filter")
    p.add_argument("--j", type=int, default=None, help="CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from subtomo.errors import InputError
    from subtomo.io.files import check_outputs
    from subtomo.io.mrc import write_mrc
    from subtomo.io.tomograms import TomogramSet, project_path, write_tomogram_set
    from subtomo.tomo.reconstruct_tomogram import reconstruct_tomogram

    if args.j:
        torch.set_num_threads(args.j)
    inputs = tomo_inputs(args, particles=False)
    tset = inputs.tomograms
    names = args.tomo_name or tset.names
    check_outputs(inputs.paths(), args.output, ["tomograms.star", *(
        f"tilt_series/{n}.star" for n in tset.names), *(f"tomograms/rec_{n}.mrc" for n in names)])
    for name in names:
        tset[name].check_images()
    out = Path(args.output)
    done = {}
    for name in names:
        ts = tset[name]
        binning = args.binned_angpix / ts.pixel_size_A if args.binned_angpix else args.bin
        size = tuple(v if v is not None else s for v, s in zip(
            (args.w, args.h, args.d), ts.tomo_size_px, strict=True))
        if min(size) < 1:
            raise InputError(None, "tomogram sizes must be positive", field="--w/--h/--d")
        volume, apix = reconstruct_tomogram(ts, binning=binning, size_px=size,
                                            weighting=args.filter,
                                            iterations=args.sirt_iterations, ctf=args.ctf,
                                            snr=args.snr, device=args.device)
        path = out / "tomograms" / f"rec_{name}.mrc"
        write_mrc(path, volume, apix)
        ts.globals.update({"rlnTomoReconstructedTomogram": project_path(path),
                           "rlnTomoTomogramBinning": binning,
                           "rlnTomoSizeX": size[0], "rlnTomoSizeY": size[1],
                           "rlnTomoSizeZ": size[2]})
        done[name] = ts
        print(f"{name}: {tuple(volume.shape[::-1])} voxels of {apix:.3g} Å → {path}")
    write_tomogram_set(TomogramSet({**tset.series, **done}), out / "tomograms.star")
    print(f"Reconstructed {len(done)} tomogram(s); {out / 'tomograms.star'}.")
    return 0
