"""The node on the compressed transport, over real DDS (one node process for the module).

Both cameras on ``compressed`` (``infrared/image_raw/compressed``: 16-bit PNG,
``visible/image_raw/compressed``: JPEG) with ``publish.fused_compressed`` on. The test process
compresses real sample pairs with OpenCV, as a camera driver would, and compares what the node
publishes with the engine's result on the raw pair.
"""

import json
import signal
import struct
import time
import zlib

import cv2
from node_harness import assert_stops_cleanly, compressed_msg, HEIGHT, make_checkpoint
from node_harness import NodeProcess, png_stating, Probe, random_domain_id, running_node
from node_harness import sample_pair, SAMPLES, VISIBLE_FRAME, WIDTH
import numpy as np
import pytest
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.tools import play_bag
from tarfuse_ros.tools.bagio import image_to_array, read_messages
from tarfuse_ros.tools.make_bag import make_bag

pytestmark = pytest.mark.dds
TRANSPORTS = ('compressed', 'compressed')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    weights = tmp_path_factory.mktemp('node') / 'random.safetensors'
    make_checkpoint(weights)
    domain = random_domain_id()
    node = NodeProcess(domain, {
        'weights': str(weights), 'device': 'cpu', 'cpu_threads': 1,
        'diagnostics.period': 0.25, 'diagnostics.input_timeout': 3.0, 'qos.depth': 10,
        'infrared.transport': 'compressed', 'visible.transport': 'compressed',
        'publish.fused_compressed': 'true',
    })
    probe = Probe(domain, transports=TRANSPORTS)
    try:
        if not probe.wait_until_ready(90.0):
            pytest.fail('the node never answered a compressed pair; its log:\n' + node.log())
        yield node, probe, weights, domain
    finally:
        probe.close()
        node.close()


def _pixels(msg, channels=3):
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    return np.frombuffer(msg.data, np.uint8).reshape(shape).astype(int)


def test_compressed_visible_and_16_bit_thermal_are_fused_like_the_raw_pair(setup):
    node, probe, weights, _ = setup
    ir8, vi = sample_pair()
    # Information in the low byte: a bridge that dropped to 8 bits would flatten the IR.
    ir16 = (20000 + ir8.astype(np.uint16) * 4).astype(np.uint16)
    stamp = time.time_ns()
    vi_msg = compressed_msg(vi, 'jpeg', stamp, VISIBLE_FRAME)
    probe.publish_pair(compressed_msg(ir16, 'png', stamp, 'infrared_optical_frame'), vi_msg)
    assert probe.wait_for_outputs(stamp, keys=('fused', 'fused_compressed', 'detections',
                                               'registered'))
    fused, = probe.outputs_for('fused', stamp)
    registered, = probe.outputs_for('registered', stamp)
    for msg in (fused, registered, probe.outputs_for('fused_compressed', stamp)[0]):
        assert msg.header.frame_id == VISIBLE_FRAME
    assert (fused.encoding, fused.width, fused.height) == ('bgr8', WIDTH, HEIGHT)
    fused_pixels, registered_pixels = _pixels(fused), _pixels(registered, 1)

    engine = FusionEngine(weights, device='cpu')
    # Exactly what the engine gives for the decoded pair (16-bit kept, BGR order) ...
    decoded_vi = cv2.imdecode(np.frombuffer(bytes(vi_msg.data), np.uint8), cv2.IMREAD_COLOR)
    decoded = engine.infer(ir16, decoded_vi)
    assert np.abs(fused_pixels - decoded.fused).max() <= 1
    assert np.abs(registered_pixels - decoded.registered_ir).max() <= 1
    # ... and, within JPEG's loss, what it gives for the raw pair.
    raw = engine.infer(ir16, vi)
    assert np.abs(fused_pixels - raw.fused).mean() < 2.0
    assert np.abs(registered_pixels - raw.registered_ir).mean() < 2.0
    # The thermal image was used at 16 bits: 8-bit IR would register very differently.
    eight_bit = engine.infer((ir16 >> 8).astype(np.uint8), vi)
    assert np.abs(registered_pixels - eight_bit.registered_ir).mean() > 20.0

    # fused/image_raw/compressed: a JPEG of the same fused image, image_transport's format.
    compressed, = probe.outputs_for('fused_compressed', stamp)
    assert compressed.format == 'bgr8; jpeg compressed bgr8'
    jpeg = cv2.imdecode(np.frombuffer(bytes(compressed.data), np.uint8), cv2.IMREAD_UNCHANGED)
    assert jpeg.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(jpeg.astype(int) - fused_pixels).mean() < 2.0


