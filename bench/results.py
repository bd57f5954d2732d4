"""Write one benchmark's figures into its own section of bench/RESULTS.md.

Every section is stamped with the date, the machine and the commit it measured (``+local``
when ``src/`` or ``bench/`` had uncommitted changes). A reduced run (fewer particles or
iterations than the bench's full configuration) says so in its stamp and keeps the previous
full run's figures below its own, under "Last full run", with that run's stamp.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
FULL_RUN = "### Last full run"


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
    verdict = ("other work shared the cores: compare CPU times" if five > cores + 0.5
               else "the cores were not oversubscribed")
    return (f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {cores} cores at the "
            f"end of the run; {verdict}")


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
