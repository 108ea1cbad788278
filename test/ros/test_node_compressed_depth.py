"""The node on image_transport's compressedDepth transport for the IR, over real DDS.

One node process for the module: ``infrared.transport: compressedDepth`` (it subscribes
``infrared/image_raw/compressedDepth``, ``sensor_msgs/CompressedImage``), the visible camera
raw. The test process encodes real sample images with our encoder of the codec's layout
(12-byte header, 16-bit PNG; a 32FC1 image by the codec's inverse quantisation) and compares
what the node publishes with the engine's result on the same IR sent raw.
"""

import shutil
import time

import cv2
from node_harness import assert_start_up_fails, compressed_depth_msg, HEIGHT, image_msg
from node_harness import make_checkpoint, NodeProcess, running_node
from node_harness import png_stating, Probe, random_domain_id, sample_pair, SAMPLES
from node_harness import VISIBLE_FRAME, WIDTH
import numpy as np
import pytest
import rclpy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.ros.conversions import compressed_depth_msg_to_array, image_msg_to_array
from tarfuse_ros.tools import make_bag as make_bag_tool, play_bag
from tarfuse_ros.tools.bagio import read_messages
from tarfuse_ros.tools.make_bag import make_bag

pytestmark = pytest.mark.dds
TRANSPORTS = ('compressedDepth', 'raw')
IR_FRAME = 'infrared_optical_frame'
TOPIC = '/infrared/image_raw/compressedDepth'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    weights = tmp_path_factory.mktemp('node') / 'random.safetensors'
    make_checkpoint(weights)
    domain = random_domain_id()
    node = NodeProcess(domain, {
        'weights': str(weights), 'device': 'cpu', 'cpu_threads': 1,
        'diagnostics.period': 0.25, 'diagnostics.input_timeout': 3.0, 'qos.depth': 10,
        'infrared.transport': 'compressedDepth',
    })
    probe = Probe(domain, transports=TRANSPORTS)
    try:
        if not probe.wait_until_ready(90.0):
            pytest.fail('the node never answered a compressedDepth pair; its log:\n' + node.log())
        yield node, probe, FusionEngine(weights, device='cpu'), domain
    finally:
        probe.close()
        node.close()


def _pixels(msg, channels=3):
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    return np.frombuffer(msg.data, np.uint8).reshape(shape).astype(int)


def _fused_and_registered(probe, ir_msg, vi):
    stamp = time.time_ns()
    ir_msg.header.stamp.sec, ir_msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    probe.publish_pair(ir_msg, image_msg(vi, 'bgr8', stamp, VISIBLE_FRAME))
    assert probe.wait_for_outputs(stamp, keys=('fused', 'registered'))
    fused, = probe.outputs_for('fused', stamp)
    registered, = probe.outputs_for('registered', stamp)
    assert fused.header.frame_id == VISIBLE_FRAME
    assert (fused.encoding, fused.width, fused.height) == ('bgr8', WIDTH, HEIGHT)
    return _pixels(fused), _pixels(registered, 1)


def test_a_16uc1_thermal_image_on_compressed_depth_is_fused_as_the_same_image_sent_raw(setup):
    node, probe, engine, _ = setup
    ir8, vi = sample_pair()
    # Counts in the low byte too: a decoder that dropped to 8 bits would flatten the IR.
    counts = (20000 + ir8.astype(np.uint16) * 4).astype(np.uint16)
    fused, registered = _fused_and_registered(
        probe, compressed_depth_msg(counts, 0, IR_FRAME), vi)
    # The raw path's array for the same image: image_msg_to_array of a 16UC1 Image.
    raw_ir, kind = image_msg_to_array(image_msg(counts, '16UC1', 0, IR_FRAME))
    assert kind == 'gray16'
    expected = engine.infer(raw_ir, vi)
    assert np.abs(fused - expected.fused).max() <= 1
    assert np.abs(registered - expected.registered_ir).max() <= 1
    eight_bit = engine.infer((counts >> 8).astype(np.uint8), vi)  # the test tells them apart
    assert np.abs(registered - eight_bit.registered_ir).mean() > 20.0
    assert node.alive()


def test_a_32fc1_temperature_image_on_compressed_depth_is_fused_as_the_codec_decodes_it(setup):
    node, probe, engine, _ = setup
    ir8, vi = sample_pair()
    kelvin = (280.0 + ir8.astype(np.float32) * np.float32(0.2)).astype(np.float32)
    msg = compressed_depth_msg(kelvin, 0, IR_FRAME, depth_max=400.0, depth_quantization=6000.0)
    assert msg.format == '32FC1; compressedDepth png'
    fused, registered = _fused_and_registered(probe, msg, vi)
    decoded, kind = compressed_depth_msg_to_array(msg)
    assert kind == 'float32'
    assert np.abs(decoded - kelvin).max() < 0.01  # the codec's quantisation step, in K
    # The decoded image goes the raw 32FC1 path: the same output as that image sent raw.
    raw_ir, _ = image_msg_to_array(image_msg(decoded, '32FC1', 0, IR_FRAME))
    expected = engine.infer(raw_ir, vi)
    assert np.abs(fused - expected.fused).max() <= 1
    assert np.abs(registered - expected.registered_ir).max() <= 1
    assert node.alive()


