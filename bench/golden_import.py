"""Golden outputs of ``import_tilt_series``: every outcome over thousands of source and option
combinations, before and after a change to the importers.

A restructuring of :mod:`subtomo.tomo.importing` must not change a result, a note or an error
message. ``record`` builds one set of input files (a stack with SerialEM mdoc, IMOD ``.xf``/
``.tlt``/``.xtilt`` with and without a ``tilt.com``, a ctfplotter ``.defocus``, AreTomo ``.aln``
files with and without a dark frame, a Warp XML with an unused tilt for stacks of every tilt or
of the used ones, ``.tlt`` and ``.order`` lists, a shuffled mdoc, a stack without a pixel size),
imports every subset of them with seeded random options, and stores per case either a SHA-256 of
the tilt table, globals and notes (``OK``) or the exact error line (``ERR``) in
``bench/.data/golden/import_<label>.json``. ``compare`` lists the cases that differ.

Run: ``.venv/bin/python bench/golden_import.py record --label before``, then after the change
``... record --label after`` and ``... compare before after`` (exit status 1 if any differs).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np

from subtomo.errors import InputError
from subtomo.geometry import tilt_imod
from subtomo.geometry.tilt import RelionParameters
from subtomo.io import aretomo, imod
from subtomo.tomo.importing import Optics, Sources, import_tilt_series

GOLDEN = Path(__file__).parent / ".data" / "golden"
APIX, IMAGE, THICK = 2.5, (64, 48), 40
ANGLES = np.arange(-60.0, 61.0, 6.0)
N = len(ANGLES)
OPTIONS = dict(pixel_size_A=[None, None, None, 2.5, 2.6], voltage_kv=[None, 200.0, 200.0],
               dose_per_tilt=[None, 3.0], order_scale=[1.0, 2.5],
               tomo_size_px=[None, None, None, (64, 48, 40), (64, 48, 0)],
               thickness_px=[None, 40, 40], tilt_axis_deg=[None, 85.0],
               defocus_um=[None, 3.0, 3.0], hand=[None, 1.0], defocus_frame=["raw", "aligned"])


def _rank() -> np.ndarray:
    """Dose-symmetric acquisition rank of each angle: 0, +6, −6, −12, +12, ..."""
    order, sign = [0.0], 1
    for step in range(1, N):
        k = (step + 1) // 2
        order.append(sign * k * 6.0 if step % 2 else -sign * k * 6.0)
        if step % 2 == 0:
            sign = -sign
    return np.array([order.index(a) for a in ANGLES])


def _stack(path: Path, n: int, voxel: float = APIX) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((n, IMAGE[1], IMAGE[0]), dtype=np.float32))
        mrc.voxel_size = voxel


def _mdoc(path: Path, order: list[int]) -> None:
    lines = [f"PixelSpacing = {APIX}", "Voltage = 300", f"ImageSize = {IMAGE[0]} {IMAGE[1]}",
             "", "[T =     Tilt axis angle = 85.0, binning = 1  spot = 8  camera = 0]", ""]
    rank = _rank()
    for z, i in enumerate(order):
        seconds = 60 * int(rank[i])
        lines += [f"[ZValue = {z}]", f"TiltAngle = {ANGLES[i] + 0.003:.5f}", "ExposureDose = 0",
                  f"PixelSpacing = {APIX}",
                  f"DateTime = 01-Mar-24  10:{seconds // 60:02d}:{seconds % 60:02d}", ""]
    path.write_text("\n".join(lines) + "\n")


def _warp_xml(path: Path) -> None:
    angles, nl = [-30.0, -15.0, 0.0, 15.0, 30.0], "\n"
    path.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<TiltSeries AreAnglesInverted="False">
<Angles>{nl.join(str(a) for a in angles)}</Angles>
<Dose>{nl.join(str(3 * abs(a) / 15) for a in angles)}</Dose>
<UseTilt>True{nl}False{nl}True{nl}True{nl}True</UseTilt>
<AxisAngle>{nl.join(["84.5"] * 5)}</AxisAngle>
<AxisOffsetX>{nl.join(["12.5", "0", "-7.5", "2.5", "25"])}</AxisOffsetX>
<AxisOffsetY>{nl.join(["-5", "0", "10", "0", "5"])}</AxisOffsetY>
<CTF><Param Name="PixelSize" Value="1.25" /><Param Name="Voltage" Value="300" />
<Param Name="Defocus" Value="2.5" /></CTF>
</TiltSeries>
""")
    path.with_suffix(".order").write_text("".join(f"{a:g} {i}\n" for i, a in enumerate(angles)))
    path.with_suffix(".tlt").write_text("".join(f"{a:g}\n" for a in angles))


