"""sensor_msgs/Image and CompressedImage <-> arrays (through cv_bridge), detections -> msgs.

These tests run against whichever ``cv_bridge`` is importable: the project's stand-in in the
no-distro venv, the distro's on a ROS install.
"""

import io
import os
from pathlib import Path
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

from builtin_interfaces.msg import Time
import cv2
from node_harness import png_stating
import numpy as np
import PIL.Image
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from tarfuse_ros.core.pair_engine import Detection
from tarfuse_ros.core.time_offset import frame_for_motion, MAX_SIDE
from tarfuse_ros.ros import conversions
from tarfuse_ros.ros.conversions import (
    array_to_compressed_depth_msg, array_to_compressed_msg, array_to_image_msg,
    compressed_depth_msg_to_array, compressed_depth_size, compressed_msg_to_array,
    compressed_size, detections_to_msg, image_msg_to_array, image_msg_to_motion_array,
    jpeg_of_16_bit_image, restamped)

RNG = np.random.default_rng(3)
SAMPLES = Path(__file__).resolve().parents[2] / 'samples'


def header(sec=17, nanosec=250, frame_id='visible_optical_frame'):
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def wire_message(array, encoding, pad=0, bigendian=False):
    """Build an Image by hand, rows padded with ``pad`` garbage bytes."""
    arr = np.ascontiguousarray(array)
    arr = arr.astype(arr.dtype.newbyteorder('>' if bigendian else '<'))
    rows = arr.reshape(arr.shape[0], -1).view(np.uint8).reshape(arr.shape[0], -1)
    padded = np.full((rows.shape[0], rows.shape[1] + pad), 0xCD, np.uint8)
    padded[:, :rows.shape[1]] = rows
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding,
                is_bigendian=bigendian, step=padded.shape[1])
    msg.header = header()
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('pad', [0, 5])
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('encoding,dtype,kind', [
    ('mono8', np.uint8, 'gray8'), ('8UC1', np.uint8, 'gray8'),
    ('mono16', np.uint16, 'gray16'), ('16UC1', np.uint16, 'gray16'),
    ('32FC1', np.float32, 'float32'),
])
def test_single_channel_encodings(encoding, dtype, kind, pad, bigendian):
    if np.dtype(dtype).kind == 'f':
        image = RNG.uniform(0, 1, (7, 9)).astype(dtype)
    else:
        image = RNG.integers(0, np.iinfo(dtype).max, (7, 9), endpoint=True).astype(dtype)
    array, got_kind = image_msg_to_array(wire_message(image, encoding, pad, bigendian))
    assert got_kind == kind
    assert array.dtype == dtype and array.dtype.isnative and array.shape == (7, 9)
    assert array.flags.c_contiguous
    np.testing.assert_array_equal(array, image)


@pytest.mark.parametrize('pad', [0, 3, 5])
def test_colour_encodings_come_back_as_bgr(pad):
    bgr = RNG.integers(0, 255, (6, 8, 3), endpoint=True).astype(np.uint8)
    alpha = np.full((6, 8, 1), 200, np.uint8)
    cases = {
        'bgr8': bgr, 'rgb8': bgr[..., ::-1],
        'bgra8': np.concatenate([bgr, alpha], axis=2),
        'rgba8': np.concatenate([bgr[..., ::-1], alpha], axis=2),
        '8UC3': bgr, '8UC4': np.concatenate([bgr, alpha], axis=2),
    }
    for encoding, wire in cases.items():
        array, kind = image_msg_to_array(wire_message(wire, encoding, pad))
        assert kind == 'bgr8', encoding
        assert array.shape == (6, 8, 3) and array.flags.c_contiguous, encoding
        np.testing.assert_array_equal(array, bgr, err_msg=encoding)


@pytest.mark.parametrize('pad', [0, 1, 6])
def test_16_bit_colour_encodings_come_back_as_16_bit_bgr(pad):
    bgr = RNG.integers(0, 65535, (5, 7, 3), endpoint=True).astype(np.uint16)
    alpha = np.full((5, 7, 1), 60000, np.uint16)
    cases = {'bgr16': bgr, 'rgb16': bgr[..., ::-1],
             'bgra16': np.concatenate([bgr, alpha], axis=2),
             'rgba16': np.concatenate([bgr[..., ::-1], alpha], axis=2),
             '16UC3': bgr, '16UC4': np.concatenate([bgr, alpha], axis=2)}
    for encoding, wire in cases.items():
        array, kind = image_msg_to_array(wire_message(wire, encoding, pad, bigendian=True))
        assert kind == 'bgr16' and array.dtype == np.uint16, encoding
        np.testing.assert_array_equal(array, bgr, err_msg=encoding)


BAYER_CODES = {  # ROS pattern -> OpenCV's demosaicing code (its names are shifted by a pixel)
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
def test_bayer_encodings_are_demosaiced_to_bgr(pattern, bits):
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00122.jpg'), cv2.IMREAD_COLOR)[:48, :64]
    if bits == 16:
        vi = vi.astype(np.uint16) * 257
    mosaic = bayer_mosaic(vi, pattern)
    array, kind = image_msg_to_array(wire_message(mosaic, f'bayer_{pattern}{bits}', pad=4))
    assert kind == f'bgr{bits}' and array.shape == vi.shape and array.dtype == vi.dtype
    np.testing.assert_array_equal(array, cv2.cvtColor(mosaic, BAYER_CODES[pattern]))
    # The right pattern gives back the colours of the scene (a wrong one swaps red and blue).
    error = np.abs(array.astype(np.float64) - vi).mean() / (257 if bits == 16 else 1)
    swapped = np.abs(array[..., ::-1].astype(np.float64) - vi).mean() / (257 if bits == 16 else 1)
    assert error < 10 and error < swapped / 2, (error, swapped)


def test_yuv422_variants_decode_like_opencv():
    packed = RNG.integers(0, 255, (4, 6, 2), endpoint=True).astype(np.uint8)
    for encoding, code in (('yuv422', cv2.COLOR_YUV2BGR_UYVY),
                           ('uyvy', cv2.COLOR_YUV2BGR_UYVY),
                           ('yuv422_yuy2', cv2.COLOR_YUV2BGR_YUY2),
                           ('yuyv', cv2.COLOR_YUV2BGR_YUY2)):
        array, kind = image_msg_to_array(wire_message(packed, encoding, pad=4))
        assert kind == 'bgr8'
        np.testing.assert_array_equal(array, cv2.cvtColor(packed, code))


def test_an_opencv_array_sent_by_cv_bridge_as_passthrough_decodes_as_bgr():
    from cv_bridge import CvBridge
    bgr = RNG.integers(0, 255, (6, 8, 3), endpoint=True).astype(np.uint8)
    msg = CvBridge().cv2_to_imgmsg(bgr)  # the default encoding: 'passthrough' -> 8UC3
    assert msg.encoding == '8UC3'
    array, kind = image_msg_to_array(msg)
    assert kind == 'bgr8'
    np.testing.assert_array_equal(array, bgr)


def test_decoded_array_does_not_alias_message():
    msg = wire_message(np.zeros((2, 3), np.uint8), 'mono8')
    array, _ = image_msg_to_array(msg)
    array[:] = 9
    assert bytes(msg.data) == bytes(6)


@pytest.mark.parametrize('change,message', [
    ({'encoding': 'nv21'}, "unsupported encoding 'nv21'"),
    ({'encoding': 'jpeg'}, 'unsupported encoding'),
    ({'height': 0}, 'zero-size image'),
    ({'width': 0}, 'zero-size image'),
    ({'step': 5}, 'step 5 is shorter than one row'),
    ({'data': bytes(20)}, r'data shorter than step \* height: 20 B < 8 \* 3 = 24 B'),
    ({'data': b''}, 'data shorter than step'),
])
def test_bad_messages_raise_value_error_naming_the_cause(change, message):
    msg = wire_message(np.zeros((3, 8), np.uint8), 'mono8')
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=message):
        image_msg_to_array(msg)


