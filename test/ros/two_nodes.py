"""Two fusion nodes in one process, as a program serving two camera rigs would run them.

Usage: python two_nodes.py --ros-args --params-file FILE ... (sections per node, or ``/**``).
The nodes are ``/rig_a/tarfuse`` and ``/rig_b/tarfuse``, spun by one multi-threaded executor
until Ctrl-C or SIGTERM, then stopped as :func:`tarfuse_ros.ros.node.main` stops its node; a
node that cannot start is said as main says it (FATAL, exit status 1).
"""

import sys

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from tarfuse_ros.ros.node import StartupError, TarFuseNode

NAMESPACES = ('/rig_a', '/rig_b')


def main():
    """Run both nodes until stopped; return the exit code."""
    rclpy.init(args=sys.argv)
    nodes = []
    code = 0
    try:
        for namespace in NAMESPACES:
            nodes.append(TarFuseNode(argv=sys.argv, namespace=namespace))
        executor = MultiThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except StartupError as exc:
        rclpy.logging.get_logger('two_nodes').fatal(str(exc))
        code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