def build_inputs(d: Path) -> dict[str, tuple[Path, dict[str, Path]]]:
    """Write the input files; returns, per stack, the files that may go with it."""
    (d / "bare").mkdir(parents=True)
    rng = np.random.default_rng(0)
    params = RelionParameters(rng.uniform(-1, 1, N), ANGLES + rng.uniform(-0.5, 0.5, N),
                              85 + rng.uniform(-1, 1, N), rng.uniform(-30, 30, N),
                              rng.uniform(-30, 30, N))
    _stack(d / "TS_01.mrcs", N)
    _stack(d / "nohdr.mrcs", N, 1.0)
    _mdoc(d / "TS_01.mrcs.mdoc", list(range(N)))
    _mdoc(d / "shuffled.mdoc", list(range(N))[::-1])
    al = tilt_imod.relion_to_imod(params, APIX, (*IMAGE, THICK), IMAGE)
    al.xf[3, 0, 0] *= 1.01  # a little magnification: a distortion note
    imod.write_imod_alignment(d / "TS_01", al)
    imod.write_imod_alignment(d / "bare" / "TS_01", al)
    (d / "tilt.com").write_text("$tilt -StandardInput\nXAXISTILT 0.3\nOFFSET 0.5\n"
                                "SHIFT 1.0 2.0\nTHICKNESS 38\nEXCLUDELIST 3\n")
    imod.write_defocus(d / "TS_01.defocus", al.tilt_deg, 30000 + 100 * ANGLES,
                       29000 + 100 * ANGLES, np.full(N, 40.0))
    params.xtilt[:] = 0.0
    aretomo.write_aln(d / "TS_01.aln", params, APIX, (*IMAGE, N))
    _stack(d / "TS_02.mrcs", N + 1)
    aretomo.write_aln(d / "TS_02.aln", params, APIX, (*IMAGE, N + 1),
                      np.delete(np.arange(N + 1), 7))
    (d / "TS_01.order").write_text("".join(f"{a:g} {r}\n" for a, r in zip(ANGLES, _rank(),
                                                                           strict=True)))
    _warp_xml(d / "TS_03.xml")
    _stack(d / "TS_03.mrcs", 5)
    _stack(d / "TS_04.mrcs", 4)
    _mdoc(d / "TS_03.mdoc", list(range(N)))
    f = {name: d / name for name in ("TS_01.mrcs.mdoc", "TS_01", "TS_01.aln", "TS_01.tlt",
                                     "TS_01.defocus", "TS_01.order", "tilt.com", "TS_03.xml",
                                     "TS_02.aln", "TS_03.order", "TS_03.tlt", "TS_03.mdoc",
                                     "shuffled.mdoc", "bare/TS_01")}
    return {
        "plain": (d / "TS_01.mrcs", {"mdoc": f["TS_01.mrcs.mdoc"], "imod": f["TS_01"],
                                     "aln": f["TS_01.aln"], "tlt": f["TS_01.tlt"],
                                     "defocus": f["TS_01.defocus"], "order": f["TS_01.order"],
                                     "tilt_com": f["tilt.com"], "warp_xml": f["TS_03.xml"]}),
        "dark": (d / "TS_02.mrcs", {"mdoc": f["TS_01.mrcs.mdoc"], "aln": f["TS_02.aln"],
                                    "tlt": f["TS_01.tlt"], "order": f["TS_01.order"],
                                    "defocus": f["TS_01.defocus"], "warp_xml": f["TS_03.xml"]}),
        "warp5": (d / "TS_03.mrcs", {"warp_xml": f["TS_03.xml"], "order": f["TS_03.order"],
                                     "tlt": f["TS_03.tlt"], "mdoc": f["TS_03.mdoc"],
                                     "aln": f["TS_01.aln"]}),
        "warp4": (d / "TS_04.mrcs", {"warp_xml": f["TS_03.xml"], "order": f["TS_03.order"],
                                     "tlt": f["TS_03.tlt"], "mdoc": f["TS_03.mdoc"]}),
        "shuffled": (d / "TS_01.mrcs", {"mdoc": f["shuffled.mdoc"], "tlt": f["TS_01.tlt"],
                                        "imod": f["TS_01"], "order": f["TS_01.order"]}),
        "nohdr": (d / "nohdr.mrcs", {"mdoc": f["TS_01.mrcs.mdoc"], "tlt": f["TS_01.tlt"],
                                     "warp_xml": f["TS_03.xml"], "imod": f["bare/TS_01"]}),
    }


def outcome(src: Sources, optics: Optics, root: Path) -> str:
    """``OK <sha256> <notes>`` or ``ERR <message>`` (paths relative to the input folder)."""
    try:
        imported = import_tilt_series(src, optics)
    except InputError as error:
        return "ERR " + str(error).replace(str(root), "<in>")
    ts = imported.tilt_series
    text = json.dumps([{k: repr(v) for k, v in ts.globals.items()},
                       ts.tilts.to_csv(float_format="%.17g"), imported.notes, ts.image_size])
    digest = hashlib.sha256(text.replace(str(root), "<in>").encode()).hexdigest()
    return f"OK {digest} " + " | ".join(imported.notes).replace(str(root), "<in>")


def record() -> dict[str, str]:
    """Every subset of each stack's files × seeded options (30 draws; 1 with > 1 alignment)."""
    rng = random.Random(0)
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (stack, files) in build_inputs(root).items():
            keys = sorted(files)
            for r in range(len(keys) + 1):
                for chosen in itertools.combinations(keys, r):
                    n_alignments = sum(c in ("imod", "aln", "warp_xml") for c in chosen)
                    for k in range(30 if n_alignments <= 1 else 1):
                        options = {o: rng.choice(v) for o, v in OPTIONS.items()}
                        src = Sources(name, stack, **{c: files[c] for c in chosen})
                        key = f"{name}|{','.join(chosen)}|{k}|{sorted(options.items())}"
                        results[key] = outcome(src, Optics(**options), root)
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--label", required=True)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "record":
        results = record()
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path = GOLDEN / f"import_{args.label}.json"
        path.write_text(json.dumps(results, indent=0, sort_keys=True))
        ok = sum(v.startswith("OK") for v in results.values())
        print(f"{len(results)} cases: {ok} imported, {len(results) - ok} refused → {path}")
        return 0
    before, after = (json.loads((GOLDEN / f"import_{label}.json").read_text())
                     for label in (args.before, args.after))
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    for key in differ[:20]:
        print(f"{key}\n  before: {before.get(key)}\n  after:  {after.get(key)}")
    print(f"{len(before)} cases, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
