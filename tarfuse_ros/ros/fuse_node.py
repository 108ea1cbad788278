"""The ``fuse_node`` executable: :func:`tarfuse_ros.ros.node.main` behind a quiet stop.

Importing the node loads PyTorch and OpenCV (about a second); a Ctrl-C, or the SIGTERM of
``ros2 launch`` shutting down, in that second ends the process with status 0 and no traceback
(rclpy handles both signals once it is initialised). The stop is remembered as well as raised:
a library that swallows the ``KeyboardInterrupt`` in its import-time code (a bare ``except``
around an optional import) would otherwise let the node start and run on after the stop.
"""

import signal
import sys


class StopRequest:
    """Signal handler: remember the stop (``requested``), then raise ``KeyboardInterrupt``."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def install(self, numbers):
        """Handle the signals ``numbers``; return ``{number: previous handler}``.

        SIGINT stays ignored where the process was started so (a background job of a shell).
        """
        return {number: signal.signal(number, self) for number in numbers
                if number != signal.SIGINT or signal.getsignal(number) is not signal.SIG_IGN}


def main(args=None):
    """Import and run the node; return its exit code (0 when stopped while importing)."""
    stop = StopRequest()
    previous = stop.install((signal.SIGTERM, signal.SIGINT))
    try:
        from tarfuse_ros.ros.node import main as node_main
    except KeyboardInterrupt:
        return 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if stop.requested:  # raised inside the import and swallowed there
        return 0
    code = node_main(args)
    # The process exits now: a late second Ctrl-C (a terminal, ros2 launch and tarfuse-demo
    # may each send one) must not raise KeyboardInterrupt in the interpreter's exit handlers
    # (PyTorch's library finalizers printed a traceback).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    return code


if __name__ == '__main__':
    sys.exit(main())
