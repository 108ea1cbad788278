"""Behaviour of the project's cv_bridge stand-in (tools/ros_env/shims)."""

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import Image
from stand_in import import_stand_in
from std_msgs.msg import Header

import_stand_in('cv_bridge')

from cv_bridge import CvBridge, CvBridgeError  # noqa: E402,I100

RNG = np.random.default_rng(7)
H, W = 6, 5


def raw_message(array, encoding, pad=0, bigendian=False):
    """Build an Image by hand (not through the bridge): rows padded by ``pad`` bytes."""
    arr = np.ascontiguousarray(array)
    arr = arr.astype(arr.dtype.newbyteorder('>' if bigendian else '<'))
    rows = arr.reshape(arr.shape[0], -1).view(np.uint8).reshape(arr.shape[0], -1)
    padded = np.zeros((rows.shape[0], rows.shape[1] + pad), np.uint8)
    padded[:, :rows.shape[1]] = rows
    padded[:, rows.shape[1]:] = 0xAB  # garbage in the padding must be ignored
    msg = Image()
    msg.height, msg.width = arr.shape[0], arr.shape[1]
    msg.encoding = encoding
    msg.is_bigendian = bigendian
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


CASES = [
    ('mono8', np.uint8, 1), ('8UC1', np.uint8, 1), ('mono16', np.uint16, 1),
    ('16UC1', np.uint16, 1), ('bgr8', np.uint8, 3), ('rgb8', np.uint8, 3),
    ('bgra8', np.uint8, 4), ('rgba8', np.uint8, 4), ('32FC1', np.float32, 1),
    ('8UC3', np.uint8, 3), ('16UC3', np.uint16, 3),
]


def random_image(dtype, channels, height=H, width=W):
    shape = (height, width) if channels == 1 else (height, width, channels)
    if np.dtype(dtype).kind == 'f':
        return RNG.uniform(-1e3, 1e3, shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize('encoding,dtype,channels', CASES)
def test_round_trip_through_bridge(encoding, dtype, channels):
    bridge = CvBridge()
    image = random_image(dtype, channels)
    header = Header(frame_id='camera_optical')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = bridge.cv2_to_imgmsg(image, encoding=encoding, header=header)
    assert (msg.height, msg.width, msg.encoding) == (H, W, encoding)
    assert msg.step == W * channels * np.dtype(dtype).itemsize
    assert msg.header.frame_id == 'camera_optical' and msg.header.stamp.nanosec == 345
    back = bridge.imgmsg_to_cv2(msg)
    assert back.dtype == dtype and back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize('encoding,dtype,channels', CASES)
@pytest.mark.parametrize('pad', [0, 3, 17])
@pytest.mark.parametrize('bigendian', [False, True])
def test_decodes_padded_rows_and_either_byte_order(encoding, dtype, channels, pad, bigendian):
    image = random_image(dtype, channels)
    msg = raw_message(image, encoding, pad=pad, bigendian=bigendian)
    back = CvBridge().imgmsg_to_cv2(msg)
    assert back.dtype.isnative and back.dtype == dtype
    np.testing.assert_array_equal(back, image)


def test_big_endian_mono16_known_bytes():
    msg = Image(height=1, width=2, encoding='mono16', is_bigendian=True, step=4)
    msg.data = bytes([0x01, 0x02, 0xFF, 0x00])
    np.testing.assert_array_equal(CvBridge().imgmsg_to_cv2(msg), [[0x0102, 0xFF00]])
    msg.is_bigendian = False
    np.testing.assert_array_equal(CvBridge().imgmsg_to_cv2(msg), [[0x0201, 0x00FF]])


def test_big_endian_32fc1_known_bytes():
    msg = Image(height=1, width=1, encoding='32FC1', is_bigendian=True, step=4)
    msg.data = np.array([1.5], dtype='>f4').tobytes()
    assert CvBridge().imgmsg_to_cv2(msg)[0, 0] == 1.5


def test_passthrough_encoding_names_opencv_type_and_byte_order():
    bridge = CvBridge()
    assert bridge.cv2_to_imgmsg(np.zeros((2, 3), np.uint16)).encoding == '16UC1'
    assert bridge.cv2_to_imgmsg(np.zeros((2, 3, 3), np.uint8)).encoding == '8UC3'
    msg = bridge.cv2_to_imgmsg(np.arange(6, dtype='>u2').reshape(2, 3), 'mono16')
    assert msg.is_bigendian
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), np.arange(6).reshape(2, 3))
    # A non-contiguous view is stored row by row.
    view = np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(view)), view)


