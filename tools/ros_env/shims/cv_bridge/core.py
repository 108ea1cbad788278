"""
CvBridge: sensor_msgs/Image <-> NumPy (OpenCV) arrays, a subset of ROS 2 ``cv_bridge``.

tarfuse_ros's own code, API-compatible with the distro's ``cv_bridge.CvBridge`` for the parts
listed in ``tools/ros_env/shims/README.md``. Behaviour follows the real bridge:

* ``imgmsg_to_cv2`` honours ``step`` (padded rows) and ``is_bigendian`` (data are returned in
  native byte order); one-channel images come back as (H, W), others as (H, W, C).
* A ``desired_encoding`` other than ``'passthrough'`` converts like the C++ bridge: colour
  encodings (mono*, rgb*, bgr*, rgba*, bgra*, yuv422*) convert into each other; a non-colour
  encoding (``32FC1``, ``8UC3``, ...) converts only to an encoding with the same channel count
  that is not a colour encoding; 8 <-> 16 bit depth changes are scaled (x 65535/255 or
  x 255/65535), other depth changes saturate.
* Bayer encodings (``bayer_rggb8``, ``bayer_bggr8``, ``bayer_gbrg8``, ``bayer_grbg8`` and their
  16-bit variants) are one-channel images; converting them to ``mono*``, ``bgr*`` or ``rgb*``
  demosaics with one ``cv2.cvtColor`` call and the C++ bridge's codes (``bayer_rggb`` ->
  ``COLOR_BayerBG2*``, ``bayer_bggr`` -> ``RG``, ``bayer_gbrg`` -> ``GR``, ``bayer_grbg`` ->
  ``GB``: OpenCV names a mosaic by the 2nd and 3rd pixels of its second row).
* ``cv2_to_imgmsg`` checks that an explicit encoding matches the array's type (a 3-channel
  array cannot be sent as ``rgba8``).
* ``compressed_imgmsg_to_cv2`` decodes with ``cv2.imdecode(..., IMREAD_UNCHANGED)`` (a 16-bit
  PNG stays 16-bit, colour comes back in BGR order) and, like the real one, returns None for
  a payload OpenCV cannot decode; a ``desired_encoding`` treats the decoded image as ``bgr8``.
  ``cv2_to_compressed_imgmsg`` encodes with ``cv2.imencode('.' + dst_format, ...)`` and sets
  ``format`` to ``dst_format``; OpenCV's errors propagate as ``cv2.error`` as they do there.
"""

import array
import re
import sys

import numpy as np

__all__ = ['CvBridge', 'CvBridgeError', 'getCvType']


class CvBridgeError(TypeError):
    """Raised by :class:`CvBridge` when a conversion is not possible."""


# Depth code <-> NumPy dtype name, as OpenCV names them.
_DEPTH_TO_DTYPE = {
    '8U': 'uint8', '8S': 'int8', '16U': 'uint16', '16S': 'int16',
    '32S': 'int32', '32F': 'float32', '64F': 'float64',
}
_DTYPE_TO_DEPTH = {v: k for k, v in _DEPTH_TO_DTYPE.items()}

# Colour encodings: name -> (depth, channels, colour family).
_COLOUR_ENCODINGS = {
    'mono8': ('8U', 1, 'gray'), 'mono16': ('16U', 1, 'gray'),
    'bgr8': ('8U', 3, 'bgr'), 'rgb8': ('8U', 3, 'rgb'),
    'bgra8': ('8U', 4, 'bgra'), 'rgba8': ('8U', 4, 'rgba'),
    'bgr16': ('16U', 3, 'bgr'), 'rgb16': ('16U', 3, 'rgb'),
    'bgra16': ('16U', 4, 'bgra'), 'rgba16': ('16U', 4, 'rgba'),
    'yuv422': ('8U', 2, 'uyvy'), 'uyvy': ('8U', 2, 'uyvy'),
    'yuv422_yuy2': ('8U', 2, 'yuy2'), 'yuyv': ('8U', 2, 'yuy2'),
}
# Bayer patterns (ROS name) -> OpenCV's name of the same mosaic (by its second row).
_BAYER_OPENCV = {'rggb': 'BG', 'bggr': 'RG', 'gbrg': 'GR', 'grbg': 'GB'}
for _pattern in _BAYER_OPENCV:
    _COLOUR_ENCODINGS[f'bayer_{_pattern}8'] = ('8U', 1, f'bayer_{_pattern}')
    _COLOUR_ENCODINGS[f'bayer_{_pattern}16'] = ('16U', 1, f'bayer_{_pattern}')
