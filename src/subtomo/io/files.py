"""Safe file writing: outputs appear whole or not at all, inputs are never overwritten."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from subtomo.errors import InputError


def check_not_input(output: str | Path, *inputs: str | Path | None) -> None:
    """Refuse to write ``output`` over any of ``inputs`` (same file, resolved), or over a
    folder."""
    out = Path(output).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == out:
            raise InputError(output, "output would overwrite an input file; choose another name")
    if out.is_dir():
        raise InputError(output, "output is a folder; writing the file would replace it: give "
                         "a file name")


def check_outputs(inputs: Iterable[str | Path | None], folder: str | Path,
                  names: Iterable[str] = (), *, option: str = "--o") -> None:
    """Refuse a job, before it writes anything, whose outputs meet its inputs.

    The job writes ``folder/name`` for each of ``names`` (an ``fnmatch`` pattern such as
    ``run_*`` or ``Subtomograms/*`` stands for names not known in advance). Refused, naming the
    file and ``option``: an input that is one of these outputs; an output that is an existing
    folder (writing it would replace the folder); a ``folder`` that is a file. ``inputs``: every
    file the job reads, those named inside its STAR files included."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder; give a (new) output folder",
                         field=option)
    names = list(names)
    root = folder.resolve()
    for item in dict.fromkeys(Path(p) for p in inputs if p is not None):
        path = item.resolve()
        if not path.is_relative_to(root):
            continue
        relative = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatchcase(relative, name) for name in names):
            raise InputError(item, f"is an input and {option} {folder} would overwrite it; "
                             "choose another output folder", field=option)
    for name in names:
        if not any(c in name for c in "*?[") and (folder / name).is_dir():
            raise InputError(folder / name, "is a folder; the job would replace it with a "
                             "file; choose another output folder", field=option)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file is created with the permissions of any new file (``0o666`` less the
    umask), not ``mkstemp``'s private ``0o600``: outputs are readable by whoever may read the
    project folder, as RELION's are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def resolve(name: str, star_dir: Path | None) -> Path:
    """A file named in a STAR file (``index@`` prefixes and ``:mrc`` suffixes dropped).

    RELION resolves names relative to the project directory (where it runs): the name as given
    if it exists, else relative to the STAR file's folder, else relative to the first of that
    folder's ancestors (a job folder sits inside its project) where it exists.
    """
    path = Path(name.split("@")[-1].removesuffix(":mrc").removesuffix(":mrcs"))
    if path.is_absolute() or path.exists() or star_dir is None:
        return path
    star_dir = Path(star_dir)
    for base in (star_dir, *star_dir.resolve().parents):
        if (base / path).exists():
            return base / path
    return star_dir / path


class BackgroundWriter:
    """Writes files on one thread while the caller computes the next batch.

    :meth:`submit` first waits for the previous job (so at most two batches are held: the one
    being written and the one just computed; memory stays flat) and re-raises its error; leaving
    the ``with`` block waits for the last job. Jobs must not touch the caller's state.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._pending: Future | None = None

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        """Block until the last job is written (re-raising its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)
@contextlib.contextmanager
def removed_on_input_error(folder: str | Path) -> Iterator[Path]:
    """Undo what the block writes into ``folder`` if it raises :class:`InputError` (bad input
    found while working, e.g. a NaN in the 900th subtomogram): the folder itself and any
    parent the block created if ``folder`` did not exist, else only the files and folders
    that were not there before. Nothing that existed before is touched; other errors (a
    kill, a crash) keep everything, so that a job can resume."""
    folder = Path(folder)
    top = folder
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    existed = folder.exists()
    before = set(folder.rglob("*")) if existed else set()
    try:
        yield folder
    except InputError:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)
        elif folder.exists():
            created = sorted((p for p in folder.rglob("*") if p not in before),
                             key=lambda p: len(p.parts), reverse=True)
            for path in created:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def undone_on_input_error(parameter: str) -> Callable:
    """Decorate a job function so that an :class:`InputError` it raises leaves nothing in
    the folder passed as ``parameter`` (:func:`removed_on_input_error`)."""
    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[parameter]
            with removed_on_input_error(folder):
                return function(*args, **kwargs)
        return run
    return decorate
