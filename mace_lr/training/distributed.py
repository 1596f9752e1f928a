"""``--distributed`` on CPU: a gloo process group and a CPU DistributedDataParallel.

MACE's ``init_distributed`` reads rank and world size from the launcher's environment
(torchrun: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
but starts a process group only for ``--device cuda`` (nccl) or ``xpu`` (ccl), and wraps
the model as ``DDP(model, device_ids=[local_rank])``, which torch refuses for a CPU module.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.distributed
from torch.nn.parallel import DistributedDataParallel


def init_distributed(args, mace_init_distributed: Callable[[Any], Tuple[int, int, int]]) -> Tuple[int, int, int]:
    """MACE's ``init_distributed``, plus a gloo process group for ``--device cpu``."""
    rank, local_rank, world_size = mace_init_distributed(args)
    if args.distributed and args.device == "cpu" and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo", init_method="env://", rank=rank, world_size=world_size)
    return rank, local_rank, world_size


def data_parallel(
    module: torch.nn.Module, device_ids: Optional[Sequence[int]] = None, **kwargs
) -> DistributedDataParallel:
    """``DistributedDataParallel`` that drops ``device_ids`` for a CPU module (torch requires None)."""
    first = next(module.parameters(), None)
    if first is not None and first.device.type == "cpu":
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)
