"""Everything that touches ultralytics: the ``Detect`` head, its training loss and NMS.

ultralytics is a moving target (classes move between modules, private attributes change), so
the rest of the package reaches it only through this module. Checked against
:data:`ULTRALYTICS_VERSION`; ``test/core/test_yolo.py`` pins that version and exercises every
call below, so an upgrade fails there first, by name.

What we rely on (ultralytics 8.4.190):

- ``ultralytics.nn.modules.head.Detect(nc, reg_max, ch)``: in training mode it returns a dict
  ``boxes`` / ``scores`` / ``feats``; in eval mode ``(y, dict)`` with ``y`` (B, 4 + nc, anchors):
  ``cx, cy, w, h`` in input pixels, then class probabilities. Its strides must be set and
  ``bias_init()`` called (it assumes 640 px images); ``legacy = True`` selects YOLOv8's exact
  classification branch. It caches its anchors in ``shape`` (per feature-map shape only),
  unless ``dynamic`` is true (then it builds them on every call, as tracing needs).
- ``ultralytics.utils.loss.v8DetectionLoss(model)`` reads ``model.args`` (box / cls / dfl
  gains), ``model.model[-1]`` (the ``Detect``) and ``model.parameters()`` (the device); it
  returns the (3,) loss multiplied by the batch size and a dict of the detached terms.
- ``ultralytics.utils.nms.non_max_suppression`` (moved there from ``utils.ops``).
"""

from types import SimpleNamespace

import torch
from ultralytics.nn.modules.head import Detect

__all__ = ['DETECT_STRIDES', 'Detect', 'LegacyDetect', 'ULTRALYTICS_VERSION', 'anchors_every_call',
           'build_detect', 'detection_criterion', 'forget_anchors', 'non_max_suppression']

ULTRALYTICS_VERSION = '8.4.190'
DETECT_STRIDES = (8.0, 16.0, 32.0)


class LegacyDetect(Detect):
    """``Detect`` with the exact YOLOv8 classification branch (``legacy = True``)."""

    legacy = True


def build_detect(num_classes, reg_max=16, channels=(64, 96, 128), legacy=False):
    """Return an ultralytics ``Detect`` for P3/P4/P5 with strides set and biases initialised.

    Eval mode returns ``(y, preds)`` (or ``y`` alone when ``export`` is set) with ``y`` of shape
    ``(B, 4 + nc, anchors)`` (xywh in input pixels, class probabilities); train mode returns the
    dict ``boxes`` / ``scores`` / ``feats`` that :func:`detection_criterion` takes.
    """
    cls = LegacyDetect if legacy else Detect
    detect = cls(nc=int(num_classes), reg_max=int(reg_max), ch=tuple(int(c) for c in channels))
    detect.stride = torch.tensor(DETECT_STRIDES)
    detect.bias_init()
    return detect


def forget_anchors(detect):
    """Drop ``Detect``'s cached anchors (call after moving or casting it: they are rebuilt)."""
    detect.shape = None


def anchors_every_call(detect):
    """Make ``detect`` build its anchors on every call (ultralytics' ``dynamic = True``).

    For tracing (ONNX export with dynamic height and width): a cached anchor grid would be
    frozen into the graph at the traced size. Eager inference keeps the cache (faster).
    """
    detect.dynamic = True


class _DetectHost:
    """The minimal model face ``v8DetectionLoss`` reads: ``.args``, ``.model[-1]``, params."""

    def __init__(self, detect, hyp):
        self.args = hyp
        self.model = [detect]
        self._detect = detect

    def parameters(self):
        return self._detect.parameters()


def detection_criterion(detect, box=7.5, cls=0.5, dfl=1.5):
    """Return ultralytics' YOLO loss (box CIoU, class BCE, DFL) for ``detect``.

    Build it again when ``detect`` moves to another device (it keeps device tensors).
    ``criterion(preds, targets) -> (loss, items)``: ``preds`` the train-mode dict, ``targets``
    ``batch_idx`` (N,) float, ``cls`` (N, 1), ``bboxes`` (N, 4) normalised cxcywh; ``loss``
    (3,) is ``box, cls, dfl`` times their gains, multiplied by the batch size; ``items`` the
    dict ``box_loss``, ``cls_loss``, ``dfl_loss`` of the same terms per image, detached.
    """
    from ultralytics.utils.loss import v8DetectionLoss
    hyp = SimpleNamespace(box=float(box), cls=float(cls), dfl=float(dfl))
    return v8DetectionLoss(_DetectHost(detect, hyp))


def non_max_suppression(pred, conf, iou, classes=None, max_det=100, num_classes=0):
    """Run ultralytics' NMS on eval-mode ``Detect`` output.

    Args:
        pred: ``(B, 4 + nc, anchors)`` (``cx, cy, w, h`` in input pixels, class probabilities).
        conf, iou: confidence and IoU thresholds.
        classes: class ids to keep (``None``: all).
        max_det: detections kept per image.
        num_classes: ``nc``.

    Returns:
        list of ``(n, 6)`` tensors per image: ``x1, y1, x2, y2, score, class`` in input pixels.

    Ultralytics' time limit (2 s + 0.05 s an image) is lifted: past it, the images after the
    current one would be returned without boxes, with a log line only (a busy CPU, a first CUDA
    call), and detections missing look like nothing found.
    """
    from ultralytics.utils.nms import non_max_suppression as nms
    return nms(pred, conf_thres=conf, iou_thres=iou, classes=list(classes) if classes else None,
               max_det=max_det, nc=num_classes, max_time_img=float('inf'))
