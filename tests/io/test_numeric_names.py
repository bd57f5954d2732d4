"""Tilt-series and particle names made of digits (``00123``) stay text: read, written and used
in file names with their leading zeros, through every command that handles them."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from subtomo.cli import main
from subtomo.io.labels import LABELS
from subtomo.io.star import read_particles
from subtomo.io.star_text import read_star
from subtomo.io.tomograms import read_optimisation_set, read_tomogram_set
from subtomo.simulate.tiltseries import TiltSeriesConfig, simulate_tiltseries

NAME = "00123"


@pytest.fixture(scope="module")
def numeric_project(tmp_path_factory) -> Path:
    """A simulated project whose tilt series ``TS_01`` is renamed ``00123`` everywhere."""
    out = tmp_path_factory.mktemp("numeric") / "project"
    config = TiltSeriesConfig(n_particles=4, image_size_px=(96, 96), thickness_px=32, box_px=16,
                              n_atoms=200, tilt_step_deg=15.0, seed=1)
    simulate_tiltseries(out, config, progress=False)
    for old in (out / "tilt_series").glob("TS_01.*"):
        old.rename(old.with_name(NAME + old.suffix))
    for star in [*out.glob("*.star"), *(out / "tilt_series").glob("*.star")]:
        star.write_text(star.read_text().replace("TS_01", NAME))
    return out


def test_name_like_labels_are_registered_as_text():
    for label in ("rlnTomoName", "rlnTomoParticleName", "rlnMicrographName", "rlnImageName",
                  "rlnCtfImage", "rlnTomoTiltSeriesStarFile", "rlnTomoReconstructedTomogram",
                  "rlnMicrographMovieName", "rlnMaskName", "rlnReferenceImage"):
        assert LABELS[label].kind is str, label


def test_readers_keep_leading_zeros(numeric_project):
    tset = read_tomogram_set(numeric_project / "tomograms.star")
    assert tset.names == [NAME]
    assert tset[NAME].globals["rlnTomoName"] == NAME
    ps = read_particles(numeric_project / "particles.star")
    assert set(ps.particles["rlnTomoName"]) == {NAME}
    simple = read_star(numeric_project / "tomograms.star")["global"]
    assert simple["rlnTomoName"].tolist() == [NAME]
    opt = read_optimisation_set(numeric_project / "optimisation_set.star")
    assert opt.particles.name == "particles.star"


def test_reconstruct_tomogram_keeps_the_name(numeric_project, tmp_path):
    out = tmp_path / "rec"
    assert main(["reconstruct-tomogram", "--i", str(numeric_project / "optimisation_set.star"),
                 "--bin", "4", "--o", str(out)]) == 0
    assert (out / "tomograms" / f"rec_{NAME}.mrc").is_file()
    tset = read_tomogram_set(out / "tomograms.star")
    assert tset.names == [NAME]
    assert (out / "tilt_series" / f"{NAME}.star").is_file()
    text = (out / "tomograms.star").read_text()
    assert f"rec_{NAME}.mrc" in text and "\t123\t" not in text


def test_extract_keeps_the_name(numeric_project, tmp_path):
    out = tmp_path / "extract"
    assert main(["extract", "--i", str(numeric_project / "optimisation_set.star"), "--b", "16",
                 "--o", str(out)]) == 0
    assert (out / "Subtomograms" / NAME).is_dir()
    ps = read_particles(out / "particles.star")
    assert set(ps.particles["rlnTomoName"]) == {NAME}
    assert all(n.startswith(f"{NAME}/") for n in ps.particles["rlnTomoParticleName"])


def test_tomograms_import_keeps_the_name(numeric_project, tmp_path):
    stack = numeric_project / "tilt_series" / f"{NAME}.mrcs"
    with mrcfile.open(stack, header_only=True) as mrc:
        n_tilts = int(mrc.header.nz)
    tlt = tmp_path / f"{NAME}.tlt"
    tlt.write_text("\n".join(f"{a:g}" for a in np.linspace(-60, 60, n_tilts)) + "\n")
    out = tmp_path / "import" / "tomograms.star"
    (tmp_path / f"{NAME}.mrcs").symlink_to(stack)
    assert main(["tomograms", "import", "--stack", str(tmp_path / "{name}.mrcs"),
                 "--tlt", str(tmp_path / "{name}.tlt"), "--name", NAME, "--angpix", "10",
                 "--voltage", "300", "--dose_per_tilt", "3", "--defocus_um", "3",
                 "--thickness", "32", "--tilt_axis", "0", "--o", str(out)]) == 0
    tset = read_tomogram_set(out)
    assert tset.names == [NAME]
    assert (out.parent / "tilt_series" / f"{NAME}.star").is_file()