_GENERIC_ENCODING = re.compile(r'^(8U|8S|16U|16S|32S|32F|64F)(?:C([1-9][0-9]{0,2}))?$')

# (source family, destination family) -> name of the cv2 colour conversion code.
_FAMILY_CONVERSIONS = {}
for _src, _tag in (('gray', 'GRAY'), ('rgb', 'RGB'), ('bgr', 'BGR'),
                   ('rgba', 'RGBA'), ('bgra', 'BGRA')):
    for _dst, _dtag in (('gray', 'GRAY'), ('rgb', 'RGB'), ('bgr', 'BGR'),
                        ('rgba', 'RGBA'), ('bgra', 'BGRA')):
        if _src != _dst:
            _FAMILY_CONVERSIONS[(_src, _dst)] = f'COLOR_{_tag}2{_dtag}'
for _src, _suffix in (('uyvy', 'UYVY'), ('yuy2', 'YUY2')):
    for _dst, _dtag in (('gray', 'GRAY'), ('rgb', 'RGB'), ('bgr', 'BGR'),
                        ('rgba', 'RGBA'), ('bgra', 'BGRA')):
        _FAMILY_CONVERSIONS[(_src, _dst)] = f'COLOR_YUV2{_dtag}_{_suffix}'
for _pattern, _opencv in _BAYER_OPENCV.items():
    # The C++ bridge demosaics into grey, RGB and BGR only.
    for _dst, _dtag in (('gray', 'GRAY'), ('rgb', 'RGB'), ('bgr', 'BGR')):
        _FAMILY_CONVERSIONS[(f'bayer_{_pattern}', _dst)] = f'COLOR_Bayer{_opencv}2{_dtag}'
del _src, _tag, _dst, _dtag, _suffix, _pattern, _opencv


def _parse_encoding(encoding):
    """Return (depth code, channels, colour family or None) of an encoding name."""
    if encoding in _COLOUR_ENCODINGS:
        return _COLOUR_ENCODINGS[encoding]
    match = _GENERIC_ENCODING.match(encoding or '')
    if match is None:
        raise CvBridgeError(f'Unrecognized image encoding [{encoding}]')
    return match.group(1), int(match.group(2) or 1), None


def getCvType(encoding):
    """Return the OpenCV type name (e.g. ``'8UC3'``) of an image encoding."""
    depth, channels, _ = _parse_encoding(encoding)
    return f'{depth}C{channels}'


def _bit_depth(depth):
    return np.dtype(_DEPTH_TO_DTYPE[depth]).itemsize * 8


def _conversion_steps(src_encoding, dst_encoding):
    """Return the conversion steps: cv2 code names, and 'depth' for a depth change."""
    src_depth, src_ch, src_family = _parse_encoding(src_encoding)
    dst_depth, dst_ch, dst_family = _parse_encoding(dst_encoding)
    if src_family is None:
        if dst_family is not None:
            raise CvBridgeError(
                f'[{src_encoding}] is not a color format. but [{dst_encoding}] is. '
                'The conversion does not make sense')
        if src_ch != dst_ch:
            raise CvBridgeError(
                f'[{src_encoding}] and [{dst_encoding}] do not have the same number of channel')
        return ['depth']
    if dst_family is None:
        if src_ch != dst_ch:
            raise CvBridgeError(
                f'[{src_encoding}] is a color format but [{dst_encoding}] is not so they must '
                'have the same OpenCV type, CV_8UC3, CV16UC1 ....')
        return ['depth']
    if src_family == dst_family:
        return ['depth']
    code = _FAMILY_CONVERSIONS.get((src_family, dst_family))
    if code is None:
        raise CvBridgeError(f'Unsupported conversion from [{src_encoding}] to [{dst_encoding}]')
    steps = [code]
    if _bit_depth(src_depth) != _bit_depth(dst_depth):
        steps.append('depth')
    return steps


