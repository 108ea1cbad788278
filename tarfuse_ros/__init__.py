"""TarFuse: target-aware fusion of unregistered infrared and visible images for ROS 2.

Importing the package sets ``YOLO_OFFLINE=1`` where the environment does not set it: the
package downloads nothing at run time, and ultralytics (imported with the model's detection
head) otherwise resolves two DNS names when it is imported (seconds of start-up on a robot
whose DNS server cannot be reached) and may pip-install packages from inside a running node
(its image opener does, for a payload Pillow cannot identify). Set ``YOLO_OFFLINE=0`` to give
ultralytics its network back.
"""
import os

os.environ.setdefault('YOLO_OFFLINE', '1')

__version__ = '0.1.0'