def test_non_finite_float_images_are_rejected():
    image = np.ones((3, 4), np.float32)
    image[0, 0] = np.nan
    image[1, 1] = np.nan
    image[2, 2] = np.inf
    with pytest.raises(ValueError, match='holds 2 NaN and 1 inf values'):
        image_msg_to_array(wire_message(image, '32FC1', bigendian=True))


def test_yuv422_with_odd_width_is_rejected():
    msg = wire_message(np.zeros((2, 3, 2), np.uint8), 'yuv422')
    with pytest.raises(ValueError, match='even width'):
        image_msg_to_array(msg)


@pytest.mark.parametrize('encoding,array', [
    ('mono8', np.arange(12, dtype=np.uint8).reshape(3, 4)),
    ('mono8', np.arange(12, dtype=np.uint8).reshape(3, 4, 1)),
    ('8UC1', np.arange(12, dtype=np.uint8).reshape(3, 4)),
    ('mono16', np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000),
    ('16UC1', np.arange(12, dtype='>u2').reshape(3, 4) * 5000),
    ('bgr8', np.arange(36, dtype=np.uint8).reshape(3, 4, 3)),
    ('bgra8', np.arange(48, dtype=np.uint8).reshape(3, 4, 4)),
    ('32FC1', np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)),
])
def test_array_to_image_msg_round_trip(encoding, array):
    source = header(sec=5, nanosec=42, frame_id='fused')
    msg = array_to_image_msg(array, encoding, source)
    assert (msg.height, msg.width, msg.encoding) == (3, 4, encoding)
    assert msg.step * msg.height == len(msg.data)
    assert msg.header.frame_id == 'fused' and msg.header.stamp.nanosec == 42
    source.stamp.sec = 99  # the message holds a copy of the header
    assert msg.header.stamp.sec == 5
    # Through the wire format and back.
    msg = deserialize_message(serialize_message(msg), Image)
    back, _ = image_msg_to_array(msg)
    expected = array.reshape(3, 4, -1)[..., :3] if array.ndim == 3 else array
    np.testing.assert_array_equal(back.reshape(expected.shape), expected)


def test_array_to_image_msg_is_readable_by_cv_bridge():
    cv_bridge = pytest.importorskip('cv_bridge')
    bgr = RNG.integers(0, 255, (5, 6, 3), endpoint=True).astype(np.uint8)
    msg = array_to_image_msg(bgr, 'bgr8', header())
    np.testing.assert_array_equal(cv_bridge.CvBridge().imgmsg_to_cv2(msg), bgr)
    ir = RNG.integers(0, 65535, (5, 6), endpoint=True).astype(np.uint16)
    msg = array_to_image_msg(ir, 'mono16', header())
    np.testing.assert_array_equal(cv_bridge.CvBridge().imgmsg_to_cv2(msg), ir)


@pytest.mark.parametrize('encoding,array,message', [
    ('bgr8', np.zeros((3, 4), np.uint8), r'bgr8 needs a \(H, W, 3\) array, got shape \(3, 4\)'),
    ('mono8', np.zeros((3, 4, 3), np.uint8), r'needs a \(H, W\) array'),
    ('mono8', np.zeros((3, 4), np.uint16), 'mono8 needs dtype uint8, got uint16'),
    ('32FC1', np.zeros((3, 4), np.float64), 'needs dtype float32'),
    ('mono8', np.zeros((0, 4), np.uint8), 'zero-size'),
    ('yuv422', np.zeros((3, 4, 2), np.uint8), "cannot encode 'yuv422'"),
])
def test_array_to_image_msg_rejects_mismatches(encoding, array, message):
    with pytest.raises(ValueError, match=message):
        array_to_image_msg(array, encoding, header())


def test_real_pair_decodes_exactly():
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00122.jpg'), cv2.IMREAD_COLOR)
    ir = cv2.imread(str(SAMPLES / 'ir' / 'FLIR_00122.jpg'), cv2.IMREAD_GRAYSCALE)
    vi, ir = vi[:96, :128], ir[:96, :128]
    # An rgb8 driver with 64-byte aligned rows, and a big-endian 16-bit thermal camera.
    array, kind = image_msg_to_array(wire_message(vi[..., ::-1], 'rgb8', pad=64 - 128 * 3 % 64))
    assert kind == 'bgr8'
    np.testing.assert_array_equal(array, vi)
    ir16 = ir.astype(np.uint16) * 257
    array, kind = image_msg_to_array(wire_message(ir16, 'mono16', pad=6, bigendian=True))
    assert kind == 'gray16'
    np.testing.assert_array_equal(array, ir16)


def compressed(array, fmt):
    """Compress ``array`` with OpenCV directly (as a camera driver would), not the adapter."""
    ok, encoded = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', array)
    assert ok
    msg = CompressedImage(format=fmt)
    msg.header = header()
    msg.data = encoded.tobytes()
    return msg


def test_compressed_jpeg_visible_decodes_to_bgr_like_opencv():
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    for fmt in ('jpeg', 'bgr8; jpeg compressed bgr8', 'rgb8; jpeg compressed bgr8'):
        msg = compressed(vi, 'jpeg')
        msg.format = fmt
        array, kind = compressed_msg_to_array(msg)
        assert kind == 'bgr8' and array.shape == vi.shape and array.flags.owndata
        np.testing.assert_array_equal(
            array, cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR))
        assert np.abs(array.astype(int) - vi).mean() < 3.0  # JPEG's loss only
    # The dispatcher takes either message type.
    assert image_msg_to_array(msg)[1] == 'bgr8'


def test_compressed_16_bit_png_thermal_stays_16_bit():
    ir8 = cv2.imread(str(SAMPLES / 'ir' / 'FLIR_00993.jpg'), cv2.IMREAD_GRAYSCALE)
    ir16 = (20000 + ir8.astype(np.uint16) * 3).astype(np.uint16)
    array, kind = compressed_msg_to_array(compressed(ir16, 'mono16; png compressed mono16'))
    assert kind == 'gray16' and array.dtype == np.uint16
    np.testing.assert_array_equal(array, ir16)
    array, kind = compressed_msg_to_array(compressed(ir8, 'png'))
    assert kind == 'gray8'
    np.testing.assert_array_equal(array, ir8)
    bgra = cv2.cvtColor(cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg')), cv2.COLOR_BGR2BGRA)
    array, kind = compressed_msg_to_array(compressed(bgra, 'png'))
    assert kind == 'bgr8'
    np.testing.assert_array_equal(array, bgra[..., :3])


def test_the_time_offset_check_decodes_a_large_jpeg_shrunk():
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)  # 541x270
    large = cv2.resize(vi, (1280, 640), interpolation=cv2.INTER_CUBIC)
    msg = compressed(large, 'jpeg')
    msg.format = 'bgr8; jpeg compressed bgr8'  # image_transport's
    array = image_msg_to_motion_array(msg, MAX_SIDE)
    assert array.dtype == np.uint8 and array.shape == (80, 160, 3)  # 1/8: long side 160 px
    full = image_msg_to_array(msg)[0]
    assert array.shape[:2] == frame_for_motion(full).shape
    # The same motion frame up to the shrink's filter.
    correlation = np.corrcoef(frame_for_motion(array).ravel(),
                              frame_for_motion(full).ravel())[0, 1]
    assert correlation > 0.99, correlation
    assert image_msg_to_motion_array(compressed(vi, 'jpeg'), MAX_SIDE).shape == (80, 160, 3)
    # Below twice MAX_SIDE, a 16-bit PNG or a raw image: decoded whole, as the pairing path does.
    small = vi[:200, :300]
    for other in (compressed(small, 'jpeg'), compressed(small[..., 0].astype(np.uint16) * 200,
                                                        'png'),
                  wire_message(small, 'bgr8')):
        np.testing.assert_array_equal(image_msg_to_motion_array(other, MAX_SIDE),
                                      image_msg_to_array(other)[0])
    # Its header is read first: a payload that only starts like a JPEG is refused, named.
    broken = compressed(large, 'jpeg')
    broken.data = b'\xff\xd8\xff' + bytes(500)
    with pytest.raises(ValueError, match='compressed payload'):
        image_msg_to_motion_array(broken, MAX_SIDE)


