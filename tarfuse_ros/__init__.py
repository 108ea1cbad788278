"""TarFuse: target-aware fusion of unregistered infrared and visible images for ROS 2."""
__version__ = '0.1.0'
