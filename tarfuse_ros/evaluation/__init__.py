"""Evaluating a TarFuse checkpoint (ROS-free); ``tarfuse-eval`` is its command line.

- :mod:`~tarfuse_ros.evaluation.options`: :class:`~tarfuse_ros.evaluation.options.EvalOptions`;
- :mod:`~tarfuse_ros.evaluation.inputs`: preparing and deforming one pair, labels, landmarks;
- :mod:`~tarfuse_ros.evaluation.protocol`: the per-pair protocol and :func:`evaluate`;
- :mod:`~tarfuse_ros.evaluation.baselines`: the baselines scored beside the model;
- :mod:`~tarfuse_ros.evaluation.contrast`: target contrast of labelled boxes, day / night;
- :mod:`~tarfuse_ros.evaluation.detection`: detection AP (ultralytics' validation code);
- :mod:`~tarfuse_ros.evaluation.teachers`: the COCO teachers' accuracy as reference rows;
- :mod:`~tarfuse_ros.evaluation.aggregate`: means over pairs, detection AP, ``metrics.json``;
- :mod:`~tarfuse_ros.evaluation.figures`: per-pair figures;
- :mod:`~tarfuse_ros.evaluation.report`: ``report.md``.
"""