def test_a_driver_s_rgb_ordered_png_is_fused_in_its_own_colours(setup):
    # Found by use: image_transport reads 'rgb8; png compressed rgb8' as a PNG of RGB-ordered
    # channels (a driver that compressed its RGB array with OpenCV, saying so); the node read
    # it as BGR and fused the visible image with red and blue swapped.
    _, probe, weights, _ = setup
    ir, vi = sample_pair()
    stamp = time.time_ns()
    vi_msg = compressed_msg(np.ascontiguousarray(vi[..., ::-1]), 'png', stamp, VISIBLE_FRAME)
    vi_msg.format = 'rgb8; png compressed rgb8'
    probe.publish_pair(compressed_msg(ir, 'png', stamp, 'infrared_optical_frame'), vi_msg)
    assert probe.wait_for_outputs(stamp)
    fused = _pixels(probe.outputs_for('fused', stamp)[0])
    engine = FusionEngine(weights, device='cpu')
    assert np.abs(fused - engine.infer(ir, vi).fused).max() <= 1
    swapped = engine.infer(ir, np.ascontiguousarray(vi[..., ::-1])).fused
    assert np.abs(fused - swapped).max() > 20  # the test tells the two orders apart


def test_a_bayer_camera_on_the_compressed_transport_is_fused_in_colour(setup):
    # Found by a break test: image_transport compresses a Bayer camera's mosaic as it is
    # ('bayer_rggb8; png compressed ', one channel); the node fused that mosaic as a grey
    # visible image (a checkerboard, no colour) where the raw topic is demosaiced.
    _, probe, weights, _ = setup
    ir, vi = sample_pair()
    mosaic = np.empty(vi.shape[:2], np.uint8)  # RGGB
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = vi[0::2, 0::2, 2], vi[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = vi[1::2, 0::2, 1], vi[1::2, 1::2, 0]
    stamp = time.time_ns()
    vi_msg = compressed_msg(mosaic, 'png', stamp, VISIBLE_FRAME)
    vi_msg.format = 'bayer_rggb8; png compressed '
    probe.publish_pair(compressed_msg(ir, 'png', stamp, 'infrared_optical_frame'), vi_msg)
    assert probe.wait_for_outputs(stamp)
    fused, = probe.outputs_for('fused', stamp)
    assert fused.encoding == 'bgr8'
    demosaiced = cv2.cvtColor(mosaic, cv2.COLOR_BayerBG2BGR)  # RGGB, as cv_bridge converts it
    expected = FusionEngine(weights, device='cpu').infer(ir, demosaiced).fused
    assert np.abs(_pixels(fused) - expected).max() <= 1


def _damaged_jpeg(data):
    """Return JPEG ``data`` with 50 bytes of its image data zeroed, as a lossy link does."""
    data = bytearray(data)
    middle = (data.find(b'\xff\xda') + len(data)) // 2
    data[middle:middle + 50] = bytes(50)
    return bytes(data)


def test_a_damaged_jpeg_is_fused_and_said_once_in_the_node_s_log_not_by_libjpeg(setup):
    # Found by use: for a JPEG damaged on a lossy link, which libjpeg decodes all the same,
    # libjpeg printed 'Corrupt JPEG data: N extraneous bytes before marker 0xd9' to the
    # node's stderr for every frame, and the node itself said nothing.
    node, probe, _, _ = setup
    said = '/visible/image_raw/compressed: damaged JPEG ('
    assert said not in node.log()
    assert probe.spin_until(lambda: probe.diagnostics, 10.0)
    before = probe.counter('codec_warnings')
    stamps = []
    for _ in range(3):
        stamp = time.time_ns()
        ir_msg, vi_msg = probe.good_pair(stamp)
        vi_msg.data = _damaged_jpeg(vi_msg.data)
        probe.publish_pair(ir_msg, vi_msg)
        assert probe.wait_for_outputs(stamp), 'a damaged JPEG that libjpeg decodes was not fused'
        stamps.append(stamp)
    assert probe.spin_until(lambda: said in node.log(), 5.0), node.log()
    log = node.log()
    assert log.count(said) == 1, log  # throttled: once for the three
    assert 'decoded all the same and fused (libjpeg: Corrupt JPEG data: ' in log
    assert not [line for line in log.splitlines() if line.startswith('Corrupt JPEG')], log
    # Counted in /diagnostics, for a monitor that reads no log.
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: int(values['codec_warnings']) == before + 3)
    assert node.alive()


