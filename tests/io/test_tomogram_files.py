"""Optimisation sets and trajectory (motion) sets: lossless round trips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.io.star_text import read_numeric_loops, read_star
from subtomo.io.tomograms import (
    read_motion,
    read_optimisation_set,
    write_motion,
    write_optimisation_set,
)


def test_motion_round_trip_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    traj = {f"TS_01/{i}": rng.normal(0, 3, (41, 3)) for i in range(1, 6)}
    write_motion(tmp_path / "motion.star", traj)
    back = read_motion(tmp_path / "motion.star")
    assert list(back) == list(traj)
    for name in traj:
        assert np.array_equal(back[name], traj[name])
    blocks = read_star(tmp_path / "motion.star")
    assert blocks["general"]["rlnParticleNumber"] == 5
    assert list(blocks["TS_01/3"].columns) == ["rlnOriginXAngst", "rlnOriginYAngst",
                                               "rlnOriginZAngst"]


def test_numeric_loops_read_as_read_star_does(tmp_path):
    rng = np.random.default_rng(1)
    traj = {f"TS_{t:02d}/{i}": rng.normal(0, 3, (41, 3)) for t in (1, 2) for i in range(1, 40)}
    write_motion(tmp_path / "motion.star", traj)
    fast, slow = read_numeric_loops(tmp_path / "motion.star"), read_star(tmp_path / "motion.star")
    assert list(fast) == list(slow)
    assert fast["general"] == slow["general"] == {"rlnParticleNumber": 78}
    for name in traj:
        assert list(fast[name].columns) == list(slow[name].columns)
        assert np.array_equal(fast[name].to_numpy(), slow[name].to_numpy())


@pytest.mark.parametrize("change", [("\n3.25", "\nx.25"), ("\t4.25", ""),
                                    ("\t5.25\n6.25", "\n5.25\t6.25"), ("\n6.25", "\nnan")])
def test_a_bad_trajectory_row_is_named_by_line(tmp_path, change):
    """The fast reader leaves text, short rows and non-numbers to read_star's checks."""
    write_motion(tmp_path / "motion.star", {"a/1": np.arange(15.0).reshape(5, 3) + 0.25})
    text = (tmp_path / "motion.star").read_text()
    assert change[0] in text
    (tmp_path / "motion.star").write_text(text.replace(*change, 1))
    assert read_numeric_loops(tmp_path / "motion.star") is None
    with pytest.raises(InputError, match=r"motion\.star:\d+"):
        read_motion(tmp_path / "motion.star")


def test_motion_with_missing_trajectories_fails(tmp_path):
    write_motion(tmp_path / "motion.star", {"a/1": np.zeros((3, 3))})
    text = (tmp_path / "motion.star").read_text()
    (tmp_path / "motion.star").write_text(text.replace("\t1\n", "\t2\n", 1))
    with pytest.raises(InputError, match="rlnParticleNumber"):
        read_motion(tmp_path / "motion.star")


def test_optimisation_set_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("particles.star", "tomograms.star", "half1.mrc", "half2.mrc"):
        (tmp_path / name).write_text("")
    write_optimisation_set("job/optimisation_set.star", particles="particles.star",
                           tomograms="tomograms.star", ref1="half1.mrc", ref2="half2.mrc")
    opt = read_optimisation_set("job/optimisation_set.star")
    assert opt.require("particles").resolve() == (tmp_path / "particles.star").resolve()
    assert opt.ref2.name == "half2.mrc" and opt.trajectories is None
    with pytest.raises(InputError, match="rlnTomoTrajectoriesFile"):
        opt.require("trajectories")
