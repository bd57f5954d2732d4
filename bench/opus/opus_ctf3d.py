"""Run in OPUS-ET's environment (not ours): read an export of ``subtomo poses export --format
opus`` through OPUS's own readers and write what OPUS's model would use, for the convention test.

    python opus_ctf3d.py STAR DATADIR D APIX TILT_RANGE TILT_STEP OUT.npz

OUT.npz: ``ctf`` (N, D, D, D//2+1) the 3D CTFs of ``cryodrgn.ctf.compute_3dctfaniso`` as the
decoder calls it (``use_warp=True``), layout (kz, ky, kx) with kz, ky centred (index D//2 is
frequency 0) and kx 0…D//2; ``params`` the per-tilt table OPUS parsed (N, T, 9); ``first``
the first subtomogram as ``LazyTomoWARPMRCData`` normalises it and ``norm`` its (mean, std).
"""

import sys

import numpy as np
import torch
from cryodrgn import ctf, dataset
from cryodrgn.lattice import CTFGrid


def main() -> None:
    star, datadir, box, apix, tilt_range, tilt_step, out = sys.argv[1:8]
    box, apix = int(box), float(apix)
    data = dataset.LazyTomoWARPMRCData(star, datadir=datadir, tilt_range=float(tilt_range),
                                       tilt_step=float(tilt_step), window=False)
    params = torch.tensor(data.ctfs, dtype=torch.float32)  # (N, T, 9)
    grid = CTFGrid(box + 1, "cpu")
    freqs = grid.freqs2d.unsqueeze(0) / apix
    ref = torch.zeros(1, box, box, box)
    with torch.no_grad():
        c = ctf.compute_3dctfaniso(ref, grid.centered_freqs, freqs,
                                   *torch.split(params, 1, -1), Apix=apix, use_warp=True)
    first = data.get(0)[0]
    np.savez(out, ctf=c.numpy(), params=params.numpy(), first=np.asarray(first),
             norm=np.asarray(data.norm))


if __name__ == "__main__":
    main()
