"""One way to draw detections: class colours, labels, ground truth, score filter."""

import numpy as np
from tarfuse_ros.core.drawing import as_bgr8, class_colour, draw_detections
from tarfuse_ros.core.engine import Detection


def test_boxes_labels_and_ground_truth():
    grey = np.zeros((120, 160), np.uint8)
    det = Detection(20.0, 30.0, 80.0, 90.0, 0.9, 2, 'car')
    weak = Detection(100.0, 10.0, 150.0, 50.0, 0.1, 0, 'person')
    out = draw_detections(grey, [det, weak], targets=[[5, 5, 15, 15, 0]], min_score=0.25)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8 and not grey.any()
    assert tuple(out[60, 20]) == class_colour(2)  # the box's left edge
    assert tuple(out[10, 5]) == (0, 0, 255)  # ground truth in red
    assert not out[30:50, 120:150].any()  # below min_score: not drawn
    assert class_colour(2) == class_colour(2) and class_colour(0) != class_colour(2)


def test_bgr8_from_float_and_grey():
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(as_bgr8(unit)[0, :, 0], [0, 128, 255])
    bgr = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    out = as_bgr8(bgr)
    np.testing.assert_array_equal(out, bgr)
    assert out is not bgr
