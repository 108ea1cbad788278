"""An exponential moving average of the trained weights (``train.ema``, ``train.ema_tau``).

Polyak averaging as YOLO trainers use it: the first update copies the weights, and update
``t`` after it (1, 2, ...) moves the average toward them by ``1 - d_t``, with the warm-up ramp
of Ultralytics' ``ModelEMA``, ``d_t = decay * (1 - exp(-t / tau))`` (``tau`` 0: ``d_t =
decay``), so the first updates follow the weights closely and later ones average over about
``1 / (1 - decay)`` steps.
Floating-point parameters and buffers (BatchNorm statistics) are averaged; integer buffers are
copied. Tensors that do not change (frozen parts) stay bit-identical: ``lerp`` between equal
values returns them.

Built on :class:`torch.optim.swa_utils.AveragedModel` (its ``n_averaged`` counts the updates
and travels with its state dict).
"""

import math

from torch.optim.swa_utils import AveragedModel

__all__ = ['ema_decay', 'weight_average']


def ema_decay(decay, tau, updates):
    """Return the decay of update number ``updates`` (>= 1): ``decay * (1 - exp(-updates / tau))``.

    Args:
        decay: the long-run decay in ``[0, 1)``.
        tau: the ramp's time constant in optimizer steps (0: no ramp).
        updates: ``t``, the number of updates before this one (the first, which copies the
            weights, included).

    """
    if tau <= 0:
        return decay
    return decay * (1.0 - math.exp(-updates / tau))


def weight_average(model, decay, tau=0.0):
    """Return an :class:`~torch.optim.swa_utils.AveragedModel` holding the EMA of ``model``.

    Call ``average.update_parameters(model)`` after every optimizer step; the first call copies
    the weights, each later one applies :func:`ema_decay`. ``average.module`` is the averaged
    network (same class and config as ``model``).

    Raises:
        ValueError: ``decay`` outside ``(0, 1)`` or ``tau`` negative.

    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f'the EMA decay must lie in (0, 1), got {decay!r}')
    if tau < 0:
        raise ValueError(f'the EMA ramp tau must be >= 0 steps, got {tau!r}')

    def average(averaged, current, count):
        if not averaged.is_floating_point():
            return current
        return averaged.lerp(current, 1.0 - ema_decay(decay, tau, int(count)))

    return AveragedModel(model, avg_fn=average, use_buffers=True)
