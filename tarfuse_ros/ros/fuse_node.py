"""The ``fuse_node`` executable: :func:`tarfuse_ros.ros.node.main` behind a quiet stop.

Importing the node loads rclpy and OpenCV (about half a second; PyTorch loads later, with the
model, once the configuration is checked); a Ctrl-C, or the SIGTERM of ``ros2 launch`` shutting
down, in that time ends the process with status 0 and no traceback (rclpy handles both signals
once it is initialised). The stop is remembered as well as raised
(:func:`tarfuse_ros.console.import_or_stop`): a library that swallows the ``KeyboardInterrupt``
in its import-time code (a bare ``except`` around an optional import) would otherwise let the
node start and run on after the stop.
"""

import signal
import sys

from tarfuse_ros.console import import_or_stop


def main(args=None):
    """Import and run the node; return its exit code (0 when stopped while importing)."""
    node = import_or_stop('tarfuse_ros.ros.node', (signal.SIGTERM, signal.SIGINT))
    if node is None:
        return 0
    code = node.main(args)
    # The process exits now: a late second Ctrl-C (a terminal, ros2 launch and tarfuse-demo
    # may each send one) must not raise KeyboardInterrupt in the interpreter's exit handlers
    # (PyTorch's library finalizers printed a traceback).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    return code


if __name__ == '__main__':
    sys.exit(main())
