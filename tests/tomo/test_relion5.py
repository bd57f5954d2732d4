"""RELION 5 as the referee of the tilt-series simulator and of our reconstruction (issue 25).

Runs where RELION 5's tomography programs are found through ``RELION5_BIN`` (the folder of
``relion_tomo_*``, built by ``bench/relion5/build.sh``; never looked up on PATH, where RELION 3.1
may be). ``relion_tomo_reconstruct_particle`` on a simulated project with its true geometry:
its maps are written tapered to the sphere (``--taper 10``), which ``taper_to_sphere`` must
reproduce from its untapered map (written as ``merged_full.mrc`` when ``--crop`` < ``--b``);
then, tapered alike and untapered alike, our map must be as close to the truth as RELION's:
an FSC 0.5 resolution no worse by more than 2 % and, over the outer half of the shells (where the
noise decides), a mean FSC against the truth no lower than RELION's by more than 0.02. A
simulator convention that only our code shared (hand, tilt direction, defocus sign, dose,
origin) would show here as a worse RELION map. (Untapered, ours is ahead: τ²-Wiener merged map
against RELION's division by the CTF² sum with a 1e-3 floor.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from subtomo.fourier.fsc import fsc, resolution_at
from subtomo.fourier.reconstruction import taper_to_sphere
from subtomo.io.mrc import read_mrc
from subtomo.io.star import read_particles
from subtomo.io.tomograms import read_tomogram_set
from subtomo.tomo.reconstruct_particle import reconstruct_particle

RELION5 = Path(os.environ["RELION5_BIN"]) if os.environ.get("RELION5_BIN") else None
pytestmark = pytest.mark.skipif(
    RELION5 is None or not (RELION5 / "relion_tomo_reconstruct_particle").is_file(),
    reason="RELION 5 not found: set RELION5_BIN (bench/relion5/build.sh)")


def relion5(program: str, *args: str, cwd: Path) -> None:
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run([str(RELION5 / f"relion_tomo_{program}"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_relion5_reconstructs_the_simulated_truth_as_well_as_we_do(project, tmp_path):
    root = project.truth_tomograms_star.parent.parent  # the project folder
    truth = torch.from_numpy(read_mrc(project.truth_maps[0])[0]).double()
    box, apix = truth.shape[-1], float(read_mrc(project.truth_maps[0])[1])
    for name, extra in (("tapered", ()), ("cropped", ("--crop", str(box - 2)))):
        relion5("reconstruct_particle", "--i", "truth/optimisation_set.star", "--b", str(box),
                "--j", "2", *extra, "--o", str(tmp_path / name) + "/", cwd=root)
    tapered = torch.from_numpy(read_mrc(tmp_path / "tapered" / "merged.mrc")[0]).double()
    full = torch.from_numpy(read_mrc(tmp_path / "cropped" / "merged_full.mrc")[0]).double()
    assert torch.allclose(taper_to_sphere(full, 10.0), tapered, atol=1e-5 * tapered.abs().max())

    ours = reconstruct_particle(read_particles(project.truth_particles_star),
                                read_tomogram_set(project.truth_tomograms_star), box=box,
                                progress=False).map.double()
    outer = slice(box // 4, box // 2 + 1)
    for label, theirs, mine in (("tapered", tapered, taper_to_sphere(ours, 10.0)),
                                ("untapered", full, ours)):
        f_theirs, f_mine = fsc(theirs, truth), fsc(mine, truth)
        res = [resolution_at(f, box, apix, 0.5) for f in (f_theirs, f_mine)]
        assert res[1] <= 1.02 * res[0], (label, res)
        assert float(f_mine[outer].mean()) > float(f_theirs[outer].mean()) - 0.02, (
            label, f_theirs.tolist(), f_mine.tolist())
