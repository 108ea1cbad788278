"""
Conversions between ROS messages and the arrays / results of the ROS-free core.

Images are decoded and encoded by ``cv_bridge`` (``imgmsg_to_cv2``, ``compressed_imgmsg_to_cv2``,
``cv2_to_imgmsg``, ``cv2_to_compressed_imgmsg``): the distro's on a ROS install, the project's
stand-in (``tools/ros_env/shims``) in the no-distro venv. This module is the one small adapter
around it, for what the bridge leaves to its callers or does differently:

* the array the engine takes per encoding: grey stays one channel (``8UC1`` is read like
  ``mono8``, which the real bridge refuses to convert, vision_opencv #175), every colour
  encoding (``rgb8``, ``bgra8``, ``yuv422``, ``bayer_*``, ...) becomes BGR, 16-bit stays 16-bit;
* checks with messages naming the cause (unknown encoding, zero size, short rows or data, NaN,
  an undecodable compressed payload) where the bridge would raise a bare ``TypeError`` or
  return None; every problem with an input message is a ``ValueError``;
* a compressed colour payload's channel order as image_transport reads its ``format``
  (``'rgb8; png compressed rgb8'`` holds RGB; the bridge ignores ``format``);
* libjpeg's and libpng's warnings of a payload they decode all the same (a damaged JPEG),
  taken off stderr for the caller to report (OpenCV lets them print and tells nothing): the
  process's stderr passes through a pipe and a relay process from the first such decoding on;
* a compressed payload's size is read from its header (Pillow) before it is decoded, and one of
  more than ``MAX_DECODED_PIXELS`` (twice 7680x4320) is refused undecoded: a PNG of 1.2 MB
  stating 20000x20000 took 4-6 s and 2.4 GB to decode; so is one whose size Pillow cannot read
  (corrupt, or a format it does not identify: PAM, PFM, Radiance HDR);
* rows padded by a number of bytes that is not a whole number of pixels (the real bridge reads
  ``step // (itemsize * channels)`` pixels per row) are repacked before decoding;
* the decoded array owns its memory (the bridge may return a view of ``msg.data``);
* compressed output carries image_transport's ``format`` (``'bgr8; jpeg compressed bgr8'``);
* image_transport's ``compressedDepth`` transport (a 16UC1 / 32FC1 thermal image): its 12-byte
  header, then a 16-bit PNG, decoded as compressed_depth_image_transport does (the 32FC1
  inverse quantisation; its ``format`` read by :mod:`tarfuse_ros.core.compressed_depth`); on
  the plain compressed transport such a payload is refused by name.

The bag tools (``tarfuse_ros.tools.bagio``) decode and encode through the same functions, so
the project has one codec.

Functions:
    image_msg_to_array(msg) -> (array, kind)   sensor_msgs/Image or CompressedImage -> ndarray
    compressed_msg_to_array(msg, max_pixels=MAX_DECODED_PIXELS, size_checked=False,
                            codec_warnings=None) -> (array, kind)
    image_msg_to_motion_array(msg, max_side, codec_warnings=None) -> array, shrunk
    compressed_size(msg, max_pixels=MAX_DECODED_PIXELS) -> (height, width) or None, undecoded
    compressed_depth_msg_to_array(msg, max_pixels=MAX_DECODED_PIXELS, codec_warnings=None)
        -> (array, kind)                         a compressedDepth CompressedImage -> ndarray
    compressed_depth_size(msg, max_pixels=MAX_DECODED_PIXELS) -> (height, width) or None
    array_to_compressed_depth_msg(array, header=None, encoding=None, ...) -> CompressedImage
    jpeg_of_16_bit_image(msg) -> the 16-bit encoding a CompressedImage holds as 8-bit JPEG, or None
    array_to_image_msg(array, encoding, header) -> sensor_msgs/Image
    array_to_compressed_msg(array, header, fmt='jpeg') -> sensor_msgs/CompressedImage
    detections_to_msg(detections, header, image_size=None) -> vision_msgs/Detection2DArray
    restamped(msg, stamp_ns) -> a copy of msg with its header stamped stamp_ns
    settle_stderr(timeout=5.0) -> returns once what was written to stderr is through that pipe
"""

import atexit
import copy
from functools import lru_cache
import io
import math
import os
import re
import select
import struct
import subprocess
import sys
import threading
import time
import warnings

from builtin_interfaces.msg import Time
import numpy as np
import PIL.Image
import PIL.PngImagePlugin
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from tarfuse_ros.core.compressed_depth import (compressed_depth_format,
                                               compressed_depth_format_string, DEPTH_KINDS,
                                               names_compressed_depth)
from tarfuse_ros.core.sizes import MAX_DECODED_PIXELS
from tarfuse_ros.ros import stderr_relay

__all__ = ['array_to_compressed_depth_msg', 'array_to_compressed_msg', 'array_to_image_msg',
           'compressed_depth_msg_to_array', 'compressed_depth_size',
           'compressed_msg_to_array', 'compressed_size', 'COMPRESSED_DEPTH_HEADER_BYTES',
           'COMPRESSED_FORMATS', 'detections_to_msg', 'image_msg_to_array',
           'jpeg_of_16_bit_image', 'load_bridge', 'MAX_DECODED_PIXELS', 'restamped',
           'settle_stderr', 'SUPPORTED_ENCODINGS']

_BAYER = tuple(f'bayer_{p}{bits}' for bits in (8, 16) for p in ('rggb', 'bggr', 'gbrg', 'grbg'))

# Accepted encoding (lower case) -> (name the bridge knows, what to ask the bridge for, kind of
# the returned array, dtype and channels of the message's pixels).
_DECODE = {
    'mono8': ('mono8', 'passthrough', 'gray8', np.uint8, 1),
    '8uc1': ('8UC1', 'passthrough', 'gray8', np.uint8, 1),
    'mono16': ('mono16', 'passthrough', 'gray16', np.uint16, 1),
    '16uc1': ('16UC1', 'passthrough', 'gray16', np.uint16, 1),
    '32fc1': ('32FC1', 'passthrough', 'float32', np.float32, 1),
    'bgr8': ('bgr8', 'passthrough', 'bgr8', np.uint8, 3),
    'rgb8': ('rgb8', 'bgr8', 'bgr8', np.uint8, 3),
    'bgra8': ('bgra8', 'bgr8', 'bgr8', np.uint8, 4),
    'rgba8': ('rgba8', 'bgr8', 'bgr8', np.uint8, 4),
    'bgr16': ('bgr16', 'passthrough', 'bgr16', np.uint16, 3),
    'rgb16': ('rgb16', 'bgr16', 'bgr16', np.uint16, 3),
    'bgra16': ('bgra16', 'bgr16', 'bgr16', np.uint16, 4),
    'rgba16': ('rgba16', 'bgr16', 'bgr16', np.uint16, 4),
    # Generic types, as cv_bridge names an OpenCV array sent with 'passthrough': BGR(A) order
    # (OpenCV's), alpha dropped after decoding (the bridge converts no generic type to bgr8).
    '8uc3': ('8UC3', 'passthrough', 'bgr8', np.uint8, 3),
    '8uc4': ('8UC4', 'passthrough', 'bgr8', np.uint8, 4),
    '16uc3': ('16UC3', 'passthrough', 'bgr16', np.uint16, 3),
    '16uc4': ('16UC4', 'passthrough', 'bgr16', np.uint16, 4),
    # UYVY and YUYV have two names each; older bridges know only the yuv422* ones.
    'yuv422': ('yuv422', 'bgr8', 'bgr8', np.uint8, 2),
    'uyvy': ('yuv422', 'bgr8', 'bgr8', np.uint8, 2),
    'yuv422_yuy2': ('yuv422_yuy2', 'bgr8', 'bgr8', np.uint8, 2),
    'yuyv': ('yuv422_yuy2', 'bgr8', 'bgr8', np.uint8, 2),
}
for _name in _BAYER:  # demosaiced by the bridge (one OpenCV call)
    _DECODE[_name] = ((_name, 'bgr8', 'bgr8', np.uint8, 1) if _name.endswith('8')
                      else (_name, 'bgr16', 'bgr16', np.uint16, 1))
