"""The global stage's stream settings, checked without torch, in each caller's own words.

``global_every`` / ``global_window`` (a median of fits over a stream of pairs) and
``global_track`` (the map tracked pair by pair, :class:`~tarfuse_ros.core.engine.FusionEngine`)
are keywords of the engine, options of ``tarfuse-fuse`` (``--global-every``, ...) and
parameters of the node (``registration.global_every``, ...). All three check them here, and
each problem is said with the names its user typed (:class:`SettingNames`: :data:`KEYWORDS`,
:data:`OPTIONS`, :data:`PARAMETERS`).
"""

from dataclasses import dataclass
import numbers

__all__ = ['KEYWORDS', 'MAX_GLOBAL_EVERY', 'MAX_GLOBAL_TRACK', 'MAX_GLOBAL_WINDOW', 'OPTIONS',
           'PARAMETERS', 'SettingNames', 'StreamSettingError', 'check_stream_checkpoint',
           'check_stream_settings', 'stream_setting_problems']

MAX_GLOBAL_EVERY = 10000
MAX_GLOBAL_WINDOW = 1000
MAX_GLOBAL_TRACK = 10000


@dataclass(frozen=True)
class SettingNames:
    """How a caller names the stream settings (and the fine passes) in its messages.

    ``global_every``, ``global_window``, ``global_track``, ``fine_passes``: the names its user
    types. Templates with ``{name}`` and ``{value}``: ``given``, a setting given a value;
    ``give``, how to give one; ``default``, how to put one back to its default ``{value}``
    (``{name}`` may be two names joined by 'and'). ``fine_passes_on``: how to have the fine
    passes run (the model's own, or 1-8), with ``{name}`` the fine passes' name.
    """

    global_every: str
    global_window: str
    global_track: str
    fine_passes: str
    given: str
    give: str
    default: str
    fine_passes_on: str

    def given_as(self, name, value):
        """Return setting ``name`` given ``value``, as the user typed it."""
        return self.given.format(name=name, value=value)

    def give_as(self, name, value):
        """Return how to give setting ``name`` the value ``value``."""
        return self.give.format(name=name, value=value)

    def default_as(self, name, value):
        """Return how to put setting ``name`` back to its default ``value``."""
        return self.default.format(name=name, value=value)


# FusionEngine's keywords ('unset' = None, the model's own).
KEYWORDS = SettingNames(
    'global_every', 'global_window', 'global_track', 'fine_passes',
    given='{name}={value}', give='set {name} to {value}', default='set {name} to {value}',
    fine_passes_on="leave {name} unset (the model's own) or set it to 1-8")
# tarfuse-fuse's options (an option left out keeps its default).
OPTIONS = SettingNames(
    '--global-every', '--global-window', '--global-track', '--fine-passes',
    given='{name} {value}', give='give {name} {value}', default='leave out {name}',
    fine_passes_on="leave out {name} (the model's own) or give it 1-8")
# The node's parameters (registration.fine_passes -1 = the model's own).
PARAMETERS = SettingNames(
    'registration.global_every', 'registration.global_window', 'registration.global_track',
    'registration.fine_passes',
    given='{name}={value}', give='set {name} to {value}', default='set {name} to {value}',
    fine_passes_on="set {name} to -1 (the model's own) or 1-8")


class StreamSettingError(ValueError):
    """A stream setting refused; :meth:`named` says it with another caller's names.

    Its text names the engine's keywords (:data:`KEYWORDS`): a program that took the setting
    under another name says ``exc.named(OPTIONS)`` (or its own :class:`SettingNames`).
    """

    def __init__(self, say):
        """Say the problem with ``say(names)``, a function of a :class:`SettingNames`."""
        super().__init__(say(KEYWORDS))
        self._say = say

    def named(self, names):
        """Return the problem said with ``names`` (a :class:`SettingNames`)."""
        return self._say(names)


