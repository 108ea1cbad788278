"""ROS 2 layer: message conversions and the fusion node."""
