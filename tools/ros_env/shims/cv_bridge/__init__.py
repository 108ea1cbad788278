"""
A small, API-compatible subset of ROS 2 ``cv_bridge`` (Python), written for tarfuse_ros.

tarfuse_ros's own code, installed only into the project's virtualenv on machines without a
ROS distro (see ``tools/ros_env/shims/README.md``); a ROS install uses the distro's package.
"""

from cv_bridge.core import CvBridge, CvBridgeError, getCvType

__all__ = ['CvBridge', 'CvBridgeError', 'getCvType']

# Marks this package as tarfuse_ros's stand-in (tests use it to tell it from the distro's).
__tarfuse_shim__ = True
