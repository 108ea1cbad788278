"""The ``fuse_node`` executable: :func:`tarfuse_ros.ros.node.main` behind a quiet Ctrl-C.

Importing the node loads PyTorch and OpenCV (about a second); a Ctrl-C (or the SIGINT of
``ros2 launch`` shutting down) in that second ends the process without a traceback.
"""

import sys


def main(args=None):
    """Import and run the node; return its exit code (0 when interrupted while importing)."""
    try:
        from tarfuse_ros.ros.node import main as node_main
    except KeyboardInterrupt:
        return 0
    return node_main(args)


if __name__ == '__main__':
    sys.exit(main())