def _is_integer(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def stream_setting_problems(global_every, global_window, global_track, fine_passes,
                            names=KEYWORDS):
    """Return one message per problem of the stream settings (empty: none), said with ``names``.

    ``global_every`` an integer in [1, :data:`MAX_GLOBAL_EVERY`], ``global_window`` in [1,
    :data:`MAX_GLOBAL_WINDOW`], ``global_track`` in [0, :data:`MAX_GLOBAL_TRACK`] (0: off; a
    NumPy integer too, not a bool); ``global_track`` not with ``global_every`` or
    ``global_window`` above 1, nor with ``fine_passes`` 0 (None: the model's own; its range
    is :func:`~tarfuse_ros.core.fine_passes.check_fine_passes`'s). Needs no model: what a
    checkpoint lacks is :func:`check_stream_checkpoint`'s.
    """
    problems = []
    for name, value, high in ((names.global_every, global_every, MAX_GLOBAL_EVERY),
                              (names.global_window, global_window, MAX_GLOBAL_WINDOW)):
        if not _is_integer(value) or not 1 <= value <= high:
            problems.append(f'{name} must be an integer in [1, {high}], got {value!r}')
    if not _is_integer(global_track) or not 0 <= global_track <= MAX_GLOBAL_TRACK:
        problems.append(f'{names.global_track} must be an integer in [0, {MAX_GLOBAL_TRACK}] '
                        f'(0: off), got {global_track!r}')
    if problems or not global_track:
        return problems
    track = names.given_as(names.global_track, global_track)
    off = names.default_as(names.global_track, 0)
    if global_every > 1 or global_window > 1:
        both = f'{names.global_every} and {names.global_window}'
        problems.append(f'{track} tracks the map pair by pair, and {names.global_every} / '
                        f'{names.global_window} above 1 hold a median of fits: use one of the '
                        f'two ({off}, or {names.default_as(both, 1)})')
    if fine_passes == 0 and not isinstance(fine_passes, bool):
        fine = names.given_as(names.fine_passes, 0)
        passes_on = names.fine_passes_on.format(name=names.fine_passes)
        problems.append(f'{track} runs the fine passes alone on the tracked pairs, and {fine} '
                        f'turns them off: {passes_on}, or {off}')
    return problems


def check_stream_settings(global_every, global_window, global_track, fine_passes,
                          names=KEYWORDS):
    """Raise ``ValueError`` saying every problem of :func:`stream_setting_problems` (``; ``)."""
    problems = stream_setting_problems(global_every, global_window, global_track, fine_passes,
                                       names)
    if problems:
        raise ValueError('; '.join(problems))


def check_stream_checkpoint(global_every, global_window, global_track, checkpoint,
                            global_stage, fine_cell, fine_passes):
    """Raise :class:`StreamSettingError` when a checkpoint cannot run the stream settings.

    Args:
        global_every, global_window, global_track: settings :func:`check_stream_settings`
            passed.
        checkpoint: what the checkpoint is, for the message (its path, its configuration).
        global_stage: whether it has the orientation global stage.
        fine_cell, fine_passes: that stage's fine cell (0: no fine stage) and the fine passes
            it runs (after the ``fine_passes`` setting).
    """
    if (global_every > 1 or global_window > 1) and not global_stage:
        raise StreamSettingError(lambda names: (
            f'{names.global_every} / {names.global_window} above 1 need a checkpoint with the '
            f'orientation global stage; {checkpoint} has none: '
            + names.default_as(f'{names.global_every} and {names.global_window}', 1)))
    if global_track and not global_stage:
        raise StreamSettingError(lambda names: (
            f'{names.global_track} needs a checkpoint with the orientation global stage and at '
            f'least one fine pass; {checkpoint} has none: '
            + names.default_as(names.global_track, 0)))
    if global_track and (fine_cell <= 0 or fine_passes <= 0):
        raise StreamSettingError(lambda names: (
            f'{names.global_track} needs a checkpoint with the orientation global stage and at '
            f'least one fine pass; {checkpoint} has fine_cell {fine_cell}, fine_passes '
            f'{fine_passes}: ' + names.default_as(names.global_track, 0)
            + ('' if fine_cell <= 0 else ' or ' + names.give_as(names.fine_passes, '1-8'))))