def _convert_depth(image, src_depth, dst_depth):
    """Change the element type like cv::Mat::convertTo, scaling between 8 and 16 bits."""
    dst_dtype = np.dtype(_DEPTH_TO_DTYPE[dst_depth])
    if image.dtype == dst_dtype:
        return image
    scale = 1.0
    if src_depth == '8U' and dst_depth == '16U':
        scale = 65535.0 / 255.0
    elif src_depth == '16U' and dst_depth == '8U':
        scale = 255.0 / 65535.0
    values = image.astype(np.float64) * scale
    if dst_dtype.kind in 'ui':
        info = np.iinfo(dst_dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dst_dtype)


class CvBridge:
    """Convert between ``sensor_msgs.msg.Image`` messages and NumPy arrays."""

    def __init__(self):
        self.numpy_type_to_cvtype = dict(_DTYPE_TO_DEPTH)
        self.numpy_type_to_cvtype.update(_DEPTH_TO_DTYPE)

    def dtype_with_channels_to_cvtype2(self, dtype, n_channels):
        """Return the OpenCV type name of a dtype and channel count, e.g. ``'16UC1'``."""
        name = np.dtype(dtype).name
        if name not in _DTYPE_TO_DEPTH:
            raise CvBridgeError(f'Unsupported array dtype {name}')
        return f'{_DTYPE_TO_DEPTH[name]}C{int(n_channels)}'

    def encoding_to_dtype_with_channels(self, encoding):
        """Return ``(dtype name, channels)`` of an image encoding."""
        depth, channels, _ = _parse_encoding(encoding)
        return _DEPTH_TO_DTYPE[depth], channels

    def imgmsg_to_cv2(self, img_msg, desired_encoding='passthrough'):
        """
        Convert a ``sensor_msgs.msg.Image`` to a NumPy array.

        Returns (H, W) for one channel, (H, W, C) otherwise, in native byte order. With
        ``desired_encoding='passthrough'`` the data keep the message's encoding.
        Raises :class:`CvBridgeError` for an unknown encoding, a ``step`` shorter than a row,
        data shorter than ``step * height`` or an impossible conversion.
        """
        encoding = img_msg.encoding
        dtype_name, n_channels = self.encoding_to_dtype_with_channels(encoding)
        height, width, step = int(img_msg.height), int(img_msg.width), int(img_msg.step)
        dtype = np.dtype(dtype_name).newbyteorder('>' if img_msg.is_bigendian else '<')
        row_bytes = width * n_channels * dtype.itemsize
        if height > 0 and width > 0 and step < row_bytes:
            raise CvBridgeError(
                f'step {step} is shorter than a row of {width} x {n_channels} x '
                f'{dtype.itemsize} bytes = {row_bytes} ({encoding})')
        data = img_msg.data
        if isinstance(data, (list, tuple)):
            data = np.asarray(data, dtype=np.uint8)
        buffer = np.frombuffer(data, dtype=np.uint8)
        if buffer.size < step * height:
            raise CvBridgeError(
                f'image data has {buffer.size} bytes, fewer than step * height = '
                f'{step} * {height} = {step * height} ({encoding} {width}x{height})')
        if height == 0 or width == 0:
            image = np.zeros((height, width, n_channels), dtype=dtype.newbyteorder('='))
        else:
            image = np.ndarray(
                shape=(height, width, n_channels), dtype=dtype, buffer=buffer,
                strides=(step, n_channels * dtype.itemsize, dtype.itemsize))
            if not image.dtype.isnative:
                image = image.astype(image.dtype.newbyteorder('='))
            image = np.ascontiguousarray(image)
        if n_channels == 1:
            image = image.reshape(height, width)
        if desired_encoding in ('passthrough', encoding):
            return image
        return self._convert(image, encoding, desired_encoding)

    def _convert(self, image, src_encoding, dst_encoding):
        import cv2

        src_depth = _parse_encoding(src_encoding)[0]
        dst_depth = _parse_encoding(dst_encoding)[0]
        for step in _conversion_steps(src_encoding, dst_encoding):
            if step == 'depth':
                image = _convert_depth(image, src_depth, dst_depth)
            else:
                try:
                    image = cv2.cvtColor(image, getattr(cv2, step))
                except cv2.error as exc:
                    raise CvBridgeError(
                        f'conversion from [{src_encoding}] to [{dst_encoding}] failed: {exc}'
                    ) from exc
        return image

    def compressed_imgmsg_to_cv2(self, cmprs_img_msg, desired_encoding='passthrough'):
        """
        Decode a ``sensor_msgs.msg.CompressedImage`` (JPEG, PNG, ...) into a NumPy array.

        Returns (H, W) for a grey image (uint16 for a 16-bit PNG), (H, W, 3) BGR or
        (H, W, 4) BGRA for colour, or None when OpenCV cannot decode the payload (as the real
        bridge does). With a ``desired_encoding`` the decoded image is converted as if it were
        ``bgr8`` (raises :class:`CvBridgeError` where that is impossible).
        """
        import cv2

        data = cmprs_img_msg.data
        if isinstance(data, (list, tuple)):
            data = bytes(data)
        buffer = np.frombuffer(data, dtype=np.uint8).reshape(1, -1)
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if desired_encoding == 'passthrough':
            return image
        if image is None:
            raise CvBridgeError(f'cannot decode the {cmprs_img_msg.format!r} payload')
        return self._convert(image, 'bgr8', desired_encoding)

    def cv2_to_compressed_imgmsg(self, cvim, dst_format='jpg'):
        """
        Encode a NumPy array as a ``sensor_msgs.msg.CompressedImage`` in ``dst_format``.

        ``dst_format`` is an OpenCV file extension without the dot (``'jpg'``, ``'png'``, ...);
        it becomes the message's ``format``. A 16-bit grey array stays 16-bit in ``'png'``.
        Raises ``TypeError`` for a non-array; OpenCV's own errors propagate (``cv2.error``).
        """
        import cv2
        from sensor_msgs.msg import CompressedImage

        if not isinstance(cvim, (np.ndarray, np.generic)):
            raise TypeError('Your input type is not a numpy array')
        cmprs_img_msg = CompressedImage()
        cmprs_img_msg.format = dst_format
        _ok, encoded = cv2.imencode('.' + dst_format, cvim)
        cmprs_img_msg.data = array.array('B', np.asarray(encoded).tobytes())
        return cmprs_img_msg

    def cv2_to_imgmsg(self, cvim, encoding='passthrough', header=None):
        """
        Convert a NumPy array, (H, W) or (H, W, C), to a ``sensor_msgs.msg.Image``.

        With ``encoding='passthrough'`` the message's encoding is the array's OpenCV type
        (e.g. ``'8UC3'``); an explicit encoding must match that type, otherwise
        :class:`CvBridgeError` is raised. ``header`` (std_msgs/Header) is copied into the
        message when given.
        """
        from sensor_msgs.msg import Image

        if not isinstance(cvim, (np.ndarray, np.generic)):
            raise TypeError('Your input type is not a numpy array')
        if cvim.ndim not in (2, 3):
            raise CvBridgeError(f'expected an (H, W) or (H, W, C) array, got shape {cvim.shape}')
        n_channels = 1 if cvim.ndim == 2 else cvim.shape[2]
        cv_type = self.dtype_with_channels_to_cvtype2(cvim.dtype, n_channels)
        img_msg = Image()
        img_msg.height = int(cvim.shape[0])
        img_msg.width = int(cvim.shape[1])
        if encoding == 'passthrough':
            img_msg.encoding = cv_type
        else:
            if getCvType(encoding) != cv_type:
                raise CvBridgeError(
                    f'encoding specified as {encoding}, but image has incompatible type '
                    f'{cv_type}')
            img_msg.encoding = encoding
        if header is not None:
            img_msg.header = header
        byteorder = cvim.dtype.byteorder
        img_msg.is_bigendian = byteorder == '>' or (byteorder == '=' and sys.byteorder == 'big')
        raw = np.ascontiguousarray(cvim).tobytes()
        img_msg.data = array.array('B', raw)
        img_msg.step = len(raw) // img_msg.height if img_msg.height else 0
        return img_msg
