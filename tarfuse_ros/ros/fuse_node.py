"""The ``fuse_node`` executable: :func:`tarfuse_ros.ros.node.main` behind a quiet stop.

Importing the node loads rclpy and OpenCV (about half a second; PyTorch loads later, with the
model, once the configuration is checked); a Ctrl-C, or the SIGTERM of ``ros2 launch`` shutting
down, in that time ends the process with status 0 and no traceback (rclpy handles both signals
once it is initialised). The stop is remembered as well as raised
(:func:`tarfuse_ros.console.import_or_stop`): a library that swallows the ``KeyboardInterrupt``
in its import-time code (a bare ``except`` around an optional import) would otherwise let the
node start and run on after the stop.

The node has no options of its own: its parameters and remappings are ROS arguments, after
``--ros-args``. Any other argument is refused before the import (rcl would drop it, or take a
bare ``name:=value`` for a topic remapping, and the node would run on its defaults), and
``--help`` prints how to give them.
"""

import shlex
import signal
import sys

from tarfuse_ros.console import import_or_stop

USAGE = """\
usage: fuse_node [--ros-args [-p NAME:=VALUE] [--params-file FILE] [-r FROM:=TO] ...]

The tarfuse_ros fusion node: an infrared and a visible image topic in, the fused image (in the
visible camera's frame) and the detections out. It has no options of its own: parameters,
parameters files and topic remappings are ROS arguments, given after --ros-args, e.g.

  fuse_node --ros-args --params-file config/tarfuse.yaml -p device:=cuda \\
      -r infrared/image_raw:=/thermal/image_raw -r visible/image_raw:=/camera/image_raw

On a ROS install: ros2 run tarfuse_ros fuse_node --ros-args ..., or ros2 launch tarfuse_ros
fuse.launch.py. The parameters are commented in config/tarfuse.yaml and listed in the
README's "Parameters"; ros2 param describe /tarfuse NAME describes one while the node runs.
"""

# rcl's flags that take a value, after --ros-args.
ROS_FLAGS = ('-p', '--param', '-r', '--remap', '--params-file', '-e', '--enclave',
             '--log-level')


def own_arguments(argv):
    """Return the arguments of ``argv`` outside its ``--ros-args`` spans (``--`` ends one)."""
    own, in_ros_args = [], False
    for argument in argv:
        if argument == '--ros-args':
            in_ros_args = True
        elif in_ros_args and argument == '--':
            in_ros_args = False
        elif not in_ros_args:
            own.append(argument)
    return own


def are_ros_arguments(arguments):
    """Return whether ``arguments`` are flags of rcl, each with its value (``-p a:=1``)."""
    flags, values = arguments[::2], arguments[1::2]
    return len(flags) == len(values) and all(flag in ROS_FLAGS for flag in flags)


def refusal(own):
    """Return the line that refuses the node's own arguments ``own``."""
    given = shlex.join(own)  # a command to copy: a path with a space stays one argument
    hint = f'; did you mean: fuse_node --ros-args {given}' if are_ros_arguments(own) else ''
    return (f'fuse_node: error: arguments outside --ros-args: {given}; the node has no options '
            f'of its own: parameters, parameters files and remappings go after --ros-args '
            f'(fuse_node --ros-args -p NAME:=VALUE -r FROM:=TO){hint}; fuse_node --help says '
            f'more')


def main(args=None):
    """Import and run the node; return its exit code (0 when stopped while importing).

    ``--help`` prints the usage (0); other arguments outside ``--ros-args`` are refused (2).
    """
    own = own_arguments((sys.argv if args is None else args)[1:])
    if '-h' in own or '--help' in own:
        print(USAGE, end='')
        return 0
    if own:
        print(refusal(own), file=sys.stderr)
        return 2
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