def test_colour_conversions_match_opencv():
    bridge = CvBridge()
    bgr = random_image(np.uint8, 3)
    rgb_msg = raw_message(bgr[..., ::-1], 'rgb8', pad=2)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(rgb_msg, 'bgr8'), bgr)
    bgra = random_image(np.uint8, 4)
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(bgra, 'bgra8'), 'bgr8'), bgra[..., :3])
    rgba = random_image(np.uint8, 4)
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(rgba, 'rgba8'), 'bgr8'), rgba[..., 2::-1])
    mono = random_image(np.uint8, 1)
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(mono, 'mono8'), 'bgr8'), np.dstack([mono] * 3))
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(bgr, 'bgr8'), 'mono8'),
        cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_depth_changes_scale_between_8_and_16_bits():
    bridge = CvBridge()
    mono16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    msg = raw_message(mono16, 'mono16', bigendian=True)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, 'mono8'), [[0, 1, 255, 128]])
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(msg, 'bgr8'), np.repeat([[[0], [1], [255], [128]]], 3, axis=2))
    mono8 = np.array([[0, 1, 255]], np.uint8)
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(mono8, 'mono8'), 'mono16'), [[0, 257, 65535]])
    # A colour encoding converts to a generic one with the same channels (values unchanged).
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(mono8, 'mono8'), '8UC1'), mono8)
    # Other depth changes saturate (no scaling).
    depth = np.array([[-5.0, 1.4, 70000.0]], np.float32)
    np.testing.assert_array_equal(
        bridge.imgmsg_to_cv2(raw_message(depth, '32FC1'), '16UC1'), [[0, 1, 65535]])


def test_yuv422_to_bgr8_matches_opencv():
    yuyv = random_image(np.uint8, 2, width=6)
    bridge = CvBridge()
    for encoding, code in (('yuv422_yuy2', cv2.COLOR_YUV2BGR_YUY2),
                           ('yuv422', cv2.COLOR_YUV2BGR_UYVY)):
        np.testing.assert_array_equal(
            bridge.imgmsg_to_cv2(raw_message(yuyv, encoding, pad=4), 'bgr8'),
            cv2.cvtColor(yuyv, code))


@pytest.mark.parametrize('src,dst,message', [
    ('32FC1', 'bgr8', r'\[32FC1\] is not a color format. but \[bgr8\] is'),
    ('8UC1', 'bgr8', r'\[8UC1\] is not a color format'),
    # The real bridge refuses 8UC1 -> mono8 too (vision_opencv #175); callers treat 8UC1 as
    # mono8 themselves (tarfuse_ros.ros.conversions does).
    ('8UC1', 'mono8', r'\[8UC1\] is not a color format. but \[mono8\] is'),
    ('32FC1', '8UC3', 'do not have the same number of channel'),
    ('bgr8', '8UC1', 'is a color format but'),
    ('bgr8', 'yuv422', r'Unsupported conversion from \[bgr8\] to \[yuv422\]'),
])
def test_impossible_conversions_raise(src, dst, message):
    bridge = CvBridge()
    dtype, channels = bridge.encoding_to_dtype_with_channels(src)
    msg = raw_message(random_image(np.dtype(dtype).type, channels), src)
    with pytest.raises(CvBridgeError, match=message):
        bridge.imgmsg_to_cv2(msg, dst)