def test_16_bit_counts_the_publisher_sent_as_0_are_fused_and_said_with_its_fix(setup):
    # image_transport's compressedDepth publisher sends counts above depth_max x 1000 (10000
    # at its default) as 0: a radiometric camera's centi-kelvin arrive flat, without a word.
    node, probe, _, _ = setup
    said = f'{TOPIC}: 30 % of the 16-bit IR pixels are 0 (fused as received)'
    assert 'of the 16-bit IR pixels are 0' not in node.log()  # not said of the frames before
    ir8, vi = sample_pair()
    counts = (20000 + ir8.astype(np.uint16) * 4).astype(np.uint16)
    counts[:int(0.3 * counts.shape[0])] = 0  # as the publisher zeroes what is over its cap
    stamp = time.time_ns()
    probe.publish_pair(compressed_depth_msg(counts, stamp, IR_FRAME),
                       image_msg(vi, 'bgr8', stamp, VISIBLE_FRAME))
    assert probe.wait_for_outputs(stamp)
    assert probe.spin_until(lambda: said in node.log(), 5.0), node.log()
    assert "raise the publisher's <image topic>.compressedDepth.depth_max" in node.log()


def _short(msg):
    msg.data = bytes(msg.data)[:8]


def _truncated(msg):
    msg.data = bytes(msg.data)[:len(msg.data) // 2]


def _rvl(msg):
    msg.format = '16UC1; compressedDepth rvl'


def _bomb(msg):
    msg.data = bytes(msg.data)[:12] + png_stating(20000, 20000)


def _plain_compressed(msg):
    msg.format = 'mono16; png compressed mono16'


BAD = {  # name -> (damage, what the rejection says)
    'short_header': (_short, f'{TOPIC}: short compressedDepth payload (8 B'),
    'truncated_png': (_truncated, 'corrupt or truncated PNG'),
    'rvl': (_rvl, f'{TOPIC}: rvl compressedDepth is not supported; use png'),
    'bomb': (_bomb, f'{TOPIC}: compressedDepth payload is 400.0 Mpx by its header: more than '
                    f'the 66.4 Mpx this package decodes; not decoded'),
    'plain_compressed': (_plain_compressed, 'is no compressedDepth format'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_a_bad_compressed_depth_payload_is_rejected_by_name_and_the_next_pair_runs(setup, case):
    node, probe, _, _ = setup
    damage, cause = BAD[case]
    assert probe.spin_until(lambda: probe.diagnostics, 10.0)
    before = probe.counter('pairs_rejected')
    bad_stamps = []
    for _ in range(2):  # said once in the log for both (throttled)
        stamp = time.time_ns()
        ir_msg, vi_msg = probe.good_pair(stamp)
        damage(ir_msg)
        probe.publish_pair(ir_msg, vi_msg)
        bad_stamps.append(stamp)
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: int(values['pairs_rejected']) > before and
            cause in values['last_rejection']), f'{case} was not reported by name'
        before = probe.counter('pairs_rejected')
    good = time.time_ns()
    probe.publish_pair(*probe.good_pair(good))
    assert probe.wait_for_outputs(good), f'no output for the good pair after {case}'
    for key in ('fused', 'detections', 'registered'):
        assert not [s for s in bad_stamps if probe.outputs_for(key, s)], key
    assert probe.spin_until(lambda: cause in node.log(), 5.0), node.log()
    assert node.log().count(cause) == 1, node.log()
    assert node.alive()


def test_the_visible_input_on_compressed_depth_is_refused_at_start_up():
    # A visible camera's image is no depth-like one: said at start-up, not per frame.
    assert_start_up_fails({'visible.transport': 'compressedDepth'}, [
        "invalid parameter: visible.transport='compressedDepth' is not allowed",
        "use 'raw' or 'compressed'", '-p visible.transport:=compressedDepth'])


def _kelvin_pairs(folder, count):
    """Write the first ``count`` sample pairs with the IR as float32 TIFFs of kelvin."""
    (folder / 'ir').mkdir(parents=True)
    (folder / 'vi').mkdir()
    for path in sorted((SAMPLES / 'ir').glob('*.jpg'))[:count]:
        ir8 = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        kelvin = (280.0 + ir8.astype(np.float32) * np.float32(0.2)).astype(np.float32)
        assert cv2.imwrite(str(folder / 'ir' / f'{path.stem}.tiff'), kelvin)
        shutil.copy(SAMPLES / 'vi' / path.name, folder / 'vi')
    return folder


@pytest.mark.parametrize('encoding', ['mono16', '32FC1'])
def test_a_bag_made_with_ir_transport_compressed_depth_plays_through_the_node(
        setup, tmp_path, capsys, monkeypatch, encoding):
    node, _, engine, domain = setup
    bag = tmp_path / 'depth_bag'
    pairs, options = SAMPLES, {'depth_max': 32.0}  # the publisher keeps counts up to 32000
    if encoding == '32FC1':  # a radiometric camera's kelvin, quantised for 250-400 K
        pairs = _kelvin_pairs(tmp_path / 'kelvin', 3)
        options = {'depth_max': 400.0, 'depth_quantization': 6000.0}
    summary = make_bag(pairs, bag, rate=5.0, ir_encoding=encoding, size=(WIDTH, HEIGHT),
                       max_pairs=3, ir_transport='compressedDepth', **options)
    messages = list(read_messages(bag))
    assert {(topic, msgtype) for topic, msgtype, _t, _raw, _msg in messages} == {
        ('/infrared/image_raw/compressedDepth', 'sensor_msgs/msg/CompressedImage'),
        ('/visible/image_raw', 'sensor_msgs/msg/Image')}
    ir = [msg for topic, _m, _t, _raw, msg in messages if topic.endswith('compressedDepth')]
    assert {msg.format for msg in ir} == {f'{encoding}; compressedDepth png'}
    record = tmp_path / 'outputs'
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))  # tarfuse-play joins the node's domain
    code = play_bag.main([str(bag), '--wait-for-subscribers', '1', '--wait-timeout', '60',
                          '--record', str(record), '--record-topics', '/fused/image_raw',
                          '--linger', '3', '--max-linger', '90'])
    assert code == 0, capsys.readouterr().err
    answered = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
                for topic, _m, _t, _raw, m in read_messages(record) if topic == '/fused/image_raw'}
    vi_stamps = [summary.start_ns + k * 200_000_000 for k in range(3)]
    assert answered <= set(vi_stamps) and vi_stamps[-1] in answered, (answered, vi_stamps)
    # The last pair is fused as the IR image make-bag read, sent raw (32FC1: within the
    # codec's quantisation, 0.002 K at 331 K, far below one level of the stretched image).
    fused, = [m for topic, _m, _t, _raw, m in read_messages(record)
              if topic == '/fused/image_raw' and m.header.stamp.sec * 1_000_000_000
              + m.header.stamp.nanosec == vi_stamps[-1]]
    stem = summary.stems[-1]
    ir_path, = (pairs / 'ir').glob(f'{stem}.*')
    ir_read = make_bag_tool._load_ir(ir_path, (WIDTH, HEIGHT), encoding)
    vi = make_bag_tool._load_vi(pairs / 'vi' / f'{stem}.jpg', (WIDTH, HEIGHT), 'bgr8')
    expected = engine.infer(image_msg_to_array(image_msg(ir_read, encoding, 0, IR_FRAME))[0], vi)
    assert np.abs(_pixels(fused) - expected.fused).max() <= 1
    assert node.alive()