def test_a_png_libpng_warns_of_is_fused_and_said_in_the_node_s_log_not_by_libpng(setup):
    # Found by a break test: libpng printed 'libpng warning: sRGB: invalid' (a flawed
    # ancillary chunk, its CRC right) to the node's stderr for every such thermal frame.
    node, probe, _, _ = setup
    ir, _ = sample_pair()
    data = cv2.imencode('.png', ir)[1].tobytes()
    chunk = struct.pack('>I', 1) + b'sRGB\x09' + struct.pack('>I', zlib.crc32(b'sRGB\x09'))
    stamp = time.time_ns()
    ir_msg, vi_msg = probe.good_pair(stamp)
    ir_msg.data = data[:33] + chunk + data[33:]
    probe.publish_pair(ir_msg, vi_msg)
    assert probe.wait_for_outputs(stamp)
    said = '/infrared/image_raw/compressed: PNG ('
    assert probe.spin_until(lambda: said in node.log(), 5.0), node.log()
    log = node.log()
    assert 'decoded with a warning and fused (libpng warning: sRGB: invalid)' in log
    assert not [line for line in log.splitlines() if line.startswith('libpng')], log
    assert node.alive()


def _refused_visible_payload(node, probe, payload, cause, what):
    """Publish a pair whose compressed visible image is ``payload(data)``; check the refusal.

    The rejection must name ``cause`` (diagnostics ``last_rejection``) and the next good pair
    must be fused, with nothing published for the refused one.
    """
    assert probe.spin_until(lambda: probe.diagnostics, 10.0)
    before = probe.counter('pairs_rejected')
    bad_stamp = time.time_ns()
    ir_msg, vi_msg = probe.good_pair(bad_stamp)
    vi_msg.data = payload(bytes(vi_msg.data))
    probe.publish_pair(ir_msg, vi_msg)
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: int(values['pairs_rejected']) > before and
        cause in values['last_rejection']), f'{what} was not reported by name'
    _next_pair_runs_and_nothing_came_of(node, probe, bad_stamp, what)