def test_malformed_messages_raise():
    bridge = CvBridge()
    msg = raw_message(random_image(np.uint8, 3), 'bgr8', pad=4)
    short = Image(height=msg.height, width=msg.width, encoding='bgr8', step=msg.step)
    short.data = bytes(msg.data)[:-1]
    with pytest.raises(CvBridgeError, match='fewer than step \\* height'):
        bridge.imgmsg_to_cv2(short)
    narrow = Image(height=2, width=4, encoding='mono16', step=6)
    narrow.data = bytes(12)
    with pytest.raises(CvBridgeError, match='step 6 is shorter than a row'):
        bridge.imgmsg_to_cv2(narrow)
    unknown = Image(height=1, width=1, encoding='nv21', step=1)
    unknown.data = bytes(1)
    with pytest.raises(CvBridgeError, match=r'Unrecognized image encoding \[nv21\]'):
        bridge.imgmsg_to_cv2(unknown)
    assert issubclass(CvBridgeError, TypeError)  # as in the real bridge


def test_encoding_must_match_array_type():
    bridge = CvBridge()
    with pytest.raises(CvBridgeError, match='encoding specified as bgr8, but image has '
                                            'incompatible type 8UC1'):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.uint8), 'bgr8')
    with pytest.raises(CvBridgeError, match='incompatible type 16UC1'):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.uint16), 'mono8')
    with pytest.raises(TypeError, match='not a numpy array'):
        bridge.cv2_to_imgmsg([[0, 1]], 'mono8')
    with pytest.raises(CvBridgeError, match='shape'):
        bridge.cv2_to_imgmsg(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(CvBridgeError, match='dtype'):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.complex64))


# --- what upstream's own tests pin (vision_opencv cv_bridge/test/enumerants.py, conversions.py)

def test_three_channels_cannot_be_sent_as_rgba8_but_as_rgb8_or_bgr8():
    bridge = CvBridge()
    rgba = raw_message(random_image(np.uint8, 4), 'rgba8')
    rgb = bridge.imgmsg_to_cv2(rgba, 'rgb8')
    assert rgb.shape == (H, W, 3)
    with pytest.raises(CvBridgeError, match='encoding specified as rgba8, but image has '
                                            'incompatible type 8UC3'):
        bridge.cv2_to_imgmsg(rgb, 'rgba8')
    assert bridge.cv2_to_imgmsg(rgb, 'rgb8').encoding == 'rgb8'
    assert bridge.cv2_to_imgmsg(rgb, 'bgr8').encoding == 'bgr8'
    with pytest.raises(TypeError):
        bridge.cv2_to_imgmsg(1, 'rgba8')


def test_generic_three_channels_do_not_convert_to_mono16_but_rgb8_does():
    bridge = CvBridge()
    image = random_image(np.uint8, 3)
    with pytest.raises(CvBridgeError):
        bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(image), 'mono16')  # 8UC3: not a colour
    mono16 = bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(image, 'rgb8'), 'mono16')
    assert mono16.dtype == np.uint16 and mono16.shape == (H, W)


@pytest.mark.parametrize('dst_format', ['jpg', 'jpeg', 'png', 'bmp', 'tiff'])
@pytest.mark.parametrize('shape', [(40, 56), (40, 56, 1), (40, 56, 3)])
def test_compressed_round_trip_keeps_type_and_shape(dst_format, shape):
    bridge = CvBridge()
    original = RNG.integers(0, 255, shape, endpoint=True).astype(np.uint8)
    msg = bridge.cv2_to_compressed_imgmsg(original, dst_format)
    assert msg.format == dst_format and len(msg.data) > 0
    back = bridge.compressed_imgmsg_to_cv2(msg)
    assert back.dtype == np.uint8
    assert back.shape == (shape if len(shape) == 3 and shape[2] == 3 else shape[:2])
    if dst_format in ('png', 'bmp', 'tiff'):  # lossless
        np.testing.assert_array_equal(back.reshape(original.shape), original)


