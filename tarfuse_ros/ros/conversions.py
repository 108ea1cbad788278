"""
Conversions between ROS messages and the arrays / results of the ROS-free core.

Images are decoded directly with NumPy (OpenCV only for YUV 4:2:2), not through
``cv_bridge``: the node then behaves the same with the distro's ``cv_bridge`` (whose Jazzy
build needs NumPy 1.x) or the project's stand-in, and accepts what the real bridge refuses
(``8UC1`` as ``mono8``). Every problem with an input message is a ``ValueError`` whose
message names the cause.

Functions:
    image_msg_to_array(msg) -> (array, kind)   sensor_msgs/Image -> ndarray
    array_to_image_msg(array, encoding, header) -> sensor_msgs/Image
    detections_to_msg(detections, header, image_size=None) -> vision_msgs/Detection2DArray
"""

import array as _array
import math
import sys

from builtin_interfaces.msg import Time
import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

__all__ = ['array_to_image_msg', 'detections_to_msg', 'image_msg_to_array',
           'SUPPORTED_ENCODINGS']

# encoding -> (dtype, channels in the message, canonical kind of the returned array).
_DECODE = {
    'mono8': (np.uint8, 1, 'gray8'),
    '8uc1': (np.uint8, 1, 'gray8'),
    'mono16': (np.uint16, 1, 'gray16'),
    '16uc1': (np.uint16, 1, 'gray16'),
    'bgr8': (np.uint8, 3, 'bgr8'),
    'rgb8': (np.uint8, 3, 'bgr8'),
    'bgra8': (np.uint8, 4, 'bgr8'),
    'rgba8': (np.uint8, 4, 'bgr8'),
    '32fc1': (np.float32, 1, 'float32'),
    'yuv422': (np.uint8, 2, 'bgr8'),
    'uyvy': (np.uint8, 2, 'bgr8'),
    'yuv422_yuy2': (np.uint8, 2, 'bgr8'),
    'yuyv': (np.uint8, 2, 'bgr8'),
}
SUPPORTED_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1', 'bgr8', 'rgb8', 'bgra8', 'rgba8',
                       '32FC1', 'yuv422', 'yuv422_yuy2')

# encoding -> (dtype, channels) accepted by array_to_image_msg.
_ENCODE = {
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1),
    'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1),
    'bgr8': (np.uint8, 3), 'rgb8': (np.uint8, 3),
    'bgra8': (np.uint8, 4), 'rgba8': (np.uint8, 4),
    '32FC1': (np.float32, 1),
}


def _copy_header(header):
    stamp = Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
    return Header(stamp=stamp, frame_id=str(header.frame_id))


def image_msg_to_array(msg):
    """
    Decode a ``sensor_msgs/Image`` into a native-order NumPy array the core accepts.

    Returns ``(array, kind)``:

    * ``mono8`` / ``8UC1`` -> (H, W) uint8, ``'gray8'``
    * ``mono16`` / ``16UC1`` -> (H, W) uint16, ``'gray16'``
    * ``bgr8``, ``rgb8``, ``bgra8``, ``rgba8``, ``yuv422`` (UYVY), ``yuv422_yuy2`` (YUYV)
      -> (H, W, 3) uint8 in BGR order (alpha dropped), ``'bgr8'``
    * ``32FC1`` -> (H, W) float32, ``'float32'``

    Rows may be padded (``step`` > row size); ``is_bigendian`` data are byte-swapped. The
    array owns its memory (it does not alias ``msg.data``).
    Raises ``ValueError`` for an unsupported encoding, a zero size, a ``step`` shorter than a
    row, data shorter than ``step * height``, or NaN/inf in a float image.
    """
    encoding = str(msg.encoding)
    spec = _DECODE.get(encoding.strip().lower())
    if spec is None:
        raise ValueError(f'unsupported encoding {encoding!r}; supported: '
                         f'{", ".join(SUPPORTED_ENCODINGS)}')
    dtype, channels, kind = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f'zero-size image: {width}x{height} ({encoding})')
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if channels == 2 and width % 2:
        raise ValueError(f'{encoding} needs an even width, got {width}')
    if step < row_bytes:
        raise ValueError(f'step {step} is shorter than one row of {width} px x {channels} x '
                         f'{itemsize} B = {row_bytes} B ({encoding})')
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size < step * height:
        raise ValueError(f'data shorter than step * height: {buffer.size} B < {step} * '
                         f'{height} = {step * height} B ({encoding} {width}x{height})')
    wire = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    view = np.ndarray(shape=(height, width, channels), dtype=wire, buffer=buffer,
                      strides=(step, channels * itemsize, itemsize))
    image = view.astype(np.dtype(dtype), order='C', copy=True)  # native order, contiguous, owned
    key = encoding.strip().lower()
    if channels == 1:
        image = image.reshape(height, width)
        if kind == 'float32':
            finite = np.isfinite(image)
            if not finite.all():
                nan = int(np.isnan(image).sum())
                inf = int(image.size - finite.sum()) - nan
                raise ValueError(f'float image ({encoding} {width}x{height}) holds {nan} NaN '
                                 f'and {inf} inf values')
        return image, kind
    if key == 'bgr8':
        return image, kind
    if key == 'rgb8':
        return np.ascontiguousarray(image[..., ::-1]), kind
    if key == 'bgra8':
        return np.ascontiguousarray(image[..., :3]), kind
    if key == 'rgba8':
        return np.ascontiguousarray(image[..., 2::-1]), kind
    import cv2

    code = (cv2.COLOR_YUV2BGR_UYVY if key in ('yuv422', 'uyvy') else cv2.COLOR_YUV2BGR_YUY2)
    return cv2.cvtColor(image, code), kind


