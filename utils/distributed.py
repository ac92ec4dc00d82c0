"""torchrun support: process-group set-up and the few collectives the engine needs."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

_CONTROL_GROUP: Any = None  # a gloo group for small CPU collectives (the stop flag) when the default is NCCL


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; return (rank, world_size). (0, 1) otherwise."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    global _CONTROL_GROUP
    if _CONTROL_GROUP is None:  # created by every rank at the same point, as new_group requires
        _CONTROL_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return dist.get_rank(), dist.get_world_size()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank: a max-reduction of one CPU number over the gloo control group, which
    never waits for the device (an NCCL reduction would need the flag on the GPU and a synchronisation to read it)."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_CONTROL_GROUP)
    return bool(value.item())


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    global _CONTROL_GROUP
    _CONTROL_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
