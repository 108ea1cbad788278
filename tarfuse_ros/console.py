"""The console scripts: each imports its program, then runs its ``main``, quiet on Ctrl-C.

Importing a tool loads PyTorch and OpenCV: seconds on a busy machine, before the tool's
``main`` (which handles Ctrl-C from then on) runs. A console script that named ``tool:main``
printed a Python traceback for a Ctrl-C in that time. The console scripts of ``setup.py`` name
the functions here instead: a Ctrl-C while the tool imports ends it with one line,
``<program>: interrupted while starting; nothing was done``, and exit status 130, as a Ctrl-C
later on does. This module imports nothing heavy.
"""

import argparse
from contextlib import contextmanager
import importlib
import signal
import sys
import threading

__all__ = ['HelpFormatter', 'InterruptedWhenComplete', 'StopRequest', 'calibrate', 'demo',
           'evaluate', 'export', 'fuse', 'import_or_stop', 'install_handler', 'interrupts_held',
           'make_bag', 'play', 'pseudo_label', 'terminate_as_interrupt', 'time_offset', 'train']


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, but no ``(default: None)`` / ``(default: [])`` after an option.

    Such an option's help says what leaving it out does ('default: the shipped model' read
    '(default: None)' after it).
    """

    def _get_help_string(self, action):
        if action.default is None or action.default in ((), []):
            return action.help
        return super()._get_help_string(action)


class StopRequest:
    """Signal handler: remember the stop (``requested``), then raise ``KeyboardInterrupt``.

    With ``once``, only the first signal raises; later ones are remembered only, so that they
    cannot interrupt the stop the first one began.
    """

    def __init__(self, once=False):
        self.requested = False
        self.once = once

    def __call__(self, signum, frame):
        again = self.requested
        self.requested = True
        if not (again and self.once):
            raise KeyboardInterrupt

    def install(self, numbers):
        """Handle the signals ``numbers``; return ``{number: previous handler}``.

        SIGINT stays ignored where the process was started so (:func:`install_handler`).
        """
        return install_handler(self, numbers)

    def restore(self, previous):
        """Put back the handlers :meth:`install` returned; after a stop, ignore the signals.

        The process is then ending: a second Ctrl-C (terminals and ``ros2 launch`` send more
        than one) must not raise in the interpreter's exit handlers.
        """
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_IGN if self.requested else handler)


def install_handler(handler, numbers):
    """Make ``handler`` handle the signals ``numbers``; return ``{number: previous handler}``.

    SIGINT stays ignored where the process was started so (a background job of a shell), and
    is then left out of the returned dict.
    """
    return {number: signal.signal(number, handler) for number in numbers
            if number != signal.SIGINT or signal.getsignal(number) is not signal.SIG_IGN}


class InterruptedWhenComplete(KeyboardInterrupt):
    """A SIGINT or SIGTERM that came while a tool's complete outputs were put in place.

    They were all put in place first (:func:`interrupts_held`): ``result`` is what the tool's
    function returns; ``message`` says what was complete.
    """

    def __init__(self, result, message):
        super().__init__(message)
        self.result = result


@contextmanager
def interrupts_held(stops):
    """Hold SIGINT and SIGTERM back while the block runs; append those that came to ``stops``.

    Only on the main thread (the only one that handles signals); a SIGINT that the process
    ignores (a shell's background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = install_handler(lambda signum, frame: stops.append(signum),
                               (signal.SIGINT, signal.SIGTERM))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM raises KeyboardInterrupt (on the main thread only).

    For tools that stop on SIGTERM (a timeout, kill, a job scheduler) as on Ctrl-C, saying
    what is left; the handler from before is put back after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which stays
            signal.signal(signal.SIGTERM, previous)


def import_or_stop(module, signals=(signal.SIGINT,)):
    """Import ``module`` and return it, or return None when one of ``signals`` came meanwhile.

    A signal raises ``KeyboardInterrupt`` in the import. One that the import swallowed (a
    library's bare ``except`` around an optional import) stops it all the same, once the import
    is done. After a stop the signals stay ignored (the process is ending: a second Ctrl-C must
    not raise in its exit handlers); else the handlers from before are back.
    """
    stop = StopRequest(once=True)
    previous = stop.install(signals)
    loaded = None
    try:
        loaded = importlib.import_module(module)
    except KeyboardInterrupt:
        stop.requested = True
    except Exception:  # a library that turned the interrupt into an error of its own
        if not stop.requested:
            raise
    finally:
        stop.restore(previous)
    return None if stop.requested else loaded


def _script(module, program, signals=(signal.SIGINT,)):
    """Return the console script of ``program``: :func:`import_or_stop`, then ``module.main()``.

    Exit status 130 after a Ctrl-C while importing, with one line, and for one that ``main``
    lets through (a tool's own handling says more). ``signals``: those that stop the import so;
    SIGTERM too for the tools that stop on it as on Ctrl-C (a SIGTERM while they imported
    PyTorch killed them silently, status 143).
    """
    def script():
        tool = import_or_stop(module, signals)
        if tool is None:
            print(f'{program}: interrupted while starting; nothing was done', file=sys.stderr)
            return 130
        try:
            status = tool.main()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the process ends: no second one
            print(f'{program}: interrupted', file=sys.stderr)
            return 130
        if status == 130:
            # Stopped by a signal, its work saved: the process ends. A second signal (the
            # SIGTERM ros2 launch sends after SIGINT, a second Ctrl-C) killed it meanwhile
            # (status -15) or raised in its exit handlers.
            for number in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(number) is not signal.SIG_IGN:
                    signal.signal(number, signal.SIG_IGN)
        return status

    script.__doc__ = f'Run ``{program}`` (``{module}.main``); return its exit status.'
    return script


# The tools whose main stops on SIGTERM as on Ctrl-C (README, "Stopping a tool").
_TERM = (signal.SIGINT, signal.SIGTERM)
train = _script('tarfuse_ros.tools.train', 'tarfuse-train', _TERM)
evaluate = _script('tarfuse_ros.tools.evaluate', 'tarfuse-eval', _TERM)
make_bag = _script('tarfuse_ros.tools.make_bag', 'tarfuse-make-bag')
play = _script('tarfuse_ros.tools.play_bag', 'tarfuse-play', _TERM)
demo = _script('tarfuse_ros.tools.demo', 'tarfuse-demo', _TERM)
fuse = _script('tarfuse_ros.tools.fuse', 'tarfuse-fuse', _TERM)
export = _script('tarfuse_ros.tools.export', 'tarfuse-export', _TERM)
pseudo_label = _script('tarfuse_ros.tools.pseudo_label', 'tarfuse-pseudo-label', _TERM)
calibrate = _script('tarfuse_ros.tools.calibrate', 'tarfuse-calibrate')
time_offset = _script('tarfuse_ros.tools.time_offset', 'tarfuse-time-offset')