del _name
SUPPORTED_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1', '32FC1', 'bgr8', 'rgb8', 'bgra8',
                       'rgba8', '8UC3', '8UC4', 'bgr16', 'rgb16', 'bgra16', 'rgba16', '16UC3',
                       '16UC4', 'yuv422', 'yuv422_yuy2', 'uyvy', 'yuyv') + _BAYER

# encoding -> (dtype, channels) accepted by array_to_image_msg.
_ENCODE = {
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1),
    'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1),
    'bgr8': (np.uint8, 3), 'rgb8': (np.uint8, 3),
    'bgra8': (np.uint8, 4), 'rgba8': (np.uint8, 4),
    '32FC1': (np.float32, 1),
}
# Compressed formats we write: name in image_transport's format string -> OpenCV extension.
COMPRESSED_FORMATS = {'jpeg': 'jpg', 'png': 'png'}


@lru_cache(maxsize=1)
def load_bridge():
    """
    Return the process's ``cv_bridge.CvBridge``; raise ``RuntimeError`` saying what to do.

    On Jazzy/Humble the distro's cv_bridge is built against NumPy 1.x: with NumPy 2 in the
    environment its import fails, hence the hint.
    """
    try:
        from cv_bridge import CvBridge
        return CvBridge()
    except Exception as exc:  # noqa: BLE001 - ImportError, or NumPy ABI errors of any type
        raise RuntimeError(
            f'cv_bridge cannot be loaded ({exc!r}): on a ROS install use the distro package '
            "(apt/rosdep) with 'numpy<2' in the Python environment; without a distro run "
            'tools/ros_env/setup_env.sh, which installs the stand-in of the project') from exc


def _bridge_errors():
    """Return the exception types a cv_bridge call may raise for bad data."""
    import cv2
    from cv_bridge import CvBridgeError
    return (CvBridgeError, cv2.error, TypeError, ValueError, RuntimeError)


def _copy_header(header):
    stamp = Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
    return Header(stamp=stamp, frame_id=str(header.frame_id))


def restamped(msg, stamp_ns):
    """Return a shallow copy of ``msg`` (any message with a header) stamped ``stamp_ns``.

    The header is a new one (``frame_id`` kept); the payload is shared, not copied. ``msg``
    itself is left as it is: other callbacks of its subscription may hold it. Raises
    ``ValueError`` for a stamp before 0 (``builtin_interfaces/Time`` cannot hold it).
    """
    if stamp_ns < 0:
        raise ValueError(f'stamp must be >= 0 ns, got {stamp_ns}')
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    copied = copy.copy(msg)
    copied.header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=msg.header.frame_id)
    return copied


def _owned(image):
    """Return ``image`` as a C-contiguous, native-order array that owns its memory."""
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder('='))
    if not image.flags.c_contiguous or not image.flags.owndata:
        image = np.array(image, order='C', copy=True)
    return image


def image_msg_to_array(msg):
    """
    Decode a ``sensor_msgs/Image`` (or ``CompressedImage``) into an array the engine takes.

    Returns ``(array, kind)``:

    * ``mono8`` / ``8UC1`` -> (H, W) uint8, ``'gray8'``
    * ``mono16`` / ``16UC1`` -> (H, W) uint16, ``'gray16'``
    * ``32FC1`` -> (H, W) float32, ``'float32'``
    * ``bgr8``, ``rgb8``, ``bgra8``, ``rgba8``, ``8UC3`` / ``8UC4`` (taken as BGR(A), the
      order of the OpenCV array cv_bridge sends with ``'passthrough'``), ``yuv422``
      (= ``uyvy``), ``yuv422_yuy2`` (= ``yuyv``), ``bayer_rggb8`` / ``bggr8`` / ``gbrg8`` /
      ``grbg8`` -> (H, W, 3) uint8 in BGR order (alpha dropped, Bayer demosaiced), ``'bgr8'``
    * the 16-bit colour and Bayer encodings (``16UC3`` / ``16UC4`` as BGR(A)) -> (H, W, 3)
      uint16 BGR, ``'bgr16'``
    * a ``CompressedImage``: see :func:`compressed_msg_to_array` (refused undecoded above
      ``MAX_DECODED_PIXELS``, 66.4 Mpx, by its header).

    Rows may be padded (``step`` > row size); ``is_bigendian`` data come back in native order.
    The array owns its memory (it does not alias ``msg.data``).
    Raises ``ValueError`` for an unsupported encoding, a zero size, a ``step`` shorter than a
    row, data shorter than ``step * height``, or NaN/inf in a float image.
    """
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return compressed_msg_to_array(msg)
    encoding = str(msg.encoding)
    spec = _DECODE.get(encoding.strip().lower())
    if spec is None:
        raise ValueError(f'unsupported encoding {encoding!r}; supported: '
                         f'{", ".join(SUPPORTED_ENCODINGS)}')
    bridge_encoding, desired, kind, dtype, channels = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f'zero-size image: {width}x{height} ({encoding})')
    if channels == 2 and width % 2:
        raise ValueError(f'{encoding} needs an even width, got {width}')
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ValueError(f'step {step} is shorter than one row of {width} px x {channels} x '
                         f'{itemsize} B = {row_bytes} B ({encoding})')
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size < step * height:
        raise ValueError(f'data shorter than step * height: {buffer.size} B < {step} * '
                         f'{height} = {step * height} B ({encoding} {width}x{height})')
    source = msg
    if step != row_bytes or bridge_encoding != encoding:
        rows = buffer[:step * height].reshape(height, step)[:, :row_bytes]
        source = Image(height=height, width=width, encoding=bridge_encoding,
                       is_bigendian=bool(msg.is_bigendian), step=row_bytes,
                       data=np.ascontiguousarray(rows).tobytes())
    bridge = load_bridge()
    try:
        image = bridge.imgmsg_to_cv2(source, desired_encoding=desired)
    except _bridge_errors() as exc:
        raise ValueError(f'cv_bridge cannot decode {encoding} {width}x{height}: {exc}') from exc
    image = np.asarray(image)
    if channels == 4 and desired == 'passthrough':
        image = image[:, :, :3]
    image = _owned(image)
    if channels == 1 and desired == 'passthrough':
        image = image.reshape(height, width)
    if kind == 'float32':
        finite = np.isfinite(image)
        if not finite.all():
            nan = int(np.isnan(image).sum())
            inf = int(image.size - finite.sum()) - nan
            raise ValueError(f'float image ({encoding} {width}x{height}) holds {nan} NaN '
                             f'and {inf} inf values')
    return image, kind


