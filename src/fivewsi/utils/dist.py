"""Where this process stands in a multi-process launch (torchrun, SLURM, or any RANK launcher).

Example:
    >>> info = process_rank({"RANK": "1", "WORLD_SIZE": "4"})
    >>> (info.rank, info.world_size)
    (1, 4)
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRank:
    """Rank of this process among ``world_size`` processes, and its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def process_rank(env: Mapping[str, str] | None = None) -> ProcessRank:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (torchrun) or SLURM's equivalents from ``env``."""
    env = os.environ if env is None else env

    def first(*names: str, default: int) -> int:
        for name in names:
            if env.get(name, "").strip().isdigit():
                return int(env[name])
        return default

    world = first("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = first("RANK", "SLURM_PROCID", default=0)
    local = first("LOCAL_RANK", "SLURM_LOCALID", default=rank)
    if not 0 <= rank < max(world, 1):
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return ProcessRank(rank, max(world, 1), local)


def pick_device(requested: str, rank: ProcessRank) -> torch.device:
    """``auto`` → this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is present, else the CPU."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(rank: ProcessRank) -> bool:
    """Join a gloo group when launched with a rendezvous address (torchrun sets one).

    Returns True when a group exists afterwards. The long timeout lets ranks whose shards are
    lighter wait at the final barrier for the others.
    """
    if rank.world_size == 1 or "MASTER_ADDR" not in os.environ:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo",
            rank=rank.rank,
            world_size=rank.world_size,
            timeout=datetime.timedelta(days=2),
        )
    return True


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