def array_to_image_msg(array, encoding, header=None):
    """
    Encode a NumPy image as a ``sensor_msgs/Image`` with the given ``header``.

    ``array`` is (H, W) or (H, W, 1) for one-channel encodings (``mono8``/``8UC1`` uint8,
    ``mono16``/``16UC1`` uint16, ``32FC1`` float32) and (H, W, 3) or (H, W, 4) uint8 for
    ``bgr8``/``rgb8`` and ``bgra8``/``rgba8``. The message is in native byte order with
    unpadded rows (``step = width * channels * itemsize``); ``header`` is copied (stamp and
    frame_id), an empty one is used when it is None.
    Raises ``ValueError`` for an unknown encoding or an array whose dtype/shape does not fit.
    """
    if encoding not in _ENCODE:
        raise ValueError(f'cannot encode {encoding!r}; supported: {", ".join(_ENCODE)}')
    dtype, channels = _ENCODE[encoding]
    if not isinstance(array, np.ndarray):
        raise ValueError(f'expected a numpy array, got {type(array).__name__}')
    if array.ndim == 3 and array.shape[2] == 1 and channels == 1:
        array = array[..., 0]
    expected = (2,) if channels == 1 else (3,)
    if array.ndim not in expected or (channels > 1 and array.shape[2] != channels):
        want = '(H, W)' if channels == 1 else f'(H, W, {channels})'
        raise ValueError(f'{encoding} needs a {want} array, got shape {array.shape}')
    if array.dtype != np.dtype(dtype):
        raise ValueError(f'{encoding} needs dtype {np.dtype(dtype).name}, got {array.dtype}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'zero-size image: shape {array.shape}')
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder('='))
    msg = Image()
    if header is not None:
        msg.header = _copy_header(header)
    msg.height, msg.width = int(data.shape[0]), int(data.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == 'big'
    msg.step = int(data.shape[1] * channels * data.itemsize)
    msg.data = _array.array('B', data.tobytes())
    return msg


def detections_to_msg(detections, header, image_size=None):
    """
    Build a ``vision_msgs/Detection2DArray`` from the engine's detections.

    ``detections``: objects with ``x1, y1, x2, y2`` (pixels of the image ``header`` names),
    ``score`` in [0, 1], ``class_id`` and ``class_name`` (``tarfuse_ros.core.engine.Detection``
    or anything with those attributes). The array and every Detection2D carry ``header``;
    each has ``id`` '' (no tracking), one result whose ``hypothesis.class_id`` is the class
    name (``str(class_id)`` when the name is empty) and ``score``, and a bbox with its centre
    and size in pixels (``theta`` 0). ``image_size=(width, height)`` clips boxes to the image.
    Raises ``ValueError`` for a non-finite or inverted box or a score outside [0, 1].
    """
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    out = Detection2DArray()
    out.header = _copy_header(header)
    for index, det in enumerate(detections):
        x1, y1, x2, y2 = (float(det.x1), float(det.y1), float(det.x2), float(det.y2))
        score = float(det.score)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise ValueError(f'detection {index}: non-finite box {(x1, y1, x2, y2)}')
        if x2 < x1 or y2 < y1:
            raise ValueError(f'detection {index}: inverted box x1={x1} y1={y1} x2={x2} y2={y2}')
        if not 0.0 <= score <= 1.0:
            raise ValueError(f'detection {index}: score {score} outside [0, 1]')
        if image_size is not None:
            width, height = float(image_size[0]), float(image_size[1])
            x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
            y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        item = Detection2D()
        item.header = _copy_header(header)
        item.id = ''
        hypothesis = ObjectHypothesisWithPose()
        name = str(getattr(det, 'class_name', '') or '')
        hypothesis.hypothesis.class_id = name if name else str(int(det.class_id))
        hypothesis.hypothesis.score = score
        item.results.append(hypothesis)
        item.bbox.center.position.x = (x1 + x2) / 2.0
        item.bbox.center.position.y = (y1 + y2) / 2.0
        item.bbox.center.theta = 0.0
        item.bbox.size_x = x2 - x1
        item.bbox.size_y = y2 - y1
        out.detections.append(item)
    return out