def jpeg_of_16_bit_image(msg):
    """Return the encoding of a 16-bit image that ``msg`` carries as 8-bit JPEG, else None.

    image_transport's compressed publisher names the source in ``format``
    (``'<encoding>; jpeg compressed <target>'``). JPEG holds 8 bits, so it converts a 16-bit
    image (``mono16``, ``16UC1``, ``bgr16``, a 16-bit Bayer mosaic, ...) to ``mono8`` or
    ``bgr8`` first, which cv_bridge does by scaling the values by 255/65535: a thermal
    camera's raw counts (a few thousand apart at most) keep a few grey levels. Anything else
    (a ``Image``, an 8-bit source, a ``format`` naming no source, a payload that is no JPEG
    whatever ``format`` says: a 16-bit PNG keeps its 16 bits) gives None.
    """
    source, _, compression = str(getattr(msg, 'format', '')).partition(';')
    spec = _DECODE.get(source.strip().lower())
    if spec is None or 'jpeg' not in compression.lower() or np.dtype(spec[3]).itemsize != 2 or (
            bytes(msg.data[:3]) != _JPEG_MAGIC):
        return None
    return source.strip()


def _pillow_open(fp):
    """Return ``PIL.Image.open(fp)`` as Pillow has it, not as ultralytics replaces it.

    ultralytics, imported with the model's detection head, replaces ``PIL.Image.open`` with a
    wrapper that, for a payload Pillow cannot identify, checks for the pi-heif package and
    pip-installs it where the machine is online (else it prints two lines): a corrupt
    compressed image made the node install a package. The wrapper keeps Pillow's function as
    ``_image_open`` in its module.
    """
    opener = PIL.Image.open
    if opener.__module__ != PIL.Image.__name__:
        opener = getattr(sys.modules.get(opener.__module__), '_image_open', opener)
    return opener(fp)


def compressed_size(msg, max_pixels=MAX_DECODED_PIXELS):
    """
    Return the ``(height, width)`` a ``CompressedImage``'s header states, without decoding it.

    Pillow reads the header only (``PIL.Image.open``: 0.3 ms for that of a 1.2 MB PNG stating
    20000x20000; the first call of a process loads Pillow's plugins, 15-30 ms).
    Raises ``ValueError`` naming the size when the header states more than ``max_pixels``
    pixels (default ``MAX_DECODED_PIXELS``: 2 x 7680x4320, 66.4 Mpx), so that a decompression
    bomb (a PNG of 1.2 MB stating 20000x20000, 4-6 s and 2.4 GB to decode) is never decoded.
    Above Pillow's own bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, 179 Mpx by default; left
    as it is) Pillow gives the pixel count only, and the message says that count; a count
    within ``max_pixels`` there returns None (the sides unknown, the count checked).
    A PNG's chunks are checked in the same reading (:func:`_png_damage`): a truncated or corrupt
    one raises ``ValueError`` naming that.
    Raises ``ValueError`` too, naming the cause, for an empty payload, a ``compressedDepth``
    one, and one whose size Pillow cannot read: corrupt, or a format Pillow does not identify.
    Those formats (PAM, PFM, Radiance HDR) were decoded by OpenCV under its own cap of 2^30
    pixels: a 4.3 MB run-length-coded HDR payload stating 8192x8192 took 1.4 s and 1.6 GB (and
    PFM and HDR decode to floats, refused afterwards anyway). image_transport's compressed
    transport writes JPEG, PNG or TIFF, which Pillow reads. (OpenCV's own cap,
    ``OPENCV_IO_MAX_IMAGE_PIXELS``, is read once, when ``cv2`` is first imported: it cannot be
    set for a process that imported it already.)
    """
    fmt = str(msg.format)
    if names_compressed_depth(fmt):
        raise ValueError(
            f'compressed format {fmt!r} is a compressedDepth payload (a 12-byte header before '
            f'the image), which the compressed transport does not decode: subscribe '
            f'<base>/compressedDepth instead (the node: infrared.transport: compressedDepth)')
    if len(msg.data) == 0:
        raise ValueError(f'empty compressed payload (format {fmt!r})')
    return _stated_size(msg.data, fmt, max_pixels)


