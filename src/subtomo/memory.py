"""Memory as a budget: how much a job may hold at once, and what its large pieces cost.

A job's budget (bytes) is ``--max_memory`` GiB when given, else a fraction of what the device
has free now: ``MemAvailable`` of ``/proc/meminfo`` on the CPU (:data:`AUTO_FRACTION_CPU`,
shared by the processes ``torchrun`` starts on the node), ``torch.cuda.mem_get_info`` on a
GPU (:data:`AUTO_FRACTION_CUDA`). What the process already
holds when a job plans its work (resident set on the CPU, allocated tensors on a GPU) is part
of the budget, so the plan covers the job's peak, not only its increments.

The sizes below are those of the tensors the package keeps at once (complex64 = 8 bytes,
float32 = 4 bytes per value); the planners in :mod:`subtomo.align.search` and
:mod:`subtomo.refine.expectation` add them up and chunk the rest of the work to fit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from subtomo.errors import InputError

GiB = 1 << 30
AUTO_FRACTION_CPU = 0.6
AUTO_FRACTION_CUDA = 0.8
MIN_BUDGET = 256 << 20  # below this nothing useful fits: refuse rather than thrash


def _meminfo_bytes(field: str) -> int | None:
    """A ``/proc/meminfo`` entry in bytes, or None where there is no such file (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory of ``device`` now (bytes): GPU free memory, else ``MemAvailable``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    found = _meminfo_bytes("MemAvailable")
    if found is None:  # no /proc: assume 8 GiB rather than fail
        return 8 * GiB
    return found


def used_bytes(device: torch.device | str = "cpu") -> int:
    """What this process holds already: resident set (CPU) or allocated tensors (GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def budget_bytes(max_memory_gib: float | None, device: torch.device | str = "cpu") -> int:
    """The job's budget in bytes: ``max_memory_gib`` (GiB), or an automatic fraction of the
    device's free memory plus what the process holds already."""
    if max_memory_gib is not None:
        if not math.isfinite(max_memory_gib) or max_memory_gib <= 0:
            raise InputError(None, f"must be a positive number of GiB, got {max_memory_gib}",
                             field="--max_memory")
        return int(max_memory_gib * GiB)
    device = torch.device(device)
    if device.type == "cuda":
        share = AUTO_FRACTION_CUDA  # one GPU per process
    else:  # processes of one node (torchrun) share its RAM
        share = AUTO_FRACTION_CPU / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return int(share * available_bytes(device)) + used_bytes(device)


def free_budget(budget: int, device: torch.device | str = "cpu") -> int:
    """What is left of ``budget`` after what the process holds now (at least 0)."""
    return max(0, budget - used_bytes(device))


def half_grid_cells(box: int) -> int:
    """Coefficients of the half spectrum of a ``box`` cube: ``box² (box // 2 + 1)``."""
    return box * box * (box // 2 + 1)


def backprojector_bytes(box: int, pad: int) -> int:
    """A :class:`subtomo.fourier.projector.Backprojector`: complex64 data and float32 weight on
    the padded half grid."""
    return 12 * half_grid_cells(pad * box)


def reconstruction_bytes(box: int, pad: int) -> int:
    """Transient memory of one Wiener reconstruction from a back-projector: the filtered
    padded spectrum, its real transform and the cropped map."""
    big = pad * box
    return 8 * half_grid_cells(big) + 4 * big**3 + 8 * box**3


def projector_bytes(box: int, pad: int) -> int:
    """A :class:`subtomo.fourier.projector.Projector`'s interpolation table (float32 real and
    imaginary parts of the padded half spectrum, extended by one cell per side)."""
    big = pad * box
    return 8 * (big + 2) * (big + 2) * (big // 2 + 2)


def particle_bytes(box: int, ctf: bool) -> int:
    """One particle in flight in an E step: its volume, spectrum, masked and shifted copies,
    CTF weights, and the same again for the batch read ahead."""
    volume, spectrum, weights = 4 * box**3, 8 * half_grid_cells(box), 4 * half_grid_cells(box)
    current = volume + 4 * spectrum + (2 * weights if ctf else weights)
    ahead = volume + spectrum + (weights if ctf else 0)
    return current + ahead


def batch_that_fits(requested: int, per_item: int, available: int) -> int:
    """The largest batch of at most ``requested`` items of ``per_item`` bytes in ``available``
    bytes (at least 1)."""
    return max(1, min(int(requested), int(available // max(per_item, 1))))


def streaming_batch(requested: int, box: int, ctf: bool, max_memory_gib: float | None,
                    device: torch.device | str = "cpu", reserved: int = 0) -> int:
    """Particles per batch for a pass that streams them (reconstruction, noise estimates):
    at most ``requested``, within the budget less ``reserved`` bytes (refused if those alone
    do not fit)."""
    free = free_budget(budget_bytes(max_memory_gib, device), device)
    check_fits(reserved + particle_bytes(box, ctf), free, f"streaming {box}³ particles")
    return batch_that_fits(requested, particle_bytes(box, ctf), free - reserved)


def check_fits(needed: int, budget: int, what: str) -> None:
    """Refuse a job whose fixed part alone exceeds the budget (one clear line)."""
    if needed > budget:
        raise InputError(None, f"{what} needs {needed / GiB:.2f} GiB, more than the memory "
                         f"budget of {budget / GiB:.2f} GiB; raise --max_memory (or free "
                         "memory) or use a smaller box or --pad", field="--max_memory")
