"""Seeds of a training run: everything random is drawn from ``(seed, epoch, rank)``.

Each epoch reseeds Python, NumPy and torch (:func:`epoch_seed`), the data set draws its crops and
flips from ``(seed, epoch, index)`` and each batch's deformations come from a generator seeded by
``(seed, epoch, sample indices)`` (:func:`batch_generator`), so a resumed run, a run with another
number of loader workers and an uninterrupted run draw the same numbers.
"""

import random

import numpy as np
import torch

__all__ = ['batch_generator', 'epoch_seed', 'seed_everything', 'seed_worker']


def epoch_seed(seed, epoch, rank=0):
    """Return the seed of one epoch on one rank."""
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank) * 101) % (2 ** 62)


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def seed_worker(worker_id):
    """Seed NumPy and Python from the worker's torch seed (a DataLoader ``worker_init_fn``)."""
    # torch seeds python/numpy/torch per worker from the loader generator; numpy's global state
    # is seeded again here so that datasets using np.random are reproducible on every torch.
    info = torch.utils.data.get_worker_info()
    np.random.seed(info.seed % (2 ** 32))
    random.seed(info.seed)


def batch_generator(seed, epoch, indices):
    """Return the CPU generator of one batch's deformations, seeded by (seed, epoch, indices).

    Seeding per batch makes the fields independent of where they are drawn (main process or
    a DataLoader worker) and of the number of workers.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), *[int(i) for i in indices]])
    generator = torch.Generator()
    generator.manual_seed(int(state.generate_state(1, np.uint64)[0]) % (2 ** 63))
    return generator
