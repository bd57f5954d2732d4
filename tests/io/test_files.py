"""Atomic writes: all or nothing, and files as readable as any other new file."""

import os

import pytest

from subtomo.io.files import atomic_path


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