def _stated_size(data, fmt, max_pixels, what='compressed payload'):
    """Return ``(height, width)`` (or None) that image bytes ``data`` state; see compressed_size.

    ``fmt`` and ``what`` name the payload in the messages.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above its MAX_IMAGE_PIXELS (89.5 Mpx by default): max_pixels decides.
            warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
            with _pillow_open(io.BytesIO(data)) as image:
                width, height = (int(side) for side in image.size)
                damage = _png_damage(image) if image.format == 'PNG' else None
    except PIL.Image.DecompressionBombError as exc:
        # Raised above 2 x MAX_IMAGE_PIXELS, the count in its message: 'Image size (N pixels)'.
        found = re.search(r'\((\d+) pixels\)', str(exc))
        limit = 2 * (PIL.Image.MAX_IMAGE_PIXELS or 0)
        pixels = int(found.group(1)) if found else None
        if (pixels if pixels is not None else limit + 1) <= max_pixels:
            return None  # a cap above Pillow's: left to decoding
        stated = (f'{pixels / 1e6:.1f} Mpx' if pixels is not None
                  else f'more than {limit / 1e6:.1f} Mpx')
        raise ValueError(f'{what} is {stated} by its header: more than the '
                         f'{max_pixels / 1e6:.1f} Mpx this package decodes; not decoded') from exc
    except Exception:  # noqa: BLE001 - any Pillow error: the size cannot be checked
        raise ValueError(f'cannot decode the {what} ({len(data)} B, format '
                         f'{fmt!r}): its header states no size that Pillow reads (corrupt, '
                         f'truncated, or a format such as PAM, PFM or Radiance HDR, which '
                         f'image_transport does not write); not decoded') from None
    if width * height > max_pixels:
        raise ValueError(f'{what} is {width}x{height} by its header '
                         f'({width * height / 1e6:.1f} Mpx): more than the '
                         f'{max_pixels / 1e6:.1f} Mpx this package decodes; not decoded')
    if damage is not None:
        raise ValueError(_corrupt_png(data, fmt, damage, what))
    return height, width


# OpenCV's JPEG decoding at a fraction of the size: the codec's own DCT scaling.
_REDUCED_FLAGS = {8: 'IMREAD_REDUCED_COLOR_8', 4: 'IMREAD_REDUCED_COLOR_4',
                  2: 'IMREAD_REDUCED_COLOR_2'}
_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _png_damage(image):
    """Return why the PNG Pillow has just opened as ``image`` is corrupt or truncated, or None.

    Pillow's ``verify`` reads the chunks to the end marker and checks their CRCs, without
    decompressing (0.2 ms for a 640x512 16-bit PNG, 0.7 ms for a 1920x1080 colour one;
    decoding takes 8 and 70 ms): libpng, decoding such a payload, fails too, but prints
    'libpng error: ...' to the process's stderr for every frame, beside the node's throttled
    warning.
    """
    try:
        image.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow's errors differ by damage
        return str(exc)
    return None


def _corrupt_png(data, fmt, damage, what='compressed payload'):
    return (f'cannot decode the {what} ({len(data)} B, format {fmt!r}): corrupt or '
            f'truncated PNG ({damage}); not decoded')


def _check_png(data, fmt, what='compressed payload'):
    """Raise ``ValueError`` for PNG bytes ``data`` whose chunks :func:`_png_damage` finds damaged.

    For a PNG whose size :func:`compressed_size` could not give (above Pillow's bomb limit,
    under a larger ``max_pixels``): opened here with Pillow's limit out of the way.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
            with PIL.PngImagePlugin.PngImageFile(io.BytesIO(data)) as image:
                damage = _png_damage(image)
    except Exception as exc:  # noqa: BLE001 - Pillow's errors differ by damage
        damage = str(exc)
    if damage is not None:
        raise ValueError(_corrupt_png(data, fmt, damage, what))


# -- image_transport's compressedDepth transport --------------------------------------------
# compressed_depth_image_transport (ros-perception/image_transport_plugins: codec.cpp,
# compression_common.h(pp)) puts a 12-byte ConfigHeader before the PNG (or RVL) bytes: an int32
# (the compression format, INV_DEPTH = 0) and two float32, depthQuantA and depthQuantB, in the
# publisher's byte order (little-endian on every ROS platform). Only 32FC1 images use them.
COMPRESSED_DEPTH_HEADER_BYTES = 12
_DEPTH_HEADER = struct.Struct('<iff')
# The codec's publisher defaults (compressed_depth_publisher.cpp): depth_max 10.0 (m; a 16-bit
# value above depth_max * 1000 is sent as 0), depth_quantization 100.0, png_level 9.
DEPTH_MAX_DEFAULT = 10.0
DEPTH_QUANTIZATION_DEFAULT = 100.0


def compressed_depth_size(msg, max_pixels=MAX_DECODED_PIXELS):
    """
    Return the ``(height, width)`` a compressedDepth ``CompressedImage`` states, undecoded.

    The PNG header after the 12-byte ConfigHeader is read as :func:`compressed_size` reads a
    compressed payload's (Pillow; chunks checked), with the same cap: more than ``max_pixels``
    (default ``MAX_DECODED_PIXELS``, 66.4 Mpx) is refused undecoded, a decompression bomb.
    None where the sides are unknown but the count fits (above Pillow's own bomb limit).
    Raises ``ValueError`` naming the cause for an empty payload, one of 12 bytes or fewer (the
    codec decodes nothing then either), a ``format`` that is no compressedDepth one
    (:func:`~tarfuse_ros.core.compressed_depth.compressed_depth_format`), an RVL payload (not
    supported: no well-kept Python decoder), bytes after the header that are no PNG, a corrupt
    or truncated PNG, too large a size.
    """
    fmt, size = str(msg.format), len(msg.data)
    if size == 0:
        raise ValueError(f'empty compressedDepth payload (format {fmt!r})')
    encoding, codec = compressed_depth_format(fmt)
    if size <= COMPRESSED_DEPTH_HEADER_BYTES:
        raise ValueError(f'short compressedDepth payload ({size} B, format {fmt!r}): no image '
                         f'after its {COMPRESSED_DEPTH_HEADER_BYTES}-byte header; not decoded')
    if codec == 'rvl':
        raise ValueError(f'rvl compressedDepth is not supported; use png (format {fmt!r}: '
                         f"set the compressedDepth publisher's format to png)")
    data = bytes(msg.data[COMPRESSED_DEPTH_HEADER_BYTES:])
    if data[:8] != _PNG_MAGIC:
        raise ValueError(f'cannot decode the compressedDepth payload ({size} B, format '
                         f'{fmt!r}): no PNG after its {COMPRESSED_DEPTH_HEADER_BYTES}-byte '
                         f'header; not decoded')
    return _stated_size(data, fmt, max_pixels, what='compressedDepth payload')


