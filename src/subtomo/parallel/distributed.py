"""Scale-out over processes with torch.distributed (``torchrun``: gloo on CPU, NCCL on GPU).

Particles are sharded by rank (``rows[rank::world]``), every rank accumulates its share, the
accumulators (back-projection sums, noise sums, pose arrays filled at the rank's rows) are
summed with ``all_reduce``, and rank 0 writes the files. One process is the same code with a
world of one. Every collective goes through :class:`Context`, whose tensors live on the
process's ``device`` (NCCL reduces only tensors on the rank's GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from subtomo.errors import InputError


@dataclass(frozen=True)
class Context:
    """This process's place: ``rank`` of ``world`` processes, computing on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of ``rows`` (every ``world``-th, starting at ``rank``)."""
        return rows[self.rank::self.world]

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over all ranks in place (complex tensors as their real view); the
        reduction runs on the process's device, whatever device ``tensor`` is on."""
        if self.world == 1:
            return tensor
        work = tensor.to(self.device)
        dist.all_reduce(torch.view_as_real(work) if work.is_complex() else work)
        if work is not tensor:
            tensor.copy_(work.to(tensor.device))
        return tensor

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        """Sum a numpy array over ranks (float64)."""
        if self.world == 1:
            return array
        t = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float64), device=self.device)
        return self.sum_(t).cpu().numpy()

    def barrier(self) -> None:
        if self.world == 1:
            return
        if self.device.type == "cuda" and dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_flag(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([1.0 if value else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())


def process_device(device: str | torch.device, local_rank: int, local_world: int,
                   gpus: int) -> tuple[torch.device, str]:
    """The device and backend of process ``local_rank`` of ``local_world`` on a node with
    ``gpus`` GPUs: ``cuda:(local_rank mod gpus)``, NCCL if every process has a GPU of its own,
    else gloo (which also reduces CUDA tensors); gloo on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device, "gloo"
    if gpus < 1:
        raise InputError(None, "no CUDA device is visible to this process", field="--device")
    return torch.device("cuda", local_rank % gpus), "nccl" if gpus >= local_world else "gloo"


def init(device: str | torch.device = "cpu") -> Context:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else a world of
    one on ``device``. See :func:`process_device` for the rank's device and the backend."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=torch.device(device))
    gpus = torch.cuda.device_count() if torch.device(device).type == "cuda" else 0
    device, backend = process_device(device, int(os.environ.get("LOCAL_RANK", "0")),
                                     int(os.environ.get("LOCAL_WORLD_SIZE", world)), gpus)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size(), device)
