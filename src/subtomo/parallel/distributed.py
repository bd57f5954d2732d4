"""Scale-out over processes with torch.distributed (``torchrun``: gloo on CPU, NCCL on GPU).

Particles are sharded by rank (``rows[rank::world]``), every rank accumulates its share, the
accumulators (back-projection sums, noise sums, pose arrays filled at the rank's rows) are
summed with ``all_reduce``, and rank 0 writes the files. One process is the same code with a
world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Context:
    """This process's place: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of ``rows`` (every ``world``-th, starting at ``rank``)."""
        return rows[self.rank::self.world]

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over all ranks in place (complex tensors as their real view)."""
        if self.world > 1:
            dist.all_reduce(torch.view_as_real(tensor) if tensor.is_complex() else tensor)
        return tensor

    def sum_array(self, array: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
        """Sum a numpy array over ranks (float64)."""
        if self.world == 1:
            return array
        t = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float64), device=device)
        return self.sum_(t).cpu().numpy()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_flag(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([1.0 if value else 0.0])
        dist.broadcast(t, 0)
        return bool(t.item())


def init(device: str | torch.device = "cpu") -> Context:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else a world of
    one. Backend: NCCL for CUDA devices, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size())