def test_a_16_bit_thermal_image_compressed_as_jpeg_is_warned_of_naming_png(setup):
    # Found by use: image_transport's default compressed format is JPEG, which holds 8 bits:
    # it scales a thermal camera's 16-bit counts by 255/65535 ('mono16; jpeg compressed
    # mono8'), so counts 20000-20400 keep 2 grey levels, and the node fused that flat IR
    # without a word.
    node, probe, _, _ = setup
    ir8, vi = sample_pair()
    ir16 = (20000 + ir8.astype(np.uint16) + ir8.astype(np.uint16) // 2).astype(np.uint16)
    scaled = np.rint(ir16 * (255.0 / 65535.0)).astype(np.uint8)  # as cv_bridge converts it
    stamp = time.time_ns()
    ir_msg = compressed_msg(scaled, 'jpeg', stamp, 'infrared_optical_frame')
    ir_msg.format = 'mono16; jpeg compressed mono8'
    probe.publish_pair(ir_msg, compressed_msg(vi, 'jpeg', stamp, VISIBLE_FRAME))
    assert probe.wait_for_outputs(stamp)  # fused all the same
    said = ('/infrared/image_raw/compressed: 16-bit images (mono16) compressed as 8-bit JPEG '
            "('mono16; jpeg compressed mono8'), their values scaled by 255/65535")
    assert probe.spin_until(lambda: said in node.log(), 5.0), node.log()
    assert "Set the camera's compressed format to png, which keeps 16 bits" in node.log()
    assert node.alive()


def test_a_16_bit_png_whose_format_says_jpeg_is_fused_at_16_bits_without_the_jpeg_warning(
        setup):
    # Found by a break test: a driver's format string copied from its JPEG stream
    # ('16UC1; jpeg compressed mono8') over a 16-bit PNG made the node warn that the 16-bit
    # images were scaled to 8-bit JPEG; the PNG keeps 16 bits, and was decoded so.
    node, probe, weights, _ = setup
    ir8, vi = sample_pair()
    ir16 = (20000 + ir8.astype(np.uint16) * 4).astype(np.uint16)
    stamp = time.time_ns()
    ir_msg = compressed_msg(ir16, 'png', stamp, 'infrared_optical_frame')
    ir_msg.format = '16UC1; jpeg compressed mono8'
    vi_msg = compressed_msg(vi, 'jpeg', stamp, VISIBLE_FRAME)
    probe.publish_pair(ir_msg, vi_msg)
    assert probe.wait_for_outputs(stamp, keys=('fused', 'registered'))
    registered = _pixels(probe.outputs_for('registered', stamp)[0], 1)
    decoded_vi = cv2.imdecode(np.frombuffer(bytes(vi_msg.data), np.uint8), cv2.IMREAD_COLOR)
    expected = FusionEngine(weights, device='cpu').infer(ir16, decoded_vi).registered_ir
    assert np.abs(registered - expected).max() <= 1
    time.sleep(0.5)  # the warning comes before the pair's outputs, if at all
    assert '(16UC1) compressed as 8-bit JPEG' not in node.log(), node.log()


def test_a_corrupt_jpeg_is_rejected_by_name_and_the_node_answers_the_next_pair(setup):
    node, probe, _, _ = setup
    _refused_visible_payload(
        node, probe, lambda data: data[:len(data) // 8],  # a truncated JPEG
        '/visible/image_raw/compressed: cannot decode the compressed payload', 'a corrupt JPEG')
    assert 'cannot decode the compressed payload' in node.log()


def test_a_payload_pillow_cannot_identify_is_refused_without_any_package_install(setup):
    """The Image.open of ultralytics checked for pi-heif on such a payload (online: installed)."""
    node, probe, _, _ = setup
    _refused_visible_payload(
        node, probe, lambda data: b'no image, as a broken driver might send' * 4,
        'its header states no size that Pillow reads', 'an unidentified payload')
    log = node.log()
    assert 'pi-heif' not in log and 'requirement' not in log, log


def _next_pair_runs_and_nothing_came_of(node, probe, bad_stamp, what):
    """Assert that a good pair after the refused one is answered and nothing of it came out."""
    good_stamp = time.time_ns()
    probe.publish_pair(*probe.good_pair(good_stamp))
    assert probe.wait_for_outputs(good_stamp), 'no output for the good pair after the bad one'
    assert node.alive()
    for key in ('fused', 'fused_compressed', 'detections', 'registered'):
        assert not probe.outputs_for(key, bad_stamp), f'{key} published for {what}'


OVERSIZED = {  # camera -> (size its PNG header states, the reported cause)
    # Over the network's 3840x2160 (input_max_long_side 0), under the 66.4 Mpx decode cap.
    'visible': ((7680, 4320), '/visible/image_raw/compressed: the visible frame 7680x4320 would '
                              'run the network: 33,177,600 pixels, more than the 8,294,400 '
                              '(3840x2160)'),
    # The IR is resized to the visible frame: only the decode cap applies to it.
    'infrared': ((20000, 20000), '/infrared/image_raw/compressed: compressed payload is 400.0 '
                                 'Mpx by its header: more than the 66.4 Mpx this package '
                                 'decodes; not decoded'),
}


@pytest.mark.parametrize('camera', list(OVERSIZED))
def test_an_oversized_compressed_frame_is_refused_by_its_header_and_the_next_pair_runs(
        setup, camera):
    node, probe, _, _ = setup
    (width, height), cause = OVERSIZED[camera]
    assert probe.spin_until(lambda: probe.diagnostics, 10.0)
    before = probe.counter('pairs_rejected')
    bad_stamp = time.time_ns()
    ir_msg, vi_msg = probe.good_pair(bad_stamp)
    bad = vi_msg if camera == 'visible' else ir_msg
    # A valid 16x16 PNG stating a larger size: decoding it would fail with 'cannot decode',
    # so the size in the cause shows it was refused by its header, undecoded.
    bad.format, bad.data = 'mono8; png compressed mono8', png_stating(width, height)
    probe.publish_pair(ir_msg, vi_msg)
    assert probe.wait_for_diagnostics(
        lambda level, msg, values: int(values['pairs_rejected']) > before and
        cause in values['last_rejection'] and 'not decoded' in values['last_rejection']), (
        f'the oversized {camera} frame was not reported as refused by its header')
    _next_pair_runs_and_nothing_came_of(node, probe, bad_stamp, 'an oversized pair')
    assert cause in node.log()


def test_a_bag_of_compressed_topics_plays_through_the_node_with_tarfuse_play(
        setup, tmp_path, capsys, monkeypatch):
    node, probe, _, domain = setup
    bag = tmp_path / 'compressed_bag'
    summary = make_bag(SAMPLES, bag, rate=5.0, ir_encoding='mono16', offset_ms=3.0,
                       size=(WIDTH, HEIGHT), max_pairs=3, ir_transport='compressed',
                       vi_transport='compressed')
    topics = {topic: msgtype for topic, msgtype, _t, _raw, _msg in read_messages(bag)}
    assert topics == {'/infrared/image_raw/compressed': 'sensor_msgs/msg/CompressedImage',
                      '/visible/image_raw/compressed': 'sensor_msgs/msg/CompressedImage'}
    stats_file, record = tmp_path / 'stats.json', tmp_path / 'outputs'
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))  # tarfuse-play joins the node's domain
    code = play_bag.main([str(bag), '--wait-for-subscribers', '1', '--wait-timeout', '60',
                          '--record', str(record), '--record-topics', '/fused/image_raw',
                          '--linger', '3', '--max-linger', '90', '--stats', str(stats_file)])
    assert code == 0, capsys.readouterr().err
    stats = json.loads(stats_file.read_text())
    published = {}
    for topic, _stamp, _wall in stats['published']:
        published[topic] = published.get(topic, 0) + 1
    assert published == {'/infrared/image_raw/compressed': 3,
                         '/visible/image_raw/compressed': 3}
    vi_stamps = [summary.start_ns + k * 200_000_000 for k in range(3)]
    fused = [msg for topic, _m, _t, _raw, msg in read_messages(record)
             if topic == '/fused/image_raw']
    answered = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in fused}
    # Every answer is for a bag pair; the newest pair is always answered (keep-newest slot).
    assert answered <= set(vi_stamps) and vi_stamps[-1] in answered, (answered, vi_stamps)
    image, kind = image_to_array(fused[-1])
    assert kind == 'bgr8' and image.shape == (HEIGHT, WIDTH, 3)
    assert node.alive()


def test_a_node_whose_stderr_the_codec_capture_took_stops_cleanly_with_its_lines(tmp_path):
    # From its first compressed frame on, the node's stderr goes through the codec capture's
    # pipe and relay process: at the stop, the lines the pipe holds are passed on and the exit
    # is clean.
    weights = tmp_path / 'random.safetensors'
    make_checkpoint(weights)
    with running_node({'infrared.transport': 'compressed', 'visible.transport': 'compressed'},
                      weights=weights, probe_options={'transports': TRANSPORTS}) as (node, probe):
        stamp = time.time_ns()
        ir_msg, vi_msg = probe.good_pair(stamp)
        vi_msg.data = _damaged_jpeg(vi_msg.data)
        probe.publish_pair(ir_msg, vi_msg)
        assert probe.wait_for_outputs(stamp)
        said = 'damaged JPEG ('
        assert probe.spin_until(lambda: said in node.log(), 5.0), node.log()
        assert_stops_cleanly(node, probe, signal.SIGINT)  # exit code 0, no traceback
        log = node.log()
        assert log.count(said) == 1 and 'Corrupt JPEG data' not in log.replace(
            '(libjpeg: Corrupt JPEG data', ''), log
