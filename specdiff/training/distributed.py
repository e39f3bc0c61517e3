"""Data-parallel training: joining the process group that ``torchrun`` describes, and the ranks' device.

NCCL on GPUs, gloo on CPUs; a single process (no ``torchrun``) is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from specdiff.errors import SpecdiffError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecdiffError("device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(config: Any) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (if any); ``config`` is a
    :class:`specdiff.training.config.TrainConfig` (its ``device``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(config.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def _all_reduce_sum(values: Tensor, ctx: DistContext) -> Tensor:
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values
