"""Training TarFuse (ROS-free, beside :mod:`tarfuse_ros.core`); ``tarfuse-train`` is its CLI.

- :mod:`~tarfuse_ros.training.config`: the config, one frozen dataclass per section;
- :mod:`~tarfuse_ros.training.datasets`: finding data sets, building the data set;
- :mod:`~tarfuse_ros.training.loaders`: epoch-aware DataLoaders;
- :mod:`~tarfuse_ros.training.seeds`: what every random draw is seeded from;
- :mod:`~tarfuse_ros.training.steps`: one optimisation step, one validation pass;
- :mod:`~tarfuse_ros.training.schedule`: learning-rate curve, horizon and time budget;
- :mod:`~tarfuse_ros.training.loop`: the :class:`~tarfuse_ros.training.loop.Trainer`;
- :mod:`~tarfuse_ros.training.state`: resumable training state;
- :mod:`~tarfuse_ros.training.logs`: ``log.jsonl``, curves, stem lists;
- :mod:`~tarfuse_ros.training.distributed`: DistributedDataParallel processes.
"""
