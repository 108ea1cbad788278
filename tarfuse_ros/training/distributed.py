"""Where a process sits in a (possibly single-process) DistributedDataParallel run."""

from dataclasses import dataclass
import os

import torch

__all__ = ['DistInfo', 'barrier', 'broadcast_int', 'setup_distributed', 'teardown_distributed']


@dataclass(frozen=True)
class DistInfo:
    """Rank, local rank and world size of this process; ``enabled`` when a group is running."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def is_main(self):
        return self.rank == 0


def setup_distributed(force=False):
    """Start the process group when run by torchrun with WORLD_SIZE > 1 (or when forced).

    Returns:
        :class:`DistInfo` (the single-process default when no group is started).

    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1 and not force:
        return DistInfo()
    import torch.distributed as dist
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29531')
    os.environ.setdefault('RANK', '0')
    os.environ.setdefault('WORLD_SIZE', str(world))
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    backend = 'nccl' if torch.cuda.is_available() and os.environ.get(
        'TARFUSE_DDP_BACKEND', 'nccl') == 'nccl' else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, enabled=True)


def teardown_distributed(dist_info):
    """Destroy the process group started by :func:`setup_distributed` (if any)."""
    if dist_info.enabled:
        import torch.distributed as dist
        dist.destroy_process_group()


def barrier(dist_info):
    """Wait for every rank (no-op in a single process)."""
    if dist_info.enabled:
        import torch.distributed as dist
        dist.barrier()


def broadcast_int(value, dist_info, device):
    """Return rank 0's ``value`` on every rank (``value`` itself in a single process)."""
    if not dist_info.enabled:
        return int(value)
    import torch.distributed as dist
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())
