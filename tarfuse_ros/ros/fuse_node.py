"""The ``fuse_node`` executable: :func:`tarfuse_ros.ros.node.main` behind a quiet stop.

Importing the node loads PyTorch and OpenCV (about a second); a Ctrl-C, or the SIGTERM of
``ros2 launch`` shutting down, in that second ends the process with status 0 and no traceback
(rclpy handles both signals once it is initialised).
"""

import signal
import sys


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args=None):
    """Import and run the node; return its exit code (0 when stopped while importing)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from tarfuse_ros.ros.node import main as node_main
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return node_main(args)


if __name__ == '__main__':
    sys.exit(main())
