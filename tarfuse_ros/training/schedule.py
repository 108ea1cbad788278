"""How long a run is and how its learning rate moves: the horizon, the LR curve, the time budget.

The horizon is the number of epochs the learning-rate curve spans (:func:`lr_factor`): the
configured ``train.epochs``, or, with ``train.time_budget_s``, the count chosen once by
:class:`TimeBudget` from the first measured steps. Once chosen it never changes, so the curve of
a run is fixed and the same recipe gives the same curve on any machine; the budget can then only
stop the run early (at an epoch end), never stretch or squeeze the curve.
"""

import math
import time

__all__ = ['TimeBudget', 'fit_epochs', 'lr_factor']


def lr_factor(step, total_steps, warmup_steps, schedule, min_ratio):
    """Return the learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (from ``1 / warmup_steps`` to 1), then 1 for
    ``'constant'``, or a cosine from 1 down to ``min_ratio`` at ``total_steps`` for ``'cosine'``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == 'constant':
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit_epochs(budget_s, elapsed_s, epochs_done, epoch_seconds, configured, minimum):
    """Return the epoch count that fits a wall-time budget.

    What is left of ``budget_s`` after ``elapsed_s`` and a reserve for the final save
    (10 s + 5 % of the budget) is filled with epochs of ``epoch_seconds``, counted on top of
    ``epochs_done``; the result is clamped to ``[minimum, configured]``.
    """
    room = budget_s - elapsed_s - (10.0 + 0.05 * budget_s)
    fit = int(epochs_done) + max(int(room // max(float(epoch_seconds), 1e-6)), 0)
    return max(min(int(configured), fit), int(minimum))


class TimeBudget:
    """Fit a run into ``budget_s`` wall seconds by choosing its horizon once, then stopping early.

    ``horizon`` starts as the configured epoch count. :meth:`fix` sets it once, from an estimate
    of the epoch time (the first timed steps, or two whole epochs when epochs are short); after
    each epoch :meth:`stop_after` says whether another epoch still fits. A run stopped before the
    horizon was fixed gets the epochs it ran as its horizon.

    Args:
        budget_s: the budget in seconds (0: no budget; the configured horizon, never a stop).
        configured: the configured epoch count (the largest horizon).
        t0: ``time.monotonic()`` value where the budget starts counting.
        agree: called with each decision (an int), returns the value every process uses
            (rank 0's in a distributed run); identity by default.

    """

    def __init__(self, budget_s, configured, t0, agree=int):
        self.budget_s = float(budget_s or 0.0)
        self.configured = int(configured)
        self.t0 = float(t0)
        self.agree = agree
        self.horizon = self.configured
        self.fixed = not self.enabled
        self.step_ms = None
        self.stopped_at = None
        self.epoch_walls = []

    @property
    def enabled(self):
        return self.budget_s > 0

    def elapsed(self):
        """Seconds since ``t0``."""
        return time.monotonic() - self.t0

    def fix(self, epochs_done, elapsed_s, epoch_seconds, step_seconds=None):
        """Fix the horizon (once) from an estimate of the seconds per epoch; return it.

        ``epochs_done``: epochs complete when ``elapsed_s`` has passed (the horizon is at least
        that); ``step_seconds`` is only recorded.
        """
        if not self.fixed:
            chosen = fit_epochs(self.budget_s, elapsed_s, epochs_done, epoch_seconds,
                                self.configured, minimum=epochs_done)
            self.horizon = self.agree(chosen)
            self.fixed = True
            if step_seconds is not None:
                self.step_ms = round(1000 * step_seconds, 2)
        return self.horizon

    def stop_after(self, epochs_done, epoch_wall_s):
        """Record an epoch's wall time; return True when the run should stop after it.

        Until the horizon is fixed, two whole epochs fix it (the first one, which carries the
        start-up costs, is left out of the estimate). The run stops when the time left (less
        the reserve of :func:`fit_epochs`) holds no other epoch of the mean measured length.
        """
        if not self.enabled:
            return False
        self.epoch_walls.append(float(epoch_wall_s))
        walls = self.epoch_walls[1:] or self.epoch_walls
        mean = sum(walls) / len(walls)
        if not self.fixed and len(self.epoch_walls) >= 2:
            self.fix(epochs_done, self.elapsed(), mean)
        fits = fit_epochs(self.budget_s, self.elapsed(), epochs_done, mean, self.configured,
                          minimum=epochs_done)
        stop = self.agree(int(fits <= epochs_done < self.horizon)) == 1
        if stop:
            self.stopped_at = epochs_done
            if not self.fixed:
                self.horizon, self.fixed = epochs_done, True
        return stop

    def info(self):
        """Return what the budget decided (for the log, the summary and the provenance)."""
        if not self.enabled:
            return None
        return {'time_budget_s': self.budget_s, 'epochs_configured': self.configured,
                'horizon_epochs': self.horizon, 'horizon_fixed': self.fixed,
                'epochs_chosen': self.stopped_at or self.horizon, 'step_ms': self.step_ms,
                'stopped_early_at': self.stopped_at}
