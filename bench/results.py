"""Write one benchmark's figures into its own section of bench/RESULTS.md.

Every section is stamped with the date, the machine and the commit it measured (``+local``
when ``src/`` or ``bench/`` had uncommitted changes). A reduced run (fewer particles or
iterations than the bench's full configuration) says so in its stamp and keeps the previous
full run's figures below its own, under "Last full run", with that run's stamp.

Peak memory: ``own_peak_mib`` (and ``OWN_PEAK``, its source for ``python -c`` children) for a
process's own peak, ``run_measured`` for a command's. Never ``ru_maxrss`` of a child: Linux
carries the parent's high-water mark into a child over fork/vfork + exec, so a child of a 3 GB
bench reports at least 3 GB (and ``RUSAGE_CHILDREN`` is the largest over all children).
"""

from __future__ import annotations

import inspect
import os
import platform
import re
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
FULL_RUN = "### Last full run"
TIME = Path("/usr/bin/time")


def own_peak_mib() -> float:
    """This process's own peak resident memory (MiB): ``VmHWM`` of /proc/self/status (KiB), the
    high-water mark of its address space since exec; ``ru_maxrss`` where there is no /proc
    (KiB on Linux, bytes on macOS), which includes a parent's mark."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


OWN_PEAK = inspect.getsource(own_peak_mib)  # the same function, for ``python -c`` children


def bench_peak(simulated: bool) -> str:
    """This (bench) process's peak RSS, labelled: it holds everything the bench did in-process,
    the data simulation too when ``simulated``."""
    included = ", simulation included" if simulated else ""
    return f"peak RSS {own_peak_mib():.0f} MiB (of the bench process{included})"


def run_measured(argv: list[str], **kw) -> tuple[subprocess.CompletedProcess, float, float,
                                                  float]:
    """Run ``argv`` (``subprocess.run``'s keywords): (completed process, wall s, CPU s = user
    + system, peak RSS MiB) of the command alone, under ``/usr/bin/time -f "%U %S %M"``: the
    command's parent is then the time program (a few MB), not this process. Without that
    program the peak is ``RUSAGE_CHILDREN``'s: the largest of all children, this process's
    own mark included (an upper bound)."""
    if not TIME.is_file():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, **kw)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return done, wall, cpu, after.ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "time.txt"
        start = time.perf_counter()
        done = subprocess.run([str(TIME), "-f", "%U %S %M", "-o", str(report), *argv], **kw)
        wall = time.perf_counter() - start
        # the last line is the format's ("Command exited with non-zero status" may precede it)
        lines = report.read_text().splitlines() if report.exists() else []
    try:
        user, system, peak_kib = (float(x) for x in lines[-1].split())
    except (IndexError, ValueError):  # the command could not be run or was killed before the report
        return done, wall, float("nan"), float("nan")
    return done, wall, user + system, peak_kib / 1024


def machine() -> str:
    """One line describing where the figures were taken."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {device}")


def machine_load() -> str:
    """The machine's measured load, to read wall times by: above the core count, other work
    shared the cores and CPU time is the figure to compare."""
    one, five, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    return (f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {cores} cores at the "
            f"end of the run (above {cores}: other work shared the cores, compare CPU times)")


def commit() -> str:
    """The measured code: ``git`` short hash, ``+local`` if src/ or bench/ differ from it."""
    root = RESULTS.parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short=7", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "bench")
    dirty = "\n".join(line for line in dirty.splitlines() if not line.endswith("RESULTS.md"))
    return head + ("+local" if dirty else "")


def _sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"^## ([^\n]+)\n.*?(?=^## |\Z)", text,
                                                         re.S | re.M)}


def update_section(name: str, body: str, *, reduced: str | None = None,
                   stopped_early: str | None = None) -> None:
    """Replace (or append) the section ``## name`` of RESULTS.md with ``body``.

    ``reduced``: how this run is smaller than the bench's full configuration; the previous
    full run's text is then kept under "Last full run". ``stopped_early``: why the run ended
    before its schedule did (its figures are what it had).
    """
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    old = _sections(text).get(name, "")
    stamp = f"_{time.strftime('%Y-%m-%d')}, commit {commit()}, {machine()}"
    if reduced:
        stamp += f"; reduced configuration: {reduced}"
    if stopped_early:
        stamp += f"; stopped early: {stopped_early}"
    section = f"## {name}\n\n{stamp}_\n\n{body.strip()}\n"
    if reduced and old:
        if FULL_RUN in old:
            kept = old[old.index(FULL_RUN):].strip()
        elif "reduced configuration" in old.split("\n", 3)[2]:
            kept = ""
        else:
            kept = FULL_RUN + "\n\n" + old.split("\n", 1)[1].strip()
        if kept:
            section += "\n" + kept + "\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")
