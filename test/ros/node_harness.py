"""Helpers for the node tests: start the real node as a process, talk to it over real DDS.

:class:`NodeProcess` runs ``python -m tarfuse_ros.ros.fuse_node --ros-args ...`` on a domain of its
own; :class:`Probe` is the test's side (publishers for both cameras, subscribers for every
output, the parameter service).  Waiting is always done by spinning until a condition holds,
never by fixed sleeps.
"""

from contextlib import contextmanager
import os
from pathlib import Path
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import cv2
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import Detection2DArray

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / 'samples'
PARAMS_FILE = ROOT / 'config' / 'tarfuse.yaml'
WIDTH, HEIGHT = 160, 128
VISIBLE_FRAME = 'visible_optical_frame'
OUTPUTS = {
    'fused': ('fused/image_raw', Image),
    'fused_compressed': ('fused/image_raw/compressed', CompressedImage),
    'camera_info': ('fused/camera_info', CameraInfo),
    'detections': ('detections', Detection2DArray),
    'registered': ('registered/image_raw', Image),
    'debug': ('debug/image_raw', Image),
}


def domain_range():
    """Return (low, high): the DDS domain ids this test process draws from, both included.

    101-215, or this pytest-xdist worker's share of it (``TARFUSE_TEST_DOMAINS``, conftest.py),
    so that two workers' node tests never meet on one domain.
    """
    low, high = os.environ.get('TARFUSE_TEST_DOMAINS', '101-215').split('-')
    return int(low), int(high)


def random_domain_id():
    """Return a DDS domain id unlikely to be used by another test run at the same time."""
    return random.SystemRandom().randint(*domain_range())


def make_checkpoint(path, seed=0):
    """Save a randomly initialised (seeded) TarFuse checkpoint; return its class names."""
    import torch
    from tarfuse_ros.core.checkpoint import save_checkpoint
    from tarfuse_ros.core.model.tarfuse import build_model

    torch.manual_seed(seed)
    model = build_model().eval()
    save_checkpoint(path, model, provenance={'note': f'random init, seed {seed}, node tests'})
    return tuple(model.config.class_names)


