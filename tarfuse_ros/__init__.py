"""TarFuse: target-aware fusion of unregistered infrared and visible images for ROS 2.

Importing the package sets ``YOLO_OFFLINE=1`` where the environment does not set it: the
package downloads nothing at run time, and ultralytics (imported with the model's detection
head) otherwise resolves two DNS names when it is imported (seconds of start-up on a robot
whose DNS server cannot be reached) and may pip-install packages from inside a running node
(its image opener does, for a payload Pillow cannot identify). Set ``YOLO_OFFLINE=0`` to give
ultralytics its network back.

It also sets ``YOLO_VERBOSE=false`` where the environment does not set it: ultralytics then
logs its errors only (to stdout). The package uses its detection head, loss, NMS and AP code,
none of which has anything to tell our users, but its import printed 'Creating new Ultralytics
Settings ... file' (three lines) on the first run with a new settings folder, amid a tool's
results on stdout and in the node's log. Set ``YOLO_VERBOSE=true`` to see ultralytics'
messages; ``YOLO_CONFIG_DIR`` (where ultralytics keeps its settings) is left as it is set.
"""
import os

os.environ.setdefault('YOLO_OFFLINE', '1')
os.environ.setdefault('YOLO_VERBOSE', 'false')

__version__ = '0.1.0'
