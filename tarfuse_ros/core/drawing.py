"""Drawing detections on images with OpenCV (one look for the node, the tools and the reports).

Boxes are drawn with OpenCV, never through ultralytics' plotting (its font check goes to the
network). Each class gets a fixed colour (seeded by its id) so that a class looks the same in
every image; ground-truth boxes, when given, are thin red boxes.
"""

import cv2
import numpy as np
from tarfuse_ros.core.images import to_uint8

__all__ = ['as_bgr8', 'class_colour', 'draw_detections']

_TRUTH_COLOUR = (0, 0, 255)


def as_bgr8(image):
    """Return an ``HxWx3`` uint8 BGR copy of a grey or BGR image (uint8, or float in [0, 1])."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image[:, :, :3].copy()


def class_colour(class_id):
    """Return the BGR colour of a class id (bright, fixed per id)."""
    return tuple(int(c) for c in np.random.default_rng(int(class_id)).integers(64, 256, 3))


def draw_detections(image, detections, targets=None, min_score=0.0):
    """Return a BGR copy of ``image`` with detections (and ground truth) drawn.

    Args:
        image: ``HxW`` grey or ``HxWx3`` BGR, uint8 or float in [0, 1].
        detections: objects with ``x1, y1, x2, y2`` (pixels), ``score``, ``class_id`` and
            ``class_name`` (e.g. :class:`tarfuse_ros.core.engine.Detection`).
        targets: optional ground truth, ``(M, 5)`` rows ``x1, y1, x2, y2, class`` in pixels,
            drawn first as thin red boxes.
        min_score: detections below this score are left out.

    Returns:
        uint8 ``HxWx3`` BGR image; line width and text size grow with the image.

    """
    canvas = as_bgr8(image)
    scale = max(0.35, min(canvas.shape[:2]) / 1000.0)
    if targets is not None:
        for x1, y1, x2, y2, _ in np.asarray(targets, np.float64).reshape(-1, 5):
            cv2.rectangle(canvas, (int(round(x1)), int(round(y1))),
                          (int(round(x2)), int(round(y2))), _TRUTH_COLOUR, 1)
    for det in detections:
        if det.score < min_score:
            continue
        colour = class_colour(det.class_id)
        p1 = (int(round(det.x1)), int(round(det.y1)))
        p2 = (int(round(det.x2)), int(round(det.y2)))
        cv2.rectangle(canvas, p1, p2, colour, 1 if scale < 0.6 else 2)
        label = f'{det.class_name} {det.score:.2f}'
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(p1[1] - th - base, 0)
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + tw, top + th + base), colour, -1)
        cv2.putText(canvas, label, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