def compressed_depth_msg_to_array(msg, max_pixels=MAX_DECODED_PIXELS, codec_warnings=None):
    """
    Decode a ``CompressedImage`` of image_transport's ``compressedDepth`` transport.

    The layout is that of compressed_depth_image_transport (ros-perception/
    image_transport_plugins, ``codec.cpp`` and ``compression_common.h``): a 12-byte header
    (int32 format, float32 depthQuantA, float32 depthQuantB) before a 16-bit grey PNG.
    ``format`` is ``'<encoding>; compressedDepth png'``
    (:func:`~tarfuse_ros.core.compressed_depth.compressed_depth_format`).

    Returns ``(array, kind)`` as :func:`image_msg_to_array` gives the raw image:

    * ``16UC1`` / ``mono16`` -> (H, W) uint16, ``'gray16'``: the PNG's values as they are
      (the codec's publisher sends values above its ``depth_max`` x 1000 as 0);
    * ``32FC1`` -> (H, W) float32, ``'float32'``: the PNG holds quantised inverse values
      ``v``, decoded as the codec does, ``depthQuantA / (v - depthQuantB)`` in float32; ``v``
      0 (what the publisher sent for a value at or above its ``depth_max``, or NaN) is NaN
      there, and, as a raw 32FC1 image with NaN, refused here (``ValueError`` saying how many).

    The header's size is checked before decoding (:func:`compressed_depth_size`: the
    decompression-bomb cap ``max_pixels``, a truncated or corrupt PNG, a header shorter than
    12 bytes, an empty payload, RVL). ``codec_warnings``: as :func:`compressed_msg_to_array`.
    Raises ``ValueError`` naming the cause for any payload it cannot decode.
    """
    import cv2
    fmt, size = str(msg.format), len(msg.data)
    encoding, _ = compressed_depth_format(fmt)
    if compressed_depth_size(msg, max_pixels) is None:
        _check_png(bytes(msg.data[COMPRESSED_DEPTH_HEADER_BYTES:]), fmt,
                   what='compressedDepth payload')
    buffer = np.frombuffer(bytes(msg.data), np.uint8)[COMPRESSED_DEPTH_HEADER_BYTES:]
    try:
        if codec_warnings is None:
            image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        else:
            image, found = _decode_taking_codec_warnings(
                lambda: cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED))
            codec_warnings.extend(found)
    except cv2.error:
        image = None
    if image is None:
        raise ValueError(f'cannot decode the compressedDepth payload ({size} B, format '
                         f'{fmt!r}): corrupt or truncated PNG')
    if image.dtype != np.uint16 or image.ndim != 2 or image.size == 0:
        raise ValueError(f'compressedDepth payload (format {fmt!r}) decodes to shape '
                         f'{image.shape} and dtype {image.dtype}, where the codec writes a '
                         f'16-bit one-channel PNG')
    if DEPTH_KINDS[encoding.lower()] == 'gray16':
        return _owned(image), 'gray16'
    _, quant_a, quant_b = _DEPTH_HEADER.unpack(bytes(msg.data[:_DEPTH_HEADER.size]))
    if not (math.isfinite(quant_a) and math.isfinite(quant_b)):
        raise ValueError(f'compressedDepth 32FC1 payload (format {fmt!r}) states quantisation '
                         f'parameters {quant_a}, {quant_b} in its header: not finite')
    coded = image != 0
    values = np.full(image.shape, np.nan, np.float32)
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        values[coded] = np.float32(quant_a) / (image[coded].astype(np.float32)
                                               - np.float32(quant_b))
    finite = np.isfinite(values)
    if not finite.all():
        height, width = image.shape
        zero = int(image.size - coded.sum())
        other = int(image.size - finite.sum()) - zero
        raise ValueError(
            f'float image ({encoding} {width}x{height}, compressedDepth) holds {zero} NaN '
            f"values (pixels coded 0: at or above the publisher's depth_max, or NaN)"
            + (f' and {other} inf values' if other else '')
            + '; raise its compressedDepth.depth_max above the largest value it sends')
    return values, 'float32'


