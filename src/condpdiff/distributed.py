"""Data parallel training under `torchrun` on the single-process code path.

    torchrun --standalone --nproc_per_node 2 pipeline/collect.py --task sst2 ...

Every rank draws the same global batch (the same seeded generators) and keeps its own share
(`World.shard`: rows rank, rank + N, ...); DistributedDataParallel averages the gradients, which is
the gradient of the global batch's mean loss when the shares are equal, so N processes reach the
weights one process reaches with the same global batch (dropout and per-sample noise aside, which
each rank draws for its share). Rank 0 alone logs to MLflow and writes the stage's outputs. Without
torchrun (`WORLD_SIZE` unset) nothing changes: one rank, the whole batch, no wrapper. The backend is
gloo: training here runs on the CPU (NCCL needs the models placed on GPUs, which this code does not do).
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows):
        """This rank's share of a global batch (a list or a tensor's first dimension)."""
        return rows if self.size == 1 else rows[self.rank::self.size]

    def check_batch(self, batch_size: int, what: str) -> None:
        if batch_size % self.size:
            raise ValueError(f"{what} batch size {batch_size} does not split into {self.size} equal shares: "
                             "DDP's averaged gradient would differ from the single-process one")

    def mean(self, value: torch.Tensor) -> float:
        """A per-share scalar (a loss) averaged over the ranks: the global batch's value, for logging. Every rank
        must call it at the same step."""
        if self.size == 1:
            return value.item()
        total = value.detach().clone()
        torch.distributed.all_reduce(total)
        return total.item() / self.size

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.size == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)


def world() -> World:
    """The process group torchrun describes (RANK, WORLD_SIZE), joined once; one rank without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
        atexit.register(torch.distributed.destroy_process_group)
    return World(torch.distributed.get_rank(), size)