def sample_pair(width=WIDTH, height=HEIGHT, stem='FLIR_00122'):
    """Return a real RoadScene pair from ``samples/`` resized: (IR uint8 HxW, VI uint8 HxWx3)."""
    ir = cv2.imread(str(SAMPLES / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(SAMPLES / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    if ir is None or vi is None:
        raise FileNotFoundError(f'sample pair {stem} missing under {SAMPLES}')
    size = (width, height)
    return (cv2.resize(ir, size, interpolation=cv2.INTER_AREA),
            cv2.resize(vi, size, interpolation=cv2.INTER_AREA))


def image_msg(array, encoding, stamp_ns, frame_id):
    """Build a ``sensor_msgs/Image`` (native byte order, unpadded rows) from an array."""
    array = np.ascontiguousarray(array)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == 'big')
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


def camera_info_msg(stamp_ns, focal):
    """Return a 160x128 visible camera_info stamped ``stamp_ns`` with focal length ``focal``."""
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob')
    info.header.frame_id = VISIBLE_FRAME
    info.header.stamp.sec, info.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    info.k = [focal, 0.0, WIDTH / 2, 0.0, focal, HEIGHT / 2, 0.0, 0.0, 1.0]
    return info


def compressed_msg(array, fmt, stamp_ns, frame_id):
    """Build a ``sensor_msgs/CompressedImage`` as a camera driver would (OpenCV directly).

    ``fmt`` is ``'jpeg'`` or ``'png'``; ``format`` follows image_transport
    (``'mono16; png compressed mono16'``).
    """
    ok, encoded = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', array)
    assert ok, f'OpenCV cannot encode {array.shape} {array.dtype} as {fmt}'
    encoding = f'{"bgr" if array.ndim == 3 else "mono"}{8 * array.dtype.itemsize}'
    msg = CompressedImage(format=f'{encoding}; {fmt} compressed {encoding}')
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.data = encoded.tobytes()
    return msg


def compressed_depth_msg(array, stamp_ns, frame_id, **options):
    """Build a ``CompressedImage`` of image_transport's compressedDepth transport (PNG).

    ``array``: (H, W) uint16 (``'16UC1; compressedDepth png'``) or float32 (``'32FC1; ...'``);
    ``options`` go to :func:`~tarfuse_ros.ros.conversions.array_to_compressed_depth_msg` (our
    encoder, written from the codec's description).
    """
    from tarfuse_ros.ros.conversions import array_to_compressed_depth_msg
    msg = array_to_compressed_depth_msg(array, **options)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def png_stating(width, height):
    """Return a valid tiny PNG (16x16 grey pixels) whose header states ``width`` x ``height``.

    A real 16x16 PNG from OpenCV with its IHDR chunk's size patched and the chunk's CRC
    recomputed: readers of the header see the stated size, while decoding fails (the image
    data holds 16x16 pixels), so a refusal naming the stated size proves it was not decoded.
    A real 20000x20000 PNG would take 1 s and 400 MB to encode.
    """
    ok, encoded = cv2.imencode('.png', np.zeros((16, 16), np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    assert data[12:16] == b'IHDR'  # 8-byte signature, 4-byte length, chunk type, then the data
    data[16:24] = struct.pack('>II', width, height)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))  # over type and data
    return bytes(data)


class NodeProcess:
    """The fusion node running in a child process on ``domain_id``."""

    def __init__(self, domain_id, parameters, namespace='/', env=None, params_files=(),
                 remaps=(), program=None, sigint_ignored=False):
        """Start the node (or ``program``: a script of nodes; ``namespace`` None: theirs).

        ``sigint_ignored``: start it with SIGINT ignored, as a shell starts a background job.
        """
        self.log_file = tempfile.NamedTemporaryFile(
            prefix='tarfuse_node_', suffix='.log', delete=False)
        environment = dict(os.environ if env is None else env)
        environment['ROS_DOMAIN_ID'] = str(domain_id)
        environment['PYTHONUNBUFFERED'] = '1'
        environment['RCUTILS_COLORIZED_OUTPUT'] = '0'
        pythonpath = environment.get('PYTHONPATH', '')
        if str(ROOT) not in pythonpath.split(os.pathsep):
            environment['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), pythonpath]))
        command = [sys.executable, *([str(program)] if program else
                                     ['-m', 'tarfuse_ros.ros.fuse_node']),
                   '--ros-args', '--params-file', str(PARAMS_FILE)]
        if namespace is not None:
            command += ['-r', f'__ns:={namespace}']
        for path in params_files:  # applied after the shipped file, as the launch file does
            command += ['--params-file', str(path)]
        for name, value in parameters.items():
            command += ['-p', f'{name}:={value}']
        for rule in remaps:  # 'from:=to'
            command += ['-r', rule]
        self.command = command
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment,
                                        stdout=self.log_file, stderr=subprocess.STDOUT,
                                        preexec_fn=ignore)

    def alive(self):
        return self.process.poll() is None

    def log(self):
        """Return everything the node printed so far."""
        return Path(self.log_file.name).read_text(errors='replace')

    def wait(self, timeout):
        """Wait for the exit; return the code (None if still running after ``timeout``)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGINT, timeout=20.0):
        """Send ``sig`` and wait; return (exit code, seconds taken); kill if it hangs."""
        start = time.monotonic()
        if self.alive():
            self.process.send_signal(sig)
        code = self.wait(timeout)
        if code is None:
            self.process.kill()
            self.process.wait(10)
        return code, time.monotonic() - start

    def close(self):
        if self.alive():
            self.stop(signal.SIGINT, 10.0)
        self.log_file.close()
        Path(self.log_file.name).unlink(missing_ok=True)


@contextmanager
def running_node(parameters, weights=None, ready_timeout=90.0, probe_options=None,
                 **node_options):
    """Start a node and a probe on a new domain; yield ``(node, probe)``, close both after.

    ``parameters`` override ``device: cpu`` and ``cpu_threads: 1``; ``weights`` (a path) is
    passed as the ``weights`` parameter, None runs the shipped model. ``node_options`` go to
    :class:`NodeProcess`, ``probe_options`` to :class:`Probe`. Fails the test with the node's
    log where no pair is answered within ``ready_timeout`` s.
    """
    import pytest
    domain = random_domain_id()
    given = {'device': 'cpu', 'cpu_threads': 1, **parameters}
    if weights is not None:
        given['weights'] = str(weights)
    node = NodeProcess(domain, given, **node_options)
    probe = Probe(domain, **(probe_options or {}))
    try:
        if not probe.wait_until_ready(ready_timeout):
            pytest.fail('the node never answered a pair; its log:\n' + node.log())
        yield node, probe
    finally:
        probe.close()
        node.close()


def assert_stops_cleanly(node, probe, sig, timeout=120.0):
    """Send ``sig`` just after a pair (the worker likely inside the model); assert a clean exit.

    Clean: exit code 0, no traceback. No tight bound on the time, which a loaded machine
    stretches: only a hang fails (killed after ``timeout`` s, with the log). A worker still
    inside the model after the node's 10 s wait is said in the log ('the worker was still
    inside the model'), the exit clean all the same. Return ``(seconds, whether said)``.
    """
    probe.publish_pair(*probe.good_pair(time.time_ns()))
    code, seconds = node.stop(sig, timeout=timeout)
    log = node.log()
    assert code == 0, f'exit code {code} after {seconds:.1f} s:\n{log}'
    assert 'Traceback' not in log, log
    return seconds, 'the worker was still inside the model' in log


def assert_start_up_fails(parameters, words, timeout=90.0):
    """Start the node with ``parameters``; assert it exits non-zero with one clear message.

    The message is a FATAL log line (no traceback) that contains every one of ``words``.
    """
    node = NodeProcess(random_domain_id(), parameters)
    try:
        code = node.wait(timeout)
        log = node.log()
    finally:
        node.close()
    assert code is not None and code != 0, log
    assert 'Traceback' not in log and 'FATAL' in log, log
    for word in words:
        assert word in log, f'{word!r} missing from:\n{log}'


class Probe:
    """The test's ROS side: publishes camera images, collects every output of the node."""

    def __init__(self, domain_id, namespace='', reliability='best_effort', node_name='tarfuse',
                 transports=('raw', 'raw'), topics=None):
        """Publish on ``topics`` (``{camera: base image topic}``; ``<camera>/image_raw`` else)."""
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('tarfuse_test_probe', namespace=namespace or '/',
                                      context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = {key: [] for key in OUTPUTS}
        self.diagnostics = []
        self._arrays = 0  # /diagnostics arrays received (of any node)
        self._subs = []
        for key, (topic, msg_type) in OUTPUTS.items():
            self._subs.append(self.node.create_subscription(
                msg_type, topic, lambda msg, k=key: self.received[k].append(msg), 50))
        self._subs.append(self.node.create_subscription(
            DiagnosticArray, '/diagnostics', self._on_diagnostics, 50))
        self.ir_pub = self.visible_pub = None
        self.transports = dict(zip(('infrared', 'visible'), transports))
        self.topics = {name: f'{name}/image_raw' for name in self.transports}
        self.topics.update(topics or {})
        self.set_input_qos(reliability)
        self.info_pub = self.node.create_publisher(CameraInfo, 'visible/camera_info', 10)
        self.node_name = node_name
        # The node's /diagnostics status: '<namespace>/<node>: fusion', '<node>: fusion' in /.
        self.status_prefix = '/'.join(filter(None, [namespace.strip('/'), node_name])) + ':'
        self._param_client = None

    # -- publishing ------------------------------------------------------------------------
    def set_input_qos(self, reliability, which=('infrared', 'visible')):
        """(Re)create the image publishers (of each camera's transport) with a reliability."""
        qos = QoSProfile(depth=50, reliability=(
            ReliabilityPolicy.RELIABLE if reliability == 'reliable'
            else ReliabilityPolicy.BEST_EFFORT))
        for name in which:
            attribute = 'ir_pub' if name == 'infrared' else 'visible_pub'
            old = getattr(self, attribute)
            if old is not None:
                self.node.destroy_publisher(old)
            transport = self.transports[name]
            if transport in ('compressed', 'compressedDepth'):
                publisher = self.node.create_publisher(
                    CompressedImage, f'{self.topics[name]}/{transport}', qos)
            else:
                publisher = self.node.create_publisher(Image, self.topics[name], qos)
            setattr(self, attribute, publisher)

    def publish_pair(self, ir_msg, vi_msg):
        self.ir_pub.publish(ir_msg)
        self.visible_pub.publish(vi_msg)

    def good_pair(self, stamp_ns, ir_encoding='mono8', ir_size=None, visible_colour=True):
        """Build a valid (IR, visible) message pair from the real sample images.

        A camera on the compressed transport sends IR as PNG (16-bit for ``mono16``) and the
        visible image as JPEG; on compressedDepth, the IR as 16UC1 (``mono16``'s values).
        """
        ir, vi = sample_pair()
        if ir_size is not None:
            ir = cv2.resize(ir, ir_size, interpolation=cv2.INTER_LINEAR)
        if ir_encoding == 'mono16' or self.transports['infrared'] == 'compressedDepth':
            ir = ir.astype(np.uint16) * 257 + 300
        vi_encoding = 'bgr8'
        if not visible_colour:
            vi, vi_encoding = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY), 'mono8'
        if self.transports['infrared'] == 'compressed':
            ir_msg = compressed_msg(ir, 'png', stamp_ns, 'infrared_optical_frame')
        elif self.transports['infrared'] == 'compressedDepth':
            ir_msg = compressed_depth_msg(ir, stamp_ns, 'infrared_optical_frame')
        else:
            ir_msg = image_msg(ir, ir_encoding, stamp_ns, 'infrared_optical_frame')
        if self.transports['visible'] == 'compressed':
            vi_msg = compressed_msg(vi, 'jpeg', stamp_ns, VISIBLE_FRAME)
        else:
            vi_msg = image_msg(vi, vi_encoding, stamp_ns, VISIBLE_FRAME)
        return ir_msg, vi_msg

    # -- spinning ----------------------------------------------------------------------------
    def spin_until(self, predicate, timeout=20.0, tick=None, tick_period=0.1):
        """Spin until ``predicate()`` is true (return True) or ``timeout`` passes (False).

        ``tick`` is called every ``tick_period`` seconds (e.g. to keep publishing).
        """
        deadline = time.monotonic() + timeout
        next_tick = time.monotonic()
        while time.monotonic() < deadline:
            if predicate():
                return True
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick = time.monotonic() + tick_period
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def outputs_for(self, key, stamp_ns):
        """Return the received messages of output ``key`` whose header has ``stamp_ns``."""
        return [m for m in self.received[key]
                if m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec == stamp_ns]

    def wait_for_outputs(self, stamp_ns, keys=('fused', 'detections'), timeout=20.0):
        return self.spin_until(lambda: all(self.outputs_for(k, stamp_ns) for k in keys),
                               timeout)

    def _on_diagnostics(self, msg):
        self._arrays += 1
        for status in msg.status:
            if status.name.startswith(self.status_prefix):
                self.diagnostics.append(status)

    def latest_diagnostics(self):
        """Return the newest status of the node as ``(level, message, {key: value})``."""
        if not self.diagnostics:
            return None
        status = self.diagnostics[-1]
        return (status.level, status.message, {kv.key: kv.value for kv in status.values})

    def wait_for_diagnostics(self, predicate, timeout=20.0, tick=None):
        """Spin until a new diagnostics status satisfies ``predicate(level, msg, values)``."""
        start = len(self.diagnostics)

        def check():
            return any(predicate(s.level, s.message, {kv.key: kv.value for kv in s.values})
                       for s in self.diagnostics[start:])
        return self.spin_until(check, timeout, tick=tick)

    def settled_diagnostics(self):
        """Return the node's diagnostics values from a status taken after all the probe has seen.

        The statuses already delivered are taken first: a probe starved on a loaded machine
        finds several waiting beside the output it waited for (its executor takes one message
        a call), all taken before that output. Of those that come then, the first may have
        been taken before the newest output; the second was taken after it.
        """
        self.drain()
        seen = len(self.diagnostics)
        assert self.spin_until(lambda: len(self.diagnostics) >= seen + 2, 10.0)
        return self.latest_diagnostics()[2]

    def drain(self):
        """Run the callbacks of every message already delivered to the probe, then return."""
        def taken():
            return self._arrays + sum(len(messages) for messages in self.received.values())

        idle = 0
        while idle < 3:  # a call that ran another callback (a service's) takes no message
            before = taken()
            self.executor.spin_once(timeout_sec=0.0)
            idle = idle + 1 if taken() == before else 0

    def counter(self, name):
        """Return a counter from the newest diagnostics (0 when none arrived yet)."""
        latest = self.latest_diagnostics()
        return int(latest[2][name]) if latest else 0

    def wait_for_subscribers(self, timeout=90.0):
        """Spin until both image publishers have a subscriber (the node's); return True if so.

        A best-effort message published before discovery matched the node is lost for good.
        """
        return self.spin_until(
            lambda: (self.ir_pub.get_subscription_count() > 0
                     and self.visible_pub.get_subscription_count() > 0), timeout)

    def send_with_ir_out_of_order(self, start_ns, period_ns=100_000_000):
        """Send four pairs ``period_ns`` apart, the IR camera's second and third swapped.

        IR t0, t2, t1, t3 and visible t0, t1, t2, t3 (a driver with several threads, or a
        bridge, delivers IR t1 late). Waits for the fused image and the detections of t0, t2
        and t3, the pairs that can still pair (IR t1 is ignored, so visible t1 has no
        partner); return the four stamps.
        """
        stamps = [start_ns + k * period_ns for k in range(4)]
        pairs = [self.good_pair(stamp) for stamp in stamps]
        self.publish_pair(*pairs[0])
        assert self.wait_for_outputs(stamps[0]), 'no output for t0'
        for publisher, msg in ((self.ir_pub, pairs[2][0]), (self.ir_pub, pairs[1][0]),
                               (self.visible_pub, pairs[1][1]), (self.visible_pub, pairs[2][1])):
            publisher.publish(msg)
        assert self.wait_for_outputs(stamps[2]), 'no output for t2 after IR t1 came late'
        self.publish_pair(*pairs[3])
        assert self.wait_for_outputs(stamps[3]), 'no output for t3'
        return stamps

    def wait_until_ready(self, timeout=60.0):
        """Wait until the node answers a pair (retrying with new stamps); return the stamp."""
        stamps = []

        def tick():
            stamp = time.time_ns()
            stamps.append(stamp)
            self.publish_pair(*self.good_pair(stamp))

        ok = self.spin_until(
            lambda: any(self.outputs_for('fused', s) for s in stamps) and self.diagnostics,
            timeout, tick=tick, tick_period=0.5)
        return ok

    # -- parameters --------------------------------------------------------------------------
    def set_parameters(self, **values):
        """Set parameters of the node through its service; return the list of results."""
        return self.set_typed_parameters(*(
            Parameter(name.replace('__', '.'),
                      Parameter.Type.STRING_ARRAY if value == [] else None,  # not BYTE_ARRAY
                      value)
            for name, value in values.items()))

    def set_typed_parameters(self, *parameters):
        """Set rclpy ``Parameter`` objects (their own types) through the node's service."""
        if self._param_client is None:
            name = f'{self.node_name}/set_parameters'
            self._param_client = self.node.create_client(SetParameters, name)
            if not self.spin_until(self._param_client.service_is_ready, 20.0):
                raise TimeoutError(f'service {name} did not appear')
        request = SetParameters.Request()
        request.parameters = [parameter.to_parameter_msg() for parameter in parameters]
        future = self._param_client.call_async(request)
        self.spin_until(future.done, 20.0)
        return future.result().results

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
