"""ROS-free core: model, losses, data, metrics, checkpoints and the inference engine."""
