"""Shared fixtures: peer packages and real files fetched once into a cache.

Real files for format tests ship in the source distributions of field packages (RELION STAR
files in starfile's, a real Dynamo table in dynamotable's). We fetch them with pip into
``.cache/peers`` (or ``$SUBTOMO_TEST_CACHE``); without a registry the tests skip with a reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cache() -> Path:
    path = Path(os.environ.get("SUBTOMO_TEST_CACHE", ROOT / ".cache" / "peers"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        pytest.skip(f"cannot fetch peer package ({' '.join(args[-2:])}): {last}")


def fetch_sdist(name: str, version: str) -> Path:
    """Unpacked source distribution of ``name==version`` (skips the test if unavailable)."""
    cache = _cache()
    target = cache / f"{name}-{version}"
    if not target.is_dir():
        _pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(cache),
             f"{name}=={version}")
        archive = next(cache.glob(f"{name.replace('-', '_')}-{version}.tar.gz"), None) or next(
            cache.glob(f"{name}-{version}.tar.gz"), None)
        if archive is None:
            pytest.skip(f"no source distribution of {name}=={version} found after download")
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
        unpacked = next(p for p in cache.iterdir() if p.is_dir() and p.name.lower().replace(
            "_", "-") == f"{name}-{version}".lower())
        if unpacked != target:
            unpacked.rename(target)
    return target


def install_peer(*requirements: str) -> Path:
    """Install peer packages (no dependencies) into a private folder on sys.path."""
    cache = _cache()
    key = "_".join(r.replace("==", "-") for r in requirements)
    target = cache / f"site-{key}"
    if not (target / ".done").exists():
        _pip("install", "-q", "--no-deps", "--target", str(target), *requirements)
        (target / ".done").touch()
    if str(target) not in sys.path:
        sys.path.append(str(target))
    return target


@pytest.fixture(scope="session")
def dynamotable_sdist() -> Path:
    return fetch_sdist("dynamotable", "0.3.0")


@pytest.fixture(scope="session")
def starfile_sdist() -> Path:
    return fetch_sdist("starfile", "0.5.13")


@pytest.fixture(scope="session")
def dynamo2m():
    """dynamo2m 0.2.2 (dynamo2warp, relion_star_downgrade), imported from a private folder."""
    import importlib
    from types import SimpleNamespace

    install_peer("dynamo2m==0.2.2", "click")
    return SimpleNamespace(
        dynamo2warp=importlib.import_module("dynamo2m.dynamo2warp").dynamo2warp,
        relion_star_downgrade=importlib.import_module(
            "dynamo2m.relion_star_downgrade").relion_star_downgrade,
    )


@pytest.fixture(scope="session")
def cryoet_alignment_data() -> Path:
    """Real RELION 4 (WarpTools), IMOD, AreTomo and Warp files from cryoet-alignment 0.2.0
    (MIT), kept in ``tests/data/cryoet_alignment`` (see its PROVENANCE.md)."""
    return ROOT / "tests" / "data" / "cryoet_alignment"


@pytest.fixture(scope="session")
def cryoet_alignment_sdist() -> Path:
    """cryoet-alignment 0.2.0 (MIT) sdist, for its code (fetched, not kept in the tree)."""
    return fetch_sdist("cryoet-alignment", "0.2.0")


@pytest.fixture(scope="session")
def relion_alignment(cryoet_alignment_sdist):
    """cryoet-alignment's RELION 5 projection module, an independent transcription of
    ``Tomogram::setProjectionMatrix`` (imported alone: the package root needs cloud libraries)."""
    import importlib.util
    import types

    install_peer("pydantic==2.11.7", "pydantic-core==2.33.2", "annotated-types==0.7.0",
                 "typing-inspection==0.4.1")
    for name in ("cryoet_alignment", "cryoet_alignment.io"):
        sys.modules.setdefault(name, types.ModuleType(name))
    base = types.ModuleType("cryoet_alignment.io.base")
    base.PATH_TYPE = str
    sys.modules.setdefault("cryoet_alignment.io.base", base)
    source = cryoet_alignment_sdist / "src/cryoet_alignment/io/relion/alignment.py"
    spec = importlib.util.spec_from_file_location("peer_relion_alignment", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mdocfile_sdist() -> Path:
    """mdocfile 0.2.3 (BSD-3): a real SerialEM tilt-series mdoc (EMBL Krios, 2015)."""
    return fetch_sdist("mdocfile", "0.2.3")


@pytest.fixture(scope="session")
def yaiw_sdist() -> Path:
    """yet-another-imod-wrapper 0.1.2 (BSD-3): a real etomo .xf and its tiltalign align.log."""
    return fetch_sdist("yet-another-imod-wrapper", "0.1.2")


@pytest.fixture(scope="session")
def yaiw_xf(yaiw_sdist):
    """yet-another-imod-wrapper's ``XF`` class: the code RELION 5's IMOD importer calls for
    ``rlnTomoZRot`` (``in_plane_rotations``) and shifts (``specimen_shifts``), imported alone
    (its package root pulls in IMOD wrappers)."""
    import importlib
    import types

    root = yaiw_sdist / "src" / "yet_another_imod_wrapper"
    for name, path in (("yet_another_imod_wrapper", root),
                       ("yet_another_imod_wrapper.utils", root / "utils")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    return importlib.import_module("yet_another_imod_wrapper.utils.xf").XF
# ---- real RELION (Debian's ``relion`` package) -------------------------------------------
def run_relion(program: str, *args: str, cwd: Path | str | None = None,
               timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a RELION program (skipping the test where it is not installed); fail the test with
    RELION's own error text when it exits non-zero."""
    import shutil

    if shutil.which(program) is None:
        pytest.skip(f"{program} not installed (apt-get install relion)")
    result = subprocess.run([program, *args], cwd=cwd, capture_output=True, text=True,
                            errors="replace", timeout=timeout)
    text = result.stdout + result.stderr
    if result.returncode != 0:
        tail = "\n".join(line for line in text.splitlines() if "ERROR" in line or ":" in line)
        pytest.fail(f"{program} {' '.join(args)} failed ({result.returncode}):\n{tail[-2000:]}")
    return result


@pytest.fixture(scope="session")
def relion():
    """:func:`run_relion` (tests using it skip where RELION is not installed)."""
    return run_relion
