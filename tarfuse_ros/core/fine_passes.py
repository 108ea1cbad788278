"""The global stage's fine passes as an inference setting, checked without torch.

Shared by both engines, ``tarfuse-export``, the tools and the node's parameters, which check a
value before any model loads. The passes themselves: ``OrientationMatcher`` (its fine stage)
and :func:`~tarfuse_ros.core.engine.set_fine_passes`.
"""

import numbers

__all__ = ['MAX_FINE_PASSES', 'NoFineStageError', 'check_fine_passes']

# The most fine passes an inference setting may ask for: the shipped model runs 4, and the
# passes converge well before 8 (OrientationMatcher, fine_tolerance).
MAX_FINE_PASSES = 8


class NoFineStageError(ValueError):
    """Fine passes (1-8) asked of a checkpoint whose global stage has no fine stage.

    A ``ValueError`` of its own so that a program can name its own setting (the node:
    ``registration.fine_passes``) beside the checkpoint's reason.
    """


def check_fine_passes(fine_passes, name='fine_passes'):
    """Raise ``ValueError`` naming ``name`` unless ``fine_passes`` is None or 0-8 passes.

    None: the checkpoint's own; else an integer in [0, :data:`MAX_FINE_PASSES`] (0: no fine
    pass), not a bool.
    """
    if fine_passes is None:
        return
    if isinstance(fine_passes, bool) or not isinstance(fine_passes, numbers.Integral) \
            or not 0 <= fine_passes <= MAX_FINE_PASSES:
        raise ValueError(f'{name} must be an integer in [0, {MAX_FINE_PASSES}] (0: no fine '
                         f"pass; unset: the checkpoint's own), got {fine_passes!r}")