def array_to_compressed_depth_msg(array, header=None, encoding=None,
                                  depth_max=DEPTH_MAX_DEFAULT,
                                  depth_quantization=DEPTH_QUANTIZATION_DEFAULT, png_level=9):
    """
    Encode an image as image_transport's compressedDepth transport does (PNG codec).

    Our own encoder, written from compressed_depth_image_transport's description (see
    :func:`compressed_depth_msg_to_array`), for tests and bags. ``array``: (H, W) uint16
    (``encoding`` ``'16UC1'``, the default, or ``'mono16'``; values kept as they are, where
    the codec's publisher zeroes those above ``depth_max`` x 1000) or (H, W) float32
    (``'32FC1'``): quantised as the codec does, with ``A = q (q + 1)`` and
    ``B = 1 - A / depth_max`` (``q`` = ``depth_quantization``) to the 16-bit
    ``A / value + B`` (truncated), 0 for a value at or above ``depth_max`` or NaN; A and B go
    into the header. ``format`` is ``'<encoding>; compressedDepth png'``; ``header`` is copied.
    Raises ``ValueError`` for another dtype or shape, an encoding that does not fit it, a
    float image with values of 0 or less (the inverse is undefined there), a
    ``depth_quantization`` whose A or B is not a finite float32, or an image whose
    smallest value codes past 16 bits (``A (1 / min - 1 / depth_max) + 1`` >= 65536; the
    message gives the largest ``depth_quantization`` that fits).
    """
    import cv2
    if not isinstance(array, np.ndarray) or array.ndim != 2 or 0 in array.shape or (
            array.dtype not in (np.uint16, np.float32)):
        raise ValueError(f'compressedDepth takes (H, W) uint16 or float32 images, got '
                         f'{getattr(array, "shape", None)} {getattr(array, "dtype", None)}')
    floating = array.dtype == np.float32
    encoding = encoding or ('32FC1' if floating else '16UC1')
    if DEPTH_KINDS.get(encoding.lower()) != ('float32' if floating else 'gray16'):
        raise ValueError(f'encoding {encoding!r} does not fit a {array.dtype} image '
                         f'(16UC1 or mono16 for uint16, 32FC1 for float32)')
    quant_a = quant_b = np.float32(0.0)
    coded = array
    if floating:
        if (array[np.isfinite(array)] <= 0).any():
            raise ValueError('compressedDepth codes a float image by its inverse: values must '
                             'be > 0')
        with np.errstate(over='ignore', invalid='ignore'):
            quant_a = np.float32(depth_quantization) * (np.float32(depth_quantization)
                                                        + np.float32(1.0))
            quant_b = np.float32(1.0) - quant_a / np.float32(depth_max)
        if not (np.isfinite(quant_a) and np.isfinite(quant_b)):
            # inf - inf: every value was coded 0 (NaN to the node), past the 16-bit check.
            raise ValueError(f'depth_quantization {depth_quantization:g} gives the codec '
                             f'parameters A = {float(quant_a):g}, B = {float(quant_b):g}, not '
                             f'finite in its float32 header: give a smaller depth_quantization')
        with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
            inverse = quant_a / array + quant_b
        inverse = np.where(array < np.float32(depth_max), inverse, 0.0)
        inverse = np.nan_to_num(inverse, nan=0.0)
        if inverse.max() >= 65536:  # the codec's 16 bits overflow: decoded far off
            raise ValueError(_depth_overflow(array, depth_max, depth_quantization,
                                             float(inverse.max())))
        coded = np.clip(inverse, 0, 65535).astype(np.uint16)
    ok, png = cv2.imencode('.png', np.ascontiguousarray(coded),
                           [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise ValueError(f'OpenCV cannot encode a {coded.shape} uint16 PNG')
    msg = CompressedImage()
    msg.header = _copy_header(header) if header is not None else Header()
    msg.format = compressed_depth_format_string(encoding)
    msg.data = _DEPTH_HEADER.pack(0, float(quant_a), float(quant_b)) + png.tobytes()
    return msg


def largest_depth_quantization(smallest, depth_max):
    """Return the depth_quantization above which ``smallest`` codes past the codec's 16 bits.

    ``smallest`` > 0 and below ``depth_max`` (the image's units): the 32FC1 code
    ``A (1 / smallest - 1 / depth_max) + 1``, with ``A = q (q + 1)``, stays below 65536 for a
    ``q`` below the returned one (the finest quantisation the image can be sent with).
    """
    quant_a = 65535.0 / (1.0 / smallest - 1.0 / depth_max)
    return (math.sqrt(1.0 + 4.0 * quant_a) - 1.0) / 2.0


def largest_kept_count(depth_max):
    """Return the largest 16-bit value the compressedDepth publisher sends as it is.

    The plugin (``encodeCompressedDepthImage``, 16-bit branch) casts ``depth_max`` x 1000 (a
    double) to ``uint16_t``, truncating, and sends every value above the result as 0: 10000
    at its default ``depth_max`` 10 (metres as millimetres). Raises ``ValueError`` where
    ``depth_max`` x 1000 is not in [0, 65536): the cast is undefined there in C++ (it wraps
    on common compilers: ``depth_max`` 100 keeps values up to 34464 only).
    """
    scaled = depth_max * 1000.0
    if not 0 <= scaled < 65536:  # NaN too
        raise ValueError(f'depth_max {depth_max:g} of a 16-bit image on compressedDepth must be '
                         f'below 65.536: the publisher casts depth_max x 1000 to 16 bits, '
                         f'undefined (it wraps) past 65535')
    return int(scaled)


def _depth_overflow(array, depth_max, depth_quantization, largest):
    """Return the error for a float image whose smallest value codes past 16 bits."""
    smallest = float(array[np.isfinite(array) & (array < np.float32(depth_max))].min())
    limit = largest_depth_quantization(smallest, depth_max)
    return (f'compressedDepth codes the smallest value, {smallest:g}, as {largest:.0f}, past '
            f'its 16 bits (65535), at depth_quantization {depth_quantization:g} and depth_max '
            f'{depth_max:g} (it would decode far off): give a depth_quantization below '
            f'{limit:.6g}')


def image_msg_to_motion_array(msg, max_side, codec_warnings=None):
    """
    Decode an image message for the time-offset check, which reads it shrunk to ``max_side``.

    A JPEG ``CompressedImage`` whose long side is at least twice ``max_side`` (px) is decoded
    by OpenCV at 1/2, 1/4 or 1/8 of its size (``cv2.IMREAD_REDUCED_COLOR_N``, the largest
    factor that leaves the long side at least ``max_side``): 1.2 ms instead of 1.9 for a
    640x512 frame, 3.9 instead of 8.2 for a 1920x1080 one (2-core VM, 1 thread). In colour,
    as the whole frame's channels are averaged: decoded to grey (0.1-0.4 ms less), its luma
    weights gave another image than a PNG or raw frame of that camera, and the offset of a
    camera switching between them was lost (+2 ms instead of -42 on a simulated rig). Its
    header is checked first as :func:`compressed_msg_to_array` does. Returns an (h, w, 3)
    uint8 BGR array then, shrunk on to the size
    :func:`~tarfuse_ros.core.time_offset.frame_for_motion` gives the whole frame (its EXIF
    orientation ignored, as the whole frame's decoding does), so that a camera's frames keep
    one size whichever path each takes; anything else comes back as
    :func:`image_msg_to_array`'s array.
    ``codec_warnings``: as :func:`compressed_msg_to_array` takes it.
    Raises ``ValueError`` naming the cause, as :func:`image_msg_to_array` does.
    """
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding') and (
            bytes(msg.data[:3]) == _JPEG_MAGIC):
        size = compressed_size(msg)
        factors = [] if size is None else [
            factor for factor in _REDUCED_FLAGS if max(size) >= factor * max_side]
        if factors:
            import cv2
            from tarfuse_ros.core.time_offset import motion_size
            # EXIF orientation ignored, as the whole frame's decoding (IMREAD_UNCHANGED) does.
            factor = max(factors)
            flag = getattr(cv2, _REDUCED_FLAGS[factor]) | cv2.IMREAD_IGNORE_ORIENTATION
            buffer = np.frombuffer(msg.data, np.uint8)
            if codec_warnings is None:
                image = cv2.imdecode(buffer, flag)
            else:
                image, found = _decode_taking_codec_warnings(lambda: cv2.imdecode(buffer, flag))
                codec_warnings.extend(found)
            if image is None:
                raise ValueError(f'cannot decode the compressed payload ({len(msg.data)} B, '
                                 f'format {str(msg.format)!r}): corrupt or truncated JPEG')
            # 1/N of a side is rounded up (321 px -> 161), its last pixel a partial block: left
            # out, and the rest shrunk on to the size the whole frame's motion frame has, so
            # that a camera switching between JPEG and PNG (or raw) keeps one frame size (and
            # nearly one image: stretching the partial block in shifted the far side by up to
            # a pixel of the motion frame).
            image = image[:max(1, size[0] // factor), :max(1, size[1] // factor)]
            target = motion_size(size[0], size[1], max_side)
            if target != image.shape[1::-1]:
                image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
            return image
        return compressed_msg_to_array(msg, size_checked=True,  # its header read above
                                       codec_warnings=codec_warnings)[0]
    return image_msg_to_array(msg)[0]


_STDERR_LOCK = threading.Lock()  # one decoding (or settling) at a time
_capture = None  # the _StderrCapture on fd 2, once a decoding has taken its warnings
_exiting = False
_relays_lost = 0  # relays that ended on their own (killed, an interpreter that cannot run one)


class _StderrCapture:
    """File descriptor 2 on a pipe, read by :mod:`~tarfuse_ros.ros.stderr_relay`'s process.

    It passes all that the process writes to stderr on to the stderr it replaced, in order, a
    moment later, but the codec's warnings written between the marks of a decoding, which it
    sends back. As fd 2 stays on the pipe once taken, no line is lost or reordered as stderr
    changes hands, and as the relay is a process, none where this one dies at once.
    """

    def __init__(self):
        self.real = os.dup(2)
        fds = [self.real]
        try:
            read, self.write = os.pipe()
            fds += [read, self.write]
            self.results, results = os.pipe()
            fds += [self.results, results]
            # A session of its own: Ctrl-C (to the terminal's process group) does not reach it.
            self.relay = subprocess.Popen(
                [sys.executable, '-I', '-S', stderr_relay.__file__, str(read), str(self.real),
                 str(results)], pass_fds=(read, self.real, results), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self.real, start_new_session=True)
            fds.remove(read)
            fds.remove(results)
            os.close(read)
            os.close(results)
            os.dup2(self.write, 2)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.pipe = _identity(2)
        self.marked = 0
        self.received = b''
        self.poller = select.poll()  # not select.select: no limit on the descriptor's number
        self.poller.register(self.results, select.POLLIN)

    def on_fd_2(self):
        return self.relay.poll() is None and _identity(2) == self.pipe

    def mark(self, kind):
        """Write mark ``kind`` to the pipe; return its number (caller holds _STDERR_LOCK)."""
        self.marked += 1
        os.write(self.write, stderr_relay.mark(kind, self.marked))
        return self.marked

    def wait(self, number, timeout=5.0):
        """Wait until the relay has passed mark ``number``; return the warnings it took."""
        deadline = time.monotonic() + timeout
        while True:
            while b'\n' in self.received:
                record, self.received = self.received.split(b'\n', 1)
                passed, *found = record.split(b'\t')
                if int(passed) == number:
                    return [line.decode(errors='replace') for line in found]
            left = deadline - time.monotonic()  # older marks: of a call that gave up waiting
            if left <= 0 or not self.poller.poll(left * 1000):
                return []
            data = os.read(self.results, 65536)
            if not data:
                return []  # the relay has ended
            self.received += data

    def give_back(self):
        """Give fd 2 back to the stderr it replaced and close this end of the pipes."""
        if _identity(2) == self.pipe:
            os.dup2(self.real, 2)
        for fd in (self.write, self.results, self.real):
            os.close(fd)  # the pipe ends once the writes under way are in it

    def release(self, timeout=2.0):
        """Give fd 2 back (:meth:`give_back`); wait for the relay to pass on the rest."""
        self.give_back()
        try:
            self.relay.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # another process still holds the pipe (a child given this stderr)


def _identity(fd):
    try:
        status = os.fstat(fd)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _stderr_capture():
    """Return the capture on fd 2 (taken now if need be), or None where there is none to take."""
    global _capture, _relays_lost
    if _capture is not None and not _capture.on_fd_2():
        ended = _capture.relay.poll()
        _capture.release(0.0)  # or fd 2 taken over since (pytest's capture, a test's dup2)
        if ended is not None:
            _relays_lost += 1
            then = ('started again' if _relays_lost < 3 else
                    "the codec's warnings go to stderr as they come from now on")
            _say(f'tarfuse: the stderr relay (pid {_capture.relay.pid}) ended with code '
                 f'{ended} ({_relays_lost} of 3): {then}\n')
        _capture = None
    if _capture is None and not _exiting and _relays_lost < 3 and _identity(2) is not None:
        try:
            _capture = _StderrCapture()
        except (OSError, subprocess.SubprocessError) as exc:  # no descriptor, no interpreter
            _relays_lost = 3  # not tried again at each frame
            _say(f"tarfuse: no stderr relay could be started ({exc}): the codec's warnings go "
                 f'to stderr as they come\n')
            return None
    return _capture


def _say(line):
    stderr_relay.write_all(2, line.encode())


def settle_stderr(timeout=5.0):
    """Return once what this process wrote to stderr so far is on its stderr (within timeout s).

    Lines pass through :func:`_decode_taking_codec_warnings`'s pipe and relay a moment late:
    for a reader of that stderr in this process (a test), or before ``os._exit`` (the relay
    passes them on all the same, but maybe after the process's end is seen).
    """
    with _STDERR_LOCK:
        if _capture is not None and _capture.on_fd_2():
            try:
                _capture.wait(_capture.mark(b'='), timeout)
            except OSError:
                pass


@atexit.register
def _release_stderr():
    """Give fd 2 back at exit, once the relay has passed on every line the pipe holds."""
    global _capture, _exiting
    with _STDERR_LOCK:
        _exiting = True
        if _capture is not None:
            _capture.release()
            _capture = None


def _forget_stderr_capture_in_child():
    """In a forked child: its stderr is the one the pipe replaced; the relay is the parent's."""
    global _capture, _STDERR_LOCK
    _STDERR_LOCK = threading.Lock()
    if _capture is not None:
        _capture.give_back()
        _capture = None


os.register_at_fork(after_in_child=_forget_stderr_capture_in_child)


def _decode_taking_codec_warnings(decode):
    """Return ``(decode(), warnings)``: libjpeg's and libpng's warnings of the call, off stderr.

    OpenCV replaces only libjpeg's ``error_exit`` (grfmt_jpeg.cpp): libjpeg's default message
    handler prints the first warning of a damaged JPEG that it decodes all the same ('Corrupt
    JPEG data: 2 extraneous bytes before marker 0xdb') to the process's stderr and tells the
    caller nothing; libpng's warnings go there too. cv2 has no setting for them
    (``cv2.utils.logging.setLogLevel`` covers OpenCV's own log, ``cv2.redirectError`` its
    errors; opencv/opencv#9477, opencv-python#610). So the first such call points file
    descriptor 2 at a pipe for good (:class:`_StderrCapture`), whose reader, a process of its
    own (:mod:`~tarfuse_ros.ros.stderr_relay`), passes all that comes on to the stderr it
    replaced, in order, a moment later (the process's own log lines with it: none is lost or
    reordered, as some were when stderr changed hands around each call, nor where the
    process dies at once), and hands the call the codec's lines written between its marks,
    one call at a time (whatever the call raised). At exit, or where fd 2 was taken over
    since, fd 2 is given back and the rest passed on. A stderr that cannot take a line (a
    full disk, a closed pipe) loses it, as it would have lost it anyway; the decoding goes
    on. Where there is no stderr (fd 2 closed) or no process to start, the call runs as it is.
    """
    with _STDERR_LOCK:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except (OSError, ValueError):
            pass
        capture = _stderr_capture()
        try:
            number = None if capture is None else capture.mark(b'[')
        except OSError:
            number = None
        if number is None:
            return decode(), []
        try:
            result = decode()
        finally:
            try:
                found = capture.wait(capture.mark(b']'))
            except OSError:  # not to hide what decode() raised
                found = []
    return result, found


# Source encodings image_transport takes as colour (sensor_msgs::image_encodings::isColor).
_COLOUR_SOURCES = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb16', 'bgr16', 'rgba16', 'bgra16')


def _compressed_in_rgb_order(fmt):
    """Return whether a ``CompressedImage`` of ``format`` ``fmt`` holds its channels as RGB.

    image_transport's rule (compressed_subscriber.cpp): a colour source whose ``format`` does
    not say ``'compressed bgr...'`` (``'rgb8; png compressed rgb8'``) was compressed from an
    RGB-ordered array, which OpenCV decodes with red and blue swapped. Its own publisher writes
    ``'compressed bgr8'``; cv_bridge's ``'jpg'`` / ``'png'`` names no source (BGR).
    """
    source, separator, compression = fmt.partition(';')
    return bool(separator) and source.strip() in _COLOUR_SOURCES and (
        'compressed bgr' not in compression)


def compressed_msg_to_array(msg, max_pixels=MAX_DECODED_PIXELS, size_checked=False,
                            codec_warnings=None):
    """
    Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...) into an array the engine takes.

    Returns ``(array, kind)``: a grey payload -> (H, W) uint8 ``'gray8'`` or, for a 16-bit PNG,
    (H, W) uint16 ``'gray16'``; a colour one -> (H, W, 3) BGR, ``'bgr8'`` (``'bgr16'`` for
    16-bit), alpha dropped. The payload is decoded by its bytes, whatever ``format`` says,
    except that ``compressedDepth`` payloads are refused and that ``format`` tells the channel
    order as image_transport reads it: BGR for its own ``'rgb8; jpeg compressed bgr8'`` and
    for cv_bridge's ``'jpg'``, RGB for ``'rgb8; png compressed rgb8'`` (brought to BGR).
    The size its header states is checked first (:func:`compressed_size`): a payload of more
    than ``max_pixels`` pixels (default ``MAX_DECODED_PIXELS``, 2 x 7680x4320 = 66.4 Mpx, an
    8K camera with room to spare), or one whose size Pillow cannot read, is refused without
    being decoded, as a decompression bomb would stall the caller for seconds and take
    gigabytes; so is a truncated or corrupt PNG (its chunks checked with its header, without
    libpng printing to stderr). ``size_checked``: the caller has checked ``msg`` with
    :func:`compressed_size` (with these ``max_pixels``) already, and its header is not read
    again.
    ``codec_warnings``: a list, to which the codec's warnings of a payload it decodes all the
    same are appended, kept off stderr: libjpeg's of a damaged JPEG ('Corrupt JPEG data: 38
    extraneous bytes before marker 0xd9'), libpng's of a flawed ancillary chunk ('libpng
    warning: sRGB: invalid'); None leaves them to the codec, which prints them there.
    Raises ``ValueError`` naming the cause for an empty, corrupt, unsupported or too large
    payload.
    """
    if not size_checked and compressed_size(msg, max_pixels) is None and (
            bytes(msg.data[:8]) == _PNG_MAGIC):
        _check_png(msg.data, str(msg.format))  # checked with its size where Pillow gives it
    fmt, size = str(msg.format), len(msg.data)
    bridge = load_bridge()
    try:
        if codec_warnings is not None and (bytes(msg.data[:3]) == _JPEG_MAGIC
                                           or bytes(msg.data[:8]) == _PNG_MAGIC):
            image, found = _decode_taking_codec_warnings(
                lambda: bridge.compressed_imgmsg_to_cv2(msg))
            codec_warnings.extend(found)
        else:
            image = bridge.compressed_imgmsg_to_cv2(msg)
    except _bridge_errors():
        image = None
    if image is None:
        raise ValueError(f'cannot decode the compressed payload ({size} B, format {fmt!r}): '
                         f'corrupt, truncated or not an image OpenCV reads')
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (3, 4)) or image.size == 0:
        raise ValueError(f'compressed payload (format {fmt!r}) decodes to an unsupported image '
                         f'of shape {image.shape} and dtype {image.dtype}')
    if image.ndim == 3:
        image = image[..., 2::-1] if _compressed_in_rgb_order(fmt) else image[..., :3]
        kind = 'bgr8' if image.dtype == np.uint8 else 'bgr16'
    else:
        pattern = _bayer_pattern(fmt)
        if pattern is not None:  # the camera's mosaic: demosaiced as a raw frame of it is
            bits = 8 * image.dtype.itemsize
            return image_msg_to_array(Image(
                height=image.shape[0], width=image.shape[1], encoding=f'bayer_{pattern}{bits}',
                step=image.shape[1] * image.dtype.itemsize,
                data=np.ascontiguousarray(image).tobytes()))
        kind = 'gray8' if image.dtype == np.uint8 else 'gray16'
    return _owned(image), kind


def _bayer_pattern(fmt):
    """Return the Bayer pattern (``'rggb'``, ...) of a ``format`` naming a Bayer source, else None.

    image_transport's compressed publisher converts only colour sources (``enc::isColor``) to
    BGR: a Bayer camera's mosaic is compressed as it is, one channel, its ``format``
    ``'bayer_rggb8; png compressed '``, for the subscriber to demosaic.
    """
    source, separator, _ = fmt.partition(';')
    source = source.strip().lower()
    return source[6:10] if separator and source in _BAYER else None  # 'bayer_' + pattern


def _checked_array(array, encoding):
    """Return ``array`` fitting ``encoding`` (``(H, W, 1)`` squeezed) or raise ``ValueError``."""
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
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder('='))


def array_to_image_msg(array, encoding, header=None):
    """
    Encode a NumPy image as a ``sensor_msgs/Image`` with the given ``header`` (cv_bridge).

    ``array`` is (H, W) or (H, W, 1) for one-channel encodings (``mono8``/``8UC1`` uint8,
    ``mono16``/``16UC1`` uint16, ``32FC1`` float32) and (H, W, 3) or (H, W, 4) uint8 for
    ``bgr8``/``rgb8`` and ``bgra8``/``rgba8``. The message is in native byte order with
    unpadded rows (``step = width * channels * itemsize``); ``header`` is copied (stamp and
    frame_id), an empty one is used when it is None.
    Raises ``ValueError`` for an unknown encoding or an array whose dtype/shape does not fit.
    """
    data = _checked_array(array, encoding)
    try:
        msg = load_bridge().cv2_to_imgmsg(data, encoding=encoding)
    except _bridge_errors() as exc:
        raise ValueError(f'cv_bridge cannot encode {encoding} {data.shape}: {exc}') from exc
    msg.header = _copy_header(header) if header is not None else Header()
    return msg


def array_to_compressed_msg(array, header=None, fmt='jpeg'):
    """
    Compress a NumPy image into a ``sensor_msgs/CompressedImage`` (cv_bridge, OpenCV codecs).

    ``array``: (H, W) uint8 (``mono8``), (H, W, 3) uint8 BGR (``bgr8``), or for ``fmt='png'``
    also (H, W) / (H, W, 3) uint16 (``mono16`` / ``bgr16``, kept 16-bit). ``fmt`` is
    ``'jpeg'`` (lossy, 8-bit only) or ``'png'`` (lossless). ``format`` is image_transport's
    string, e.g. ``'bgr8; jpeg compressed bgr8'`` or ``'mono16; png compressed mono16'``;
    ``header`` is copied. Raises ``ValueError`` for anything else.
    """
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f'compressed format must be one of {sorted(COMPRESSED_FORMATS)}, '
                         f'got {fmt!r}')
    if not isinstance(array, np.ndarray):
        raise ValueError(f'expected a numpy array, got {type(array).__name__}')
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] != 3) or 0 in array.shape[:2]:
        raise ValueError(f'can compress (H, W) or (H, W, 3) uint8/uint16 images, got shape '
                         f'{array.shape} and dtype {array.dtype}')
    bits = 8 * array.dtype.itemsize
    if fmt == 'jpeg' and bits != 8:
        raise ValueError(f'jpeg holds 8-bit images only; use png for {array.dtype} data')
    encoding = f'{"bgr" if array.ndim == 3 else "mono"}{bits}'
    try:
        msg = load_bridge().cv2_to_compressed_imgmsg(np.ascontiguousarray(array),
                                                     dst_format=COMPRESSED_FORMATS[fmt])
    except _bridge_errors() as exc:
        raise ValueError(f'cv_bridge cannot compress {encoding} as {fmt}: {exc}') from exc
    if len(msg.data) == 0:
        raise ValueError(f'OpenCV produced no {fmt} data for a {encoding} {array.shape} image')
    compressed = CompressedImage()
    compressed.header = _copy_header(header) if header is not None else Header()
    compressed.format = f'{encoding}; {fmt} compressed {encoding}'
    compressed.data = msg.data
    return compressed


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