def test_a_compressed_depth_publisher_on_the_raw_ir_topic_is_named_with_the_transport_fix(
        tmp_path):
    # The IR topic given as the camera's .../compressedDepth with the raw transport: DDS
    # matches no publisher of another type. The hint said 'set infrared.transport:=compressed
    # (without /compressed)', which would subscribe a topic nothing publishes.
    weights = tmp_path / 'random.safetensors'
    make_checkpoint(weights)
    topic = '/flir/image_raw/compressedDepth'
    with running_node({'diagnostics.period': 0.25}, weights=weights,
                      remaps=[f'infrared/image_raw:={topic}'],
                      probe_options={'topics': {'infrared': topic}}) as (node, probe):
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=probe.context.get_domain_id(),
                   signal_handler_options=SignalHandlerOptions.NO)
        try:  # another participant: DDS refuses two types on one topic within one
            camera = rclpy.create_node('depth_camera', context=context)
            camera.create_publisher(CompressedImage, topic, 10)
            assert probe.wait_for_diagnostics(
                lambda level, msg, values: level == b'\x01' and
                'sends sensor_msgs/msg/CompressedImage but the node subscribes '
                'sensor_msgs/msg/Image' in msg and 'set infrared.transport:=compressedDepth and '
                'give the base topic (without /compressedDepth)' in msg,
                timeout=15.0), probe.latest_diagnostics()
        finally:
            rclpy.shutdown(context=context)
