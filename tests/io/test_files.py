"""Atomic writes: all or nothing, and files as readable as any other new file."""

import os

import pytest

from subtomo.errors import InputError
from subtomo.io.files import atomic_path, check_outputs


def test_atomic_file_appears_whole_with_the_umask_permissions(tmp_path):
    target = tmp_path / "out" / "map.star"
    with atomic_path(target) as tmp:
        tmp.write_text("data_\n")
        assert not target.exists()
    assert target.read_text() == "data_\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["map.star"]


def test_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "map.star"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["map.star"]


def test_check_outputs_refuses_outputs_that_are_inputs(tmp_path):
    """Named outputs and patterns in the folder meet the inputs, by resolved path; an output
    that is a folder, and a folder that is a file, are refused; other inputs pass."""
    job = tmp_path / "job"
    (job / "Subtomograms" / "TS_01").mkdir(parents=True)
    star = job / "particles.star"
    star.write_text("x")
    volume = job / "Subtomograms" / "TS_01" / "1_data.mrc"
    volume.write_bytes(b"x")
    other = job / "notes.star"
    other.write_text("x")
    check_outputs([other, None], job, ["particles.star", "Subtomograms/*"])  # no clash
    with pytest.raises(InputError, match="particles.star: --o: is an input and --o"):
        check_outputs([other, job / "sub" / ".." / "particles.star"], job, ["particles.star"])
    with pytest.raises(InputError, match="1_data.mrc: --p: is an input"):
        check_outputs([volume], job, ["Subtomograms/*"], option="--p")
    with pytest.raises(InputError, match="Subtomograms: --o: is a folder"):
        check_outputs([], job, ["Subtomograms"])
    with pytest.raises(InputError, match="exists and is not a folder"):
        check_outputs([], star, ["a.star"])
