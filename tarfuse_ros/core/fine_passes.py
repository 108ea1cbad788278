"""The global stage's fine passes as an inference setting, checked without torch.

Shared by both engines, ``tarfuse-export``, the tools and the node's parameters, which check a
value before any model loads. The passes themselves: ``OrientationMatcher`` (its fine stage)
and :func:`~tarfuse_ros.core.engine.set_fine_passes`.
"""

import argparse
import numbers

__all__ = ['BuiltInFinePassesError', 'KEYWORD_OWN', 'MAX_FINE_PASSES', 'NoFineStageError',
           'OPTION_OWN', 'check_fine_passes', 'fine_passes_option']

# The most fine passes an inference setting may ask for: the shipped model runs 4, and the
# passes converge well before 8 (OrientationMatcher, fine_tolerance).
MAX_FINE_PASSES = 8
# How a caller asks for the model's own count: the keyword (FusionEngine's fine_passes), and the
# tools' --fine-passes (fine_passes_option): what their messages say.
KEYWORD_OWN = "None: the model's own count"
OPTION_OWN = "-1, as leaving the option out: the model's own count"


class NoFineStageError(ValueError):
    """Fine passes (1-8) asked of a checkpoint whose global stage has no fine stage.

    A ``ValueError`` of its own so that a program can name its own setting (the node:
    ``registration.fine_passes``) beside the checkpoint's reason.
    """


class BuiltInFinePassesError(ValueError):
    """Fine passes asked of an ONNX graph that has another count built in (at its export).

    ``built_in``: the count the graph runs (0: none; None: its metadata does not record it,
    only the graph's own applies). A ``ValueError`` of its own so that a program can name its
    own setting and the count to ask for instead.
    """

    def __init__(self, message, built_in):
        """Say ``message`` of a graph that runs ``built_in`` fine passes."""
        super().__init__(message)
        self.built_in = built_in


def check_fine_passes(fine_passes, name='fine_passes', own=KEYWORD_OWN):
    """Raise ``ValueError`` naming ``name`` unless ``fine_passes`` is None or 0-8 passes.

    None: the checkpoint's own; else an integer in [0, :data:`MAX_FINE_PASSES`] (0: no fine
    pass), not a bool. ``own`` says how the caller asks for the model's own count
    (:data:`KEYWORD_OWN`, :data:`OPTION_OWN`).
    """
    if fine_passes is None:
        return
    if isinstance(fine_passes, bool) or not isinstance(fine_passes, numbers.Integral) \
            or not 0 <= fine_passes <= MAX_FINE_PASSES:
        raise ValueError(f'{name} must be an integer in [0, {MAX_FINE_PASSES}] (0: no fine '
                         f'pass; {own}), got {fine_passes!r}')


def fine_passes_option(text):
    """Return the value of a tool's ``--fine-passes N``: N, or None for -1 (the model's own).

    -1 asks for the model's own count, as leaving the option out does and as the node's
    ``registration.fine_passes`` -1 does; other values are checked by
    :func:`check_fine_passes` (``own=OPTION_OWN``).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'an integer in [0, {MAX_FINE_PASSES}] (0: no fine pass; {OPTION_OWN}), got '
            f'{text!r}') from None
    return None if value == -1 else value