@pytest.mark.parametrize('width,height,exif_orientation', [
    (1280, 721, None), (321, 200, None), (333, 999, None), (323, 7, None), (1280, 720, 6)])
def test_the_time_offset_checks_jpeg_frame_matches_the_whole_frames_size(
        width, height, exif_orientation):
    # A camera whose frames switch between JPEG and PNG (or raw), or carry an EXIF orientation:
    # the shrunk JPEG frame was 1/N of the size rounded up (321 px -> 161 -> 160x99, not the
    # whole frame's 160x100), and turned by its EXIF orientation (which the pairing path's
    # decoding ignores), so that every change across the switch was NaN.
    x = np.linspace(0, 255, width)[None, :] + np.linspace(0, 255, height)[:, None]
    grey = cv2.GaussianBlur((x / 2 + RNG.integers(0, 60, x.shape)).astype(np.uint8), (0, 0), 3)
    colour = np.dstack([grey, grey // 2 + 100, grey // 3])
    buffer = io.BytesIO()
    image = PIL.Image.fromarray(colour)
    exif = image.getexif()
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation
    image.save(buffer, 'JPEG', exif=exif)
    jpeg = CompressedImage(format='jpeg', data=buffer.getvalue())
    whole = frame_for_motion(image_msg_to_array(jpeg)[0])
    assert whole.shape == frame_for_motion(colour).shape
    for msg in (jpeg, compressed(colour, 'png')):
        motion = frame_for_motion(image_msg_to_motion_array(msg, MAX_SIDE))
        assert motion.shape == whole.shape
        correlation = np.corrcoef(motion.ravel(), whole.ravel())[0, 1]
        assert correlation > 0.95, correlation


@pytest.mark.parametrize('case,message', [
    ('truncated', 'cannot decode the compressed payload'),
    ('garbage', 'cannot decode the compressed payload'),
    ('empty', 'empty compressed payload'),
    ('depth', 'a compressedDepth payload .* infrared.transport: compressedDepth'),
])
def test_bad_compressed_payloads_raise_value_error_naming_the_cause(case, message):
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    msg = compressed(vi, 'jpeg')
    if case == 'truncated':
        msg.data = bytes(msg.data)[:200]
    elif case == 'garbage':
        msg.data = bytes(range(256)) * 8
    elif case == 'empty':
        msg.data = b''
    else:
        msg.format = '16UC1; compressedDepth png'
    with pytest.raises(ValueError, match=message):
        compressed_msg_to_array(msg)


@pytest.mark.parametrize('damage', ['truncated', 'no_end', 'corrupt'])
def test_a_damaged_png_is_refused_by_name_without_a_libpng_line(damage, capfd):
    # Found by use: a thermal camera's damaged 16-bit PNG was refused, but libpng printed
    # 'libpng error: ...' to the node's stderr for every such frame, beside the throttled
    # warning (and the refusal said no more than 'corrupt, truncated or not an image').
    ir = cv2.imread(str(SAMPLES / 'ir' / 'FLIR_00993.jpg'), cv2.IMREAD_GRAYSCALE)
    data = bytes(compressed(ir.astype(np.uint16) * 257, 'png').data)
    if damage == 'truncated':
        data = data[:len(data) // 2]
    elif damage == 'no_end':
        data = data[:-12]  # the IEND chunk
    else:
        data = data[:200] + bytes(100) + data[300:]  # inside the image data
    msg = CompressedImage(format='mono16; png compressed mono16', data=data)
    capfd.readouterr()
    # compressed_size too: it checks the chunks in the one reading of the header (the node
    # checks a compressed visible frame's header first; the PNG was opened a second time to
    # check its chunks).
    for read in (compressed_size, compressed_msg_to_array, image_msg_to_array):
        with pytest.raises(ValueError, match=r'corrupt or truncated PNG .*; not decoded'):
            read(msg)
    assert capfd.readouterr().err == ''


def test_a_colour_payload_is_read_in_the_channel_order_its_format_names():
    # Found by use: image_transport reads 'rgb8; png compressed rgb8' as RGB channels (a
    # driver that compresses its RGB array with OpenCV, saying so), but the node read every
    # payload as BGR: red and blue swapped in the fused image.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(vi[..., ::-1])
    rgba = cv2.cvtColor(vi, cv2.COLOR_BGR2RGBA)
    cases = [(rgb, 'rgb8; png compressed rgb8'), (rgb, 'bgr8; png compressed rgb8'),
             (rgba, 'rgba8; png compressed rgba8'),
             (vi, 'rgb8; png compressed bgr8'), (vi, 'bgr8; png compressed bgr8'),
             (vi, 'png'), (vi, 'mono8; png compressed ')]
    for array, fmt in cases:
        msg = compressed(array, 'png')
        msg.format = fmt
        decoded, kind = compressed_msg_to_array(msg)
        assert kind == 'bgr8'
        np.testing.assert_array_equal(decoded, vi, err_msg=fmt)
    ir16 = (vi.astype(np.uint16) * 257)[..., ::-1]
    decoded, kind = compressed_msg_to_array(compressed(ir16, 'rgb16; png compressed rgb16'))
    assert kind == 'bgr16'
    np.testing.assert_array_equal(decoded, vi.astype(np.uint16) * 257)


@pytest.mark.parametrize('bits', [8, 16])
def test_a_bayer_camera_s_compressed_mosaic_is_demosaiced_like_its_raw_frame(bits):
    # Found by a break test: image_transport compresses a Bayer camera's mosaic as it is (one
    # channel, 'bayer_rggb8; png compressed '), and the node took it for a grey image: a
    # checkerboard of the mosaic, no colour, fused as the visible image.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)[:200, :300]
    mosaic = np.empty(vi.shape[:2], np.uint8)  # RGGB
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = vi[0::2, 0::2, 2], vi[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = vi[1::2, 0::2, 1], vi[1::2, 1::2, 0]
    if bits == 16:
        mosaic = mosaic.astype(np.uint16) * 257
    encoding = f'bayer_rggb{bits}'
    msg = compressed(mosaic, 'png')
    msg.format = f'{encoding}; png compressed '  # image_transport's, of a Bayer camera
    array, kind = compressed_msg_to_array(msg)
    expected, raw_kind = image_msg_to_array(wire_message(mosaic, encoding))
    assert kind == raw_kind == f'bgr{bits}'
    np.testing.assert_array_equal(array, expected)
    grey, kind = compressed_msg_to_array(compressed(mosaic, 'png'))  # no Bayer source named
    assert kind == f'gray{bits}' and grey.ndim == 2


def _damaged_jpeg(array):
    """Return a JPEG of ``array`` with 50 bytes of its image data zeroed, as a lossy link does."""
    data = bytearray(cv2.imencode('.jpg', array)[1].tobytes())
    middle = (data.find(b'\xff\xda') + len(data)) // 2
    data[middle:middle + 50] = bytes(50)
    return bytes(data)


def test_a_damaged_jpeg_s_libjpeg_warning_goes_to_the_caller_not_stderr(capfd):
    # Found by use: libjpeg printed 'Corrupt JPEG data: 38 extraneous bytes before marker
    # 0xd9' to the node's stderr for every damaged frame, outside its throttled log.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    msg = CompressedImage(format='bgr8; jpeg compressed bgr8', data=_damaged_jpeg(vi))
    capfd.readouterr()
    found = []
    array, kind = compressed_msg_to_array(msg, codec_warnings=found)
    assert kind == 'bgr8' and array.shape == vi.shape  # libjpeg decodes it all the same
    assert len(found) == 1 and found[0].startswith('Corrupt JPEG data: '), found
    shrunk = image_msg_to_motion_array(msg, 100, codec_warnings=found)
    assert found[1:] == found[:1] and shrunk.ndim == 3
    assert capfd.readouterr().err == ''
    # Written to stderr by anyone else meanwhile (a log line of another thread): kept.
    _, found = conversions._decode_taking_codec_warnings(
        lambda: (os.write(2, b'another line\n'),
                 cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)))
    assert len(found) == 1 and found[0].startswith('Corrupt JPEG data: '), found
    assert capfd.readouterr().err == 'another line\n'

    def failing():
        os.write(2, b'written before a failure\n')
        raise ValueError('decoding failed')
    with pytest.raises(ValueError, match='decoding failed'):
        conversions._decode_taking_codec_warnings(failing)
    assert capfd.readouterr().err == 'written before a failure\n'
    os.write(2, b'after\n')
    conversions.settle_stderr()  # through the capture's pipe, a moment late
    assert capfd.readouterr().err == 'after\n'
    # Without a list, libjpeg prints as it did.
    compressed_msg_to_array(msg)
    conversions.settle_stderr()
    assert 'Corrupt JPEG data' in capfd.readouterr().err


def test_libjpeg_s_warning_after_part_of_a_line_goes_to_the_caller_and_the_line_goes_on(capfd):
    # Found by a break test: a line another thread had begun on stderr (a progress print,
    # '50% ' then 'done') held libjpeg's warning written meanwhile: 'Corrupt JPEG data' was
    # not at a line's start, so it went to stderr, glued to the line, and was not counted.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    data = np.frombuffer(_damaged_jpeg(vi), np.uint8)
    capfd.readouterr()
    for begun in (b'50% ', b'\r[=====     ] '):
        _, found = conversions._decode_taking_codec_warnings(
            lambda: (os.write(2, begun), cv2.imdecode(data, cv2.IMREAD_UNCHANGED)))
        os.write(2, b'done\n')
        conversions.settle_stderr()
        assert len(found) == 1 and found[0].startswith('Corrupt JPEG data: '), found
        assert capfd.readouterr().err == begun.decode() + 'done\n'
    # The node's own line quoting the warning, written during a decoding, is kept whole.
    quoting = (b'[WARN] [tarfuse]: damaged JPEG (6841 B), decoded all the same and fused '
               b'(libjpeg: Corrupt JPEG data: 32 extraneous bytes before marker 0xd9): parts '
               b'of the frame may be grey or garbled\n')
    _, found = conversions._decode_taking_codec_warnings(lambda: os.write(2, quoting))
    conversions.settle_stderr()
    assert found == [] and capfd.readouterr().err == quoting.decode()


def test_a_relay_that_ends_is_started_again_and_after_three_stderr_is_left_as_it_is(
        capfd, monkeypatch):
    # Found by a break test: a relay process that ended (killed; an interpreter that cannot run
    # it) was started again at each decoding, to end again: a process per frame.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    msg = CompressedImage(format='jpeg', data=_damaged_jpeg(vi))
    monkeypatch.setattr(conversions, '_relays_lost', 0)
    compressed_msg_to_array(msg, codec_warnings=[])
    relay = conversions._capture.relay
    os.kill(relay.pid, signal.SIGKILL)  # killed: started again, the warnings taken as before
    relay.wait(10)
    capfd.readouterr()
    found = []
    compressed_msg_to_array(msg, codec_warnings=found)
    assert len(found) == 1 and conversions._capture.relay.poll() is None
    conversions.settle_stderr()
    err = capfd.readouterr().err
    assert err == (f'tarfuse: the stderr relay (pid {relay.pid}) ended with code -9 (1 of 3): '
                   f'started again\n')
    # One that cannot run: two more ends, then stderr is left as it is.
    monkeypatch.setattr(conversions.stderr_relay, '__file__', '/nonexistent/stderr_relay.py')
    os.kill(conversions._capture.relay.pid, signal.SIGKILL)
    for _ in range(8):
        found = []
        array, _ = compressed_msg_to_array(msg, codec_warnings=found)
        assert array.shape == vi.shape and found == []
        time.sleep(0.2)  # for the relay to end
    assert conversions._capture is None and conversions._relays_lost == 3
    err = capfd.readouterr().err
    assert err.count('tarfuse: the stderr relay (pid ') == 2, err
    assert "(3 of 3): the codec's warnings go to stderr as they come from now on\n" in err, err
    assert err.splitlines()[-1].startswith('Corrupt JPEG data: '), err  # libjpeg's own
    os.write(2, b'after\n')
    assert capfd.readouterr().err == 'after\n'


def test_a_relay_that_cannot_start_is_said_once_and_not_tried_at_each_frame(capfd, monkeypatch):
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    msg = CompressedImage(format='jpeg', data=_damaged_jpeg(vi))
    monkeypatch.setattr(conversions, '_relays_lost', 0)
    compressed_msg_to_array(msg, codec_warnings=[])
    os.dup2(conversions._capture.real, 2)  # given back: a new relay needed, which cannot start
    monkeypatch.setattr(sys, 'executable', '/nonexistent/python')
    capfd.readouterr()
    for _ in range(3):
        found = []
        array, _ = compressed_msg_to_array(msg, codec_warnings=found)
        assert array.shape == vi.shape and found == [] and conversions._capture is None
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 4 and err[0].startswith('tarfuse: no stderr relay could be started ('), err
    assert all(line.startswith('Corrupt JPEG data: ') for line in err[1:]), err


def _decode_writing_to_stderr(data, line):
    """Return a decoding of JPEG ``data`` that writes ``line`` to stderr meanwhile."""
    def decode():
        os.write(2, line)  # as another thread's log line written during the decoding
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return decode


@pytest.mark.parametrize('stderr', ['a full disk', 'a pipe whose reader is gone'])
def test_a_damaged_jpeg_decodes_though_stderr_refuses_what_others_wrote_meanwhile(stderr):
    # Found by a break test: what another thread wrote to stderr during the decoding was
    # written back after it, and a stderr that refused it (ENOSPC, EPIPE) made the decoding
    # raise OSError: in the node the pair failed ('processing failed'), lost for a log line.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    decode = _decode_writing_to_stderr(_damaged_jpeg(vi), b'another thread\n')
    if stderr == 'a full disk':
        target = os.open('/dev/full', os.O_WRONLY)
    else:
        reader, target = os.pipe()
        os.close(reader)
    saved = os.dup(2)
    os.dup2(target, 2)
    os.close(target)
    try:
        image, found = conversions._decode_taking_codec_warnings(decode)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    assert image.shape == vi.shape
    assert len(found) == 1 and found[0].startswith('Corrupt JPEG data: '), found


def test_threads_lines_on_stderr_are_all_kept_in_their_order_beside_decodings(capfd):
    # Found by a break test: the lines another thread wrote to stderr during a decoding were
    # written back after stderr was given back, after the lines that thread wrote next (about
    # 30 of 2000 out of order). Then passed on before stderr was given back, a line written
    # just as it was given back still came late or was lost (stderr was a temporary file around
    # each decoding): in 6 of 6 runs of these 3 x 3000 beside two busy loops, 1 to 6 lost.
    # Now stderr is a pipe for good, whose lines the relay process passes on in order.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    small = cv2.resize(vi, (160, 128), interpolation=cv2.INTER_AREA)  # many handovers
    msg = CompressedImage(format='bgr8; jpeg compressed bgr8', data=_damaged_jpeg(small))
    lines = 3000

    def write(writer):
        for number in range(lines):
            os.write(2, f'line {writer} {number}\n'.encode())
            if number % 2 == 0:
                time.sleep(0.0001)  # busy loggers: a line or more in every decoding
    found = []
    compressed_msg_to_array(msg, codec_warnings=found)  # stderr taken over (the relay started)
    capfd.readouterr()
    writers = [threading.Thread(target=write, args=(writer,)) for writer in range(3)]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        compressed_msg_to_array(msg, codec_warnings=found)
    for writer in writers:
        writer.join()
    conversions.settle_stderr()
    written = {}
    for line in capfd.readouterr().err.splitlines():
        _, writer, number = line.split()
        written.setdefault(int(writer), []).append(int(number))
    assert len(found) >= 2 and set(found) == {found[0]}  # each decoding's own, off stderr
    for writer in range(3):
        assert written[writer] == list(range(lines)), (
            writer, sorted(set(range(lines)) - set(written[writer])),
            [(a, b) for a, b in zip(written[writer], written[writer][1:]) if b != a + 1])


def test_decodings_in_two_threads_at_once_each_take_their_own_codec_warnings(capfd):
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    small = cv2.resize(vi, (160, 128), interpolation=cv2.INTER_AREA)
    messages = [
        CompressedImage(format='bgr8; jpeg compressed bgr8', data=_damaged_jpeg(small)),
        CompressedImage(format='bgr8; png compressed bgr8',
                        data=_png_with_chunk(small, b'sRGB', b'\x09')),
        compressed(small, 'jpeg')]
    found = [[] for _ in messages]

    def decode(index):
        for _ in range(200):
            compressed_msg_to_array(messages[index], codec_warnings=found[index])
    capfd.readouterr()
    threads = [threading.Thread(target=decode, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found[0]) == 200 and all(
        warning.startswith('Corrupt JPEG data: ') for warning in found[0]), found[0][:3]
    assert found[1] == ['libpng warning: sRGB: invalid'] * 200
    assert found[2] == []
    conversions.settle_stderr()
    assert capfd.readouterr().err == ''


# Decodes a damaged JPEG three times taking its warnings, writing a line to stderr after each,
# then ends as argv[2] says; prints how many warnings it took.
_ENDING = """
import ctypes, os, sys
from sensor_msgs.msg import CompressedImage
from tarfuse_ros.ros import conversions
msg = CompressedImage(format='jpeg', data=open(sys.argv[1], 'rb').read())
ending = sys.argv[2]
if ending == 'with stderr closed':
    os.close(2)
found = []
for number in range(3):
    conversions.compressed_msg_to_array(msg, codec_warnings=found)
    if ending != 'with stderr closed':
        os.write(2, f'line {number}\\n'.encode())
print(len(found), flush=True)
libc = ctypes.PyDLL(None)  # its calls keep the GIL, as C code dying in the process does
if ending == 'by os._exit':
    libc.write(2, b'last line\\n', 10), os._exit(0)
if ending == 'by abort()':
    libc.write(2, b'last line\\n', 10), libc.abort()
if ending != 'with stderr closed':
    sys.stderr.write('last line\\n')
"""


@pytest.mark.parametrize('ending', ['at exit', 'by os._exit', 'by abort()',
                                    'with stderr a file', 'with stderr closed'])
def test_a_process_taking_codec_warnings_ends_with_all_its_stderr_lines(ending, tmp_path):
    # Its stderr goes through a pipe, which the relay process passes on to the end, whatever
    # the end: read by a thread of the process, a line written just before an abort or
    # os._exit was lost.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    jpeg = tmp_path / 'damaged.jpg'
    jpeg.write_bytes(_damaged_jpeg(vi))
    stderr = tmp_path / 'stderr.txt'
    with open(stderr, 'wb') as file:  # a pipe, read to its end (the relay's too), but for one
        done = subprocess.run(
            [sys.executable, '-c', _ENDING, str(jpeg), ending], stdout=subprocess.PIPE,
            stderr=file if ending == 'with stderr a file' else subprocess.PIPE, timeout=60)
    err = stderr.read_bytes() if ending == 'with stderr a file' else done.stderr
    if ending == 'with stderr closed':  # nothing to take over: decoded as it is
        assert (done.returncode, done.stdout) == (0, b'0\n')
        return
    code = -signal.SIGABRT if ending == 'by abort()' else 0
    assert (done.returncode, done.stdout) == (code, b'3\n'), err
    assert err == b'line 0\nline 1\nline 2\nlast line\n'


def _png_with_chunk(array, chunk_type, chunk_data):
    """Return a PNG of ``array`` with one more chunk (valid CRC) after its header chunk."""
    data = cv2.imencode('.png', array)[1].tobytes()
    body = chunk_type + chunk_data
    chunk = struct.pack('>I', len(chunk_data)) + body + struct.pack('>I', zlib.crc32(body))
    return data[:33] + chunk + data[33:]  # 8-byte signature, 25-byte IHDR chunk


def test_a_png_libpng_warns_of_goes_to_the_caller_not_stderr(capfd):
    # Found by a break test: an sRGB chunk with an invalid value (CRC right, so Pillow's check
    # passes) made libpng print 'libpng warning: sRGB: invalid' on stderr for every frame.
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    msg = CompressedImage(format='bgr8; png compressed bgr8',
                          data=_png_with_chunk(vi, b'sRGB', b'\x09'))
    capfd.readouterr()
    found = []
    array, kind = compressed_msg_to_array(msg, codec_warnings=found)
    np.testing.assert_array_equal(array, vi)  # its pixels are whole
    assert found == ['libpng warning: sRGB: invalid']
    assert capfd.readouterr().err == ''


@pytest.mark.parametrize('fmt,source', [
    ('mono16; jpeg compressed mono8', 'mono16'),  # image_transport's, of a thermal camera
    ('16UC1; jpeg compressed mono8', '16UC1'),
    ('bgr16; jpeg compressed bgr8', 'bgr16'),
    ('bayer_rggb16; jpeg compressed bgr8', 'bayer_rggb16'),
    ('mono16; png compressed mono16', None),  # 16 bits kept
    ('mono8; jpeg compressed mono8', None),
    ('rgb8; jpeg compressed bgr8', None),
    ('jpeg', None),  # cv_bridge's own: no source named
    ('', None),
])
def test_a_16_bit_image_in_an_8_bit_jpeg_is_told_by_its_format(fmt, source):
    ir = cv2.imread(str(SAMPLES / 'ir' / 'FLIR_00993.jpg'), cv2.IMREAD_GRAYSCALE)
    jpeg = compressed(ir, 'jpeg')
    jpeg.format = fmt
    assert jpeg_of_16_bit_image(jpeg) == source
    assert jpeg_of_16_bit_image(Image(encoding='mono16')) is None
    # Found by a break test: a format that says JPEG over a 16-bit PNG (a driver's copied
    # format string) was warned of as 16 bits scaled to 8, which the PNG was not.
    png = compressed(ir.astype(np.uint16) * 257, 'png')
    png.format = fmt
    assert jpeg_of_16_bit_image(png) is None


def test_compressed_size_reads_png_and_jpeg_headers_without_decoding():
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)[:100, :130]
    ir16 = (20000 + vi[..., 0].astype(np.uint16) * 3).astype(np.uint16)
    for array, fmt in ((vi, 'jpeg'), (vi, 'png'), (ir16, 'mono16; png compressed mono16')):
        msg = compressed(array, fmt)
        assert compressed_size(msg) == (100, 130)  # (height, width)
        decoded, _ = compressed_msg_to_array(msg)
        assert decoded.shape[:2] == (100, 130)
    # A payload of exactly max_pixels decodes; one pixel fewer allowed refuses it by its header.
    msg = compressed(vi, 'jpeg')
    assert compressed_msg_to_array(msg, max_pixels=130 * 100)[0].shape == vi.shape
    with pytest.raises(ValueError, match=r'^compressed payload is 130x100 by its header .*'
                                         r'this package decodes; not decoded$'):
        compressed_msg_to_array(msg, max_pixels=130 * 100 - 1)


def test_an_8k_frame_is_within_the_decode_cap():
    assert compressed_size(CompressedImage(format='png', data=png_stating(7680, 4320))) == (
        4320, 7680)
    assert conversions.MAX_DECODED_PIXELS >= 8192 * 4320  # DCI 8K too


@pytest.mark.parametrize('width,height,message', [
    # Above the cap, below Pillow's bomb limit (2 x 89.5 Mpx): Pillow gives the size.
    (10000, 8000, 'compressed payload is 10000x8000 by its header (80.0 Mpx): more than the '
                  '66.4 Mpx this package decodes; not decoded'),
    # Above Pillow's bomb limit (its DecompressionBombError gives the pixel count only).
    (20000, 20000, 'compressed payload is 400.0 Mpx by its header: more than the 66.4 Mpx '
                   'this package decodes; not decoded'),
])
def test_a_payload_whose_header_states_more_than_the_cap_is_refused_undecoded(
        width, height, message):
    msg = CompressedImage(format='png', data=png_stating(width, height))
    msg.header = header()
    for read in (compressed_size, compressed_msg_to_array, image_msg_to_array):
        with pytest.raises(ValueError) as raised:
            read(msg)
        assert str(raised.value) == message
    # With a cap above its size, the same payload goes to OpenCV, which cannot decode it (it
    # holds 16x16 pixels): the refusal above came from the header, before any decoding.
    with pytest.raises(ValueError, match='cannot decode the compressed payload'):
        compressed_msg_to_array(msg, max_pixels=10 ** 9)


def test_a_caller_that_checked_the_header_decodes_without_reading_it_again():
    """The node checks a compressed visible frame's header, then decodes it: one header read."""
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_00993.jpg'), cv2.IMREAD_COLOR)
    msg = compressed(vi, 'jpeg')
    assert compressed_size(msg) == vi.shape[:2]
    array, kind = compressed_msg_to_array(msg, size_checked=True)
    assert kind == 'bgr8'
    np.testing.assert_array_equal(array, compressed_msg_to_array(msg)[0])
    # Not checked again: a header stating 20000x20000 goes on to OpenCV (16x16 pixels in it).
    msg = CompressedImage(format='png', data=png_stating(20000, 20000))
    with pytest.raises(ValueError, match='by its header'):
        compressed_msg_to_array(msg)
    with pytest.raises(ValueError, match='corrupt, truncated or not an image OpenCV reads$'):
        compressed_msg_to_array(msg, size_checked=True)


def _pam_stating(width, height):
    """Return a PAM (netpbm P7) header stating ``width x height`` RGB, and 64 bytes."""
    return (f'P7\nWIDTH {width}\nHEIGHT {height}\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\n'
            f'ENDHDR\n').encode() + bytes(64)


def _hdr_stating(width, height):
    """Return a whole Radiance HDR payload, run-length coded (about 64 times smaller)."""
    line = bytes([2, 2, width >> 8, width & 255])
    for _ in range(4):  # R, G, B, E: runs of up to 127 equal bytes, 2 bytes each
        left = width
        while left:
            run = min(127, left)
            line += bytes([128 + run, 100])
            left -= run
    return f'#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n'.encode() + \
        line * height


def _pam(bgr):
    ok, encoded = cv2.imencode('.pam', bgr)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize('payload, decodes', [
    # 32768 x 32768 = 2^30 pixels, OpenCV's own cap: it allocated the frame, then found the
    # pixels missing.
    (_pam_stating(32768, 32768), False),
    # A whole, valid PAM (Pillow does not identify PAM).
    (_pam(RNG.integers(0, 255, (20, 30, 3), endpoint=True).astype(np.uint8)), True),
    # 70 kB stating 1024x1024, 12 MB of floats decoded (4.3 MB stating 8192x8192: 1.6 GB).
    (_hdr_stating(1024, 1024), True),
], ids=['PAM stating 2^30 pixels', 'small PAM', 'Radiance HDR'])
def test_a_payload_whose_size_pillow_cannot_read_is_refused_undecoded(payload, decodes):
    """Formats Pillow does not identify were decoded by OpenCV, under its cap of 2^30 pixels."""
    decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (decoded is not None) == decodes  # what OpenCV does with them
    msg = CompressedImage(format='pam', data=payload)
    msg.header = header()
    message = (f"cannot decode the compressed payload ({len(payload)} B, format 'pam'): its "
               f'header states no size that Pillow reads (corrupt, truncated, or a format such '
               f'as PAM, PFM or Radiance HDR, which image_transport does not write); not '
               f'decoded')
    for read in (compressed_size, compressed_msg_to_array, image_msg_to_array):
        with pytest.raises(ValueError) as raised:
            read(msg)
        assert str(raised.value) == message


def _pillow_cannot_open(payload):
    """Return a PNG or JPEG ``payload`` with a flaw that Pillow refuses and the decoders skip.

    PNG: a ``tEXt`` chunk with a wrong CRC after IHDR (libpng drops an ancillary chunk with a
    bad CRC; Pillow raises 'broken PNG file'). JPEG: an APP14 marker too short to be Adobe's
    after SOI (libjpeg skips it; Pillow does not identify the file).
    """
    if payload[:8] == b'\x89PNG\r\n\x1a\n':
        text = b'tEXta\x00b'
        chunk = struct.pack('>I', 3) + text + struct.pack('>I', zlib.crc32(text) ^ 1)
        return payload[:33] + chunk + payload[33:]  # 8 of signature + 25 of IHDR
    assert payload[:2] == b'\xff\xd8'
    return payload[:2] + b'\xff\xee' + struct.pack('>H', 7) + b'Adobe' + payload[2:]


def _jpeg_stating(width, height):
    """Return a valid 32x32 JPEG whose frame header (SOF0) states ``width`` x ``height``."""
    ok, encoded = cv2.imencode('.jpg', np.full((32, 32, 3), 90, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b'\xff\xc0')  # marker, length (2), precision (1), height, width
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_a_png_or_jpeg_that_pillow_cannot_open_is_refused_undecoded(fmt):
    # Found by a break test: libpng / libjpeg decode these flawed payloads at the size their
    # header states (a 140 kB PNG stating 12000x12000: 144 MB; a 700 B JPEG stating 9000x9000:
    # 243 MB), so with no size from Pillow they were decoded past the cap.
    stating = png_stating(12000, 9000) if fmt == 'png' else _jpeg_stating(12000, 9000)
    payload = _pillow_cannot_open(stating)
    with pytest.raises(Exception):  # noqa: B017 - Pillow's errors differ by format
        with PIL.Image.open(io.BytesIO(payload)) as image:
            image.load()
    msg = CompressedImage(format=fmt, data=payload)
    for read in (compressed_size, compressed_msg_to_array, image_msg_to_array):
        with pytest.raises(ValueError, match=r'header states no size that Pillow reads .*'
                                             r'not decoded'):
            read(msg)


def test_array_to_compressed_msg_formats_and_round_trips():
    vi = cv2.imread(str(SAMPLES / 'vi' / 'FLIR_04229.jpg'), cv2.IMREAD_COLOR)
    msg = array_to_compressed_msg(vi, header(sec=4, nanosec=2, frame_id='fused'))
    assert msg.format == 'bgr8; jpeg compressed bgr8'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
        4, 2, 'fused')
    msg = deserialize_message(serialize_message(msg), CompressedImage)
    back, kind = compressed_msg_to_array(msg)
    assert kind == 'bgr8' and np.abs(back.astype(int) - vi).mean() < 3.0
    ir16 = RNG.integers(0, 65535, (33, 47), endpoint=True).astype(np.uint16)
    msg = array_to_compressed_msg(ir16, header(), fmt='png')
    assert msg.format == 'mono16; png compressed mono16'
    np.testing.assert_array_equal(compressed_msg_to_array(msg)[0], ir16)
    grey = vi[..., 1].copy()
    assert array_to_compressed_msg(grey, fmt='png').format == 'mono8; png compressed mono8'
    with pytest.raises(ValueError, match='jpeg holds 8-bit images only'):
        array_to_compressed_msg(ir16)
    with pytest.raises(ValueError, match='compressed format must be one of'):
        array_to_compressed_msg(vi, fmt='webp')
    with pytest.raises(ValueError, match=r'shape \(4, 4, 2\)'):
        array_to_compressed_msg(np.zeros((4, 4, 2), np.uint8))


def test_a_missing_cv_bridge_says_what_to_do(monkeypatch):
    conversions.load_bridge.cache_clear()
    monkeypatch.setitem(sys.modules, 'cv_bridge', None)  # import fails like a broken install
    try:
        with pytest.raises(RuntimeError, match="cv_bridge cannot be loaded.*'numpy<2'"):
            conversions.load_bridge()
    finally:
        conversions.load_bridge.cache_clear()


def test_detections_to_msg_fields():
    pytest.importorskip('vision_msgs.msg')
    from vision_msgs.msg import Detection2DArray

    dets = [Detection(10.0, 20.0, 50.0, 40.0, 0.9, 0, 'person'),
            Detection(0.5, 1.5, 2.5, 9.5, 0.25, 3, '')]
    source = header(sec=3, nanosec=7, frame_id='visible_optical_frame')
    msg = detections_to_msg(dets, source)
    assert isinstance(msg, Detection2DArray)
    assert msg.header.frame_id == 'visible_optical_frame'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (3, 7)
    assert len(msg.detections) == 2
    first, second = msg.detections
    for item in msg.detections:
        assert item.header.frame_id == 'visible_optical_frame'
        assert (item.header.stamp.sec, item.header.stamp.nanosec) == (3, 7)
        assert item.id == ''
        assert len(item.results) == 1
        assert item.bbox.center.theta == 0.0
    assert first.results[0].hypothesis.class_id == 'person'
    assert first.results[0].hypothesis.score == pytest.approx(0.9)
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (30.0, 30.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (40.0, 20.0)
    assert second.results[0].hypothesis.class_id == '3'  # no name: the numeric id as text
    assert (second.bbox.center.position.x, second.bbox.size_y) == (1.5, 8.0)
    # A valid message on the wire.
    again = deserialize_message(serialize_message(msg), Detection2DArray)
    assert again.detections[0].results[0].hypothesis.class_id == 'person'


def test_detections_to_msg_empty_and_clipped():
    pytest.importorskip('vision_msgs.msg')
    empty = detections_to_msg([], header())
    assert empty.detections == [] and empty.header.frame_id == 'visible_optical_frame'
    clipped = detections_to_msg([Detection(-4.0, 10.0, 30.0, 70.0, 0.5, 1, 'car')], header(),
                                image_size=(20, 60))
    bbox = clipped.detections[0].bbox
    assert (bbox.center.position.x, bbox.size_x) == (10.0, 20.0)
    assert (bbox.center.position.y, bbox.size_y) == (35.0, 50.0)


@pytest.mark.parametrize('box,message', [
    (Detection(5.0, 0.0, 1.0, 4.0, 0.5, 0, 'a'), 'inverted box'),
    (Detection(float('nan'), 0.0, 1.0, 4.0, 0.5, 0, 'a'), 'non-finite box'),
    (Detection(0.0, 0.0, 1.0, 4.0, 1.5, 0, 'a'), r'score 1.5 outside \[0, 1\]'),
])
def test_detections_to_msg_rejects_bad_boxes(box, message):
    pytest.importorskip('vision_msgs.msg')
    with pytest.raises(ValueError, match=message):
        detections_to_msg([box], header())


@pytest.mark.parametrize('msg_type', [Image, CompressedImage])
def test_restamped_copies_the_header_and_leaves_the_message_as_it_was(msg_type):
    msg = msg_type(header=header(sec=17, nanosec=250, frame_id='infrared_optical_frame'))
    msg.data = b'\x01\x02\x03'
    copied = restamped(msg, 16_940_000_250)  # 60 ms earlier
    assert (copied.header.stamp.sec, copied.header.stamp.nanosec) == (16, 940_000_250)
    assert copied.header.frame_id == 'infrared_optical_frame' and copied.data == msg.data
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (17, 250)  # untouched
    with pytest.raises(ValueError, match='stamp must be >= 0 ns'):
        restamped(msg, -1)


# -- image_transport's compressedDepth transport ---------------------------------------------
def depth_payload(coded, quant_a=0.0, quant_b=0.0, fmt='16UC1; compressedDepth png'):
    """Build a compressedDepth message by hand, as compressed_depth_image_transport lays it out.

    ``ConfigHeader`` (int32 format INV_DEPTH = 0, float32 depthQuantA, depthQuantB; 12 bytes,
    little-endian) and then the 16-bit PNG that ``cv::imencode`` writes.
    """
    ok, png = cv2.imencode('.png', coded)
    assert ok
    return CompressedImage(header=header(), format=fmt,
                           data=struct.pack('<iff', 0, quant_a, quant_b) + png.tobytes())


def thermal_counts():
    ir = cv2.imread(str(SAMPLES / 'ir' / 'FLIR_00993.jpg'), cv2.IMREAD_GRAYSCALE)
    return (20000 + ir.astype(np.uint16) * 37).astype(np.uint16)  # the low byte used too


@pytest.mark.parametrize('fmt', ['16UC1; compressedDepth png', 'mono16; compressedDepth png',
                                 '16UC1; compressedDepth', '16UC1'])
def test_a_16_bit_compressed_depth_payload_decodes_to_its_counts(fmt):
    # The codec reads a format without ';' (its older publishers) or with a bare
    # 'compressedDepth' as PNG.
    counts = thermal_counts()
    msg = depth_payload(counts, fmt=fmt)
    assert compressed_depth_size(msg) == counts.shape
    decoded, kind = compressed_depth_msg_to_array(msg)
    assert kind == 'gray16' and decoded.dtype == np.uint16 and decoded.flags.owndata
    np.testing.assert_array_equal(decoded, counts)
    # Our encoder writes that layout: a round trip keeps every count.
    ours = array_to_compressed_depth_msg(counts, header())
    assert ours.format == '16UC1; compressedDepth png'
    assert bytes(ours.data[:12]) == struct.pack('<iff', 0, 0.0, 0.0)
    assert bytes(ours.data[12:20]) == b'\x89PNG\r\n\x1a\n'
    np.testing.assert_array_equal(compressed_depth_msg_to_array(ours)[0], counts)


def test_a_32fc1_compressed_depth_payload_decodes_by_the_codec_s_inverse_quantisation():
    # Values chosen by hand: A / (v - B) for v != 0, and v == 0 is NaN in the codec.
    quant_a, quant_b = 10100.0, -24.25  # depth_quantization 100, depth_max 400
    coded = np.array([[1, 2, 100], [1000, 65535, 7]], np.uint16)
    decoded, kind = compressed_depth_msg_to_array(
        depth_payload(coded, quant_a, quant_b, '32FC1; compressedDepth png'))
    expected = np.float32(quant_a) / (coded.astype(np.float32) - np.float32(quant_b))
    assert kind == 'float32' and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)
    # A round trip through our encoder (the codec's quantisation) keeps a temperature image
    # in kelvin within its step: A / T^2 levels per kelvin, 0.07 at 300 K for q = 6000.
    kelvin = (250.0 + thermal_counts().astype(np.float32) / 500.0).astype(np.float32)
    msg = array_to_compressed_depth_msg(kelvin, header(), depth_max=400.0,
                                        depth_quantization=6000.0)
    assert msg.format == '32FC1; compressedDepth png'
    quant = struct.unpack('<iff', bytes(msg.data[:12]))
    assert quant[0] == 0 and quant[1] == pytest.approx(6000.0 * 6001.0)
    assert quant[2] == pytest.approx(1.0 - 6000.0 * 6001.0 / 400.0)
    decoded, _ = compressed_depth_msg_to_array(msg)
    assert np.abs(decoded - kelvin).max() < 0.01


def test_our_compressed_depth_encoder_refuses_a_float_value_its_16_bits_cannot_hold():
    # 100 K codes as A (1/100 - 1/400) + 1 = 270046 at q 6000: it was clipped to 65535 and
    # decoded as 231.5 K without a word. q(q + 1) (1/100 - 1/400) + 1 < 65536: q < 2955.51.
    kelvin = np.array([[100.0, 300.0], [350.0, 399.0]], np.float32)
    with pytest.raises(ValueError, match=r'codes the smallest value, 100, as 270046, past its '
                                         r'16 bits .*give a depth_quantization below 2955\.51'):
        array_to_compressed_depth_msg(kelvin, header(), depth_max=400.0,
                                      depth_quantization=6000.0)
    with pytest.raises(ValueError, match='as 65558, past its 16 bits'):
        array_to_compressed_depth_msg(kelvin, header(), depth_max=400.0,
                                      depth_quantization=2956.0)
    # The largest quantisation that fits keeps the coldest pixel within its step.
    msg = array_to_compressed_depth_msg(kelvin, header(), depth_max=400.0,
                                        depth_quantization=2955.0)
    decoded, _ = compressed_depth_msg_to_array(msg)
    np.testing.assert_allclose(decoded, kelvin, atol=0.02)


def test_our_compressed_depth_encoder_refuses_a_quantization_past_its_float32_header():
    # q 1e30: A = q (q + 1) is inf in float32, B = 1 - A / depth_max -inf, every value coded
    # inf - inf = NaN, written as 0 past the 16-bit check: a payload the node decodes as all
    # NaN, returned without a word.
    kelvin = np.array([[280.0, 300.0], [350.0, 399.0]], np.float32)
    for quantization, depth_max in ((1e30, 400.0), (1e19, 1e-3)):
        given = re.escape(f'{quantization:g}')
        with pytest.raises(ValueError, match=rf'depth_quantization {given} gives the codec '
                                             r'parameters A = .*, not finite in its float32 '
                                             r'header: give a smaller'):
            array_to_compressed_depth_msg(kelvin, header(), depth_max=depth_max,
                                          depth_quantization=quantization)


def test_a_32fc1_compressed_depth_payload_with_values_the_codec_coded_0_is_refused_by_count():
    # The codec sends a value at or above its depth_max (default 10) as 0, decoded as NaN; a
    # raw 32FC1 image with NaN is refused, and so is this one, saying what to change.
    kelvin = np.full((4, 5), 300.0, np.float32)
    kelvin[0, :3] = 12.0  # under depth_max 400 ...
    msg = array_to_compressed_depth_msg(kelvin, header())  # ... but the default depth_max is 10
    with pytest.raises(ValueError, match=r'holds 20 NaN values .*raise its '
                                         r'compressedDepth.depth_max'):
        compressed_depth_msg_to_array(msg)


@pytest.mark.parametrize('case,message', [
    ('empty', 'empty compressedDepth payload'),
    ('header_only', r'short compressedDepth payload \(12 B'),
    ('short', r'short compressedDepth payload \(5 B'),
    ('truncated', r'corrupt or truncated PNG .*; not decoded'),
    ('corrupt', r'corrupt or truncated PNG .*; not decoded'),
    ('not_png', 'no PNG after its 12-byte header'),
    ('bomb', r'compressedDepth payload is 400.0 Mpx by its header: more than the 66.4 Mpx '
             r'this package decodes; not decoded'),
    ('rvl', r'rvl compressedDepth is not supported; use png'),
    ('plain', r"format 'mono16; png compressed mono16' is no compressedDepth format"),
    ('eight_bit', r"compressedDepth encoding 'mono8' .* is not supported"),
    ('eight_bit_png', r'decodes to shape .* uint8, where the codec writes a 16-bit'),
])
def test_bad_compressed_depth_payloads_raise_value_error_naming_the_cause(case, message, capfd):
    msg = depth_payload(thermal_counts())
    data = bytes(msg.data)
    if case == 'empty':
        msg.data = b''
    elif case == 'header_only':
        msg.data = data[:12]
    elif case == 'short':
        msg.data = data[:5]
    elif case == 'truncated':
        msg.data = data[:len(data) // 2]
    elif case == 'corrupt':
        msg.data = data[:300] + bytes(100) + data[400:]  # inside the image data
    elif case == 'not_png':
        msg.data = data[:12] + bytes(range(256)) * 4
    elif case == 'bomb':  # a valid tiny PNG stating 20000x20000: refused by its header
        msg.data = data[:12] + png_stating(20000, 20000)
    elif case == 'rvl':
        msg.format = '16UC1; compressedDepth rvl'
    elif case == 'plain':
        msg.format = 'mono16; png compressed mono16'
    elif case == 'eight_bit':
        msg.format = 'mono8; compressedDepth png'
    else:
        msg = depth_payload(np.zeros((8, 8), np.uint8))
    capfd.readouterr()
    with pytest.raises(ValueError, match=message):
        compressed_depth_msg_to_array(msg)
    assert capfd.readouterr().err == ''  # no libpng line beside the refusal
