"""torchrun/DDP plumbing: the process group from torchrun's environment, and cross-rank gathers.

Run as ``torchrun --nproc-per-node N -m fopt train ...``: torchrun sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them fopt trains as one process. NCCL on CUDA,
gloo on CPU. Every collective has a timeout (``TrainConfig.dist_timeout_s``), so a rank that dies
or hangs ends the job with an error instead of blocking the others forever; torchrun itself also
stops the surviving workers when one exits with an error.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from fopt.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None   # None: a single process, no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(device_type: str, timeout_s: int) -> DistInfo:
    """Join the process group torchrun described in the environment (no-op for one process)."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) "
                             f"here: use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(local_rank)
        # NCCL collectives only honour the timeout with async error handling: abort, don't hang.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    return DistInfo(rank, local_rank, world, backend)


def cleanup(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def equal_shard(items: list[Any], rank: int, world: int) -> list[Any]:
    """Rank `rank`'s share of `items`, every share the same length (``ceil(n / world)``).

    Wherever each rank loops over its share with a collective inside every step (precise BN under
    SyncBatchNorm all-reduces per batch), a rank with one batch more waits forever in NCCL:
    ``items[rank::world]`` gives 97 images over 3 ranks shares of 33, 32 and 32, i.e. 2, 1 and 1
    batches of 32. As torch's DistributedSampler does, the short shares are topped up by wrapping
    round to the first items (at most ``world - 1`` repeats)."""
    if not items:
        return []
    per_rank = -(-len(items) // world)
    padded = list(items) + [items[i % len(items)] for i in range(per_rank * world - len(items))]
    return padded[rank::world]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_buffers(model, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each training forward, but each rank then updates
    its own copy with its own batch; evaluating without this would score each validation shard
    with slightly different statistics than the best.pt that rank 0 saves.
    """
    if not info.enabled:
        return
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def all_reduce_sum(values: list[float], info: DistInfo, device) -> list[float]:
    """Element-wise sum of a few scalars over ranks (float64, so counts stay exact)."""
    if not info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_arrays(arrays: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """Concatenate each rank's arrays (rank order) on every rank: metrics on the full split."""
    if not info.enabled:
        return arrays
    import torch.distributed as dist

    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
