"""The teachers' own detection accuracy on the evaluated images: a reference row.

The COCO teachers of ``shared/teachers`` (run by :mod:`tarfuse_ros.tools.pseudo_label`, which
holds their input/output formats and the COCO -> our class map) detect on the visible image
and on the aligned IR image of each labelled pair, exactly the images (same size) the model is
scored on. Three rows per teacher: ``visible``, ``ir`` and ``visible+ir`` (both images' boxes
pooled by class-wise NMS, as pseudo-labelling pools them). Candidates above the evaluation's
``conf`` are reduced by class-wise NMS at its ``iou`` (the model's NMS), at most 100 per image.

Evaluation-time only: nothing here is imported by the node or the engine.
"""

from pathlib import Path

import numpy as np

__all__ = ['SOURCES', 'TeacherReference', 'load_teacher']

SOURCES = ('visible', 'ir', 'visible+ir')


def load_teacher(spec, threads=1):
    """Load a teacher: ``'yolov8n'`` / ``'yolox'`` (from ``shared/teachers``) or an ONNX path.

    A path is tried as each known kind in turn (the kind is told by the model's input and
    output shapes).

    Raises:
        ValueError: unknown name, missing file, a model of neither kind, or no onnxruntime.

    """
    from tarfuse_ros.tools import pseudo_label as pl
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(f'--teacher needs onnxruntime (pip install onnxruntime): {exc}')
    if spec in pl.TEACHER_FILES:
        return pl.load_teachers(spec, threads=threads)[0]
    path = Path(spec)
    if path.suffix.lower() != '.onnx':  # as --weights: the suffix in any case
        raise ValueError(f'--teacher: expected one of {sorted(pl.TEACHER_FILES)} or an .onnx '
                         f'file, got {spec!r}')
    if not path.is_file():
        raise ValueError(f'--teacher: {spec!r} not found')
    errors = []
    for kind in pl.TEACHER_FILES:
        try:
            return pl.Teacher(kind, path, threads)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(f'--teacher: {spec!r} is no known teacher: '
                     + '; '.join(dict.fromkeys(errors)))


class TeacherReference:
    """Collect one teacher's detections on the evaluated pairs (module docstring).

    Args:
        teacher: a :class:`tarfuse_ros.tools.pseudo_label.Teacher`.
        model_class_names: the model's class names (teacher classes are mapped by name).
        conf: minimum candidate score.
        iou: class-wise NMS IoU.
        max_detections: per image.

    """

    def __init__(self, teacher, model_class_names, conf, iou, max_detections=100):
        from tarfuse_ros.tools import pseudo_label as pl
        self.teacher = teacher
        self.conf, self.iou, self.max_detections = float(conf), float(iou), int(max_detections)
        index = {name.lower(): i for i, name in enumerate(model_class_names)}
        self._to_model = np.array([index.get(n, -1) for n in pl.CLASS_NAMES], np.int64)
        self.predictions = {source: [] for source in SOURCES}

    def add(self, ir, vi):
        """Detect on one pair and keep the detections of each source.

        Args:
            ir: (H, W) aligned IR, uint8 or float in [0, 1] (a 16-bit IR as the evaluation
                normalises it), or None (no aligned IR: only ``visible``).
            vi: (H, W, 3) BGR or (H, W) grey uint8 visible image (the model's frame).

        """
        from tarfuse_ros.core.images import to_uint8
        from tarfuse_ros.tools import pseudo_label as pl
        vi_bgr = vi if vi.ndim == 3 else np.repeat(vi[:, :, None], 3, axis=2)
        found = {'visible': self.teacher.detect(vi_bgr, self.conf)}
        if ir is not None:
            ir = ir if ir.dtype == np.uint8 else to_uint8(ir)
            ir_bgr = np.repeat(ir[:, :, None], 3, axis=2)
            found['ir'] = self.teacher.detect(ir_bgr, self.conf)
            found['visible+ir'] = np.concatenate([found['visible'], found['ir']])
        for source in SOURCES:
            if source not in found:
                continue
            boxes = pl.pool_boxes([found[source]], self.iou, self.max_detections)
            boxes = boxes.astype(np.float64)
            boxes[:, 5] = self._to_model[boxes[:, 5].astype(np.int64)]
            self.predictions[source].append(boxes[boxes[:, 5] >= 0])

    def result(self, truths, class_names):
        """Return ``{source: detection figures}`` (sources scored on every pair) + provenance."""
        from tarfuse_ros.evaluation.detection import detection_summary
        from tarfuse_ros.tools import pseudo_label as pl
        out = {'kind': self.teacher.kind, 'model': str(self.teacher.path),
               'sha256': pl.file_sha256(self.teacher.path)}
        for source in SOURCES:
            preds = self.predictions[source]
            out[source] = (detection_summary(preds, truths, class_names, self.max_detections)
                           if preds and len(preds) == len(truths) else None)
        return out
