"""DataLoaders of a run: epoch-aware sampling, collation, deformations drawn in the workers.

The data set draws its crops and flips from ``(seed, epoch, index)``. With persistent loader
workers the workers' copies of the data set never see the main process's ``set_epoch``, so the
epoch travels with every index (:class:`EpochSampler`, :class:`EpochIndexed`).
"""

import os
import signal

from tarfuse_ros.training.seeds import batch_generator, seed_worker
import torch

__all__ = ['DeformingCollate', 'EpochIndexed', 'EpochSampler', 'quiet_sigterm_in_worker',
           'train_loader', 'val_loader']


def quiet_sigterm_in_worker(worker_id=None):
    """Make a DataLoader worker end quietly on SIGTERM (a ``worker_init_fn``).

    A SIGTERM sent to the whole process group (``systemctl stop``, ``timeout``, ``kill -TERM
    -PGID``) killed the workers by the signal (PyTorch's own handler ends a worker quietly only
    for its main process's SIGTERM), and PyTorch's SIGCHLD handler then raised 'DataLoader
    worker ... is killed by signal: Terminated' in the main process while it saved the stopped
    run: a traceback, and neither the checkpoint nor the summary written. A worker now exits
    with status 0 on any SIGTERM, as PyTorch's handler does for its main process's, and the
    main process stops as its own SIGTERM handler says. (Ignoring the signal instead hung the
    main process at exit: multiprocessing ends its daemonic children by SIGTERM, then joins
    them.)
    """
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum, frame):
    os._exit(0)


def _train_worker_init(worker_id):
    quiet_sigterm_in_worker(worker_id)
    seed_worker(worker_id)


class EpochSampler(torch.utils.data.Sampler):
    """Yield ``(epoch, index)`` from a base sampler, reseeded per epoch."""

    def __init__(self, base):
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch, seed):
        """Select the epoch to yield with the indices and reseed the base sampler's order."""
        self.epoch = int(epoch)
        if hasattr(self.base, 'set_epoch'):
            self.base.set_epoch(epoch)
        if getattr(self.base, 'generator', None) is not None:
            self.base.generator.manual_seed(seed)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.base)

    def __len__(self):
        return len(self.base)


class EpochIndexed(torch.utils.data.Dataset):
    """Data set view indexed by ``(epoch, index)`` (see :class:`EpochSampler`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        sample = self.dataset[index]
        sample['epoch'] = epoch
        return sample


class DeformingCollate:
    """``collate_pairs`` that can also draw the batch's deformation (in the loader worker).

    With ``in_workers`` true (CPU training with workers) the deformation is drawn on the CPU in
    the worker (:func:`~tarfuse_ros.training.steps.draw_deformation`), in parallel with the
    training step, and travels in the batch as ``ir_deformed`` / ``flow_gt``; otherwise the
    trainer draws the same fields on its device.
    """

    def __init__(self, deform_cfg, seed, in_workers):
        self.deform_cfg = deform_cfg
        self.seed = int(seed)
        self.in_workers = bool(in_workers)

    def __call__(self, samples):
        from tarfuse_ros.core.data import collate_pairs
        from tarfuse_ros.training.steps import draw_deformation
        batch = collate_pairs(samples)
        batch['epoch'] = int(samples[0].get('epoch', 0))
        if self.in_workers:
            generator = batch_generator(self.seed, batch['epoch'], batch['index'])
            batch = draw_deformation(batch, self.deform_cfg, generator)
            batch.pop('ir_context', None)  # used: no need to send it to the trainer
        return batch


def train_loader(dataset, config, dist, device):
    """Return ``(loader, sampler)`` of the training set (shuffled per epoch, seeded).

    Args:
        dataset: the training :class:`~tarfuse_ros.core.data.PairedDataset`.
        config: the run's :class:`~tarfuse_ros.training.config.TrainingConfig`.
        dist: :class:`~tarfuse_ros.training.distributed.DistInfo`.
        device: the training device (pinned memory on CUDA; where deformations are drawn).

    """
    batch, seed = config.train.batch, config.train.seed
    workers = config.data.loader_workers
    generator = torch.Generator()
    generator.manual_seed(seed)
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler
        base = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                  shuffle=True, seed=seed, drop_last=True)
    else:
        # Its own generator: the loader draws worker seeds from `generator` at every
        # (non-persistent) iterator start, which must not shift the sample order.
        order = torch.Generator()
        order.manual_seed(seed)
        base = torch.utils.data.RandomSampler(dataset, generator=order)
    sampler = EpochSampler(base)
    in_workers = config.train.deform_in_workers
    if in_workers == 'auto':
        in_workers = device.type == 'cpu' and workers > 0
    # Persistent workers: the epoch travels with each index, so the workers need not be
    # restarted every epoch to see it.
    loader = torch.utils.data.DataLoader(
        EpochIndexed(dataset), batch_size=batch, sampler=sampler, num_workers=workers,
        collate_fn=DeformingCollate(config.deformation, seed, in_workers),
        drop_last=len(dataset) >= batch * dist.world_size,
        pin_memory=device.type == 'cuda', generator=generator,
        worker_init_fn=_train_worker_init if workers > 0 else None,
        persistent_workers=workers > 0)
    return loader, sampler


def val_loader(dataset, config, device):
    """Return the validation loader (fixed order; one pair a batch for whole frames)."""
    from tarfuse_ros.core.data import collate_pairs
    batch = config.train.batch if dataset.crop_size is not None else 1  # frames of many sizes
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=False, num_workers=min(config.data.loader_workers, 2),
        collate_fn=collate_pairs, pin_memory=device.type == 'cuda',
        worker_init_fn=quiet_sigterm_in_worker)