def test_compressed_jpeg_is_close_and_colour_stays_bgr():
    bridge = CvBridge()
    bgr = np.zeros((32, 48, 3), np.uint8)
    bgr[:, :24] = (255, 0, 0)  # blue left half
    bgr[:, 24:] = (0, 0, 255)  # red right half
    back = bridge.compressed_imgmsg_to_cv2(bridge.cv2_to_compressed_imgmsg(bgr))
    assert back.shape == bgr.shape
    assert np.abs(back[4:-4, 4:20].astype(int) - (255, 0, 0)).max() <= 8
    assert np.abs(back[4:-4, 28:-4].astype(int) - (0, 0, 255)).max() <= 8
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(
        bridge.cv2_to_compressed_imgmsg(bgr, 'png'), 'rgb8'), bgr[..., ::-1])


def test_compressed_16_bit_png_stays_16_bit():
    bridge = CvBridge()
    thermal = RNG.integers(27000, 40000, (30, 41)).astype(np.uint16)
    msg = bridge.cv2_to_compressed_imgmsg(thermal, 'png')
    back = bridge.compressed_imgmsg_to_cv2(msg)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, thermal)


def test_undecodable_compressed_payload_gives_none_as_upstream():
    bridge = CvBridge()
    msg = bridge.cv2_to_compressed_imgmsg(random_image(np.uint8, 3))
    msg.data = bytes(msg.data)[:20]  # a truncated JPEG header
    assert bridge.compressed_imgmsg_to_cv2(msg) is None
    msg.data = b'not an image at all'
    assert bridge.compressed_imgmsg_to_cv2(msg) is None
    with pytest.raises(CvBridgeError, match='cannot decode'):
        bridge.compressed_imgmsg_to_cv2(msg, 'bgr8')


BAYER_CODES = {  # ROS pattern -> the OpenCV code the C++ bridge uses (one cvtColor call)
    'rggb': cv2.COLOR_BayerBG2BGR, 'bggr': cv2.COLOR_BayerRG2BGR,
    'gbrg': cv2.COLOR_BayerGR2BGR, 'grbg': cv2.COLOR_BayerGB2BGR,
}


def bayer_mosaic(bgr, pattern):
    """Sample a BGR image through a Bayer colour filter ``pattern`` (e.g. ``'rggb'``)."""
    channel = {'b': 0, 'g': 1, 'r': 2}
    mosaic = np.empty(bgr.shape[:2], bgr.dtype)
    for k, colour in enumerate(pattern):
        row, col = divmod(k, 2)
        mosaic[row::2, col::2] = bgr[row::2, col::2, channel[colour]]
    return mosaic


@pytest.mark.parametrize('pattern', list(BAYER_CODES))
@pytest.mark.parametrize('bits', [8, 16])
def test_bayer_demosaics_like_the_cpp_bridge(pattern, bits):
    bridge = CvBridge()
    dtype = np.uint8 if bits == 8 else np.uint16
    # Smooth colour areas, so demosaicing recovers them: the channel order is then visible.
    bgr = np.zeros((24, 32, 3), dtype)
    top = np.iinfo(dtype).max
    bgr[:, :16] = (top, top // 2, 0)
    bgr[:, 16:] = (0, top // 4, top)
    mosaic = bayer_mosaic(bgr, pattern)
    encoding = f'bayer_{pattern}{bits}'
    msg = raw_message(mosaic, encoding, pad=4 if bits == 8 else 6)
    assert bridge.encoding_to_dtype_with_channels(encoding) == (np.dtype(dtype).name, 1)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), mosaic)  # passthrough: 1 channel
    colour = bridge.imgmsg_to_cv2(msg, f'bgr{bits}')
    np.testing.assert_array_equal(colour, cv2.cvtColor(mosaic, BAYER_CODES[pattern]))
    inner = colour[2:-2, 2:14].astype(np.int64)
    assert np.abs(inner - bgr[2:-2, 2:14]).max() <= top // 50  # right colours, right order
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, f'rgb{bits}'), colour[..., ::-1])
    grey = bridge.imgmsg_to_cv2(msg, f'mono{bits}')
    assert grey.shape == mosaic.shape and grey.dtype == dtype
    if bits == 16:  # 16 -> 8 bit scales like the other 16-bit colour encodings
        eight = bridge.imgmsg_to_cv2(msg, 'bgr8')
        np.testing.assert_array_equal(
            eight, np.rint(colour.astype(np.float64) * 255 / 65535).astype(np.uint8))
