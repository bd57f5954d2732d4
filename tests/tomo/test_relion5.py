"""RELION 5 as the referee of the tilt-series simulator and of our reconstruction (issue 25).

Runs where RELION 5's tomography programs are found through ``RELION5_BIN`` (the folder of
``relion_tomo_*``, built by ``bench/relion5/build.sh``; never looked up on PATH, where RELION 3.1
may be): ``relion_tomo_reconstruct_particle`` on a simulated project with its true geometry must
reach the same FSC 0.5 against the truth as ``reconstruct-particle``, within 2 %. A simulator
convention that only our code shared (hand, tilt direction, defocus sign, dose, origin) would
show here as a worse RELION map.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from subtomo.fourier.fsc import fsc, resolution_at
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
    truth = torch.from_numpy(read_mrc(project.truth_maps[0])[0])
    box, apix = truth.shape[-1], float(read_mrc(project.truth_maps[0])[1])
    out = tmp_path / "relion5_rp"
    relion5("reconstruct_particle", "--i", "truth/optimisation_set.star", "--b", str(box),
            "--j", "2", "--o", str(out) + "/", cwd=root)
    theirs = torch.from_numpy(read_mrc(out / "merged.mrc")[0])
    ours = reconstruct_particle(read_particles(project.truth_particles_star),
                                read_tomogram_set(project.truth_tomograms_star), box=box,
                                progress=False).map
    res = {name: resolution_at(fsc(v.float(), truth.float()), box, apix, 0.5)
           for name, v in (("relion5", theirs), ("ours", ours))}
    assert res["relion5"] == pytest.approx(res["ours"], rel=0.02), res
